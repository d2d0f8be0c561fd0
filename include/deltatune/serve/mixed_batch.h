// One forward pass over rows of many tasks, each with its own delta, on one
// shared base model.
//
// Every Dense product x W^T of the base runs once for the whole batch; each
// row then gets its own task's part (docs/SERVING.md):
//   - replaced vectors (BitFit's biases, LayerNorm weights): a per-row table,
//     gathered by row and broadcast over tokens;
//   - low-rank deltas (LoRA): the rows' factors gathered into one batched
//     product, bmm(bmm(x, A^T), B^T) * scaling, ranks zero-padded to the
//     batch's largest;
//   - bottleneck adapters (Houlsby): the rows' down/up weights gathered into
//     batched products the same way;
//   - sparse weight changes (FISH, Diff Pruning, Child-Tuning, FAR): a per-row
//     correction (W_t - W) x, a sparse-dense product per task;
//   - weights replaced whole (full fine-tuning): the task's rows recomputed
//     with its weights;
//   - prompts: each task's inserter on its rows, sequences right-padded to
//     the longest; prefixes: per-row prefix keys and values, padded and
//     masked to the longest prefix;
//   - heads: per task, so label counts and regression mix in one batch.
// A hook that offers no batched form runs on its task's rows alone.
//
// Invariant: each row's logits equal those of its task model run on that row
// alone (train::model_from_delta), up to floating-point summation order.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "deltatune/model/device.h"
#include "deltatune/serve/served_task.h"
#include "deltatune/text/tokenizer.h"

namespace deltatune::serve {

// How rows of a task with sparse weight changes get them: a sparse-dense
// correction (W_t - W) x added to the shared product, or the task's rows
// recomputed over a merged copy W + (W_t - W) made for the batch (kept for
// measurement: bench/serve_compute.cpp, docs/BENCHMARKS.md).
enum class SparseWeights { kCorrection, kMerged };

struct MixedOptions {
  SparseWeights sparse_weights = SparseWeights::kCorrection;
  // bf16: the pass under bf16 autocast (products in bf16 on frozen weights
  // cast once, LayerNorm and softmax in fp32; logits returned in fp32).
  // Faster where the CPU's bf16 products are (2x on the AMD EPYC measured in
  // docs/BENCHMARKS.md; slower on the Intel VM there); scores then differ
  // from fp32 in the second or third digit.
  model::Precision precision = model::Precision::kFloat32;
};

struct MixedRow {
  const ServedTask* task = nullptr;
  const text::Encoding* encoding = nullptr;
};

// Logits per row ([num_labels] of its task), in row order. `base` is the
// shared model in eval mode with no hooks; call under no-grad.
std::vector<at::Tensor> mixed_forward(model::SequenceClassifierImpl& base,
                                      const std::vector<MixedRow>& rows, int64_t pad_token_id,
                                      const MixedOptions& options = {});

}  // namespace deltatune::serve
