// c10d's ProcessGroupGloo (CPU) and ProcessGroupNCCL (CUDA builds) over a
// TCPStore rendezvous, called directly (not through the c10d::ProcessGroup
// wrapper, whose constructor changed in 2.x).
#include "deltatune/train/distributed.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#ifdef DELTATUNE_HAVE_GLOO
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO  // ProcessGroupGloo.hpp declares nothing without it
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
// USE_C10D_NCCL comes with a CUDA LibTorch's torch_cuda target (the pip wheel's).
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#if defined(DELTATUNE_HAVE_GLOO) || defined(USE_C10D_NCCL)
#define DELTATUNE_HAVE_C10D
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <functional>
#include <limits>

#include "deltatune/error.h"
#include "deltatune/model/device.h"

namespace deltatune::train {
namespace {

std::string environment(const char* name) {
  const char* value = std::getenv(name);
  return value ? std::string(value) : std::string();
}

int64_t integer_variable(const char* name, int64_t low, int64_t high) {
  const std::string text = environment(name);
  if (text.empty()) throw Error(fmt::format("{} is not set (torchrun's environment)", name));
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || *end != '\0' || value < low || value > high)
    throw Error(fmt::format("{}={}: not an integer in [{}, {}]", name, text, low, high));
  return value;
}

#ifdef DELTATUNE_HAVE_C10D
std::string first_line(const std::string& text) {
  const auto end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

std::string master_address() {
  return environment("MASTER_ADDR").empty() ? "127.0.0.1" : environment("MASTER_ADDR");
}

// The job's rendezvous: rank 0 serves a TCPStore at MASTER_ADDR:MASTER_PORT,
// or under torchrun's agent store every rank is a client of the agent's.
c10::intrusive_ptr<c10d::Store> rendezvous_store(int rank, int world, const JobOptions& options) {
  const std::string address = master_address();
  const auto port = static_cast<uint16_t>(integer_variable("MASTER_PORT", 1, 65535));
  const bool agent_store = environment("TORCHELASTIC_USE_AGENT_STORE") == "True";
  c10d::TCPStoreOptions store_options;
  store_options.port = port;
  store_options.isServer = !agent_store && rank == 0;
  store_options.numWorkers = static_cast<size_t>(world);
  store_options.waitWorkers = false;
  store_options.timeout = options.timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(address, store_options);
  } catch (const std::exception& e) {
    throw Error(fmt::format("rank {}: cannot reach the rendezvous store at {}:{} ({}): {}", rank,
                            address, port, agent_store ? "torchrun's agent" : "rank 0's",
                            first_line(e.what())));
  }
  // torchrun's agent store is shared by its restarts: each attempt has its own keys.
  if (agent_store) {
    const std::string attempt = environment("TORCHELASTIC_RESTART_COUNT");
    store = c10::make_intrusive<c10d::PrefixStore>(
        "/worker/attempt_" + (attempt.empty() ? std::string("0") : attempt), store);
  }
  return c10::make_intrusive<c10d::PrefixStore>("deltatune/", store);
}

// The collectives over one c10d backend, whose buffers live on `device`
// (Gloo: the CPU; NCCL: the rank's GPU); tensors elsewhere are staged there.
template <typename Group>
class BackendCollective final : public Collective {
 public:
  BackendCollective(int rank, int world, at::Device device, const JobOptions& options,
                    const std::function<c10::intrusive_ptr<Group>()>& make_group)
      : rank_(rank), world_(world), device_(device) {
    try {
      group_ = make_group();
    } catch (const std::exception& e) {
      throw Error(fmt::format("rank {}: joining the job of {} ranks failed within {} s: {}", rank,
                              world, options.timeout.count() / 1000, first_line(e.what())));
    }
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  at::Device device() const override { return device_; }

  void all_reduce_sum(at::Tensor& tensor) override {
    const auto start = std::chrono::steady_clock::now();
    staged(tensor, [&](std::vector<at::Tensor>& tensors) {
      run("all-reduce", [&] { return group_->allreduce(tensors); });
    });
    ++stats_.all_reduce_calls;
    stats_.all_reduce_bytes += static_cast<int64_t>(tensor.numel() * tensor.element_size());
    stats_.all_reduce_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  void broadcast(at::Tensor& tensor, int root) override {
    staged(tensor, [&](std::vector<at::Tensor>& tensors) {
      c10d::BroadcastOptions options;
      options.rootRank = root;
      run("broadcast", [&] { return group_->broadcast(tensors, options); });
    });
  }

  // Every rank's arrival, as a one-value all-reduce on the job's device
  // (NCCL's own barrier guesses a GPU from the rank).
  void barrier() override {
    std::vector<at::Tensor> tensors{at::zeros({1}, at::TensorOptions(device_).dtype(at::kFloat))};
    run("barrier", [&] { return group_->allreduce(tensors); });
    (void)tensors.front().item<float>();  // waits for the device, as Gloo's wait does
  }

  CollectiveStats stats() const override { return stats_; }

 private:
  // `collective` on the tensor itself when it lives on the job's device and is
  // contiguous, else on a staged copy that is copied back.
  template <typename F>
  void staged(at::Tensor& tensor, F&& collective) {
    const bool direct = tensor.device() == device_ && tensor.is_contiguous();
    std::vector<at::Tensor> tensors{direct ? tensor : tensor.to(device_).contiguous()};
    collective(tensors);
    if (!direct) tensor.copy_(tensors.front());
  }

  template <typename Start>
  void run(const char* what, Start&& start) {
    try {
      start()->wait();
    } catch (const std::exception& e) {
      throw Error(fmt::format(
          "rank {} of {}: {} failed: another rank died, hung past the timeout or was stopped ({})",
          rank_, world_, what, first_line(e.what())));
    }
  }

  int rank_, world_;
  at::Device device_;
  c10::intrusive_ptr<Group> group_;
  CollectiveStats stats_;
};
#endif

#ifdef DELTATUNE_HAVE_GLOO
bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

std::unique_ptr<Collective> gloo_job(int rank, int world, const JobOptions& options) {
  auto store = rendezvous_store(rank, world, options);
  return std::make_unique<BackendCollective<c10d::ProcessGroupGloo>>(
      rank, world, at::Device(at::kCPU), options, [&] {
        auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout);
        const std::string interface = environment("GLOO_SOCKET_IFNAME");
        if (!interface.empty())
          gloo_options->devices.push_back(
              c10d::ProcessGroupGloo::createDeviceForInterface(interface));
        else if (is_loopback(master_address()))
          gloo_options->devices.push_back(
              c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
        else
          gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        gloo_options->threads = 1;
        return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, gloo_options);
      });
}
#endif

#ifdef USE_C10D_NCCL
std::unique_ptr<Collective> nccl_job(int rank, int world, const JobOptions& options) {
  // A collective past the timeout throws in wait() (instead of NCCL's
  // watchdog tearing the process down), so the error names the rank.
  if (environment("TORCH_NCCL_BLOCKING_WAIT").empty()) setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
  const at::Device device = options.device.has_index()
                                ? options.device
                                : at::Device(at::kCUDA, c10::cuda::current_device());
  c10::cuda::set_device(device.index());
  auto store = rendezvous_store(rank, world, options);
  return std::make_unique<BackendCollective<c10d::ProcessGroupNCCL>>(
      rank, world, device, options, [&] {
        auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
        nccl_options->timeout = options.timeout;
        return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, nccl_options);
      });
}
#endif

}  // namespace

