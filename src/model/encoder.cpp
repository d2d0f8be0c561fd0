#include "deltatune/model/encoder.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/version.h>

#include <cmath>
#include <limits>

#include "deltatune/error.h"
#include "deltatune/model/dropout.h"
#include "deltatune/model/linear_kernel.h"
#include "layer_checkpoint.h"

namespace deltatune::model {

at::Tensor additive_attention_mask(const at::Tensor& mask, at::ScalarType dtype) {
  const double lowest =
      dtype == at::kBFloat16
          ? -3.3895313892515355e38
          : (dtype == at::kHalf ? -65504.0
                                : static_cast<double>(std::numeric_limits<float>::lowest()));
  return ((1.0 - mask.to(dtype)) * lowest).view({mask.size(0), 1, 1, mask.size(1)});
}

namespace {

torch::nn::LayerNorm make_layer_norm(int64_t size, double eps) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({size}).eps(eps));
}

// LayerNorm in fp32 whatever the activations' dtype: LibTorch's bf16 CPU
// layer_norm is ~14x slower than its fp32 one here, and fp32 statistics are
// what autocast uses too. Returns the input's dtype.
at::Tensor layer_norm(torch::nn::LayerNorm& norm, const at::Tensor& x) {
  if (x.scalar_type() == at::kFloat && norm->weight.scalar_type() == at::kFloat)
    return norm->forward(x);
  const auto& options = norm->options;
  return at::layer_norm(x.to(at::kFloat), options.normalized_shape(), norm->weight.to(at::kFloat),
                        norm->bias.to(at::kFloat), options.eps())
      .to(x.scalar_type());
}

// The probability a dropout module applies now: 0 in eval mode.
double active_dropout(const torch::nn::Dropout& dropout) {
  return dropout->is_training() ? dropout->options.p() : 0.0;
}

// What the module's forward computes (at::dropout), through model::dropout:
// the same values and random stream, drawn faster, bytes kept for backward.
at::Tensor apply_dropout(const torch::nn::Dropout& dropout, const at::Tensor& x) {
  return model::dropout(x, active_dropout(dropout), /*train=*/true);
}

double classifier_dropout(const EncoderConfig& config) {
  return config.classifier_dropout.value_or(config.hidden_dropout_prob);
}

}  // namespace

// --- Initialisation ------------------------------------------------------------

namespace {
thread_local bool skip_initialisation = false;
}

SkipInitialisation::SkipInitialisation() : previous_(skip_initialisation) {
  skip_initialisation = true;
}
SkipInitialisation::~SkipInitialisation() { skip_initialisation = previous_; }
bool SkipInitialisation::active() { return skip_initialisation; }

// --- Dense ---------------------------------------------------------------------

DenseImpl::DenseImpl(int64_t in_features, int64_t out_features, bool with_bias) {
  weight = register_parameter("weight", at::empty({out_features, in_features}));
  if (with_bias) bias = register_parameter("bias", at::zeros({out_features}));
  if (SkipInitialisation::active()) return;
  // HF's _init_weights for nn.Linear; loading overwrites it for pretrained parts.
  at::NoGradGuard no_grad;
  weight.normal_(0.0, 0.02);
}

at::Tensor DenseImpl::forward(const at::Tensor& input) {
  at::Tensor output = model::linear(input, model::weight_operand({weight}), bias);
  for (auto& [name, delta] : deltas_)
    if (at::Tensor added = delta->forward(input); added.defined()) output = output + added;
  return output;
}

void DenseImpl::add_delta(const std::string& name, std::shared_ptr<DenseDelta> delta) {
  if (deltas_.count(name)) throw Error("a delta named '" + name + "' is already attached");
  deltas_[name] = register_module(name, std::move(delta));
}

void DenseImpl::remove_delta(const std::string& name) {
  if (deltas_.erase(name) == 0) throw Error("no delta named '" + name + "' is attached");
  unregister_module(name);
}

// --- Embeddings --------------------------------------------------------------

