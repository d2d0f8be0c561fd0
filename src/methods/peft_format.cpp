#include "deltatune/methods/peft_format.h"

#include <ATen/ATen.h>
#include <fmt/core.h>
#include <fmt/ranges.h>

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/io/safetensors.h"
#include "deltatune/methods/method.h"
#include "deltatune/methods/prefix_tuning.h"
#include "deltatune/methods/prompt_tuning.h"

namespace deltatune::methods {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const std::string kPrefix = "base_model.model.";
// Prompt learning wraps the HF model one level less deep.
const std::string kPromptLearningPrefix = "base_model.";
const std::string kPromptKey = "prompt_embeddings";
// The encoder's module name ("bert", "roberta", ...) is not in a PEFT prompt
// adapter; its tensor names use kEncoderToken (delta.h) instead.
const std::string kOurs = ".lora.lora_";
const std::string kPeft = ".lora_";

std::string replace_once(std::string s, const std::string& from, const std::string& to) {
  const auto at = s.find(from);
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

// delta.json's fields for an adapter PEFT made: the base is known by name
// only, so it cannot be verified; labels and task are unknown.
json imported_meta(const json& adapter_config, int64_t num_labels, const std::string& method,
                   const json& method_config) {
  return {{"base_model",
           {{"name", adapter_config.value("base_model_name_or_path", std::string())},
            {"checksum", ""},
            {"verifiable", false}}},
          {"num_labels", num_labels},
          {"label_names", json::array()},
          {"task", json::object()},
          {"method", {{"name", method}, {"config", method_config}}}};
}

// A directory deltatune wrote carries its delta.json in the safetensors header
// ("deltatune"): labels, task and base checksum come back from it; the method
// read from PEFT's own fields stays.
void restore_deltatune_meta(const io::SafetensorsFile& file, const fs::path& weights_path,
                            Delta& delta) {
  const auto& metadata = file.metadata();
  if (auto it = metadata.find("deltatune"); it != metadata.end()) {
    json method = delta.meta["method"];
    try {
      delta.meta = json::parse(it->second);
    } catch (const json::exception& e) {
      throw Error(weights_path.string() + ": header field 'deltatune' is not valid JSON");
    }
    if (delta.meta.contains("method")) method = delta.meta["method"];
    delta.meta["method"] = method;
  }
  delta.meta["imported_from"] = "peft";
}

fs::path adapter_weights_path(const fs::path& dir) {
  const fs::path path = dir / "adapter_model.safetensors";
  if (!fs::exists(path))
    throw Error(dir.string() + ": no adapter_model.safetensors (adapter_model.bin is not read)");
  return path;
}

}  // namespace

std::string peft_key_of(const std::string& parameter) {
  return kPrefix + replace_once(parameter, kOurs, kPeft);
}

std::string parameter_of_peft_key(const std::string& key) {
  if (key.rfind(kPrefix, 0) != 0) return "";
  std::string name = key.substr(kPrefix.size());
  name = replace_once(name, ".modules_to_save.default.", ".");
  name = replace_once(name, ".modules_to_save.", ".");
  if (is_classifier_parameter(name)) return name;
  for (const char* factor : {".lora_A.weight", ".lora_B.weight"}) {
    const std::string f = factor;
    if (name.size() > f.size() && name.compare(name.size() - f.size(), f.size(), f) == 0)
      return name.substr(0, name.size() - f.size()) + ".lora" + f;
  }
  return "";
}

bool is_peft_adapter(const fs::path& dir) { return fs::exists(dir / "adapter_config.json"); }

bool has_peft_format(const std::string& method) {
  return method == "lora" || method == "prefix-tuning" || method == "prompt-tuning";
}

std::optional<std::string> peft_incompatibility(const Delta& delta) {
  const json method = delta.meta.value("method", json::object());
  const std::string name = method.value("name", "?");
  const json config = method.value("config", json::object());
  if (!has_peft_format(name)) return "PEFT has no format for " + name;
  if (name == "prefix-tuning" && config.value("positions", "unchanged") != "shifted")
    return "PEFT numbers tokens after the prefix; train with --prefix-positions shifted for an "
           "adapter PEFT computes identically";
  if (name == "prompt-tuning" && config.value("placement", "after_cls") != "start")
    return "PEFT puts the prompt before [CLS]; train with --prompt-placement start for an "
           "adapter PEFT computes identically";
  return std::nullopt;
}

namespace {

// PEFT's prompt-learning fields for this model, from the delta's tensors.
json prompt_learning_config(const Delta& delta, const std::string& peft_type, int64_t length,
                            int64_t width) {
  const json base = delta.meta.value("base_model", json::object());
  const int64_t layers = base.value("num_hidden_layers", int64_t{0});
  const int64_t heads = base.value("num_attention_heads", int64_t{0});
  if (layers < 1 || heads < 1)
    throw Error(
        "delta.json: base_model lacks num_hidden_layers / num_attention_heads, which a PEFT " +
        peft_type + " adapter records");
  return {{"peft_type", peft_type},
          {"task_type", "SEQ_CLS"},
          {"auto_mapping", nullptr},
          {"base_model_name_or_path", base.value("name", "")},
          {"revision", nullptr},
          {"inference_mode", true},
          {"num_virtual_tokens", length},
          {"token_dim", width},
          {"num_transformer_submodules", 1},
          {"num_attention_heads", heads},
          {"num_layers", layers}};
}

}  // namespace

void save_peft_adapter(const Delta& delta, const fs::path& dir) {
  const json method = delta.meta.value("method", json::object());
  const std::string name = method.value("name", "?");
  if (auto why_not = peft_incompatibility(delta))
    throw Error("no PEFT adapter for this delta: " + *why_not);
  const json config = method.value("config", json::object());
  json adapter;
  io::NamedTensors tensors;
  if (name == "lora") {
    adapter = {{"peft_type", "LORA"},
               {"task_type", "SEQ_CLS"},
               {"base_model_name_or_path",
                delta.meta.value("base_model", json::object()).value("name", "")},
               {"revision", nullptr},
               {"r", config.at("rank")},
               {"lora_alpha", config.at("alpha")},
               {"lora_dropout", config.at("dropout")},
               {"target_modules", config.at("target_modules")},
               {"bias", "none"},
               {"fan_in_fan_out", false},
               {"modules_to_save", json::array({"classifier"})},
               {"init_lora_weights", true},
               {"inference_mode", true},
               {"layers_to_transform", nullptr},
               {"layers_pattern", nullptr},
               {"rank_pattern", json::object()},
               {"alpha_pattern", json::object()}};
    for (const auto& t : delta.tensors) {
      if (t.sparse()) throw Error("LoRA delta tensor '" + t.name + "' is sparse");
      tensors.emplace_back(peft_key_of(t.name), t.values);
    }
  } else {
    const bool prefix = name == "prefix-tuning";
    at::Tensor table;
    for (const auto& t : delta.tensors) {
      if (prefix ? is_prefix_table(t.name) : is_prompt_parameter(t.name)) {
        table = t.values;
        tensors.emplace_back(kPromptKey, t.values);
      } else if (is_classifier_parameter(t.name)) {
        tensors.emplace_back(kPromptLearningPrefix + t.name, t.values);
      } else {
        throw Error("delta tensor '" + t.name + "' has no place in a PEFT " + name + " adapter");
      }
    }
    if (!table.defined()) throw Error("the " + name + " delta holds no prefix or prompt tensor");
    const int64_t width =
        delta.meta.value("base_model", json::object()).value("hidden_size", int64_t{0});
    if (prefix) {
      adapter = prompt_learning_config(delta, "PREFIX_TUNING", table.size(0), width);
      const bool mlp = config.value("reparameterize", true);
      // PEFT rebuilds the plain table at inference; these two fields only
      // describe how it was trained.
      adapter["prefix_projection"] = mlp;
      adapter["encoder_hidden_size"] = mlp ? config.value("projection_size", width) : width;
      if (table.size(1) != 2 * adapter["num_layers"].get<int64_t>() * width)
        throw Error("prefix table has width " + std::to_string(table.size(1)) +
                    ", not 2 x layers x hidden");
    } else {
      adapter = prompt_learning_config(delta, "PROMPT_TUNING", table.size(0), width);
      adapter["prompt_tuning_init"] = "RANDOM";  // the trained prompt is stored; init is moot
      adapter["prompt_tuning_init_text"] = nullptr;
      adapter["tokenizer_name_or_path"] = nullptr;
      adapter["tokenizer_kwargs"] = nullptr;
    }
  }
  io::write_directory_atomically(dir, [&](const fs::path& staging) {
    io::save_safetensors(staging / "adapter_model.safetensors", tensors,
                         {{"format", "pt"}, {"deltatune", delta.meta.dump()}});
    io::write_text_atomically(staging / "adapter_config.json", adapter.dump(2) + "\n");
  });
}

namespace {

// A PEFT PREFIX_TUNING or PROMPT_TUNING adapter for sequence classification.
Delta load_prompt_learning_adapter(const fs::path& dir, const json& config,
                                   const std::string& peft_type) {
  const fs::path config_path = dir / "adapter_config.json";
  auto field = [&](const char* key) -> int64_t {
    if (!config.contains(key) || !config[key].is_number_integer())
      throw Error(config_path.string() + ": field '" + key + "' must be an integer");
    return config[key].get<int64_t>();
  };
  const int64_t length = field("num_virtual_tokens"), width = field("token_dim");
  const int64_t layers = field("num_layers");
  if (config.value("num_transformer_submodules", 1) != 1)
    throw Error(config_path.string() +
                ": field 'num_transformer_submodules' must be 1 (an encoder)");
  const bool prefix = peft_type == "PREFIX_TUNING";
  const fs::path weights_path = adapter_weights_path(dir);
  auto file = io::SafetensorsFile::open(weights_path);
  Delta delta;
  int64_t num_labels = 0;
  bool found_table = false;
  for (const auto& entry : file.entries()) {
    DeltaTensor t;
    t.values = file.tensor(entry.name).to(at::kFloat).clone();
    t.shape = t.values.sizes().vec();
    if (entry.name == kPromptKey) {
      const int64_t expected = prefix ? 2 * layers * width : width;
      if (t.values.dim() != 2 || t.values.size(0) != length || t.values.size(1) != expected)
        throw Error(fmt::format("{}: tensor '{}' has shape [{}], expected [{}, {}]",
                                weights_path.string(), kPromptKey, fmt::join(t.shape, ", "), length,
                                expected));
      t.name = std::string(kEncoderToken) + (prefix ? ".prefix.key_values" : ".prompt.embedding");
      found_table = true;
    } else {
      std::string name = entry.name;
      for (const std::string& p : {kPrefix, kPromptLearningPrefix})
        if (name.rfind(p, 0) == 0) {
          name = name.substr(p.size());
          break;
        }
      name = replace_once(name, ".modules_to_save.default.", ".");
      if (!is_classifier_parameter(name))
        throw Error(weights_path.string() + ": tensor '" + entry.name +
                    "' is neither the prompt nor the classifier");
      t.name = name;
      if (name == "classifier.weight" || name == "classifier.out_proj.weight")
        num_labels = t.values.size(0);
    }
    delta.tensors.push_back(std::move(t));
  }
  if (!found_table) throw Error(weights_path.string() + ": no tensor 'prompt_embeddings'");
  if (num_labels == 0)
    throw Error(weights_path.string() +
                ": no classifier weight (classifier.weight or classifier.out_proj.weight)");
  json method_config;
  if (prefix) {
    const json hidden = config.value("encoder_hidden_size", json());  // null when not projected
    method_config = {
        {"length", length},
        {"reparameterize", config.value("prefix_projection", false)},
        {"projection_size", hidden.is_number_integer() ? hidden.get<int64_t>() : width},
        {"positions", "shifted"},
        {"seed", 0}};
  } else {
    method_config = {{"length", length}, {"placement", "start"}, {"init", "random"}, {"seed", 0}};
  }
  delta.meta =
      imported_meta(config, num_labels, prefix ? "prefix-tuning" : "prompt-tuning", method_config);
  restore_deltatune_meta(file, weights_path, delta);
  return delta;
}

}  // namespace

Delta load_peft_adapter(const fs::path& dir) {
  const fs::path config_path = dir / "adapter_config.json";
  json config;
  try {
    config = json::parse(io::read_text_file(config_path));
  } catch (const json::exception& e) {
    throw Error(config_path.string() + ": not valid JSON (" + e.what() + ")");
  }
  auto field_error = [&](const std::string& field, const std::string& why) {
    return Error(config_path.string() + ": field '" + field + "' " + why);
  };
  if (!config.is_object()) throw Error(config_path.string() + ": not a JSON object");
  const std::string peft_type = config.value("peft_type", "");
  if (peft_type != "LORA" && peft_type != "PREFIX_TUNING" && peft_type != "PROMPT_TUNING")
    throw field_error("peft_type", "is '" + peft_type +
                                       "'; deltatune reads LORA, PREFIX_TUNING and PROMPT_TUNING "
                                       "adapters");
  const std::string task_type = config.value("task_type", "");
  if (task_type != "SEQ_CLS")
    throw field_error("task_type",
                      "is '" + task_type + "'; deltatune reads sequence-classification adapters");
  if (peft_type != "LORA") {
    return load_prompt_learning_adapter(dir, config, peft_type);
  }
  if (config.value("bias", "none") != "none") throw field_error("bias", "must be \"none\"");
  if (config.value("fan_in_fan_out", false)) throw field_error("fan_in_fan_out", "must be false");
  if (config.value("use_rslora", false)) throw field_error("use_rslora", "must be false");
  if (config.value("use_dora", false)) throw field_error("use_dora", "must be false");
  for (const char* pattern : {"rank_pattern", "alpha_pattern"})
    if (config.contains(pattern) && !config[pattern].is_null() && !config[pattern].empty())
      throw field_error(pattern, "must be empty (one rank and alpha for every layer)");
  if (!config.contains("target_modules") || !config["target_modules"].is_array())
    throw field_error("target_modules", "must be a list of module names (a regex is not read)");
  if (!config.contains("r") || !config["r"].is_number_integer())
    throw field_error("r", "must be an integer");
  json method_config;
  try {
    method_config = {{"rank", config.at("r").get<int64_t>()},
                     {"alpha", config.at("lora_alpha").get<double>()},
                     {"dropout", config.value("lora_dropout", 0.0)},
                     {"target_modules", config["target_modules"].get<std::vector<std::string>>()}};
  } catch (const json::exception& e) {
    throw Error(config_path.string() + ": missing or malformed LoRA field (" + e.what() + ")");
  }

  const fs::path weights_path = adapter_weights_path(dir);
  auto file = io::SafetensorsFile::open(weights_path);
  Delta delta;
  int64_t num_labels = 0;
  for (const auto& entry : file.entries()) {
    const std::string name = parameter_of_peft_key(entry.name);
    if (name.empty())
      throw Error(weights_path.string() + ": tensor '" + entry.name +
                  "' is neither a LoRA factor nor the classifier");
    if (name.find(".original_module.") != std::string::npos) continue;
    DeltaTensor t;
    t.name = name;
    t.values = file.tensor(entry.name).to(at::kFloat).clone();
    t.shape = t.values.sizes().vec();
    if (name == "classifier.weight" || name == "classifier.out_proj.weight")
      num_labels = t.values.size(0);
    delta.tensors.push_back(std::move(t));
  }
  if (num_labels == 0)
    throw Error(weights_path.string() +
                ": no classifier weight (classifier.weight or "
                "classifier.out_proj.weight)");

  delta.meta = imported_meta(config, num_labels, "lora", method_config);
  restore_deltatune_meta(file, weights_path, delta);
  return delta;
}

}  // namespace deltatune::methods
