#include "deltatune/methods/method.h"

#include <algorithm>
#include <set>

#include "deltatune/error.h"
#include "deltatune/methods/adapters.h"
#include "deltatune/methods/bitfit.h"
#include "deltatune/methods/child_tuning_d.h"
#include "deltatune/methods/child_tuning_f.h"
#include "deltatune/methods/diff_pruning.h"
#include "deltatune/methods/far.h"
#include "deltatune/methods/fish_mask.h"
#include "deltatune/methods/frozen.h"
#include "deltatune/methods/full.h"
#include "deltatune/methods/lora.h"
#include "deltatune/methods/prefix_tuning.h"
#include "deltatune/methods/prompt_tuning.h"

namespace deltatune::methods {

namespace {

// HF Trainer's rule: no weight decay on biases and LayerNorm weights.
bool decays(const std::string& name) {
  const bool bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
  return !bias && name.find("LayerNorm.") == std::string::npos;
}

// options[key], or `fallback` when absent (options may be null).
template <typename T>
T option_or(const nlohmann::json& options, const char* key, T fallback) {
  if (!options.is_object() || !options.contains(key)) return fallback;
  try {
    return options.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(std::string("method option '") + key + "' has the wrong type");
  }
}

}  // namespace

std::vector<ParameterGroup> Method::parameter_groups(model::SequenceClassifierImpl& model,
                                                     double learning_rate,
                                                     double weight_decay) const {
  ParameterGroup with_decay{"decay", {}, {}, learning_rate, weight_decay};
  ParameterGroup without_decay{"no_decay", {}, {}, learning_rate, 0.0};
  for (auto& item : model.named_parameters(true)) {
    if (!item.value().requires_grad()) continue;
    ParameterGroup& group = decays(item.key()) && weight_decay > 0 ? with_decay : without_decay;
    group.names.push_back(item.key());
    group.parameters.push_back(item.value());
  }
  std::vector<ParameterGroup> groups;
  for (auto* g : {&with_decay, &without_decay})
    if (!g->names.empty()) groups.push_back(std::move(*g));
  return groups;
}

std::vector<std::pair<std::string, StorageKind>> Method::stored_parameters(
    const model::SequenceClassifierImpl& model) const {
  std::vector<std::pair<std::string, StorageKind>> stored;
  for (const auto& item : model.named_parameters(true))
    if (item.value().requires_grad()) stored.emplace_back(item.key(), StorageKind::kDense);
  return stored;
}

void check_options(const std::string& method, const nlohmann::json& options,
                   const std::vector<std::string>& known) {
  if (options.is_null()) return;
  if (!options.is_object()) throw Error("options of method '" + method + "' must be an object");
  for (auto it = options.begin(); it != options.end(); ++it)
    if (std::find(known.begin(), known.end(), it.key()) == known.end())
      throw Error("method '" + method + "' has no option '" + it.key() + "'");
}

Footprint footprint(Method& method, model::SequenceClassifierImpl& model) {
  Footprint f;
  // Sizes of the task model itself, before the method adds modules (LoRA's).
  for (const auto& item : model.named_parameters(true)) {
    const int64_t n = item.value().numel();
    f.total += n;
    if (!is_classifier_parameter(item.key())) f.encoder += n;
  }
  method.attach(model);
  f.method = method.name();
  f.description = method.describe();
  auto params = model.named_parameters(true);
  for (const auto& item : params)
    if (item.value().requires_grad()) f.trainable += item.value().numel();
  if (auto settled = method.settled_trainable(model)) f.trainable = *settled;
  method.after_training(model);  // what a delta holds: Prefix Tuning's folded table
  params = model.named_parameters(true);
  const std::optional<int64_t> budget = method.sparse_budget(model);
  for (const auto& [name, kind] : method.stored_parameters(model)) {
    if (kind == StorageKind::kSparse && budget) continue;
    const int64_t n = params[name].numel();
    f.stored_values += n;
    f.stored_bytes += n * params[name].element_size();
  }
  if (budget) {  // fp32 values with int32 indices
    f.stored_values += *budget;
    f.stored_bytes += *budget * 8;
  }
  return f;
}

std::vector<std::string> method_names() {
  return {"full",         "frozen", "bitfit", "child-tuning-f", "child-tuning-d", "fish",
          "diff-pruning", "far",    "lora",   "prefix-tuning",  "prompt-tuning",  "adapters"};
}

std::unique_ptr<Method> make_method(const std::string& name, const nlohmann::json& options) {
  if (name == "full") {
    check_options(name, options, {});
    return std::make_unique<FullFineTuning>();
  }
  if (name == "frozen") {
    check_options(name, options, {});
    return std::make_unique<FrozenEncoder>();
  }
  if (name == "bitfit") {
    check_options(name, options, {"bias_terms"});
    std::set<std::string> groups{"all"};
    if (options.is_object() && options.contains("bias_terms")) {
      groups.clear();
      for (const auto& g : options["bias_terms"]) groups.insert(g.get<std::string>());
    }
    return std::make_unique<BitFit>(groups);
  }
  if (name == "child-tuning-f") {
    check_options(name, options, {"reserve_p"});
    return std::make_unique<ChildTuningF>(option_or(options, "reserve_p", 0.3));
  }
  if (name == "child-tuning-d") {
    check_options(name, options, {"reserve_p", "fisher_batch_size", "fisher_clip_norm"});
    return std::make_unique<ChildTuningD>(option_or(options, "reserve_p", 0.3),
                                          option_or(options, "fisher_batch_size", size_t{16}),
                                          option_or(options, "fisher_clip_norm", 1.0));
  }
  if (name == "fish") {
    check_options(name, options, {"density", "fisher_samples", "fisher"});
    const std::string fisher = option_or(options, "fisher", std::string("empirical"));
    if (fisher != "empirical" && fisher != "expected")
      throw Error("fish: option 'fisher' must be empirical or expected, not '" + fisher + "'");
    return std::make_unique<FishMask>(option_or(options, "density", 0.005),
                                      option_or(options, "fisher_samples", size_t{1024}),
                                      fisher == "expected");
  }
  if (name == "diff-pruning") {
    check_options(
        name, options,
        {"density", "l0_penalty", "alpha_init", "left", "right", "finetune_lr", "finetune_epochs"});
    DiffPruningOptions o;
    o.density = option_or(options, "density", o.density);
    o.l0_penalty = option_or(options, "l0_penalty", o.l0_penalty);
    o.alpha_init = option_or(options, "alpha_init", o.alpha_init);
    o.left = option_or(options, "left", o.left);
    o.right = option_or(options, "right", o.right);
    o.finetune_learning_rate = option_or(options, "finetune_lr", o.finetune_learning_rate);
    o.finetune_epochs = option_or(options, "finetune_epochs", o.finetune_epochs);
    return std::make_unique<DiffPruning>(o);
  }
  if (name == "far") {
    check_options(name, options, {"priming_fraction", "learned_fraction"});
    FarOptions o;
    o.priming_fraction = option_or(options, "priming_fraction", o.priming_fraction);
    o.learned_fraction = option_or(options, "learned_fraction", o.learned_fraction);
    return std::make_unique<Far>(o);
  }
  if (name == "lora") {
    check_options(name, options, {"rank", "alpha", "dropout", "target_modules"});
    LoraOptions o;
    o.rank = option_or(options, "rank", o.rank);
    o.alpha = option_or(options, "alpha", o.alpha);
    o.dropout = option_or(options, "dropout", o.dropout);
    o.target_modules = option_or(options, "target_modules", o.target_modules);
    return std::make_unique<Lora>(o);
  }
  if (name == "prefix-tuning") {
    check_options(name, options,
                  {"length", "reparameterize", "projection_size", "positions", "seed"});
    PrefixTuningOptions o;
    o.length = option_or(options, "length", o.length);
    o.reparameterize = option_or(options, "reparameterize", o.reparameterize);
    o.projection_size = option_or(options, "projection_size", o.projection_size);
    o.positions = option_or(options, "positions", o.positions);
    o.seed = option_or(options, "seed", o.seed);
    return std::make_unique<PrefixTuning>(o);
  }
  if (name == "prompt-tuning") {
    check_options(name, options, {"length", "placement", "init", "init_token_ids", "seed"});
    PromptTuningOptions o;
    o.length = option_or(options, "length", o.length);
    o.placement = option_or(options, "placement", o.placement);
    o.init = option_or(options, "init", o.init);
    o.init_token_ids = option_or(options, "init_token_ids", o.init_token_ids);
    o.seed = option_or(options, "seed", o.seed);
    return std::make_unique<PromptTuning>(o);
  }
  if (name == "adapters") {
    check_options(name, options, {"bottleneck", "init_std", "seed"});
    AdapterOptions o;
    o.seed = option_or(options, "seed", o.seed);
    o.bottleneck = option_or(options, "bottleneck", o.bottleneck);
    o.init_std = option_or(options, "init_std", o.init_std);
    return std::make_unique<Adapters>(o);
  }
  std::string known;
  for (const auto& n : method_names()) known += (known.empty() ? "" : ", ") + n;
  throw Error("unknown method '" + name + "' (known: " + known + ")");
}

namespace {
const std::string kMaskPrefix = "mask::";
}

std::vector<std::pair<std::string, StorageKind>> every_parameter_sparse_head_dense(
    const model::SequenceClassifierImpl& model) {
  std::vector<std::pair<std::string, StorageKind>> stored;
  for (const auto& item : model.named_parameters(true))
    stored.emplace_back(item.key(), is_classifier_parameter(item.key()) ? StorageKind::kDense
                                                                        : StorageKind::kSparse);
  return stored;
}

MethodState masks_state(const std::map<std::string, at::Tensor>& masks) {
  MethodState state;
  for (const auto& [name, mask] : masks) state.tensors.emplace_back(kMaskPrefix + name, mask);
  return state;
}

std::map<std::string, at::Tensor> masks_of_state(const MethodState& state,
                                                 const std::string& method) {
  std::map<std::string, at::Tensor> masks;
  for (const auto& [name, tensor] : state.tensors)
    if (name.rfind(kMaskPrefix, 0) == 0) masks[name.substr(kMaskPrefix.size())] = tensor.clone();
  if (masks.empty()) throw Error(method + ": the checkpoint holds no masks");
  return masks;
}

void check_saved_stage(const MethodState& state, const std::string& method, const char* flag,
                       bool later_now, const std::string& earlier, const std::string& later) {
  if (state.facts.value(flag, false) == later_now) return;
  throw Error(method + ": the checkpoint is of the " + (later_now ? earlier : later) +
              " stage, not of the " + (later_now ? later : earlier) + " stage being resumed");
}

}  // namespace deltatune::methods
