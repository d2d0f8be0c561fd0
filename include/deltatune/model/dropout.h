// Dropout with PyTorch's CPU random stream, drawn fast and kept as bytes.
//
// LibTorch's CPU dropout (at::dropout: noise = bernoulli(1 - p) / (1 - p),
// x * noise) draws its noise through a serial kernel that calls the
// generator once per entry: a quarter of a MiniLM training step on 2 cores.
// The same draws (one random64 of the default CPU generator per entry, in
// memory order, kept where its low 53 bits / 2^53 < 1 - p) come from a copy
// of the generator's mt19937 engine in a tight loop, and the generator ends
// where ATen's kernel leaves it: masks, values and every later draw are
// PyTorch's, so the shared-draw trajectory tests keep passing.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

namespace deltatune::model {

// Which entries of a tensor of `sizes` dropout keeps (bool, contiguous):
// exactly `at::empty(sizes, kFloat).bernoulli_(keep_probability) != 0` on
// the default CPU generator, and the generator advanced as that call does.
// Where this LibTorch's kernel draws otherwise (checked once against it:
// builds whose bernoulli_ goes through MKL), ATen's own draw is used.
at::Tensor dropout_keep_mask(c10::IntArrayRef sizes, double keep_probability);

// at::empty(sizes, kFloat).uniform_(from, to) on the default CPU generator:
// the same values (ATen's uniform_real<float> of one 32-bit word each) drawn
// outside ATen's serial kernel, and the generator advanced as that call does.
// The arithmetic is checked once against this LibTorch's uniform_; where
// neither form matches, ATen's own draw is used.
at::Tensor uniform_float(c10::IntArrayRef sizes, double from, double to);

// Whether uniform_float draws through its own loop.
bool uniform_draws_replicated();

// Whether dropout_keep_mask draws through its own loop (this LibTorch's
// bernoulli_ matched it), rather than through ATen's kernel.
bool dropout_draws_replicated();

// PyTorch's dropout noise for `keep`: 1 / (1 - p) where kept, else 0, in
// `type`, bit for bit what at::dropout multiplies a tensor of that type by.
at::Tensor dropout_noise(const at::Tensor& keep, double p, at::ScalarType type = at::kFloat);

// at::dropout(x, p, train) for floating CPU tensors, the same values and
// random stream (its noise has x's type there too), differentiable; it keeps
// one byte per entry for backward instead of the noise. Other devices,
// p == 0 or !train: at::dropout.
at::Tensor dropout(const at::Tensor& x, double p, bool train);

}  // namespace deltatune::model
