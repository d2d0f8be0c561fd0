// The encoder's elementwise chains fused into the products around them, for
// passes that autograd does not record (eval, predict, the server); and two
// differentiable fusions for training (attention, the sub-layer tail).
//
// Each function computes exactly its plain LibTorch composition (stated
// below) and takes that plain path itself whenever autograd has to record the
// call, a tensor is not on the CPU, deltatune was built without oneDNN, or
// fusion is off. In fp32, fused results equal the plain ones up to
// floating-point summation order and oneDNN's erf/tanh/exp approximations
// (within 1e-5: tests/model/fused_kernels_test.cpp). Under CPU autocast to
// bf16 (inference at bf16) the products take bf16 operands as autocast
// would, but each accumulates in fp32 and rounds once: bias, activation and
// residual are applied before rounding, scores and softmax stay fp32, and a
// product onto an fp32 residual is never rounded (FusedKernelsBf16.* test
// that each result is the exact value of its bf16 operands, so rounded).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace deltatune::model {

// The FFN activation named by config.hidden_act ("gelu", "gelu_new", "relu", ...).
at::Tensor activation(const at::Tensor& x, const std::string& name);

// [B, n] -> [B, 1, .., 1, n] with `dims` dimensions: a table of one vector
// per batch row (a mixed batch's per-task biases) broadcast over tokens.
at::Tensor per_row(const at::Tensor& table, int64_t dims);

// x W^T + b + row_bias: `row_bias` [B, N] for x [B, L, K] (or [B, K]) adds
// each batch row's own bias (a mixed batch's per-task biases); fused, the
// product accumulates onto the rows' biases in one pass over W.
at::Tensor linear_row_bias(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& row_bias);

// act(x W^T + b): the activation (model::activation's names) applied in the
// product's epilogue, while the output tile is in cache.
// `row_bias` [B, N] for x [B, L, K], when defined, adds each batch row's own
// bias before the activation (a mixed batch's per-task biases).
at::Tensor linear_activation(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             const std::string& activation, const at::Tensor& row_bias = {});

// x W^T + b + residual: a sub-layer's projection and its residual connection
// in one pass (the product accumulates onto a copy of the residual).
at::Tensor linear_residual(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& residual, const at::Tensor& row_bias = {});

// LayerNorm over the last dimension (Ba et al.: (x - mean) / sqrt(var + eps)
// * gain + shift) where gain and shift are each either one vector [n] for
// every row, or a table [B, n] of one per batch row of x [B, .., n] (a mixed
// batch's per-task LayerNorm parameters), or undefined (1 and 0). Fused, one
// pass per token; plain, at::layer_norm and one broadcast addcmul.
at::Tensor layer_norm_rows(const at::Tensor& x, const at::Tensor& gain, const at::Tensor& shift,
                           double eps);

// LayerNorm(dropout(projected, p) + residual) over the last dimension with
// gain and shift [n] (fp32): a sub-layer's tail, in one pass per token
// forward and one backward, differentiable (training's path; autograd's
// composition makes three forward and two backward). Dropout draws exactly
// as model::dropout, and each sum is the composition's value to the bit; the
// statistics differ in summation order only (fp32 within 1e-5). Types: fp32
// and fp32, or a bf16 projection onto a bf16 or fp32 residual (the result
// has the residual's type, as the composition promotes). Returns an
// undefined tensor where it does not apply (another device or type, shapes,
// fusion off): the caller composes it then.
at::Tensor dropout_residual_layer_norm(const at::Tensor& projected, const at::Tensor& residual,
                                       double p, const at::Tensor& gain, const at::Tensor& shift,
                                       double eps);

// Multi-head scaled dot-product attention (Vaswani et al., eq. 1):
// softmax(Q K^T / sqrt(d) + mask) V for each of `heads` heads of width d.
// queries [B, L, heads * d], keys and values [B, K, heads * d] (any strides
// with a unit last stride, e.g. views into one fused QKV product), additive
// mask [B or 1, 1, 1, K]. dropout_p > 0 applies dropout to the probabilities
// (training), drawn as at::dropout draws it. Returns [B, L, heads * d]. Fused,
// the heads are read and written in place through strides: no head-split
// copies, no expanded mask, scale and mask in the score product's epilogue;
// with gradients, its backward keeps Q, K, V, the probabilities and a byte
// per dropout decision instead of autograd's three [B, heads, L, K] floats
// (DELTATUNE_TRAINING_ATTENTION=0 takes autograd's composition, to compare).
at::Tensor attention(const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& values,
                     const at::Tensor& additive_mask, int64_t heads, double dropout_p = 0);

// Fusion on or off at run time (tests, benchmarks); DELTATUNE_FUSED=0 in the
// environment turns it off at start-up.
void set_fused_kernels(bool enabled);
bool fused_kernels_active();

}  // namespace deltatune::model
