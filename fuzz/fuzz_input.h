// Shared by the libFuzzer targets: inputs become files where the code under
// test reads files, and only deltatune::Error counts as a clean refusal.
// Anything else that escapes (another exception, a sanitizer report, a
// crash) is a finding: libFuzzer stops and saves the input.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "deltatune/error.h"

namespace deltatune::fuzz {

// A directory of this process's own, under $TMPDIR (or /tmp), kept for the run.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::filesystem::path d = std::filesystem::path(tmp ? tmp : "/tmp") /
                              ("deltatune-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

// Writes `bytes` to scratch_dir()/name and returns the path.
inline std::filesystem::path write_input(const std::string& name, std::string_view bytes) {
  const std::filesystem::path path = scratch_dir() / name;
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
  return path;
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Runs `code`; a deltatune::Error is the expected answer to bad input.
template <typename Code>
void refuse_cleanly(Code&& code) {
  try {
    code();
  } catch (const deltatune::Error&) {
  }
}

}  // namespace deltatune::fuzz
