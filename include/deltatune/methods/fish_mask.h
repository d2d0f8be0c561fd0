// FISH Mask (Sung et al., NeurIPS 2021): the empirical Fisher from per-sample
// gradients on N training examples (or the expected-label "true" Fisher); the
// k = density * |θ| entries with the largest scores over the whole model train,
// fixed for the run, with the classifier always in and counted inside k.
// Everything else stays bit-identical; the delta is the sparse entries + head.
#pragma once

#include "deltatune/methods/method.h"

namespace deltatune::methods {

class FishMask : public Method {
 public:
  FishMask(double density, std::size_t fisher_samples, bool expected_labels);
  std::string name() const override { return "fish"; }
  nlohmann::json config() const override;
  void attach(model::SequenceClassifierImpl& model) override;
  void prepare(model::SequenceClassifierImpl& model, const Preparation& data) override;
  // The masks prepare() chose.
  MethodState state() const override { return masks_state(masks_); }
  void restore_state(const MethodState& state) override { masks_ = masks_of_state(state, name()); }
  std::map<std::string, at::Tensor> gradient_masks() const override;
  // The masks: on_backward() zeroes everything else.
  std::map<std::string, at::Tensor> gradient_support() const override { return gradient_masks(); }
  // Zeroes masked-out gradient entries right after backward, before clipping,
  // as the authors' SparseUpdateTrainer.training_step does (so the clipping
  // norm is the masked gradient's).
  void on_backward(model::SequenceClassifierImpl& model, int64_t step) override;
  bool rewrites_gradients_on_backward() const override { return true; }
  std::optional<int64_t> sparse_budget(const model::SequenceClassifierImpl& model) const override;
  std::vector<std::pair<std::string, StorageKind>> stored_parameters(
      const model::SequenceClassifierImpl& model) const override;
  std::string describe() const override;

 private:
  double density_;
  std::size_t fisher_samples_;
  bool expected_labels_;
  std::map<std::string, at::Tensor> masks_;
};

}  // namespace deltatune::methods
