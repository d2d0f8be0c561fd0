// Dynamic loss scaling for fp16 training (Micikevicius et al. 2018, "Mixed
// Precision Training"), as torch.cuda.amp.GradScaler does it: the loss is
// multiplied by S before backward so small fp16 gradients do not flush to
// zero; before the optimizer step the gradients are divided by S, and a step
// with any inf/NaN gradient is skipped. S halves after every overflow and
// doubles after `growth_interval` clean steps in a row.
//
// On CUDA it runs ATen's own kernels (_amp_foreach_non_finite_check_and_unscale_,
// _amp_update_scale_, in 1.13 and 2.x), which keep S on the device and never
// synchronise except for the skip decision; elsewhere the same rule in plain ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <map>
#include <string>
#include <vector>

#include "deltatune/io/safetensors.h"

namespace deltatune::train {

struct GradScalerOptions {
  double init_scale = 65536.0;  // 2^16, torch's default
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

class GradScaler {
 public:
  // A disabled scaler is the identity: scale() returns the loss, unscale() true.
  GradScaler(bool enabled, const at::Device& device, GradScalerOptions options = {});

  bool enabled() const { return enabled_; }
  at::Tensor scale(const at::Tensor& loss) const;
  // Divides every defined gradient of `parameters` by S in place; false when
  // any of them holds inf or NaN (the step must be skipped).
  bool unscale(const std::vector<at::Tensor>& parameters);
  // After the step, or its skip: backs off after an overflow, grows after
  // growth_interval clean steps.
  void update();
  double current_scale() const;

  // "scaler.scale" and "scaler.growth_tracker", for checkpoints; load_state
  // ignores a checkpoint without them (one made without fp16).
  io::NamedTensors state() const;
  void load_state(const std::map<std::string, at::Tensor>& state);

 private:
  bool enabled_;
  GradScalerOptions options_;
  at::Tensor scale_;           // [1] fp32, on the device
  at::Tensor growth_tracker_;  // [1] int32: clean steps in a row
  at::Tensor found_inf_;       // [1] fp32: the last unscale's verdict
};

}  // namespace deltatune::train
