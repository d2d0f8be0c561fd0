// The safetensors reader: header length, JSON header, dtypes, offsets, and
// every tensor handed out.
#include "deltatune/io/safetensors.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace deltatune;
  const auto path = fuzz::write_input("input.safetensors", fuzz::as_text(data, size));
  fuzz::refuse_cleanly([&] {
    auto file = io::SafetensorsFile::open(path);
    for (const auto& [name, tensor] : file.load_all()) (void)tensor.sum().item<double>();
  });
  return 0;
}
