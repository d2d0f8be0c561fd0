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

#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <limits>
#include <mutex>
#include <thread>

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

// The job's store, under this job's prefix: rank 0 serves a TCPStore at
// MASTER_ADDR:MASTER_PORT (when `may_serve`), or under torchrun's agent store
// every rank is a client of the agent's.
c10::intrusive_ptr<c10d::Store> job_store(int rank, int world, std::chrono::milliseconds timeout,
                                          bool may_serve) {
  const std::string address = master_address();
  const auto port = static_cast<uint16_t>(integer_variable("MASTER_PORT", 1, 65535));
  const bool agent_store = environment("TORCHELASTIC_USE_AGENT_STORE") == "True";
  c10d::TCPStoreOptions store_options;
  store_options.port = port;
  store_options.isServer = may_serve && !agent_store && rank == 0;
  store_options.numWorkers = static_cast<size_t>(world);
  store_options.waitWorkers = false;
  store_options.timeout = timeout;
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

// Signs of life each rank publishes to the job's store, so that a rank whose
// collective fails can say which rank failed: every `period` a beat count and
// how many collectives it has entered, under "alive/<rank>". The survivor
// reads everyone's twice, a few periods apart: a rank whose beats did not move
// died or is stopped; one that beats but entered fewer collectives is stuck in
// its own work. A store that does not answer names its server (rank 0, or
// torchrun's agent). The publisher runs on its own thread and store
// connection, so a blocked collective does not stop it, and it is never
// waited for: a store that hangs cannot hang the rank's exit.
class Liveness {
 public:
  using Connect = std::function<c10::intrusive_ptr<c10d::Store>()>;

  Liveness(int rank, int world, Connect connect, std::chrono::milliseconds period)
      : shared_(std::make_shared<Shared>()),
        rank_(rank),
        world_(world),
        connect_(std::move(connect)),
        period_(period) {
    try {
      shared_->store = connect_();
    } catch (const std::exception&) {
      return;  // no signs of life: a failure is then reported without a diagnosis
    }
    std::thread([shared = shared_, key = key(rank), period] {
      for (int64_t beat = 1;; ++beat) {
        const std::string value = fmt::format("{} {}", beat, shared->entered.load());
        try {
          shared->store->set(key, std::vector<uint8_t>(value.begin(), value.end()));
        } catch (const std::exception&) {
          break;
        }
        std::unique_lock<std::mutex> lock(shared->mutex);
        if (shared->changed.wait_for(lock, period, [&] { return shared->stop; })) break;
      }
    }).detach();
  }

  ~Liveness() {
    {
      std::lock_guard<std::mutex> lock(shared_->mutex);
      shared_->stop = true;
    }
    shared_->changed.notify_all();
  }

  Liveness(const Liveness&) = delete;
  Liveness& operator=(const Liveness&) = delete;

  void entered_collective() { ++shared_->entered; }

  // Which ranks failed, as a clause ("rank 1 stopped answering ..."), or ""
  // when the signs of life tell nothing. Takes a few periods.
  std::string diagnose() const {
    auto answer = std::make_shared<std::promise<std::string>>();
    std::future<std::string> future = answer->get_future();
    std::thread([answer, connect = connect_, rank = rank_, world = world_, period = period_,
                 entered = shared_->entered.load()] {
      try {
        answer->set_value(judge(connect(), rank, world, period, entered));
      } catch (const std::exception&) {
        answer->set_value(store_silent());
      }
    }).detach();
    // Reading a store whose server is stopped blocks without a timeout.
    if (future.wait_for(period_ * 4 + std::chrono::seconds(5)) != std::future_status::ready)
      return store_silent();
    return future.get();
  }

 private:
  struct Shared {
    c10::intrusive_ptr<c10d::Store> store;
    std::atomic<int64_t> entered{0};
    std::mutex mutex;
    std::condition_variable changed;
    bool stop = false;
  };
  struct Signs {
    int64_t beats = -1, entered = -1;  // -1: never published
  };

  static std::string key(int rank) { return "alive/" + std::to_string(rank); }

  static std::string store_silent() {
    return environment("TORCHELASTIC_USE_AGENT_STORE") == "True"
               ? "torchrun's agent store does not answer: the agent is gone"
               : "rank 0 does not answer (the job's store it serves is silent): it died, was "
                 "killed or is suspended";
  }

  static std::vector<Signs> read(c10d::Store& store, int world) {
    std::vector<Signs> signs(static_cast<size_t>(world));
    for (int r = 0; r < world; ++r) {
      if (!store.check({key(r)})) continue;
      const std::vector<uint8_t> bytes = store.get(key(r));
      const std::string text(bytes.begin(), bytes.end());
      Signs& s = signs[static_cast<size_t>(r)];
      if (std::sscanf(text.c_str(), "%" SCNd64 " %" SCNd64, &s.beats, &s.entered) != 2) s = Signs{};
    }
    return signs;
  }

  static std::string judge(c10::intrusive_ptr<c10d::Store> store, int rank, int world,
                           std::chrono::milliseconds period, int64_t entered) {
    const std::vector<Signs> before = read(*store, world);
    std::this_thread::sleep_for(period * 5 / 2);
    const std::vector<Signs> after = read(*store, world);
    std::vector<std::string> stopped, stuck;
    for (int r = 0; r < world; ++r) {
      if (r == rank) continue;
      const Signs &a = before[static_cast<size_t>(r)], &b = after[static_cast<size_t>(r)];
      if (b.beats < 0 || b.beats == a.beats)
        stopped.push_back(std::to_string(r));
      else if (b.entered < entered)
        stuck.push_back(std::to_string(r));
    }
    auto ranks = [](const std::vector<std::string>& list) {
      return fmt::format("{} {}", list.size() == 1 ? "rank" : "ranks", fmt::join(list, ", "));
    };
    std::vector<std::string> clauses;
    if (!stopped.empty())
      clauses.push_back(
          ranks(stopped) + " stopped answering (no sign of life for " +
          fmt::format("{:.0f}", std::chrono::duration<double>(period * 5 / 2).count()) +
          " s: it died, was killed or is suspended)");
    if (!stuck.empty())
      clauses.push_back(ranks(stuck) +
                        " is alive but has not reached this collective (stuck in its own work, or "
                        "slower than the job's timeout)");
    return fmt::format("{}", fmt::join(clauses, "; "));
  }

  std::shared_ptr<Shared> shared_;
  int rank_, world_;
  Connect connect_;
  std::chrono::milliseconds period_;
};

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
    // Every rank has joined, so the store's server is up: each publishes signs of life.
    liveness_ = std::make_unique<Liveness>(
        rank, world,
        [rank, world] { return job_store(rank, world, std::chrono::seconds(3), false); },
        std::chrono::seconds(1));
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
    stats_.all_reduce_seconds += seconds_since(start);
  }

  std::unique_ptr<PendingCollective> start_all_reduce_sum(at::Tensor tensor) override {
    if (tensor.device() != device_ || !tensor.is_contiguous())
      throw Error("start_all_reduce_sum: the tensor must be contiguous on the job's device");
    std::vector<at::Tensor> tensors{std::move(tensor)};
    liveness_->entered_collective();
    auto work = group_->allreduce(tensors);
    ++stats_.all_reduce_calls;
    stats_.all_reduce_bytes +=
        static_cast<int64_t>(tensors.front().numel() * tensors.front().element_size());
    return std::make_unique<Started<decltype(work)>>(*this, std::move(work), std::move(tensors));
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
    liveness_->entered_collective();
    try {
      start()->wait();
    } catch (const std::exception& e) {
      failed(what, e);
    }
  }

  [[noreturn]] void failed(const char* what, const std::exception& e) const {
    std::string which = liveness_->diagnose();
    if (which.empty()) which = "another rank died, hung past the timeout or was stopped";
    throw Error(fmt::format("rank {} of {}: {} failed: {} ({})", rank_, world_, what, which,
                            first_line(e.what())));
  }

  static double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  // A started all-reduce: its c10d work and the tensors it holds on to.
  template <typename Work>
  class Started final : public PendingCollective {
   public:
    Started(BackendCollective& owner, Work work, std::vector<at::Tensor> tensors)
        : owner_(owner), work_(std::move(work)), tensors_(std::move(tensors)) {}
    void wait() override {
      if (!work_) return;
      const auto start = std::chrono::steady_clock::now();
      try {
        work_->wait();
      } catch (const std::exception& e) {
        work_ = Work();
        owner_.failed("all-reduce", e);
      }
      work_ = Work();
      owner_.stats_.all_reduce_seconds += seconds_since(start);
    }

   private:
    BackendCollective& owner_;
    Work work_;
    std::vector<at::Tensor> tensors_;
  };

  int rank_, world_;
  at::Device device_;
  c10::intrusive_ptr<Group> group_;
  std::unique_ptr<Liveness> liveness_;
  CollectiveStats stats_;
};
#endif

