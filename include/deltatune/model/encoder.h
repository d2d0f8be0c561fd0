// The BERT-family encoder (BERT, RoBERTa, MiniLM, ELECTRA discriminator) and
// its task heads as LibTorch modules.
//
// Invariant: named_parameters() of every module here equals the Hugging Face
// state-dict keys of the corresponding transformers class (BertModel,
// BertForSequenceClassification, RobertaForSequenceClassification,
// ElectraForSequenceClassification), so loading and saving is a name match.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "deltatune/model/config.h"
#include "deltatune/model/fused_kernels.h"
#include "deltatune/model/hooks.h"

namespace deltatune::model {

// One padded batch. All [batch, length] int64 on the model's device;
// token_type_ids may be undefined (all zeros).
struct EncoderInput {
  at::Tensor input_ids;
  at::Tensor attention_mask;  // 1 = token, 0 = padding
  at::Tensor token_type_ids;
};

struct EncoderOutput {
  at::Tensor last_hidden_state;  // [B, L, H]
  at::Tensor pooler_output;      // [B, H]; undefined without a pooler
  at::Tensor attention_mask;     // [B, L] after any EmbeddingInserter
};

// While one lives on this thread, the encoder's modules allocate their
// parameters without drawing initial values (normal weights of every Linear
// and Embedding): for a model whose parameters are all loaded or explicitly
// initialised next, as make_task_model's are. The draws it saves are ~23M
// normals for MiniLM, a sixth of `predict`'s start-up.
class SkipInitialisation {
 public:
  SkipInitialisation();
  ~SkipInitialisation();
  SkipInitialisation(const SkipInitialisation&) = delete;
  SkipInitialisation& operator=(const SkipInitialisation&) = delete;
  static bool active();

 private:
  bool previous_;
};

// nn.Linear with HF's parameter names (weight [out, in], bias [out]) and a
// list of DenseDelta hooks whose outputs are added.
class DenseImpl : public torch::nn::Module {
 public:
  DenseImpl(int64_t in_features, int64_t out_features, bool with_bias = true);
  at::Tensor forward(const at::Tensor& input);
  void add_delta(const std::string& name, std::shared_ptr<DenseDelta> delta);
  void remove_delta(const std::string& name);
  bool has_deltas() const { return !deltas_.empty(); }
  const std::map<std::string, std::shared_ptr<DenseDelta>>& deltas() const { return deltas_; }
  at::Tensor weight;
  at::Tensor bias;  // undefined when with_bias is false

 private:
  std::map<std::string, std::shared_ptr<DenseDelta>> deltas_;
};
TORCH_MODULE(Dense);

class EmbeddingsImpl : public torch::nn::Module {
 public:
  explicit EmbeddingsImpl(const EncoderConfig& config);
  // Token positions count from position_offset (HF's past_key_values_length).
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids,
                     int64_t position_offset = 0);
  // From word vectors (HF's inputs_embeds): positions are sequential, as HF
  // numbers inputs_embeds; token_type_ids must be defined.
  at::Tensor forward_vectors(const at::Tensor& word_vectors, const at::Tensor& token_type_ids);
  // Position ids of input_ids [B, L] counted from `offsets` (a scalar or [B, 1]
  // int64 tensor): arange for BERT and ELECTRA, padding-aware for RoBERTa.
  at::Tensor position_ids(const at::Tensor& input_ids, const at::Tensor& offsets) const;
  // Position ids of a word-vector sequence of `length` (forward_vectors): [1, length].
  at::Tensor vector_position_ids(int64_t length, const at::TensorOptions& options) const;
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr},
      token_type_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};

 private:
  at::Tensor combine(const at::Tensor& word_vectors, const at::Tensor& token_type_ids,
                     const at::Tensor& positions, int64_t last_position);
  bool positions_from_padding_;
  int64_t pad_token_id_;
};
TORCH_MODULE(Embeddings);

class SelfAttentionImpl : public torch::nn::Module {
 public:
  explicit SelfAttentionImpl(const EncoderConfig& config);
  // additive_mask: [B, 1, 1, L] (0 or a large negative). prefix keys/values:
  // [B or 1, P, H] or undefined.
  at::Tensor forward(const at::Tensor& hidden, const at::Tensor& additive_mask,
                     const at::Tensor& prefix_keys, const at::Tensor& prefix_values);
  // softmax(q k^T / sqrt(d) + mask) v over projected queries [B, L, H] and
  // keys/values [B, K, H] (prefix keys included), mask [B, 1, 1, K].
  at::Tensor attend(const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& values,
                    const at::Tensor& additive_mask);
  Dense query{nullptr}, key{nullptr}, value{nullptr};
  torch::nn::Dropout dropout{nullptr};

 private:
  int64_t heads_;
};
TORCH_MODULE(SelfAttention);

// dense -> dropout -> [adapter] -> LayerNorm(. + residual). HF's BertSelfOutput
// and BertOutput differ only in the dense's input width.
class SublayerOutputImpl : public torch::nn::Module {
 public:
  SublayerOutputImpl(const EncoderConfig& config, int64_t in_features);
  at::Tensor forward(const at::Tensor& hidden, const at::Tensor& residual);
  // The same after the dense: dropout -> [adapter] -> LayerNorm(. + residual).
  at::Tensor finish(const at::Tensor& projected, const at::Tensor& residual);
  void set_adapter(const std::string& name, std::shared_ptr<SublayerAdapter> adapter);
  void clear_adapter();
  const std::shared_ptr<SublayerAdapter>& adapter() const { return adapter_; }
  Dense dense{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};

