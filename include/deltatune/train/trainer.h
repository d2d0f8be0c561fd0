// The fine-tuning loop: batches in, optimizer steps on what the method lets
// train, periodic evaluation with keep-best by the task's main metric,
// checkpoints that resume exactly, and a live progress bar.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "deltatune/data/batcher.h"
#include "deltatune/data/task.h"
#include "deltatune/methods/method.h"
#include "deltatune/model/device.h"
#include "deltatune/model/encoder.h"
#include "deltatune/train/distributed.h"
#include "deltatune/train/metrics.h"
#include "deltatune/train/run_figures.h"

namespace deltatune::train {

class GradScaler;

struct TrainConfig {
  // Parameters --init-from set: stored in the delta beside the method's own
  // (not part of the run plan).
  std::vector<std::string> initialised_parameters;
  double learning_rate = 1e-3;
  double weight_decay = 0.0;
  double adam_eps = 1e-8;
  int64_t epochs = 3;
  int64_t max_steps = 0;  // optimizer steps; 0: run all epochs
  int64_t batch_size = 8;
  int64_t gradient_accumulation = 1;
  std::string schedule = "constant";
  double warmup_ratio = 0.0;
  double max_grad_norm = 1.0;  // 0: no clipping
  int64_t eval_every = 0;      // optimizer steps; 0: at each epoch end only
  int64_t eval_batch_size = 64;
  int64_t log_every = 50;  // optimizer steps per mean-loss line in metrics.jsonl; 0: none
  int64_t early_stopping_patience = 0;  // evaluations without improvement; 0: off
  int64_t checkpoint_every = 0;         // optimizer steps; 0: no checkpoints
  // A checkpoint of the end state when the run finishes (finished: true):
  // train::run_method sets it for every stage a later one follows, and for
  // the last when checkpoint_every > 0. Not part of the run's plan.
  bool final_checkpoint = false;
  uint64_t seed = 0;
  // Forward passes under bf16 or fp16 autocast (model::Precision); parameters
  // and optimizer state stay fp32. fp16 (CUDA) scales the loss dynamically
  // (train::GradScaler). The device is the model's: a run trains where its
  // model lives (train::make_task_model), and it is not part of the run's
  // plan, so a checkpoint resumes on another device.
  bool bf16 = false;
  bool fp16 = false;
  model::Precision precision() const { return model::parse_precision(bf16, fp16); }
  bool group_by_length = true;
  // false: the run ends with its last parameters and reports its last
  // evaluation (FAR's priming, whose end state is what the split starts from).
  bool keep_best = true;
  bool progress = true;
  std::filesystem::path run_dir;  // metrics.jsonl and checkpoint/ go here; empty: none
  // When this run is a later stage of a longer one (FAR after priming): the
  // optimizer steps the earlier stages took, and the whole run's steps. The
  // learning-rate schedule and the data order continue from there.
  int64_t prior_steps = 0;
  int64_t schedule_steps = 0;  // 0: this run's own steps
  // A data-parallel job (not owned); null: this process alone. batch_size is
  // then the global batch: each step's batch is split into contiguous
  // shards, one per rank, and the ranks' gradients are averaged, so the
  // step equals one process's on the whole batch. Rank 0 writes every file;
  // every rank reads a checkpoint to resume (a directory they all see).
  Collective* collective = nullptr;
  // A job's gradient all-reduce overlapped with backward, in buckets, where
  // the method allows it (every gradient sent whole, none rewritten after
  // backward); false: one all-reduce after backward. Unset: overlapped where
  // the job's collectives run on a GPU (NCCL: the transfers use the GPU's own
  // engines), not on the CPU, where Gloo's thread takes cores from backward
  // (measured 0.90x on 2 cores: docs/SCALING.md). The same sums either way,
  // so it is not part of the run's plan.
  std::optional<bool> overlap_all_reduce;
  nlohmann::json to_json() const;  // with world_size
};

struct Evaluation {
  MetricValues metrics;
  double loss = 0;
  int64_t examples = 0;
  nlohmann::json to_json() const;
};

struct TrainResult {
  Evaluation best;  // the kept model's dev evaluation
  int64_t best_step = 0;
  int64_t steps = 0;                   // optimizer steps taken (in this and earlier resumed runs)
  double seconds = 0;                  // wall time of this run's training loop
  double eval_seconds = 0;             // the part of `seconds` spent evaluating
  double train_tokens_per_second = 0;  // real (non-padding) tokens per second of training
  bool stopped_early = false;
};

// Cross-entropy for classification, MSE for regression (num_labels == 1), as
// HF's *ForSequenceClassification compute them.
at::Tensor task_loss(const at::Tensor& logits, const at::Tensor& labels);

// Logits [N, num_labels] of every example, in dataset order (fp32, on the
// CPU), computed on the model's device. Eval mode and no grad for the call;
// the model's mode is restored after.
at::Tensor predict_logits(model::SequenceClassifierImpl& model, const data::EncodedDataset& dataset,
                          int64_t batch_size, model::Precision precision);

// The same for any batch function (an ensemble): forward(batch on `device`) -> [B, C].
at::Tensor predict_batches(const std::function<at::Tensor(const model::EncoderInput&)>& forward,
                           const data::EncodedDataset& dataset, int64_t batch_size,
                           model::Precision precision, const at::Device& device);

// predict_logits, then the task's metrics and mean loss against the labels.
Evaluation evaluate(model::SequenceClassifierImpl& model, const data::TaskSpec& task,
                    const data::EncodedDataset& dataset, int64_t batch_size,
                    model::Precision precision);

// The same with `bf16` choosing bf16 autocast or fp32.
inline at::Tensor predict_logits(model::SequenceClassifierImpl& model,
                                 const data::EncodedDataset& dataset, int64_t batch_size,
                                 bool bf16) {
  return predict_logits(model, dataset, batch_size, model::parse_precision(bf16, false));
}
inline Evaluation evaluate(model::SequenceClassifierImpl& model, const data::TaskSpec& task,
                           const data::EncodedDataset& dataset, int64_t batch_size, bool bf16) {
  return evaluate(model, task, dataset, batch_size, model::parse_precision(bf16, false));
}
// The task's metrics and mean loss of given logits against the dataset's labels.
Evaluation evaluate_logits(const data::TaskSpec& task, const at::Tensor& logits,
                           const data::EncodedDataset& dataset);

// The optimizer steps fit() takes on `train` under `config` (max_steps, or
// every epoch's batches over gradient accumulation).
int64_t planned_steps(const data::EncodedDataset& train, const TrainConfig& config);

// Refuses, before any work, a maximum length that cannot fit the model's
// position table once the method's added positions are counted (a long batch
// would otherwise fail hours into a run). Error names the numbers and the flags.
void check_sequence_fits(const model::EncoderConfig& config, const methods::Method& method,
                         int64_t max_length);

class Trainer {
 public:
  Trainer(model::SequenceClassifier model, methods::Method& method, data::TaskSpec task,
          TrainConfig config);

