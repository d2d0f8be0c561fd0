// BERT's tokenizer: HF BertNormalizer + BertPreTokenizer + WordPiece model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "deltatune/text/pipeline.h"

namespace deltatune::text {

// HF BertNormalizer settings. Applied in HF's order: clean_text, CJK spacing,
// accent stripping (NFD then drop Mn), lowercasing (Rust char::to_lowercase).
struct BertNormalizerOptions {
  bool clean_text = true;             // drop NUL, U+FFFD, Cc/Cf/Co; whitespace -> ' '
  bool handle_chinese_chars = true;   // surround CJK ideographs with spaces
  std::optional<bool> strip_accents;  // unset: follow `lowercase` (HF's null)
  bool lowercase = true;
};

struct WordPieceOptions {
  std::string unk_token = "[UNK]";
  std::string continuing_subword_prefix = "##";
  std::size_t max_input_chars_per_word = 100;  // longer words (in code points) -> unk
};

class WordPieceTokenizer final : public PipelineTokenizer {
 public:
  // `vocab` maps token -> id. `normalizer` unset means tokenizer.json's "normalizer": null.
  // Throws deltatune::Error if the unk token is not in the vocabulary.
  WordPieceTokenizer(std::unordered_map<std::string, int64_t> vocab,
                     std::optional<BertNormalizerOptions> normalizer, WordPieceOptions options,
                     std::vector<AddedToken> added_tokens, SpecialsTemplate post,
                     int64_t pad_token_id);

 protected:
  bool has_normalizer() const override { return normalizer_.has_value(); }
  void normalize(std::string_view text, std::string& out) const override;
  void encode_normalized(std::string_view normalized, std::vector<int64_t>& ids) const override;
  std::optional<int64_t> model_token_to_id(std::string_view token) const override {
    return vocab_.find(token);
  }
  const std::string* model_id_to_token(int64_t id) const override { return vocab_.token(id); }
  std::size_t model_vocab_size() const override { return vocab_.size(); }

 private:
  void encode_word(std::string_view word, std::size_t n_chars, std::vector<int64_t>& ids,
                   std::string& key) const;

  Vocabulary vocab_;
  std::optional<BertNormalizerOptions> normalizer_;
  bool strip_accents_ = false;
  WordPieceOptions options_;
  int64_t unk_id_ = 0;
};

}  // namespace deltatune::text
