// Tokenizer interface: text -> model-ready ids, matching Hugging Face's fast
// (Rust `tokenizers`) tokenizers id for id.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace deltatune::text {

// Model-ready ids for one text or one pair. The three vectors have equal length.
struct Encoding {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> token_type_ids;
  std::vector<int64_t> attention_mask;  // all 1 (no padding at this level)
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Adds special tokens ([CLS] a [SEP] b [SEP] / <s> a </s></s> b </s>), truncating with
  // HF's "longest_first" strategy so the total length <= max_length. An empty text_b is
  // encoded as no text_b, as transformers does (`if text_pair`). Throws
  // deltatune::Error on invalid UTF-8 or when max_length cannot hold the special tokens.
  virtual Encoding encode(std::string_view text_a, std::optional<std::string_view> text_b,
                          std::size_t max_length) const = 0;

  // Sub-word strings, no special tokens added (added tokens present in the text are kept).
  virtual std::vector<std::string> tokenize(std::string_view text) const = 0;

  virtual int64_t pad_token_id() const = 0;

  // Number of ids: the model vocabulary plus added tokens outside it (HF's len(tokenizer)).
  virtual std::size_t vocab_size() const = 0;

  virtual std::optional<int64_t> token_to_id(std::string_view token) const = 0;

  // Throws deltatune::Error for an id outside the vocabulary.
  virtual std::string id_to_token(int64_t id) const = 0;
};

// Reads a Hugging Face model/tokenizer directory: tokenizer.json if present (WordPiece or BPE
// model type, normalizer/pre-tokenizer settings, added tokens, post-processor), else vocab.txt
// (+ tokenizer_config.json do_lower_case / strip_accents / tokenize_chinese_chars) for BERT,
// else vocab.json + merges.txt for RoBERTa. Keys present in tokenizer_config.json override
// tokenizer.json's normalizer/pre-tokenizer settings, as transformers' fast tokenizer classes do.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& dir);

}  // namespace deltatune::text
