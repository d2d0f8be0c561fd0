// deltatune train | eval | predict
#include <ATen/ATen.h>
#include <fmt/core.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "deltatune/data/batcher.h"
#include "deltatune/data/glue.h"
#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/methods/bitfit.h"
#include "deltatune/methods/delta.h"
#include "deltatune/methods/peft_format.h"
#include "deltatune/text/tokenizer.h"
#include "deltatune/train/export.h"
#include "deltatune/train/interrupt.h"
#include "deltatune/train/prompt_ensemble.h"
#include "deltatune/train/task_model.h"

namespace deltatune::cli {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Where examples come from: a GLUE task, or user files.
struct DataOptions {
  std::string task;
  std::string glue_dir;
  std::string train_file, dev_file;
  std::string text_a, text_b, label;
  bool regression = false;
  bool skip_bad_lines = false;
  size_t max_train_samples = 0;
  size_t max_length = 128;
  // GLUE tasks whose dev split is evaluated beside dev (domain transfer).
  std::vector<std::string> eval_also;
};

void add_data_options(CLI::App* verb, DataOptions& d, bool with_train) {
  verb->add_option("--task,-t", d.task,
                   "GLUE task (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE) "
                   "or a name for user data");
  verb->add_option("--glue-dir", d.glue_dir, "GLUE data root (default: $GLUE_DIR)");
  if (with_train) {
    verb->add_option("--train", d.train_file, "user training file (TSV, CSV or JSONL)");
    verb->add_option("--max-train-samples", d.max_train_samples,
                     "use a seeded random subset of this many training examples");
    verb->add_option(
        "--eval-also", d.eval_also,
        "GLUE task whose dev split is also evaluated, reported as TASK_<metric> "
        "(domain transfer, e.g. RTE -> QNLI; the labels must be the same); repeatable");
  }
  verb->add_option("--dev", d.dev_file, "user evaluation file (TSV, CSV or JSONL)");
  verb->add_option("--text-a", d.text_a, "column of the first text (user files)");
  verb->add_option("--text-b", d.text_b, "column of the second text, for pairs (user files)");
  verb->add_option("--label", d.label, "label column (user files)");
  verb->add_flag("--regression", d.regression, "user data: float labels, MSE loss");
  verb->add_flag("--skip-bad-lines", d.skip_bad_lines, "count and skip malformed lines");
  verb->add_option("--max-length", d.max_length, "truncate to this many tokens")
      ->capture_default_str();
}

fs::path glue_dir(const DataOptions& d) {
  return d.glue_dir.empty() ? data::glue_dir_from_env() : fs::path(d.glue_dir);
}

data::ReadOptions user_read_options(const DataOptions& d, uint64_t seed) {
  data::ReadOptions options;
  if (!d.text_a.empty()) options.text_a = data::ColumnRef::parse(d.text_a);
  if (!d.text_b.empty()) options.text_b = data::ColumnRef::parse(d.text_b);
  if (!d.label.empty()) options.label = data::ColumnRef::parse(d.label);
  options.type = d.regression ? data::TaskType::kRegression : data::TaskType::kClassification;
  options.skip_bad_lines = d.skip_bad_lines;
  options.seed = seed;
  return options;
}

void report_skipped(const data::Dataset& dataset) {
  if (dataset.skipped.count == 0) return;
  std::string lines;
  for (size_t l : dataset.skipped.first_lines)
    lines += (lines.empty() ? "" : ", ") + std::to_string(l);
  fmt::print(stderr, "{}: skipped {} malformed lines (first: {})\n", dataset.source,
             dataset.skipped.count, lines);
}

struct TaskData {
  data::TaskSpec task;
  data::Dataset train, dev;
  // The task's other evaluation splits, by name (MNLI: dev_mismatched).
  std::vector<std::pair<std::string, data::Dataset>> other_dev;
};

TaskData read_task_data(const DataOptions& d, uint64_t seed, bool need_train) {
  TaskData out;
  if (!d.train_file.empty() || !d.dev_file.empty()) {
    if (need_train && d.train_file.empty()) throw Error("--dev was given without --train");
    if (d.dev_file.empty()) throw Error("--train was given without --dev");
    data::ReadOptions options = user_read_options(d, seed);
    if (need_train) {
      options.max_samples = d.max_train_samples;
      out.train = data::read_dataset(d.train_file, options);
      options.label_names = out.train.label_names;  // fixed by train
    }
    options.max_samples = 0;
    out.dev = data::read_dataset(d.dev_file, options);
    out.task = data::custom_task(
        d.task.empty() ? fs::path(d.train_file).stem().string() : d.task, out.dev.type,
        need_train ? out.train.label_names : out.dev.label_names, out.dev.is_pair);
  } else {
    if (d.task.empty()) throw Error("give --task (a GLUE task) or --train and --dev files");
    out.task = data::find_glue_task(d.task);
    data::GlueReadOptions options;
    options.skip_bad_lines = d.skip_bad_lines;
    options.seed = seed;
    if (need_train) {
      options.max_samples = d.max_train_samples;
      out.train = data::read_glue(glue_dir(d), out.task, "train", options);
    }
    options.max_samples = 0;
    out.dev = data::read_glue(glue_dir(d), out.task, out.task.eval_splits.front(), options);
    for (size_t i = 1; i < out.task.eval_splits.size(); ++i) {
      const std::string& split = out.task.eval_splits[i];
      out.other_dev.emplace_back(split, data::read_glue(glue_dir(d), out.task, split, options));
    }
  }
  for (const std::string& name : d.eval_also) {
    const data::TaskSpec other = data::find_glue_task(name);
    if (other.type != out.task.type || other.is_pair != out.task.is_pair ||
        other.label_names != out.task.label_names)
      throw Error(fmt::format(
          "--eval-also {}: its labels ({}) are not {}'s ({}); a model trained on one cannot be "
          "scored on the other",
          name,
          other.label_names.empty() ? "a score"
                                    : fmt::format("{}", fmt::join(other.label_names, ", ")),
          out.task.name,
          out.task.label_names.empty() ? "a score"
                                       : fmt::format("{}", fmt::join(out.task.label_names, ", "))));
    data::GlueReadOptions options;
    options.skip_bad_lines = d.skip_bad_lines;
    out.other_dev.emplace_back(
        other.name, data::read_glue(glue_dir(d), other, other.eval_splits.front(), options));
  }
  if (need_train) report_skipped(out.train);
  report_skipped(out.dev);
  for (const auto& [split, dataset] : out.other_dev) report_skipped(dataset);
  return out;
}

// The evaluation data of a delta: a user --dev file read with the delta's
// own label set and type, or GLUE dev splits (the delta's own task unless
// --task names another, e.g. for transfer), refused when labels or inputs
// differ from what the delta was trained on. An adapter imported from PEFT
// records no label names: any label set of its head's width is taken.
TaskData read_eval_data(DataOptions d, const methods::Delta& delta, const std::string& delta_dir) {
  data::TaskSpec trained = train::task_of(delta);
  const bool labels_recorded = !delta.meta.value("label_names", json::array()).empty();
  TaskData out;
  if (!d.dev_file.empty()) {
    if (d.regression && trained.type != data::TaskType::kRegression)
      throw Error("--regression was given, but " + delta_dir + " is a classification delta");
    data::ReadOptions options = user_read_options(d, 0);
    options.type = trained.type;
    if (labels_recorded) options.label_names = trained.label_names;
    out.dev = data::read_dataset(d.dev_file, options);
    report_skipped(out.dev);
    if (!labels_recorded && trained.type == data::TaskType::kClassification)
      trained.label_names = out.dev.label_names;
    train::check_same_labels(
        trained,
        data::custom_task(trained.name, out.dev.type, out.dev.label_names, out.dev.is_pair),
        d.dev_file);
    out.task = trained;
    return out;
  }
  if (d.task.empty()) {
    if (trained.name.empty())
      throw Error(delta_dir + ": the adapter does not record its task: give --task or --dev");
    if (trained.hf_name.empty())
      throw Error(delta_dir + " was trained on user data (task '" + trained.name +
                  "'): give its evaluation file with --dev");
    d.task = trained.name;
  }
  out = read_task_data(d, 0, false);
  if (!labels_recorded && trained.type == data::TaskType::kClassification &&
      trained.label_names.size() == out.task.label_names.size())
    trained.label_names = out.task.label_names;
  train::check_same_labels(trained, out.task, "GLUE task " + out.task.name);
  return out;
}

// The base a delta is applied to; a delta of another base is refused unless
// --allow-base-mismatch asked for it to be applied with a warning.
train::BaseModel base_for_deltas(const std::string& model_dir, bool allow_base_mismatch) {
  train::BaseModel base = train::load_base(model_dir);
  base.allow_mismatch = allow_base_mismatch;
  return base;
}

const char* const kAllowBaseMismatchHelp =
    "apply a delta made on another base (checksum differs) with a warning instead of refusing it";

// The reference recipes (docs/METHODS.md "Recipes") as defaults per method.
struct Recipe {
  double learning_rate;
  int64_t batch_size;
  int64_t epochs;
  std::string schedule;
  double warmup_ratio;
  double weight_decay;
};

Recipe recipe_for(const std::string& method) {
  if (method == "bitfit" || method == "frozen") return {1e-3, 8, 16, "constant", 0.0, 0.0};
  if (method == "child-tuning-f" || method == "child-tuning-d")
    return {4e-5, 16, 3, "linear", 0.1, 0.01};
  if (method == "fish") return {5e-5, 16, 7, "constant", 0.0, 0.0};
  if (method == "diff-pruning") return {1e-5, 8, 3, "constant", 0.0, 0.0};  // stage 1
  // LoRA: the paper's RoBERTa-base GLUE recipe (MNLI's lr and epochs; per task
  // it used 4e-4..5e-4 and 25..80 epochs), r = alpha = 8 on query and value.
  if (method == "lora") return {5e-4, 16, 30, "linear", 0.06, 0.0};
  // Prefix and prompt tuning: AdamW at the rates PEFT's sequence-classification
  // examples and P-Tuning v2 use for BERT-size encoders (Lester's 0.3 is for
  // Adafactor); m = 20.
  if (method == "prefix-tuning" || method == "prompt-tuning")
    return {5e-3, 16, 20, "linear", 0.06, 0.0};
  // Houlsby adapters: adapter-bert's GLUE recipe (lr 3e-4, batch 32, 20 epochs,
  // BERT's warmup and weight decay), bottleneck 64.
  if (method == "adapters") return {3e-4, 32, 20, "linear", 0.1, 0.01};
  // FAR: full fine-tuning's recipe, priming included.
  return {2e-5, 16, 3, "linear", 0.1, 0.01};  // full fine-tuning (HF run_glue-style)
}

struct TrainOptions {
  std::string model_dir = default_model_dir();
  std::string method = "bitfit";
  std::string bias_terms;
  std::optional<double> reserve_p, density;
  std::optional<size_t> fisher_samples;
  std::optional<std::string> fisher;
  std::optional<double> priming, learned_fraction;
  std::optional<int64_t> lora_rank;
  std::optional<double> lora_alpha, lora_dropout;
  std::string target_modules;
  std::optional<int64_t> virtual_tokens, projection_size, bottleneck;
  std::optional<std::string> prefix_positions, prompt_placement;
  std::string prompt_init;
  std::string prompt_init_text;
  double finetune_lr = 5e-5;    // diff-pruning stage 3
  int64_t finetune_epochs = 3;  // diff-pruning stage 3
  std::string out = "runs/latest";
  DataOptions data;
  train::TrainConfig config;
  std::optional<double> learning_rate, weight_decay, warmup_ratio;
  std::optional<int64_t> batch_size, epochs;
  std::optional<std::string> schedule;
  std::optional<double> dropout;  // overrides the config's dropout rates
  std::string init_from;          // safetensors of starting values by parameter name
  bool resume = false;
  bool overwrite = false;
  bool json_output = false;
  double job_timeout_s = 300;  // a data-parallel job's wait for the other ranks
  std::string overlap_all_reduce = "auto";
  std::string device = "auto";
  bool gradient_checkpointing = false;
  std::string frozen_weights = "auto";
};

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream stream(text);
  for (std::string item; std::getline(stream, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// Words a class-label initialisation reads for the GLUE tasks whose label
// names are 0 / 1 (verbalizers in the style of Lester et al. and LM-BFF).
std::vector<std::string> label_words(const data::TaskSpec& task) {
  static const std::map<std::string, std::vector<std::string>> verbalizers = {
      {"CoLA", {"unacceptable", "acceptable"}},
      {"SST-2", {"negative", "positive"}},
      {"MRPC", {"different", "equivalent"}},
      {"QQP", {"different", "duplicate"}},
      {"STS-B", {"similarity"}}};
  if (auto it = verbalizers.find(task.name); it != verbalizers.end()) return it->second;
  if (task.label_names.empty()) throw Error("--prompt-init labels: the task has no label names");
  std::vector<std::string> words;
  for (std::string name : task.label_names) {
    std::replace(name.begin(), name.end(), '_', ' ');
    words.push_back(name);
  }
  return words;
}

std::vector<int64_t> prompt_init_token_ids(const std::string& init, const std::string& init_text,
                                           const data::TaskSpec& task,
                                           const text::Tokenizer& tokenizer) {
  std::string text;
  if (init == "text") {
    if (init_text.empty()) throw Error("--prompt-init text needs --prompt-init-text");
    text = init_text;
  } else {
    for (const auto& word : label_words(task)) text += (text.empty() ? "" : " ") + word;
  }
  std::vector<int64_t> ids;
  for (const auto& token : tokenizer.tokenize(text))
    if (auto id = tokenizer.token_to_id(token)) ids.push_back(*id);
  if (ids.empty()) throw Error("--prompt-init " + init + ": '" + text + "' gives no tokens");
  return ids;
}

int run_train(TrainOptions& o) {
  const Recipe recipe = recipe_for(o.method);
  auto& c = o.config;
  c.learning_rate = o.learning_rate.value_or(recipe.learning_rate);
  c.batch_size = o.batch_size.value_or(recipe.batch_size);
  c.epochs = o.epochs.value_or(recipe.epochs);
  c.schedule = o.schedule.value_or(recipe.schedule);
  c.warmup_ratio = o.warmup_ratio.value_or(recipe.warmup_ratio);
  c.weight_decay = o.weight_decay.value_or(recipe.weight_decay);
  c.run_dir = o.out;
  if (c.log_every < 0) throw Error("--log-every must be 0 or more");
  at::Device device = model::parse_device(o.device);
  model::check_precision(c.precision(), device);
  if (o.frozen_weights != "fp32" && o.frozen_weights != "bf16" && o.frozen_weights != "auto")
    throw Error("--frozen-weights must be fp32, bf16 or auto, not '" + o.frozen_weights + "'");
  if (o.frozen_weights == "bf16" && c.precision() != model::Precision::kBFloat16)
    throw Error("--frozen-weights bf16 needs --bf16 (autocast then reads every weight in bf16)");
  // auto: bf16 under bf16 autocast, which reads every weight in bf16 anyway
  // (the same training, test FrozenWeights.*), in half the memory.
  const bool frozen_in_bf16 =
      o.frozen_weights == "bf16" ||
      (o.frozen_weights == "auto" && c.precision() == model::Precision::kBFloat16);

  json method_options = json::object();
  if (!o.bias_terms.empty()) {
    if (o.method != "bitfit") throw Error("--bias-terms applies to --method bitfit only");
    method_options["bias_terms"] = split_commas(o.bias_terms);
  }
  auto method_option = [&](const char* flag, const char* key, const auto& value,
                           std::vector<std::string> methods) {
    if (!value) return;
    if (std::find(methods.begin(), methods.end(), o.method) == methods.end())
      throw Error(std::string(flag) + " does not apply to --method " + o.method);
    method_options[key] = *value;
  };
  method_option("--reserve-p", "reserve_p", o.reserve_p, {"child-tuning-f", "child-tuning-d"});
  method_option("--density", "density", o.density, {"fish", "diff-pruning"});
  method_option("--fisher-samples", "fisher_samples", o.fisher_samples, {"fish"});
  method_option("--fisher", "fisher", o.fisher, {"fish"});
  method_option("--priming", "priming_fraction", o.priming, {"far"});
  method_option("--learned-fraction", "learned_fraction", o.learned_fraction, {"far"});
  method_option("--lora-rank", "rank", o.lora_rank, {"lora"});
  method_option("--lora-alpha", "alpha", o.lora_alpha, {"lora"});
  method_option("--lora-dropout", "dropout", o.lora_dropout, {"lora"});
  if (!o.target_modules.empty()) {
    if (o.method != "lora") throw Error("--target-modules does not apply to --method " + o.method);
    method_options["target_modules"] = split_commas(o.target_modules);
  }
  method_option("--num-virtual-tokens", "length", o.virtual_tokens,
                {"prefix-tuning", "prompt-tuning"});
  method_option("--prefix-positions", "positions", o.prefix_positions, {"prefix-tuning"});
  method_option("--prompt-placement", "placement", o.prompt_placement, {"prompt-tuning"});
  method_option("--bottleneck", "bottleneck", o.bottleneck, {"adapters"});
  if (o.projection_size) {
    if (o.method != "prefix-tuning")
      throw Error("--projection-size does not apply to --method " + o.method);
    if (*o.projection_size < 0) throw Error("--projection-size must be 0 or more");
    method_options["reparameterize"] = *o.projection_size > 0;
    if (*o.projection_size > 0) method_options["projection_size"] = *o.projection_size;
  }
  if (!o.prompt_init.empty() && o.method != "prompt-tuning")
    throw Error("--prompt-init does not apply to --method " + o.method);
  if (o.method == "diff-pruning") {
    method_options["finetune_lr"] = o.finetune_lr;
    method_options["finetune_epochs"] = o.finetune_epochs;
  }
  if (o.method == "prefix-tuning" || o.method == "prompt-tuning" || o.method == "adapters")
    method_options["seed"] = c.seed;  // the initialisation follows the run's seed

  TaskData task_data = read_task_data(o.data, c.seed, true);
  auto tokenizer = text::load_tokenizer(o.model_dir);
  if (o.method == "prompt-tuning" && !o.prompt_init.empty()) {
    if (o.prompt_init == "labels" || o.prompt_init == "text") {
      method_options["init"] = "tokens";
      method_options["init_token_ids"] =
          prompt_init_token_ids(o.prompt_init, o.prompt_init_text, task_data.task, *tokenizer);
    } else {
      method_options["init"] = o.prompt_init;
    }
  }
  auto method = methods::make_method(o.method, method_options);
  train::check_sequence_fits(model::EncoderConfig::from_file(fs::path(o.model_dir) / "config.json"),
                             *method, static_cast<int64_t>(o.data.max_length));
  auto train_set = data::encode_dataset(task_data.train, *tokenizer, o.data.max_length);
  auto dev_set = data::encode_dataset(task_data.dev, *tokenizer, o.data.max_length);
  train::BaseModel base = train::load_base(o.model_dir);
  if (o.dropout) train::override_dropout(base, *o.dropout);
  // A data-parallel job when torchrun's environment describes one (deltatune launch, torchrun).
  train::JobOptions job_options;
  job_options.timeout = std::chrono::milliseconds(static_cast<int64_t>(o.job_timeout_s * 1000));
  job_options.device = train::rank_device(device, o.device.rfind("cuda:", 0) == 0);
  const std::unique_ptr<train::Collective> job = train::join_job_from_environment(job_options);
  if (job) device = job_options.device;
  auto task_model = train::make_task_model(base, task_data.task.num_labels(), c.seed, device);
  task_model->encoder->set_gradient_checkpointing(o.gradient_checkpointing);
  method->attach(*task_model);
  if (!o.init_from.empty()) {
    if (o.resume) throw Error("--init-from does not apply with --resume (the checkpoint says)");
    // A delta directory gives its task model's encoder (task transfer); a
    // safetensors file gives values by parameter name.
    const bool encoder = fs::exists(fs::path(o.init_from) / "delta.json");
    c.initialised_parameters = encoder
                                   ? train::load_encoder_from_delta(base, *task_model, o.init_from)
                                   : train::load_starting_values(*task_model, o.init_from);
    fmt::print(stderr, "{}: {} {}tensors copied into the task model (stored in the delta)\n",
               o.init_from, c.initialised_parameters.size(), encoder ? "encoder " : "");
  }
  if (frozen_in_bf16) {
    const int64_t saved = model::store_frozen_dense_weights(*task_model, at::kBFloat16);
    fmt::print(stderr, "frozen Dense weights in bf16: {:.1f} MiB less\n",
               static_cast<double>(saved) / (1024.0 * 1024.0));
  }

  fmt::print(stderr,
             "{}: {} train / {} dev examples, method {}, lr {}, batch {}, {} epochs, {}{}{}\n",
             task_data.task.name, train_set.size(), dev_set.size(), method->name(), c.learning_rate,
             c.batch_size, c.epochs, model::describe_device(device),
             c.precision() == model::Precision::kFloat32
                 ? ""
                 : fmt::format(", {}", model::precision_name(c.precision())),
             o.gradient_checkpointing ? ", gradient checkpointing" : "");
  std::vector<data::EncodedDataset> other_dev_sets;
  other_dev_sets.reserve(task_data.other_dev.size());
  for (const auto& [split, dataset] : task_data.other_dev)
    other_dev_sets.push_back(data::encode_dataset(dataset, *tokenizer, o.data.max_length));
  std::vector<std::pair<std::string, const data::EncodedDataset*>> extra_eval;
  for (size_t i = 0; i < other_dev_sets.size(); ++i)
    extra_eval.emplace_back(task_data.other_dev[i].first, &other_dev_sets[i]);
  train::StopOnSignals stop_on_signals;  // SIGINT/SIGTERM: checkpoint, exit 130/143
  c.collective = job.get();
  if (o.overlap_all_reduce != "auto") c.overlap_all_reduce = o.overlap_all_reduce == "true";
  train::MethodRun run = train::run_method(task_model, *method, task_data.task, c, train_set,
                                           dev_set, extra_eval, o.resume, o.overwrite);
  const train::TrainResult& result = run.result;
  const json summary = train::save_run_outputs(base, *task_model, *method, task_data.task,
                                               o.data.max_length, c, run, o.out);
  if (o.json_output) {
    fmt::print("{}\n", summary.dump());
  } else {
    fmt::print("{} dev {} = {:.4f}", task_data.task.name, result.best.metrics.main_metric,
               result.best.metrics.main);
    for (const auto& [name, value] : result.best.metrics.values)
      if (name != result.best.metrics.main_metric) fmt::print(", {} = {:.4f}", name, value);
    fmt::print(" (best of {} steps at step {})\n", result.steps, result.best_step);
    fmt::print("delta: {} ({} values, {:.1f} KB)\n", summary["delta"].get<std::string>(),
               summary["delta_values"].get<int64_t>(),
               summary["delta_bytes"].get<int64_t>() / 1024.0);
  }
  return 0;
}

struct EvalOptions {
  std::string model_dir = default_model_dir();
  std::string delta_dir;
  std::vector<std::string> more_deltas;  // --delta given again: a prompt ensemble
  std::string ensemble = "mean";
  DataOptions data;
  int64_t batch_size = 64;
  bool bf16 = false;               // --bf16: the same as --precision bf16
  std::string precision = "fp32";  // --precision; resolved into bf16 by run_eval
  bool json_output = false;
  bool allow_base_mismatch = false;
  std::string device = "auto";
};

// --precision (auto probes the CPU) and --bf16 as one answer, kept in o.bf16.
void resolve_eval_precision(EvalOptions& o) {
  o.bf16 = forward_precision(o.bf16 ? "bf16" : o.precision, model::parse_device(o.device),
                             "eval") == model::Precision::kBFloat16;
}

// Several prompt-tuning deltas of one task evaluated as one ensemble, each
// member alone too.
int run_ensemble_eval(EvalOptions& o) {
  std::vector<methods::Delta> deltas{methods::Delta::load(o.delta_dir)};
  for (const auto& dir : o.more_deltas) deltas.push_back(methods::Delta::load(dir));
  const train::EnsembleCombine combine = train::parse_ensemble_combine(o.ensemble);
  train::BaseModel base = base_for_deltas(o.model_dir, o.allow_base_mismatch);
  train::PromptEnsemble ensemble(base, deltas);
  ensemble.to(model::parse_device(o.device));
  TaskData task_data = read_eval_data(o.data, deltas.front(), o.delta_dir);
  if (task_data.task.num_labels() != ensemble.num_labels())
    throw Error("task " + task_data.task.name + " has " +
                std::to_string(task_data.task.num_labels()) +
                " labels but the deltas' heads have " + std::to_string(ensemble.num_labels()));
  const size_t max_length = deltas.front().meta.value("max_length", o.data.max_length);
  auto tokenizer = text::load_tokenizer(o.model_dir);
  auto dev_set = data::encode_dataset(task_data.dev, *tokenizer, max_length);
  train::EnsembleEvaluation evaluation =
      train::evaluate_ensemble(ensemble, task_data.task, dev_set, o.batch_size, o.bf16, combine);
  const train::Evaluation& combined = evaluation.combined;
  json members = json::array();
  for (const auto& alone : evaluation.members) members.push_back(alone.to_json());
  json out = combined.to_json();
  out["task"] = task_data.task.name;
  out["ensemble"] = o.ensemble;
  out["members"] = members;
  if (combine == train::EnsembleCombine::kMajorityVote) out.erase("loss");  // votes have none
  if (o.json_output) {
    fmt::print("{}\n", out.dump());
    return 0;
  }
  const std::string& metric = combined.metrics.main_metric;
  fmt::print("{} dev {} = {:.4f} on {} examples, ensemble of {} prompts ({})\n",
             task_data.task.name, metric, combined.metrics.main, combined.examples, ensemble.size(),
             o.ensemble == "mean" ? "mean probability" : "majority vote");
  for (int64_t k = 0; k < ensemble.size(); ++k)
    fmt::print("  member {}: {} = {:.4f}\n", k + 1, metric, members[k][metric].get<double>());
  return 0;
}

int run_eval(EvalOptions& o) {
  resolve_eval_precision(o);
  if (!o.more_deltas.empty()) return run_ensemble_eval(o);
  methods::Delta delta = methods::Delta::load(o.delta_dir);
  train::BaseModel base = base_for_deltas(o.model_dir, o.allow_base_mismatch);
  auto task_model =
      train::model_from_delta(base, delta, /*fold=*/false, model::parse_device(o.device));
  TaskData task_data = read_eval_data(o.data, delta, o.delta_dir);
  if (task_data.task.num_labels() != task_model->num_labels())
    throw Error("task " + task_data.task.name + " has " +
                std::to_string(task_data.task.num_labels()) + " labels but the delta's head has " +
                std::to_string(task_model->num_labels()));
  const size_t max_length = delta.meta.value("max_length", o.data.max_length);
  auto tokenizer = text::load_tokenizer(o.model_dir);
  auto dev_set = data::encode_dataset(task_data.dev, *tokenizer, max_length);
  const auto eval_start = std::chrono::steady_clock::now();
  train::Evaluation eval =
      train::evaluate(*task_model, task_data.task, dev_set, o.batch_size, o.bf16);
  const double eval_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - eval_start).count();
  for (const auto& [split, dataset] : task_data.other_dev) {
    train::Evaluation other = train::evaluate(*task_model, task_data.task,
                                              data::encode_dataset(dataset, *tokenizer, max_length),
                                              o.batch_size, o.bf16);
    for (const auto& [metric, value] : other.metrics.values)
      eval.metrics.values[split + "_" + metric] = value;
  }
  json out = eval.to_json();
  out["task"] = task_data.task.name;
  out["recorded"] = delta.meta.value("dev", json::object());
  out["delta_values"] = delta.stored_values();
  out["delta_bytes"] = delta.stored_bytes();
  out["device"] = model::device_of(*task_model).str();
  out["precision"] = o.bf16 ? "bf16" : "fp32";
  out["seconds"] = eval_seconds;  // the dev set's forward passes and metrics
  out["examples_per_second"] = static_cast<double>(eval.examples) / std::max(eval_seconds, 1e-9);
  if (o.json_output) {
    fmt::print("{}\n", out.dump());
  } else {
    fmt::print("{} dev {} = {:.4f} on {} examples", task_data.task.name, eval.metrics.main_metric,
               eval.metrics.main, eval.examples);
    if (out["recorded"].contains(eval.metrics.main_metric))
      fmt::print(" (recorded at training: {:.4f})",
                 out["recorded"][eval.metrics.main_metric].get<double>());
    for (const auto& [name, value] : eval.metrics.values)
      if (name != eval.metrics.main_metric) fmt::print(", {} = {:.4f}", name, value);
    fmt::print("\ndelta {}: {} values, {:.1f} KB on disk\n", o.delta_dir, delta.stored_values(),
               delta.stored_bytes() / 1024.0);
  }
  return 0;
}

struct PredictOptions {
  std::string model_dir = default_model_dir();
  std::string delta_dir;
  std::string input, output;
  std::string text_a, text_b;
  int64_t batch_size = 64;
  std::string precision = "fp32";
  bool allow_base_mismatch = false;
  std::string device = "auto";
};

int run_predict(PredictOptions& o) {
  methods::Delta delta = methods::Delta::load(o.delta_dir);
  const at::Device device = model::parse_device(o.device);
  const model::Precision precision = forward_precision(o.precision, device, "predict");
  train::BaseModel base = base_for_deltas(o.model_dir, o.allow_base_mismatch);
  auto task_model = train::model_from_delta(base, delta, /*fold=*/false, device);
  data::TaskSpec task = train::task_of(delta);
  data::ReadOptions options;
  if (!o.text_a.empty()) options.text_a = data::ColumnRef::parse(o.text_a);
  if (!o.text_b.empty()) options.text_b = data::ColumnRef::parse(o.text_b);
  options.type = task.type;
  options.label_names = task.label_names;
  options.unlabeled = true;
  data::Dataset inputs = data::read_dataset(o.input, options);
  if (delta.meta.value("task", json::object()).contains("is_pair")) {
    data::TaskSpec seen = task;
    seen.is_pair = inputs.is_pair;
    train::check_same_labels(task, seen, o.input);
  }
  auto tokenizer = text::load_tokenizer(o.model_dir);
  auto encoded =
      data::encode_dataset(inputs, *tokenizer, delta.meta.value("max_length", size_t{128}));
  at::Tensor logits = train::predict_logits(*task_model, encoded, o.batch_size, precision);
  std::ostringstream lines;
  for (int64_t i = 0; i < logits.size(0); ++i) {
    json row = {{"line", inputs.examples[i].line}};
    if (task.type == data::TaskType::kRegression) {
      row["score"] = logits[i][0].item<double>();
    } else {
      at::Tensor probabilities = at::softmax(logits[i], -1);
      const int64_t best = probabilities.argmax().item<int64_t>();
      row["label"] = task.label_names.at(best);
      row["probability"] = probabilities[best].item<double>();
    }
    lines << row.dump() << "\n";
  }
  if (o.output.empty()) {
    fmt::print("{}", lines.str());
  } else {
    io::write_text_atomically(o.output, lines.str());
    fmt::print(stderr, "{} predictions -> {}\n", logits.size(0), o.output);
  }
  return 0;
}

int run_export(const std::string& model_dir, const std::string& delta_dir, const std::string& out,
               bool allow_base_mismatch) {
  methods::Delta delta = methods::Delta::load(delta_dir);
  train::BaseModel base = base_for_deltas(model_dir, allow_base_mismatch);
  train::export_hf_directory(base, delta, out);
  fmt::print("{} + {} -> {} (Hugging Face {} directory)\n", model_dir, delta_dir, out,
             base.config.model_type);
  return 0;
}

// Mean |b_F - b_0| per layer and bias group (the BitFit paper's figure), as a
// table, CSV and JSON.
int run_analyze(const std::string& model_dir, const std::string& delta_dir, std::string out,
                bool json_output, bool allow_base_mismatch) {
  methods::Delta delta = methods::Delta::load(delta_dir);
  train::BaseModel base = base_for_deltas(model_dir, allow_base_mismatch);
  train::check_base_identity(base, delta);
  auto changes = methods::bias_changes(delta, base.checkpoint, base.config.base_model_prefix());
  if (changes.empty()) throw Error(delta_dir + " stores no encoder biases to analyse");
  if (out.empty()) out = (fs::path(delta_dir) / "bias_changes").string();
  std::string csv = "layer,group,name,size,mean_abs_change\n";
  json rows = json::array();
  std::map<int, std::map<std::string, double>> table;
  std::vector<std::string> groups;
  for (const auto& c : changes) {
    csv += fmt::format("{},{},{},{},{:.9g}\n", c.layer, c.group, c.name, c.size, c.mean_abs_change);
    rows.push_back({{"layer", c.layer},
                    {"group", c.group},
                    {"name", c.name},
                    {"size", c.size},
                    {"mean_abs_change", c.mean_abs_change}});
    table[c.layer][c.group] = c.mean_abs_change;
    if (std::find(groups.begin(), groups.end(), c.group) == groups.end()) groups.push_back(c.group);
  }
  io::write_text_atomically(out + ".csv", csv);
  io::write_text_atomically(out + ".json", rows.dump(2) + "\n");
  if (json_output) {
    fmt::print("{}\n", rows.dump());
    return 0;
  }
  fmt::print("mean |b_F - b_0| by layer and bias ({}):\n{:>6}", delta_dir, "layer");
  for (const auto& g : groups) fmt::print(" {:>13}", g.substr(0, 13));
  fmt::print("\n");
  for (const auto& [layer, values] : table) {
    fmt::print("{:>6}", layer < 0 ? std::string("-") : std::to_string(layer));
    for (const auto& g : groups) {
      auto it = values.find(g);
      if (it == values.end()) {
        fmt::print(" {:>13}", "");
      } else {
        fmt::print(" {:>13.6f}", it->second);
      }
    }
    fmt::print("\n");
  }
  fmt::print("wrote {}.csv and {}.json\n", out, out);
  return 0;
}

}  // namespace

void register_training_verbs(CLI::App& app, Action& action, int& threads) {
  const char* threads_help =
      "intra-op threads (0: OMP_NUM_THREADS, else every CPU the process may use: affinity and "
      "cgroup quota)";
  auto t = std::make_shared<TrainOptions>();
  auto* train = app.add_subcommand("train", "fine-tune a task and write its delta");
  train->add_option("--model,-m", t->model_dir, "base model directory")->capture_default_str();
  train
      ->add_option(
          "--method", t->method,
          "full, frozen, bitfit, child-tuning-f, child-tuning-d, fish, diff-pruning, far, lora, "
          "prefix-tuning, prompt-tuning or adapters")
      ->capture_default_str();
  train->add_option("--bias-terms", t->bias_terms,
                    "bitfit: comma-separated bias groups, e.g. query,intermediate (default all)");
  train->add_option("--reserve-p", t->reserve_p,
                    "child-tuning-f/-d: share of gradient entries kept (default 0.3)");
  train->add_option("--density", t->density,
                    "fish: share of all parameters that train, head included; diff-pruning: "
                    "share of non-head entries kept (default 0.005)");
  train->add_option("--fisher-samples", t->fisher_samples,
                    "fish: training examples for the Fisher (default 1024)");
  train->add_option("--fisher", t->fisher, "fish: empirical (gold labels) or expected Fisher");
  train->add_option("--priming", t->priming,
                    "far: share of the steps that prime every FFN weight (default 0.1)");
  train->add_option("--learned-fraction", t->learned_fraction,
                    "far: share of each FFN's nodes that train after priming (default 0.1)");
  train->add_option("--lora-rank", t->lora_rank, "lora: rank r (default 8)");
  train->add_option("--lora-alpha", t->lora_alpha,
                    "lora: alpha; the update is scaled by alpha/r (default 8)");
  train->add_option("--lora-dropout", t->lora_dropout,
                    "lora: dropout on the branch input (default 0)");
  train->add_option(
      "--target-modules", t->target_modules,
      "lora: comma-separated Dense layer names or name suffixes (default query,value)");
  train->add_option("--num-virtual-tokens", t->virtual_tokens,
                    "prefix-tuning, prompt-tuning: prefix or prompt length m (default 20)");
  train->add_option("--projection-size", t->projection_size,
                    "prefix-tuning: width of the reparameterising MLP; 0 trains the prefixes "
                    "directly, as P-Tuning v2 (default 512)");
  train
      ->add_option("--prefix-positions", t->prefix_positions,
                   "prefix-tuning: unchanged (default) or shifted by m, as HF/PEFT number them "
                   "(needed for a PEFT adapter)")
      ->check(CLI::IsMember({"unchanged", "shifted"}));
  train
      ->add_option("--prompt-placement", t->prompt_placement,
                   "prompt-tuning: after_cls (default) or start, as PEFT (needed for a PEFT "
                   "adapter)")
      ->check(CLI::IsMember({"after_cls", "start"}));
  train
      ->add_option("--prompt-init", t->prompt_init,
                   "prompt-tuning: random, vocab (default), labels (class-label words) or text")
      ->check(CLI::IsMember({"random", "vocab", "labels", "text"}));
  train->add_option("--prompt-init-text", t->prompt_init_text,
                    "prompt-tuning: the text --prompt-init text starts from");
  train->add_option("--bottleneck", t->bottleneck,
                    "adapters: bottleneck width of each adapter (default 64)");
  train
      ->add_option("--finetune-lr", t->finetune_lr,
                   "diff-pruning: learning rate of the fixed-mask stage (--lr is stage 1's)")
      ->capture_default_str();
  train
      ->add_option("--finetune-epochs", t->finetune_epochs,
                   "diff-pruning: epochs of the fixed-mask stage (--epochs is stage 1's)")
      ->capture_default_str();
  train->add_option("--out,-o", t->out, "run directory")->capture_default_str();
  add_data_options(train, t->data, true);
  train->add_option("--lr", t->learning_rate, "learning rate (default: the method's recipe)");
  train->add_option("--batch-size", t->batch_size, "examples per step (default: recipe)");
  train->add_option("--epochs", t->epochs, "training epochs (default: recipe)");
  train->add_option("--max-steps", t->config.max_steps, "stop after this many optimizer steps");
  train->add_option("--schedule", t->schedule, "constant, linear or constant_with_warmup");
  train->add_option("--warmup-ratio", t->warmup_ratio, "fraction of steps warming up");
  train->add_option("--weight-decay", t->weight_decay, "decoupled weight decay");
  train->add_option("--max-grad-norm", t->config.max_grad_norm, "gradient clipping (0: off)")
      ->capture_default_str();
  train
      ->add_option("--gradient-accumulation", t->config.gradient_accumulation,
                   "batches per optimizer step")
      ->capture_default_str();
  train->add_option("--eval-every", t->config.eval_every, "evaluate every N steps (0: per epoch)");
  train
      ->add_option("--log-every", t->config.log_every,
                   "steps per mean training loss line in metrics.jsonl (0: none)")
      ->capture_default_str();
  train
      ->add_option("--dropout", t->dropout,
                   "dropout rate of every dropout layer (default: the model's config)")
      ->check(CLI::Range(0.0, 0.99));
  train->add_option("--init-from", t->init_from,
                    "safetensors file of starting values for task-model parameters, by name "
                    "(e.g. classifier.weight); or a delta directory, whose task model's encoder "
                    "(all but the head) is the start (task transfer: with --method frozen only a "
                    "new head trains on it)");
  train->add_option("--early-stopping", t->config.early_stopping_patience,
                    "stop after N evaluations without improvement (0: off)");
  train->add_option("--checkpoint-every", t->config.checkpoint_every,
                    "checkpoint every N steps (0: off)");
  train->add_option("--seed", t->config.seed, "random seed")->capture_default_str();
  train->add_flag("--bf16", t->config.bf16, "bf16 mixed precision (autocast)");
  train->add_flag("--fp16", t->config.fp16,
                  "fp16 mixed precision (autocast, dynamic loss scaling; CUDA only)");
  train->add_option("--device", t->device, kDeviceHelp)->capture_default_str();
  train
      ->add_option("--frozen-weights", t->frozen_weights,
                   "fp32, bf16 or auto: frozen Dense weights stored in bf16 (with --bf16; "
                   "half their memory, the same computation); auto: bf16 with --bf16")
      ->capture_default_str();
  train->add_flag("--gradient-checkpointing", t->gradient_checkpointing,
                  "recompute each layer during backward instead of keeping its activations "
                  "(less memory, one more forward pass)");
  train->add_flag("--resume", t->resume, "continue the run in --out from its checkpoint");
  train
      ->add_option("--job-timeout", t->job_timeout_s,
                   "data-parallel job (torchrun's environment, deltatune launch): seconds a rank "
                   "waits for the others before it stops with an error")
      ->check(CLI::Range(1.0, 86400.0))
      ->capture_default_str();
  train
      ->add_option("--overlap-all-reduce", t->overlap_all_reduce,
                   "data-parallel job: all-reduce the gradients in buckets while backward runs "
                   "(methods that send every gradient whole) instead of after it: true, false "
                   "or auto (true on GPUs, false on CPUs, where it measured slower)")
      ->check(CLI::IsMember({"auto", "true", "false"}))
      ->capture_default_str();
  train->add_flag("--overwrite", t->overwrite,
                  "replace a different run that --out already holds (default: refuse)");
  train->add_flag("--json", t->json_output, "print the summary as JSON");
  train->add_option("--threads", threads, threads_help);
  train->callback([&action, t] { action = [t] { return run_train(*t); }; });

  auto e = std::make_shared<EvalOptions>();
  auto* eval = app.add_subcommand("eval", "evaluate a delta on its task's dev set");
  eval->add_option("--model,-m", e->model_dir, "base model directory")->capture_default_str();
  eval->add_option("--delta,-d", e->delta_dir, "delta directory")->required();
  eval->add_option("--ensemble-delta", e->more_deltas,
                   "further prompt-tuning deltas of the task: evaluates the prompt ensemble "
                   "(repeatable)");
  eval->add_option("--ensemble", e->ensemble, "how an ensemble combines: mean or vote")
      ->check(CLI::IsMember({"mean", "vote"}))
      ->capture_default_str();
  add_data_options(eval, e->data, false);
  eval->add_option("--batch-size", e->batch_size, "examples per batch")->capture_default_str();
  auto* eval_precision = add_precision_option(eval, e->precision);
  eval->add_flag("--bf16", e->bf16, "the same as --precision bf16")->excludes(eval_precision);
  eval->add_option("--device", e->device, kDeviceHelp)->capture_default_str();
  eval->add_flag("--json", e->json_output, "print JSON");
  eval->add_flag("--allow-base-mismatch", e->allow_base_mismatch, kAllowBaseMismatchHelp);
  eval->add_option("--threads", threads, threads_help);
  eval->callback([&action, e] { action = [e] { return run_eval(*e); }; });

  auto p = std::make_shared<PredictOptions>();
  auto* predict = app.add_subcommand("predict", "predict labels for a file with a delta");
  predict->add_option("--model,-m", p->model_dir, "base model directory")->capture_default_str();
  predict->add_option("--delta,-d", p->delta_dir, "delta directory")->required();
  predict->add_option("--input,-i", p->input, "TSV, CSV or JSONL file")->required();
  predict->add_option("--output", p->output, "JSONL predictions (default: stdout)");
  predict->add_option("--text-a", p->text_a, "column of the first text");
  predict->add_option("--text-b", p->text_b, "column of the second text");
  predict->add_flag("--allow-base-mismatch", p->allow_base_mismatch, kAllowBaseMismatchHelp);
  predict->add_option("--device", p->device, kDeviceHelp)->capture_default_str();
  add_precision_option(predict, p->precision);
  predict->add_option("--threads", threads, threads_help);
  predict->callback([&action, p] { action = [p] { return run_predict(*p); }; });

  struct DeltaVerbOptions {
    std::string model_dir = default_model_dir();
    std::string delta_dir, out;
    bool json_output = false;
    bool allow_base_mismatch = false;
  };
  auto x = std::make_shared<DeltaVerbOptions>();
  auto* export_verb =
      app.add_subcommand("export", "write base + delta as a Hugging Face model directory");
  export_verb->add_option("--model,-m", x->model_dir, "base model directory")
      ->capture_default_str();
  export_verb->add_option("--delta,-d", x->delta_dir, "delta directory")->required();
  export_verb->add_option("--out,-o", x->out, "new directory to write")->required();
  export_verb->add_flag("--allow-base-mismatch", x->allow_base_mismatch, kAllowBaseMismatchHelp);
  export_verb->callback([&action, x] {
    action = [x] { return run_export(x->model_dir, x->delta_dir, x->out, x->allow_base_mismatch); };
  });

  auto a = std::make_shared<DeltaVerbOptions>();
  auto* analyze =
      app.add_subcommand("analyze", "which biases moved: mean |b_F - b_0| per layer and type");
  analyze->add_option("--model,-m", a->model_dir, "base model directory")->capture_default_str();
  analyze->add_option("--delta,-d", a->delta_dir, "delta directory")->required();
  analyze->add_option("--out,-o", a->out,
                      "output prefix for .csv and .json (default: <delta>/bias_changes)");
  analyze->add_flag("--json", a->json_output, "print JSON");
  analyze->add_flag("--allow-base-mismatch", a->allow_base_mismatch, kAllowBaseMismatchHelp);
  analyze->callback([&action, a] {
    action = [a] {
      return run_analyze(a->model_dir, a->delta_dir, a->out, a->json_output,
                         a->allow_base_mismatch);
    };
  });
}

}  // namespace deltatune::cli
