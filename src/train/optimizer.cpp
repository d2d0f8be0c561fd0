#include "deltatune/train/optimizer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <algorithm>
#include <cmath>

#include "deltatune/error.h"
#include "deltatune/model/vector_clones.h"

namespace deltatune::train {

AdamW::AdamW(std::vector<methods::ParameterGroup> groups, AdamWOptions options)
    : groups_(std::move(groups)), options_(options) {
  for (size_t g = 0; g < groups_.size(); ++g) {
    const auto& group = groups_[g];
    for (size_t i = 0; i < group.parameters.size(); ++i) {
      const at::Tensor& p = group.parameters[i];
      slots_.push_back({group.names[i], p, at::zeros_like(p, at::MemoryFormat::Contiguous),
                        at::zeros_like(p, at::MemoryFormat::Contiguous), at::Tensor(), g});
    }
  }
}

void AdamW::set_mask(const std::string& name, const at::Tensor& mask) {
  for (auto& slot : slots_) {
    if (slot.name != name) continue;
    if (mask.defined() && mask.numel() > 0 && mask.sizes() != slot.parameter.sizes())
      throw Error("mask for '" + name + "' has the wrong shape");
    slot.mask = mask.defined() && mask.numel() > 0 ? mask.ne(0) : at::Tensor();
    return;
  }
  throw Error("the optimizer has no parameter '" + name + "'");
}

namespace {

// The update runs over slices of at most this many values of a parameter:
// its temporaries (the denominator; a masked update's candidates) are then
// bounded by a slice, not by the largest parameter (BERT-base's word
// embeddings: 94 MB each, seven of them for a masked update). Each value's
// update is elementwise, so slicing changes no result.
constexpr int64_t kUpdateSlice = int64_t{1} << 20;

// The constants of one update: AdamW's scalars as torch's kernels apply them
// to fp32 tensors (each double scalar rounded to float once).
struct UpdateConstants {
  float decay_factor;  // 1 - lr wd
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float correction2_sqrt;  // sqrt(1 - b2^t)
  float eps;
  float step_size;  // -lr / (1 - b1^t)
};

// One value's update, in the order of operations of torch.optim.AdamW's
// seven ATen kernels: p <- p (1 - lr wd); m <- b1 m + (1 - b1) g;
// v <- b2 v + (1 - b2) g g; p <- p + (step_size m) / (sqrt(v) /
// sqrt(1 - b2^t) + eps). ATen's `add_(g, alpha)` is a fused multiply-add
// where its kernels are built for AVX2 or AVX-512 (kFma), and so is its
// `addcmul_` as the compiler contracted it there. Where `keep` is false the
// values are computed and not stored: p, m and v stay bit-identical, and the
// loop has no branch, so it vectorizes.
template <bool kFma, bool kMasked>
inline __attribute__((always_inline)) void update_range(float* p, const float* g, float* m,
                                                        float* v, const bool* keep, int64_t begin,
                                                        int64_t end, const UpdateConstants& c) {
  auto multiply_add = [](float a, float b, float addend) {
    if constexpr (kFma) {
      return __builtin_fmaf(a, b, addend);
    } else {
      return a * b + addend;
    }
  };
  for (int64_t i = begin; i < end; ++i) {
    const float gi = g[i];
    const float mi = multiply_add(gi, c.one_minus_beta1, m[i] * c.beta1);
    const float vi = multiply_add(c.one_minus_beta2 * gi, gi, v[i] * c.beta2);
    const float denom = std::sqrt(vi) / c.correction2_sqrt + c.eps;
    const float pi = p[i] * c.decay_factor + (c.step_size * mi) / denom;
    if constexpr (kMasked) {
      const bool k = keep[i];
      p[i] = k ? pi : p[i];
      m[i] = k ? mi : m[i];
      v[i] = k ? vi : v[i];
    } else {
      p[i] = pi;
      m[i] = mi;
      v[i] = vi;
    }
  }
}

DELTATUNE_TARGET_FMA void update_range_fma(float* p, const float* g, float* m, float* v,
                                           const bool* keep, int64_t begin, int64_t end,
                                           const UpdateConstants& c) {
  if (keep == nullptr)
    update_range<true, false>(p, g, m, v, keep, begin, end, c);
  else
    update_range<true, true>(p, g, m, v, keep, begin, end, c);
}

void update_range_plain(float* p, const float* g, float* m, float* v, const bool* keep,
                        int64_t begin, int64_t end, const UpdateConstants& c) {
  if (keep == nullptr)
    update_range<false, false>(p, g, m, v, keep, begin, end, c);
  else
    update_range<false, true>(p, g, m, v, keep, begin, end, c);
}

// Whether ATen's elementwise kernels in this process are its AVX2 or AVX-512
// builds (both fuse multiply-adds) rather than its DEFAULT one: the
// capability its dispatch chose for this CPU (or ATEN_CPU_CAPABILITY), as
// show_config reports it ("AVX2", "AVX512", "NO AVX"); LibTorch exports no
// other way to ask.
bool aten_kernels_fuse_multiply_add() {
  const std::string config = at::show_config();
  const std::string key = "CPU capability usage: ";
  const size_t found = config.find(key);
  if (found == std::string::npos) return false;
  const std::string capability =
      config.substr(found + key.size(), config.find('\n', found) - found - key.size());
  return capability.rfind("AVX", 0) == 0;
}

// One pass over p, g, m and v (and the mask) for the update the composition
// in AdamW::step computes with seven ATen kernels and two temporaries, with
// ATen's arithmetic for the kernels this CPU runs (its dispatch capability).
void fused_update(float* p, const float* g, float* m, float* v, const bool* keep, int64_t n,
                  const UpdateConstants& c) {
  static const bool fma = aten_kernels_fuse_multiply_add();
  at::parallel_for(0, n, int64_t{1} << 15, [&](int64_t begin, int64_t end) {
    if (fma)
      update_range_fma(p, g, m, v, keep, begin, end, c);
    else
      update_range_plain(p, g, m, v, keep, begin, end, c);
  });
}

bool fusable(const at::Tensor& parameter, const at::Tensor& gradient, const at::Tensor& exp_avg,
             const at::Tensor& exp_avg_sq, const at::Tensor& mask) {
  auto dense_float = [&](const at::Tensor& t) {
    return model::vector::raw_cpu_float(t) && t.sizes() == parameter.sizes();
  };
  return dense_float(parameter) && dense_float(gradient) && dense_float(exp_avg) &&
         dense_float(exp_avg_sq) &&
         (!mask.defined() || (mask.device().is_cpu() && mask.scalar_type() == at::kBool &&
                              mask.is_contiguous() && mask.sizes() == parameter.sizes()));
}

}  // namespace

void AdamW::step(double lr_scale) {
  ++step_;
  at::NoGradGuard no_grad;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double correction1 = 1.0 - std::pow(b1, static_cast<double>(step_));
  const double correction2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(step_)));
  for (auto& slot : slots_) {
    at::Tensor& parameter = slot.parameter;
    if (!parameter.grad().defined()) continue;
    const auto& group = groups_[slot.group];
    const double lr = group.learning_rate * lr_scale;
    const at::Tensor& gradient = parameter.grad();
    if (options_.fused && fusable(parameter, gradient, slot.exp_avg, slot.exp_avg_sq, slot.mask)) {
      const UpdateConstants constants{static_cast<float>(1 - lr * group.weight_decay),
                                      static_cast<float>(b1),
                                      static_cast<float>(1 - b1),
                                      static_cast<float>(b2),
                                      static_cast<float>(1 - b2),
                                      static_cast<float>(correction2_sqrt),
                                      static_cast<float>(options_.eps),
                                      static_cast<float>(-lr / correction1)};
      fused_update(parameter.data_ptr<float>(), gradient.data_ptr<float>(),
                   slot.exp_avg.data_ptr<float>(), slot.exp_avg_sq.data_ptr<float>(),
                   slot.mask.defined() ? slot.mask.data_ptr<bool>() : nullptr, parameter.numel(),
                   constants);
      // Written through raw pointers: count the in-place writes as ATen's
      // in-place kernels would, or whatever is keyed on a tensor's version
      // (the packed weights of the inference path) would keep reading the
      // values from before the step.
      for (at::Tensor* written : {&parameter, &slot.exp_avg, &slot.exp_avg_sq})
        written->unsafeGetTensorImpl()->bump_version();
      continue;
    }
    // Loshchilov & Hutter's AdamW as torch.optim.AdamW computes it:
    // p <- p (1 - lr wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    // p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    auto update = [&](at::Tensor p, const at::Tensor& grad, at::Tensor exp_avg,
                      at::Tensor exp_avg_sq, const at::Tensor& keep) {
      // Masked, the same kernels run on copies, kept where `keep` is true:
      // masked-out entries get no decay, no moment update, no step.
      auto target = [&](const at::Tensor& t) { return keep.defined() ? t.clone() : t; };
      at::Tensor q = target(p), m = target(exp_avg), v = target(exp_avg_sq);
      if (group.weight_decay != 0) q.mul_(1 - lr * group.weight_decay);
      m.mul_(b1).add_(grad, 1 - b1);
      v.mul_(b2).addcmul_(grad, grad, 1 - b2);
      at::Tensor denom = (v.sqrt() / correction2_sqrt).add_(options_.eps);
      q.addcdiv_(m, denom, -lr / correction1);
      if (keep.defined()) {
        exp_avg.copy_(at::where(keep, m, exp_avg));
        exp_avg_sq.copy_(at::where(keep, v, exp_avg_sq));
        p.copy_(at::where(keep, q, p));
      }
    };
    const int64_t n = parameter.numel();
    const bool sliceable = n > kUpdateSlice && parameter.is_contiguous() &&
                           gradient.is_contiguous() &&
                           (!slot.mask.defined() || slot.mask.is_contiguous());
    if (!sliceable) {
      update(parameter, gradient, slot.exp_avg, slot.exp_avg_sq, slot.mask);
      continue;
    }
    auto flat = [](const at::Tensor& t) { return t.view({-1}); };
    for (int64_t begin = 0; begin < n; begin += kUpdateSlice) {
      const int64_t end = std::min(n, begin + kUpdateSlice);
      auto slice = [&](const at::Tensor& t) { return flat(t).slice(0, begin, end); };
      update(slice(parameter), slice(gradient), slice(slot.exp_avg), slice(slot.exp_avg_sq),
             slot.mask.defined() ? slice(slot.mask) : at::Tensor());
    }
  }
}

