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

#include "test_paths.h"

namespace deltatune::text::testing {

inline std::filesystem::path fixtures_dir() {
  return std::filesystem::path(DELTATUNE_FIXTURES) / "text";
}

using deltatune::test::minilm_dir;

// Fails the calling test (ASSERT_NO_FATAL_FAILURE) when the MiniLM files are missing.
inline void require_minilm() {
  const auto dir = minilm_dir();
  ASSERT_TRUE(std::filesystem::exists(dir / "vocab.txt") &&
              std::filesystem::exists(dir / "tokenizer.json"))
      << "MiniLM tokenizer files not found in " << dir
      << "; run `scripts/setup.sh model` (or set DELTATUNE_MODEL_DIR)";
}

using TempDir = deltatune::test::ScratchDir;

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