int64_t local_rank_from_environment() {
  if (environment("LOCAL_RANK").empty()) return 0;
  return integer_variable("LOCAL_RANK", 0, 1 << 20);
}

at::Device rank_device(const at::Device& requested, bool index_given) {
  if (!requested.is_cuda() || index_given) return requested;
  const int64_t visible = std::max<int64_t>(1, model::cuda_device_count());
  return at::Device(at::kCUDA,
                    static_cast<c10::DeviceIndex>(local_rank_from_environment() % visible));
}

std::unique_ptr<Collective> join_job(int rank, int world, const JobOptions& options) {
  if (world < 1 || rank < 0 || rank >= world)
    throw Error(fmt::format("rank {} of a job of {}: no such rank", rank, world));
#ifdef USE_C10D_NCCL
  if (options.device.is_cuda()) return nccl_job(rank, world, options);
#endif
#ifdef DELTATUNE_HAVE_GLOO
  return gloo_job(rank, world, options);  // CUDA tensors staged through host memory
#else
  throw Error(fmt::format(
      "WORLD_SIZE={} (rank {}): this build has no Gloo{}; install libgloo-dev and rebuild for "
      "data-parallel training",
      world, rank, options.device.is_cuda() ? " and its LibTorch no NCCL" : ""));
#endif
}

std::unique_ptr<Collective> join_job_from_environment(const JobOptions& options) {
  if (environment("WORLD_SIZE").empty()) return nullptr;
  const int64_t world = integer_variable("WORLD_SIZE", 1, 1 << 20);
  if (world == 1) return nullptr;
  const int64_t rank = integer_variable("RANK", 0, world - 1);
  return join_job(static_cast<int>(rank), static_cast<int>(world), options);
}

namespace {

at::Tensor flatten(const Collective& collective, const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> flat;
  for (const auto& t : tensors) {
    if (t.scalar_type() != tensors.front().scalar_type())
      throw Error("all_reduce_flat: tensors of different dtypes");
    flat.push_back(t.detach().reshape({-1}));
  }
  // On the collective's device (host memory for Gloo, the GPU for NCCL):
  // copy_ brings the results back to each tensor's device.
  return at::cat(flat).to(collective.device());
}

void unflatten(const at::Tensor& flat, const std::vector<at::Tensor>& tensors) {
  at::NoGradGuard no_grad;
  int64_t offset = 0;
  for (const auto& t : tensors) {
    const int64_t n = t.numel();
    at::Tensor target = t;
    target.copy_(flat.narrow(0, offset, n).view(t.sizes()));
    offset += n;
  }
}

}  // namespace

void all_reduce_flat(Collective& collective, const std::vector<at::Tensor>& tensors) {
  if (tensors.empty()) return;
  at::Tensor flat = flatten(collective, tensors);
  collective.all_reduce_sum(flat);
  unflatten(flat, tensors);
}

void broadcast_flat(Collective& collective, const std::vector<at::Tensor>& tensors, int root) {
  if (tensors.empty()) return;
  at::Tensor flat = flatten(collective, tensors);
  collective.broadcast(flat, root);
  unflatten(flat, tensors);
}

std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int world) {
  const int64_t base = n / world, extra = n % world;
  const int64_t begin = rank * base + std::min<int64_t>(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

at::Tensor gather_shards(Collective& collective, const at::Tensor& rows, int64_t n) {
  const auto [begin, end] = shard_range(n, collective.rank(), collective.world_size());
  if (rows.size(0) != end - begin)
    throw Error(fmt::format("gather_shards: rank {} holds {} rows, its shard is {}",
                            collective.rank(), rows.size(0), end - begin));
  std::vector<int64_t> shape = rows.sizes().vec();
  shape[0] = n;
  // Zeros elsewhere: x + 0 is x, so the sum is every shard bit for bit.
  at::Tensor whole = at::zeros(shape, rows.options());
  whole.narrow(0, begin, end - begin).copy_(rows);
  collective.all_reduce_sum(whole);
  return whole;
}

}  // namespace deltatune::train
