#include "deltatune/model/fused_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "deltatune/model/dropout.h"
#include "deltatune/model/linear_kernel.h"
#include "deltatune/model/vector_clones.h"
#include "deltatune/torch_compat.h"
#include "onednn_matmul.h"

namespace deltatune::model {

namespace {

std::atomic<bool>& fused_enabled() {
  static std::atomic<bool> enabled{onednn::switched_on("DELTATUNE_FUSED")};
  return enabled;
}

// Which fused kernels a call may take instead of autograd's composition:
// none (autograd records it, fusion is off, a tensor is elsewhere), oneDNN's
// fp32 kernels (autocast off), or its bf16 products under CPU autocast to
// bf16 (what autocast computes, with fp32 accumulation inside each product
// and one rounding of its result).
enum class Fused { kNo, kFp32, kBf16 };

Fused fused_path(std::initializer_list<const at::Tensor*> tensors) {
  if (!fused_enabled().load(std::memory_order_relaxed) || !onednn::available()) return Fused::kNo;
  const bool bf16 = compat::cpu_autocast_enabled();
  if (bf16 && compat::autocast_dtype(c10::DeviceType::CPU) != at::kBFloat16) return Fused::kNo;
  const bool grad_mode = c10::GradMode::is_enabled();
  for (const at::Tensor* t : tensors) {
    if (!t->defined()) continue;
    if (grad_mode && t->requires_grad()) return Fused::kNo;
    const bool type_fits =
        t->scalar_type() == at::kFloat || (bf16 && t->scalar_type() == at::kBFloat16);
    if (!t->device().is_cpu() || !type_fits || t->layout() != at::kStrided || t->is_mkldnn())
      return Fused::kNo;
  }
  return bf16 ? Fused::kBf16 : Fused::kFp32;
}

// True when the call may skip autograd and run on oneDNN's fp32 kernels.
bool fusable(std::initializer_list<const at::Tensor*> tensors) {
  return fused_path(tensors) == Fused::kFp32;
}

// A product `path` may fuse with this weight: under bf16 autocast the weight
// is its bf16 operand (weight_operand's cast), as autocast would multiply.
bool fusable_product(std::initializer_list<const at::Tensor*> tensors, const at::Tensor& weight) {
  const Fused path = fused_path(tensors);
  return path == Fused::kFp32 || (path == Fused::kBf16 && weight.scalar_type() == at::kBFloat16);
}

// The epilogue computing config.hidden_act `name`; config.cpp admits only
// these names, "silu" / "swish" being the last.
onednn::Epilogue epilogue_for(const std::string& name) {
  using onednn::Epilogue;
  if (name == "gelu") return Epilogue::kGelu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast")
    return Epilogue::kGeluTanh;
  if (name == "relu") return Epilogue::kRelu;
  return Epilogue::kSilu;
}

at::Tensor plain_attention(const at::Tensor& queries, const at::Tensor& keys,
                           const at::Tensor& values, const at::Tensor& additive_mask, int64_t heads,
                           double dropout_p) {
  const int64_t batch = queries.size(0), length = queries.size(1);
  const int64_t head_dim = queries.size(2) / heads;
  // [B, L, H] -> [B * heads, L, d]
  auto split_heads = [&](const at::Tensor& x) {
    return x.view({batch, x.size(1), heads, head_dim})
        .transpose(1, 2)
        .reshape({batch * heads, x.size(1), head_dim});
  };
  at::Tensor q = split_heads(queries), k = split_heads(keys), v = split_heads(values);
  const int64_t key_length = k.size(1);
  // BertSelfAttention's products, with the scale and the mask in one batched GEMM.
  at::Tensor mask = additive_mask.expand({batch, heads, length, key_length})
                        .reshape({batch * heads, length, key_length});
  at::Tensor scores = at::baddbmm(mask, q, k.transpose(1, 2), /*beta=*/1.0,
                                  /*alpha=*/1.0 / std::sqrt(static_cast<double>(head_dim)));
  at::Tensor probs = at::softmax(scores, -1);
  if (dropout_p > 0) probs = model::dropout(probs, dropout_p, /*train=*/true);
  at::Tensor context = at::bmm(probs, v).view({batch, heads, length, head_dim});
  return context.transpose(1, 2).reshape({batch, length, heads * head_dim});
}

// x W^T + b (+ each row's bias), the plain composition.
at::Tensor plain_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& row_bias) {
  at::Tensor y = model::linear(x, weight, bias);
  return row_bias.defined() ? y + per_row(row_bias, y.dim()) : y;
}

// sum_i f(row[i]) over n values in eight independent lanes. Always inlined,
// so that it takes the instruction set of each vector clone calling it.
template <typename F>
__attribute__((always_inline)) inline float lane_sum(const float* row, int64_t n, F f) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) lanes[j] += f(row[i + j]);
  for (; i < n; ++i) lanes[0] += f(row[i]);
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) +
         ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

