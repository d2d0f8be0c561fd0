#include "deltatune/train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (its home from fmt 11 on, as LibTorch 2.x ships)

#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/io/crash_point.h"
#include "deltatune/io/progress.h"
#include "deltatune/io/safetensors.h"
#include "deltatune/model/linear_kernel.h"
#include "deltatune/train/grad_scaler.h"
#include "deltatune/train/interrupt.h"
#include "deltatune/train/optimizer.h"

namespace deltatune::train {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
// Where a run directory's checkpoint records its position (the tensors sit
// beside it); written last, so it exists only for a whole checkpoint.
fs::path checkpoint_state(const fs::path& run_dir) { return run_dir / "checkpoint" / "state.json"; }
}  // namespace

namespace {

// Everything that trains, by name: the model's trainable parameters and the
// tensors the optimizer steps on outside the model (Diff Pruning's w and
// log-alpha, named "diff::..." and "log_alpha::..."). A kept-best snapshot
// must hold both, or the model would mix the best step's head with the last
// step's reparameterisation.
std::map<std::string, at::Tensor> trained_tensors(model::SequenceClassifierImpl& model,
                                                  const AdamW& optimizer) {
  std::map<std::string, at::Tensor> out;
  for (auto& item : model.named_parameters(true))
    if (item.value().requires_grad()) out.emplace(item.key(), item.value());
  for (const auto& group : optimizer.groups())
    for (size_t i = 0; i < group.names.size(); ++i)
      out.emplace(group.names[i], group.parameters[i]);
  return out;
}

std::map<std::string, at::Tensor> snapshot_trainable(model::SequenceClassifierImpl& model,
                                                     const AdamW& optimizer) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, tensor] : trained_tensors(model, optimizer))
    out[name] = tensor.detach().clone();
  return out;
}

void restore(model::SequenceClassifierImpl& model, const AdamW& optimizer,
             const std::map<std::string, at::Tensor>& values) {
  at::NoGradGuard no_grad;
  auto targets = trained_tensors(model, optimizer);
  for (const auto& [name, value] : values) {
    auto it = targets.find(name);
    if (it == targets.end())
      throw Error("checkpoint holds '" + name + "', which the model and method lack");
    it->second.copy_(value);
  }
}

data::BatchOptions training_batches(const TrainConfig& config) {
  data::BatchOptions options;
  options.batch_size = static_cast<size_t>(config.batch_size);
  options.shuffle = true;
  options.group_by_length = config.group_by_length;
  options.seed = config.seed;
  return options;
}

// Gradient accumulation, as HF Trainer does it: an optimizer step after every
// `gradient_accumulation` batches and after each epoch's last batch, so an
// epoch of B batches takes ceil(B / a) steps. A window's loss is the mean over
// the batches in it: a partial last window divides by its own size.
int64_t steps_per_epoch(int64_t batches_per_epoch, const TrainConfig& config) {
  const int64_t a = config.gradient_accumulation;
  return std::max<int64_t>(1, (batches_per_epoch + a - 1) / a);
}

// Batches in the accumulation window that holds batch `b` of an epoch.
int64_t window_batches(int64_t b, int64_t batches_per_epoch, const TrainConfig& config) {
  const int64_t a = config.gradient_accumulation;
  return std::min(a, batches_per_epoch - (b / a) * a);
}

// 64-bit FNV-1a: `hash` continued over `bytes` more bytes.
constexpr uint64_t kFnvOffset = 1469598103934665603ull;
uint64_t fnv1a(uint64_t hash, const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) hash = (hash ^ p[i]) * 1099511628211ull;
  return hash;
}

// FNV-1a over a dataset's token ids, token types and targets: equal
// datasets give equal fingerprints, so a resume can tell it reads the same data.
json fingerprint(const data::EncodedDataset& dataset) {
  uint64_t hash = kFnvOffset;
  auto mix = [&hash](const void* data, size_t bytes) { hash = fnv1a(hash, data, bytes); };
  for (const auto& e : dataset.encodings) {
    const uint64_t n = e.input_ids.size();
    mix(&n, sizeof n);
    mix(e.input_ids.data(), n * sizeof(int64_t));
    mix(e.token_type_ids.data(), e.token_type_ids.size() * sizeof(int64_t));
  }
  mix(dataset.labels.data(), dataset.labels.size() * sizeof(int64_t));
  mix(dataset.scores.data(), dataset.scores.size() * sizeof(float));
  return {{"examples", dataset.size()}, {"hash", fmt::format("{:016x}", hash)}};
}

// What "the same run" means for --resume: every setting that changes the
// trajectory, the method and its options, and the data (log and checkpoint
// intervals, evaluation batch size and threads may differ).
json run_plan(const TrainConfig& config, const methods::Method& method,
              const data::EncodedDataset& train, const data::EncodedDataset& dev) {
  json settings = config.to_json();
  settings.erase("log_every");
  return {{"config", settings},
          {"method", {{"name", method.name()}, {"config", method.config()}}},
          {"train_data", fingerprint(train)},
          {"dev_data", fingerprint(dev)}};
}

// The differences between a checkpoint's plan and this run's, one phrase each.
// The run's length (epochs, max_steps) may change where the learning rate
// does not depend on it (constant schedule, no warmup): a resume then extends
// or shortens the same trajectory.
std::vector<std::string> plan_differences(const json& saved, const json& current) {
  std::vector<std::string> out;
  const json& saved_config = saved.value("config", json::object());
  const json& now = current.at("config");
  const bool length_free = now.value("schedule", "") == "constant" &&
                           now.value("warmup_ratio", 0.0) == 0.0 &&
                           saved_config.value("schedule", "") == "constant" &&
                           saved_config.value("warmup_ratio", 0.0) == 0.0;
  for (const auto& [key, value] : now.items()) {
    if (length_free && (key == "epochs" || key == "max_steps")) continue;
    // Checkpoints from before data parallelism were of one process, and
    // those from before fp16 were not fp16.
    const json absent = key == "world_size" ? json(1) : key == "fp16" ? json(false) : json();
    if (saved_config.value(key, absent) != value)
      out.push_back(fmt::format("{} {} in the checkpoint, {} now", key,
                                saved_config.value(key, absent).dump(), value.dump()));
  }
  if (saved.value("method", json()) != current.at("method"))
    out.push_back(fmt::format("method {} in the checkpoint, {} now",
                              saved.value("method", json()).dump(), current.at("method").dump()));
  for (const char* data : {"train_data", "dev_data"})
    if (saved.value(data, json()) != current.at(data))
      out.push_back(fmt::format("{} {} in the checkpoint, {} now", data,
                                saved.value(data, json()).dump(), current.at(data).dump()));
  return out;
}

int64_t real_tokens(const data::Batch& batch) {
  return batch.input.attention_mask.sum().item<int64_t>();
}

// The examples of a dataset in rank `rank`'s shard_range (evaluation shards).
data::EncodedDataset dataset_shard(const data::EncodedDataset& dataset, int rank, int world) {
  const auto [begin, end] = shard_range(static_cast<int64_t>(dataset.size()), rank, world);
  data::EncodedDataset out;
  out.type = dataset.type;
  out.pad_token_id = dataset.pad_token_id;
  out.max_length = dataset.max_length;
  auto slice = [&](const auto& v) {
    using V = std::decay_t<decltype(v)>;
    return v.size() == dataset.size() ? V(v.begin() + begin, v.begin() + end) : V();
  };
  out.encodings = slice(dataset.encodings);
  out.labels = slice(dataset.labels);
  out.scores = slice(dataset.scores);
  out.lines = slice(dataset.lines);
  return out;
}

