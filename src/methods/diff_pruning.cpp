#include "deltatune/methods/diff_pruning.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>

#include "deltatune/error.h"
#include "deltatune/model/dropout.h"
#include "deltatune/model/vector_clones.h"

namespace deltatune::methods {

namespace {

// Tensors the one-pass loops below read directly; anything else (a GPU,
// another dtype) takes the ATen composition.
bool plain_cpu_float(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors)
    if (!model::vector::raw_cpu_float(*t)) return false;
  return true;
}

constexpr int64_t kGrain = 1 << 15;  // ATen's own grain for elementwise kernels

// The hard-concrete gate from s (Louizos et al., eq. 9-10): z = clamp(s (r - l)
// + l, 0, 1), its derivative dz/dα = (r - l) s (1 - s) inside (0, 1) and 0
// where clamped (dz null in evaluation), and the parameter θ = θ_0 + z w. One
// pass with the composition's float operations in its order, so bit for bit
// its values: s * span then + left (ATen casts the double scalars to float),
// clamp, (s * (1 - s)) * span times the inside mask, and θ_0 + (z w).
void gate_and_apply(const float* s, float span, float left, const float* base, const float* w,
                    float* z, float* dz, float* parameter, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float stretched = s[i] * span + left;
      const float gate =
          std::isnan(stretched) ? stretched : std::min(std::max(stretched, 0.0f), 1.0f);
      z[i] = gate;
      if (dz != nullptr) {
        const float inside = (stretched > 0.0f && stretched < 1.0f) ? 1.0f : 0.0f;
        dz[i] = (s[i] * (1.0f - s[i]) * span) * inside;
      }
      parameter[i] = base[i] + gate * w[i];
    }
  });
}

// dL/dw = g z and dL/dα = (g w) dz/dα, added to (or, with `add` false,
// written as) the gradients; the composition's products in its order.
void fold_into(const float* g, const float* z, const float* w, const float* dz, float* grad_w,
               float* grad_alpha, bool add, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float dw = g[i] * z[i], dalpha = g[i] * w[i] * dz[i];
      grad_w[i] = add ? grad_w[i] + dw : dw;
      grad_alpha[i] = add ? grad_alpha[i] + dalpha : dalpha;
    }
  });
}

}  // namespace

DiffPruning::DiffPruning(DiffPruningOptions options) : options_(options) {
  if (!(options.density > 0 && options.density <= 1))
    throw Error(fmt::format("diff-pruning: density must be in (0, 1], not {}", options.density));
  if (!(options.left < 0 && options.right > 1))
    throw Error("diff-pruning: the stretch interval needs l < 0 and r > 1");
  if (options.l0_penalty < 0) throw Error("diff-pruning: l0_penalty must be >= 0");
}

nlohmann::json DiffPruning::config() const {
  return {{"density", options_.density},
          {"l0_penalty", options_.l0_penalty},
          {"alpha_init", options_.alpha_init},
          {"left", options_.left},
          {"right", options_.right},
          {"finetune_lr", options_.finetune_learning_rate},
          {"finetune_epochs", options_.finetune_epochs}};
}

std::vector<Stage> DiffPruning::stages() const {
  Stage relaxed("relaxed", "stage1");
  Stage fixed("fixed_mask");
  fixed.learning_rate = options_.finetune_learning_rate;
  fixed.epochs = options_.finetune_epochs;
  return {relaxed, fixed};
}

StageTransition DiffPruning::between_stages(size_t /*finished*/,
                                            model::SequenceClassifierImpl& model) {
  StageTransition t;
  const int64_t kept = project(model);
  t.record = "projected";
  t.facts = {{"kept", kept}};
  t.evaluate = true;
  t.message = fmt::format("projected to {} entries", kept);
  return t;
}

void DiffPruning::attach(model::SequenceClassifierImpl& model) {
  // A second attach would take the trained θ as its θ_0.
  if (!diffs_.empty() || projected_) throw Error("diff-pruning: attach() called twice");
  at::NoGradGuard no_grad;
  for (auto& item : model.named_parameters(true)) {
    item.value().requires_grad_(true);  // θ receives dL/dθ; w and α train
    if (is_classifier_parameter(item.key())) continue;
    Diff d;
    d.parameter = item.value();
    d.base = item.value().detach().clone();
    d.w = at::zeros_like(d.base).requires_grad_(true);
    d.log_alpha = at::full_like(d.base, options_.alpha_init).requires_grad_(true);
    diffs_[item.key()] = std::move(d);
  }
}

