// Whole-file writes that are never visible half-done.
//
// Invariant: after write_file_atomically returns, `path` holds exactly the
// bytes the writer produced; if it throws, `path` is untouched and no
// temporary file is left behind.
#pragma once

#include <filesystem>
#include <functional>
#include <ostream>
#include <string_view>

namespace deltatune::io {

// Writes through a temporary file in the same directory, flushes it to disk,
// then renames it over `path`. Throws deltatune::Error naming `path`.
void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(std::ostream&)>& writer);

void write_text_atomically(const std::filesystem::path& path, std::string_view text);

// Reads a whole file; throws deltatune::Error naming `path` when it cannot.
std::string read_text_file(const std::filesystem::path& path);

}  // namespace deltatune::io