#ifdef DELTATUNE_HAVE_GLOO
bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

std::unique_ptr<Collective> gloo_job(int rank, int world, const JobOptions& options) {
  auto store = job_store(rank, world, options.timeout, /*may_serve=*/true);
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
  auto store = job_store(rank, world, options.timeout, /*may_serve=*/true);
  return std::make_unique<BackendCollective<c10d::ProcessGroupNCCL>>(
      rank, world, device, options, [&] {
        auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
        nccl_options->timeout = options.timeout;
        return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, nccl_options);
      });
}
#endif

}  // namespace

int64_t local_world_size_from_environment() {
  if (environment("LOCAL_WORLD_SIZE").empty()) return 1;
  return integer_variable("LOCAL_WORLD_SIZE", 1, 1 << 20);
}

int64_t local_rank_from_environment() {
  if (environment("LOCAL_RANK").empty()) return 0;
  if (environment("LOCAL_WORLD_SIZE").empty()) return integer_variable("LOCAL_RANK", 0, 1 << 20);
  return integer_variable("LOCAL_RANK", 0, local_world_size_from_environment() - 1);
}

at::Device rank_device(const at::Device& requested, bool index_given) {
  if (!requested.is_cuda() || index_given) return requested;
  const int64_t visible = std::max<int64_t>(1, model::cuda_device_count());
  // NCCL refuses two ranks of a job on one GPU.
  const int64_t local_ranks = local_world_size_from_environment();
  if (local_ranks > visible)
    throw Error(
        fmt::format("LOCAL_WORLD_SIZE={}: more ranks on this machine than its {} visible "
                    "GPU{} (one GPU per rank)",
                    local_ranks, visible, visible == 1 ? "" : "s"));
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
  if (!environment("LOCAL_WORLD_SIZE").empty()) {
    // Checked here too, so that a malformed launcher environment is named
    // before the rendezvous waits on it.
    integer_variable("LOCAL_WORLD_SIZE", 1, world);
    (void)local_rank_from_environment();
  }
  return join_job(static_cast<int>(rank), static_cast<int>(world), options);
}

namespace {

class Finished final : public PendingCollective {
 public:
  void wait() override {}
};

}  // namespace

std::unique_ptr<PendingCollective> Collective::start_all_reduce_sum(at::Tensor tensor) {
  all_reduce_sum(tensor);
  return std::make_unique<Finished>();
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
