// A task's delta: only what fine-tuning changed, stored next to the identity
// of the base model it applies to.
//
// On disk a delta is a directory: delta.json (format, method and its
// configuration, base-model identity, task, label names, metrics) and
// delta.safetensors. A dense tensor is stored under its parameter name; a
// sparse one as "<name>::indices" (I32 or I64 flat indices, ascending) and
// "<name>::values". Values are the fine-tuned values themselves, not
// differences, so applying a delta reproduces the trained model bit for bit.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "deltatune/methods/method.h"

namespace deltatune::methods {

struct DeltaTensor {
  std::string name;            // the model's HF key
  std::vector<int64_t> shape;  // of the full parameter
  at::Tensor values;           // dense: the whole tensor; sparse: one value per index
  at::Tensor indices;          // sparse only: flat indices into the parameter
  bool sparse() const { return indices.defined(); }
};

// A delta read from a format that does not record the encoder's module name
// (a PEFT prompt adapter) names its encoder tensors "{encoder}.<rest>";
// with_encoder_name() turns them into the base's "bert.<rest>", ....
inline constexpr const char* kEncoderToken = "{encoder}";

struct Delta {
  nlohmann::json meta = nlohmann::json::object();
  std::vector<DeltaTensor> tensors;

  int64_t stored_values() const;  // entries held (dense numel + sparse nnz)
  int64_t stored_bytes() const;   // bytes of tensor data in delta.safetensors

  // Writes <dir>/delta.json and <dir>/delta.safetensors, each atomically.
  void save(const std::filesystem::path& dir) const;
  // Throws deltatune::Error naming the file for a missing or malformed delta.
  static Delta load(const std::filesystem::path& dir);
};

// Builds the stored part of a trained model: for each (name, kind), the
// parameter's value (kDense), or its entries that differ from `base` (kSparse,
// stored dense instead when that is smaller). A parameter absent from `base`
// (a new head) is always dense.
std::vector<DeltaTensor> collect_delta_tensors(
    const torch::nn::Module& model, const std::map<std::string, at::Tensor>& base,
    const std::vector<std::pair<std::string, StorageKind>>& stored, const std::string& base_prefix);

// What apply_delta overwrote, to put back with remove_delta.
struct AppliedDelta {
  std::vector<DeltaTensor> previous;
};

// Writes the delta's values into `model`'s parameters by name (under no_grad).
// Throws deltatune::Error naming a tensor the model lacks or whose shape differs.
AppliedDelta apply_delta(const Delta& delta, torch::nn::Module& model);

// `delta` with kEncoderToken in its tensor names replaced by `encoder`.
Delta with_encoder_name(const Delta& delta, const std::string& encoder);
// Restores exactly the values apply_delta replaced.
void remove_delta(const AppliedDelta& applied, torch::nn::Module& model);

}  // namespace deltatune::methods
