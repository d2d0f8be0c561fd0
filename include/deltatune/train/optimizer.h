// AdamW (Loshchilov & Hutter) exactly as torch.optim.AdamW computes it, with
// per-group learning rates, and learning-rate schedules.
//
// Per parameter p with gradient g at step t (1-based), group lr and decay wd:
//   p <- p - lr * wd * p                      (decoupled weight decay)
//   m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
//   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// A gradient mask (set_mask) restricts every term, decay included, to the
// masked-in entries: masked-out entries of p, m and v stay bit-identical.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "deltatune/io/safetensors.h"
#include "deltatune/methods/method.h"

namespace deltatune::train {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  // One pass per parameter over p, g, m and v where all are dense fp32 on
  // the CPU (and the mask dense bool); false, or any other tensor, takes
  // ATen's composition (torch.optim.AdamW's kernels). The one pass computes
  // each value with those kernels' arithmetic (their multiply-adds fused
  // where ATen's AVX2 and AVX-512 builds fuse them): the same bits.
  bool fused = true;
};

class AdamW {
 public:
  AdamW(std::vector<methods::ParameterGroup> groups, AdamWOptions options = {});

  // One update with every group's lr scaled by `lr_scale` (the schedule).
  // Parameters without a gradient are skipped, as torch does.
  void step(double lr_scale = 1.0);
  // Sets every gradient to None between steps (torch's zero_grad with
  // set_to_none, its default from 2.0 on): the next backward pass allocates
  // them as it goes, as in a run resumed from a checkpoint. A parameter the
  // next backward pass gives no gradient is then skipped by step(), as torch
  // skips it.
  void release_gradients();

  // Restricts updates of parameter `name` to entries where `mask` is nonzero
  // (same shape, any dtype). An empty tensor removes the mask.
  void set_mask(const std::string& name, const at::Tensor& mask);

  int64_t steps() const { return step_; }
  const std::vector<methods::ParameterGroup>& groups() const { return groups_; }

  // Moments and step count, for checkpoints.
  io::NamedTensors state() const;
  void load_state(const std::map<std::string, at::Tensor>& state);

 private:
  struct Slot {
    std::string name;
    at::Tensor parameter, exp_avg, exp_avg_sq, mask;
    size_t group;
  };
  std::vector<methods::ParameterGroup> groups_;
  std::vector<Slot> slots_;
  AdamWOptions options_;
  int64_t step_ = 0;
};

enum class Schedule { kConstant, kLinear, kConstantWithWarmup };
Schedule parse_schedule(const std::string& name);  // "constant", "linear", "constant_with_warmup"

// The multiplier of the base lr after `step` optimizer steps (HF's
// get_*_schedule_with_warmup): linear warmup over `warmup_steps`, then
// constant or linear decay to 0 at `total_steps`.
double lr_multiplier(Schedule schedule, int64_t step, int64_t warmup_steps, int64_t total_steps);

// Scales gradients so their global L2 norm is at most max_norm (as
// torch.nn.utils.clip_grad_norm_); returns the norm before clipping.
double clip_grad_norm(const std::vector<at::Tensor>& parameters, double max_norm);

}  // namespace deltatune::train
