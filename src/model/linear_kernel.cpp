#include "deltatune/model/linear_kernel.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <map>
#include <mutex>
#include <utility>

#include "deltatune/torch_compat.h"
#include "onednn_matmul.h"

namespace deltatune::model {

namespace {

std::atomic<bool>& onednn_enabled() {
  static std::atomic<bool> enabled{onednn::switched_on("DELTATUNE_ONEDNN")};
  return enabled;
}

}  // namespace

namespace {

using onednn::view_of;

// x2d [M, K] contiguous, weight [N, K] contiguous -> [M, N].
at::Tensor forward_2d(const at::Tensor& x2d, const at::Tensor& weight, const at::Tensor& bias) {
  const int64_t m = x2d.size(0), k = x2d.size(1), n = weight.size(0);
  at::Tensor out = at::empty({m, n}, x2d.options());
  if (m == 0) return out;
  // The weight read as its transpose [K, N] through strides, never copied.
  if (!onednn::matmul(view_of(x2d), view_of(weight, {k, n}, {1, k}),
                      bias.defined() ? bias.data_ptr<float>() : nullptr, view_of(out)))
    return at::linear(x2d, weight, bias);
  return out;
}

class OneDnnLinear : public torch::autograd::Function<OneDnnLinear> {
 public:
  // Saves only what backward will read: X for dW when W trains, W for dX
  // when X needs a gradient. A frozen weight (BitFit, LoRA, prompts,
  // adapters) keeps no copy of its input alive, as autograd's own addmm
  // saves conditionally: the FFN's [B, L, 4H] GELU output is then held by
  // no one through the backward pass.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& weight, const at::Tensor& bias) {
    at::Tensor x2d = x.reshape({-1, x.size(-1)}).contiguous();
    at::Tensor w = weight.contiguous();
    ctx->save_for_backward(
        {weight.requires_grad() ? x2d : at::Tensor(), x.requires_grad() ? w : at::Tensor()});
    const bool has_bias = bias.numel() > 0;
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["rows"] = x2d.size(0);
    auto sizes = x.sizes().vec();
    sizes.back() = weight.size(0);
    return forward_2d(x2d, w, has_bias ? bias.contiguous() : at::Tensor()).view(sizes);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& x2d = saved[0];  // defined when W trains
    const at::Tensor& w = saved[1];    // defined when X needs a gradient
    const int64_t m = ctx->saved_data["rows"].toInt();
    const int64_t n = grads[0].size(-1);
    at::Tensor grad = grads[0].reshape({m, n}).contiguous();
    at::Tensor grad_x, grad_w, grad_b;
    // Both products on at::mm, as autograd's own addmm backward computes
    // them: oneDNN 2.6's brgemm runs some of these shapes at half its forward
    // rate (BERT-base's FFN-output dX at 134 GFLOP/s against ~300), where
    // the BLAS does not; BERT-base training steps 18-20% faster in fp32,
    // MiniLM's unchanged (docs/BENCHMARKS.md).
    if (ctx->needs_input_grad(0) && w.defined()) {  // dX = dY W
      auto sizes = grads[0].sizes().vec();
      sizes.back() = w.size(1);
      grad_x = at::mm(grad, w).view(sizes);
    }
    if (ctx->needs_input_grad(1) && x2d.defined()) grad_w = at::mm(grad.t(), x2d);  // dW = dY^T X
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) grad_b = grad.sum(0);
    return {grad_x, grad_w, grad_b};
  }
};

bool takes_onednn_path(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  // Under autocast at::linear must run so that it casts to bf16.
  return onednn::available() && onednn_enabled().load(std::memory_order_relaxed) &&
         !compat::cpu_autocast_enabled() && x.device().is_cpu() && x.scalar_type() == at::kFloat &&
         weight.scalar_type() == at::kFloat &&
         (!bias.defined() || bias.scalar_type() == at::kFloat) && x.dim() >= 2 &&
         weight.dim() == 2 && !x.is_mkldnn() && x.layout() == at::kStrided;
}

// Under CPU autocast to bf16, a product autograd does not record whose
// weight is already its bf16 operand (weight_operand's cast): what autocast
// computes, on the packed bf16 weight.
bool takes_bf16_inference_path(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias, bool records_graph) {
  auto fits = [](const at::Tensor& t) {
    return t.device().is_cpu() && t.layout() == at::kStrided && !t.is_mkldnn() &&
           (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16);
  };
  return !records_graph && onednn::available() &&
         onednn_enabled().load(std::memory_order_relaxed) && compat::cpu_autocast_enabled() &&
         compat::autocast_dtype(c10::DeviceType::CPU) == at::kBFloat16 &&
         weight.scalar_type() == at::kBFloat16 && weight.dim() == 2 && fits(weight) &&
         x.dim() >= 2 && fits(x) && (!bias.defined() || fits(bias));
}

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const bool records_graph =
      c10::GradMode::is_enabled() &&
      (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
  if (takes_bf16_inference_path(x, weight, bias, records_graph))
    if (at::Tensor out = onednn::linear_frozen(x, weight, bias); out.defined()) return out;
  if (!takes_onednn_path(x, weight, bias)) return at::linear(x, weight, bias);
  if (!records_graph)  // inference: the weight read from its packed copy
    if (at::Tensor out = onednn::linear_frozen(x, weight, bias); out.defined()) return out;
  // LibTorch 1.13's custom functions reject undefined inputs: "no bias" travels as an empty tensor.
  return OneDnnLinear::apply(x, weight, bias.defined() ? bias : at::empty({0}, weight.options()));
}

