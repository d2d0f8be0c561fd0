#include "deltatune/train/task_model.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (its home from fmt 11 on, as LibTorch 2.x ships)
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <optional>

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/io/cpus.h"
#include "deltatune/io/safetensors.h"
#include "deltatune/io/value_cache.h"
#include "deltatune/methods/peft_format.h"
#include "deltatune/model/device.h"
#include "deltatune/version.h"

namespace deltatune::train {
namespace fs = std::filesystem;
using json = nlohmann::json;

json BaseModel::identity() const {
  return {{"name", name},
          {"path", fs::absolute(directory).string()},
          {"model_type", config.model_type},
          {"checksum", checksum},
          {"checksum_scope", kChecksumScope},
          {"hidden_size", config.hidden_size},
          {"num_hidden_layers", config.num_hidden_layers},
          {"num_attention_heads", config.num_attention_heads}};
}

BaseModel load_base(const fs::path& directory) {
  BaseModel base;
  base.directory = directory;
  base.name = fs::absolute(directory).lexically_normal().filename().string();
  if (base.name.empty()) base.name = fs::absolute(directory).parent_path().filename().string();
  base.config = model::EncoderConfig::from_file(directory / "config.json");
  base.checkpoint = model::read_checkpoint(directory);
  model::check_config_matches(base.config, base.checkpoint, directory.string());
  // The checksum reads every weight (0.05 s for MiniLM, more for larger
  // bases, at each start of predict, eval or serve): cached under the exact
  // identity of the files it was computed from (any write to them changes it).
  std::string key = fmt::format("weights_checksum v1 architecture {}",
                                static_cast<int>(base.config.architecture));
  bool cacheable = true;
  for (const fs::path& file : model::checkpoint_files(directory)) {
    const std::string identity = io::file_identity(file);
    cacheable = cacheable && !identity.empty();
    key += " " + fs::absolute(file).lexically_normal().string() + "=" + identity;
  }
  if (auto cached = cacheable ? io::cached_value("base-checksums", key) : std::nullopt) {
    base.checksum = *cached;
  } else {
    // From a mapping of its own where the files are mapped: dropped once
    // hashed, so the pages hashing touched do not stay resident in (and are
    // not counted twice by the RSS of) a process that also maps them for its
    // task model (+440 MB of RSS for a BERT-base-size base before).
    base.checksum = model::weights_checksum(model::checkpoint_is_file_mapped(directory)
                                                ? model::read_checkpoint(directory)
                                                : base.checkpoint,
                                            base.config.architecture);
    if (cacheable) io::remember_value("base-checksums", key, base.checksum);
  }
  return base;
}

void override_dropout(BaseModel& base, double rate) {
  base.config.hidden_dropout_prob = rate;
  base.config.attention_probs_dropout_prob = rate;
  base.config.classifier_dropout = rate;
}

model::SequenceClassifier make_task_model(const BaseModel& base, int64_t num_labels, uint64_t seed,
                                          const at::Device& device) {
  model::SequenceClassifier task_model{nullptr};
  {
    // Every parameter is loaded or initialised below: none is drawn twice.
    model::SkipInitialisation no_draws;
    task_model = model::SequenceClassifier(base.config, num_labels);
  }
  model::SequenceClassifierImpl* raw = task_model.get();
  // Frozen weights are not copied: the model reads its own private mapping of
  // the base's files (a fresh read, so writes to its parameters stay in pages
  // of that mapping and base.checkpoint keeps the base's values for deltas).
  const model::LoadMode mode = model::load_mode_for(base.directory);
  const std::map<std::string, at::Tensor> source =
      mode == model::LoadMode::kAdopt ? model::read_checkpoint(base.directory) : base.checkpoint;
  // A base that is itself a task model brings a classifier for its own labels:
  // a new task gets a fresh one (HF would refuse a size mismatch).
  auto is_classifier = [](const std::string& name) { return name.rfind("classifier.", 0) == 0; };
  std::map<std::string, at::Tensor> encoder_only;
  for (const auto& [key, value] : source)
    if (!is_classifier(key)) encoder_only.emplace(key, value);
  const model::LoadReport report = model::load_state(
      *task_model, encoder_only, base.config.base_model_prefix(), base.directory.string(),
      [raw](const std::string& name) { return raw->is_head_parameter(name); }, mode);
  std::vector<std::string> head, lacking;
  for (const std::string& name : report.initialized)
    (is_classifier(name) ? head : lacking).push_back(name);
  // What the base lacks besides the new classifier (a BERT pooler some
  // checkpoints omit) is drawn before the seed below, so that the classifier's
  // values do not depend on it.
  model::initialise_missing(*task_model, lacking, base.config.initializer_range);
  // The head: the generator is seeded right before the draw, so the head is
  // the first normals of the seed's stream: PyTorch's `torch.manual_seed(seed);
  // classifier.weight.normal_(0, initializer_range)` gives the same values.
  at::manual_seed(seed);
  model::initialise_missing(*task_model, head, base.config.initializer_range);
  // Drawn on the CPU, then moved: the same head on every device.
  if (!device.is_cpu()) task_model->to(device);
  return task_model;
}

methods::Delta build_delta(const BaseModel& base, model::SequenceClassifierImpl& model,
                           const methods::Method& method, const data::TaskSpec& task,
                           size_t max_length, const TrainConfig& config,
                           const TrainResult& result) {
  methods::Delta delta;
  // What the method trains, and what --init-from set: a delta applied to the
  // base must give the trained model back (task transfer's encoder included).
  auto stored = method.stored_parameters(model);
  for (const std::string& name : config.initialised_parameters)
    if (std::none_of(stored.begin(), stored.end(),
                     [&](const auto& entry) { return entry.first == name; }))
      stored.emplace_back(name, methods::StorageKind::kSparse);
  delta.tensors = methods::collect_delta_tensors(model, base.checkpoint, stored,
                                                 base.config.base_model_prefix());
  int64_t trainable = 0, total = 0;
  for (const auto& p : model.parameters(true)) {
    total += p.numel();
    if (p.requires_grad()) trainable += p.numel();
  }
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char created[32];
  std::strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  delta.meta = {
      {"deltatune_version", kVersion},
      {"created", created},
      {"method", {{"name", method.name()}, {"config", method.config()}}},
      {"base_model", base.identity()},
      {"task",
       {{"name", task.name},
        {"source", task.hf_name.empty() ? "user" : "glue"},
        {"type", task.type == data::TaskType::kRegression ? "regression" : "classification"},
        {"is_pair", task.is_pair},
        {"metrics", task.metrics},
        {"main_metric", task.main_metric}}},
      {"label_names", task.label_names},
      {"num_labels", model.num_labels()},
      {"max_length", max_length},
      {"training", config.to_json()},
      {"dev", result.best.to_json()},
      {"best_step", result.best_step},
      {"steps", result.steps},
      {"parameters", {{"total", total}, {"trainable", trainable}}}};
  return delta;
}

json save_run_outputs(const BaseModel& base, model::SequenceClassifierImpl& model,
                      const methods::Method& method, const data::TaskSpec& task, size_t max_length,
                      const TrainConfig& config, const MethodRun& run, const fs::path& out) {
  const TrainResult& result = run.result;
  const bool writer = config.collective == nullptr || config.collective->rank() == 0;
  methods::Delta delta = build_delta(base, model, method, task, max_length, config, result);
  const fs::path delta_dir = out / "delta";
  if (writer) delta.save(delta_dir);
  std::optional<fs::path> peft_dir;
  if (methods::has_peft_format(method.name())) {
    if (auto why_not = methods::peft_incompatibility(delta)) {
      if (writer) fmt::print(stderr, "no PEFT adapter written: {}\n", *why_not);
    } else {
      peft_dir = out / "peft";
      if (writer) methods::save_peft_adapter(delta, *peft_dir);
    }
  }
  json summary = {{"task", task.name},
                  {"method", method.name()},
                  {"dev", result.best.to_json()},
                  {"best_step", result.best_step},
                  {"steps", result.steps},
                  {"train_seconds", result.seconds},
                  {"train_tokens_per_s", result.train_tokens_per_second},
                  {"delta", delta_dir.string()},
                  {"delta_bytes", delta.stored_bytes()},
                  {"delta_values", delta.stored_values()}};
  if (config.collective) summary["world_size"] = config.collective->world_size();
  // Where the figures come from (reports print it beside them).
  summary["environment"] = {{"device", model::describe_device(model::device_of(model))},
                            {"precision", model::precision_name(config.precision())},
                            {"threads", at::get_num_threads()},
                            {"cpu", io::cpu_model_name()},
                            {"libtorch", TORCH_VERSION},
                            {"deltatune", kVersion}};
  if (!run.stages.empty()) summary["stages"] = run.stages;
  if (peft_dir) summary["peft_adapter"] = peft_dir->string();
  if (writer) io::write_text_atomically(out / "summary.json", summary.dump(2) + "\n");
  return summary;
}

std::unique_ptr<methods::Method> method_of(const methods::Delta& delta) {
  const json& method = delta.meta.value("method", json::object());
  if (!method.contains("name")) throw Error("delta.json: missing field 'method.name'");
  return methods::make_method(method["name"].get<std::string>(),
                              method.value("config", json::object()));
}

void check_base_identity(const BaseModel& base, const methods::Delta& delta) {
  const json& identity = delta.meta.value("base_model", json::object());
  const std::string expected = identity.value("checksum", "");
  // A PEFT adapter records only the base's name, not its weights: it is not
  // checked here (a base of another shape still fails on the first tensor).
  if (!identity.value("verifiable", true)) return;
  // Deltas older than "checksum_scope" recorded a checksum that skipped the
  // pooler; they are checked against that, with a note that it is weaker.
  const bool legacy = identity.value("checksum_scope", std::string()) != kChecksumScope;
  const std::string actual =
      legacy ? model::legacy_weights_checksum(base.checkpoint) : base.checksum;
  if (expected == actual) {
    if (legacy && base.config.architecture == model::Architecture::kBert)
      fmt::print(stderr,
                 "note: this delta was made by an older deltatune whose base checksum skips "
                 "the pooler; its pooler is not verified\n");
    return;
  }
  const std::string mismatch = "delta was made on base '" +
                               identity.value("name", std::string("?")) + "' (weights " +
                               expected.substr(0, 12) + "...), not on " + base.directory.string() +
                               " (weights " + actual.substr(0, 12) + "...)";
  if (!base.allow_mismatch) throw Error(mismatch + "; --allow-base-mismatch applies it anyway");
  fmt::print(stderr, "warning: {}; applied anyway (--allow-base-mismatch)\n", mismatch);
}

model::SequenceClassifier model_from_delta(const BaseModel& base, const methods::Delta& delta,
                                           bool fold, const at::Device& device) {
  check_base_identity(base, delta);
  const int64_t labels = delta.meta.value("num_labels", int64_t{0});
  if (labels < 1) throw Error("delta.json: missing field 'num_labels'");
  model::SequenceClassifier task_model = make_task_model(base, labels, 0);
  auto method = method_of(delta);
  method->attach_modules(*task_model);
  methods::apply_delta(methods::with_encoder_name(delta, base.config.base_model_prefix()),
                       *task_model);
  if (fold) method->fold_into_weights(*task_model);
  task_model->eval();
  // Applied on the CPU, where the delta was read; the whole model then moves.
  if (!device.is_cpu()) task_model->to(device);
  return task_model;
}

namespace {

// Copies each named value into the task-model parameter of that name; every
// name and shape is checked before anything is copied. `source` names where
// the values come from in errors. Returns the names set.
std::vector<std::string> copy_into_parameters(model::SequenceClassifierImpl& task_model,
                                              const std::map<std::string, at::Tensor>& values,
                                              const std::string& source) {
  auto parameters = task_model.named_parameters(true);
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;
  std::vector<std::string> names;
  for (const auto& [name, value] : values) {
    at::Tensor* target = parameters.find(name);
    if (target == nullptr)
      throw Error(
          fmt::format("{}: tensor '{}' is not a parameter of the task model", source, name));
    if (target->sizes() != value.sizes())
      throw Error(fmt::format("{}: tensor '{}' has shape [{}], the task model's is [{}]", source,
                              name, fmt::join(value.sizes(), ", "),
                              fmt::join(target->sizes(), ", ")));
    copies.emplace_back(*target, value);
    names.push_back(name);
  }
  at::NoGradGuard no_grad;
  for (auto& [target, value] : copies) target.copy_(value);
  return names;
}

}  // namespace

std::vector<std::string> load_starting_values(model::SequenceClassifierImpl& task_model,
                                              const fs::path& path) {
  return copy_into_parameters(task_model, io::SafetensorsFile::open(path).load_all(),
                              path.string());
}

std::vector<std::string> load_encoder_from_delta(const BaseModel& base,
                                                 model::SequenceClassifierImpl& task_model,
                                                 const fs::path& delta_dir) {
  const methods::Delta delta = methods::Delta::load(delta_dir);
  const model::SequenceClassifier source = model_from_delta(base, delta, /*fold=*/true);
  std::map<std::string, at::Tensor> encoder;
  for (const auto& item : source->named_parameters(true))
    if (item.key().rfind("classifier.", 0) != 0) encoder.emplace(item.key(), item.value());
  return copy_into_parameters(task_model, encoder, delta_dir.string());
}

namespace {

std::string describe_labels(const data::TaskSpec& task) {
  if (task.type == data::TaskType::kRegression) return "a regression target";
  return fmt::format("labels [{}]", fmt::join(task.label_names, ", "));
}

std::string describe_inputs(bool is_pair) { return is_pair ? "text pairs" : "single texts"; }

}  // namespace

data::TaskSpec task_of(const methods::Delta& delta) {
  const json& task = delta.meta.value("task", json::object());
  const std::string name = task.value("name", "");
  const int64_t num_labels = delta.meta.value("num_labels", int64_t{0});
  const bool regression =
      task.value("type", "") == "regression" || (!task.contains("type") && num_labels == 1);
  auto labels = delta.meta.value("label_names", std::vector<std::string>{});
  const bool labels_recorded = !labels.empty();
  if (labels.empty() && !regression)  // a PEFT adapter names no labels
    for (int64_t i = 0; i < num_labels; ++i) labels.push_back("LABEL_" + std::to_string(i));
  data::TaskSpec recorded = data::custom_task(
      name, regression ? data::TaskType::kRegression : data::TaskType::kClassification, labels,
      task.value("is_pair", false));
  // The delta's own record wins. It is GLUE's task only where it says so
  // ("source": "glue"), or, in deltas older than that field, where its name
  // and every recorded field agree with GLUE's spec: a user task named
  // "sst2" keeps its own labels and data.
  const std::string source = task.value("source", "");
  if (source == "user") return recorded;
  const data::TaskSpec* glue = nullptr;
  try {
    glue = &data::find_glue_task(name);
  } catch (const Error&) {
    if (source == "glue") throw;
    return recorded;
  }
  const bool agrees = glue->type == recorded.type && glue->is_pair == recorded.is_pair &&
                      (glue->label_names == recorded.label_names || !labels_recorded);
  if (agrees) return *glue;
  if (source == "glue")
    throw Error(
        fmt::format("delta.json: task '{}' is recorded as GLUE's, but with {} and {}; "
                    "GLUE's {} has {} and {}",
                    name, describe_labels(recorded), describe_inputs(recorded.is_pair), glue->name,
                    describe_labels(*glue), describe_inputs(glue->is_pair)));
  return recorded;
}

void check_same_labels(const data::TaskSpec& trained, const data::TaskSpec& evaluated,
                       const std::string& data_source) {
  if (trained.type != evaluated.type || trained.label_names != evaluated.label_names)
    throw Error(fmt::format("{} has {}, but the delta was trained on {} with {}", data_source,
                            describe_labels(evaluated), trained.name, describe_labels(trained)));
  if (trained.is_pair != evaluated.is_pair)
    throw Error(fmt::format("{} has {}, but the delta was trained on {} with {}{}", data_source,
                            describe_inputs(evaluated.is_pair), trained.name,
                            describe_inputs(trained.is_pair),
                            trained.is_pair ? " (give --text-b)" : ""));
}

}  // namespace deltatune::train
