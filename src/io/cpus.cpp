#include "deltatune/io/cpus.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace deltatune::io {
namespace fs = std::filesystem;

namespace {

std::optional<std::string> read_first_line(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  return line;
}

std::optional<double> parse_positive(const std::string& text) {
  try {
    size_t used = 0;
    const double value = std::stod(text, &used);
    if (used == 0 || !(value > 0)) return std::nullopt;
    return value;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// The quota one cgroup directory sets, in CPUs (v2 cpu.max, else v1 CFS files).
std::optional<double> quota_of(const fs::path& dir) {
  if (auto line = read_first_line(dir / "cpu.max")) {
    std::istringstream fields(*line);
    std::string quota, period;
    fields >> quota >> period;
    if (quota == "max") return std::nullopt;
    auto q = parse_positive(quota), p = parse_positive(period);
    if (q && p) return *q / *p;
    return std::nullopt;
  }
  auto quota = read_first_line(dir / "cpu.cfs_quota_us");
  auto period = read_first_line(dir / "cpu.cfs_period_us");
  if (!quota || !period) return std::nullopt;
  auto q = parse_positive(*quota), p = parse_positive(*period);  // -1: unlimited
  if (q && p) return *q / *p;
  return std::nullopt;
}

// The group and each parent up to `mount`, tightest quota first.
std::optional<double> tightest_on_path(const fs::path& mount, const std::string& group) {
  std::optional<double> tightest;
  fs::path relative = fs::path(group).relative_path();
  while (true) {
    if (auto q = quota_of(mount / relative)) tightest = tightest ? std::min(*tightest, *q) : *q;
    if (relative.empty()) break;
    relative = relative.parent_path();
  }
  return tightest;
}

}  // namespace

std::optional<double> cgroup_cpu_quota(const fs::path& proc_self_cgroup,
                                       const fs::path& cgroup_root) {
  std::ifstream in(proc_self_cgroup);
  std::optional<double> tightest;
  auto consider = [&](std::optional<double> q) {
    if (q) tightest = tightest ? std::min(*tightest, *q) : *q;
  };
  // Lines "ID:CONTROLLERS:PATH"; v2's unified hierarchy is "0::PATH".
  for (std::string line; std::getline(in, line);) {
    const size_t first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1);
    const std::string path = line.substr(second + 1);
    if (controllers.empty()) {
      consider(tightest_on_path(cgroup_root, path));
      continue;
    }
    std::istringstream list(controllers);
    for (std::string controller; std::getline(list, controller, ',');)
      if (controller == "cpu") {
        for (const char* mount : {"cpu,cpuacct", "cpu", "cpuacct,cpu"})
          consider(tightest_on_path(cgroup_root / mount, path));
      }
  }
  return tightest;
}

unsigned available_cpus() {
  unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    cpus = std::max(1, std::min(static_cast<int>(cpus), CPU_COUNT(&set)));
  if (auto quota = cgroup_cpu_quota("/proc/self/cgroup", "/sys/fs/cgroup"))
    cpus = std::max(1u, std::min(cpus, static_cast<unsigned>(std::ceil(*quota))));
  return cpus;
}

std::string cpu_model_name() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    const size_t start = line.find_first_not_of(" \t", colon + 1);
    return start == std::string::npos ? "unknown" : line.substr(start);
  }
  return "unknown";
}

double resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  double pages = 0, resident = 0;
  if (!(statm >> pages >> resident)) return 0;
  return resident * static_cast<double>(sysconf(_SC_PAGESIZE));
}

}  // namespace deltatune::io