  // Trains, evaluating on `dev`; leaves the best evaluated parameters in the model.
  // With `resume` set, continues from <run_dir>/checkpoint exactly where it stopped.
  TrainResult fit(const data::EncodedDataset& train, const data::EncodedDataset& dev,
                  bool resume = false);

  // Another split evaluated beside `dev` each time (MNLI's dev_mismatched);
  // its metrics join the evaluation as "<name>_<metric>". Keep-best and early
  // stopping still follow `dev`'s main metric. `dataset` must outlive fit().
  void add_eval_split(std::string name, const data::EncodedDataset& dataset);

 private:
  void save_checkpoint(class AdamW& optimizer, const GradScaler& scaler, nlohmann::json position,
                       const std::map<std::string, at::Tensor>& best_parameters);
  void append_metrics(const nlohmann::json& record);
  bool writes_files() const;  // rank 0 of a job, or a process alone

  model::SequenceClassifier model_;
  methods::Method& method_;
  data::TaskSpec task_;
  TrainConfig config_;
  std::vector<std::pair<std::string, const data::EncodedDataset*>> extra_eval_;
};

// A whole run of a method: its result and, for a method of several stages,
// one summary record per stage and transition ({"stage", "dev", "steps", ...}).
struct MethodRun {
  TrainResult result;
  nlohmann::json stages = nlohmann::json::array();
};

// The library's one training path: runs every stage of `method`
// (Method::stages) on `model` with `config`, the method's transitions in
// between, then after_training(). Extra evaluation splits are evaluated in
// every stage.
//
// config.run_dir, when set, is claimed first: its run.json records the run's
// plan, and a directory holding another run is refused unless `resume` or
// `overwrite`. With `resume` the run continues from its checkpoints exactly:
// finished stages are replayed from their end state (their transitions are
// deterministic), the stage that was stopped continues from its checkpoint,
// and the method's own choices (Method::state) come back with it.
// A SIGINT/SIGTERM under train::StopOnSignals checkpoints and throws
// train::Interrupted.
MethodRun run_method(
    model::SequenceClassifier model, methods::Method& method, const data::TaskSpec& task,
    const TrainConfig& config, const data::EncodedDataset& train, const data::EncodedDataset& dev,
    const std::vector<std::pair<std::string, const data::EncodedDataset*>>& extra_eval = {},
    bool resume = false, bool overwrite = false);

// Whether a stage of the run in `run_dir` (the run's own directory or a
// stage's below it) holds a checkpoint --resume can continue from. The
// staging directory an interrupted checkpoint write leaves does not count.
bool has_checkpoint(const std::filesystem::path& run_dir);

}  // namespace deltatune::train
