// Where tests find their inputs. The model is fetched by scripts/setup.sh;
// a missing one fails the test with the command that fixes it.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "deltatune/error.h"

namespace deltatune::test {

// A fresh directory removed at scope exit.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "deltatune-test-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  void write(const std::string& name, const std::string& content) const {
    std::ofstream(path_ / name, std::ios::binary) << content;
  }
  void copy_from(const std::filesystem::path& source_dir, const std::string& name) const {
    std::filesystem::copy_file(source_dir / name, path_ / name,
                               std::filesystem::copy_options::overwrite_existing);
  }

 private:
  std::filesystem::path path_;
};

inline std::filesystem::path fixtures() { return DELTATUNE_FIXTURES; }

// The message of the deltatune::Error `action` throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const deltatune::Error& e) {
    return e.what();
  }
  return "";
}

inline std::filesystem::path minilm_dir() {
  std::filesystem::path dir;
  if (const char* explicit_dir = std::getenv("DELTATUNE_MODEL_DIR")) {
    dir = explicit_dir;
  } else if (const char* home = std::getenv("DELTATUNE_HOME")) {
    dir = std::filesystem::path(home) / "models" / "all-MiniLM-L6-v2";
  } else {
    dir = std::filesystem::path(std::getenv("HOME") ? std::getenv("HOME") : "/root") / ".cache" /
          "deltatune" / "models" / "all-MiniLM-L6-v2";
  }
  if (!std::filesystem::exists(dir / "model.safetensors"))
    ADD_FAILURE() << "all-MiniLM-L6-v2 not found at " << dir << ": run `scripts/setup.sh model`";
  return dir;
}

// This process's resident file-backed pages (RssFile of /proc/self/status),
// in kB; -1 where the kernel does not report them.
inline int64_t resident_file_kb() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("RssFile:", 0) == 0) return std::stoll(line.substr(8));
  return -1;
}

}  // namespace deltatune::test
