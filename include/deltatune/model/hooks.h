// Hook points through which methods change the encoder without forking it.
//
// Each hook is a torch::nn::Module: whatever parameters it owns are
// registered under the module that hosts it, so they appear in
// named_parameters() with a stable name and travel with state dicts.
// With no hook installed the encoder is exactly the Hugging Face model.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <utility>

namespace deltatune::model {

// Added to a Dense layer's output: y = x W^T + b + delta(x)  (LoRA's B A x).
// An undefined result adds nothing (a LoRA merged into W).
class DenseDelta : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& input) = 0;
};

// Transforms a sub-layer's output (after its dense and dropout, before the
// residual connection and LayerNorm), as Houlsby adapters do.
class SublayerAdapter : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& hidden) = 0;
};

// Keys and values prepended to one layer's attention (Prefix Tuning):
// each [batch or 1, prefix_length, hidden]. Every token may attend to them;
// token positions are unchanged.
class AttentionPrefix : public torch::nn::Module {
 public:
  virtual std::pair<at::Tensor, at::Tensor> forward(int64_t layer, int64_t batch_size) = 0;
};

// Rewrites the input embeddings and attention mask before the first layer
// (Prompt Tuning inserts soft tokens). Returns the new embeddings
// [B, L', E] and mask [B, L'].
class EmbeddingInserter : public torch::nn::Module {
 public:
  virtual std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& embeddings,
                                                    const at::Tensor& attention_mask) = 0;
};

// Replaces a layer's feed-forward pair x -> W2 act(W1 x + b1) + b2
// (intermediate.dense, the activation and output.dense), ahead of the
// output's dropout, adapter, residual and LayerNorm. FAR installs its FFN
// split into learned and frozen sub-layers here.
class FeedForward : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& hidden) = 0;
};

}  // namespace deltatune::model
