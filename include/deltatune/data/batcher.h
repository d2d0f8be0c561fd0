// From examples to model batches: tokenize once, then cut each epoch into
// dynamically padded batches.
//
// Invariant: the batches of epoch e are a pure function of (dataset, options,
// e): nothing depends on earlier epochs, wall time or the standard library, so
// a training position (epoch, batch index) determines everything that follows
// and a resumed run sees the same batches as an uninterrupted one.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "deltatune/data/dataset.h"
#include "deltatune/model/encoder.h"
#include "deltatune/text/tokenizer.h"

namespace deltatune::data {

// A dataset tokenized with one tokenizer and max_length. Parallel vectors, one
// entry per example, in the dataset's order.
struct EncodedDataset {
  TaskType type = TaskType::kClassification;
  std::vector<text::Encoding> encodings;
  std::vector<int64_t> labels;  // classification
  std::vector<float> scores;    // regression
  std::vector<std::size_t> lines;
  int64_t pad_token_id = 0;
  std::size_t max_length = 0;
  std::size_t at_max_length = 0;  // encodings of exactly max_length tokens (likely truncated)

  std::size_t size() const { return encodings.size(); }
};

// Tokenizes every example (pairs as pairs, longest_first truncation).
// `threads` 0: io::available_cpus(). The result does not depend
// on the thread count. Throws the tokenizer's Error prefixed by "FILE:LINE: ".
EncodedDataset encode_dataset(const Dataset& dataset, const text::Tokenizer& tokenizer,
                              std::size_t max_length, unsigned threads = 0);

struct Batch {
  model::EncoderInput input;         // CPU int64 [B, longest in batch]
  at::Tensor labels;                 // CPU [B]: int64 class ids, or float32 targets
  std::vector<std::size_t> indices;  // the examples, as EncodedDataset positions
};

struct BatchOptions {
  std::size_t batch_size = 32;
  // Training: a new order each epoch. Evaluation (false): dataset order, the
  // same every epoch.
  bool shuffle = true;
  // With shuffle: HF's group_by_length (get_length_grouped_indices). The
  // epoch's permutation is cut into mega-batches of
  // max(1, min(mega_batch_factor, size / (4 * batch_size))) batches, each
  // sorted by length (descending, stable) and cut into batches, and then the
  // order of all batches is shuffled: batches hold similar lengths (less
  // padding), yet which examples meet still changes every epoch.
  // Without shuffle: the whole dataset sorted by length, longest first
  // (fastest evaluation; Batch::indices maps predictions back).
  bool group_by_length = false;
  std::size_t mega_batch_factor = 50;
  // Drop a final batch smaller than batch_size (before sharding).
  bool drop_last = false;
  uint64_t seed = 0;
  // Data-parallel sharding: rank r of world_size takes batches r, r + W,
  // r + 2W, ... of the epoch's batch list. Every rank gets the same number of
  // batches, ceil(batches / W): ranks that run short repeat the list's first
  // batches (padding by repetition, as torch's DistributedSampler does with
  // drop_last=false), so every example is seen each epoch. Those repeats are
  // last in a rank's plan and counted in EpochPlan::padding.
  std::size_t world_size = 1;
  std::size_t rank = 0;
};

struct EpochPlan {
  std::vector<std::vector<std::size_t>> batches;  // example positions, per batch
  // The last `padding` batches repeat earlier ones (sharding); evaluation
  // skips them so each example counts once across ranks.
  std::size_t padding = 0;
};

// Holds a reference: `dataset` must outlive the Batcher.
class Batcher {
 public:
  Batcher(const EncodedDataset& dataset, BatchOptions options);

  // This rank's batches of `epoch`, a pure function of (seed, epoch).
  EpochPlan plan(std::size_t epoch) const;
  // Batches per epoch for this rank (plan(e).batches.size() for every e).
  std::size_t batches_per_epoch() const;
  // Pads to the longest example (model::make_batch) and stacks the labels.
  Batch make(const std::vector<std::size_t>& indices) const;

  const BatchOptions& options() const { return options_; }
  const EncodedDataset& dataset() const { return dataset_; }

 private:
  std::vector<std::vector<std::size_t>> global_batches(std::size_t epoch) const;
  std::size_t global_batch_count() const;

  const EncodedDataset& dataset_;
  BatchOptions options_;
};

}  // namespace deltatune::data