EmbeddingsImpl::EmbeddingsImpl(const EncoderConfig& config)
    : positions_from_padding_(config.positions_from_padding()), pad_token_id_(config.pad_token_id) {
  const int64_t width = config.embedding_size;
  // An Embedding given its weight tensor draws no initial values.
  auto table = [&](int64_t rows) {
    auto options = torch::nn::EmbeddingOptions(rows, width);
    if (SkipInitialisation::active()) options._weight(at::empty({rows, width}));
    return options;
  };
  word_embeddings = register_module(
      "word_embeddings",
      torch::nn::Embedding(table(config.vocab_size).padding_idx(config.pad_token_id)));
  auto position_options = table(config.max_position_embeddings);
  if (positions_from_padding_) position_options.padding_idx(config.pad_token_id);
  position_embeddings =
      register_module("position_embeddings", torch::nn::Embedding(position_options));
  token_type_embeddings =
      register_module("token_type_embeddings", torch::nn::Embedding(table(config.type_vocab_size)));
  LayerNorm = register_module("LayerNorm", make_layer_norm(width, config.layer_norm_eps));
  dropout = register_module("dropout", torch::nn::Dropout(config.hidden_dropout_prob));
}

at::Tensor EmbeddingsImpl::position_ids(const at::Tensor& input_ids,
                                        const at::Tensor& offsets) const {
  if (positions_from_padding_) {
    // RoBERTa: padding keeps position pad_token_id, tokens count from
    // pad_token_id + 1 + offset (HF's create_position_ids_from_input_ids).
    at::Tensor is_token = input_ids.ne(pad_token_id_).to(at::kLong);
    return (at::cumsum(is_token, 1) + offsets) * is_token + pad_token_id_;
  }
  return at::arange(input_ids.size(1), input_ids.options()).unsqueeze(0) + offsets;
}

at::Tensor EmbeddingsImpl::vector_position_ids(int64_t length,
                                               const at::TensorOptions& options) const {
  const int64_t first = positions_from_padding_ ? pad_token_id_ + 1 : 0;
  return at::arange(first, first + length, options).unsqueeze(0);
}

at::Tensor EmbeddingsImpl::forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids,
                                   int64_t position_offset) {
  at::Tensor positions =
      position_ids(input_ids, at::scalar_tensor(position_offset, input_ids.options()));
  at::Tensor types = token_type_ids.defined() ? token_type_ids : at::zeros_like(input_ids);
  const int64_t last =
      position_offset + input_ids.size(1) - 1 + (positions_from_padding_ ? pad_token_id_ + 1 : 0);
  return combine(word_embeddings->forward(input_ids), types, positions, last);
}

at::Tensor EmbeddingsImpl::forward_vectors(const at::Tensor& word_vectors,
                                           const at::Tensor& token_type_ids) {
  const int64_t length = word_vectors.size(1);
  const int64_t first = positions_from_padding_ ? pad_token_id_ + 1 : 0;
  return combine(word_vectors, token_type_ids,
                 vector_position_ids(length, token_type_ids.options()), first + length - 1);
}

at::Tensor EmbeddingsImpl::combine(const at::Tensor& word_vectors, const at::Tensor& token_type_ids,
                                   const at::Tensor& positions, int64_t last_position) {
  const int64_t capacity = position_embeddings->options.num_embeddings();
  if (last_position >= capacity)
    throw Error("sequence of " + std::to_string(word_vectors.size(1)) +
                " tokens (prefix or prompt included) exceeds the model's " +
                std::to_string(capacity) + " positions");
  at::Tensor embedded = word_vectors + token_type_embeddings->forward(token_type_ids) +
                        position_embeddings->forward(positions);
  return apply_dropout(dropout, layer_norm(LayerNorm, embedded));
}

// --- Attention -----------------------------------------------------------------

