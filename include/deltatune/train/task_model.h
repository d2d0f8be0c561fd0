// A base model loaded once, task models made from it, and the deltas that
// tie a trained task model back to exactly that base.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "deltatune/data/task.h"
#include "deltatune/methods/delta.h"
#include "deltatune/methods/method.h"
#include "deltatune/model/pretrained.h"
#include "deltatune/train/trainer.h"

namespace deltatune::train {

struct BaseModel {
  std::filesystem::path directory;
  std::string name;  // the directory's name, e.g. "all-MiniLM-L6-v2"
  model::EncoderConfig config;
  std::map<std::string, at::Tensor> checkpoint;
  std::string checksum;  // model::weights_checksum of the checkpoint
  // Deltas made on another base are applied with a warning instead of
  // refused (--allow-base-mismatch).
  bool allow_mismatch = false;
  nlohmann::json identity() const;
};

BaseModel load_base(const std::filesystem::path& directory);

// Sets every dropout rate (hidden, attention probabilities, classifier) of the
// task models made from `base` afterwards; the checkpoint is untouched.
void override_dropout(BaseModel& base, double rate);

// A task model with the base's weights and a freshly initialised head: the
// head's weights are the first normals of `seed`'s stream of the default CPU
// generator, as PyTorch's `torch.manual_seed(seed); weight.normal_(0, std)`.
// The model is made on the CPU and then moved to `device`, so that it is the
// same model on every device; a method attached afterwards adds its modules
// there (train::run_method then trains on that device).
model::SequenceClassifier make_task_model(const BaseModel& base, int64_t num_labels, uint64_t seed,
                                          const at::Device& device = at::Device(at::kCPU));

// Copies each tensor of a safetensors file into the task-model parameter of
// the same name (a head, a prompt, LoRA factors: starting values for what
// trains). Every name must be a parameter and every shape must match, else an
// Error naming the file and the tensor; on error nothing has been copied.
// Returns the names of the parameters set.
std::vector<std::string> load_starting_values(model::SequenceClassifierImpl& task_model,
                                              const std::filesystem::path& path);

// Task transfer (Child-Tuning, Table 4): copies into `task_model` the encoder
// of the task model the delta in `delta_dir` describes (made on `base`, its
// method's modules folded in), everything but the head (classifier.*), which
// keeps its fresh initialisation. Every copied tensor must have a parameter of
// the same name and shape, else an Error naming it; on error nothing has been
// copied. Returns the names of the parameters set.
std::vector<std::string> load_encoder_from_delta(const BaseModel& base,
                                                 model::SequenceClassifierImpl& task_model,
                                                 const std::filesystem::path& delta_dir);

// What a finished run stores: the method's parameters (values, not
// differences), the base identity, task and labels, metrics and settings.
methods::Delta build_delta(const BaseModel& base, model::SequenceClassifierImpl& model,
                           const methods::Method& method, const data::TaskSpec& task,
                           size_t max_length, const TrainConfig& config, const TrainResult& result);

// What a finished run leaves in `out`: delta/, peft/ (the same adapter in
// PEFT's format, where the method has one and the delta fits it) and
// summary.json. Returns the summary ({"task", "dev", "delta", "delta_bytes",
// ...}). In a data-parallel job rank 0 alone writes; every rank returns the
// same summary. Messages (why no PEFT adapter) go to stderr.
nlohmann::json save_run_outputs(const BaseModel& base, model::SequenceClassifierImpl& model,
                                const methods::Method& method, const data::TaskSpec& task,
                                size_t max_length, const TrainConfig& config, const MethodRun& run,
                                const std::filesystem::path& out);

// The method a delta was trained with, rebuilt from delta.json.
std::unique_ptr<methods::Method> method_of(const methods::Delta& delta);

// What the recorded base checksum covers (model::weights_checksum): every
// tensor the task model reads, the BERT pooler included.
inline constexpr const char* kChecksumScope = "task-model-reads";

// Refuses a delta made on another base (checksum mismatch), naming both;
// with base.allow_mismatch it warns instead.
void check_base_identity(const BaseModel& base, const methods::Delta& delta);

// The task model a delta describes: refuses a delta made on another base
// (checksum mismatch), adds the method's modules (LoRA's), then applies it.
// With `fold`, those modules are then merged into the ordinary weights (a
// plain HF model, for export).
// The model is moved to `device` once the delta is applied.
model::SequenceClassifier model_from_delta(const BaseModel& base, const methods::Delta& delta,
                                           bool fold = false,
                                           const at::Device& device = at::Device(at::kCPU));

// The task a delta was trained for, from its own record: the recorded label
// names, type and pairness win. It is GLUE's spec only when the record says
// "source": "glue" (an error if the fields then disagree with GLUE's), or, in
// deltas older than that field, when the name and every field match GLUE's.
data::TaskSpec task_of(const methods::Delta& delta);

// Refuses data whose task differs from the one a delta was trained on: other
// label names or order, classification vs regression, single texts vs pairs.
// The Error names `data_source` and both sides.
void check_same_labels(const data::TaskSpec& trained, const data::TaskSpec& evaluated,
                       const std::string& data_source);

}  // namespace deltatune::train
