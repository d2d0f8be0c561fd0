// How many CPUs this process may really use, for default thread counts.
// std::thread::hardware_concurrency() counts every online CPU of the host; a
// job limited by taskset or Slurm (its affinity mask) or by a container's CPU
// quota (docker --cpus, Kubernetes limits: the cgroup's cpu.max) gets far
// fewer, and one OpenMP thread per host CPU then oversubscribes them.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace deltatune::io {

// min(CPUs in the calling thread's affinity mask, ceil(cgroup CPU quota)), at least 1.
unsigned available_cpus();

// The tightest CPU quota, in CPUs, on the cgroup path a /proc/self/cgroup
// file names, read under `cgroup_root` (normally /sys/fs/cgroup): cgroup v2's
// cpu.max ("QUOTA PERIOD" or "max PERIOD") or v1's cpu.cfs_quota_us /
// cpu.cfs_period_us, on the group and every parent. nullopt: no quota.
std::optional<double> cgroup_cpu_quota(const std::filesystem::path& proc_self_cgroup,
                                       const std::filesystem::path& cgroup_root);

// The CPU's model name as /proc/cpuinfo gives it ("AMD EPYC 7B13"); "unknown"
// where it does not.
std::string cpu_model_name();

// Bytes of this process resident in memory now (/proc/self/statm); 0 where unreadable.
double resident_bytes();

}  // namespace deltatune::io