SelfAttentionImpl::SelfAttentionImpl(const EncoderConfig& config)
    : heads_(config.num_attention_heads) {
  const int64_t h = config.hidden_size;
  query = register_module("query", Dense(h, h));
  key = register_module("key", Dense(h, h));
  value = register_module("value", Dense(h, h));
  dropout = register_module("dropout", torch::nn::Dropout(config.attention_probs_dropout_prob));
}

at::Tensor SelfAttentionImpl::forward(const at::Tensor& hidden, const at::Tensor& additive_mask,
                                      const at::Tensor& prefix_keys,
                                      const at::Tensor& prefix_values) {
  const int64_t batch = hidden.size(0);
  at::Tensor queries, keys, values;
  if (!query->has_deltas() && !key->has_deltas() && !value->has_deltas()) {
    // One GEMM for Q, K and V: the same products as three nn.Linear calls.
    at::Tensor fused =
        model::linear(hidden, model::weight_operand({query->weight, key->weight, value->weight}),
                      at::cat({query->bias, key->bias, value->bias}));
    auto parts = fused.chunk(3, -1);
    queries = parts[0], keys = parts[1], values = parts[2];
  } else {
    queries = query->forward(hidden), keys = key->forward(hidden), values = value->forward(hidden);
  }
  if (prefix_keys.defined()) {
    keys = at::cat({prefix_keys.to(keys.scalar_type()).expand({batch, -1, -1}), keys}, 1);
    values = at::cat({prefix_values.to(values.scalar_type()).expand({batch, -1, -1}), values}, 1);
  }
  return attend(queries, keys, values, additive_mask);
}

at::Tensor SelfAttentionImpl::attend(const at::Tensor& queries, const at::Tensor& keys,
                                     const at::Tensor& values, const at::Tensor& additive_mask) {
  return model::attention(queries, keys, values, additive_mask, heads_, active_dropout(dropout));
}

SublayerOutputImpl::SublayerOutputImpl(const EncoderConfig& config, int64_t in_features) {
  dense = register_module("dense", Dense(in_features, config.hidden_size));
  LayerNorm =
      register_module("LayerNorm", make_layer_norm(config.hidden_size, config.layer_norm_eps));
  dropout = register_module("dropout", torch::nn::Dropout(config.hidden_dropout_prob));
}

at::Tensor SublayerOutputImpl::forward(const at::Tensor& hidden, const at::Tensor& residual) {
  if (!dense->has_deltas() && !adapter_ && active_dropout(dropout) == 0)
    return layer_norm(LayerNorm,
                      model::linear_residual(hidden, model::weight_operand({dense->weight}),
                                             dense->bias, residual));
  return finish(dense->forward(hidden), residual);
}

at::Tensor SublayerOutputImpl::finish(const at::Tensor& projected, const at::Tensor& residual) {
  if (!adapter_)
    if (at::Tensor fused = model::dropout_residual_layer_norm(
            projected, residual, active_dropout(dropout), LayerNorm->weight, LayerNorm->bias,
            LayerNorm->options.eps());
        fused.defined())
      return fused;
  at::Tensor h = apply_dropout(dropout, projected);
  if (adapter_) h = adapter_->forward(h);
  return layer_norm(LayerNorm, h + residual);
}

void SublayerOutputImpl::set_adapter(const std::string& name,
                                     std::shared_ptr<SublayerAdapter> adapter) {
  clear_adapter();
  adapter_name_ = name;
  adapter_ = register_module(name, std::move(adapter));
}

void SublayerOutputImpl::clear_adapter() {
  if (!adapter_) return;
  unregister_module(adapter_name_);
  adapter_.reset();
  adapter_name_.clear();
}

AttentionImpl::AttentionImpl(const EncoderConfig& config) {
  self = register_module("self", SelfAttention(config));
  output = register_module("output", SublayerOutput(config, config.hidden_size));
}

IntermediateImpl::IntermediateImpl(const EncoderConfig& config) : activation_(config.hidden_act) {
  dense = register_module("dense", Dense(config.hidden_size, config.intermediate_size));
}