// A rank's contiguous share of one global batch.
std::vector<std::size_t> batch_shard(const std::vector<std::size_t>& batch, int rank, int world) {
  const auto [begin, end] = shard_range(static_cast<int64_t>(batch.size()), rank, world);
  return {batch.begin() + begin, batch.begin() + end};
}

// Draws every rank must agree on (Child-Tuning_F's gradient masks) come, in a
// data-parallel job, from a stream seeded by the run's seed and the global
// step alone, while dropout keeps each rank's own stream (seed + rank). The
// scope swaps the default generator's state in and back out. One process:
// a no-op, everything draws from the one stream as before.
class SharedDraws {
 public:
  SharedDraws(bool active, uint64_t seed, int64_t step) : active_(active) {
    if (!active_) return;
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    own_ = generator.get_state();
    generator.set_current_seed(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step) + 1);
  }
  ~SharedDraws() {
    if (!active_) return;
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(own_);
  }
  SharedDraws(const SharedDraws&) = delete;
  SharedDraws& operator=(const SharedDraws&) = delete;

 private:
  bool active_;
  at::Tensor own_;
};

// What a job's ranks together did in one optimizer step.
struct StepTotals {
  double loss = 0;  // the step's mean loss (summed over its accumulated batches)
  int64_t tokens = 0;
  int signal = 0;  // a stop signal that reached some rank, else 0
};

// What the ranks add up besides the gradients, after them in the step's
// buffer: per parameter whether this rank produced its gradient, this rank's
// loss part, its tokens and whether a stop signal reached it.
at::Tensor step_bookkeeping(const std::vector<at::Tensor>& parameters, double loss, int64_t tokens,
                            int own_signal) {
  const auto n = static_cast<int64_t>(parameters.size());
  at::Tensor bookkeeping = at::empty({n + 3}, at::kFloat);
  float* tail = bookkeeping.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i)
    tail[i] = parameters[static_cast<size_t>(i)].grad().defined() ? 1.0f : 0.0f;
  tail[n] = static_cast<float>(loss);
  tail[n + 1] = static_cast<float>(tokens);
  tail[n + 2] = own_signal != 0 ? 1.0f : 0.0f;
  return bookkeeping;
}

// The ranks' mean gradients written into the parameters' gradients: `sums`
// holds each parameter's sum over the ranks (a view of the all-reduced
// buffer: its support's entries or all of them), `summed` step_bookkeeping
// summed over the ranks. A gradient no rank produced stays undefined, as in
// one process; entries outside a support become 0, as the method's
// on_backward() makes them anyway.
StepTotals apply_means(Collective& job, const std::vector<at::Tensor>& parameters,
                       const std::vector<at::Tensor>& supports, const std::vector<at::Tensor>& sums,
                       const at::Tensor& summed, int own_signal) {
  const auto n = static_cast<int64_t>(parameters.size());
  const float* tail = summed.data_ptr<float>();
  at::NoGradGuard no_grad;
  for (int64_t i = 0; i < n; ++i) {
    if (tail[i] == 0) continue;
    at::Tensor p = parameters[static_cast<size_t>(i)];
    const at::Tensor& support = supports[static_cast<size_t>(i)];
    at::Tensor mean = sums[static_cast<size_t>(i)].mul_(1.0 / job.world_size());  // Gloo has no AVG
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
    if (support.defined())
      p.mutable_grad().zero_().masked_scatter_(support, mean.to(p.device()));
    else
      p.mutable_grad().copy_(mean.view(p.sizes()));  // copy_ crosses devices
  }
  StepTotals totals;
  totals.loss = tail[n];
  totals.tokens = static_cast<int64_t>(std::llround(tail[n + 1]));
  totals.signal = tail[n + 2] > 0 ? (own_signal != 0 ? own_signal : SIGTERM) : 0;
  return totals;
}

// The step's one all-reduce after backward: every trainable gradient in one
// flat fp32 buffer (only the entries in its support where the method names
// one, bool masks aligned with `parameters`, undefined: all), then the
// step's bookkeeping. Gradients become the ranks' mean: SUM, then 1/world.
// `sizes`: the entries sent of each (its support's count, or its numel).
StepTotals average_gradients(Collective& job, const std::vector<at::Tensor>& parameters,
                             const std::vector<at::Tensor>& supports,
                             const std::vector<int64_t>& sizes, double loss, int64_t tokens) {
  const auto n = static_cast<int64_t>(parameters.size());
  int64_t values = 0;
  for (int64_t size : sizes) values += size;
  // On the job's device (the GPU under NCCL): the gradients, then the step's
  // bookkeeping, written on the host and copied in.
  at::Tensor flat = at::empty({values + n + 3}, at::TensorOptions(job.device()).dtype(at::kFloat));
  std::vector<at::Tensor> sums;  // each parameter's slot, summed in place
  int64_t offset = 0;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& p = parameters[static_cast<size_t>(i)];
    const at::Tensor& support = supports[static_cast<size_t>(i)];
    const int64_t size = sizes[static_cast<size_t>(i)];
    at::Tensor slot = flat.narrow(0, offset, size);
    sums.push_back(slot);
    if (!p.grad().defined())
      slot.zero_();
    else if (support.defined())
      slot.copy_(p.grad().masked_select(support));
    else
      slot.copy_(p.grad().reshape({-1}));
    offset += size;
  }
  const int own_signal = stop_requested();
  flat.narrow(0, values, n + 3).copy_(step_bookkeeping(parameters, loss, tokens, own_signal));
  job.all_reduce_sum(flat);
  const at::Tensor summed = flat.narrow(0, values, n + 3).to(at::kCPU).contiguous();
  return apply_means(job, parameters, supports, sums, summed, own_signal);
}

// The step's gradient all-reduce overlapped with backward, as DDP's buckets
// do. The parameters' gradients are cut into buckets of about
// `bucket_bytes`, taken in `order` (the reverse of the model's parameter
// order: roughly the order backward produces them). A hook on each parameter
// copies its gradient (plus what earlier accumulated batches left) into the
// bucket as backward produces it; a bucket starts its all-reduce once all its
// gradients are in and every bucket before it has started, so every rank
// starts the same collectives in the same order whatever its own backward did
// (a rank whose shard was empty starts them all in finish()). For methods
// whose gradients after backward are what the optimizer steps on (all of
// them sent, nothing rewritten in on_backward()), on a step's last batch.
class OverlappedAverage {
 public:
  OverlappedAverage(Collective& job, const std::vector<at::Tensor>& parameters,
                    const std::vector<size_t>& order, int64_t bucket_bytes)
      : state_(std::make_shared<State>()) {
    State& s = *state_;
    s.job = &job;
    s.parameters = parameters;
    const size_t n = parameters.size();
    s.offset.resize(n);
    s.bucket_of.resize(n);
    int64_t values = 0, in_bucket = 0;
    for (size_t i : order) {
      const int64_t size = parameters[i].numel();
      // A parameter that would overfill a bucket starts the next one.
      if (s.bucket_begin.empty() || (in_bucket > 0 && (in_bucket + size) * 4 > bucket_bytes)) {
        s.bucket_begin.push_back(values);
        s.bucket_parameters.push_back(0);
        in_bucket = 0;
      }
      s.offset[i] = values;
      s.bucket_of[i] = s.bucket_begin.size() - 1;
      ++s.bucket_parameters.back();
      values += size;
      in_bucket += size;
    }
    s.bucket_begin.push_back(values);
    s.flat = at::empty({values}, at::TensorOptions(job.device()).dtype(at::kFloat));
    for (size_t i = 0; i < n; ++i) {
      std::weak_ptr<State> weak = state_;
      hooks_.push_back(parameters[i].register_hook([weak, i](const at::Tensor& grad) {
        if (auto state = weak.lock()) state->arrived(i, grad);
      }));
    }
  }

