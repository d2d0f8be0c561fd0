// The data-parallel collectives on real c10d backends over loopback: two Gloo
// ranks in one process (threads), and, on a GPU, a one-rank NCCL job (the
// CUDA build's process group initialises, all-reduces and stages host tensors).
#include <ATen/ATen.h>
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "deltatune/error.h"
#include "deltatune/model/device.h"
#include "deltatune/train/distributed.h"

namespace deltatune::train {
namespace {

// A loopback port nobody listens on now (bound, read back, released).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    close(fd);
    return 0;
  }
  close(fd);
  return ntohs(address.sin_port);
}

// MASTER_ADDR / MASTER_PORT for one job, restored afterwards.
class Rendezvous : public ::testing::Test {
 protected:
  void SetUp() override {
    const int port = free_port();
    ASSERT_GT(port, 0);
    setenv("MASTER_ADDR", "127.0.0.1", 1);
    setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
  }
  void TearDown() override {
    unsetenv("MASTER_ADDR");
    unsetenv("MASTER_PORT");
  }
  static JobOptions options_on(at::Device device) {
    JobOptions options;
    options.timeout = std::chrono::seconds(30);
    options.device = device;
    return options;
  }
};

bool without_gloo(const Error& e) {
  return std::string(e.what()).find("no Gloo") != std::string::npos;
}

TEST_F(Rendezvous, TwoGlooRanksSumBroadcastAndGatherBitForBit) {
  std::unique_ptr<Collective> ranks[2];
  std::string failure;
  {
    // Rank 0 serves the store; both must join at once.
    std::thread second([&] {
      try {
        ranks[1] = join_job(1, 2, options_on(at::kCPU));
      } catch (const std::exception& e) {
        failure = e.what();
      }
    });
    try {
      ranks[0] = join_job(0, 2, options_on(at::kCPU));
    } catch (const Error& e) {
      second.join();
      if (without_gloo(e)) GTEST_SKIP() << e.what();
      FAIL() << e.what();
    }
    second.join();
  }
  ASSERT_TRUE(failure.empty()) << failure;
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(ranks[r]->rank(), r);
    EXPECT_EQ(ranks[r]->world_size(), 2);
    EXPECT_TRUE(ranks[r]->device().is_cpu());
  }

  // Each rank's part of every collective in its own thread, in the same order.
  at::Tensor sums[2], strided[2], broadcasts[2], gathered[2];
  auto run_rank = [&](int r) {
    Collective& job = *ranks[r];
    sums[r] = at::full({5}, static_cast<float>(r + 1));
    job.all_reduce_sum(sums[r]);
    // A transposed view: reduced on a staged contiguous copy, written back.
    strided[r] = at::arange(6, at::kDouble).view({2, 3}).mul(r + 1).t();
    job.all_reduce_sum(strided[r]);
    broadcasts[r] = at::full({3}, static_cast<float>(10 * (r + 1)));
    job.broadcast(broadcasts[r], 1);
    const auto [begin, end] = shard_range(7, r, 2);
    gathered[r] = gather_shards(job, at::arange(begin, end, at::kFloat).mul(3), 7);
    job.barrier();
  };
  std::thread other(run_rank, 1);
  run_rank(0);
  other.join();

  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(at::equal(sums[r], at::full({5}, 3.0f))) << sums[r];
    EXPECT_TRUE(at::equal(strided[r], at::arange(6, at::kDouble).view({2, 3}).mul(3).t()));
    EXPECT_TRUE(at::equal(broadcasts[r], at::full({3}, 20.0f)));
    EXPECT_TRUE(at::equal(gathered[r], at::arange(7, at::kFloat).mul(3)));
    const CollectiveStats stats = ranks[r]->stats();
    EXPECT_EQ(stats.all_reduce_calls, 3);  // two sums and the gather
    EXPECT_EQ(stats.all_reduce_bytes, 5 * 4 + 6 * 8 + 7 * 4);
  }
}

