// The one exception type deltatune throws for bad input and failed I/O.
//
// Invariant: what() is a single line that names the offending file, line or
// field, so the CLI can print it verbatim and exit non-zero.
#pragma once

#include <stdexcept>
#include <string>

namespace deltatune {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace deltatune