bool onednn_linear_active() { return onednn::available() && onednn_enabled().load(); }

void set_onednn_linear(bool enabled) { onednn_enabled().store(enabled); }

namespace {

struct PreparedWeight {
  std::vector<c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>> sources;
  std::vector<int64_t> versions;
  at::Tensor value;

  bool still_valid(const std::vector<at::Tensor>& parts) const {
    for (size_t i = 0; i < parts.size(); ++i) {
      auto alive = sources[i].lock();
      if (alive.get() != parts[i].unsafeGetTensorImpl() || versions[i] != parts[i]._version())
        return false;
    }
    return true;
  }
  bool expired() const {
    for (const auto& s : sources)
      if (s.expired()) return true;
    return false;
  }
  // Of no use to a later evaluation: a part is gone, has changed, or trains
  // (the next optimizer step changes it).
  bool stale() const {
    for (size_t i = 0; i < sources.size(); ++i) {
      auto source = sources[i].lock();
      if (!source || source->requires_grad() ||
          source->version_counter().current_version() != versions[i])
        return true;
    }
    return false;
  }
};

using PreparedKey = std::pair<std::vector<const void*>, int>;

std::mutex& prepared_mutex() {
  static std::mutex m;
  return m;
}
std::map<PreparedKey, PreparedWeight>& prepared_weights() {
  static std::map<PreparedKey, PreparedWeight> cache;
  return cache;
}

}  // namespace

at::Tensor weight_operand(const std::vector<at::Tensor>& parts) {
  // Frozen: no gradient can flow to the parts here, because none wants one or
  // autograd is not recording (inference; an optimizer step bumps versions).
  bool wants_gradient = false;
  for (const auto& p : parts) wants_gradient = wants_gradient || p.requires_grad();
  const bool frozen = !wants_gradient || !c10::GradMode::is_enabled();
  const c10::DeviceType device = parts.front().device().type();
  const bool autocast = (device == c10::DeviceType::CPU || device == c10::DeviceType::CUDA) &&
                        compat::autocast_enabled(device) &&
                        parts.front().scalar_type() == at::kFloat;
  const at::ScalarType dtype =
      autocast ? compat::autocast_dtype(device) : parts.front().scalar_type();
  // DELTATUNE_PREPARED_WEIGHTS=0 turns the reuse off (plain autocast), for comparisons.
  static const bool reuse = onednn::switched_on("DELTATUNE_PREPARED_WEIGHTS");
  if (!frozen || !reuse) return parts.size() == 1 ? parts.front() : at::cat(parts);
  if (parts.size() == 1 && dtype == parts.front().scalar_type()) return parts.front();

  PreparedKey key{{}, static_cast<int>(dtype)};
  for (const auto& p : parts) key.first.push_back(p.unsafeGetTensorImpl());
  std::lock_guard<std::mutex> lock(prepared_mutex());
  auto& cache = prepared_weights();
  if (auto found = cache.find(key); found != cache.end() && found->second.still_valid(parts))
    return found->second.value;
  for (auto it = cache.begin(); it != cache.end();)
    it = it->second.expired() ? cache.erase(it) : ++it;

  PreparedWeight prepared;
  for (const auto& p : parts) {
    prepared.sources.emplace_back(p.getIntrusivePtr());
    prepared.versions.push_back(p._version());
  }
  {
    at::NoGradGuard no_grad;
    const bool autocast_was_on = autocast && compat::autocast_enabled(device);
    if (autocast) compat::set_autocast_enabled(device, false);  // the one cast wanted, once
    prepared.value = (parts.size() == 1 ? parts.front() : at::cat(parts)).to(dtype).contiguous();
    if (autocast) compat::set_autocast_enabled(device, autocast_was_on);
  }
  at::Tensor value = prepared.value;
  cache[key] = std::move(prepared);
  return value;
}

void release_stale_weight_copies() {
  {
    std::lock_guard<std::mutex> lock(prepared_mutex());
    auto& cache = prepared_weights();
    for (auto it = cache.begin(); it != cache.end();)
      it = it->second.stale() ? cache.erase(it) : ++it;
  }
  // After the prepared copies: a dropped one's packed layout is then gone too.
  onednn::drop_packed_copies_of_changing_weights();
}

}  // namespace deltatune::model