at::Tensor IntermediateImpl::forward(const at::Tensor& hidden) {
  if (!dense->has_deltas())
    return model::linear_activation(hidden, model::weight_operand({dense->weight}), dense->bias,
                                    activation_);
  return activation(dense->forward(hidden), activation_);
}

LayerImpl::LayerImpl(const EncoderConfig& config) {
  attention = register_module("attention", Attention(config));
  intermediate = register_module("intermediate", Intermediate(config));
  output = register_module("output", SublayerOutput(config, config.intermediate_size));
}

at::Tensor LayerImpl::forward(const at::Tensor& hidden, const at::Tensor& additive_mask,
                              const at::Tensor& prefix_keys, const at::Tensor& prefix_values) {
  at::Tensor attended = attention->output->forward(
      attention->self->forward(hidden, additive_mask, prefix_keys, prefix_values), hidden);
  if (feed_forward_) return output->finish(feed_forward_->forward(attended), attended);
  return output->forward(intermediate->forward(attended), attended);
}

void LayerImpl::set_feed_forward(std::shared_ptr<FeedForward> feed_forward) {
  clear_feed_forward();
  feed_forward_ = register_module("feed_forward", std::move(feed_forward));
}

void LayerImpl::clear_feed_forward() {
  if (!feed_forward_) return;
  unregister_module("feed_forward");
  feed_forward_.reset();
}

PoolerImpl::PoolerImpl(const EncoderConfig& config) {
  dense = register_module("dense", Dense(config.hidden_size, config.hidden_size));
}

at::Tensor PoolerImpl::forward(const at::Tensor& hidden) {
  return at::tanh(dense->forward(hidden.select(1, 0)));
}

// --- EncoderModel ----------------------------------------------------------------

EncoderModelImpl::EncoderModelImpl(const EncoderConfig& config, bool with_pooler)
    : config_(config) {
  embeddings = register_module("embeddings", Embeddings(config));
  if (config.embedding_size != config.hidden_size)
    embeddings_project =
        register_module("embeddings_project", Dense(config.embedding_size, config.hidden_size));
  // HF nests the layers as encoder.layer.<i>.
  auto encoder = std::make_shared<torch::nn::Module>();
  layers_ = torch::nn::ModuleList();
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layers_->push_back(Layer(config));
  encoder->register_module("layer", layers_);
  register_module("encoder", encoder);
  if (with_pooler) pooler = register_module("pooler", Pooler(config));
}

Layer EncoderModelImpl::layer(int64_t index) const {
  return Layer(std::dynamic_pointer_cast<LayerImpl>(layers_->ptr(index)));
}

EncoderOutput EncoderModelImpl::forward(const EncoderInput& input) {
  if (!input.input_ids.defined() || input.input_ids.dim() != 2)
    throw Error("input_ids must be a [batch, length] tensor");
  at::Tensor mask =
      input.attention_mask.defined() ? input.attention_mask : at::ones_like(input.input_ids);
  at::Tensor hidden;
  if (inserter_) {
    WordInput words{
        embeddings->word_embeddings->forward(input.input_ids), mask,
        input.token_type_ids.defined() ? input.token_type_ids : at::zeros_like(input.input_ids)};
    words = inserter_->forward(words);
    mask = words.attention_mask;
    hidden = embeddings->forward_vectors(words.word_vectors, words.token_type_ids);
  } else {
    hidden = embeddings->forward(input.input_ids, input.token_type_ids,
                                 prefix_ ? prefix_->position_offset() : 0);
  }
  if (!embeddings_project.is_empty()) hidden = embeddings_project->forward(hidden);

  const int64_t batch = hidden.size(0);
  auto additive = [&](const at::Tensor& m) {
    return additive_attention_mask(m, hidden.scalar_type());
  };
  at::Tensor token_mask = additive(mask);
  at::Tensor prefixed_mask;  // with every prefix key visible; one prefix length for all layers
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    at::Tensor prefix_keys, prefix_values, layer_mask = token_mask;
    if (prefix_) std::tie(prefix_keys, prefix_values) = prefix_->forward(i, batch);
    if (prefix_keys.defined()) {
      const int64_t length = prefix_keys.size(1);
      if (!prefixed_mask.defined() || prefixed_mask.size(-1) != length + mask.size(1))
        prefixed_mask = additive(at::cat({at::ones({batch, length}, mask.options()), mask}, 1));
      layer_mask = prefixed_mask;
    }
    if (checkpoint_layers_ && is_training() && c10::GradMode::is_enabled())
      hidden = checkpointed_layer(*layer(i), hidden, layer_mask, prefix_keys, prefix_values);
    else
      hidden = layer(i)->forward(hidden, layer_mask, prefix_keys, prefix_values);
  }
  EncoderOutput out;
  out.last_hidden_state = hidden;
  out.attention_mask = mask;
  if (!pooler.is_empty()) out.pooler_output = pooler->forward(hidden);
  return out;
}