  ~OverlappedAverage() {
    for (size_t i = 0; i < hooks_.size(); ++i) state_->parameters[i].remove_hook(hooks_[i]);
  }
  OverlappedAverage(const OverlappedAverage&) = delete;
  OverlappedAverage& operator=(const OverlappedAverage&) = delete;

  int64_t buckets() const { return static_cast<int64_t>(state_->bucket_begin.size()) - 1; }

  // The next backward is a step's last: its gradients go out as they come.
  void arm() {
    State& s = *state_;
    s.armed = true;
    s.flat.zero_();
    s.produced.assign(s.parameters.size(), 0);
    s.missing = s.bucket_parameters;
    s.started.clear();
  }

  // After that backward (or in place of it, for a rank without a shard): the
  // buckets not started yet start, all are waited for, and the ranks' mean
  // gradients replace the parameters'.
  StepTotals finish(double loss, int64_t tokens) {
    State& s = *state_;
    // A gradient only earlier accumulated batches produced (none came in this
    // backward) goes as it is: its bucket has not started, since it never filled.
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < s.parameters.size(); ++i) {
      const at::Tensor& p = s.parameters[i];
      if (s.produced[i] || !p.grad().defined()) continue;
      if (s.bucket_of[i] < s.started.size())
        throw Error("overlapped all-reduce: a bucket started without all its gradients");
      s.flat.narrow(0, s.offset[i], p.numel()).view(p.sizes()).copy_(p.grad());
      s.produced[i] = 1;
    }
    while (s.started.size() + 1 < s.bucket_begin.size()) s.start_next();
    for (auto& pending : s.started) pending->wait();
    s.armed = false;
    const int own_signal = stop_requested();
    // Whether each gradient was produced is this step's: from the hooks, not
    // from .grad, which an unused parameter may still hold from before.
    at::Tensor summed = step_bookkeeping(s.parameters, loss, tokens, own_signal);
    float* tail = summed.data_ptr<float>();
    for (size_t i = 0; i < s.parameters.size(); ++i) tail[i] = s.produced[i] ? 1.0f : 0.0f;
    s.job->all_reduce_sum(summed);
    // Each parameter's sum where its bucket put it: views, no copy.
    std::vector<at::Tensor> sums;
    for (size_t i = 0; i < s.parameters.size(); ++i)
      sums.push_back(s.flat.narrow(0, s.offset[i], s.parameters[i].numel()));
    return apply_means(*s.job, s.parameters, std::vector<at::Tensor>(s.parameters.size()), sums,
                       summed, own_signal);
  }

 private:
  struct State {
    Collective* job = nullptr;
    std::vector<at::Tensor> parameters;
    at::Tensor flat;                         // the gradients, bucket after bucket
    std::vector<int64_t> offset;             // each parameter's place in `flat`
    std::vector<size_t> bucket_of;           // each parameter's bucket
    std::vector<int64_t> bucket_begin;       // each bucket's first value; then the end
    std::vector<int64_t> bucket_parameters;  // how many parameters each holds
    std::vector<int64_t> missing;            // of those, how many have not arrived
    std::vector<char> produced;
    std::vector<std::unique_ptr<PendingCollective>> started;  // buckets 0.. started, in order
    bool armed = false;

    void arrived(size_t i, const at::Tensor& grad) {
      if (!armed || produced[i]) return;
      at::NoGradGuard no_grad;
      const at::Tensor& p = parameters[i];
      at::Tensor slot = flat.narrow(0, offset[i], p.numel()).view(p.sizes());
      // The gradient .grad will hold once accumulated: earlier batches' part plus this one.
      slot.copy_(p.grad().defined() ? p.grad() + grad : grad);  // copy_ crosses devices
      produced[i] = 1;
      --missing[bucket_of[i]];
      while (started.size() + 1 < bucket_begin.size() && missing[started.size()] == 0) start_next();
    }

    void start_next() {
      const size_t b = started.size();
      started.push_back(job->start_all_reduce_sum(
          flat.narrow(0, bucket_begin[b], bucket_begin[b + 1] - bucket_begin[b])));
    }
  };

  std::shared_ptr<State> state_;
  std::vector<unsigned> hooks_;
};

// DDP's default bucket size.
constexpr int64_t kBucketBytes = 25 << 20;

// 64-bit FNV-1a over the bytes of every trained tensor, in name order.
uint64_t digest(const std::map<std::string, at::Tensor>& tensors) {
  uint64_t hash = kFnvOffset;
  for (const auto& [name, tensor] : tensors) {
    const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    hash = fnv1a(hash, t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size());
  }
  return hash;
}

// Every rank must hold the same trained tensors (they start from rank 0's and
// step on the same averaged gradients); a difference is a bug that would
// otherwise pass silently, since rank 0 alone writes. Compared by digest,
// its two 32-bit halves summed over the ranks (exact in fp64).
void check_ranks_agree(Collective& job, const std::map<std::string, at::Tensor>& tensors,
                       int64_t step) {
  const uint64_t own = digest(tensors);
  const double high = static_cast<double>(own >> 32), low = static_cast<double>(own & 0xffffffffu);
  at::Tensor sums = at::tensor({high, low}, at::kDouble);
  job.all_reduce_sum(sums);
  const double world = job.world_size();
  if (sums[0].item<double>() != world * high || sums[1].item<double>() != world * low)
    throw Error(
        fmt::format("rank {} of {}: the ranks' trained parameters differ after step {} "
                    "(a data-parallel bug; please report it)",
                    job.rank(), job.world_size(), step));
}

// The checkpoint key of a rank's own random stream on a device type ("cpu", "cuda").
std::string rng_key(int rank, const std::string& device_type = "cpu") {
  return "rng." + device_type + (rank == 0 ? std::string() : ".rank" + std::to_string(rank));
}

}  // namespace

json TrainConfig::to_json() const {
  return {{"learning_rate", learning_rate},
          {"weight_decay", weight_decay},
          {"adam_eps", adam_eps},
          {"epochs", epochs},
          {"max_steps", max_steps},
          {"batch_size", batch_size},
          {"gradient_accumulation", gradient_accumulation},
          {"schedule", schedule},
          {"warmup_ratio", warmup_ratio},
          {"max_grad_norm", max_grad_norm},
          {"eval_every", eval_every},
          {"log_every", log_every},
          {"early_stopping_patience", early_stopping_patience},
          {"seed", seed},
          {"bf16", bf16},
          {"fp16", fp16},
          {"group_by_length", group_by_length},
          {"keep_best", keep_best},
          {"prior_steps", prior_steps},
          {"schedule_steps", schedule_steps},
          {"world_size", collective ? collective->world_size() : 1}};
}

json Evaluation::to_json() const {
  json j = metrics.values;
  j["loss"] = loss;
  j["examples"] = examples;
  j["main_metric"] = metrics.main_metric;
  return j;
}

at::Tensor task_loss(const at::Tensor& logits, const at::Tensor& labels) {
  if (logits.size(-1) == 1)
    return at::mse_loss(logits.squeeze(-1).to(at::kFloat), labels.to(at::kFloat));
  return at::cross_entropy_loss(logits.to(at::kFloat), labels);
}

at::Tensor predict_logits(model::SequenceClassifierImpl& model, const data::EncodedDataset& dataset,
                          int64_t batch_size, model::Precision precision) {
  const bool was_training = model.is_training();
  model.eval();
  at::Tensor logits =
      predict_batches([&](const model::EncoderInput& input) { return model.forward(input); },
                      dataset, batch_size, precision, model::device_of(model));
  if (was_training) model.train();
  return logits;
}

