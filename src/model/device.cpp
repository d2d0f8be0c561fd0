#include "deltatune/model/device.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cctype>
#include <chrono>

#include "deltatune/error.h"
#include "deltatune/io/safetensors.h"
#include "deltatune/torch_compat.h"

// Only this file sees CUDA's headers, and only in a build against a CUDA
// LibTorch (CMake defines DELTATUNE_HAVE_CUDA for it): everything else asks
// LibTorch, which answers "no CUDA" in a CPU-only build.
#ifdef DELTATUNE_HAVE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#endif

namespace deltatune::model {

bool cuda_available() { return torch::cuda::is_available(); }

int64_t cuda_device_count() {
  return cuda_available() ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
}

at::Device parse_device(const std::string& spec) {
  if (spec == "cpu") return at::Device(at::kCPU);
  if (spec == "auto") return cuda_available() ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  int64_t index = 0;  // "cuda"
  if (spec != "cuda") {
    const bool indexed = spec.rfind("cuda:", 0) == 0 && spec.size() > 5 && spec.size() <= 8 &&
                         std::all_of(spec.begin() + 5, spec.end(),
                                     [](unsigned char c) { return std::isdigit(c) != 0; });
    if (!indexed) throw Error("--device " + spec + ": expected cpu, cuda, cuda:N or auto");
    index = std::stoll(spec.substr(5));
  }
  if (!cuda_available()) {
#ifdef DELTATUNE_HAVE_CUDA
    throw Error("--device " + spec +
                ": no CUDA device is visible to this process (check nvidia-smi and "
                "CUDA_VISIBLE_DEVICES), or use --device cpu");
#else
    throw Error("--device " + spec +
                ": this deltatune is built against a LibTorch without CUDA (build one with "
                "`make build-cuda`), or use --device cpu");
#endif
  }
  const int64_t count = cuda_device_count();
  if (index >= count)
    throw Error(fmt::format("--device {}: only {} CUDA device{} visible (cuda:0{})", spec, count,
                            count == 1 ? " is" : "s are",
                            count > 1 ? fmt::format(" to cuda:{}", count - 1) : std::string()));
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
}

std::string describe_device(const at::Device& device) {
  if (!device.is_cuda()) return device.str();
#ifdef DELTATUNE_HAVE_CUDA
  cudaDeviceProp properties{};
  if (cudaGetDeviceProperties(&properties, device.has_index() ? device.index() : 0) == cudaSuccess)
    return fmt::format("{} ({}, {:.1f} GiB)", device.str(), properties.name,
                       static_cast<double>(properties.totalGlobalMem) / (1024.0 * 1024 * 1024));
#endif
  return device.str();
}

namespace {

std::optional<at::Device> first_device(const torch::nn::Module& module) {
  for (const auto& p : module.parameters(/*recurse=*/false)) return p.device();
  for (const auto& b : module.buffers(/*recurse=*/false)) return b.device();
  for (const auto& child : module.children())
    if (auto found = first_device(*child)) return found;
  return std::nullopt;
}

}  // namespace

at::Device device_of(const torch::nn::Module& module) {
  return first_device(module).value_or(at::Device(at::kCPU));
}

std::vector<std::pair<std::string, at::Generator>> default_generators(const at::Device& device) {
  std::vector<std::pair<std::string, at::Generator>> out{
      {"cpu", at::globalContext().defaultGenerator(at::Device(at::kCPU))}};
  if (!device.is_cpu())
    out.emplace_back(c10::DeviceTypeName(device.type(), /*lower_case=*/true),
                     at::globalContext().defaultGenerator(device));
  return out;
}

EncoderInput to_device(const EncoderInput& input, const at::Device& device) {
  if (device.is_cpu()) return input;
  auto move = [&](const at::Tensor& t) {
    return t.defined() ? t.to(device, /*non_blocking=*/false) : t;
  };
  return {move(input.input_ids), move(input.attention_mask), move(input.token_type_ids)};
}

std::optional<DeviceMemory> device_memory(const at::Device& device) {
  if (!device.is_cuda()) return std::nullopt;
#ifdef DELTATUNE_HAVE_CUDA
  const auto stats =
      c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0);
  // Index 0 is StatType::AGGREGATE (all pools), in 1.13 and 2.x alike.
  DeviceMemory memory;
  memory.peak_allocated = stats.allocated_bytes[0].peak;
  memory.peak_reserved = stats.reserved_bytes[0].peak;
  return memory;
#else
  return std::nullopt;
#endif
}

