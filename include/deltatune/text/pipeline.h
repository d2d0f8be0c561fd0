// The model-independent half of an HF tokenizer pipeline: added-token
// extraction, truncation and the special-token post-processor.
//
// Pipeline (as in HF tokenizers' TokenizerImpl::encode):
//   1. split the raw text on added tokens with normalized == false;
//   2. normalize each remaining piece, split it on added tokens with normalized == true;
//   3. pre-tokenize + run the model on each remaining piece;
//   4. truncate (longest_first) to max_length minus the post-processor's special tokens;
//   5. wrap with the post-processor's template.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "deltatune/text/tokenizer.h"

namespace deltatune::text {

// A model vocabulary, token <-> id. Ids are unique and non-negative and may
// leave gaps; token() answers nullptr for an id no token has.
class Vocabulary {
 public:
  // `what` names the vocabulary in errors ("WordPiece vocabulary", ...).
  Vocabulary(std::unordered_map<std::string, int64_t> token_to_id, const std::string& what);
  const std::unordered_map<std::string, int64_t>& ids() const { return ids_; }
  std::optional<int64_t> find(std::string_view token) const;
  const std::string* token(int64_t id) const;
  std::size_t size() const { return ids_.size(); }

 private:
  std::unordered_map<std::string, int64_t> ids_;
  std::vector<std::string> tokens_;  // by id
  std::vector<bool> has_id_;
};

// An entry of HF's added vocabulary (tokenizer.json "added_tokens").
struct AddedToken {
  std::string content;
  int64_t id = 0;
  bool single_word = false;  // only match when not inside a \w run
  bool lstrip = false;       // swallow whitespace on the left
  bool rstrip = false;       // swallow whitespace on the right
  bool normalized = false;   // match against the normalized text instead of the raw text
  bool special = true;
};

// Finds added tokens in a string with HF's semantics: leftmost-longest,
// non-overlapping matches (aho-corasick MatchKind::LeftmostLongest); a
// single_word match that touches a word character is skipped (and its bytes are
// not searched again); lstrip/rstrip extend a match over adjacent whitespace.
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // patterns[i] is matched verbatim; tokens[i] carries its id and flags.
  AddedTokenMatcher(std::vector<std::string> patterns, std::vector<AddedToken> tokens);

  bool empty() const { return patterns_.empty(); }

  struct Piece {
    std::size_t begin, end;  // byte range in the searched string
    int64_t id;              // -1: plain text to be tokenized
  };
  // Appends the pieces covering `text` (empty text pieces are not emitted).
  void split(std::string_view text, std::vector<Piece>& out) const;

 private:
  std::vector<std::string> patterns_;
  std::vector<AddedToken> tokens_;
  std::array<bool, 256> first_byte_{};
};

// A post-processor as a pair of templates: HF's TemplateProcessing, BertProcessing
// ([CLS] A [SEP] / [CLS] A [SEP] B [SEP], B part type 1) and RobertaProcessing
// (<s> A </s> / <s> A </s> </s> B </s>, every type id 0) all reduce to this.
struct SpecialsTemplate {
  struct Piece {
    int sequence = -1;         // 0: sequence A, 1: sequence B, -1: the special ids below
    std::vector<int64_t> ids;  // special token ids (sequence == -1)
    int64_t type_id = 0;
  };
  std::vector<Piece> single;
  std::vector<Piece> pair;

  // Number of special ids the template adds (HF PostProcessor::added_tokens).
  std::size_t added_tokens(bool is_pair) const;

  static SpecialsTemplate bert(int64_t cls_id, int64_t sep_id);
  static SpecialsTemplate roberta(int64_t cls_id, int64_t sep_id);
};

// HF tokenizers' truncate_encodings with LongestFirst and no stride: the lengths
// (n_a, n_b) to keep so that n_a + n_b <= budget. With both sequences over half
// the budget, the shorter one gets budget / 2 and the longer the rest (the first
// sequence gets budget / 2 on a tie).
std::pair<std::size_t, std::size_t> longest_first_lengths(std::size_t len_a, std::size_t len_b,
                                                          std::size_t budget);

// Added tokens + truncation + post-processing around a model-specific core.
// Thread-safe for concurrent const use.
class PipelineTokenizer : public Tokenizer {
 public:
  Encoding encode(std::string_view text_a, std::optional<std::string_view> text_b,
                  std::size_t max_length) const override;
  std::vector<std::string> tokenize(std::string_view text) const override;
  int64_t pad_token_id() const override { return pad_token_id_; }
  std::size_t vocab_size() const override;
  std::optional<int64_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int64_t id) const override;

  // Ids of `text` before truncation and special tokens (steps 1-3 above).
  std::vector<int64_t> encode_ids(std::string_view text) const;

  const SpecialsTemplate& post_processor() const { return post_; }

 protected:
  PipelineTokenizer() = default;

  // Must be called by the most-derived constructor (uses normalize()).
  void init_pipeline(std::vector<AddedToken> added_tokens, SpecialsTemplate post,
                     int64_t pad_token_id);

  // Whether normalize() can change the text (when false it is not called).
  virtual bool has_normalizer() const = 0;
  // Appends the normalized form of valid UTF-8 `text` to out.
  virtual void normalize(std::string_view text, std::string& out) const = 0;
  // Pre-tokenizes normalized text and appends the model's ids.
  virtual void encode_normalized(std::string_view normalized, std::vector<int64_t>& ids) const = 0;
  virtual std::optional<int64_t> model_token_to_id(std::string_view token) const = 0;
  // nullptr when the model has no such id.
  virtual const std::string* model_id_to_token(int64_t id) const = 0;
  virtual std::size_t model_vocab_size() const = 0;

 private:
  void encode_piece_normalized(std::string_view text, std::vector<int64_t>& ids) const;

  std::vector<AddedToken> added_tokens_;
  std::unordered_map<std::string, int64_t> added_by_content_;
  std::unordered_map<int64_t, std::string> added_by_id_;
  AddedTokenMatcher raw_matcher_;         // normalized == false, on the raw text
  AddedTokenMatcher normalized_matcher_;  // normalized == true, normalized patterns
  SpecialsTemplate post_;
  int64_t pad_token_id_ = 0;
};

}  // namespace deltatune::text