bool row_bias_fits(const at::Tensor& x, const at::Tensor& row_bias) {
  return !row_bias.defined() ||
         (x.dim() >= 2 && row_bias.dim() == 2 && row_bias.size(0) == x.size(0) && x.size(0) > 0);
}

bool all_cpu_float(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors)
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat || t->layout() != at::kStrided ||
        t->is_mkldnn())
      return false;
  return true;
}

bool attention_shapes_fit(const at::Tensor& queries, const at::Tensor& keys,
                          const at::Tensor& values, const at::Tensor& additive_mask) {
  const int64_t batch = queries.size(0), length = queries.size(1);
  const int64_t key_length = keys.size(1);
  return batch > 0 && length > 0 && key_length > 0 && queries.stride(2) == 1 &&
         keys.stride(2) == 1 && values.stride(2) == 1 && additive_mask.dim() == 4 &&
         (additive_mask.size(0) == batch || additive_mask.size(0) == 1) &&
         additive_mask.size(1) == 1 && additive_mask.size(2) == 1 &&
         additive_mask.size(3) == key_length;
}

// [B, heads, L, d] read through strides from [B, L, heads * d].
onednn::View heads_of(const at::Tensor& x, int64_t heads) {
  const int64_t head_dim = x.size(2) / heads;
  return onednn::view_of(x, {x.size(0), heads, x.size(1), head_dim},
                         {x.stride(0), head_dim, x.stride(1), 1});
}

// softmax(Q K^T / sqrt(d) + mask) in fp32 as [B, heads, L, K] from readings
// of Q [B, heads, L, d] and K^T [B, heads, d, K] (fp32 or bf16), the scale
// and the mask [B or 1, 1, 1, K] in the product's epilogue (no expanded
// mask); undefined where oneDNN has no implementation for these strides.
at::Tensor scores_softmax(const onednn::View& queries, const onednn::View& keys_transposed,
                          const at::Tensor& additive_mask, const at::TensorOptions& options) {
  using onednn::view_of;
  const int64_t head_dim = queries.dims[3], key_length = keys_transposed.dims[3];
  at::Tensor mask = additive_mask.to(at::kFloat).contiguous();
  auto mask_view =
      view_of(mask, {mask.size(0), 1, 1, key_length}, {key_length, key_length, key_length, 1});
  at::Tensor scores = at::empty({queries.dims[0], queries.dims[1], queries.dims[2], key_length},
                                options.dtype(at::kFloat));
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  if (!onednn::matmul(queries, keys_transposed, nullptr, view_of(scores),
                      {onednn::Epilogue::kScaleAdd, scale, &mask_view}))
    return {};
  return at::_softmax(scores, -1, false);
}

// The probabilities for Q and K read in place from [B, n, heads * d].
at::Tensor attention_probabilities(const at::Tensor& queries, const at::Tensor& keys,
                                   const at::Tensor& additive_mask, int64_t heads) {
  const int64_t key_length = keys.size(1), head_dim = queries.size(2) / heads;
  return scores_softmax(heads_of(queries, heads),
                        onednn::view_of(keys, {keys.size(0), heads, head_dim, key_length},
                                        {keys.stride(0), head_dim, 1, keys.stride(1)}),
                        additive_mask, queries.options());
}

// probs [B, heads, L, K] times values [B, K, heads * d], written as
// [B, L, heads * d]; undefined where oneDNN has no implementation.
at::Tensor attention_context(const at::Tensor& probs, const at::Tensor& values) {
  using onednn::view_of;
  const int64_t batch = probs.size(0), heads = probs.size(1), length = probs.size(2);
  const int64_t width = values.size(2), head_dim = width / heads;
  at::Tensor context = at::empty({batch, length, width}, values.options());
  if (!onednn::matmul(
          view_of(probs), heads_of(values, heads), nullptr,
          view_of(context, {batch, heads, length, head_dim}, {length * width, head_dim, width, 1})))
    return {};
  return context;
}

