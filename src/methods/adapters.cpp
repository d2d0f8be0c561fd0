#include "deltatune/methods/adapters.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/core.h>

#include "deltatune/error.h"

namespace deltatune::methods {

namespace {

const char* const kModule = "adapter";

class BottleneckAdapter : public model::SublayerAdapter {
 public:
  BottleneckAdapter(int64_t hidden, int64_t bottleneck, double init_std, at::Generator& generator) {
    down = register_module("down", model::Dense(hidden, bottleneck));
    up = register_module("up", model::Dense(bottleneck, hidden));
    at::NoGradGuard no_grad;
    for (auto* dense : {&down, &up}) {
      // N(0, std) truncated at two standard deviations (TF's truncated_normal).
      at::Tensor& w = (*dense)->weight;
      w.normal_(0, 1, generator);
      for (at::Tensor outside = w.abs() > 2; outside.any().item<bool>(); outside = w.abs() > 2)
        w.masked_scatter_(outside,
                          at::empty({outside.sum().item<int64_t>()}).normal_(0, 1, generator));
      w.mul_(init_std);
      (*dense)->bias.zero_();
    }
  }
  at::Tensor forward(const at::Tensor& hidden) override {
    return hidden + up->forward(model::activation(down->forward(hidden), "gelu"));
  }
  std::optional<Bottleneck> bottleneck() const override {
    return Bottleneck{down->weight, down->bias, up->weight, up->bias, "gelu"};
  }
  model::Dense down{nullptr}, up{nullptr};
};

}  // namespace

bool is_adapter_parameter(const std::string& name) {
  return name.find(".adapter.") != std::string::npos;
}

Adapters::Adapters(AdapterOptions options) : options_(options) {
  if (options_.bottleneck < 1) throw Error("adapters: bottleneck must be at least 1");
  if (!(options_.init_std > 0)) throw Error("adapters: init_std must be positive");
}

nlohmann::json Adapters::config() const {
  return {{"bottleneck", options_.bottleneck},
          {"init_std", options_.init_std},
          {"seed", options_.seed}};
}

void Adapters::attach_modules(model::SequenceClassifierImpl& model) {
  if (attached_) throw Error("adapters: already attached");
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options_.seed);
  const int64_t hidden = model.config().hidden_size;
  const at::Device device = model.encoder->embeddings->word_embeddings->weight.device();
  for (int64_t i = 0; i < model.encoder->num_layers(); ++i) {
    auto layer = model.encoder->layer(i);
    for (auto* sublayer : {&layer->attention->output, &layer->output}) {
      auto adapter = std::make_shared<BottleneckAdapter>(hidden, options_.bottleneck,
                                                         options_.init_std, generator);
      adapter->to(device);
      (*sublayer)->set_adapter(kModule, adapter);
    }
  }
  attached_ = true;
}

void Adapters::attach(model::SequenceClassifierImpl& model) {
  for (auto& item : model.named_parameters(true))
    item.value().requires_grad_(is_classifier_parameter(item.key()) ||
                                item.key().find("LayerNorm.") != std::string::npos);
  attach_modules(model);
  for (auto& item : model.named_parameters(true))
    if (is_adapter_parameter(item.key())) item.value().requires_grad_(true);
}

std::vector<std::pair<std::string, StorageKind>> Adapters::stored_parameters(
    const model::SequenceClassifierImpl& model) const {
  std::vector<std::pair<std::string, StorageKind>> stored;
  for (const auto& item : model.named_parameters(true))
    if (is_classifier_parameter(item.key()) || is_adapter_parameter(item.key()) ||
        item.key().find("LayerNorm.") != std::string::npos)
      stored.emplace_back(item.key(), StorageKind::kDense);
  return stored;
}

std::string Adapters::describe() const {
  return fmt::format(
      "bottleneck adapters (width {}) after each layer's attention and FFN outputs train with "
      "every LayerNorm and the head; the rest is frozen; dense delta",
      options_.bottleneck);
}

}  // namespace deltatune::methods
