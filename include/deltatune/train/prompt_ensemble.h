// Prompt ensembling (Lester et al., EMNLP 2021, section 7; METHODS.md "Prompt
// Tuning"): K prompt-tuning deltas of one task on one frozen base run as one
// batch. Each input is repeated K times, copy k carrying prompt k, and read by
// delta k's own head; the K predictions are combined by the mean of their
// class probabilities (regression: of their outputs) or by majority vote, ties
// going to the label with the higher mean probability.
#pragma once

#include <string>
#include <vector>

#include "deltatune/methods/delta.h"
#include "deltatune/model/encoder.h"
#include "deltatune/train/task_model.h"

namespace deltatune::train {

enum class EnsembleCombine { kMeanProbability, kMajorityVote };
EnsembleCombine parse_ensemble_combine(const std::string& name);  // "mean" or "vote"

class PromptEnsemble {
 public:
  // Throws deltatune::Error unless every delta is a prompt-tuning delta of
  // `base` with the same head width, prompt length and placement.
  PromptEnsemble(const BaseModel& base, const std::vector<methods::Delta>& deltas);
  ~PromptEnsemble();

  // Scores [B, labels] whose argmax is the ensemble's label: log mean
  // probabilities (mean), vote counts plus a tie-break below one vote (vote),
  // or the mean output (regression).
  at::Tensor forward(const model::EncoderInput& input, EnsembleCombine combine);
  // Member k alone on `input` (its own delta's logits).
  at::Tensor member_logits(const model::EncoderInput& input, int64_t member);
  int64_t size() const { return static_cast<int64_t>(member_heads_.size()); }
  int64_t num_labels() const { return model_->num_labels(); }

 private:
  class Prompts;
  // Logits [K, B, labels] of every member on `input`.
  at::Tensor all_logits(const model::EncoderInput& input);
  model::SequenceClassifier model_{nullptr};
  std::shared_ptr<Prompts> prompts_;
  std::vector<at::Tensor> head_;                       // the model's classifier tensors
  std::vector<std::vector<at::Tensor>> member_heads_;  // each member's, in head_'s order
};

}  // namespace deltatune::train