// Inference attention on bf16 Q, K and V under bf16 autocast: fp32 scores
// (scale and mask in the product's epilogue) and softmax, bf16 probabilities
// times bf16 V. The heads are first copied head-major ([B, heads, n, d]):
// on the head-split strides oneDNN 2.6 takes its generic bf16 kernel
// (gemm:jit) instead of AMX's brgemm, 2.4x slower for the context product of
// MiniLM at batch 32, length 64, and the copies cost less than that.
at::Tensor bf16_attention(const at::Tensor& queries, const at::Tensor& keys,
                          const at::Tensor& values, const at::Tensor& additive_mask,
                          int64_t heads) {
  using onednn::view_of;
  const int64_t batch = queries.size(0), length = queries.size(1), width = queries.size(2);
  const int64_t key_length = keys.size(1), head_dim = width / heads;
  auto head_major = [&](const at::Tensor& x) {
    return x.view({batch, x.size(1), heads, head_dim}).transpose(1, 2).contiguous();
  };
  const at::Tensor q = head_major(queries), k = head_major(keys), v = head_major(values);
  // K^T read through strides: [B, heads, d, K].
  at::Tensor probs =
      scores_softmax(view_of(q),
                     view_of(k, {batch, heads, head_dim, key_length},
                             {heads * key_length * head_dim, key_length * head_dim, 1, head_dim}),
                     additive_mask, q.options());
  if (!probs.defined()) return {};
  probs = probs.to(at::kBFloat16);
  at::Tensor context = at::empty({batch, heads, length, head_dim}, v.options());
  if (!onednn::matmul(view_of(probs), view_of(v), nullptr, view_of(context))) return {};
  return context.transpose(1, 2).reshape({batch, length, width});
}

// c = a b through oneDNN on strided views, else through ATen (which copies
// non-contiguous operands); a, b, c are [B, heads, rows, cols] readings.
void product_into(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
  using onednn::view_of;
  auto view = [](const at::Tensor& t) { return view_of(t, t.sizes().vec(), t.strides().vec()); };
  if (!onednn::matmul(view(a), view(b), nullptr, view(c))) c.copy_(at::matmul(a, b));
}

// A tensor a custom function's forward may or may not have saved (dropout's
// keep mask, absent without dropout): undefined where it is absent.
at::Tensor saved_if_any(torch::autograd::AutogradContext* ctx, const std::string& name) {
  const auto saved = ctx->saved_data.find(name);
  return saved != ctx->saved_data.end() ? saved->second.toTensor() : at::Tensor();
}

// Attention for training (Vaswani et al., eq. 1, with dropout on the
// probabilities as BERT applies it): plain_attention's values and random
// stream (the dropout noise is the same draw from the default generator),
// but the backward pass keeps only Q, K and V (views of the projections, no
// head-split copies), the probabilities P and which entries dropout kept (a
// byte each): autograd's composition keeps P, the fp32 noise N and P N, 12
// bytes per score against 5 here. With dS the softmax backward of
// dP = (dC V^T) N: dQ = dS K / sqrt(d), dK = dS^T Q / sqrt(d), dV = (P N)^T dC.
class TrainingAttention : public torch::autograd::Function<TrainingAttention> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& queries,
                            const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& additive_mask, int64_t heads, double dropout_p) {
    at::Tensor probs = attention_probabilities(queries, keys, additive_mask, heads);
    if (!probs.defined()) probs = plain_probabilities(queries, keys, additive_mask, heads);
    at::Tensor keep, dropped = probs;
    if (dropout_p > 0) {
      keep = dropout_keep_mask(probs.sizes(), 1 - dropout_p);
      dropped = probs * dropout_noise(keep, dropout_p);
    }
    at::Tensor context = attention_context(dropped, values);
    if (!context.defined()) {
      context = at::empty_like(queries, at::MemoryFormat::Contiguous);
      product_into(dropped, split_heads(values, heads), split_heads(context, heads));
    }
    ctx->save_for_backward({queries, keys, values});
    ctx->saved_data["probs"] = probs;
    if (keep.defined()) ctx->saved_data["keep"] = keep;
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["dropout_p"] = dropout_p;
    return context;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& queries = saved[0];
    const at::Tensor& keys = saved[1];
    const at::Tensor& values = saved[2];
    const at::Tensor probs = ctx->saved_data["probs"].toTensor();
    const at::Tensor keep = saved_if_any(ctx, "keep");
    const int64_t heads = ctx->saved_data["heads"].toInt();
    const double dropout_p = ctx->saved_data["dropout_p"].toDouble();
    const int64_t head_dim = queries.size(2) / heads;
    const at::Tensor grad_context = split_heads(grad_outputs[0].contiguous(), heads);
    const at::Tensor noise = keep.defined() ? dropout_noise(keep, dropout_p) : at::Tensor();
    at::Tensor grad_queries, grad_keys, grad_values;
    if (ctx->needs_input_grad(2)) {
      const at::Tensor dropped = noise.defined() ? probs * noise : probs;
      grad_values = at::empty_like(values, at::MemoryFormat::Contiguous);
      product_into(dropped.transpose(-1, -2), grad_context, split_heads(grad_values, heads));
    }
    if (ctx->needs_input_grad(0) || ctx->needs_input_grad(1)) {
      at::Tensor grad_probs = at::empty_like(probs);
      product_into(grad_context, split_heads(values, heads).transpose(-1, -2), grad_probs);
      if (noise.defined()) grad_probs.mul_(noise);
      at::Tensor grad_scores = at::_softmax_backward_data(grad_probs, probs, -1, at::kFloat);
      grad_scores.mul_(1.0 / std::sqrt(static_cast<double>(head_dim)));
      if (ctx->needs_input_grad(0)) {
        grad_queries = at::empty_like(queries, at::MemoryFormat::Contiguous);
        product_into(grad_scores, split_heads(keys, heads), split_heads(grad_queries, heads));
      }
      if (ctx->needs_input_grad(1)) {
        grad_keys = at::empty_like(keys, at::MemoryFormat::Contiguous);
        product_into(grad_scores.transpose(-1, -2), split_heads(queries, heads),
                     split_heads(grad_keys, heads));
      }
    }
    return {grad_queries, grad_keys, grad_values, at::Tensor(), at::Tensor(), at::Tensor()};
  }

 private:
  // [B, n, heads * d] read as [B, heads, n, d] (a view, no copy).
  static at::Tensor split_heads(const at::Tensor& x, int64_t heads) {
    return x.view({x.size(0), x.size(1), heads, x.size(2) / heads}).transpose(1, 2);
  }
  // The probabilities through ATen where oneDNN declines the strides.
  static at::Tensor plain_probabilities(const at::Tensor& queries, const at::Tensor& keys,
                                        const at::Tensor& additive_mask, int64_t heads) {
    const int64_t head_dim = queries.size(2) / heads;
    at::Tensor scores =
        at::matmul(split_heads(queries, heads), split_heads(keys, heads).transpose(-1, -2));
    scores.mul_(1.0 / std::sqrt(static_cast<double>(head_dim))).add_(additive_mask);
    return at::_softmax(scores, -1, false);
  }
};

