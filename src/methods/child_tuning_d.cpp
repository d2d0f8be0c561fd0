#include "deltatune/methods/child_tuning_d.h"

#include <ATen/ATen.h>
#include <fmt/core.h>

#include <cmath>

#include "deltatune/error.h"

namespace deltatune::methods {

ChildTuningD::ChildTuningD(double reserve_p, std::size_t fisher_batch_size, double fisher_clip_norm)
    : reserve_p_(reserve_p),
      fisher_batch_size_(fisher_batch_size),
      fisher_clip_norm_(fisher_clip_norm) {
  if (!(reserve_p > 0 && reserve_p <= 1))
    throw Error(fmt::format("child-tuning-d: reserve_p must be in (0, 1], not {}", reserve_p));
  if (fisher_batch_size == 0) throw Error("child-tuning-d: fisher_batch_size must be positive");
}

nlohmann::json ChildTuningD::config() const {
  return {{"reserve_p", reserve_p_},
          {"fisher_batch_size", fisher_batch_size_},
          {"fisher_clip_norm", fisher_clip_norm_}};
}

bool ChildTuningD::scored(const std::string& name) {
  return name.find("encoder.layer.") != std::string::npos;
}

void ChildTuningD::attach(model::SequenceClassifierImpl& model) {
  for (auto& p : model.parameters(true)) p.requires_grad_(true);
}

std::optional<int64_t> ChildTuningD::sparse_budget(
    const model::SequenceClassifierImpl& model) const {
  int64_t scored_total = 0;
  for (const auto& item : model.named_parameters(true))
    if (scored(item.key())) scored_total += item.value().numel();
  return std::llround(reserve_p_ * static_cast<double>(scored_total));
}

void ChildTuningD::prepare(model::SequenceClassifierImpl& model, const Preparation& data) {
  std::vector<std::pair<std::string, at::Tensor>> parameters;
  for (const auto& item : model.named_parameters(true))
    if (scored(item.key())) parameters.emplace_back(item.key(), item.value());
  FisherOptions options;
  options.batch_size = fisher_batch_size_;
  options.clip_norm = fisher_clip_norm_;
  options.seed = data.seed;
  options.shards = data.shards;
  auto fisher = diagonal_fisher(parameters, data.num_examples, data.forward, options);
  masks_ = top_k_masks(fisher, *sparse_budget(model));
}

void ChildTuningD::before_step(model::SequenceClassifierImpl& model, int64_t /*step*/) {
  at::NoGradGuard no_grad;
  auto parameters = model.named_parameters(true);
  for (const auto& [name, mask] : masks()) {
    at::Tensor grad = parameters[name].mutable_grad();
    if (grad.defined()) grad.mul_(mask);
  }
}

const std::map<std::string, at::Tensor>& ChildTuningD::masks() const {
  if (masks_.empty()) throw Error("child-tuning-d: masks asked for before prepare() chose them");
  return masks_;
}

std::vector<std::pair<std::string, StorageKind>> ChildTuningD::stored_parameters(
    const model::SequenceClassifierImpl& model) const {
  std::vector<std::pair<std::string, StorageKind>> stored;
  for (const auto& item : model.named_parameters(true))
    stored.emplace_back(item.key(),
                        scored(item.key()) ? StorageKind::kSparse : StorageKind::kDense);
  return stored;
}

std::string ChildTuningD::describe() const {
  return fmt::format(
      "top {:.0f}% of encoder-layer gradient entries by Fisher are kept (fixed mask; weight "
      "decay still applies to all); embeddings, pooler and head train dense",
      100 * reserve_p_);
}

}  // namespace deltatune::methods
