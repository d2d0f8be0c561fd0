// A small on-disk cache of derived values (e.g. a base checkpoint's checksum)
// keyed by strings that identify their inputs exactly. A missing, unreadable
// or unwritable cache is never an error: the value is computed again.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace deltatune::io {

// $DELTATUNE_CACHE_DIR, else $DELTATUNE_HOME/cache, else ~/.cache/deltatune/cache.
std::filesystem::path cache_directory();

// The value stored under `key` in `table` (cache_directory()/<table>.json).
std::optional<std::string> cached_value(const std::string& table, const std::string& key);

// Stores `value` under `key`; a table keeps its `capacity` most recent keys.
void remember_value(const std::string& table, const std::string& key, const std::string& value,
                    size_t capacity = 64);

// What identifies a file's bytes without reading them: device, inode, size,
// and modification and change times in nanoseconds (any write changes the
// change time, which no user can set back). Empty when the file cannot be
// examined.
std::string file_identity(const std::filesystem::path& path);

}  // namespace deltatune::io