// --- Dropout, residual and LayerNorm in one pass (training) -------------------

// The gain and shift gradients are summed over rows in this many fixed
// chunks, then the chunks in order: the same sums whatever the thread count.
constexpr int64_t kNormGradientChunks = 16;

// y = LayerNorm(dropout(P) + R) over the last dimension, the tail of BERT's
// SelfOutput and Output (Ba et al.: x̂ = (h - mean) / sqrt(var + eps),
// y = x̂ gain + shift), one pass per token each way where autograd's
// composition makes three forward (dropout, sum, LayerNorm) and two backward
// with a tensor between each. P's type is `Projected`, R's, h's and y's
// `Hidden` (float and float, bf16 and float, or bf16 and bf16: the
// composition's type promotion). Each value of h is the composition's to the
// bit (P N rounded to P's type, then the sum to h's; N model::dropout's noise
// from the same draw); the statistics are summed in another order (two
// passes, as at::layer_norm). With dx̂ = dy gain, backward is
//   dh = rstd (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂)),  dR = dh,  dP = dh N,
//   dgain = sum over rows of dy x̂,  dshift = sum of dy,
// with dh rounded to R's type and dP to P's as the autograd engine casts them.
// One token's row of the forward pass: row[] ends holding h as floats;
// statistics[0] and [1] receive its mean and 1 / sqrt(var + eps). keep is
// null without dropout.
template <typename P, typename H>
DELTATUNE_VECTOR_CLONES void residual_norm_row(
    const P* __restrict projected, const H* __restrict residual, const uint8_t* __restrict keep,
    const float* __restrict gain, const float* __restrict shift, int64_t n, float noise, float eps,
    float* __restrict row, H* __restrict h, H* __restrict y, float* __restrict statistics) {
  using vector::narrowed, vector::rounded_to, vector::widened;
  if (keep != nullptr) {
    for (int64_t i = 0; i < n; ++i)
      row[i] = rounded_to<P>(widened(projected[i]) * (noise * static_cast<float>(keep[i])));
  } else {
    for (int64_t i = 0; i < n; ++i) row[i] = rounded_to<P>(widened(projected[i]) * noise);
  }
  for (int64_t i = 0; i < n; ++i) {
    const H sum = narrowed<H>(row[i] + widened(residual[i]));
    h[i] = sum;
    row[i] = widened(sum);
  }
  const float m = lane_sum(row, n, [](float v) { return v; }) / static_cast<float>(n);
  const float variance =
      lane_sum(row, n, [m](float v) { return (v - m) * (v - m); }) / static_cast<float>(n);
  const float s = 1.0f / std::sqrt(variance + eps);
  statistics[0] = m, statistics[1] = s;
  for (int64_t i = 0; i < n; ++i) y[i] = narrowed<H>((row[i] - m) * s * gain[i] + shift[i]);
}

