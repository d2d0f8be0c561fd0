#include "deltatune/methods/prefix_tuning.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/core.h>

#include <cmath>

#include "deltatune/error.h"

namespace deltatune::methods {

namespace {

const char* const kModule = "prefix";
const std::string kTableSuffix = ".prefix.key_values";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() > suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// nn.Linear's default initialisation (kaiming_uniform with a = sqrt 5 gives
// U(-1/sqrt(in), 1/sqrt(in)) for the weight; the bias likewise).
model::Dense linear_layer(int64_t in, int64_t out, at::Generator& generator) {
  model::Dense dense(in, out);
  at::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  dense->weight.uniform_(-bound, bound, generator);
  dense->bias.uniform_(-bound, bound, generator);
  return dense;
}

}  // namespace

bool is_prefix_table(const std::string& name) { return ends_with(name, kTableSuffix); }

// P' and the MLP that computes P from it.
struct Reparameterization : torch::nn::Module {
  Reparameterization(int64_t length, int64_t hidden, int64_t width, int64_t projection_size,
                     at::Generator& generator) {
    at::NoGradGuard no_grad;
    // nn.Embedding's N(0, 1) for P', nn.Linear's for the MLP (PEFT's PrefixEncoder).
    embedding =
        register_parameter("embedding", at::empty({length, hidden}).normal_(0, 1, generator));
    transform_in =
        register_module("transform_in", linear_layer(hidden, projection_size, generator));
    transform_out =
        register_module("transform_out", linear_layer(projection_size, width, generator));
  }
  at::Tensor forward() {
    return transform_out->forward(at::tanh(transform_in->forward(embedding)));
  }
  at::Tensor embedding;
  model::Dense transform_in{nullptr}, transform_out{nullptr};
};

// The table P, or the reparameterisation that computes it (prefix_tuning.h).
class PrefixTuning::Prefix : public model::AttentionPrefix {
 public:
  Prefix(int64_t length, int64_t layers, int64_t hidden, int64_t shift, bool with_mlp,
         int64_t projection_size, uint64_t seed)
      : layers_(layers), hidden_(hidden), shift_(shift) {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    if (with_mlp) {
      mlp_ = register_module("reparameterization",
                             std::make_shared<Reparameterization>(
                                 length, hidden, 2 * layers * hidden, projection_size, generator));
    } else {
      at::NoGradGuard no_grad;
      key_values = register_parameter(
          "key_values", at::empty({length, 2 * layers * hidden}).normal_(0, 1, generator));
    }
  }

  at::Tensor table() { return mlp_ ? mlp_->forward() : key_values; }

  std::pair<at::Tensor, at::Tensor> forward(int64_t layer, int64_t /*batch_size*/) override {
    if (layer == 0 || !pass_.defined()) pass_ = table();  // once per forward pass
    at::Tensor keys = pass_.narrow(1, 2 * layer * hidden_, hidden_).unsqueeze(0);
    at::Tensor values = pass_.narrow(1, (2 * layer + 1) * hidden_, hidden_).unsqueeze(0);
    if (layer == layers_ - 1) pass_ = at::Tensor();
    return {keys, values};
  }

  int64_t position_offset() const override { return shift_; }
  bool reparameterized() const { return mlp_ != nullptr; }

  // Replaces P' and the MLP by the table they compute.
  void fold() {
    if (!mlp_) return;
    at::Tensor computed;
    {
      at::NoGradGuard no_grad;
      computed = mlp_->forward().detach().clone();
    }
    unregister_module("reparameterization");
    mlp_.reset();
    key_values = register_parameter("key_values", computed);
  }

  at::Tensor key_values;

 private:
  int64_t layers_, hidden_, shift_;
  std::shared_ptr<Reparameterization> mlp_;
  at::Tensor pass_;
};

PrefixTuning::PrefixTuning(PrefixTuningOptions options) : options_(std::move(options)) {
  if (options_.length < 1) throw Error("prefix-tuning: length must be at least 1");
  if (options_.reparameterize && options_.projection_size < 1)
    throw Error("prefix-tuning: projection_size must be at least 1");
  if (options_.positions != "unchanged" && options_.positions != "shifted")
    throw Error("prefix-tuning: positions must be unchanged or shifted, not '" +
                options_.positions + "'");
}

nlohmann::json PrefixTuning::config() const {
  return {{"length", options_.length},
          {"reparameterize", options_.reparameterize},
          {"projection_size", options_.projection_size},
          {"positions", options_.positions},
          {"seed", options_.seed}};
}

void PrefixTuning::install(model::SequenceClassifierImpl& model, bool with_mlp) {
  if (prefix_) throw Error("prefix-tuning: already attached");
  const auto& config = model.config();
  prefix_ = std::make_shared<Prefix>(options_.length, config.num_hidden_layers, config.hidden_size,
                                     options_.positions == "shifted" ? options_.length : 0,
                                     with_mlp, options_.projection_size, options_.seed);
  const at::Device device = model.encoder->embeddings->word_embeddings->weight.device();
  prefix_->to(device);
  model.encoder->set_attention_prefix(kModule, prefix_);
}

void PrefixTuning::attach_modules(model::SequenceClassifierImpl& model) { install(model, false); }

void PrefixTuning::attach(model::SequenceClassifierImpl& model) {
  for (auto& item : model.named_parameters(true))
    item.value().requires_grad_(is_classifier_parameter(item.key()));
  install(model, options_.reparameterize);
  for (auto& p : prefix_->parameters()) p.requires_grad_(true);
}

void PrefixTuning::after_training(model::SequenceClassifierImpl& /*model*/) {
  if (!prefix_) throw Error("prefix-tuning: not attached");
  prefix_->fold();
}

at::Tensor PrefixTuning::prefixes() const {
  if (!prefix_) throw Error("prefix-tuning: not attached");
  return prefix_->table();
}

bool PrefixTuning::reparameterized() const { return prefix_ && prefix_->reparameterized(); }

std::vector<std::pair<std::string, StorageKind>> PrefixTuning::stored_parameters(
    const model::SequenceClassifierImpl& model) const {
  std::vector<std::pair<std::string, StorageKind>> stored;
  for (const auto& item : model.named_parameters(true))
    if (is_classifier_parameter(item.key()) || is_prefix_table(item.key()))
      stored.emplace_back(item.key(), StorageKind::kDense);
  return stored;
}

std::string PrefixTuning::describe() const {
  return fmt::format(
      "key/value prefixes of length {} in every layer ({}positions {}) train with the head; the "
      "encoder is frozen; dense delta of the prefixes",
      options_.length,
      options_.reparameterize
          ? fmt::format("through a tanh MLP of width {} while training, ", options_.projection_size)
          : std::string(),
      options_.positions);
}

}  // namespace deltatune::methods
