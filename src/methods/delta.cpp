#include "deltatune/methods/delta.h"

#include "deltatune/methods/peft_format.h"

#include <ATen/ATen.h>

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/io/safetensors.h"

namespace deltatune::methods {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kFormat = "deltatune-delta";
constexpr int kVersion = 1;
const std::string kIndicesSuffix = "::indices";
const std::string kValuesSuffix = "::values";

at::Tensor find_parameter(torch::nn::Module& model, const std::string& name) {
  auto params = model.named_parameters(true);
  if (const at::Tensor* p = params.find(name)) return *p;
  auto buffers = model.named_buffers(true);
  if (const at::Tensor* b = buffers.find(name)) return *b;
  throw Error("the model has no parameter '" + name + "' that the delta stores");
}

// Looks a model key up in a base checkpoint that may lack the task model's prefix.
const at::Tensor* base_value(const std::map<std::string, at::Tensor>& base, const std::string& name,
                             const std::string& prefix) {
  if (auto it = base.find(name); it != base.end()) return &it->second;
  const std::string dotted = prefix + ".";
  if (!prefix.empty() && name.rfind(dotted, 0) == 0) {
    if (auto it = base.find(name.substr(dotted.size())); it != base.end()) return &it->second;
  }
  return nullptr;
}

}  // namespace

int64_t Delta::stored_values() const {
  int64_t total = 0;
  for (const auto& t : tensors) total += t.values.numel();
  return total;
}

int64_t Delta::stored_bytes() const {
  int64_t total = 0;
  for (const auto& t : tensors) {
    total += t.values.numel() * t.values.element_size();
    if (t.sparse()) total += t.indices.numel() * t.indices.element_size();
  }
  return total;
}

void Delta::save(const fs::path& dir) const {
  io::NamedTensors named;
  json index = json::object();
  for (const auto& t : tensors) {
    if (t.sparse()) {
      named.emplace_back(t.name + kIndicesSuffix, t.indices);
      named.emplace_back(t.name + kValuesSuffix, t.values);
    } else {
      named.emplace_back(t.name, t.values);
    }
    index[t.name] = {{"shape", t.shape},
                     {"storage", t.sparse() ? "sparse" : "dense"},
                     {"stored", t.values.numel()}};
  }
  json document = meta;
  document["format"] = kFormat;
  document["version"] = kVersion;
  document["tensors"] = index;
  document["stored_values"] = stored_values();
  document["stored_bytes"] = stored_bytes();
  io::write_directory_atomically(dir, [&](const fs::path& staging) {
    io::save_safetensors(staging / "delta.safetensors", named, {{"format", kFormat}});
    io::write_text_atomically(staging / "delta.json", document.dump(2) + "\n");
  });
}

Delta Delta::load(const fs::path& dir) {
  const fs::path json_path = dir / "delta.json";
  if (!fs::exists(json_path)) {
    if (is_peft_adapter(dir)) return load_peft_adapter(dir);
    throw Error(dir.string() + ": not a delta (no delta.json, nor a PEFT adapter_config.json)");
  }
  json document;
  try {
    document = json::parse(io::read_text_file(json_path));
  } catch (const json::exception& e) {
    throw Error(json_path.string() + ": not valid JSON (" + e.what() + ")");
  }
  if (!document.is_object() || document.value("format", json()) != kFormat)
    throw Error(json_path.string() + ": field 'format' is not \"" + kFormat + "\"");
  if (document.value("version", json()) != kVersion)
    throw Error(json_path.string() + ": unsupported delta version " +
                document.value("version", json()).dump());
  if (!document.contains("tensors") || !document["tensors"].is_object())
    throw Error(json_path.string() + ": missing field 'tensors'");
  auto file = io::SafetensorsFile::open(dir / "delta.safetensors");
  Delta delta;
  for (auto& [name, info] : document["tensors"].items()) {
    DeltaTensor t;
    t.name = name;
    try {
      const json& shape = info.at("shape");
      if (!shape.is_array())
        throw Error(json_path.string() + ": tensor '" + name + "': 'shape' is not a list");
      for (const json& size : shape) {
        // Only integers: a float outside int64's range does not convert.
        if (!size.is_number_integer() || size.get<int64_t>() < 0)
          throw Error(json_path.string() + ": tensor '" + name + "': 'shape' holds " + size.dump() +
                      ", not a size");
        t.shape.push_back(size.get<int64_t>());
      }
      const std::string storage = info.at("storage").get<std::string>();
      if (storage == "sparse") {
        t.indices = file.tensor(name + kIndicesSuffix).clone();
        t.values = file.tensor(name + kValuesSuffix).clone();
        if (t.indices.numel() != t.values.numel())
          throw Error(dir.string() + ": tensor '" + name + "' has " +
                      std::to_string(t.indices.numel()) + " indices but " +
                      std::to_string(t.values.numel()) + " values");
      } else {
        t.values = file.tensor(name).clone();
        if (t.values.sizes().vec() != t.shape)
          throw Error(dir.string() + ": tensor '" + name + "' shape differs from delta.json");
      }
    } catch (const json::exception& e) {
      throw Error(json_path.string() + ": tensor '" + name + "' is malformed (" + e.what() + ")");
    }
    delta.tensors.push_back(std::move(t));
  }
  document.erase("tensors");
  delta.meta = std::move(document);
  return delta;
}