// One token's row of the backward pass; dy, xhat and scaled are n floats of
// scratch each. grad_gain / grad_shift (this chunk's partial sums) and
// grad_projected may be null where that gradient is not wanted.
template <typename P, typename H>
DELTATUNE_VECTOR_CLONES void residual_norm_row_backward(
    const H* __restrict grad_y, const H* __restrict h, float m, float s,
    const float* __restrict gain, const uint8_t* __restrict keep, float noise, int64_t n,
    float* __restrict dy, float* __restrict xhat, float* __restrict scaled,
    float* __restrict grad_gain, float* __restrict grad_shift, H* __restrict grad_residual,
    P* __restrict grad_projected) {
  using vector::narrowed, vector::rounded_to, vector::widened;
  for (int64_t i = 0; i < n; ++i) {
    dy[i] = widened(grad_y[i]);
    xhat[i] = (widened(h[i]) - m) * s;
    scaled[i] = dy[i] * gain[i];
  }
  if (grad_gain != nullptr)
    for (int64_t i = 0; i < n; ++i) grad_gain[i] += dy[i] * xhat[i];
  if (grad_shift != nullptr)
    for (int64_t i = 0; i < n; ++i) grad_shift[i] += dy[i];
  const float inverse_n = 1.0f / static_cast<float>(n);
  const float mean_scaled = lane_sum(scaled, n, [](float v) { return v; }) * inverse_n;
  for (int64_t i = 0; i < n; ++i) dy[i] = scaled[i] * xhat[i];
  const float mean_product = lane_sum(dy, n, [](float v) { return v; }) * inverse_n;
  for (int64_t i = 0; i < n; ++i)
    grad_residual[i] = narrowed<H>(s * (scaled[i] - mean_scaled - xhat[i] * mean_product));
  if (grad_projected == nullptr) return;
  if (keep != nullptr) {
    for (int64_t i = 0; i < n; ++i)
      grad_projected[i] = narrowed<P>(rounded_to<P>(widened(grad_residual[i])) *
                                      (noise * static_cast<float>(keep[i])));
  } else {
    for (int64_t i = 0; i < n; ++i)
      grad_projected[i] = narrowed<P>(rounded_to<P>(widened(grad_residual[i])) * noise);
  }
}

// Values of type T as the row kernels hold them (bf16 as its bits).
template <typename T>
using Held = std::conditional_t<std::is_same_v<T, c10::BFloat16>, vector::Bf16Bits, T>;

template <typename T>
auto held(T* p) {
  return reinterpret_cast<Held<std::remove_const_t<T>>*>(p);
}
template <typename T>
auto held(const T* p) {
  return reinterpret_cast<const Held<T>*>(p);
}

inline const uint8_t* bytes_of(const bool* keep) { return reinterpret_cast<const uint8_t*>(keep); }

template <typename Projected, typename Hidden>
struct ResidualNormKernel {
  using ProjectedType = Projected;
  using HiddenType = Hidden;
  int64_t rows, n;
  float noise;  // N where dropout keeps an entry (0 where it drops it)
  float eps;

  void forward(const Projected* projected, const Hidden* residual, const bool* keep,
               const float* gain, const float* shift, Hidden* h, float* mean, float* rstd,
               Hidden* y) const {
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      std::vector<float> row(static_cast<size_t>(n));
      for (int64_t r = begin; r < end; ++r) {
        const int64_t at = r * n;
        float statistics[2];
        residual_norm_row(held(projected + at), held(residual + at),
                          keep != nullptr ? bytes_of(keep + at) : nullptr, gain, shift, n, noise,
                          eps, row.data(), held(h + at), held(y + at), statistics);
        mean[r] = statistics[0], rstd[r] = statistics[1];
      }
    });
  }

  // grad_gain / grad_shift: kNormGradientChunks x n partial sums, or null
  // where that gradient is not wanted; grad_projected null where P needs none.
  void backward(const Hidden* grad_y, const Hidden* h, const float* mean, const float* rstd,
                const float* gain, const bool* keep, Hidden* grad_residual,
                Projected* grad_projected, float* grad_gain, float* grad_shift) const {
    const int64_t per_chunk = (rows + kNormGradientChunks - 1) / kNormGradientChunks;
    at::parallel_for(0, kNormGradientChunks, 1, [&](int64_t first, int64_t last) {
      std::vector<float> buffers(static_cast<size_t>(3 * n));
      for (int64_t chunk = first; chunk < last; ++chunk) {
        const int64_t end = std::min(rows, (chunk + 1) * per_chunk);
        for (int64_t r = chunk * per_chunk; r < end; ++r) {
          const int64_t at = r * n;
          residual_norm_row_backward(
              held(grad_y + at), held(h + at), mean[r], rstd[r], gain,
              keep != nullptr ? bytes_of(keep + at) : nullptr, noise, n, buffers.data(),
              buffers.data() + n, buffers.data() + 2 * n,
              grad_gain != nullptr ? grad_gain + chunk * n : nullptr,
              grad_shift != nullptr ? grad_shift + chunk * n : nullptr, held(grad_residual + at),
              grad_projected != nullptr ? held(grad_projected + at) : nullptr);
        }
      }
    });
  }
};

