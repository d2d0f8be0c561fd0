// Child-Tuning_D (Xu et al., EMNLP 2021), the task-driven variant: before
// training, the diagonal Fisher of every encoder-layer parameter over the whole
// training set (gold labels, each batch gradient clipped to the max grad norm,
// F = (1/G) Σ g^2); the top p_D fraction by one global threshold may change,
// fixed for the run. Embeddings, pooler and classifier always train.
// As the authors' ChildTuningAdamW: the mask multiplies the gradient after
// clipping, right before the optimizer step, and decoupled weight decay still
// applies to every parameter of the decay group, so masked-out weight entries
// shrink by decay alone (biases and LayerNorm weights, which get no decay, stay
// bit-identical outside the mask). Encoder layers are stored sparse where that
// is smaller, which without weight decay it is.
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
  // The masks prepare() chose.
  MethodState state() const override { return masks_state(masks_); }
  void restore_state(const MethodState& state) override { masks_ = masks_of_state(state, name()); }
  // g <- g ⊙ M on the scored tensors (after clipping, before the step).
  void before_step(model::SequenceClassifierImpl& model, int64_t step) override;
  // The fixed masks prepare() chose (true: the gradient is kept).
  const std::map<std::string, at::Tensor>& masks() const;
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
