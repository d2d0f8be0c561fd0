// Default thread counts follow what the process may really use: its CPU
// affinity and its cgroup's CPU quota, not the host's CPU count.
#include "deltatune/io/cpus.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <thread>

#include "test_paths.h"

namespace deltatune::io {
namespace {
namespace fs = std::filesystem;

TEST(AvailableCpus, FollowTheAffinityMaskAsTasksetAndSlurmSetIt) {
  cpu_set_t all;
  ASSERT_EQ(sched_getaffinity(0, sizeof all, &all), 0);
  unsigned pinned = 0, pinned_to_two = 0;
  // In a thread of its own, so the test process keeps its mask.
  std::thread([&] {
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
      if (CPU_ISSET(cpu, &all)) {
        CPU_SET(cpu, &one);
        break;
      }
    ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
    pinned = available_cpus();
  }).join();
  EXPECT_EQ(pinned, 1u);
  if (CPU_COUNT(&all) >= 2) {
    std::thread([&] {
      cpu_set_t two;
      CPU_ZERO(&two);
      int taken = 0;
      for (int cpu = 0; cpu < CPU_SETSIZE && taken < 2; ++cpu)
        if (CPU_ISSET(cpu, &all)) {
          CPU_SET(cpu, &two);
          ++taken;
        }
      ASSERT_EQ(sched_setaffinity(0, sizeof two, &two), 0);
      pinned_to_two = available_cpus();
    }).join();
    EXPECT_EQ(pinned_to_two, 2u);
  }
  EXPECT_LE(available_cpus(), static_cast<unsigned>(CPU_COUNT(&all)));
}

// A cgroup tree as the kernel shows it, in a scratch directory.
void write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

TEST(AvailableCpus, CgroupV2QuotaIsTheTightestOnTheGroupAndItsParents) {
  test::ScratchDir tmp;
  const fs::path root = tmp.path() / "sys";
  write(tmp.path() / "cgroup", "0::/job/step\n");
  EXPECT_EQ(cgroup_cpu_quota(tmp.path() / "cgroup", root), std::nullopt);  // no files: no quota
  write(root / "job" / "step" / "cpu.max", "max 100000\n");
  EXPECT_EQ(cgroup_cpu_quota(tmp.path() / "cgroup", root), std::nullopt);
  write(root / "job" / "cpu.max", "250000 100000\n");  // docker --cpus 2.5
  EXPECT_DOUBLE_EQ(*cgroup_cpu_quota(tmp.path() / "cgroup", root), 2.5);
  write(root / "job" / "step" / "cpu.max", "400000 100000\n");  // looser than its parent
  EXPECT_DOUBLE_EQ(*cgroup_cpu_quota(tmp.path() / "cgroup", root), 2.5);
  write(root / "cpu.max", "50000 100000\n");
  EXPECT_DOUBLE_EQ(*cgroup_cpu_quota(tmp.path() / "cgroup", root), 0.5);
}

TEST(AvailableCpus, CgroupV1CfsQuotaOfTheCpuController) {
  test::ScratchDir tmp;
  const fs::path root = tmp.path() / "sys";
  write(tmp.path() / "cgroup", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n");
  write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "-1\n");
  write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(cgroup_cpu_quota(tmp.path() / "cgroup", root), std::nullopt);  // -1: unlimited
  write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "400000\n");
  EXPECT_DOUBLE_EQ(*cgroup_cpu_quota(tmp.path() / "cgroup", root), 4.0);
}

}  // namespace
}  // namespace deltatune::io