// Calls `f` with a ResidualNormKernel for the tensors' types (P, R): float
// and float, bf16 and float, or bf16 and bf16.
template <typename F>
void with_residual_norm_kernel(at::ScalarType projected, at::ScalarType hidden, int64_t rows,
                               int64_t n, float noise, float eps, F f) {
  using Bf16 = c10::BFloat16;
  if (projected == at::kFloat)
    f(ResidualNormKernel<float, float>{rows, n, noise, eps});
  else if (hidden == at::kFloat)
    f(ResidualNormKernel<Bf16, float>{rows, n, noise, eps});
  else
    f(ResidualNormKernel<Bf16, Bf16>{rows, n, noise, eps});
}

class ResidualLayerNorm : public torch::autograd::Function<ResidualLayerNorm> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& projected,
                            const at::Tensor& residual, const at::Tensor& gain,
                            const at::Tensor& shift, double p, double eps) {
    const at::Tensor input = projected.contiguous(), base = residual.contiguous();
    const at::Tensor gains = gain.contiguous(), shifts = shift.contiguous();
    const int64_t n = input.size(-1), rows = input.numel() / n;
    const at::Tensor keep = p > 0 ? dropout_keep_mask(input.sizes(), 1 - p) : at::Tensor();
    const float noise = kept_noise(p, input.scalar_type());
    at::Tensor h = at::empty_like(base), y = at::empty_like(base);
    at::Tensor mean = at::empty({rows}, at::kFloat), rstd = at::empty({rows}, at::kFloat);
    with_residual_norm_kernel(input.scalar_type(), base.scalar_type(), rows, n, noise,
                              static_cast<float>(eps), [&](auto kernel) {
                                using P = typename decltype(kernel)::ProjectedType;
                                using H = typename decltype(kernel)::HiddenType;
                                kernel.forward(input.data_ptr<P>(), base.data_ptr<H>(),
                                               keep.defined() ? keep.data_ptr<bool>() : nullptr,
                                               gains.data_ptr<float>(), shifts.data_ptr<float>(),
                                               h.data_ptr<H>(), mean.data_ptr<float>(),
                                               rstd.data_ptr<float>(), y.data_ptr<H>());
                              });
    ctx->save_for_backward({gain});
    ctx->saved_data["h"] = h;
    ctx->saved_data["mean"] = mean;
    ctx->saved_data["rstd"] = rstd;
    if (keep.defined()) ctx->saved_data["keep"] = keep;
    ctx->saved_data["noise"] = static_cast<double>(noise);
    ctx->saved_data["projected_type"] = static_cast<int64_t>(input.scalar_type());
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor gain = ctx->get_saved_variables()[0];
    const at::Tensor h = ctx->saved_data["h"].toTensor();
    const at::Tensor mean = ctx->saved_data["mean"].toTensor();
    const at::Tensor rstd = ctx->saved_data["rstd"].toTensor();
    const at::Tensor keep = saved_if_any(ctx, "keep");
    const double noise = ctx->saved_data["noise"].toDouble();
    const auto projected_type =
        static_cast<at::ScalarType>(ctx->saved_data["projected_type"].toInt());
    const at::Tensor grad_y = grad_outputs[0].to(h.scalar_type()).contiguous();
    const int64_t n = h.size(-1), rows = h.numel() / n;
    at::Tensor grad_residual = at::empty_like(h);
    at::Tensor grad_projected;
    if (ctx->needs_input_grad(0))
      grad_projected = at::empty(h.sizes(), h.options().dtype(projected_type));
    const bool want_gain = ctx->needs_input_grad(2), want_shift = ctx->needs_input_grad(3);
    at::Tensor gain_partials =
        want_gain ? at::zeros({kNormGradientChunks, n}, at::kFloat) : at::Tensor();
    at::Tensor shift_partials =
        want_shift ? at::zeros({kNormGradientChunks, n}, at::kFloat) : at::Tensor();
    with_residual_norm_kernel(
        projected_type, h.scalar_type(), rows, n, static_cast<float>(noise), 0.0f,
        [&](auto kernel) {
          using P = typename decltype(kernel)::ProjectedType;
          using H = typename decltype(kernel)::HiddenType;
          kernel.backward(grad_y.data_ptr<H>(), h.data_ptr<H>(), mean.data_ptr<float>(),
                          rstd.data_ptr<float>(), gain.contiguous().data_ptr<float>(),
                          keep.defined() ? keep.data_ptr<bool>() : nullptr,
                          grad_residual.data_ptr<H>(),
                          grad_projected.defined() ? grad_projected.data_ptr<P>() : nullptr,
                          want_gain ? gain_partials.data_ptr<float>() : nullptr,
                          want_shift ? shift_partials.data_ptr<float>() : nullptr);
        });
    return {grad_projected,
            ctx->needs_input_grad(1) ? grad_residual : at::Tensor(),
            want_gain ? gain_partials.sum(0) : at::Tensor(),
            want_shift ? shift_partials.sum(0) : at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }

 private:
  // The noise model::dropout multiplies a kept entry by, in `type`.
  static float kept_noise(double p, at::ScalarType type) {
    if (p == 0) return 1.0f;
    return dropout_noise(at::ones({1}, at::kBool), p, type).to(at::kFloat).item<float>();
  }
};

}  // namespace

