// Shared machinery of the Fisher-selected methods (Child-Tuning_D, FISH Mask):
// the diagonal of the Fisher information, estimated from squared gradients,
// and global top-k masks over many tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace deltatune::methods {

// One forward pass over chosen training examples (indices into the training
// set): logits [n, labels] (or [n, 1] for regression) and the gold labels
// (class ids, or float scores).
using ExampleForward =
    std::function<std::pair<at::Tensor, at::Tensor>(const std::vector<std::size_t>&)>;

// A data-parallel job's share of the Fisher pass: rank r takes gradients
// r, r + world, ... and the ranks' sums are added (every rank ends with the
// whole estimate).
struct FisherShards {
  int rank = 0;
  int world = 1;
  std::function<void(std::vector<at::Tensor>&)> sum_over_ranks;  // in place, elementwise
};

struct FisherOptions {
  std::size_t examples = 0;    // how many training examples (0: all)
  std::size_t batch_size = 1;  // examples per squared gradient (1: per-sample, as FISH)
  // Labels drawn from the model instead of gold (the "true" Fisher): each
  // class's squared gradient of log p(c|x) weighted by p(c|x).
  bool expected_labels = false;
  double clip_norm = 0;  // each tensor's gradient clipped to this L2 norm first (CT_D); 0: off
  uint64_t seed = 0;     // which examples, when fewer than all
  const FisherShards* shards = nullptr;  // null: this process takes every gradient
};

// F_i = (1/G) Σ_g (∂ log p(y | x) / ∂θ_i)^2 over G gradients of `batch_size`
// examples each (docs/METHODS.md, Child-Tuning_D and FISH): the log-likelihood is
// cross-entropy for classification and the squared error for regression.
// Returns one tensor per parameter, shaped like it. Grad mode is used on the
// given tensors only; their .grad() is left undefined.
std::map<std::string, at::Tensor> diagonal_fisher(
    const std::vector<std::pair<std::string, at::Tensor>>& parameters, std::size_t num_examples,
    const ExampleForward& forward, const FisherOptions& options);

// 0/1 masks (bool, shaped like each score) selecting exactly k entries with the
// largest scores over all tensors together (one global threshold; ties go to
// the lower flat index, tensors taken in name order): the first k of a stable
// descending sort, found without one (no concatenated copy, no int64 order;
// transient memory is one comparison of the largest tensor). Throws if k
// exceeds the number of entries or a score is NaN.
std::map<std::string, at::Tensor> top_k_masks(const std::map<std::string, at::Tensor>& scores,
                                              int64_t k);

// Entries a set of masks lets change.
int64_t count_selected(const std::map<std::string, at::Tensor>& masks);

}  // namespace deltatune::methods