std::vector<ParameterGroup> DiffPruning::parameter_groups(model::SequenceClassifierImpl& model,
                                                          double learning_rate,
                                                          double weight_decay) const {
  if (projected_) return Method::parameter_groups(model, learning_rate, weight_decay);
  ParameterGroup diffs{"diff", {}, {}, learning_rate, 0.0};
  ParameterGroup alphas{"log_alpha", {}, {}, learning_rate, 0.0};
  for (const auto& [name, d] : diffs_) {
    diffs.names.push_back("diff::" + name);
    diffs.parameters.push_back(d.w);
    alphas.names.push_back("log_alpha::" + name);
    alphas.parameters.push_back(d.log_alpha);
  }
  ParameterGroup head{"head", {}, {}, learning_rate, 0.0};
  for (auto& item : model.named_parameters(true))
    if (is_classifier_parameter(item.key())) {
      head.names.push_back(item.key());
      head.parameters.push_back(item.value());
    }
  return {diffs, alphas, head};
}

void DiffPruning::fold_gradient(Diff& d) const {
  at::Tensor g = d.parameter.grad();
  if (!g.defined() || !d.z.defined()) return;
  at::NoGradGuard no_grad;
  const bool accumulated = d.w.grad().defined() && d.log_alpha.grad().defined();
  if (plain_cpu_float({&g, &d.z, &d.w, &d.dz}) &&
      (!accumulated || plain_cpu_float({&d.w.grad(), &d.log_alpha.grad()}))) {
    if (!accumulated) {
      d.w.mutable_grad() = at::empty_like(d.w);
      d.log_alpha.mutable_grad() = at::empty_like(d.log_alpha);
    }
    fold_into(g.data_ptr<float>(), d.z.data_ptr<float>(), d.w.data_ptr<float>(),
              d.dz.data_ptr<float>(), d.w.mutable_grad().data_ptr<float>(),
              d.log_alpha.mutable_grad().data_ptr<float>(), accumulated, g.numel());
    d.parameter.mutable_grad() = at::Tensor();
    return;
  }
  at::Tensor dw = g * d.z, dalpha = g * d.w * d.dz;
  if (d.w.grad().defined()) {
    d.w.mutable_grad().add_(dw);
    d.log_alpha.mutable_grad().add_(dalpha);
  } else {
    d.w.mutable_grad() = dw;
    d.log_alpha.mutable_grad() = dalpha;
  }
  d.parameter.mutable_grad() = at::Tensor();
}

void DiffPruning::before_forward(model::SequenceClassifierImpl& /*model*/, bool training) {
  if (projected_) return;
  at::NoGradGuard no_grad;
  const double span = options_.right - options_.left;
  for (auto& [name, d] : diffs_) {
    fold_gradient(d);  // a previous micro-batch's gradient, with its own z
    at::Tensor s;
    if (training) {
      // From the default CPU generator whatever the device (as Child-Tuning_F's
      // masks): the same gates on a GPU as on the CPU. It costs a host draw
      // and copy per step on a GPU (docs/METHODS.md).
      const at::TensorOptions cpu = d.log_alpha.options().device(at::kCPU);
      at::Tensor u = (cpu.dtype() == at::kFloat
                          ? model::uniform_float(d.log_alpha.sizes(), 1e-6, 1.0 - 1e-6)
                          : at::empty(d.log_alpha.sizes(), cpu).uniform_(1e-6, 1.0 - 1e-6))
                         .to(d.log_alpha.device());
      s = at::sigmoid(u.log() - (-u).log1p() + d.log_alpha);
    } else {
      s = at::sigmoid(d.log_alpha);
    }
    if (plain_cpu_float({&s, &d.base, &d.w, &d.parameter})) {
      d.z = at::empty_like(s);
      d.dz = training ? at::empty_like(s) : at::Tensor();
      gate_and_apply(
          s.data_ptr<float>(), static_cast<float>(span), static_cast<float>(options_.left),
          d.base.data_ptr<float>(), d.w.data_ptr<float>(), d.z.data_ptr<float>(),
          training ? d.dz.data_ptr<float>() : nullptr, d.parameter.data_ptr<float>(), s.numel());
      d.parameter.unsafeGetTensorImpl()->bump_version();  // written in place, as copy_ would
      continue;
    }
    at::Tensor stretched = s * span + options_.left;
    d.z = stretched.clamp(0.0, 1.0);
    // dz/dα = (r - l) s (1 - s) inside (0, 1), 0 where clamped.
    d.dz = training ? (s * (1 - s) * span) * stretched.gt(0).logical_and(stretched.lt(1))
                    : at::Tensor();
    d.parameter.copy_(d.base + d.z * d.w);
  }
}

