#include "deltatune/text/wordpiece.h"

#include <string>
#include <utility>

#include "deltatune/error.h"
#include "unicode.h"

namespace deltatune::text {

WordPieceTokenizer::WordPieceTokenizer(std::unordered_map<std::string, int64_t> vocab,
                                       std::optional<BertNormalizerOptions> normalizer,
                                       WordPieceOptions options,
                                       std::vector<AddedToken> added_tokens, SpecialsTemplate post,
                                       int64_t pad_token_id)
    : vocab_(std::move(vocab), "WordPiece vocabulary"),
      normalizer_(std::move(normalizer)),
      options_(std::move(options)) {
  auto unk = vocab_.ids().find(options_.unk_token);
  if (unk == vocab_.ids().end()) {
    throw Error("WordPiece vocabulary: unk token '" + options_.unk_token + "' is missing");
  }
  unk_id_ = unk->second;
  if (normalizer_) strip_accents_ = normalizer_->strip_accents.value_or(normalizer_->lowercase);
  init_pipeline(std::move(added_tokens), std::move(post), pad_token_id);
}

void WordPieceTokenizer::normalize(std::string_view text, std::string& out) const {
  const BertNormalizerOptions& o = *normalizer_;
  const bool strip = strip_accents_;
  auto emit_lower = [&](char32_t c) {
    if (o.lowercase) {
      detail::to_lowercase(c, [&](char32_t l) { detail::append_utf8(out, l); });
    } else {
      detail::append_utf8(out, c);
    }
  };
  // Accent stripping runs before lowercasing, as in HF (Rust) BertNormalizer.
  auto emit = [&](char32_t c) {
    if (strip && c >= 0xC0) {
      char32_t buf[8];
      const std::size_t n = detail::canonical_decomposition(c, buf, 8);
      for (std::size_t k = 0; k < n; ++k) {
        if (!detail::is_nonspacing_mark(buf[k])) emit_lower(buf[k]);
      }
    } else {
      emit_lower(c);
    }
  };

  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    const auto b = static_cast<unsigned char>(text[i]);
    if (b < 0x80) {
      ++i;
      char c = static_cast<char>(b);
      if (o.clean_text) {
        if (b == 0 || detail::is_bert_control(b)) continue;
        if (b == '\t' || b == '\n' || b == '\r') c = ' ';
      }
      if (o.lowercase && c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
      out.push_back(c);
      continue;
    }
    char32_t cp = detail::next_code_point(text, i);
    if (o.clean_text) {
      if (cp == 0xFFFD || detail::is_bert_control(cp)) continue;
      if (detail::is_white_space(cp)) {
        out.push_back(' ');
        continue;
      }
    }
    if (o.handle_chinese_chars && detail::is_cjk_ideograph(cp)) {
      out.push_back(' ');
      emit(cp);
      out.push_back(' ');
    } else {
      emit(cp);
    }
  }
}

void WordPieceTokenizer::encode_word(std::string_view word, std::size_t n_chars,
                                     std::vector<int64_t>& ids, std::string& key) const {
  if (n_chars > options_.max_input_chars_per_word) {
    ids.push_back(unk_id_);
    return;
  }
  // Greedy longest-match-first; one unmatched position turns the whole word into unk.
  const std::size_t mark = ids.size();
  std::size_t start = 0;
  while (start < word.size()) {
    std::size_t end = word.size();
    int64_t found = -1;
    while (start < end) {
      if (start == 0) {
        key.assign(word.data(), end);
      } else {
        key.assign(options_.continuing_subword_prefix);
        key.append(word.data() + start, end - start);
      }
      if (auto it = vocab_.ids().find(key); it != vocab_.ids().end()) {
        found = it->second;
        break;
      }
      do {
        --end;
      } while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80);
    }
    if (found < 0) {
      ids.resize(mark);
      ids.push_back(unk_id_);
      return;
    }
    ids.push_back(found);
    start = end;
  }
}

void WordPieceTokenizer::encode_normalized(std::string_view text, std::vector<int64_t>& ids) const {
  // BertPreTokenizer: split on White_Space (removed), then isolate each punctuation char.
  std::string key;
  key.reserve(64);
  const std::size_t n = text.size();
  std::size_t i = 0;
  std::size_t word_start = 0;
  std::size_t n_chars = 0;
  while (i < n) {
    const std::size_t char_start = i;
    const char32_t cp = detail::next_code_point(text, i);
    const bool space = detail::is_white_space(cp);
    if (space || detail::is_bert_punctuation(cp)) {
      if (n_chars > 0) {
        encode_word(text.substr(word_start, char_start - word_start), n_chars, ids, key);
        n_chars = 0;
      }
      if (!space) encode_word(text.substr(char_start, i - char_start), 1, ids, key);
      continue;
    }
    if (n_chars == 0) word_start = char_start;
    ++n_chars;
  }
  if (n_chars > 0) encode_word(text.substr(word_start), n_chars, ids, key);
}

}  // namespace deltatune::text
