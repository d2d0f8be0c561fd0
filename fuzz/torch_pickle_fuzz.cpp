// The pytorch_model.bin reader: the zip container, the pickle program and the
// tensor storages it points at.
#include "deltatune/io/torch_pickle.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace deltatune;
  const auto path = fuzz::write_input("pytorch_model.bin", fuzz::as_text(data, size));
  fuzz::refuse_cleanly([&] {
    for (const auto& [name, tensor] : io::load_torch_state_dict(path))
      (void)tensor.sum().item<double>();
  });
  return 0;
}