void DiffPruning::on_backward(model::SequenceClassifierImpl& /*model*/, int64_t /*step*/) {
  if (projected_) return;
  ++relaxed_steps_;
  at::NoGradGuard no_grad;
  const double shift = std::log(-options_.left / options_.right);
  for (auto& [name, d] : diffs_) {
    fold_gradient(d);
    if (!d.log_alpha.grad().defined()) continue;
    // d/dα of λ σ(α - log(-l/r)).
    at::Tensor p = at::sigmoid(d.log_alpha - shift);
    d.log_alpha.mutable_grad().add_(p * (1 - p), options_.l0_penalty);
  }
}

MethodState DiffPruning::state() const {
  MethodState state = projected_ ? masks_state(masks_) : MethodState{};
  state.facts = {{"relaxed_steps", relaxed_steps_}, {"projected", projected_}};
  return state;
}

void DiffPruning::restore_state(const MethodState& state) {
  check_saved_stage(state, name(), "projected", projected_, "relaxed", "fixed-mask");
  relaxed_steps_ = state.facts.value("relaxed_steps", int64_t{0});
  if (!projected_) return;
  // The projection was replayed from stage 1's final checkpoint: it must be the saved one.
  const auto saved = masks_of_state(state, name());
  for (const auto& [parameter, mask] : masks_) {
    auto it = saved.find(parameter);
    if (it == saved.end() || !at::equal(it->second, mask))
      throw Error("diff-pruning: the checkpoint's projected mask of " + parameter +
                  " differs from the projection of its stage-1 state");
  }
}

std::optional<int64_t> DiffPruning::sparse_budget(
    const model::SequenceClassifierImpl& model) const {
  int64_t total = 0;
  for (const auto& item : model.named_parameters(true))
    if (!is_classifier_parameter(item.key())) total += item.value().numel();
  return std::llround(options_.density * static_cast<double>(total));
}

std::optional<int64_t> DiffPruning::settled_trainable(
    const model::SequenceClassifierImpl& model) const {
  int64_t non_head = 0, head = 0;
  for (const auto& item : model.named_parameters(true))
    (is_classifier_parameter(item.key()) ? head : non_head) += item.value().numel();
  return 2 * non_head + head;
}

int64_t DiffPruning::project(model::SequenceClassifierImpl& model) {
  if (projected_) throw Error("diff-pruning: already projected");
  if (diffs_.empty()) throw Error("diff-pruning: project() before attach()");
  // Before any step w = 0: the projection would keep k arbitrary zero diffs.
  if (relaxed_steps_ == 0) throw Error("diff-pruning: project() before stage 1 took a step");
  at::NoGradGuard no_grad;
  const double span = options_.right - options_.left;
  std::map<std::string, at::Tensor> magnitude, delta;
  for (auto& [name, d] : diffs_) {
    at::Tensor z = (at::sigmoid(d.log_alpha) * span + options_.left).clamp(0.0, 1.0);
    delta[name] = z * d.w;
    magnitude[name] = delta[name].abs();
  }
  const int64_t k = *sparse_budget(model);
  masks_ = top_k_masks(magnitude, k);
  for (auto& [name, d] : diffs_) {
    d.parameter.copy_(d.base + delta[name] * masks_[name]);
    d.parameter.mutable_grad() = at::Tensor();
  }
  diffs_.clear();  // w, α, θ_0 and the sampled masks are no longer needed
  projected_ = true;
  return k;
}

std::vector<std::pair<std::string, StorageKind>> DiffPruning::stored_parameters(
    const model::SequenceClassifierImpl& model) const {
  return every_parameter_sparse_head_dense(model);
}

std::string DiffPruning::describe() const {
  return fmt::format(
      "w and log-alpha for every parameter train (L0-relaxed), then the top {:.2f}% of |diff| "
      "fine-tune with a fixed mask; sparse delta",
      100 * options_.density);
}

}  // namespace deltatune::methods
