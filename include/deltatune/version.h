// The release, as --version and the server's /info report it (CMake's
// project(VERSION) must agree).
#pragma once

namespace deltatune {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace deltatune