 private:
  std::string adapter_name_;
  std::shared_ptr<SublayerAdapter> adapter_;
};
TORCH_MODULE(SublayerOutput);

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const EncoderConfig& config);
  SelfAttention self{nullptr};
  SublayerOutput output{nullptr};
};
TORCH_MODULE(Attention);

class IntermediateImpl : public torch::nn::Module {
 public:
  explicit IntermediateImpl(const EncoderConfig& config);
  at::Tensor forward(const at::Tensor& hidden);
  Dense dense{nullptr};

 private:
  std::string activation_;
};
TORCH_MODULE(Intermediate);

class LayerImpl : public torch::nn::Module {
 public:
  explicit LayerImpl(const EncoderConfig& config);
  at::Tensor forward(const at::Tensor& hidden, const at::Tensor& additive_mask,
                     const at::Tensor& prefix_keys, const at::Tensor& prefix_values);
  // Routes the FFN through `feed_forward` (registered as "feed_forward")
  // instead of intermediate.dense and output.dense; clear_ restores them.
  void set_feed_forward(std::shared_ptr<FeedForward> feed_forward);
  void clear_feed_forward();
  const std::shared_ptr<FeedForward>& feed_forward() const { return feed_forward_; }
  Attention attention{nullptr};
  Intermediate intermediate{nullptr};
  SublayerOutput output{nullptr};

 private:
  std::shared_ptr<FeedForward> feed_forward_;
};
TORCH_MODULE(Layer);

// HF's extended attention mask: (1 - mask) * finfo(dtype).min for mask [B, K]
// (1 = attend), as [B, 1, 1, K] in `dtype`.
at::Tensor additive_attention_mask(const at::Tensor& mask, at::ScalarType dtype);

class PoolerImpl : public torch::nn::Module {
 public:
  explicit PoolerImpl(const EncoderConfig& config);
  at::Tensor forward(const at::Tensor& hidden);  // tanh(dense(hidden[:, 0]))
  Dense dense{nullptr};
};
TORCH_MODULE(Pooler);

// BertModel / RobertaModel / ElectraModel.
class EncoderModelImpl : public torch::nn::Module {
 public:
  EncoderModelImpl(const EncoderConfig& config, bool with_pooler);
  EncoderOutput forward(const EncoderInput& input);
  const EncoderConfig& config() const { return config_; }
  Layer layer(int64_t index) const;
  int64_t num_layers() const { return config_.num_hidden_layers; }

  void set_attention_prefix(const std::string& name, std::shared_ptr<AttentionPrefix> prefix);
  void set_embedding_inserter(const std::string& name, std::shared_ptr<EmbeddingInserter> inserter);
  void clear_attention_prefix();
  void clear_embedding_inserter();
  const std::shared_ptr<AttentionPrefix>& attention_prefix() const { return prefix_; }
  const std::shared_ptr<EmbeddingInserter>& embedding_inserter() const { return inserter_; }

  // Gradient checkpointing (--gradient-checkpointing): while autograd
  // records, each layer keeps only its inputs and is computed again during
  // backward (model/layer_checkpoint.h), trading one more forward pass for
  // the activations of every layer. The gradients are those of the plain
  // pass: dropout draws the same masks again and autocast is replayed.
  void set_gradient_checkpointing(bool enabled) { checkpoint_layers_ = enabled; }
  bool gradient_checkpointing() const { return checkpoint_layers_; }

  Embeddings embeddings{nullptr};
  Dense embeddings_project{nullptr};  // ELECTRA with embedding_size != hidden_size
  Pooler pooler{nullptr};

 private:
  EncoderConfig config_;
  torch::nn::ModuleList layers_{nullptr};
  std::string prefix_name_, inserter_name_;
  std::shared_ptr<AttentionPrefix> prefix_;
  std::shared_ptr<EmbeddingInserter> inserter_;
  bool checkpoint_layers_ = false;
};
TORCH_MODULE(EncoderModel);

// RoBERTa's and ELECTRA's "classifier": dense -> tanh (RoBERTa) or gelu
// (ELECTRA) -> out_proj, read at the first token.
class ClassificationHeadImpl : public torch::nn::Module {
 public:
  ClassificationHeadImpl(const EncoderConfig& config, int64_t num_labels, double dropout);
  at::Tensor forward(const at::Tensor& first_token);
  Dense dense{nullptr}, out_proj{nullptr};

 private:
  torch::nn::Dropout dropout_{nullptr};
  bool gelu_;
};
TORCH_MODULE(ClassificationHead);

// The classification / regression head on top of the encoder, as each HF
// *ForSequenceClassification does it. num_labels == 1 means regression.
class SequenceClassifierImpl : public torch::nn::Module {
 public:
  SequenceClassifierImpl(const EncoderConfig& config, int64_t num_labels);
  at::Tensor forward(const EncoderInput& input);  // logits [B, num_labels]
  at::Tensor head(const EncoderOutput& encoded);  // logits from encoder output
  int64_t num_labels() const { return num_labels_; }
  const EncoderConfig& config() const { return encoder->config(); }
  // True for the task head's parameters: "classifier.*", and for BERT the
  // pooler, which HF's base checkpoints may lack.
  bool is_head_parameter(const std::string& name) const;

  EncoderModel encoder{nullptr};  // registered as "bert" / "roberta" / "electra"

 private:
  int64_t num_labels_;
  torch::nn::Dropout dropout_{nullptr};
  Dense bert_classifier_{nullptr};              // BERT: "classifier"
  ClassificationHead two_layer_head_{nullptr};  // RoBERTa / ELECTRA: "classifier"
};
TORCH_MODULE(SequenceClassifier);

}  // namespace deltatune::model
