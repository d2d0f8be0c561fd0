// Hook points through which methods change the encoder without forking it.
//
// Each hook is a torch::nn::Module: whatever parameters it owns are
// registered under the module that hosts it, so they appear in
// named_parameters() with a stable name and travel with state dicts.
// With no hook installed the encoder is exactly the Hugging Face model.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <optional>
#include <string>
#include <utility>

namespace deltatune::model {

// Added to a Dense layer's output: y = x W^T + b + delta(x)  (LoRA's B A x).
// An undefined result adds nothing (a LoRA merged into W).
class DenseDelta : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& input) = 0;
  // A delta that is scaling * x down^T up^T (LoRA) says so, and rows of many
  // tasks then share one batched product (serve::MixedBatch); others run per task.
  struct LowRank {
    at::Tensor down;  // [r, in]
    at::Tensor up;    // [out, r]
    double scaling = 1;
  };
  virtual std::optional<LowRank> low_rank() const { return std::nullopt; }
};

// Transforms a sub-layer's output (after its dense and dropout, before the
// residual connection and LayerNorm), as Houlsby adapters do.
class SublayerAdapter : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& hidden) = 0;
  // An adapter computing h + up(act(down h + down_bias)) + up_bias (Houlsby's
  // bottleneck) says so, for batched products across tasks; others run per task.
  struct Bottleneck {
    at::Tensor down_weight;  // [k, H]
    at::Tensor down_bias;    // [k]
    at::Tensor up_weight;    // [H, k]
    at::Tensor up_bias;      // [H]
    std::string activation;  // a name model::activation() knows
  };
  virtual std::optional<Bottleneck> bottleneck() const { return std::nullopt; }
};

// Keys and values prepended to one layer's attention (Prefix Tuning):
// each [batch or 1, prefix_length, hidden]. Every token may attend to them.
class AttentionPrefix : public torch::nn::Module {
 public:
  virtual std::pair<at::Tensor, at::Tensor> forward(int64_t layer, int64_t batch_size) = 0;
  // Added to every token's position id. 0 keeps positions unchanged (Li &
  // Liang); the prefix length reproduces Hugging Face, which counts prefix
  // keys as past tokens (PEFT's prefix tuning on BERT).
  virtual int64_t position_offset() const { return 0; }
};

// The input sequence at the word-vector level, before position and token-type
// embeddings are added: [B, L, E], [B, L], [B, L].
struct WordInput {
  at::Tensor word_vectors;
  at::Tensor attention_mask;
  at::Tensor token_type_ids;
};

// Rewrites the word vectors, mask and token types before the embeddings add
// positions (Prompt Tuning inserts soft tokens, as PEFT's inputs_embeds do).
// Positions are then counted 0..L'-1 over the new sequence.
class EmbeddingInserter : public torch::nn::Module {
 public:
  virtual WordInput forward(const WordInput& input) = 0;
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