at::Tensor predict_batches(const std::function<at::Tensor(const model::EncoderInput&)>& forward,
                           const data::EncodedDataset& dataset, int64_t batch_size,
                           model::Precision precision, const at::Device& device) {
  if (dataset.size() == 0) throw Error("cannot predict on an empty dataset");
  at::NoGradGuard no_grad;
  data::BatchOptions options;
  options.batch_size = static_cast<size_t>(batch_size);
  options.shuffle = false;
  data::Batcher batcher(dataset, options);
  at::Tensor logits;
  for (const auto& indices : batcher.plan(0).batches) {
    data::Batch batch = batcher.make(indices);
    at::Tensor batch_logits;
    {
      model::AutocastScope autocast(device, precision);
      batch_logits = forward(model::to_device(batch.input, device));
    }
    if (!logits.defined())
      logits = at::empty({static_cast<int64_t>(dataset.size()), batch_logits.size(1)}, at::kFloat);
    logits.index_copy_(0,
                       at::tensor(std::vector<int64_t>(indices.begin(), indices.end()), at::kLong),
                       batch_logits.to(at::kCPU, at::kFloat));
  }
  return logits;
}

namespace {

at::Tensor label_tensor(const data::EncodedDataset& dataset) {
  if (dataset.type == data::TaskType::kRegression) return at::tensor(dataset.scores, at::kFloat);
  return at::tensor(dataset.labels, at::kLong);
}

}  // namespace

Evaluation evaluate(model::SequenceClassifierImpl& model, const data::TaskSpec& task,
                    const data::EncodedDataset& dataset, int64_t batch_size,
                    model::Precision precision) {
  return evaluate_logits(task, predict_logits(model, dataset, batch_size, precision), dataset);
}

Evaluation evaluate_logits(const data::TaskSpec& task, const at::Tensor& logits,
                           const data::EncodedDataset& dataset) {
  at::Tensor labels = label_tensor(dataset);
  Evaluation result;
  result.metrics = compute_metrics(task, logits, labels);
  result.loss = task_loss(logits, labels).item<double>();
  result.examples = static_cast<int64_t>(dataset.size());
  return result;
}

void check_sequence_fits(const model::EncoderConfig& config, const methods::Method& method,
                         int64_t max_length) {
  const int64_t added = method.added_positions(), capacity = config.max_sequence_tokens();
  if (max_length + added <= capacity) return;
  throw Error(fmt::format(
      "--max-length {}{} needs {} positions, but the model has {} (max_position_embeddings {}); "
      "lower --max-length to {} or less",
      max_length,
      added > 0 ? fmt::format(" plus {} positions of {}", added, method.name()) : std::string(),
      max_length + added, capacity, config.max_position_embeddings, capacity - added));
}

int64_t planned_steps(const data::EncodedDataset& train, const TrainConfig& config) {
  if (config.max_steps > 0) return config.max_steps;
  data::Batcher batcher(train, training_batches(config));
  return steps_per_epoch(static_cast<int64_t>(batcher.batches_per_epoch()), config) * config.epochs;
}

Trainer::Trainer(model::SequenceClassifier model, methods::Method& method, data::TaskSpec task,
                 TrainConfig config)
    : model_(std::move(model)),
      method_(method),
      task_(std::move(task)),
      config_(std::move(config)) {
  if (config_.batch_size < 1) throw Error("--batch-size must be at least 1");
  if (config_.gradient_accumulation < 1) throw Error("--gradient-accumulation must be at least 1");
  if (config_.epochs < 1 && config_.max_steps < 1) throw Error("--epochs must be at least 1");
}

void Trainer::append_metrics(const json& record) {
  if (config_.run_dir.empty() || !writes_files()) return;
  const fs::path path = config_.run_dir / "metrics.jsonl";
  std::ofstream out(path, std::ios::app);
  out << record.dump() << "\n";
  out.flush();
  if (!out) throw Error("write to " + path.string() + " failed: " + std::strerror(errno));
}

bool Trainer::writes_files() const {
  return config_.collective == nullptr || config_.collective->rank() == 0;
}

void Trainer::save_checkpoint(AdamW& optimizer, const GradScaler& scaler, json position,
                              const std::map<std::string, at::Tensor>& best_parameters) {
  if (config_.run_dir.empty()) return;
  // Every rank's own random streams (dropout), so that a resume continues each.
  std::vector<std::pair<std::string, at::Tensor>> streams;
  for (const auto& [type, generator] : model::default_generators(model::device_of(*model_))) {
    const at::Tensor own = generator.get_state();
    if (Collective* job = config_.collective) {
      const at::Tensor all =
          gather_shards(*job, own.to(at::kFloat).unsqueeze(0), job->world_size());
      for (int r = 0; r < job->world_size(); ++r)
        streams.emplace_back(rng_key(r, type), all[r].to(at::kByte).contiguous());
    } else {
      streams.emplace_back(rng_key(0, type), own);
    }
  }
  if (!writes_files()) return;
  io::NamedTensors tensors;
  for (auto& [name, value] : trained_tensors(*model_, optimizer))
    tensors.emplace_back("model." + name, value);
  for (auto& [name, value] : best_parameters) tensors.emplace_back("best." + name, value);
  for (auto& entry : optimizer.state()) tensors.push_back(entry);
  for (auto& entry : scaler.state()) tensors.push_back(entry);
  for (auto& stream : streams) tensors.push_back(stream);
  methods::MethodState method_state = method_.state();
  for (auto& [name, value] : method_state.tensors) tensors.emplace_back("method." + name, value);
  position["method_state"] = method_state.facts;
  // The log's length at this point: a resume cuts off what came after.
  const fs::path log = config_.run_dir / "metrics.jsonl";
  position["metrics_bytes"] = fs::exists(log) ? static_cast<int64_t>(fs::file_size(log)) : 0;
  // One directory swapped in whole: the checkpoint is the previous one or
  // this one, never tensors of one step with the position of another.
  io::write_directory_atomically(config_.run_dir / "checkpoint", [&](const fs::path& staging) {
    io::save_safetensors(staging / "state.safetensors", tensors);
    io::write_text_atomically(staging / "state.json", position.dump(2) + "\n");
  });
}

void Trainer::add_eval_split(std::string name, const data::EncodedDataset& dataset) {
  extra_eval_.emplace_back(std::move(name), &dataset);
}

