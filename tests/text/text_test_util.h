// Shared helpers for the tokenizer tests.
#pragma once

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

namespace deltatune::text::testing {

inline std::filesystem::path fixtures_dir() {
  return std::filesystem::path(DELTATUNE_FIXTURES) / "text";
}

// The MiniLM model directory: $DELTATUNE_MODEL_DIR, else
// $DELTATUNE_HOME/models/all-MiniLM-L6-v2, else ~/.cache/deltatune/models/all-MiniLM-L6-v2.
inline std::filesystem::path minilm_dir() {
  if (const char* d = std::getenv("DELTATUNE_MODEL_DIR"); d && *d) return d;
  if (const char* h = std::getenv("DELTATUNE_HOME"); h && *h) {
    return std::filesystem::path(h) / "models" / "all-MiniLM-L6-v2";
  }
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home ? home : ".") / ".cache" / "deltatune" / "models" /
         "all-MiniLM-L6-v2";
}

// Fails the calling test (ASSERT_NO_FATAL_FAILURE) when the MiniLM files are missing.
inline void require_minilm() {
  const auto dir = minilm_dir();
  ASSERT_TRUE(std::filesystem::exists(dir / "vocab.txt") &&
              std::filesystem::exists(dir / "tokenizer.json"))
      << "MiniLM tokenizer files not found in " << dir
      << "; run `scripts/setup.sh model` (or set DELTATUNE_MODEL_DIR)";
}

// A fresh empty directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("deltatune_text_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

  void write(const std::string& name, const std::string& content) const {
    std::ofstream out(path_ / name, std::ios::binary);
    out << content;
  }
  void copy_from(const std::filesystem::path& src_dir, const std::string& name) const {
    std::filesystem::copy_file(src_dir / name, path_ / name,
                               std::filesystem::copy_options::overwrite_existing);
  }

 private:
  std::filesystem::path path_;
};

inline std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    rows.push_back(nlohmann::json::parse(line));
  }
  return rows;
}

}  // namespace deltatune::text::testing
