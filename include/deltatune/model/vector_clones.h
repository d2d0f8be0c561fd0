// Loops compiled for several x86 instruction sets beside the
// default (x86-64, SSE2) build, the copy chosen by the CPU at load time.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstring>

// GCC on x86-64: AVX-512 and AVX2 copies beside the default. Clang (the
// sanitizer build) does not multiversion templates: one default copy there.
// A file using it for floating point must be compiled with
// -ffp-contract=off, so that the AVX-512 copy (which has FMA) rounds every
// product and sum as the default copy does.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DELTATUNE_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DELTATUNE_VECTOR_CLONES
#endif

// Integer loops (no rounding to keep equal): an AVX2 copy beside the
// default, with GCC or clang on x86-64; one copy elsewhere.
#if defined(__GNUC__) && defined(__x86_64__)
#define DELTATUNE_INTEGER_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DELTATUNE_INTEGER_CLONES
#endif

// A function written for FMA (std::fma, or ATen's multiply-adds repeated):
// compiled for AVX2 + FMA on x86, to be called only where the CPU has them.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define DELTATUNE_TARGET_FMA __attribute__((target("avx2,fma")))
#else
#define DELTATUNE_TARGET_FMA
#endif

namespace deltatune::model::vector {

// A bf16 value held as its bit pattern: loads and stores of it vectorize,
// where c10::BFloat16's (a class with a NaN branch) do not.
using Bf16Bits = uint16_t;

inline float widened(float v) { return v; }
inline float widened(Bf16Bits bits) {
  const uint32_t word = static_cast<uint32_t>(bits) << 16;
  float v;
  std::memcpy(&v, &word, sizeof v);
  return v;
}

// v rounded to T: c10::BFloat16's rounding (to nearest, ties to even; any
// NaN to 0x7FC0), branch-free so that it vectorizes.
template <typename T>
T narrowed(float v);
template <>
inline float narrowed<float>(float v) {
  return v;
}
template <>
inline Bf16Bits narrowed<Bf16Bits>(float v) {
  uint32_t word;
  std::memcpy(&word, &v, sizeof word);
  const uint32_t rounded = (word + 0x7FFFu + ((word >> 16) & 1u)) >> 16;
  return v != v ? Bf16Bits{0x7FC0} : static_cast<Bf16Bits>(rounded);
}

// A tensor such loops may read and write through data_ptr<float>() as n
// consecutive values: defined, on the CPU, fp32, contiguous, plain strided
// (not oneDNN's blocked layout). Anything else takes ATen's kernels.
inline bool raw_cpu_float(const at::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat &&
         t.layout() == at::kStrided && !t.is_mkldnn() && t.is_contiguous();
}

template <typename T>
float rounded_to(float v) {
  return widened(narrowed<T>(v));
}

}  // namespace deltatune::model::vector
