// Data-parallel training's one interface to the trainer: the ranks of a job
// and the few collectives a step needs, over PyTorch's c10d (Gloo on the CPU,
// NCCL for CUDA devices in builds whose LibTorch has it).
//
// Every rank runs the same code and calls the same collectives in the same
// order. A rank that dies or hangs makes the others' next collective throw
// deltatune::Error within the job's timeout, so no rank waits for ever; the
// error names the rank that failed where the ranks' signs of life in the
// job's store tell it (a few seconds more).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace deltatune::train {

// What one process's collectives have moved so far.
struct CollectiveStats {
  int64_t all_reduce_calls = 0;
  int64_t all_reduce_bytes = 0;   // payload handed to all-reduce (each rank's own copy)
  double all_reduce_seconds = 0;  // spent waiting for all-reduces (started ones: in wait())
};

// A collective under way; wait() returns once its result is in place (or
// throws deltatune::Error as the collective itself would have).
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
};

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Where the collectives run (host memory for Gloo, the rank's GPU for
  // NCCL): tensors that live there go without a copy, others are staged.
  virtual at::Device device() const = 0;
  // Elementwise sum over the ranks, in place; every rank ends with the same bits.
  virtual void all_reduce_sum(at::Tensor& tensor) = 0;
  // The same sum started, to overlap with the caller's work: `tensor` must be
  // contiguous on device() and left alone until wait(). Every rank must start
  // its collectives in the same order. This default runs it at once.
  virtual std::unique_ptr<PendingCollective> start_all_reduce_sum(at::Tensor tensor);
  // Rank `root`'s values on every rank, in place.
  virtual void broadcast(at::Tensor& tensor, int root) = 0;
  virtual void barrier() = 0;
  virtual CollectiveStats stats() const = 0;
};

struct JobOptions {
  // How long a collective or the rendezvous may wait for the other ranks.
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
  // The rank's compute device: a CUDA device joins over NCCL where the
  // build's LibTorch has it, anything else over Gloo.
  at::Device device = at::Device(at::kCPU);
};

// The job torchrun's environment describes, joined over Gloo: RANK,
// WORLD_SIZE, MASTER_ADDR, MASTER_PORT (LOCAL_RANK and LOCAL_WORLD_SIZE are
// read where a device is chosen). Rank 0 serves the TCPStore rendezvous;
// under torchrun's agent store (TORCHELASTIC_USE_AGENT_STORE=True) every rank
// is a client of the agent's store, under torchrun's prefix
// /worker/attempt_<TORCHELASTIC_RESTART_COUNT>. GLOO_SOCKET_IFNAME picks the
// network interface, as in PyTorch. nullptr when WORLD_SIZE is unset or 1.
// A malformed variable is an Error naming it.
std::unique_ptr<Collective> join_job_from_environment(const JobOptions& options);

// Rank `rank` of a job of `world` ranks (1 included) at MASTER_ADDR /
// MASTER_PORT, as join_job_from_environment joins once it has read them.
std::unique_ptr<Collective> join_job(int rank, int world, const JobOptions& options);

// LOCAL_RANK (0 when unset): which of a machine's GPUs a rank takes; below
// LOCAL_WORLD_SIZE where that is set.
int64_t local_rank_from_environment();
// LOCAL_WORLD_SIZE (1 when unset): the job's ranks on this machine.
int64_t local_world_size_from_environment();

// The device a rank of a job computes on: where CUDA was asked for without
// an index ("cuda", "auto"), GPU LOCAL_RANK modulo the visible ones, as
// torchrun's users expect (an Error where LOCAL_WORLD_SIZE exceeds them);
// otherwise `requested` as it is.
at::Device rank_device(const at::Device& requested, bool index_given);

// Many tensors summed over the ranks in one all-reduce of a flat buffer of
// their dtype (all the same), written back in place.
void all_reduce_flat(Collective& collective, const std::vector<at::Tensor>& tensors);
// Rank `root`'s values of many tensors on every rank, in one broadcast.
void broadcast_flat(Collective& collective, const std::vector<at::Tensor>& tensors, int root);

// Rows [begin, end) of a tensor's first dimension that `rank` of `world`
// holds when n rows are split into contiguous, near-equal shards (the first
// n % world shards one row longer).
std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int world);

// Every rank's `rows` (its shard_range of n rows, as a [rows, ...] tensor)
// assembled into the whole [n, ...] tensor on every rank, bit for bit.
at::Tensor gather_shards(Collective& collective, const at::Tensor& rows, int64_t n);

}  // namespace deltatune::train
