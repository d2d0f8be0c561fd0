#include "deltatune/io/crash_point.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace deltatune::io {
namespace {

enum class CrashAction { kKill, kStop, kDiverge };

struct CrashTarget {
  std::string point;
  long hit = 0;  // the n-th arrival that acts; 0: none
  CrashAction action = CrashAction::kKill;
};

const CrashTarget& target() {
  static const CrashTarget parsed = [] {
    CrashTarget t;
    const char* spec = std::getenv("DELTATUNE_CRASH_AT");
    if (spec == nullptr) return t;
    // DELTATUNE_CRASH_RANK: only the rank of a data-parallel job with that RANK.
    if (const char* only = std::getenv("DELTATUNE_CRASH_RANK")) {
      const char* rank = std::getenv("RANK");
      if (rank == nullptr || std::string(rank) != only) return t;
    }
    const std::string text = spec;
    // "<point>:<n>", or "<point>" for its first arrival ("write:delta").
    const auto colon = text.rfind(':');
    const bool counted = colon != std::string::npos && colon + 1 < text.size() &&
                         text.find_first_not_of("0123456789", colon + 1) == std::string::npos;
    t.point = counted ? text.substr(0, colon) : text;
    t.hit = counted ? std::strtol(text.c_str() + colon + 1, nullptr, 10) : 1;
    const char* action = std::getenv("DELTATUNE_CRASH_ACTION");
    const std::string named = action ? action : "kill";
    if (named == "stop")
      t.action = CrashAction::kStop;
    else if (named == "diverge")
      t.action = CrashAction::kDiverge;
    else if (named != "kill")
      t.hit = 0;  // an unknown action is no fault point: tests must not kill by accident
    return t;
  }();
  return parsed;
}

}  // namespace

bool crash_point(std::string_view point) {
  const CrashTarget& t = target();
  if (t.hit <= 0 || point != t.point) return false;
  static std::atomic<long> arrivals{0};
  if (++arrivals != t.hit) return false;
  switch (t.action) {
    case CrashAction::kKill:
      ::kill(::getpid(), SIGKILL);
      return false;
    case CrashAction::kStop:
      ::kill(::getpid(), SIGSTOP);  // every thread stops until SIGCONT or SIGKILL
      return false;
    case CrashAction::kDiverge:
      return true;
  }
  return false;
}

}  // namespace deltatune::io
