// Diff Pruning (Guo et al., ACL 2021). Every non-head parameter is
// reparameterised as θ = θ_0 + z ⊙ w with θ_0 frozen, w a dense trainable diff
// (init 0) and z a hard-concrete relaxed mask with trainable log-alpha α:
//   u ~ U(0,1), s = σ(log u - log(1-u) + α), z = min(1, max(0, s (r - l) + l)),
// deterministic at evaluation: z = min(1, max(0, σ(α) (r - l) + l)); the
// expected-L0 penalty λ Σ σ(α - log(-l/r)) joins the loss (docs/METHODS.md).
//
// Three stages, one method object:
//   1. relaxed: w and α train (their gradients come from θ's by the chain rule,
//      dL/dw = g ⊙ z, dL/dα = g ⊙ w ⊙ dz/dα, plus the penalty's);
//      Stage 1 keeps its best evaluation as every run does: the trainer's
//      snapshot holds w and α with the head (they are optimizer tensors, not
//      model parameters), so the projection starts from one evaluated state.
//   2. project(): keep the `density` share of entries of δ = z ⊙ w with the
//      largest |δ| (one global top-k), θ = θ_0 + that sparse δ;
//   3. fixed mask: θ trains on those entries only (masked AdamW), so exactly
//      k entries differ from the base at the end; the delta is sparse + head.
#pragma once

#include "deltatune/methods/method.h"

namespace deltatune::methods {

struct DiffPruningOptions {
  double density = 0.005;       // share of non-head parameters kept by the projection
  double l0_penalty = 1.25e-7;  // λ
  double alpha_init = 5.0;
  double left = -1.5, right = 1.5;       // the stretch interval (l, r)
  double finetune_learning_rate = 5e-5;  // stage 3, the fixed-mask fine-tuning
  int64_t finetune_epochs = 3;
};

class DiffPruning : public Method {
 public:
  explicit DiffPruning(DiffPruningOptions options = {});
  std::string name() const override { return "diff-pruning"; }
  nlohmann::json config() const override;
  void attach(model::SequenceClassifierImpl& model) override;
  std::vector<ParameterGroup> parameter_groups(model::SequenceClassifierImpl& model,
                                               double learning_rate,
                                               double weight_decay) const override;
  void before_forward(model::SequenceClassifierImpl& model, bool training) override;
  void on_backward(model::SequenceClassifierImpl& model, int64_t step) override;
  bool rewrites_gradients_on_backward() const override { return true; }
  // Stage 1's step count, whether projected, and the projected mask.
  MethodState state() const override;
  void restore_state(const MethodState& state) override;
  std::map<std::string, at::Tensor> gradient_masks() const override { return masks_; }
  std::optional<int64_t> sparse_budget(const model::SequenceClassifierImpl& model) const override;
  // w and log-alpha for every non-head entry, plus the head: ~200% (stage 1).
  std::optional<int64_t> settled_trainable(
      const model::SequenceClassifierImpl& model) const override;
  std::vector<std::pair<std::string, StorageKind>> stored_parameters(
      const model::SequenceClassifierImpl& model) const override;
  std::string describe() const override;
  // Stage 1 in <run>/stage1, then the fixed-mask stage at its own lr and epochs.
  std::vector<Stage> stages() const override;
  // After stage 1: project().
  StageTransition between_stages(size_t finished, model::SequenceClassifierImpl& model) override;

  // Stage 2: projects onto the L0 ball and switches to fixed-mask training.
  // Returns the number of entries kept (sparse_budget).
  int64_t project(model::SequenceClassifierImpl& model);
  bool projected() const { return projected_; }

 private:
  struct Diff {
    at::Tensor parameter, base, w, log_alpha, z, dz;  // z, dz: of the last sampled mask
  };
  void fold_gradient(Diff& d) const;

  DiffPruningOptions options_;
  std::map<std::string, Diff> diffs_;
  std::map<std::string, at::Tensor> masks_;
  bool projected_ = false;
  int64_t relaxed_steps_ = 0;  // optimizer steps of stage 1 so far
};

}  // namespace deltatune::methods
