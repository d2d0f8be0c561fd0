#include "deltatune/model/pretrained.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/io/sha256.h"
#include "deltatune/io/torch_pickle.h"

namespace deltatune::model {
namespace fs = std::filesystem;

namespace {

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// Keys HF checkpoints carry that no encoder parameter corresponds to and that
// HF itself ignores when loading a task model: buffers and pre-training heads.
bool is_known_unused(const std::string& key) {
  static const char* kPatterns[] = {
      "position_ids", "cls.",   "lm_head.", "discriminator_predictions.",
      "generator_",   "pooler."};  // pooler: RoBERTa/ELECTRA heads skip it
  for (const char* p : kPatterns)
    if (key.find(p) != std::string::npos) return true;
  return false;
}

}  // namespace

void check_config_matches(const EncoderConfig& config,
                          const std::map<std::string, at::Tensor>& checkpoint,
                          const std::string& model_dir) {
  // The encoder's size from the config alone (embeddings, layers, pooler):
  // a model is built, and its memory taken, before weights are copied in, so
  // a config describing far more than the checkpoint holds is refused here,
  // bounding that memory by the checkpoint's own size.
  const double h = static_cast<double>(config.hidden_size);
  const double e =
      static_cast<double>(config.embedding_size > 0 ? config.embedding_size : config.hidden_size);
  const double i = static_cast<double>(config.intermediate_size);
  const double embeddings = (static_cast<double>(config.vocab_size) +
                             static_cast<double>(config.max_position_embeddings) +
                             static_cast<double>(config.type_vocab_size)) *
                            e;
  const double layers = static_cast<double>(config.num_hidden_layers) * (4 * h * h + 2 * h * i);
  const double described = embeddings + layers;
  double held = 0;
  for (const auto& [name, tensor] : checkpoint) held += static_cast<double>(tensor.numel());
  if (described > 2 * held + 1e6)
    throw Error(
        fmt::format("{}: config.json describes an encoder of about {:.0f} M parameters, "
                    "but the checkpoint holds {:.1f} M values",
                    model_dir, described / 1e6, held / 1e6));
}

std::vector<fs::path> checkpoint_files(const fs::path& model_dir) {
  const fs::path single = model_dir / "model.safetensors";
  if (fs::exists(single)) return {single};
  const fs::path index = model_dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(io::read_text_file(index));
    } catch (const nlohmann::json::exception& e) {
      throw Error(index.string() + ": not valid JSON (" + e.what() + ")");
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      throw Error(index.string() + ": missing field 'weight_map'");
    std::set<std::string> shards;
    for (auto& [key, shard] : j["weight_map"].items()) shards.insert(shard.get<std::string>());
    std::vector<fs::path> files{index};
    for (const auto& shard : shards) files.push_back(model_dir / shard);
    return files;
  }
  const fs::path bin = model_dir / "pytorch_model.bin";
  if (fs::exists(bin)) return {bin};
  return {};
}

std::map<std::string, at::Tensor> read_checkpoint(const fs::path& model_dir) {
  if (!fs::is_directory(model_dir))
    throw Error(model_dir.string() + ": model directory does not exist");
  const std::vector<fs::path> files = checkpoint_files(model_dir);
  if (files.empty())
    throw Error(model_dir.string() +
                ": no model.safetensors, model.safetensors.index.json or pytorch_model.bin");
  if (files.front().extension() == ".bin") return io::load_torch_state_dict(files.front());
  if (files.front().filename() == "model.safetensors")
    return io::SafetensorsFile::open(files.front()).load_all();
  std::map<std::string, at::Tensor> all;  // files: the index, then its shards
  for (size_t i = 1; i < files.size(); ++i) {
    auto part = io::SafetensorsFile::open(files[i]).load_all();
    all.insert(part.begin(), part.end());
  }
  return all;
}

