#include "deltatune/methods/peft_format.h"

#include <ATen/ATen.h>
#include <fmt/core.h>

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/io/safetensors.h"

namespace deltatune::methods {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const std::string kPrefix = "base_model.model.";
const std::string kOurs = ".lora.lora_";
const std::string kPeft = ".lora_";

std::string replace_once(std::string s, const std::string& from, const std::string& to) {
  const auto at = s.find(from);
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

bool is_head_key(const std::string& name) { return name.rfind("classifier.", 0) == 0; }

}  // namespace

std::string peft_key_of(const std::string& parameter) {
  return kPrefix + replace_once(parameter, kOurs, kPeft);
}

std::string parameter_of_peft_key(const std::string& key) {
  if (key.rfind(kPrefix, 0) != 0) return "";
  std::string name = key.substr(kPrefix.size());
  name = replace_once(name, ".modules_to_save.default.", ".");
  name = replace_once(name, ".modules_to_save.", ".");
  if (is_head_key(name)) return name;
  for (const char* factor : {".lora_A.weight", ".lora_B.weight"}) {
    const std::string f = factor;
    if (name.size() > f.size() && name.compare(name.size() - f.size(), f.size(), f) == 0)
      return name.substr(0, name.size() - f.size()) + ".lora" + f;
  }
  return "";
}

bool is_peft_adapter(const fs::path& dir) { return fs::exists(dir / "adapter_config.json"); }

void save_peft_adapter(const Delta& delta, const fs::path& dir) {
  const json method = delta.meta.value("method", json::object());
  if (method.value("name", "") != "lora")
    throw Error("a PEFT adapter can be written for LoRA deltas only, not '" +
                method.value("name", std::string("?")) + "'");
  const json config = method.value("config", json::object());
  json adapter = {
      {"peft_type", "LORA"},
      {"task_type", "SEQ_CLS"},
      {"base_model_name_or_path", delta.meta.value("base_model", json::object()).value("name", "")},
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
  io::NamedTensors tensors;
  for (const auto& t : delta.tensors) {
    if (t.sparse()) throw Error("LoRA delta tensor '" + t.name + "' is sparse");
    tensors.emplace_back(peft_key_of(t.name), t.values);
  }
  fs::create_directories(dir);
  io::save_safetensors(dir / "adapter_model.safetensors", tensors,
                       {{"format", "pt"}, {"deltatune", delta.meta.dump()}});
  io::write_text_atomically(dir / "adapter_config.json", adapter.dump(2) + "\n");
}

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
  if (peft_type != "LORA")
    throw field_error("peft_type", "is '" + peft_type + "'; deltatune reads LORA adapters");
  const std::string task_type = config.value("task_type", "");
  if (task_type != "SEQ_CLS")
    throw field_error("task_type",
                      "is '" + task_type + "'; deltatune reads sequence-classification adapters");
  if (config.value("bias", "none") != "none") throw field_error("bias", "must be \"none\"");
  if (config.value("fan_in_fan_out", false)) throw field_error("fan_in_fan_out", "must be false");
  if (config.value("use_rslora", false)) throw field_error("use_rslora", "must be false");
  if (config.value("use_dora", false)) throw field_error("use_dora", "must be false");
  for (const char* pattern : {"rank_pattern", "alpha_pattern"})
    if (config.contains(pattern) && !config[pattern].is_null() && !config[pattern].empty())
      throw field_error(pattern, "must be empty (one rank and alpha for every layer)");
  if (!config.contains("target_modules") || !config["target_modules"].is_array())
    throw field_error("target_modules", "must be a list of module names (a regex is not read)");
  json method_config;
  try {
    method_config = {{"rank", config.at("r").get<int64_t>()},
                     {"alpha", config.at("lora_alpha").get<double>()},
                     {"dropout", config.value("lora_dropout", 0.0)},
                     {"target_modules", config["target_modules"].get<std::vector<std::string>>()}};
  } catch (const json::exception& e) {
    throw Error(config_path.string() + ": missing or malformed LoRA field (" + e.what() + ")");
  }

  const fs::path weights_path = dir / "adapter_model.safetensors";
  if (!fs::exists(weights_path))
    throw Error(dir.string() + ": no adapter_model.safetensors (adapter_model.bin is not read)");
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

  const auto& metadata = file.metadata();
  if (auto it = metadata.find("deltatune"); it != metadata.end()) {
    try {
      delta.meta = json::parse(it->second);  // written by deltatune: labels, task, checksum
    } catch (const json::exception& e) {
      throw Error(weights_path.string() + ": header field 'deltatune' is not valid JSON");
    }
  } else {
    delta.meta = {{"base_model",
                   {{"name", config.value("base_model_name_or_path", std::string())},
                    {"checksum", ""},
                    {"verifiable", false}}},
                  {"num_labels", num_labels},
                  {"label_names", json::array()},
                  {"task", json::object()}};
  }
  delta.meta["method"] = {{"name", "lora"}, {"config", method_config}};
  delta.meta["imported_from"] = "peft";
  return delta;
}

}  // namespace deltatune::methods
