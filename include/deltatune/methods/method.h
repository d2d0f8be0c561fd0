// What every fine-tuning method is to the trainer: which parameters train
// (and at what learning rate), what it adds to the model, what it does to
// gradients and the loss, and what a task must store.
//
// Call order (docs/METHODS.md). One method object serves one task model:
//
//   training (train::Trainer::fit, once per stage)
//     1. attach(model)                 once, on a fresh task model
//     2. prepare(model, data)          once per fit, before the optimizer exists
//     3. parameter_groups(...), gradient_masks()   the optimizer is built
//     4. per batch:  before_forward(model, true) -> forward -> extra_loss(model)
//                    -> backward
//        per step:   on_backward(model, step) -> clipping -> before_step(model, step)
//                    -> optimizer step
//        per evaluation: before_forward(model, false) -> forward
//     5. between stages (stages()): between_stages(i, model), which is
//        DiffPruning::project after stage 1 and Far::reconfigure after priming
//      on resume: restore_state(saved) replaces prepare(); state() is saved
//      with every checkpoint
//   after training (train::run_method runs 2-6 for every stage)
//     6. after_training(model)         once, before the delta is built (FAR
//                                      restores its ordinary layout here)
//     7. stored_parameters(model)      what the delta holds
//   applying a delta (train::model_from_delta, export)
//     attach_modules(model) -> apply the delta -> fold_into_weights(model) (export only)
//
// Methods refuse the calls whose wrong order would corrupt results silently:
// a second attach(), a projection or split before any training step, a second
// projection or split, a layout restore without a split, gradient masks asked
// for before prepare() chose them.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "deltatune/methods/fisher.h"
#include "deltatune/model/encoder.h"

namespace deltatune::methods {

// The task's classifier (HF's "classifier.*"), which every method trains and
// stores; PEFT's modules_to_save for sequence classification.
inline bool is_classifier_parameter(const std::string& name) {
  return name.rfind("classifier.", 0) == 0;
}

// Parameters that share optimizer settings. Names are the model's HF keys.
struct ParameterGroup {
  std::string label;  // "biases", "head", ...
  std::vector<std::string> names;
  std::vector<at::Tensor> parameters;
  double learning_rate = 0;
  double weight_decay = 0;
};

// The training set as a method sees it before training starts (for methods
// that choose what to train from gradients: Child-Tuning_D, FISH Mask).
struct Preparation {
  std::size_t num_examples = 0;
  ExampleForward forward;  // the model in eval mode (no dropout), grad enabled
  uint64_t seed = 0;
  // In a data-parallel job, how the ranks share a pass over the examples
  // (each takes its part; the sums are added); null: one process.
  const FisherShards* shards = nullptr;
};

// How a stored tensor is kept in a delta.
enum class StorageKind {
  kDense,   // the whole tensor
  kSparse,  // only the entries that differ from the base (indices + values)
};

// One stage of a method's run (docs/METHODS.md). Most methods have one; Diff
// Pruning (relaxed, fixed mask) and FAR (priming, learned nodes) have two,
// and train::run_method runs them in order on one model.
struct Stage {
  explicit Stage(std::string stage_name, std::string stage_directory = {})
      : name(std::move(stage_name)), directory(std::move(stage_directory)) {}
  std::string name;
  std::string directory;  // its log and checkpoint, under the run's; empty: the run's own
  // > 0: this share of the run's planned steps, at least one and not all
  // (FAR's priming; its flag is named like the stage).
  double step_share = 0;
  // The steps the earlier stages left, continuing their schedule and data order.
  bool rest_of_run = false;
  bool keep_best = true;  // false: the stage ends on its last state
  std::optional<double> learning_rate;
  std::optional<int64_t> epochs;
  // The stage's metric is taken again after after_training() (FAR restores
  // the ordinary layout there).
  bool evaluate_after_training = false;
};

// What a method did between two stages, for the run's log and summary.
struct StageTransition {
  std::string
      record;  // a summary record of its own ("projected"); empty: the facts join the next stage's
  nlohmann::json facts = nlohmann::json::object();
  bool evaluate = false;  // that record holds a dev evaluation of the model as it is now
  std::string message;    // one line for the log
};

// What a method chose or counted during a run that a checkpoint must hold
// for a resume to continue exactly: Fisher masks, Diff Pruning's steps and
// projected mask, FAR's priming steps and node split. Facts as JSON, tensors by name.
struct MethodState {
  nlohmann::json facts = nlohmann::json::object();
  std::vector<std::pair<std::string, at::Tensor>> tensors;
};

class Method {
 public:
  virtual ~Method() = default;
  virtual std::string name() const = 0;
  // The method's configuration as stored in delta.json; from_config(name, config)
  // rebuilds an equal method.
  virtual nlohmann::json config() const = 0;

