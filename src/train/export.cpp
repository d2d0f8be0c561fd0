#include "deltatune/train/export.h"

#include <unistd.h>

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/io/safetensors.h"

namespace deltatune::train {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* architecture_name(model::Architecture architecture) {
  switch (architecture) {
    case model::Architecture::kBert:
      return "BertForSequenceClassification";
    case model::Architecture::kRoberta:
      return "RobertaForSequenceClassification";
    case model::Architecture::kElectra:
      return "ElectraForSequenceClassification";
  }
  return "BertForSequenceClassification";
}

const char* kTokenizerFiles[] = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
    "merges.txt"};

}  // namespace

void export_hf_directory(const BaseModel& base, const methods::Delta& delta, const fs::path& out) {
  if (fs::exists(out) && !fs::is_empty(out))
    throw Error(out.string() + " exists and is not empty: choose a new directory");
  if (!method_of(delta)->folds_into_weights())
    throw Error("a delta of method '" +
                delta.meta.value("method", json::object()).value("name", std::string("?")) +
                "' changes the model's computation and cannot be merged into a plain HF model; "
                "use its PEFT adapter (the run's peft/ directory) where PEFT has one");
  // LoRA and the like: their modules merge into the weights HF loads.
  auto task_model = model_from_delta(base, delta, /*fold=*/true);

  model::EncoderConfig config = base.config;
  const auto labels = delta.meta.value("label_names", std::vector<std::string>{});
  const int64_t num_labels = task_model->num_labels();
  config.id2label.clear();
  for (int64_t i = 0; i < num_labels; ++i)
    config.id2label.push_back(
        i < static_cast<int64_t>(labels.size()) ? labels[i] : "LABEL_" + std::to_string(i));
  config.problem_type = num_labels == 1 ? "regression" : "single_label_classification";
  json config_json = config.to_json();
  config_json["architectures"] = {architecture_name(config.architecture)};
  config_json["finetuning_task"] = delta.meta.value("task", json::object()).value("name", "");
  config_json["deltatune"] = {{"method", delta.meta.value("method", json::object())},
                              {"base_model", delta.meta.value("base_model", json::object())}};

  io::write_directory_atomically(out, [&](const fs::path& staging) {
    io::save_safetensors(staging / "model.safetensors", model::named_state(*task_model),
                         {{"format", "pt"}});
    io::write_text_atomically(staging / "config.json", config_json.dump(2) + "\n");
    for (const char* file : kTokenizerFiles)
      if (fs::exists(base.directory / file)) fs::copy_file(base.directory / file, staging / file);
  });
}

}  // namespace deltatune::train
