// y = x W^T + b, the product every Dense layer computes, routed to the
// fastest kernel available for its dtype and device.
//
// On CPU in fp32, LibTorch sends this to BLAS; through OpenBLAS that reaches
// ~110 GFLOP/s per core here, while oneDNN's matmul on the same plain
// row-major buffers reaches ~240 (bench/encoder_forward, docs/BENCHMARKS.md).
// When deltatune is built with oneDNN (DELTATUNE_HAVE_ONEDNN), fp32 CPU
// products, forward and backward, go through it; everything else, and any
// build without oneDNN, uses at::linear. Results equal at::linear's up to
// floating-point summation order.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace deltatune::model {

// x: [..., in], weight: [out, in], bias: [out] or undefined. Differentiable.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// The weight operand for `linear` made of `parts` (stacked along dim 0, as
// Q, K and V fuse into one product). Frozen parts (no requires_grad, or autograd off) are
// prepared once and reused while every part is alive and unchanged (same
// version counter): the concatenation, and under autocast (CPU or CUDA) the cast to
// its lower-precision dtype, which autocast itself would redo on every
// forward pass for weights that need no gradient. With any part trainable the
// result is an ordinary differentiable concatenation, made fresh each call.
// DELTATUNE_PREPARED_WEIGHTS=0 in the environment turns the reuse off.
at::Tensor weight_operand(const std::vector<at::Tensor>& parts);

// Frees the inference copies (weight_operand's prepared casts and
// concatenations, linear_frozen's packed layouts) of trained parameters and
// of weights that changed or are gone: a training run calls it after each
// evaluation, since the next optimizer step makes them stale anyway (for
// BERT-base fully fine-tuned in bf16, 440 MB otherwise held until the next
// evaluation). Copies of frozen weights are kept for the next one.
void release_stale_weight_copies();

// Whether fp32 CPU products take the oneDNN path (built with it and enabled).
bool onednn_linear_active();

// Turns the oneDNN path off or on at run time (for tests and benchmarks);
// the environment variable DELTATUNE_ONEDNN=0 turns it off at start-up.
void set_onednn_linear(bool enabled);

}  // namespace deltatune::model
