// config.json: JSON syntax, field types, architectures, sizes.
#include "deltatune/model/config.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace deltatune;
  const auto path = fuzz::write_input("config.json", fuzz::as_text(data, size));
  fuzz::refuse_cleanly([&] {
    model::EncoderConfig config = model::EncoderConfig::from_file(path);
    (void)config.max_sequence_tokens();
  });
  return 0;
}
