// Prompt ensembling (Lester et al., EMNLP 2021, section 7; docs/METHODS.md "Prompt
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
  // Logits [K, B, labels] of every member on `input`, from one encoder pass
  // over the K prompted copies of the batch.
  at::Tensor all_logits(const model::EncoderInput& input);
  // forward()'s scores from all_logits()'s [K, N, labels].
  at::Tensor combine(const at::Tensor& member_logits, EnsembleCombine how) const;
  int64_t size() const { return static_cast<int64_t>(member_heads_.size()); }
  int64_t num_labels() const { return model_->num_labels(); }
  // Moves the shared model, the prompts and every member's head to `device`.
  void to(const at::Device& device);
  at::Device device() const;
  // Rows the encoder has run so far (K per input row and pass).
  int64_t encoded_rows() const { return encoded_rows_; }

 private:
  class Prompts;
  int64_t encoded_rows_ = 0;
  model::SequenceClassifier model_{nullptr};
  std::shared_ptr<Prompts> prompts_;
  std::vector<at::Tensor> head_;                       // the model's classifier tensors
  std::vector<std::vector<at::Tensor>> member_heads_;  // each member's, in head_'s order
};

// The ensemble's evaluation and each member's alone, from one encoder pass
// per batch (K copies), not one per member and combination.
struct EnsembleEvaluation {
  Evaluation combined;  // no meaningful loss for a vote
  std::vector<Evaluation> members;
};
EnsembleEvaluation evaluate_ensemble(PromptEnsemble& ensemble, const data::TaskSpec& task,
                                     const data::EncodedDataset& dataset, int64_t batch_size,
                                     bool bf16, EnsembleCombine how);

}  // namespace deltatune::train