at::Tensor activation(const at::Tensor& x, const std::string& name) {
  switch (epilogue_for(name)) {
    case onednn::Epilogue::kGelu:
      return at::gelu(x);
    case onednn::Epilogue::kGeluTanh:
      return at::gelu(x, "tanh");
    case onednn::Epilogue::kRelu:
      return at::relu(x);
    default:
      return at::silu(x);
  }
}

at::Tensor per_row(const at::Tensor& table, int64_t dims) {
  std::vector<int64_t> shape(static_cast<size_t>(dims), 1);
  shape.front() = table.size(0);
  shape.back() = table.size(1);
  return table.view(shape);
}

at::Tensor linear_row_bias(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& row_bias) {
  if (row_bias.defined() && fusable_product({&x, &weight, &bias, &row_bias}, weight) &&
      x.dim() >= 2 && row_bias_fits(x, row_bias))
    if (at::Tensor out = onednn::linear_frozen(x, weight, bias, {}, {}, row_bias); out.defined())
      return out;
  return plain_linear(x, weight, bias, row_bias);
}

at::Tensor linear_activation(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             const std::string& name, const at::Tensor& row_bias) {
  if (fusable_product({&x, &weight, &bias, &row_bias}, weight) && x.dim() >= 2 &&
      row_bias_fits(x, row_bias))
    if (at::Tensor out = onednn::linear_frozen(x, weight, bias, {epilogue_for(name)}, {}, row_bias);
        out.defined())
      return out;
  return activation(plain_linear(x, weight, bias, row_bias), name);
}

at::Tensor linear_residual(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& residual, const at::Tensor& row_bias) {
  auto sizes = x.sizes().vec();
  sizes.back() = weight.size(0);
  if (fusable_product({&x, &weight, &bias, &residual, &row_bias}, weight) && x.dim() >= 2 &&
      row_bias_fits(x, row_bias) && residual.sizes() == at::IntArrayRef(sizes))
    if (at::Tensor out = onednn::linear_frozen(x, weight, bias, {onednn::Epilogue::kAccumulate},
                                               residual, row_bias);
        out.defined())
      return out;
  return plain_linear(x, weight, bias, row_bias) + residual;
}

