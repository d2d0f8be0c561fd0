#include "deltatune/train/grad_scaler.h"

#include <ATen/ATen.h>

namespace deltatune::train {

GradScaler::GradScaler(bool enabled, const at::Device& device, GradScalerOptions options)
    : enabled_(enabled), options_(options) {
  if (!enabled_) return;
  const auto on_device = at::TensorOptions().device(device);
  scale_ = at::full({1}, options_.init_scale, on_device.dtype(at::kFloat));
  growth_tracker_ = at::zeros({1}, on_device.dtype(at::kInt));
  found_inf_ = at::zeros({1}, on_device.dtype(at::kFloat));
}

at::Tensor GradScaler::scale(const at::Tensor& loss) const {
  if (!enabled_) return loss;
  return loss * scale_.to(loss.scalar_type());
}

bool GradScaler::unscale(const std::vector<at::Tensor>& parameters) {
  if (!enabled_) return true;
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const auto& p : parameters)
    if (p.grad().defined()) grads.push_back(p.grad());
  found_inf_.zero_();
  const at::Tensor inverse = scale_.reciprocal();
  if (scale_.is_cuda()) {
    // One fused pass per dtype, as GradScaler.unscale_ groups them.
    std::map<at::ScalarType, std::vector<at::Tensor>> by_dtype;
    for (const auto& g : grads) by_dtype[g.scalar_type()].push_back(g);
    for (auto& [dtype, group] : by_dtype)
      at::_amp_foreach_non_finite_check_and_unscale_(group, found_inf_, inverse);
  } else {
    // The same rule: found_inf = 1 if any entry is not finite; g *= 1/S.
    for (auto& g : grads) {
      if (!at::isfinite(g).all().item<bool>()) found_inf_.fill_(1.0);
      g.mul_(inverse.to(g.scalar_type()));
    }
  }
  return found_inf_.item<float>() == 0.0f;
}

void GradScaler::update() {
  if (!enabled_) return;
  if (scale_.is_cuda()) {
    at::_amp_update_scale_(scale_, growth_tracker_, found_inf_, options_.growth_factor,
                           options_.backoff_factor, options_.growth_interval);
    return;
  }
  // _amp_update_scale_'s rule: an overflow multiplies S by the backoff and
  // resets the count; otherwise the count grows, and at the interval S grows
  // (unless that would overflow fp32) and the count restarts.
  if (found_inf_.item<float>() != 0.0f) {
    scale_.mul_(options_.backoff_factor);
    growth_tracker_.zero_();
    return;
  }
  const int64_t clean = growth_tracker_.item<int>() + 1;
  if (clean == options_.growth_interval) {
    const double grown = scale_.item<float>() * options_.growth_factor;
    if (std::isfinite(static_cast<float>(grown))) scale_.fill_(grown);
    growth_tracker_.zero_();
  } else {
    growth_tracker_.fill_(clean);
  }
}

double GradScaler::current_scale() const { return enabled_ ? scale_.item<float>() : 1.0; }

io::NamedTensors GradScaler::state() const {
  if (!enabled_) return {};
  return {{"scaler.scale", scale_}, {"scaler.growth_tracker", growth_tracker_}};
}

void GradScaler::load_state(const std::map<std::string, at::Tensor>& state) {
  if (!enabled_) return;
  auto scale = state.find("scaler.scale");
  auto tracker = state.find("scaler.growth_tracker");
  if (scale == state.end() || tracker == state.end()) return;
  scale_.copy_(scale->second);
  growth_tracker_.copy_(tracker->second);
}

}  // namespace deltatune::train
