// Kill points for the crash-safety tests: a process started with
// DELTATUNE_CRASH_AT="<point>:<n>" kills itself with SIGKILL the n-th time
// (counted from 1 in this process) it reaches crash_point("<point>"); without
// ":<n>", the first time. The
// points: "step" (right after an optimizer step, before any checkpoint of
// it) and "write:<name>" (a directory named <name> fully staged, right
// before it replaces the old one: "write:checkpoint", "write:delta").
// With DELTATUNE_CRASH_RANK=<r> set too, only the process whose RANK is r
// (one rank of a data-parallel job) kills itself.
// Unset, crash_point costs one cached getenv.
#pragma once

#include <string_view>

namespace deltatune::io {

void crash_point(std::string_view point);

}  // namespace deltatune::io