at::Tensor layer_norm_rows(const at::Tensor& x, const at::Tensor& gain, const at::Tensor& shift,
                           double eps) {
  const int64_t n = x.size(-1);
  const int64_t batch = x.dim() >= 2 ? x.size(0) : 0;
  auto per_row_table = [&](const at::Tensor& t) { return t.defined() && t.dim() == 2; };
  auto fits = [&](const at::Tensor& t) {
    if (!t.defined()) return true;
    return per_row_table(t) ? t.size(0) == batch && t.size(1) == n : t.dim() == 1 && t.size(0) == n;
  };
  if (!fits(gain) || !fits(shift)) throw std::invalid_argument("layer_norm_rows: shapes differ");
  if (!per_row_table(gain) && !per_row_table(shift))
    return at::layer_norm(x, {n}, gain, shift, eps);
  if (!fusable({&x, &gain, &shift}) || x.numel() == 0) {
    auto broadcast = [&](const at::Tensor& t) {
      return per_row_table(t) ? per_row(t, x.dim()) : t;
    };
    at::Tensor normalized = at::layer_norm(x, {n}, {}, {}, eps);
    if (gain.defined()) normalized = normalized * broadcast(gain);
    return shift.defined() ? normalized + broadcast(shift) : normalized;
  }
  at::Tensor input = x.contiguous();
  at::Tensor out = at::empty_like(input);
  at::Tensor g = gain.defined() ? gain.contiguous() : gain;
  at::Tensor b = shift.defined() ? shift.contiguous() : shift;
  const int64_t tokens = input.numel() / n, per_batch_row = tokens / batch;
  const float* in = input.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const float* gains = g.defined() ? g.data_ptr<float>() : nullptr;
  const float* shifts = b.defined() ? b.data_ptr<float>() : nullptr;
  const int64_t gain_stride = per_row_table(g) ? n : 0, shift_stride = per_row_table(b) ? n : 0;
  at::parallel_for(0, tokens, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* row = in + t * n;
      float* y = o + t * n;
      const int64_t r = t / per_batch_row;
      // Eight float lanes so that the reductions vectorize; mean first, then
      // the centred squares (two passes, as at::layer_norm's accuracy).
      const float mean = lane_sum(row, n, [](float v) { return v; }) / static_cast<float>(n);
      const float variance = lane_sum(row, n, [mean](float v) { return (v - mean) * (v - mean); }) /
                             static_cast<float>(n);
      const float rstd = 1.0f / std::sqrt(variance + static_cast<float>(eps));
      const float* gr = gains ? gains + r * gain_stride : nullptr;
      const float* sr = shifts ? shifts + r * shift_stride : nullptr;
      for (int64_t i = 0; i < n; ++i) {
        float v = (row[i] - mean) * rstd;
        if (gr) v *= gr[i];
        if (sr) v += sr[i];
        y[i] = v;
      }
    }
  });
  return out;
}

at::Tensor dropout_residual_layer_norm(const at::Tensor& projected, const at::Tensor& residual,
                                       double p, const at::Tensor& gain, const at::Tensor& shift,
                                       double eps) {
  if (!fused_enabled().load(std::memory_order_relaxed) || !(p >= 0 && p < 1)) return {};
  if (!projected.defined() || !residual.defined() || !gain.defined() || !shift.defined()) return {};
  for (const at::Tensor* t : {&projected, &residual, &gain, &shift})
    if (!t->device().is_cpu() || t->layout() != at::kStrided || t->is_mkldnn()) return {};
  const bool types_fit =
      (projected.scalar_type() == at::kFloat && residual.scalar_type() == at::kFloat) ||
      (projected.scalar_type() == at::kBFloat16 &&
       (residual.scalar_type() == at::kFloat || residual.scalar_type() == at::kBFloat16));
  if (!types_fit || projected.dim() < 1 || projected.sizes() != residual.sizes() ||
      projected.numel() == 0)
    return {};
  const int64_t n = projected.size(-1);
  auto vector_of_n = [n](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == n;
  };
  if (!vector_of_n(gain) || !vector_of_n(shift)) return {};
  return ResidualLayerNorm::apply(projected, residual, gain, shift, p, eps);
}

at::Tensor attention(const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& values,
                     const at::Tensor& additive_mask, int64_t heads, double dropout_p) {
  if (!attention_shapes_fit(queries, keys, values, additive_mask))
    return plain_attention(queries, keys, values, additive_mask, heads, dropout_p);
  const Fused path =
      dropout_p == 0 ? fused_path({&queries, &keys, &values, &additive_mask}) : Fused::kNo;
  const bool bf16_operands = queries.scalar_type() == at::kBFloat16 &&
                             keys.scalar_type() == at::kBFloat16 &&
                             values.scalar_type() == at::kBFloat16;
  if (path == Fused::kBf16 && bf16_operands)
    if (at::Tensor context = bf16_attention(queries, keys, values, additive_mask, heads);
        context.defined())
      return context;
  if (path == Fused::kFp32) {
    at::Tensor probs = attention_probabilities(queries, keys, additive_mask, heads);
    if (probs.defined())
      if (at::Tensor context = attention_context(probs, values); context.defined()) return context;
  }
  // Training (dropout, or gradients wanted): the same products with a
  // backward that keeps only Q, K, V and the probabilities.
  static const bool training_attention = onednn::switched_on("DELTATUNE_TRAINING_ATTENTION");
  if (training_attention && fused_enabled().load(std::memory_order_relaxed) &&
      onednn::available() && !compat::cpu_autocast_enabled() &&
      all_cpu_float({&queries, &keys, &values, &additive_mask}) && !additive_mask.requires_grad() &&
      dropout_p < 1)
    return TrainingAttention::apply(queries, keys, values, additive_mask, heads, dropout_p);
  return plain_attention(queries, keys, values, additive_mask, heads, dropout_p);
}

void set_fused_kernels(bool enabled) { fused_enabled().store(enabled); }
bool fused_kernels_active() { return fused_enabled().load() && onednn::available(); }

}  // namespace deltatune::model
