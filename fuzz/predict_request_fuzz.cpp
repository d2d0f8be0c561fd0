// The server's /predict body: TEI's input forms, task fields, flags.
#include "deltatune/serve/http_server.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace deltatune;
  bool batched = false;
  fuzz::refuse_cleanly([&] {
    (void)serve::parse_predict_request(std::string(fuzz::as_text(data, size)), &batched);
  });
  return 0;
}
