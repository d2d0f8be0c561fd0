// RoBERTa / GPT-2 tokenizer: HF ByteLevel pre-tokenizer + BPE model.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "deltatune/text/pipeline.h"

namespace deltatune::text {

struct ByteLevelBpeOptions {
  // HF ByteLevel add_prefix_space: prepend ' ' to each text piece not starting with one.
  bool add_prefix_space = false;
  // HF BPE ignore_merges: a pre-token found whole in the vocabulary is one token.
  bool ignore_merges = false;
  // HF BPE unk_token; unset (RoBERTa) drops symbols missing from the vocabulary.
  std::optional<std::string> unk_token;
};

class ByteLevelBpeTokenizer final : public PipelineTokenizer {
 public:
  // `vocab` maps byte-level token strings to ids; `merges` are in rank order.
  // Throws deltatune::Error when a merge refers to a token outside the vocabulary.
  ByteLevelBpeTokenizer(std::unordered_map<std::string, int64_t> vocab,
                        const std::vector<std::pair<std::string, std::string>>& merges,
                        ByteLevelBpeOptions options, std::vector<AddedToken> added_tokens,
                        SpecialsTemplate post, int64_t pad_token_id);

  // GPT-2's byte -> printable code point table (bytes_to_unicode).
  static char32_t byte_to_char(unsigned char b);

  // The ByteLevel pre-tokenizer's pieces of valid UTF-8 `text`, as raw UTF-8 (before
  // the byte -> char mapping): optional ' ' prefix, then the GPT-2 regex
  //   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  static std::vector<std::string> pre_tokenize(std::string_view text, bool add_prefix_space);

 protected:
  bool has_normalizer() const override { return false; }
  void normalize(std::string_view text, std::string& out) const override { out.append(text); }
  void encode_normalized(std::string_view normalized, std::vector<int64_t>& ids) const override;
  std::optional<int64_t> model_token_to_id(std::string_view token) const override {
    return vocab_.find(token);
  }
  const std::string* model_id_to_token(int64_t id) const override { return vocab_.token(id); }
  std::size_t model_vocab_size() const override { return vocab_.size(); }

 private:
  // BPE on the raw bytes of one pre-token.
  void encode_word(std::string_view word, std::vector<int64_t>& ids) const;
  void merge_word(std::string_view word, std::vector<int64_t>& out) const;

  Vocabulary vocab_;
  // (left id << 32 | right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<uint32_t, int64_t>> merges_;
  std::array<int64_t, 256> byte_ids_{};  // -1: byte's character not in the vocabulary
  ByteLevelBpeOptions options_;
  int64_t unk_id_ = -1;

  static constexpr std::size_t kCacheCapacity = 200000;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache_;
};

}  // namespace deltatune::text
