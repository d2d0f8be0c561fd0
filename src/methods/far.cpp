#include "deltatune/methods/far.h"

#include <ATen/ATen.h>
#include <fmt/core.h>

#include <cmath>
#include <set>

#include "deltatune/error.h"
#include "deltatune/model/linear_kernel.h"

namespace deltatune::methods {

namespace {

// One layer's FFN split into a learned and a frozen sub-layer (far.h). The
// learned weights are this module's parameters ("learned_up.weight",
// "learned_up.bias", "learned_down.weight"); the frozen ones are views of the
// layer's own W1, b1, W2 storage, not registered, so they are neither trained
// nor saved; b2 stays the layer's output.dense.bias.
class SplitFeedForward : public model::FeedForward {
 public:
  SplitFeedForward(const at::Tensor& learned_up_weight, const at::Tensor& learned_up_bias,
                   const at::Tensor& learned_down_weight, at::Tensor frozen_up_weight,
                   at::Tensor frozen_up_bias, at::Tensor frozen_down_weight, at::Tensor down_bias,
                   std::string activation)
      : frozen_up_weight_(std::move(frozen_up_weight)),
        frozen_up_bias_(std::move(frozen_up_bias)),
        frozen_down_weight_(std::move(frozen_down_weight)),
        down_bias_(std::move(down_bias)),
        activation_(std::move(activation)) {
    const int64_t hidden = learned_up_weight.size(1), learned = learned_up_weight.size(0);
    learned_up = register_module("learned_up", model::Dense(hidden, learned));
    learned_down = register_module("learned_down", model::Dense(learned, hidden, false));
    learned_up->weight.set_data(learned_up_weight);
    learned_up->bias.set_data(learned_up_bias);
    learned_down->weight.set_data(learned_down_weight);
  }

  at::Tensor forward(const at::Tensor& hidden) override {
    at::Tensor out = model::linear(model::activation(learned_up->forward(hidden), activation_),
                                   model::weight_operand({learned_down->weight}), down_bias_);
    if (frozen_up_weight_.size(0) == 0) return out;
    at::Tensor frozen = model::activation(
        model::linear(hidden, model::weight_operand({frozen_up_weight_}), frozen_up_bias_),
        activation_);
    return out + model::linear(frozen, model::weight_operand({frozen_down_weight_}), at::Tensor());
  }

  model::Dense learned_up{nullptr}, learned_down{nullptr};