TEST_F(Rendezvous, OnAGpuOneRankJoinsOverNcclAndStagesHostTensors) {
  if (!model::cuda_available())
    GTEST_SKIP() << "no CUDA device here (a LibTorch without CUDA, or no GPU visible)";
  const at::Device gpu(at::kCUDA, 0);
  std::unique_ptr<Collective> job;
  try {
    job = join_job(0, 1, options_on(gpu));
  } catch (const Error& e) {
    if (without_gloo(e)) GTEST_SKIP() << e.what();
    FAIL() << e.what();
  }
  // NCCL where the build's LibTorch has it (the pip wheel's): the GPU itself.
  EXPECT_TRUE(job->device().is_cuda()) << "joined over Gloo: this LibTorch has no NCCL";
  at::Tensor on_gpu = at::arange(8, at::TensorOptions(gpu).dtype(at::kFloat));
  job->all_reduce_sum(on_gpu);
  EXPECT_TRUE(on_gpu.is_cuda());
  EXPECT_TRUE(at::equal(on_gpu.cpu(), at::arange(8, at::kFloat)));
  at::Tensor on_host = at::arange(4, at::kDouble);
  job->broadcast(on_host, 0);
  job->all_reduce_sum(on_host);
  EXPECT_TRUE(on_host.is_cpu());
  EXPECT_TRUE(at::equal(on_host, at::arange(4, at::kDouble)));
  std::vector<at::Tensor> parts{at::ones({3}), at::ones({2, 2}, at::TensorOptions(gpu))};
  all_reduce_flat(*job, parts);
  EXPECT_TRUE(at::equal(parts[1].cpu(), at::ones({2, 2})));
  job->barrier();
  EXPECT_EQ(job->stats().all_reduce_calls, 3);
}

// Two Gloo ranks of one job joined in two threads of this process, with the
// given timeout; false (and `skip` set) where the build has no Gloo.
bool join_two(std::unique_ptr<Collective> (&ranks)[2], std::chrono::milliseconds timeout,
              std::string& skip) {
  JobOptions options;
  options.timeout = timeout;
  std::string failure;
  std::thread second([&] {
    try {
      ranks[1] = join_job(1, 2, options);
    } catch (const std::exception& e) {
      failure = e.what();
    }
  });
  try {
    ranks[0] = join_job(0, 2, options);
  } catch (const Error& e) {
    second.join();
    skip = e.what();
    return false;
  }
  second.join();
  if (!failure.empty()) ADD_FAILURE() << failure;
  return failure.empty();
}

// The error of a rank whose collective fails names the rank that failed:
// one that is alive but never reaches the collective (here: busy past the
// timeout) and one that is gone.
TEST_F(Rendezvous, AFailedCollectiveNamesTheRankThatHungOrDied) {
  std::unique_ptr<Collective> ranks[2];
  std::string skip;
  if (!join_two(ranks, std::chrono::seconds(3), skip)) {
    if (!skip.empty() && skip.find("no Gloo") != std::string::npos) GTEST_SKIP() << skip;
    FAIL() << skip;
  }
  at::Tensor values = at::ones({4});
  std::string hung;
  try {
    ranks[0]->all_reduce_sum(values);  // rank 1 never calls it
  } catch (const Error& e) {
    hung = e.what();
  }
  EXPECT_NE(hung.find("rank 0 of 2: all-reduce failed: rank 1 is alive but has not reached"),
            std::string::npos)
      << hung;

  ranks[1].reset();  // rank 1 leaves: its connections close and its signs of life stop
  std::string died;
  try {
    ranks[0]->all_reduce_sum(values);
  } catch (const Error& e) {
    died = e.what();
  }
  EXPECT_NE(died.find("rank 0 of 2: all-reduce failed: rank 1 stopped answering"),
            std::string::npos)
      << died;
}

// torchrun's per-machine variables are checked before the rendezvous waits:
// LOCAL_RANK below LOCAL_WORLD_SIZE, LOCAL_WORLD_SIZE within the job.
TEST(JoinJob, ALocalRankOutsideTheMachinesRanksIsNamed) {
  setenv("WORLD_SIZE", "2", 1);
  setenv("RANK", "1", 1);
  setenv("MASTER_PORT", "1", 1);
  auto error_of = [] {
    try {
      join_job_from_environment(JobOptions{});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  setenv("LOCAL_WORLD_SIZE", "2", 1);
  setenv("LOCAL_RANK", "2", 1);
  EXPECT_NE(error_of().find("LOCAL_RANK=2: not an integer in [0, 1]"), std::string::npos)
      << error_of();
  setenv("LOCAL_WORLD_SIZE", "3", 1);
  setenv("LOCAL_RANK", "0", 1);
  EXPECT_NE(error_of().find("LOCAL_WORLD_SIZE=3: not an integer in [1, 2]"), std::string::npos)
      << error_of();
  for (const char* name : {"WORLD_SIZE", "RANK", "MASTER_PORT", "LOCAL_WORLD_SIZE", "LOCAL_RANK"})
    unsetenv(name);
}

TEST(JoinJob, ARankOutsideTheJobIsAnError) {
  EXPECT_THROW(join_job(2, 2, JobOptions{}), Error);
  EXPECT_THROW(join_job(0, 0, JobOptions{}), Error);
}

}  // namespace
}  // namespace deltatune::train
