// Every difference between the LibTorch versions deltatune builds against
// (Debian's 1.13 and the pip wheels 2.x), in one place, keyed on
// TORCH_VERSION_*. Code elsewhere calls these and never tests versions.
#pragma once

#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <torch/version.h>

#define DELTATUNE_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||            \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace deltatune::compat {

// Autocast's per-device state. torch 2.4 replaced the per-backend calls of
// 1.13 (is_cpu_enabled / is_enabled for CUDA, set_autocast_cpu_dtype /
// set_autocast_gpu_dtype) by set_autocast_enabled(device, bool) and
// set_autocast_dtype(device, dtype). Only CPU and CUDA are used here.
#if DELTATUNE_TORCH_AT_LEAST(2, 4)
inline bool autocast_enabled(c10::DeviceType device) {
  return at::autocast::is_autocast_enabled(device);
}
inline void set_autocast_enabled(c10::DeviceType device, bool enabled) {
  at::autocast::set_autocast_enabled(device, enabled);
}
inline c10::ScalarType autocast_dtype(c10::DeviceType device) {
  return at::autocast::get_autocast_dtype(device);
}
inline void set_autocast_dtype(c10::DeviceType device, c10::ScalarType dtype) {
  at::autocast::set_autocast_dtype(device, dtype);
}
#else
inline bool autocast_enabled(c10::DeviceType device) {
  return device == c10::DeviceType::CUDA ? at::autocast::is_enabled()
                                         : at::autocast::is_cpu_enabled();
}
inline void set_autocast_enabled(c10::DeviceType device, bool enabled) {
  if (device == c10::DeviceType::CUDA)
    at::autocast::set_enabled(enabled);
  else
    at::autocast::set_cpu_enabled(enabled);
}
inline c10::ScalarType autocast_dtype(c10::DeviceType device) {
  return device == c10::DeviceType::CUDA ? at::autocast::get_autocast_gpu_dtype()
                                         : at::autocast::get_autocast_cpu_dtype();
}
inline void set_autocast_dtype(c10::DeviceType device, c10::ScalarType dtype) {
  if (device == c10::DeviceType::CUDA)
    at::autocast::set_autocast_gpu_dtype(dtype);
  else
    at::autocast::set_autocast_cpu_dtype(dtype);
}
#endif

// True when autocast is on for the CPU (the fused oneDNN kernels then step aside).
inline bool cpu_autocast_enabled() { return autocast_enabled(c10::DeviceType::CPU); }

}  // namespace deltatune::compat