void reset_peak_memory(const at::Device& device) {
  if (!device.is_cuda()) return;
#ifdef DELTATUNE_HAVE_CUDA
  c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : 0);
#endif
}

int64_t store_frozen_dense_weights(torch::nn::Module& model, at::ScalarType dtype) {
  int64_t saved = 0;
  at::NoGradGuard no_grad;
  for (const auto& module : model.modules(/*include_self=*/true)) {
    auto* dense = dynamic_cast<DenseImpl*>(module.get());
    if (dense == nullptr || dense->weight.requires_grad() || dense->weight.scalar_type() == dtype)
      continue;
    at::Tensor narrowed = dense->weight.to(dtype);
    saved += dense->weight.numel() * (dense->weight.element_size() - narrowed.element_size());
    at::Storage wide = dense->weight.storage();
    const void* wide_data = dense->weight.data_ptr();
    const size_t wide_bytes = dense->weight.nbytes();
    dense->weight.set_data(narrowed);
    // A weight that was pages of the mapped checkpoint (frozen: never
    // written) and that nothing else holds: its fp32 pages leave memory.
    if (wide.use_count() == 1) io::release_mapped_pages(wide_data, wide_bytes);
  }
  return saved;
}

Precision parse_precision(bool bf16, bool fp16) {
  if (bf16 && fp16) throw Error("--bf16 and --fp16 exclude each other: choose one");
  return bf16 ? Precision::kBFloat16 : fp16 ? Precision::kFloat16 : Precision::kFloat32;
}

const PrecisionProbe& probe_cpu_precision() {
  static const PrecisionProbe probe = [] {
    at::NoGradGuard no_grad;
    auto gflops = [](at::ScalarType dtype) {
      at::Tensor a = at::randn({512, 1024}).to(dtype), b = at::randn({1024, 1024}).to(dtype);
      (void)at::matmul(a, b);  // warm-up: kernel selection, pages
      double best = 1e30;
      for (int i = 0; i < 3; ++i) {
        const auto start = std::chrono::steady_clock::now();
        at::Tensor c = at::matmul(a, b);
        (void)c.data_ptr();
        best = std::min(
            best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
      return 2.0 * 512 * 1024 * 1024 / best / 1e9;
    };
    PrecisionProbe p;
    p.fp32_gflops = gflops(at::kFloat);
    p.bf16_gflops = gflops(at::kBFloat16);
    p.choice = p.bf16_gflops >= 1.2 * p.fp32_gflops ? Precision::kBFloat16 : Precision::kFloat32;
    return p;
  }();
  return probe;
}

const char* precision_name(Precision precision) {
  switch (precision) {
    case Precision::kBFloat16:
      return "bf16";
    case Precision::kFloat16:
      return "fp16";
    default:
      return "fp32";
  }
}

void check_precision(Precision precision, const at::Device& device) {
  if (precision == Precision::kFloat16 && !device.is_cuda())
    throw Error("--fp16 needs a CUDA device (--device cuda); on the CPU use --bf16");
}

AutocastScope::AutocastScope(const at::Device& device, Precision precision) {
  if (precision == Precision::kFloat32) return;
  check_precision(precision, device);
  active_ = true;
  device_type_ = device.type();
  previous_enabled_ = compat::autocast_enabled(device_type_);
  previous_dtype_ = compat::autocast_dtype(device_type_);
  compat::set_autocast_enabled(device_type_, true);
  compat::set_autocast_dtype(device_type_,
                             precision == Precision::kFloat16 ? at::kHalf : at::kBFloat16);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  compat::set_autocast_enabled(device_type_, previous_enabled_);
  compat::set_autocast_dtype(device_type_, previous_dtype_);
}

}  // namespace deltatune::model