void initialise_missing(torch::nn::Module& module, const std::vector<std::string>& names,
                        double initializer_range) {
  at::NoGradGuard no_grad;
  for (auto& item : module.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    if (std::find(names.begin(), names.end(), name) == names.end()) continue;
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0)
      item.value().zero_();
    else
      item.value().normal_(0.0, initializer_range);
  }
}

LoadMode load_mode_for(const fs::path& model_dir) {
  const char* map_weights = std::getenv("DELTATUNE_MAP_WEIGHTS");
  const bool allowed = !(map_weights != nullptr && std::string(map_weights) == "0");
  return allowed && checkpoint_is_file_mapped(model_dir) ? LoadMode::kAdopt : LoadMode::kCopy;
}

bool checkpoint_is_file_mapped(const fs::path& model_dir) {
  const std::vector<fs::path> files = checkpoint_files(model_dir);
  return !files.empty() && files.front().extension() != ".bin";
}

LoadReport load_state(torch::nn::Module& module,
                      const std::map<std::string, at::Tensor>& checkpoint,
                      const std::string& base_prefix, const std::string& source,
                      const std::function<bool(const std::string&)>& may_initialize,
                      LoadMode mode) {
  LoadReport report;
  std::set<std::string> used;
  const std::string dotted = base_prefix.empty() ? "" : base_prefix + ".";
  auto find = [&](const std::string& name) -> const std::string* {
    if (auto it = checkpoint.find(name); it != checkpoint.end()) return &it->first;
    if (!dotted.empty() && starts_with(name, dotted)) {
      if (auto it = checkpoint.find(name.substr(dotted.size())); it != checkpoint.end())
        return &it->first;
    }
    if (!dotted.empty()) {
      if (auto it = checkpoint.find(dotted + name); it != checkpoint.end()) return &it->first;
    }
    return nullptr;
  };
  at::NoGradGuard no_grad;
  std::vector<std::string> missing;
  // Byte ranges already adopted: a checkpoint whose tensors overlap (a
  // malformed file) must not tie two parameters together.
  std::map<const char*, const char*> adopted;
  auto adoptable = [&](const at::Tensor& value, const at::Tensor& target) {
    if (mode != LoadMode::kAdopt || value.scalar_type() != target.scalar_type() ||
        value.device() != target.device() || !value.is_contiguous() || value.numel() == 0)
      return false;
    const char* begin = static_cast<const char*>(value.data_ptr());
    const char* end = begin + value.nbytes();
    auto next = adopted.lower_bound(begin);
    if (next != adopted.end() && next->first < end) return false;
    if (next != adopted.begin() && std::prev(next)->second > begin) return false;
    adopted.emplace(begin, end);
    return true;
  };
  auto fill = [&](const std::string& name, at::Tensor& target) {
    const std::string* key = find(name);
    if (key == nullptr) {
      if (may_initialize && may_initialize(name)) {
        report.initialized.push_back(name);
      } else {
        missing.push_back(name);
      }
      return;
    }
    const at::Tensor& value = checkpoint.at(*key);
    if (value.sizes() != target.sizes()) {
      std::ostringstream msg;
      msg << source << ": tensor '" << *key << "' has shape " << value.sizes()
          << " but the model's " << name << " needs " << target.sizes();
      throw Error(msg.str());
    }
    if (!at::isFloatingType(value.scalar_type()) && at::isFloatingType(target.scalar_type()))
      throw Error(source + ": tensor '" + *key + "' has dtype " +
                  std::string(c10::toString(value.scalar_type())) + ", expected floating point");
    if (adoptable(value, target)) {
      target.set_data(value);
    } else {
      target.copy_(value);
    }
    used.insert(*key);
    report.loaded.push_back(name);
  };
  for (auto& item : module.named_parameters(/*recurse=*/true)) fill(item.key(), item.value());
  for (auto& item : module.named_buffers(/*recurse=*/true)) fill(item.key(), item.value());
  if (!missing.empty()) {
    std::string list = missing.front();
    if (missing.size() > 1) list += " and " + std::to_string(missing.size() - 1) + " more";
    throw Error(source + ": missing tensor " + list +
                " (wrong model type or incomplete checkpoint)");
  }
  for (const auto& [key, value] : checkpoint)
    if (!used.count(key) && !is_known_unused(key)) report.unexpected.push_back(key);
  return report;
}

