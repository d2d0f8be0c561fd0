// Loading a delta directory: the first byte picks which file the rest is.
//   0: delta.json beside a valid delta.safetensors;
//   1: PEFT's adapter_config.json beside a valid adapter_model.safetensors.
// The valid tensor files come from DELTATUNE_FUZZ_DELTA_DIR and
// DELTATUNE_FUZZ_PEFT_DIR (copied once into the scratch directory).
#include <cstdlib>

#include "deltatune/methods/delta.h"
#include "fuzz_input.h"

namespace {

namespace fs = std::filesystem;

fs::path prepared(const char* variable, const char* name, const char* tensors) {
  const fs::path dir = deltatune::fuzz::scratch_dir() / name;
  if (!fs::exists(dir)) {
    fs::create_directories(dir);
    if (const char* source = std::getenv(variable))
      fs::copy_file(fs::path(source) / tensors, dir / tensors);
  }
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace deltatune;
  if (size == 0) return 0;
  const bool peft = data[0] % 2 == 1;
  const fs::path dir =
      peft ? prepared("DELTATUNE_FUZZ_PEFT_DIR", "peft", "adapter_model.safetensors")
           : prepared("DELTATUNE_FUZZ_DELTA_DIR", "delta", "delta.safetensors");
  const std::string_view rest = fuzz::as_text(data + 1, size - 1);
  std::ofstream(dir / (peft ? "adapter_config.json" : "delta.json"),
                std::ios::binary | std::ios::trunc)
      .write(rest.data(), rest.size());
  fuzz::refuse_cleanly([&] {
    methods::Delta delta = methods::Delta::load(dir);
    (void)delta.stored_bytes();
  });
  return 0;
}
