// Tokenizers: the first byte picks what the rest is.
//   0: a tokenizer.json, loaded and then used on a fixed text;
//   1: text encoded (alone and as a pair) by the WordPiece tokenizer of
//      tests/fixtures/text's BERT cases (DELTATUNE_FUZZ_WORDPIECE_DIR);
//   2: the same with the RoBERTa BPE fixture (DELTATUNE_FUZZ_BPE_DIR).
#include <cstdlib>
#include <map>
#include <memory>

#include "deltatune/text/tokenizer.h"
#include "fuzz_input.h"

namespace {

const deltatune::text::Tokenizer* fixture(const char* variable) {
  const char* dir = std::getenv(variable);
  if (dir == nullptr) return nullptr;
  static std::map<std::string, std::unique_ptr<deltatune::text::Tokenizer>> loaded;
  auto& slot = loaded[variable];
  if (!slot) slot = deltatune::text::load_tokenizer(dir);
  return slot.get();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace deltatune;
  if (size == 0) return 0;
  const std::string_view rest = fuzz::as_text(data + 1, size - 1);
  const uint8_t mode = data[0] % 3;
  fuzz::refuse_cleanly([&] {
    if (mode == 0) {
      fuzz::write_input("tokenizer.json", rest);
      auto tokenizer = text::load_tokenizer(fuzz::scratch_dir());
      (void)tokenizer->encode("Hello, world! Ünïcödé 東京 tokens", std::string_view("pair"), 32);
      return;
    }
    const text::Tokenizer* tokenizer =
        fixture(mode == 1 ? "DELTATUNE_FUZZ_WORDPIECE_DIR" : "DELTATUNE_FUZZ_BPE_DIR");
    if (tokenizer == nullptr) return;
    const size_t half = rest.size() / 2;
    (void)tokenizer->encode(rest, std::nullopt, 512);
    (void)tokenizer->encode(rest.substr(0, half), rest.substr(half), 24);
    (void)tokenizer->tokenize(rest);
  });
  return 0;
}
