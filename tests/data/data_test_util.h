// Helpers shared by the data-layer tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>

#include "deltatune/error.h"

namespace deltatune::test {

// The GLUE TSVs: $GLUE_DIR (the Makefile sets it to ../shared/data/glue).
inline std::filesystem::path glue_dir() {
  const char* dir = std::getenv("GLUE_DIR");
  if (dir == nullptr || *dir == '\0') {
    ADD_FAILURE() << "GLUE_DIR is not set: set it to the GLUE data directory "
                     "(`make test` sets it to ../shared/data/glue)";
    return {};
  }
  return dir;
}

// The message of the deltatune::Error `action` throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace deltatune::test