  // Freezes and unfreezes parameters (requires_grad) and adds any modules
  // through the model's hook points. Called once, on a freshly loaded model.
  virtual void attach(model::SequenceClassifierImpl& model) = 0;

  // The modules a stored delta of this method needs beyond the base model's
  // parameters (LoRA's factors), without touching requires_grad: added to a
  // fresh model before a delta is applied. attach() includes it.
  virtual void attach_modules(model::SequenceClassifierImpl& /*model*/) {}
  // Folds those modules into the ordinary weights and removes them, leaving a
  // plain model computing the same function (export to a HF directory).
  virtual void fold_into_weights(model::SequenceClassifierImpl& /*model*/) {}
  // False when the method's modules cannot become ordinary weights (prompts,
  // prefixes and adapters change the computation, not just its weights):
  // export to a plain HF model is then refused.
  virtual bool folds_into_weights() const { return true; }
  // The stages of a run, in order (one by default). The last logs in the
  // run's own directory (an empty Stage::directory), each earlier one in a
  // subdirectory whose name sorts after the stage before's: readers of a run
  // order its logs so (train::run_method refuses another layout).
  virtual std::vector<Stage> stages() const { return {Stage("train")}; }
  // After stage `finished` (0-based) and before the next: Diff Pruning
  // projects, FAR splits its FFNs.
  virtual StageTransition between_stages(size_t /*finished*/,
                                         model::SequenceClassifierImpl& /*model*/) {
    return {};
  }

  // Once after training, before the delta is built: a method that trained a
  // reparameterisation replaces it by what it computes (Prefix Tuning's MLP
  // by the prefixes), so that the delta holds only the latter.
  virtual void after_training(model::SequenceClassifierImpl& /*model*/) {}

  // Optimizer groups over the parameters attach() left trainable.
  virtual std::vector<ParameterGroup> parameter_groups(model::SequenceClassifierImpl& model,
                                                       double learning_rate,
                                                       double weight_decay) const;

  // Once before training, after attach(), on the initial model: chooses what
  // trains (Fisher scores and the like). The default does nothing.
  virtual void prepare(model::SequenceClassifierImpl& /*model*/, const Preparation& /*data*/) {}
  // The method's state at a step boundary, saved with every checkpoint.
  virtual MethodState state() const { return {}; }
  // On resume, in place of prepare(): the state a checkpoint saved, on a
  // method attached to a model that went through the same stages so far.
  // Throws deltatune::Error when it contradicts what the method holds (a
  // checkpoint of another stage, a mask other than the replayed one).
  virtual void restore_state(const MethodState& /*state*/) {}
  // Fixed optimizer masks by parameter name (true: may change), known after
  // prepare(); masked-out entries stay bit-identical through training.
  virtual std::map<std::string, at::Tensor> gradient_masks() const { return {}; }
  // The gradient entries a step reads, by parameter name, where fewer than
  // all: on_backward() zeroes the others before clipping or the optimizer
  // sees them (FISH's masks). A data-parallel job all-reduces only these.
  // Empty: every entry of every trainable gradient.
  virtual std::map<std::string, at::Tensor> gradient_support() const { return {}; }
  // How many entries of the sparse-stored tensors may change (the method's
  // budget), computed from the model; none when they are not sparse.
  virtual std::optional<int64_t> sparse_budget(
      const model::SequenceClassifierImpl& /*model*/) const {
    return std::nullopt;
  }