std::vector<DeltaTensor> collect_delta_tensors(
    const torch::nn::Module& model, const std::map<std::string, at::Tensor>& base,
    const std::vector<std::pair<std::string, StorageKind>>& stored,
    const std::string& base_prefix) {
  auto params = model.named_parameters(true);
  std::vector<DeltaTensor> out;
  for (const auto& [name, kind] : stored) {
    const at::Tensor* value = params.find(name);
    if (value == nullptr) throw Error("cannot store '" + name + "': no such parameter");
    DeltaTensor t;
    t.name = name;
    t.shape = value->sizes().vec();
    at::Tensor current = value->detach().to(at::kCPU).contiguous();
    const at::Tensor* original = base_value(base, name, base_prefix);
    if (kind == StorageKind::kSparse && original != nullptr) {
      at::Tensor changed =
          current.flatten().ne(original->to(current.scalar_type()).flatten()).nonzero().flatten();
      const int64_t numel = current.numel();
      const auto index_type = numel <= std::numeric_limits<int32_t>::max() ? at::kInt : at::kLong;
      const int64_t sparse_bytes =
          changed.numel() * (current.element_size() + (index_type == at::kInt ? 4 : 8));
      if (sparse_bytes < numel * current.element_size()) {
        t.indices = changed.to(index_type);
        t.values = current.flatten().index_select(0, changed);
        out.push_back(std::move(t));
        continue;
      }
    }
    t.values = current.clone();
    out.push_back(std::move(t));
  }
  return out;
}

Delta with_encoder_name(const Delta& delta, const std::string& encoder) {
  Delta named = delta;
  const std::string token = kEncoderToken;
  for (auto& t : named.tensors)
    if (t.name.rfind(token + ".", 0) == 0) t.name = encoder + t.name.substr(token.size());
  return named;
}

AppliedDelta apply_delta(const Delta& delta, torch::nn::Module& model) {
  AppliedDelta applied;
  at::NoGradGuard no_grad;
  // Validate everything first: a delta is applied whole or not at all.
  for (const auto& t : delta.tensors) {
    at::Tensor target = find_parameter(model, t.name);
    if (target.sizes().vec() != t.shape)
      throw Error("delta tensor '" + t.name + "' has shape " + json(t.shape).dump() +
                  " but the model's is " + json(target.sizes().vec()).dump());
    if (t.sparse() && t.indices.numel() > 0 &&
        (t.indices.min().item<int64_t>() < 0 || t.indices.max().item<int64_t>() >= target.numel()))
      throw Error("delta tensor '" + t.name + "' has indices outside the parameter");
  }
  for (const auto& t : delta.tensors) {
    at::Tensor target = find_parameter(model, t.name);
    DeltaTensor previous;
    previous.name = t.name;
    previous.shape = t.shape;
    if (t.sparse()) {
      at::Tensor flat = target.view({-1});
      at::Tensor index = t.indices.to(at::kLong);
      previous.indices = t.indices;
      previous.values = flat.index_select(0, index).clone();
      flat.index_copy_(0, index, t.values.to(target.scalar_type()));
    } else {
      previous.values = target.detach().clone();
      target.copy_(t.values);
    }
    applied.previous.push_back(std::move(previous));
  }
  return applied;
}

void remove_delta(const AppliedDelta& applied, torch::nn::Module& model) {
  at::NoGradGuard no_grad;
  for (auto it = applied.previous.rbegin(); it != applied.previous.rend(); ++it) {
    at::Tensor target = find_parameter(model, it->name);
    if (it->sparse()) {
      target.view({-1}).index_copy_(0, it->indices.to(at::kLong), it->values);
    } else {
      target.copy_(it->values);
    }
  }
}

}  // namespace deltatune::methods