TrainResult Trainer::fit(const data::EncodedDataset& train, const data::EncodedDataset& dev,
                         bool resume) {
  if (train.size() == 0) throw Error("the training set is empty");
  auto& model = *model_;
  for (const data::EncodedDataset* dataset : {&train, &dev})
    check_sequence_fits(model.config(), method_, static_cast<int64_t>(dataset->max_length));
  // The run computes where its model lives; batches are moved there.
  const at::Device device = model::device_of(model);
  const model::Precision precision = config_.precision();
  model::check_precision(precision, device);
  GradScaler scaler(precision == model::Precision::kFloat16, device);
  Collective* const job = config_.collective;
  const int rank = job ? job->rank() : 0, world = job ? job->world_size() : 1;
  if (!config_.run_dir.empty() && writes_files()) {
    fs::create_directories(config_.run_dir);
    // A fresh run owns its directory's log and checkpoint: nothing of an
    // earlier run is appended to or resumed from.
    if (!resume) {
      fs::remove(config_.run_dir / "metrics.jsonl");
      fs::remove_all(config_.run_dir / "checkpoint");
    }
  }

  data::Batcher batcher(train, training_batches(config_));
  const int64_t batches_per_epoch = static_cast<int64_t>(batcher.batches_per_epoch());
  const int64_t epoch_steps = steps_per_epoch(batches_per_epoch, config_);
  // planned_steps(), from this batcher.
  const int64_t total_steps =
      config_.max_steps > 0 ? config_.max_steps : epoch_steps * config_.epochs;
  const int64_t run_steps = config_.schedule_steps > 0 ? config_.schedule_steps : total_steps;
  const int64_t epochs = (config_.prior_steps + total_steps + epoch_steps - 1) / epoch_steps;
  const int64_t warmup_steps = static_cast<int64_t>(std::ceil(config_.warmup_ratio * run_steps));
  const Schedule schedule = parse_schedule(config_.schedule);

  // A resume reads its checkpoint first: the method's choices come from it
  // instead of prepare().
  const json plan = run_plan(config_, method_, train, dev);
  json position;
  std::map<std::string, at::Tensor> state;
  if (resume) {
    const fs::path dir = config_.run_dir / "checkpoint";
    if (!fs::exists(checkpoint_state(config_.run_dir)))
      throw Error(config_.run_dir.string() + ": no checkpoint to resume from");
    try {
      position = json::parse(io::read_text_file(dir / "state.json"));
    } catch (const json::exception& e) {
      throw Error((dir / "state.json").string() + ": not valid JSON (" + e.what() +
                  "); start afresh without --resume");
    }
    if (!position.is_object() || !position.contains("plan"))
      throw Error(dir.string() +
                  ": the checkpoint records no run plan (made by an older deltatune); start "
                  "afresh without --resume");
    if (auto differences = plan_differences(position["plan"], plan); !differences.empty())
      throw Error(fmt::format(
          "{}: the checkpoint is of another run ({}); run without --resume to start afresh, or "
          "give another --out",
          dir.string(), fmt::join(differences, "; ")));
    state = io::SafetensorsFile::open(dir / "state.safetensors").load_all();
    // The log as it was at the checkpoint: records written after it are made again.
    const fs::path log = config_.run_dir / "metrics.jsonl";
    if (writes_files() && position.contains("metrics_bytes") && fs::exists(log))
      fs::resize_file(log, position["metrics_bytes"].get<uintmax_t>());
    if (writes_files())
      fmt::print(stderr, "resuming {} from its checkpoint at step {}\n", config_.run_dir.string(),
                 position.value("step", int64_t{0}));
  }

  if (resume && position.contains("method_state")) {
    methods::MethodState saved;
    saved.facts = position["method_state"];
    // The method's tensors (masks) live where the model does.
    for (const auto& [key, value] : state)
      if (key.rfind("method.", 0) == 0) saved.tensors.emplace_back(key.substr(7), value.to(device));
    method_.restore_state(saved);
  } else {
    // Methods that choose what trains from gradients (Fisher) do so here, on the
    // initial model; on resume that is the same model, so the same choice.
    {
      data::BatchOptions one_by_one;
      one_by_one.batch_size = 1;
      one_by_one.shuffle = false;
      one_by_one.group_by_length = false;
      data::Batcher examples(train, one_by_one);
      methods::Preparation preparation;
      preparation.num_examples = train.size();
      preparation.seed = config_.seed;
      methods::FisherShards shards;
      if (job) {
        shards.rank = rank;
        shards.world = world;
        shards.sum_over_ranks = [job](std::vector<at::Tensor>& sums) {
          all_reduce_flat(*job, sums);
        };
        preparation.shards = &shards;
      }
      preparation.forward = [&](const std::vector<std::size_t>& indices) {
        data::Batch batch = examples.make(indices);
        return std::make_pair(model.forward(model::to_device(batch.input, device)),
                              batch.labels.to(device));
      };
      model.eval();
      method_.prepare(model, preparation);
      model.train();
    }
  }

  AdamW optimizer(method_.parameter_groups(model, config_.learning_rate, config_.weight_decay),
                  AdamWOptions{0.9, 0.999, config_.adam_eps});
  for (const auto& [name, mask] : method_.gradient_masks()) optimizer.set_mask(name, mask);
  // Clipping covers what the optimizer steps on (for Diff Pruning: w, log-alpha, head).
  std::vector<at::Tensor> parameters;
  for (const auto& group : optimizer.groups())
    parameters.insert(parameters.end(), group.parameters.begin(), group.parameters.end());
  if (parameters.empty()) throw Error("the method left no parameter to train");
  // What a job all-reduces of each (undefined: all of it).
  std::vector<at::Tensor> supports;
  std::vector<int64_t> support_sizes;
  if (job) {
    const std::map<std::string, at::Tensor> support = method_.gradient_support();
    for (const auto& group : optimizer.groups())
      for (size_t i = 0; i < group.names.size(); ++i) {
        auto found = support.find(group.names[i]);
        supports.push_back(found == support.end() ? at::Tensor() : found->second.to(at::kBool));
        support_sizes.push_back(supports.back().defined() ? supports.back().sum().item<int64_t>()
                                                          : group.parameters[i].numel());
      }
  }
  // Where nothing stands between backward and the average (every gradient
  // sent whole, none rewritten by the method), the all-reduce overlaps backward.
  std::unique_ptr<OverlappedAverage> overlapped;
  if (job && config_.overlap_all_reduce.value_or(job->device().is_cuda()) &&
      !method_.rewrites_gradients_on_backward() &&
      std::none_of(supports.begin(), supports.end(),
                   [](const at::Tensor& t) { return t.defined(); })) {
    std::map<const void*, size_t> position;
    for (const auto& item : model.named_parameters(true))
      position.emplace(item.value().unsafeGetTensorImpl(), position.size());
    std::vector<size_t> order(parameters.size());
    std::iota(order.begin(), order.end(), 0);
    auto place = [&](size_t i) {
      auto found = position.find(parameters[i].unsafeGetTensorImpl());
      return found == position.end() ? position.size() : found->second;
    };
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return place(a) > place(b); });
    overlapped = std::make_unique<OverlappedAverage>(*job, parameters, order, kBucketBytes);
  }

  TrainResult result;
  std::map<std::string, at::Tensor> best_parameters;
  double best_main = -std::numeric_limits<double>::infinity();
  int64_t evals_without_improvement = 0;
  // A later stage starts at the batch after the earlier stages' last step.
  int64_t start_epoch = config_.prior_steps / epoch_steps;
  int64_t start_batch = (config_.prior_steps % epoch_steps) * config_.gradient_accumulation;
  bool finished = false;  // a resumed stage that had ended: nothing left to train
  if (resume) {
    std::map<std::string, at::Tensor> current, best, optimizer_state;
    for (auto& [key, value] : state) {
      if (key.rfind("model.", 0) == 0)
        current[key.substr(6)] = value;
      else if (key.rfind("best.", 0) == 0)
        best[key.substr(5)] = value.clone();
      else if (key.rfind("optimizer.", 0) == 0)
        optimizer_state[key] = value;
    }
    restore(model, optimizer, current);
    optimizer.load_state(optimizer_state);
    scaler.load_state(state);
    if (state.count(rng_key(rank)) == 0)
      throw Error(fmt::format("{}: the checkpoint holds no random stream of rank {}",
                              (config_.run_dir / "checkpoint").string(), rank));
    for (auto& [type, generator] : model::default_generators(device)) {
      if (auto found = state.find(rng_key(rank, type)); found != state.end()) {
        generator.set_state(found->second);
      } else {
        // A checkpoint made on another device: its dropout stream here starts
        // afresh, so the run continues correctly but not bit for bit.
        generator.set_current_seed(config_.seed + static_cast<uint64_t>(rank));
        fmt::print(stderr,
                   "note: the checkpoint was made on another device; dropout on {} draws "
                   "from a fresh stream\n",
                   device.str());
      }
    }
    best_parameters = best;
    start_epoch = position.at("epoch").get<int64_t>();
    start_batch = position.at("batch").get<int64_t>();
    // -inf (no evaluation yet) is written as null.
    if (position.contains("best_main") && position["best_main"].is_number())
      best_main = position["best_main"].get<double>();
    result.best_step = position.value("best_step", int64_t{0});
    evals_without_improvement = position.value("evals_without_improvement", int64_t{0});
    finished = position.value("finished", false);
    if (config_.keep_best && config_.early_stopping_patience > 0 &&
        evals_without_improvement >= config_.early_stopping_patience) {
      result.stopped_early = true;
      finished = true;
    }
    if (finished) {
      result.seconds = position.value("seconds", 0.0);
      result.train_tokens_per_second = position.value("train_tokens_per_s", 0.0);
      result.stopped_early = position.value("stopped_early", false);
    }
    if (position.contains("best")) {
      result.best.metrics.values = position["best"]["metrics"].get<std::map<std::string, double>>();
      result.best.metrics.main_metric = task_.main_metric;
      result.best.metrics.main = best_main;
      result.best.loss = position["best"].value("loss", 0.0);
      result.best.examples = position["best"].value("examples", int64_t{0});
    }
  }

  // A fresh run draws its dropout masks from the start of the seed's stream,
  // whatever the set-up drew before (PyTorch reference: torch.manual_seed(seed)
  // right before its training loop). Resumed runs restored the stream above;
  // a later stage (FAR after priming) continues the earlier one's.
  // In a job each rank's dropout has its own stream, seed + rank.
  if (!resume && config_.prior_steps == 0)
    at::manual_seed(config_.seed + static_cast<uint64_t>(rank));
  // Every rank starts from rank 0's values (also what the masked entries of
  // selective methods keep, bit for bit, through training).
  if (job) {
    std::vector<at::Tensor> trained;
    for (auto& [name, tensor] : trained_tensors(model, optimizer)) trained.push_back(tensor);
    broadcast_flat(*job, trained, 0);
  }
  const data::EncodedDataset dev_shard =
      job ? dataset_shard(dev, rank, world) : data::EncodedDataset();
  std::vector<data::EncodedDataset> extra_shards;
  for (const auto& [name, dataset] : extra_eval_)
    extra_shards.push_back(job ? dataset_shard(*dataset, rank, world) : data::EncodedDataset());

  io::ProgressBar bar("train " + task_.name, total_steps);
  bar.set_enabled(config_.progress && writes_files());
  bar.set(optimizer.steps());
  // A resumed run's clock and counters go on from its checkpoint's: the
  // summary's seconds and tokens/s are the whole run's, not the last part's.
  const double prior_seconds = resume ? position.value("elapsed_s", 0.0) : 0.0;
  const auto start = std::chrono::steady_clock::now() -
                     std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                         std::chrono::duration<double>(prior_seconds));
  int64_t tokens = resume ? position.value("tokens", int64_t{0}) : 0;          // this process's
  int64_t job_tokens = resume ? position.value("job_tokens", int64_t{0}) : 0;  // every rank's
  double step_loss = 0;  // this rank's part of the step's loss, before the all-reduce
  int64_t step_tokens = 0;
  double loss_window = 0;
  int64_t loss_count = 0;
  bool stop = finished;

  double eval_seconds = resume ? position.value("eval_s", 0.0) : 0.0;
  int64_t skipped_steps = 0;  // fp16 steps whose gradients overflowed
  model::reset_peak_memory(device);
  auto run_evaluation = [&](int64_t epoch, int64_t next_batch) {
    const auto eval_start = std::chrono::steady_clock::now();
    method_.before_forward(model, false);
    // A job evaluates in shards, gathered: every rank then holds the same
    // metrics and takes the same keep-best and early-stopping decisions.
    auto evaluate_split = [&](const data::EncodedDataset& whole, const data::EncodedDataset& mine) {
      if (!job) return evaluate(model, task_, whole, config_.eval_batch_size, config_.precision());
      at::Tensor rows = mine.size() > 0 ? predict_logits(model, mine, config_.eval_batch_size,
                                                         config_.precision())
                                        : at::empty({0, task_.num_labels()}, at::kFloat);
      return evaluate_logits(task_, gather_shards(*job, rows, static_cast<int64_t>(whole.size())),
                             whole);
    };
    Evaluation eval = evaluate_split(dev, dev_shard);
    for (size_t i = 0; i < extra_eval_.size(); ++i) {
      const auto& [name, dataset] = extra_eval_[i];
      Evaluation extra = evaluate_split(*dataset, extra_shards[i]);
      for (const auto& [metric, value] : extra.metrics.values)
        eval.metrics.values[name + "_" + metric] = value;
    }
    model::release_stale_weight_copies();
    json record = eval.to_json();
    record["split"] = "dev";
    record["step"] = optimizer.steps();
    record["epoch"] = static_cast<double>(epoch) +
                      static_cast<double>(next_batch) / static_cast<double>(batches_per_epoch);
    record["elapsed_s"] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    append_metrics(record);
    if (!config_.keep_best) {
      best_main = eval.metrics.main;
      result.best = eval;
      result.best_step = optimizer.steps();
    } else if (eval.metrics.main > best_main || best_parameters.empty()) {
      best_main = eval.metrics.main;
      best_parameters = snapshot_trainable(model, optimizer);
      result.best = eval;
      result.best_step = optimizer.steps();
      evals_without_improvement = 0;
    } else {
      ++evals_without_improvement;
    }
    bar.set_suffix(fmt::format("dev {} {:.4f} (best {:.4f})", eval.metrics.main_metric,
                               eval.metrics.main, best_main));
    if (config_.keep_best && config_.early_stopping_patience > 0 &&
        evals_without_improvement >= config_.early_stopping_patience) {
      result.stopped_early = true;
      stop = true;
    }
    eval_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - eval_start).count();
  };

  auto position_json = [&](int64_t epoch, int64_t next_batch) {
    json best = {{"metrics", result.best.metrics.values},
                 {"loss", result.best.loss},
                 {"examples", result.best.examples}};
    return json{{"epoch", epoch},
                {"batch", next_batch},
                {"step", optimizer.steps()},
                {"best_main", best_main},
                {"best_step", result.best_step},
                {"best", best},
                {"evals_without_improvement", evals_without_improvement},
                {"elapsed_s",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()},
                {"eval_s", eval_seconds},
                {"tokens", tokens},
                {"job_tokens", job_tokens},
                {"plan", plan}};
  };

  // A stop requested by a signal: checkpoint where the run stands, then leave.
  int agreed_signal = 0;  // a job's ranks stop at the step the signal reached any of them
  auto stop_if_requested = [&](int64_t epoch, int64_t next_batch) {
    const int signal = job ? agreed_signal : stop_requested();
    if (signal == 0) return;
    bar.finish();
    std::string where = "no run directory, nothing saved";
    if (!config_.run_dir.empty()) {
      save_checkpoint(optimizer, scaler, position_json(epoch, next_batch), best_parameters);
      where = "checkpoint in " + (config_.run_dir / "checkpoint").string() + "; --resume continues";
    }
    throw Interrupted(signal, fmt::format("interrupted by signal {} at step {}: {}", signal,
                                          config_.prior_steps + optimizer.steps(), where));
  };

  model.train();
  optimizer.release_gradients();
  if (!finished && !job) stop_if_requested(start_epoch, start_batch);
  for (int64_t epoch = start_epoch; epoch < epochs && !stop; ++epoch) {
    const data::EpochPlan plan = batcher.plan(static_cast<size_t>(epoch));
    const int64_t first = epoch == start_epoch ? start_batch : 0;
    for (int64_t b = first;
         b < static_cast<int64_t>(plan.batches.size()) && !stop && optimizer.steps() < total_steps;
         ++b) {
      const std::vector<std::size_t>& whole = plan.batches[static_cast<size_t>(b)];
      const std::vector<std::size_t> mine = job ? batch_shard(whole, rank, world) : whole;
      method_.before_forward(model, true);
      at::Tensor loss;
      if (!mine.empty()) {
        data::Batch batch = batcher.make(mine);
        const int64_t batch_tokens = real_tokens(batch);
        tokens += batch_tokens;
        step_tokens += batch_tokens;
        at::Tensor logits;
        {
          model::AutocastScope autocast(device, precision);
          logits = model.forward(model::to_device(batch.input, device));
        }
        loss = task_loss(logits, batch.labels.to(device));
        if (job) {
          // This shard's part of the whole batch's mean: summed over the
          // ranks (after the 1/world of the all-reduce) it is that mean.
          const double share = static_cast<double>(mine.size()) / static_cast<double>(whole.size());
          step_loss += loss.item<double>() * share;
          loss = loss * (share * world);
        }
      }
      if (at::Tensor extra = method_.extra_loss(model); extra.defined()) {
        if (job) step_loss += extra.item<double>() / world;  // the same on every rank
        loss = loss.defined() ? loss + extra : extra;
      }
      if (!job) loss_window += loss.item<double>();
      ++loss_count;
      const int64_t epoch_batches = static_cast<int64_t>(plan.batches.size());
      const bool step_now = (b + 1) % config_.gradient_accumulation == 0 || b + 1 == epoch_batches;
      if (overlapped && step_now) overlapped->arm();
      if (loss.defined())
        scaler.scale(loss / static_cast<double>(window_batches(b, epoch_batches, config_)))
            .backward();
      if (!step_now) continue;

      // The method's own gradient work (FISH's masks, Diff Pruning's fold of
      // its sampled gates into w and log-alpha) is each rank's, on its own
      // shard; then the ranks average what the optimizer steps on.
      {
        SharedDraws shared(job != nullptr, config_.seed, config_.prior_steps + optimizer.steps());
        method_.on_backward(model, optimizer.steps());
      }
      if (job) {
        const StepTotals totals = overlapped
                                      ? overlapped->finish(step_loss, step_tokens)
                                      : average_gradients(*job, parameters, supports, support_sizes,
                                                          step_loss, step_tokens);
        loss_window += totals.loss;
        job_tokens += totals.tokens;
        agreed_signal = totals.signal;
        step_loss = 0;
        step_tokens = 0;
      }
      // fp16: the gradients back to their true scale; a step whose gradients
      // overflowed is skipped (not counted) and the scale backs off, as
      // torch.cuda.amp.GradScaler does. Every rank sees the same reduced
      // gradients, so every rank skips the same steps.
      if (!scaler.unscale(parameters)) {
        optimizer.release_gradients();
        scaler.update();
        ++skipped_steps;
        continue;
      }
      scaler.update();
      if (config_.max_grad_norm > 0) clip_grad_norm(parameters, config_.max_grad_norm);
      {
        SharedDraws shared(job != nullptr, config_.seed, config_.prior_steps + optimizer.steps());
        method_.before_step(model, optimizer.steps());
      }
      optimizer.step(lr_multiplier(schedule, config_.prior_steps + optimizer.steps(), warmup_steps,
                                   run_steps));
      // Freed, not zeroed: the next backward pass allocates them as it goes,
      // so the next forward pass's activations never sit beside a full set
      // of stale gradients (BERT-base fully fine-tuned: 440 MB at the peak),
      // and no evaluation (one follows a step) holds any.
      optimizer.release_gradients();
      if (io::crash_point("step") && !parameters.empty()) {
        // A fault test's rank whose trained state drifts from the others'.
        at::NoGradGuard no_grad;
        parameters.front().add_(1e-3);
      }

      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      bar.set_suffix(fmt::format(
          "epoch {}/{} loss {:.4f} {:.0f} tok/s", epoch + 1, epochs, loss_window / loss_count,
          (job ? job_tokens : tokens) / std::max(elapsed - eval_seconds, 1e-9)));
      bar.set(optimizer.steps());
      if (config_.log_every > 0 && optimizer.steps() % config_.log_every == 0) {
        append_metrics({{"split", "train"},
                        {"step", optimizer.steps()},
                        {"loss", loss_window / loss_count},
                        {"elapsed_s", elapsed}});
        loss_window = 0;
        loss_count = 0;
      }
      if (config_.eval_every > 0 && optimizer.steps() % config_.eval_every == 0)
        run_evaluation(epoch, b + 1);
      if (config_.checkpoint_every > 0 && optimizer.steps() % config_.checkpoint_every == 0)
        save_checkpoint(optimizer, scaler, position_json(epoch, b + 1), best_parameters);
      stop_if_requested(epoch, b + 1);
      if (optimizer.steps() >= total_steps) stop = true;
    }
    // The epoch's evaluation also ends a run resumed from its last step's checkpoint.
    if (config_.eval_every == 0 || optimizer.steps() % config_.eval_every != 0)
      run_evaluation(epoch + 1, 0);
    if (optimizer.steps() >= total_steps) stop = true;
  }
  bar.finish();
  result.steps = optimizer.steps();
  result.eval_seconds = eval_seconds;  // a finished stage's, from its end checkpoint
  if (job) check_ranks_agree(*job, trained_tensors(model, optimizer), optimizer.steps());
  if (!finished) {
    result.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // Training throughput counts the training steps only, not the evaluations.
    result.train_tokens_per_second =
        (job ? job_tokens : tokens) / std::max(result.seconds - eval_seconds, 1e-9);
  }
  if (!best_parameters.empty()) restore(model, optimizer, best_parameters);
  model.eval();
  // The stage's end state, kept best included: a resume of a finished stage
  // starts from it without training (and a later stage replays from it).
  if (!finished && config_.final_checkpoint && !config_.run_dir.empty()) {
    json end = position_json(epochs, 0);
    end["finished"] = true;
    end["seconds"] = result.seconds;
    end["train_tokens_per_s"] = result.train_tokens_per_second;
    end["stopped_early"] = result.stopped_early;
    save_checkpoint(optimizer, scaler, end, {});
  }
  json summary = {{"split", "summary"},
                  {"best_step", result.best_step},
                  {"best", result.best.to_json()},
                  {"steps", result.steps},
                  {"seconds", result.seconds},
                  {"train_tokens_per_s", result.train_tokens_per_second},
                  {"eval_seconds", eval_seconds},
                  {"stopped_early", result.stopped_early},
                  {"device", device.str()},
                  {"precision", model::precision_name(precision)}};
  if (scaler.enabled()) {
    summary["skipped_steps"] = skipped_steps;
    summary["loss_scale"] = scaler.current_scale();
  }
  if (auto memory = model::device_memory(device)) {
    summary["device_peak_allocated_bytes"] = memory->peak_allocated;
    summary["device_peak_reserved_bytes"] = memory->peak_reserved;
  }
  if (job) {
    // This process's collectives over the run (gradients, Fisher, evaluation, broadcasts).
    const CollectiveStats stats = job->stats();
    summary["world_size"] = world;
    summary["all_reduce"] = {{"calls", stats.all_reduce_calls},
                             {"bytes", stats.all_reduce_bytes},
                             {"seconds", stats.all_reduce_seconds}};
    int64_t step_values = static_cast<int64_t>(parameters.size()) + 3;
    for (int64_t size : support_sizes) step_values += size;
    summary["all_reduce_bytes_per_step"] = step_values * 4;
    // Buckets overlapped with backward; 0: one all-reduce after it.
    summary["all_reduce_overlapped_buckets"] = overlapped ? overlapped->buckets() : 0;
  }
  append_metrics(summary);
  return result;
}