  // How many values train once the method has settled, when that differs
  // from what attach() leaves trainable (FAR: its learned nodes after priming).
  virtual std::optional<int64_t> settled_trainable(
      const model::SequenceClassifierImpl& /*model*/) const {
    return std::nullopt;
  }

  // Positions the method adds to every sequence beyond its tokens (Prompt
  // Tuning's soft tokens; prefixes with shifted positions): max_length plus
  // these must fit the model's position table.
  virtual int64_t added_positions() const { return 0; }

  // Before every training forward pass (training = true) and before each
  // evaluation inside training (false): methods that reparameterise the
  // weights (Diff Pruning) write what the pass should see.
  virtual void before_forward(model::SequenceClassifierImpl& /*model*/, bool /*training*/) {}

  // After backward, before clipping and the optimizer step (gradient masks).
  virtual void on_backward(model::SequenceClassifierImpl& /*model*/, int64_t /*step*/) {}
  // Whether on_backward() changes the gradients backward left: a data-parallel
  // job must then average them after it, not while backward runs.
  virtual bool rewrites_gradients_on_backward() const { return false; }
  // After clipping, right before the optimizer step (Child-Tuning_F's masks,
  // which ChildTuningAdamW applies inside step(), after the trainer clipped).
  virtual void before_step(model::SequenceClassifierImpl& /*model*/, int64_t /*step*/) {}
  // Added to the task loss (regularisers); undefined when none.
  virtual at::Tensor extra_loss(model::SequenceClassifierImpl& /*model*/) { return {}; }

  // Model parameters a task stores, and how. Head parameters are always dense.
  virtual std::vector<std::pair<std::string, StorageKind>> stored_parameters(
      const model::SequenceClassifierImpl& model) const;

  // A short human description of what trains and what is stored ("info").
  virtual std::string describe() const = 0;
};

// Every parameter of `model` stored sparse (the entries that differ from the
// base), the head dense: the storage of the masked methods (FISH, Diff Pruning).
std::vector<std::pair<std::string, StorageKind>> every_parameter_sparse_head_dense(
    const model::SequenceClassifierImpl& model);

// Fixed masks by parameter name as a MethodState ("mask::<name>" tensors), and back;
// masks_of_state throws an Error naming `method` when the state holds none.
MethodState masks_state(const std::map<std::string, at::Tensor>& masks);
std::map<std::string, at::Tensor> masks_of_state(const MethodState& state,
                                                 const std::string& method);

// For a method of two stages: refuses a saved state whose `flag` (true: the
// later stage) differs from `later_now`, naming both stages.
void check_saved_stage(const MethodState& state, const std::string& method, const char* flag,
                       bool later_now, const std::string& earlier, const std::string& later);

// What a method trains and stores on a given model ("deltatune info").
struct Footprint {
  std::string method;
  int64_t total = 0;          // every parameter of the task model
  int64_t encoder = 0;        // all but the classifier
  int64_t trainable = 0;      // get gradients and optimizer state
  int64_t stored_values = 0;  // entries a task's delta holds
  int64_t stored_bytes = 0;   // their bytes in delta.safetensors (fp32; sparse adds indices)
  std::string description;
};

// Attaches `method` to `model` (a fresh task model) and counts.
Footprint footprint(Method& method, model::SequenceClassifierImpl& model);

// Names every method answers to, for --help and errors.
std::vector<std::string> method_names();

// Builds a method from its name and options (JSON object; unknown keys are
// errors naming the key). Throws deltatune::Error for an unknown method.
std::unique_ptr<Method> make_method(const std::string& name, const nlohmann::json& options = {});

// Rejects option keys outside `known`, naming the method and the key.
void check_options(const std::string& method, const nlohmann::json& options,
                   const std::vector<std::string>& known);

}  // namespace deltatune::methods
