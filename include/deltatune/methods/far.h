// FAR, Freeze And Reconfigure (Vucetic et al., 2022; docs/METHODS.md "FAR").
//
// A node j of a layer's FFN is row j of W1 (intermediate.dense.weight), entry
// j of b1 (intermediate.dense.bias) and column j of W2 (output.dense.weight).
//   1. Priming: W1, b1, W2, b2 of every FFN, every other bias, every
//      LayerNorm and the head train for the first `priming_fraction` of the
//      run's steps (attention and embedding matrices stay frozen throughout).
//   2. reconfigure(): each node's learning metric is the L1 norm of its change
//      since the start, m_j = |W1[j,:] - W1_0[j,:]|_1 + |b1[j] - b1_0[j]|
//      + |W2[:,j] - W2_0[:,j]|_1; per layer the top round(r I) nodes are
//      learned, the others go back to their initial values and freeze. The FFN
//      becomes two parallel sub-layers with contiguous weights,
//        y = W2_L act(W1_L x + b1_L) + W2_F act(W1_F x + b1_F) + b2,
//      equal to the unsplit layer up to summation order. The frozen sub-layer
//      is a view of W1's and W2's own storage, laid out learned-first: it
//      takes no extra memory, computes no weight gradient and holds no
//      optimizer state.
//   3. The learned nodes, every bias (b2 included), every LayerNorm and the
//      head train for the remaining steps; restore_layout() writes the nodes
//      back into the ordinary W1, b1, W2.
// The delta holds the learned nodes (sparse), the biases, LayerNorms and head.
#pragma once

#include <vector>

#include "deltatune/methods/method.h"

namespace deltatune::methods {

struct FarOptions {
  double priming_fraction = 0.1;  // p: share of the run's steps spent priming
  double learned_fraction = 0.1;  // r: share of each FFN's nodes that keep training
};

class Far : public Method {
 public:
  explicit Far(FarOptions options = {});
  std::string name() const override { return "far"; }
  nlohmann::json config() const override;
  const FarOptions& options() const { return options_; }

  // Priming set-up: FFN weights, biases, LayerNorms and the head train, the rest is frozen.
  void attach(model::SequenceClassifierImpl& model) override;
  void on_backward(model::SequenceClassifierImpl& /*model*/, int64_t /*step*/) override {
    if (!reconfigured_) ++priming_steps_;
  }
  // The priming's step count, whether split, and the learned nodes.
  MethodState state() const override;
  void restore_state(const MethodState& state) override;
  std::optional<int64_t> sparse_budget(const model::SequenceClassifierImpl& model) const override;
  std::optional<int64_t> settled_trainable(
      const model::SequenceClassifierImpl& model) const override;
  std::vector<std::pair<std::string, StorageKind>> stored_parameters(
      const model::SequenceClassifierImpl& model) const override;
  std::string describe() const override;

  // Priming (its share of the steps, ending on its last state) in
  // <run>/priming, then the learned nodes for the rest of the run.
  std::vector<Stage> stages() const override;
  // After priming: reconfigure().
  StageTransition between_stages(size_t finished, model::SequenceClassifierImpl& model) override;
  // After the last stage: restore_layout(), so the delta holds the ordinary layout.
  void after_training(model::SequenceClassifierImpl& model) override;

  // Learned nodes per layer (round(r I), at least 1).
  int64_t learned_per_layer(const model::SequenceClassifierImpl& model) const;

  // Stage 2: chooses the learned nodes from the priming's changes and splits
  // every FFN. Returns the number of learned nodes over all layers.
  int64_t reconfigure(model::SequenceClassifierImpl& model);
  // Stage 3's end: the split FFNs go back to W1, b1, W2 in the original order.
  void restore_layout(model::SequenceClassifierImpl& model);
  bool reconfigured() const { return reconfigured_; }
  // Layer l's learned node indices, ascending (after reconfigure()).
  const std::vector<at::Tensor>& learned_nodes() const { return learned_nodes_; }

 private:
  FarOptions options_;
  std::vector<at::Tensor> initial_;  // per layer: W1_0, b1_0, W2_0 (priming only)
  std::vector<at::Tensor> learned_nodes_, frozen_nodes_;
  bool reconfigured_ = false;
  int64_t priming_steps_ = 0;  // optimizer steps before reconfigure()
};

}  // namespace deltatune::methods