void AdamW::release_gradients() {
  for (auto& slot : slots_) slot.parameter.mutable_grad() = at::Tensor();
}

io::NamedTensors AdamW::state() const {
  io::NamedTensors out;
  out.emplace_back("optimizer.step", at::tensor({step_}, at::kLong));
  for (const auto& slot : slots_) {
    out.emplace_back("optimizer.exp_avg." + slot.name, slot.exp_avg);
    out.emplace_back("optimizer.exp_avg_sq." + slot.name, slot.exp_avg_sq);
  }
  return out;
}

void AdamW::load_state(const std::map<std::string, at::Tensor>& state) {
  auto get = [&](const std::string& key) -> const at::Tensor& {
    auto it = state.find(key);
    if (it == state.end()) throw Error("checkpoint lacks optimizer state '" + key + "'");
    return it->second;
  };
  step_ = get("optimizer.step").item<int64_t>();
  at::NoGradGuard no_grad;
  for (auto& slot : slots_) {
    slot.exp_avg.copy_(get("optimizer.exp_avg." + slot.name));
    slot.exp_avg_sq.copy_(get("optimizer.exp_avg_sq." + slot.name));
  }
}

Schedule parse_schedule(const std::string& name) {
  if (name == "constant") return Schedule::kConstant;
  if (name == "linear") return Schedule::kLinear;
  if (name == "constant_with_warmup") return Schedule::kConstantWithWarmup;
  throw Error("unknown schedule '" + name + "' (constant, linear, constant_with_warmup)");
}

double lr_multiplier(Schedule schedule, int64_t step, int64_t warmup_steps, int64_t total_steps) {
  if (schedule == Schedule::kConstant) return 1.0;
  if (step < warmup_steps) return static_cast<double>(step) / std::max<int64_t>(1, warmup_steps);
  if (schedule == Schedule::kConstantWithWarmup) return 1.0;
  return std::max(0.0, static_cast<double>(total_steps - step) /
                           std::max<int64_t>(1, total_steps - warmup_steps));
}

double clip_grad_norm(const std::vector<at::Tensor>& parameters, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> norms;
  for (const auto& p : parameters)
    if (p.grad().defined()) norms.push_back(p.grad().norm(2).to(at::kDouble));
  if (norms.empty()) return 0.0;
  const double total = at::stack(norms).norm(2).item<double>();
  if (max_norm > 0) {
    const double coefficient = max_norm / (total + 1e-6);
    if (coefficient < 1.0)
      for (const auto& p : parameters)
        if (p.grad().defined()) p.grad().mul_(coefficient);
  }
  return total;
}

}  // namespace deltatune::train
