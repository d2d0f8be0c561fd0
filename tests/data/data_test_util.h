// Helpers shared by the data-layer tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>

#include "deltatune/error.h"

#include "test_paths.h"

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

}  // namespace deltatune::test
