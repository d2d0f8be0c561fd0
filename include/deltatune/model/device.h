// Where a model computes and in which precision: the --device flag, moving
// inputs to a model's device, autocast scopes, and the CUDA allocator's
// memory figures. LibTorch dispatches every kernel by the tensors' device,
// so the rest of deltatune is device-agnostic: a model and what a method adds
// to it live on one device, batches are made on the CPU and moved there, and
// everything written to disk is moved back to the CPU first.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/nn/module.h>

#include <ATen/core/Generator.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "deltatune/model/encoder.h"

namespace deltatune::model {

// "cpu", "cuda" (the current CUDA device, 0 unless CUDA_VISIBLE_DEVICES
// says otherwise), "cuda:N", or "auto" (CUDA when LibTorch has it and a
// device is visible, else the CPU). Throws deltatune::Error naming the
// spec when the device does not exist here (a CPU-only LibTorch, no GPU
// visible, N out of range).
at::Device parse_device(const std::string& spec);

// True when this LibTorch was built with CUDA and at least one device is visible.
bool cuda_available();
int64_t cuda_device_count();

// "cpu", or "cuda:0 (NVIDIA H200, 139.8 GiB)" where the build can ask.
std::string describe_device(const at::Device& device);

// The device of a module's first parameter or buffer (depth first, stopping
// at the first found); the CPU when it has none.
at::Device device_of(const torch::nn::Module& module);

// The default generators a computation on `device` draws from, by device
// type: the CPU's always ("cpu": data order, the methods' draws), and the
// device's own when it is not the CPU ("cuda": dropout there).
std::vector<std::pair<std::string, at::Generator>> default_generators(const at::Device& device);

// The same input on `device` (ids, mask and token types). A no-op on the CPU.
EncoderInput to_device(const EncoderInput& input, const at::Device& device);

// The CUDA caching allocator's figures since the last reset (bytes); none on
// the CPU or in a build without CUDA.
struct DeviceMemory {
  int64_t peak_allocated = 0;  // torch.cuda.max_memory_allocated's figure
  int64_t peak_reserved = 0;   // what the allocator held from the driver
};
std::optional<DeviceMemory> device_memory(const at::Device& device);
void reset_peak_memory(const at::Device& device);

// Stores every frozen Dense weight (requires_grad false) of `model` in
// `dtype` (bf16), in place: under bf16 autocast the products read them in
// bf16 anyway, so the computation is unchanged while the weights take half
// the memory and need no cast copy (--frozen-weights bf16). Trained
// parameters, embeddings and LayerNorms stay fp32. Returns the bytes saved.
int64_t store_frozen_dense_weights(torch::nn::Module& model, at::ScalarType dtype);

// The precision of forward passes. Parameters and optimizer state stay fp32
// in every case; autocast runs the products in the lower precision.
enum class Precision {
  kFloat32,
  kBFloat16,  // bf16 autocast (CPU or CUDA)
  kFloat16,   // fp16 autocast (CUDA only) with dynamic loss scaling in training
};
Precision parse_precision(bool bf16, bool fp16);  // refuses both
const char* precision_name(Precision precision);  // "fp32", "bf16", "fp16"

// Which of fp32 and bf16 multiplies faster on this machine's CPU: a product
// of [512, 1024] x [1024, 1024] timed in each (best of 3 after a warm-up,
// ~50 ms in all, once per process). bf16 is chosen when it is at least
// 1.2x fp32: it is on CPUs with fast bf16 dot products (2x on the AMD EPYC
// of docs/BENCHMARKS.md), not on the Intel VM there without AMX (0.6x).
struct PrecisionProbe {
  double fp32_gflops = 0, bf16_gflops = 0;
  Precision choice = Precision::kFloat32;
};
const PrecisionProbe& probe_cpu_precision();

// fp16 autocast exists on CUDA only (1.13's CPU autocast is bf16-only):
// refuses it elsewhere, naming the flag.
void check_precision(Precision precision, const at::Device& device);

// Autocast to `precision` on `device` for the scope's forward passes, as
// torch.autocast(device.type, dtype) does; nothing for kFloat32. The
// previous state is restored on exit, and autocast's cast cache is cleared
// when the outermost scope ends.
class AutocastScope {
 public:
  AutocastScope(const at::Device& device, Precision precision);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  c10::DeviceType device_type_ = c10::DeviceType::CPU;
  bool previous_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kFloat;
};

}  // namespace deltatune::model