 private:
  at::Tensor frozen_up_weight_, frozen_up_bias_, frozen_down_weight_, down_bias_;
  std::string activation_;
};

struct FeedForwardTensors {
  at::Tensor up_weight, up_bias, down_weight, down_bias;
};

// Handles on layer `layer`'s FFN tensors (in-place changes reach the model).
FeedForwardTensors ffn_of(const model::SequenceClassifierImpl& model, int64_t layer) {
  model::Layer l = model.encoder->layer(layer);
  return {l->intermediate->dense->weight, l->intermediate->dense->bias, l->output->dense->weight,
          l->output->dense->bias};
}

// The model's names of every layer's W1, b1, W2 (sparse) and b2 (dense).
std::vector<std::pair<std::string, StorageKind>> ffn_names(
    const model::SequenceClassifierImpl& model) {
  std::map<const void*, StorageKind> kinds;
  for (int64_t i = 0; i < model.encoder->num_layers(); ++i) {
    FeedForwardTensors t = ffn_of(model, i);
    for (const at::Tensor* w : {&t.up_weight, &t.up_bias, &t.down_weight})
      kinds[w->unsafeGetTensorImpl()] = StorageKind::kSparse;
    kinds[t.down_bias.unsafeGetTensorImpl()] = StorageKind::kDense;
  }
  std::vector<std::pair<std::string, StorageKind>> names;
  for (const auto& item : model.named_parameters(true)) {
    auto it = kinds.find(item.value().unsafeGetTensorImpl());
    if (it != kinds.end()) names.emplace_back(item.key(), it->second);
  }
  return names;
}

}  // namespace

Far::Far(FarOptions options) : options_(options) {
  if (!(options.priming_fraction > 0 && options.priming_fraction < 1))
    throw Error(
        fmt::format("far: priming_fraction must be in (0, 1), not {}", options.priming_fraction));
  if (!(options.learned_fraction > 0 && options.learned_fraction <= 1))
    throw Error(
        fmt::format("far: learned_fraction must be in (0, 1], not {}", options.learned_fraction));
}

nlohmann::json Far::config() const {
  return {{"priming_fraction", options_.priming_fraction},
          {"learned_fraction", options_.learned_fraction}};
}

int64_t Far::learned_per_layer(const model::SequenceClassifierImpl& model) const {
  const int64_t nodes = model.config().intermediate_size;
  return std::clamp<int64_t>(std::llround(options_.learned_fraction * static_cast<double>(nodes)),
                             1, nodes);
}

namespace {

// Trained through every stage beside the FFN nodes (docs/METHODS.md, FAR):
// biases, LayerNorms and the head. The split sub-layer's own tensors
// ("feed_forward.learned_up.bias") are nodes, not among them.
bool trains_throughout(const std::string& name) {
  if (name.find(".feed_forward.") != std::string::npos) return false;
  const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
  return bias || name.find("LayerNorm.") != std::string::npos || is_classifier_parameter(name);
}

}  // namespace

void Far::attach(model::SequenceClassifierImpl& model) {
  if (!initial_.empty() || reconfigured_) throw Error("far: attach() called twice");
  at::NoGradGuard no_grad;
  for (auto& item : model.named_parameters(true))
    item.value().requires_grad_(trains_throughout(item.key()));
  for (int64_t i = 0; i < model.encoder->num_layers(); ++i) {
    FeedForwardTensors t = ffn_of(model, i);
    for (at::Tensor* p : {&t.up_weight, &t.up_bias, &t.down_weight, &t.down_bias})
      p->requires_grad_(true);
    initial_.push_back(t.up_weight.detach().clone());
    initial_.push_back(t.up_bias.detach().clone());
    initial_.push_back(t.down_weight.detach().clone());
  }
}

int64_t Far::reconfigure(model::SequenceClassifierImpl& model) {
  if (reconfigured_) throw Error("far: already reconfigured");
  if (initial_.empty()) throw Error("far: reconfigure() before attach()");
  // The learning metric of an unprimed model is 0 everywhere: the split would be arbitrary.
  if (priming_steps_ == 0) throw Error("far: reconfigure() before priming took a step");
  at::NoGradGuard no_grad;
  const int64_t k = learned_per_layer(model);
  const std::string activation = model.config().hidden_act;
  for (int64_t i = 0; i < model.encoder->num_layers(); ++i) {
    FeedForwardTensors t = ffn_of(model, i);
    const at::Tensor &w1_0 = initial_[3 * i], &b1_0 = initial_[3 * i + 1],
                     &w2_0 = initial_[3 * i + 2];
    const int64_t nodes = t.up_weight.size(0), hidden = t.up_weight.size(1);
    at::Tensor metric = (t.up_weight - w1_0).abs().sum(1) + (t.up_bias - b1_0).abs() +
                        (t.down_weight - w2_0).abs().sum(0);
    // Stable descending order: ties go to the lower node index.
    at::Tensor order = std::get<1>(metric.sort(/*stable=*/true, 0, /*descending=*/true));
    at::Tensor learned = std::get<0>(order.narrow(0, 0, k).sort());
    at::Tensor frozen = std::get<0>(order.narrow(0, k, nodes - k).sort());

    // Frozen nodes go back to their initial values.
    t.up_weight.index_copy_(0, frozen, w1_0.index_select(0, frozen));
    t.up_bias.index_copy_(0, frozen, b1_0.index_select(0, frozen));
    t.down_weight.index_copy_(1, frozen, w2_0.index_select(1, frozen));

    at::Tensor learned_up = t.up_weight.index_select(0, learned);
    at::Tensor learned_bias = t.up_bias.index_select(0, learned);
    at::Tensor learned_down = t.down_weight.index_select(1, learned).contiguous();
    // W1 and b1 rows, and W2's storage, laid out learned block first.
    at::Tensor permutation = at::cat({learned, frozen});
    t.up_weight.copy_(t.up_weight.index_select(0, permutation));
    t.up_bias.copy_(t.up_bias.index_select(0, permutation));
    t.down_weight.view(-1).copy_(
        at::cat({learned_down.view(-1), t.down_weight.index_select(1, frozen).view(-1)}));
    for (at::Tensor* p : {&t.up_weight, &t.up_bias, &t.down_weight}) {
      p->requires_grad_(false);
      p->mutable_grad() = at::Tensor();
    }
    t.down_bias.mutable_grad() = at::Tensor();
    at::Tensor w1 = t.up_weight.detach(), b1 = t.up_bias.detach(), w2 = t.down_weight.detach();
    auto split = std::make_shared<SplitFeedForward>(
        learned_up, learned_bias, learned_down, w1.narrow(0, k, nodes - k),
        b1.narrow(0, k, nodes - k),
        w2.view(-1).narrow(0, hidden * k, hidden * (nodes - k)).view({hidden, nodes - k}),
        t.down_bias, activation);
    model.encoder->layer(i)->set_feed_forward(split);
    learned_nodes_.push_back(learned);
    frozen_nodes_.push_back(frozen);
  }
  for (auto& item : model.named_parameters(true)) item.value().mutable_grad() = at::Tensor();
  initial_.clear();
  reconfigured_ = true;
  return k * model.encoder->num_layers();
}

std::vector<Stage> Far::stages() const {
  Stage priming("priming", "priming");
  priming.step_share = options_.priming_fraction;
  priming.keep_best = false;
  Stage learned("learned_nodes");
  learned.rest_of_run = true;
  learned.evaluate_after_training = true;
  return {priming, learned};
}

StageTransition Far::between_stages(size_t /*finished*/, model::SequenceClassifierImpl& model) {
  StageTransition t;
  const int64_t learned = reconfigure(model);
  t.facts = {{"learned_nodes", learned}};
  t.message = fmt::format("{} learned FFN nodes", learned);
  return t;
}

void Far::after_training(model::SequenceClassifierImpl& model) {
  if (reconfigured_) restore_layout(model);
}

void Far::restore_layout(model::SequenceClassifierImpl& model) {
  if (!reconfigured_) throw Error("far: restore_layout() before reconfigure()");
  at::NoGradGuard no_grad;
  for (int64_t i = 0; i < model.encoder->num_layers(); ++i) {
    model::Layer layer = model.encoder->layer(i);
    auto split = std::dynamic_pointer_cast<SplitFeedForward>(layer->feed_forward());
    if (!split) throw Error(fmt::format("far: layer {} has no split FFN", i));
    FeedForwardTensors t = ffn_of(model, i);
    const at::Tensor &learned = learned_nodes_[i], &frozen = frozen_nodes_[i];
    const int64_t k = learned.numel(), nodes = t.up_weight.size(0), hidden = t.up_weight.size(1);
    at::Tensor frozen_up = t.up_weight.narrow(0, k, nodes - k).clone();
    at::Tensor frozen_bias = t.up_bias.narrow(0, k, nodes - k).clone();
    at::Tensor frozen_down = t.down_weight.view(-1)
                                 .narrow(0, hidden * k, hidden * (nodes - k))
                                 .view({hidden, nodes - k})
                                 .clone();
    t.up_weight.index_copy_(0, learned, split->learned_up->weight.detach());
    t.up_weight.index_copy_(0, frozen, frozen_up);
    t.up_bias.index_copy_(0, learned, split->learned_up->bias.detach());
    t.up_bias.index_copy_(0, frozen, frozen_bias);
    t.down_weight.index_copy_(1, learned, split->learned_down->weight.detach());
    t.down_weight.index_copy_(1, frozen, frozen_down);
    layer->clear_feed_forward();
  }
  learned_nodes_.clear();
  frozen_nodes_.clear();
  reconfigured_ = false;
}

MethodState Far::state() const {
  MethodState state;
  state.facts = {{"priming_steps", priming_steps_}, {"reconfigured", reconfigured_}};
  for (size_t layer = 0; layer < learned_nodes_.size(); ++layer)
    state.tensors.emplace_back("learned_nodes::" + std::to_string(layer), learned_nodes_[layer]);
  return state;
}

void Far::restore_state(const MethodState& state) {
  check_saved_stage(state, name(), "reconfigured", reconfigured_, "priming", "learned-nodes");
  priming_steps_ = state.facts.value("priming_steps", int64_t{0});
  // The split was replayed from the priming's final checkpoint: it must be the saved one.
  for (const auto& [name, nodes] : state.tensors) {
    const size_t layer = std::stoul(name.substr(name.find("::") + 2));
    if (layer >= learned_nodes_.size() || !at::equal(learned_nodes_[layer], nodes))
      throw Error("far: the checkpoint's learned nodes of layer " + std::to_string(layer) +
                  " differ from the split of its priming state");
  }
}

std::optional<int64_t> Far::sparse_budget(const model::SequenceClassifierImpl& model) const {
  const auto& config = model.config();
  return learned_per_layer(model) * (2 * config.hidden_size + 1) * config.num_hidden_layers;
}

std::optional<int64_t> Far::settled_trainable(const model::SequenceClassifierImpl& model) const {
  int64_t dense = 0;
  auto params = model.named_parameters(true);
  for (const auto& [name, kind] : stored_parameters(model))
    if (kind == StorageKind::kDense) dense += params[name].numel();
  return *sparse_budget(model) + dense;
}

std::vector<std::pair<std::string, StorageKind>> Far::stored_parameters(
    const model::SequenceClassifierImpl& model) const {
  auto stored = ffn_names(model);
  std::set<std::string> ffn;
  for (const auto& [name, kind] : stored) ffn.insert(name);
  for (const auto& item : model.named_parameters(true))
    if (trains_throughout(item.key()) && !ffn.count(item.key()))
      stored.emplace_back(item.key(), StorageKind::kDense);
  return stored;
}

std::string Far::describe() const {
  return fmt::format(
      "FFN weights, biases, LayerNorms and the head prime for the first {:.0f}% of steps; then "
      "the top {:.0f}% FFN nodes per layer by L1 change train as a separate contiguous "
      "sub-layer, with every bias, LayerNorm and the head (sparse delta of the learned nodes)",
      100 * options_.priming_fraction, 100 * options_.learned_fraction);
}

}  // namespace deltatune::methods
