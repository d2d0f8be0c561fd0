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

// Builds a whole directory and then puts it at `dir` in one step: `writer`
// fills an empty staging directory beside `dir`, which then replaces `dir`
// (an atomic exchange when `dir` exists). Readers of `dir` see the old
// directory or the new one, never a mix; a writer that throws or is killed
// leaves `dir` as it was (a killed one leaves a hidden ".<name>.partial-<pid>-*"
// sibling, removed by the next write of `dir` or by remove_abandoned_partials).
void write_directory_atomically(const std::filesystem::path& dir,
                                const std::function<void(const std::filesystem::path&)>& writer);

// Removes the ".<name>.partial-<pid>-*" siblings of `dir` whose writing
// process no longer runs: what a writer killed while building `dir` left,
// including the old directory a writer killed just after the exchange had
// not yet removed. For directories that may never be written again.
void remove_abandoned_partials(const std::filesystem::path& dir);

void write_text_atomically(const std::filesystem::path& path, std::string_view text);

// Reads a whole file; throws deltatune::Error naming `path` when it cannot.
std::string read_text_file(const std::filesystem::path& path);

}  // namespace deltatune::io
