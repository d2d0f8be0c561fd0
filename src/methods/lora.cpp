#include "deltatune/methods/lora.h"

#include <ATen/ATen.h>
#include <fmt/core.h>
#include <torch/nn/modules/dropout.h>

#include <cmath>

#include "deltatune/error.h"
#include "deltatune/model/dropout.h"
#include "deltatune/model/linear_kernel.h"

namespace deltatune::methods {

namespace {

bool targeted(const std::string& module, const std::vector<std::string>& targets) {
  for (const auto& t : targets) {
    if (module == t) return true;
    if (module.size() > t.size() && module.compare(module.size() - t.size(), t.size(), t) == 0 &&
        module[module.size() - t.size() - 1] == '.')
      return true;
  }
  return false;
}

// scaling * B A dropout(x), or nothing while merged into W.
class LoraBranch : public model::DenseDelta {
 public:
  LoraBranch(int64_t in, int64_t out, int64_t rank, double scaling, double dropout)
      : scaling_(scaling) {
    lora_A = register_module("lora_A", model::Dense(in, rank, false));
    lora_B = register_module("lora_B", model::Dense(rank, out, false));
    if (dropout > 0) dropout_ = register_module("dropout", torch::nn::Dropout(dropout));
    at::NoGradGuard no_grad;
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    lora_A->weight.uniform_(-bound, bound);
    lora_B->weight.zero_();
  }

  at::Tensor forward(const at::Tensor& input) override {
    if (merged) return {};
    // torch::nn::Dropout's values and random stream, through model::dropout's
    // faster draw.
    at::Tensor x = dropout_ && dropout_->is_training()
                       ? model::dropout(input, dropout_->options.p(), true)
                       : input;
    return lora_B->forward(lora_A->forward(x)) * scaling_;
  }

  std::optional<LowRank> low_rank() const override {
    if (merged) return std::nullopt;
    return LowRank{lora_A->weight, lora_B->weight, scaling_};
  }

  // scaling B A, shaped like the Dense's weight.
  at::Tensor update() const { return lora_B->weight.mm(lora_A->weight) * scaling_; }

  model::Dense lora_A{nullptr}, lora_B{nullptr};
  bool merged = false;

 private:
  double scaling_;
  torch::nn::Dropout dropout_{nullptr};
};

}  // namespace

struct Lora::Branch {
  std::string target;
  model::Dense dense{nullptr};
  std::shared_ptr<LoraBranch> branch;
};

Lora::Lora(LoraOptions options) : options_(std::move(options)) {
  if (options_.rank < 1) throw Error("lora: rank must be at least 1");
  if (!(options_.dropout >= 0 && options_.dropout < 1))
    throw Error(fmt::format("lora: dropout must be in [0, 1), not {}", options_.dropout));
  if (options_.target_modules.empty()) throw Error("lora: target_modules is empty");
}

nlohmann::json Lora::config() const {
  return {{"rank", options_.rank},
          {"alpha", options_.alpha},
          {"dropout", options_.dropout},
          {"target_modules", options_.target_modules}};
}

void Lora::attach_modules(model::SequenceClassifierImpl& model) {
  if (!branches_.empty()) throw Error("lora: already attached");
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    auto dense = std::dynamic_pointer_cast<model::DenseImpl>(item.value());
    if (!dense || is_classifier_parameter(item.key()) ||
        !targeted(item.key(), options_.target_modules))
      continue;
    auto branch = std::make_shared<LoraBranch>(dense->weight.size(1), dense->weight.size(0),
                                               options_.rank, options_.scaling(), options_.dropout);
    branch->to(dense->weight.device());  // drawn on the CPU's stream on every device
    dense->add_delta("lora", branch);
    branches_.push_back(std::make_shared<Branch>(Branch{item.key(), model::Dense(dense), branch}));
  }
  if (branches_.empty()) {
    std::string list;
    for (const auto& t : options_.target_modules) list += (list.empty() ? "" : ", ") + t;
    throw Error("lora: no Dense layer of the model matches target_modules (" + list + ")");
  }
}

void Lora::attach(model::SequenceClassifierImpl& model) {
  for (auto& item : model.named_parameters(true))
    item.value().requires_grad_(is_classifier_parameter(item.key()));
  attach_modules(model);
  for (auto& b : branches_)
    for (auto& p : b->branch->parameters()) p.requires_grad_(true);
}

void Lora::merge() {
  if (merged_) return;
  at::NoGradGuard no_grad;
  for (auto& b : branches_) {
    b->dense->weight.add_(b->branch->update());
    b->branch->merged = true;
  }
  merged_ = true;
}

void Lora::unmerge() {
  if (!merged_) return;
  at::NoGradGuard no_grad;
  for (auto& b : branches_) {
    b->dense->weight.sub_(b->branch->update());
    b->branch->merged = false;
  }
  merged_ = false;
}

void Lora::fold_into_weights(model::SequenceClassifierImpl& /*model*/) {
  merge();
  for (auto& b : branches_) b->dense->remove_delta("lora");
  branches_.clear();
  merged_ = false;
}

std::vector<std::string> Lora::targets() const {
  std::vector<std::string> names;
  for (const auto& b : branches_) names.push_back(b->target);
  return names;
}

std::vector<std::pair<std::string, StorageKind>> Lora::stored_parameters(
    const model::SequenceClassifierImpl& model) const {
  std::vector<std::pair<std::string, StorageKind>> stored;
  for (const auto& item : model.named_parameters(true))
    if (is_classifier_parameter(item.key()) || item.key().find(".lora.lora_") != std::string::npos)
      stored.emplace_back(item.key(), StorageKind::kDense);
  return stored;
}

std::string Lora::describe() const {
  std::string targets;
  for (const auto& t : options_.target_modules) targets += (targets.empty() ? "" : ",") + t;
  return fmt::format(
      "rank-{} updates (alpha {}, dropout {}) on {} train with the head; the base is frozen; "
      "dense delta of the factors, mergeable into the weights",
      options_.rank, options_.alpha, options_.dropout, targets);
}

}  // namespace deltatune::methods