RunFigures whole_run_figures(const json& closing_records) {
  RunFigures whole;
  double tokens = 0, training_seconds = 0;
  for (const json& record : closing_records) {
    const double seconds = record.value("seconds", 0.0);
    const double training = std::max(seconds - record.value("eval_seconds", 0.0), 0.0);
    whole.steps += record.value("steps", int64_t{0});
    whole.seconds += seconds;
    tokens += record.value("train_tokens_per_s", 0.0) * training;
    training_seconds += training;
  }
  if (training_seconds > 0) whole.train_tokens_per_second = tokens / training_seconds;
  return whole;
}

namespace {

json stage_record(const std::string& stage, const TrainResult& r) {
  return json{{"stage", stage},
              {"dev", r.best.to_json()},
              {"steps", r.steps},
              {"seconds", r.seconds},
              {"eval_seconds", r.eval_seconds},
              {"train_tokens_per_s", r.train_tokens_per_second}};
}

// The run directories of a method's stages, in order. Readers of a run
// (the report) rely on the layout Method::stages() promises: the last stage
// logs in the run's own directory, the earlier ones in subdirectories whose
// names sort in stage order.
std::vector<fs::path> stage_directories(const std::vector<methods::Stage>& stages,
                                        const fs::path& run_dir) {
  std::vector<fs::path> out;
  for (size_t i = 0; i < stages.size(); ++i) {
    const bool last = i + 1 == stages.size();
    if (last != stages[i].directory.empty() ||
        (i > 0 && !last && stages[i].directory <= stages[i - 1].directory))
      throw Error(
          fmt::format("stage {} ({}): its directory breaks the run layout", i, stages[i].name));
    out.push_back(last ? run_dir : run_dir / stages[i].directory);
  }
  return out;
}

// Claims `run_dir` for this run before any work: refuses one that holds
// another run (unless `overwrite`), then records this run's plan there, which
// also proves the directory writable.
void claim_run_directory(const fs::path& run_dir, const json& plan, bool resume, bool overwrite) {
  const fs::path record = run_dir / "run.json";
  if (!resume && !overwrite && fs::exists(record)) {
    json saved;
    try {
      saved = json::parse(io::read_text_file(record));
    } catch (const json::exception&) {
      throw Error(record.string() + " is not valid JSON; give --overwrite to replace that run");
    }
    if (auto differences = plan_differences(saved, plan); !differences.empty())
      throw Error(fmt::format(
          "{} holds another run ({}); give --resume to continue it, --overwrite to replace it, "
          "or another --out",
          run_dir.string(), differences.front()));
  }
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) throw Error("cannot create the run directory " + run_dir.string() + ": " + ec.message());
  io::write_text_atomically(record, plan.dump(2) + "\n");
}

}  // namespace

