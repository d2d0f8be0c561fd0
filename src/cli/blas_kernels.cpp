#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "commands.h"

namespace deltatune::cli {

// OpenBLAS chooses its kernels from the CPU model when it loads. On virtual
// CPUs it does not recognise (here "Intel(R) Xeon(R) Processor") it falls
// back to its Prescott (SSE3) kernels: 37 GFLOP/s instead of 187 for an fp32
// [800 x 384] x [384 x 1536] product on 2 threads, and 7% of deltatune's
// training speed (LibTorch runs attention's batched products through it).
// When it guessed a generic core on a CPU with AVX-512 (or AVX2), the
// process runs itself again with OPENBLAS_CORETYPE set, which OpenBLAS reads
// at load. A user's own OPENBLAS_CORETYPE is left alone.
void use_native_blas_kernels(char** argv) {
#if defined(__x86_64__)
  if (std::getenv("OPENBLAS_CORETYPE")) return;
  using CoreName = char* (*)();
  auto core_name = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (!core_name || !core_name()) return;
  const char* generic[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom"};
  bool fallback = false;
  for (const char* name : generic) fallback |= std::strcmp(core_name(), name) == 0;
  if (!fallback) return;
  const char* better = nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    better = "SkylakeX";
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    better = "Haswell";
  if (!better) return;
  ::setenv("OPENBLAS_CORETYPE", better, 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure: keep the slow kernels then
#else
  (void)argv;
#endif
}

}  // namespace deltatune::cli