io::NamedTensors named_state(const torch::nn::Module& module) {
  io::NamedTensors out;
  for (const auto& item : module.named_parameters(true)) out.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(true)) out.emplace_back(item.key(), item.value());
  return out;
}

namespace {

int64_t labels_from_config(const EncoderConfig& config) {
  return config.id2label.empty() ? 2 : static_cast<int64_t>(config.id2label.size());
}

}  // namespace

LoadedClassifier load_classifier(const fs::path& model_dir, int64_t num_labels) {
  LoadedClassifier out;
  out.config = EncoderConfig::from_file(model_dir / "config.json");
  if (num_labels <= 0) num_labels = labels_from_config(out.config);
  auto checkpoint = read_checkpoint(model_dir);
  check_config_matches(out.config, checkpoint, model_dir.string());
  {
    SkipInitialisation no_draws;  // loaded below, or drawn by initialise_missing
    out.model = SequenceClassifier(out.config, num_labels);
  }
  SequenceClassifierImpl* model = out.model.get();
  out.report = load_state(
      *out.model, checkpoint, out.config.base_model_prefix(), model_dir.string(),
      [model](const std::string& name) { return model->is_head_parameter(name); },
      load_mode_for(model_dir));
  initialise_missing(*out.model, out.report.initialized, out.config.initializer_range);
  return out;
}

LoadedEncoder load_encoder(const fs::path& model_dir) {
  LoadedEncoder out;
  out.config = EncoderConfig::from_file(model_dir / "config.json");
  const bool with_pooler = out.config.architecture == Architecture::kBert;
  auto checkpoint = read_checkpoint(model_dir);
  check_config_matches(out.config, checkpoint, model_dir.string());
  {
    SkipInitialisation no_draws;  // loaded below, or drawn by initialise_missing
    out.model = EncoderModel(out.config, with_pooler);
  }
  out.report = load_state(
      *out.model, checkpoint, out.config.base_model_prefix(), model_dir.string(),
      [](const std::string& name) { return starts_with(name, "pooler."); },
      load_mode_for(model_dir));
  initialise_missing(*out.model, out.report.initialized, out.config.initializer_range);
  return out;
}

bool task_model_reads(Architecture architecture, const std::string& key) {
  if (starts_with(key, "classifier.")) return false;
  if (key.find("pooler.") != std::string::npos) return architecture == Architecture::kBert;
  return !is_known_unused(key);
}

namespace {

std::string checksum_of(const std::map<std::string, at::Tensor>& checkpoint,
                        const std::function<bool(const std::string&)>& covered) {
  io::Sha256 hash;
  for (const auto& [name, tensor] : checkpoint) {
    if (!covered(name)) continue;
    at::Tensor t = tensor.contiguous();
    hash.update(name);
    hash.update(std::string(c10::toString(t.scalar_type())));
    for (int64_t d : t.sizes()) hash.update(&d, sizeof d);
    hash.update(t.data_ptr(), t.numel() * t.element_size());
  }
  return hash.hex_digest();
}

}  // namespace

std::string weights_checksum(const std::map<std::string, at::Tensor>& checkpoint,
                             Architecture architecture) {
  return checksum_of(checkpoint, [architecture](const std::string& name) {
    return task_model_reads(architecture, name);
  });
}

std::string legacy_weights_checksum(const std::map<std::string, at::Tensor>& checkpoint) {
  return checksum_of(checkpoint, [](const std::string& name) { return !is_known_unused(name); });
}

}  // namespace deltatune::model