void EncoderModelImpl::set_attention_prefix(const std::string& name,
                                            std::shared_ptr<AttentionPrefix> prefix) {
  clear_attention_prefix();
  prefix_name_ = name;
  prefix_ = register_module(name, std::move(prefix));
}

void EncoderModelImpl::set_embedding_inserter(const std::string& name,
                                              std::shared_ptr<EmbeddingInserter> inserter) {
  clear_embedding_inserter();
  inserter_name_ = name;
  inserter_ = register_module(name, std::move(inserter));
}

void EncoderModelImpl::clear_attention_prefix() {
  if (!prefix_) return;
  unregister_module(prefix_name_);
  prefix_.reset();
}

void EncoderModelImpl::clear_embedding_inserter() {
  if (!inserter_) return;
  unregister_module(inserter_name_);
  inserter_.reset();
}

// --- Heads -------------------------------------------------------------------------

ClassificationHeadImpl::ClassificationHeadImpl(const EncoderConfig& config, int64_t num_labels,
                                               double dropout)
    : gelu_(config.architecture == Architecture::kElectra) {
  dense = register_module("dense", Dense(config.hidden_size, config.hidden_size));
  out_proj = register_module("out_proj", Dense(config.hidden_size, num_labels));
  dropout_ = register_module("dropout", torch::nn::Dropout(dropout));
}

at::Tensor ClassificationHeadImpl::forward(const at::Tensor& first_token) {
  at::Tensor x = dense->forward(apply_dropout(dropout_, first_token));
  x = gelu_ ? at::gelu(x) : at::tanh(x);
  return out_proj->forward(apply_dropout(dropout_, x));
}

SequenceClassifierImpl::SequenceClassifierImpl(const EncoderConfig& config, int64_t num_labels)
    : num_labels_(num_labels) {
  if (num_labels < 1) throw Error("num_labels must be at least 1");
  const bool bert = config.architecture == Architecture::kBert;
  encoder = register_module(config.base_model_prefix(), EncoderModel(config, bert));
  if (bert) {
    dropout_ = register_module("dropout", torch::nn::Dropout(classifier_dropout(config)));
    bert_classifier_ = register_module("classifier", Dense(config.hidden_size, num_labels));
  } else {
    two_layer_head_ = register_module(
        "classifier", ClassificationHead(config, num_labels, classifier_dropout(config)));
  }
}

at::Tensor SequenceClassifierImpl::head(const EncoderOutput& encoded) {
  if (!bert_classifier_.is_empty())
    return bert_classifier_->forward(apply_dropout(dropout_, encoded.pooler_output));
  return two_layer_head_->forward(encoded.last_hidden_state.select(1, 0));
}

at::Tensor SequenceClassifierImpl::forward(const EncoderInput& input) {
  return head(encoder->forward(input));
}

bool SequenceClassifierImpl::is_head_parameter(const std::string& name) const {
  if (name.rfind("classifier.", 0) == 0) return true;
  return config().architecture == Architecture::kBert && name.rfind("bert.pooler.", 0) == 0;
}

}  // namespace deltatune::model
