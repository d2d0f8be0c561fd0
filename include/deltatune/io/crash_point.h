// Fault points for the crash-safety and data-parallel tests: a process
// started with DELTATUNE_CRASH_AT="<point>:<n>" acts the n-th time (counted
// from 1 in this process) it reaches crash_point("<point>"); without ":<n>",
// the first time. The points: "step" (right after an optimizer step, before
// any checkpoint of it) and "write:<name>" (a directory named <name> fully
// staged, right before it replaces the old one: "write:checkpoint",
// "write:delta") and "swapped:<name>" (right after the replacement, before
// the old directory is removed).
// DELTATUNE_CRASH_ACTION says what happens there: "kill" (the default: the
// process SIGKILLs itself), "stop" (it SIGSTOPs itself: a hung rank) or
// "diverge" (crash_point returns true and the caller makes this process's
// state differ, as a data-parallel bug would).
// With DELTATUNE_CRASH_RANK=<r> set too, only the process whose RANK is r
// (one rank of a data-parallel job) acts.
// Unset, crash_point costs one cached getenv.
#pragma once

#include <string_view>

namespace deltatune::io {

// True only where the point was reached with the "diverge" action.
bool crash_point(std::string_view point);

}  // namespace deltatune::io
