#include "deltatune/methods/fish_mask.h"

#include <ATen/ATen.h>
#include <fmt/core.h>

#include <cmath>

#include "deltatune/error.h"

namespace deltatune::methods {

FishMask::FishMask(double density, std::size_t fisher_samples, bool expected_labels)
    : density_(density), fisher_samples_(fisher_samples), expected_labels_(expected_labels) {
  if (!(density > 0 && density <= 1))
    throw Error(fmt::format("fish: density must be in (0, 1], not {}", density));
  if (fisher_samples == 0) throw Error("fish: fisher_samples must be positive");
}

nlohmann::json FishMask::config() const {
  return {{"density", density_},
          {"fisher_samples", fisher_samples_},
          {"fisher", expected_labels_ ? "expected" : "empirical"}};
}

void FishMask::attach(model::SequenceClassifierImpl& model) {
  for (auto& p : model.parameters(true)) p.requires_grad_(true);
}

std::optional<int64_t> FishMask::sparse_budget(const model::SequenceClassifierImpl& model) const {
  int64_t total = 0, head = 0;
  for (const auto& item : model.named_parameters(true)) {
    total += item.value().numel();
    if (is_classifier_parameter(item.key())) head += item.value().numel();
  }
  const int64_t k = std::llround(density_ * static_cast<double>(total));
  if (k < head)
    throw Error(
        fmt::format("fish: density {} allows {} parameters, fewer than the classifier's {} (which "
                    "always train)",
                    density_, k, head));
  return k - head;
}

void FishMask::prepare(model::SequenceClassifierImpl& model, const Preparation& data) {
  std::vector<std::pair<std::string, at::Tensor>> parameters;
  for (const auto& item : model.named_parameters(true))
    if (!is_classifier_parameter(item.key())) parameters.emplace_back(item.key(), item.value());
  FisherOptions options;
  options.examples = fisher_samples_;
  options.batch_size = 1;
  options.expected_labels = expected_labels_;
  options.seed = data.seed;
  options.shards = data.shards;
  auto fisher = diagonal_fisher(parameters, data.num_examples, data.forward, options);
  masks_ = top_k_masks(fisher, *sparse_budget(model));
}

std::map<std::string, at::Tensor> FishMask::gradient_masks() const {
  if (masks_.empty()) throw Error("fish: gradient masks asked for before prepare() chose them");
  return masks_;
}

void FishMask::on_backward(model::SequenceClassifierImpl& model, int64_t /*step*/) {
  at::NoGradGuard no_grad;
  auto params = model.named_parameters(true);
  for (const auto& [name, mask] : masks_) {
    at::Tensor grad = params[name].mutable_grad();
    if (grad.defined()) grad.mul_(mask);
  }
}

std::vector<std::pair<std::string, StorageKind>> FishMask::stored_parameters(
    const model::SequenceClassifierImpl& model) const {
  return every_parameter_sparse_head_dense(model);
}

std::string FishMask::describe() const {
  return fmt::format(
      "top {:.2f}% of all parameters by {} Fisher ({} samples) train, head included (fixed "
      "mask, sparse delta)",
      100 * density_, expected_labels_ ? "expected" : "empirical", fisher_samples_);
}

}  // namespace deltatune::methods
