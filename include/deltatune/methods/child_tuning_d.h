// Child-Tuning_D (Xu et al., EMNLP 2021), the task-driven variant: before
// training, the diagonal Fisher of every encoder-layer parameter over the whole
// training set (gold labels, each batch gradient clipped to the max grad norm,
// F = (1/G) Σ g^2); the top p_D fraction by one global threshold may change,
// fixed for the run. Embeddings, pooler and classifier always train.
// Masked-out entries stay bit-identical (the optimizer skips them, decay
// included), so encoder layers are stored sparse.
#pragma once

#include "deltatune/methods/method.h"

namespace deltatune::methods {

class ChildTuningD : public Method {
 public:
  ChildTuningD(double reserve_p, std::size_t fisher_batch_size, double fisher_clip_norm);
  std::string name() const override { return "child-tuning-d"; }
  nlohmann::json config() const override;
  void attach(model::SequenceClassifierImpl& model) override;
  void prepare(model::SequenceClassifierImpl& model, const Preparation& data) override;
  std::map<std::string, at::Tensor> gradient_masks() const override { return masks_; }
  std::optional<int64_t> sparse_budget(const model::SequenceClassifierImpl& model) const override;
  std::vector<std::pair<std::string, StorageKind>> stored_parameters(
      const model::SequenceClassifierImpl& model) const override;
  std::string describe() const override;

  // Parameters the mask covers: those inside the encoder's layers.
  static bool scored(const std::string& name);

 private:
  double reserve_p_;
  std::size_t fisher_batch_size_;
  double fisher_clip_norm_;
  std::map<std::string, at::Tensor> masks_;
};

}  // namespace deltatune::methods