bool has_checkpoint(const fs::path& run_dir) {
  if (fs::exists(checkpoint_state(run_dir))) return true;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(run_dir, ec))
    if (entry.is_directory() && fs::exists(checkpoint_state(entry.path()))) return true;
  return false;
}

MethodRun run_method(
    model::SequenceClassifier model, methods::Method& method, const data::TaskSpec& task,
    const TrainConfig& config, const data::EncodedDataset& train, const data::EncodedDataset& dev,
    const std::vector<std::pair<std::string, const data::EncodedDataset*>>& extra_eval, bool resume,
    bool overwrite) {
  auto fit = [&](const TrainConfig& stage_config, bool resume_stage) {
    Trainer trainer(model, method, task, stage_config);
    for (const auto& [name, dataset] : extra_eval) trainer.add_eval_split(name, *dataset);
    return trainer.fit(train, dev, resume_stage);
  };
  const std::vector<methods::Stage> stages = method.stages();
  const std::vector<fs::path> directories = stage_directories(stages, config.run_dir);
  // Rank 0 alone claims and clears the directory; the others only read it (a resume).
  const bool writer = config.collective == nullptr || config.collective->rank() == 0;
  if (!config.run_dir.empty() && writer) {
    claim_run_directory(config.run_dir, run_plan(config, method, train, dev), resume, overwrite);
    // A process killed inside a directory write leaves its staging directory
    // (or, killed just after the exchange, the old one); a stage that already
    // ended never writes its checkpoint again to remove it.
    for (const fs::path& dir : directories) io::remove_abandoned_partials(dir / "checkpoint");
    io::remove_abandoned_partials(config.run_dir / "delta");
    // A fresh run owns every stage's log and checkpoint: a later stage must
    // not resume from a checkpoint an earlier run left.
    if (!resume)
      for (const fs::path& dir : directories) {
        fs::remove_all(dir / "checkpoint");
        fs::remove(dir / "metrics.jsonl");
      }
  }
  const int64_t total = planned_steps(train, config);
  int64_t prior = 0;              // planned steps of the stages run so far
  json pending = json::object();  // a transition's facts for the next stage's record
  MethodRun run;
  for (size_t i = 0; i < stages.size(); ++i) {
    const methods::Stage& stage = stages[i];
    const bool last = i + 1 == stages.size();
    TrainConfig c = config;
    if (stage.learning_rate) c.learning_rate = *stage.learning_rate;
    if (stage.epochs) c.epochs = *stage.epochs;
    c.keep_best = config.keep_best && stage.keep_best;
    if (!config.run_dir.empty()) c.run_dir = directories[i];
    // A later stage replays from this one's end state on resume.
    c.final_checkpoint = !last || config.checkpoint_every > 0;
    if (stage.step_share > 0) {
      const int64_t steps = std::max<int64_t>(1, std::llround(stage.step_share * total));
      if (steps >= total)
        throw Error(fmt::format("{}: {} takes all {} steps; train longer or lower --{}",
                                method.name(), stage.name, total, stage.name));
      c.max_steps = steps;
      c.schedule_steps = total;
    } else if (stage.rest_of_run) {
      c.max_steps = total - prior;
      c.prior_steps = prior;
      c.schedule_steps = total;
    }
    // On resume the first stage must have a checkpoint; a later one without
    // one was not reached before the stop and starts here.
    const bool resume_stage = resume && (i == 0 || fs::exists(checkpoint_state(c.run_dir)));
    run.result = fit(c, resume_stage);
    if (stages.size() == 1) break;
    if (stage.step_share > 0 || stage.rest_of_run) prior += c.max_steps;
    if (last) {
      method.after_training(*model);
      if (stage.evaluate_after_training)
        run.result.best = evaluate(*model, task, dev, config.eval_batch_size, config.precision());
    }
    json record = stage_record(stage.name, run.result);
    record.update(pending);
    pending = json::object();
    run.stages.push_back(record);
    if (last) {
      // The run's figures are the whole run's; its best step counts the
      // earlier stages' steps first, as the report's curves place them.
      const RunFigures whole = whole_run_figures(run.stages);
      run.result.best_step += whole.steps - run.result.steps;
      run.result.steps = whole.steps;
      run.result.seconds = whole.seconds;
      run.result.train_tokens_per_second = whole.train_tokens_per_second;
      return run;
    }
    const methods::StageTransition transition = method.between_stages(i, *model);
    Evaluation now;
    if (transition.evaluate)
      now = evaluate(*model, task, dev, config.eval_batch_size, config.precision());
    if (transition.record.empty()) {
      pending = transition.facts;
    } else {
      json own = {{"stage", transition.record}};
      own.update(transition.facts);
      if (transition.evaluate) own["dev"] = now.to_json();
      run.stages.push_back(own);
    }
    const std::string evaluated =
        transition.evaluate ? fmt::format(": {:.4f}", now.metrics.main) : std::string();
    fmt::print(stderr, "{}: {} dev {} {:.4f} after {} steps; {}{}\n", method.name(), stage.name,
               run.result.best.metrics.main_metric, run.result.best.metrics.main, run.result.steps,
               transition.message, evaluated);
  }
  method.after_training(*model);  // a single stage
  return run;
}

}  // namespace deltatune::train
