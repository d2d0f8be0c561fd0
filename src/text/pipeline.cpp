#include "deltatune/text/pipeline.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "deltatune/error.h"
#include "unicode.h"

namespace deltatune::text {

Vocabulary::Vocabulary(std::unordered_map<std::string, int64_t> token_to_id,
                       const std::string& what)
    : ids_(std::move(token_to_id)) {
  int64_t max_id = -1;
  for (const auto& [token, id] : ids_) {
    if (id < 0) throw Error(what + ": negative id for token '" + token + "'");
    max_id = std::max(max_id, id);
  }
  // Ids of a real vocabulary are dense from 0 (added tokens may leave a few
  // holes): a far larger id is crafted, and the id-to-token table would take
  // memory by it rather than by the file's size.
  const int64_t plausible = 2 * static_cast<int64_t>(ids_.size()) + 1024;
  if (max_id >= plausible)
    throw Error(what + ": token id " + std::to_string(max_id) + " is implausible for " +
                std::to_string(ids_.size()) + " tokens");
  tokens_.resize(static_cast<std::size_t>(max_id + 1));
  has_id_.assign(tokens_.size(), false);
  for (const auto& [token, id] : ids_) {
    tokens_[static_cast<std::size_t>(id)] = token;
    has_id_[static_cast<std::size_t>(id)] = true;
  }
}

std::optional<int64_t> Vocabulary::find(std::string_view token) const {
  auto it = ids_.find(std::string(token));
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

const std::string* Vocabulary::token(int64_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= tokens_.size() ||
      !has_id_[static_cast<std::size_t>(id)]) {
    return nullptr;
  }
  return &tokens_[static_cast<std::size_t>(id)];
}

namespace {

// Rust regex's Unicode \w: Alphabetic, marks, Nd, Pc, Join_Control. Alphabetic is
// approximated by letters and Nl (its remaining members are marks or rare So).
bool is_word_char(char32_t cp) {
  if (cp < 0x80) {
    return (cp >= '0' && cp <= '9') || ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') || cp == '_';
  }
  if (cp == 0x200C || cp == 0x200D) return true;
  switch (detail::category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

// Start of the code point that ends at byte `end` (exclusive) of valid UTF-8.
std::size_t previous_char_start(std::string_view s, std::size_t end) {
  std::size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

bool ends_with_word(std::string_view s, std::size_t end) {
  if (end == 0) return false;
  std::size_t i = previous_char_start(s, end);
  return is_word_char(detail::next_code_point(s, i));
}

bool starts_with_word(std::string_view s, std::size_t begin) {
  if (begin >= s.size()) return false;
  return is_word_char(detail::next_code_point(s, begin));
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<std::string> patterns,
                                     std::vector<AddedToken> tokens)
    : patterns_(std::move(patterns)), tokens_(std::move(tokens)) {
  // HF skips empty contents when building its automaton.
  for (std::size_t k = 0; k < patterns_.size();) {
    if (patterns_[k].empty()) {
      patterns_.erase(patterns_.begin() + static_cast<std::ptrdiff_t>(k));
      tokens_.erase(tokens_.begin() + static_cast<std::ptrdiff_t>(k));
    } else {
      first_byte_[static_cast<unsigned char>(patterns_[k][0])] = true;
      ++k;
    }
  }
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Piece>& out) const {
  const std::size_t n = text.size();
  std::size_t start_offset = 0;
  std::size_t pos = 0;
  while (pos < n) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    std::size_t best = patterns_.size();
    std::size_t best_len = 0;
    for (std::size_t k = 0; k < patterns_.size(); ++k) {
      const std::string& p = patterns_[k];
      if (p.size() > best_len && p.size() <= n - pos &&
          std::memcmp(text.data() + pos, p.data(), p.size()) == 0) {
        best = k;
        best_len = p.size();
      }
    }
    if (best == patterns_.size()) {
      ++pos;
      continue;
    }
    std::size_t start = pos;
    std::size_t stop = pos + best_len;
    // Iteration resumes after the match even when the match is then discarded.
    pos = stop;
    const AddedToken& tok = tokens_[best];
    if (tok.single_word && (ends_with_word(text, start) || starts_with_word(text, stop))) continue;
    if (tok.lstrip) {
      std::size_t s = start;
      while (s > 0) {
        std::size_t prev = previous_char_start(text, s);
        std::size_t i = prev;
        if (!detail::is_white_space(detail::next_code_point(text, i))) break;
        s = prev;
      }
      // Whitespace already consumed by the previous match stays with it.
      start = std::max(s, start_offset);
    }
    if (tok.rstrip) {
      while (stop < n) {
        std::size_t i = stop;
        if (!detail::is_white_space(detail::next_code_point(text, i))) break;
        stop = i;
      }
    }
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, tok.id});
    start_offset = stop;
  }
  if (start_offset < n) out.push_back({start_offset, n, -1});
}

std::size_t SpecialsTemplate::added_tokens(bool is_pair) const {
  std::size_t n = 0;
  for (const Piece& p : is_pair ? pair : single) {
    if (p.sequence < 0) n += p.ids.size();
  }
  return n;
}

SpecialsTemplate SpecialsTemplate::bert(int64_t cls_id, int64_t sep_id) {
  SpecialsTemplate t;
  t.single = {{-1, {cls_id}, 0}, {0, {}, 0}, {-1, {sep_id}, 0}};
  t.pair = {{-1, {cls_id}, 0}, {0, {}, 0}, {-1, {sep_id}, 0}, {1, {}, 1}, {-1, {sep_id}, 1}};
  return t;
}

SpecialsTemplate SpecialsTemplate::roberta(int64_t cls_id, int64_t sep_id) {
  SpecialsTemplate t;
  t.single = {{-1, {cls_id}, 0}, {0, {}, 0}, {-1, {sep_id}, 0}};
  t.pair = {{-1, {cls_id}, 0}, {0, {}, 0}, {-1, {sep_id}, 0},
            {-1, {sep_id}, 0}, {1, {}, 0}, {-1, {sep_id}, 0}};
  return t;
}

std::pair<std::size_t, std::size_t> longest_first_lengths(std::size_t len_a, std::size_t len_b,
                                                          std::size_t budget) {
  if (budget == 0) return {0, 0};
  if (len_a + len_b <= budget) return {len_a, len_b};
  std::size_t n1 = len_a;
  std::size_t n2 = len_b;
  const bool swap = n1 > n2;
  if (swap) std::swap(n1, n2);
  // n1 <= n2 from here on.
  n2 = n1 > budget ? n1 : std::max(n1, budget - n1);
  if (n1 + n2 > budget) {
    n1 = budget / 2;
    n2 = n1 + budget % 2;
  }
  if (swap) std::swap(n1, n2);
  return {std::min(n1, len_a), std::min(n2, len_b)};
}

void PipelineTokenizer::init_pipeline(std::vector<AddedToken> added_tokens, SpecialsTemplate post,
                                      int64_t pad_token_id) {
  added_tokens_ = std::move(added_tokens);
  post_ = std::move(post);
  pad_token_id_ = pad_token_id;
  added_by_content_.clear();
  added_by_id_.clear();
  std::vector<std::string> raw_patterns, norm_patterns;
  std::vector<AddedToken> raw_tokens, norm_tokens;
  for (const AddedToken& t : added_tokens_) {
    added_by_content_[t.content] = t.id;
    added_by_id_[t.id] = t.content;
    if (t.normalized) {
      std::string pattern;
      if (has_normalizer()) {
        detail::check_utf8(t.content);
        normalize(t.content, pattern);
      } else {
        pattern = t.content;
      }
      norm_patterns.push_back(std::move(pattern));
      norm_tokens.push_back(t);
    } else {
      raw_patterns.push_back(t.content);
      raw_tokens.push_back(t);
    }
  }
  raw_matcher_ = AddedTokenMatcher(std::move(raw_patterns), std::move(raw_tokens));
  normalized_matcher_ = AddedTokenMatcher(std::move(norm_patterns), std::move(norm_tokens));
}

void PipelineTokenizer::encode_piece_normalized(std::string_view text,
                                                std::vector<int64_t>& ids) const {
  std::string normalized_buffer;
  std::string_view normalized = text;
  if (has_normalizer()) {
    normalized_buffer.reserve(text.size() + 8);
    normalize(text, normalized_buffer);
    normalized = normalized_buffer;
  }
  if (normalized.empty()) return;
  if (normalized_matcher_.empty()) {
    encode_normalized(normalized, ids);
    return;
  }
  std::vector<AddedTokenMatcher::Piece> pieces;
  normalized_matcher_.split(normalized, pieces);
  for (const auto& p : pieces) {
    if (p.id >= 0) {
      ids.push_back(p.id);
    } else {
      encode_normalized(normalized.substr(p.begin, p.end - p.begin), ids);
    }
  }
}

std::vector<int64_t> PipelineTokenizer::encode_ids(std::string_view text) const {
  detail::check_utf8(text);
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (raw_matcher_.empty()) {
    encode_piece_normalized(text, ids);
    return ids;
  }
  std::vector<AddedTokenMatcher::Piece> pieces;
  raw_matcher_.split(text, pieces);
  for (const auto& p : pieces) {
    if (p.id >= 0) {
      ids.push_back(p.id);
    } else {
      encode_piece_normalized(text.substr(p.begin, p.end - p.begin), ids);
    }
  }
  return ids;
}

Encoding PipelineTokenizer::encode(std::string_view text_a, std::optional<std::string_view> text_b,
                                   std::size_t max_length) const {
  // transformers tests `if text_pair`, so an empty second text encodes as a single sequence.
  const bool is_pair = text_b.has_value() && !text_b->empty();
  std::vector<int64_t> ids_a = encode_ids(text_a);
  std::vector<int64_t> ids_b;
  if (is_pair) ids_b = encode_ids(*text_b);

  const std::size_t added = post_.added_tokens(is_pair);
  if (max_length < added) {
    throw Error("max_length " + std::to_string(max_length) + " cannot hold the " +
                std::to_string(added) + " special tokens of a " +
                (is_pair ? "pair" : "single sequence"));
  }
  const std::size_t budget = max_length - added;
  if (is_pair) {
    const auto [n_a, n_b] = longest_first_lengths(ids_a.size(), ids_b.size(), budget);
    ids_a.resize(n_a);
    ids_b.resize(n_b);
  } else if (ids_a.size() > budget) {
    ids_a.resize(budget);
  }

  Encoding enc;
  const std::size_t total = ids_a.size() + ids_b.size() + added;
  enc.input_ids.reserve(total);
  enc.token_type_ids.reserve(total);
  const std::vector<SpecialsTemplate::Piece>& pieces = is_pair ? post_.pair : post_.single;
  if (pieces.empty()) {
    // No post-processor: HF concatenates the sequences with type ids 0 and 1.
    enc.input_ids = ids_a;
    enc.token_type_ids.assign(ids_a.size(), 0);
    enc.input_ids.insert(enc.input_ids.end(), ids_b.begin(), ids_b.end());
    enc.token_type_ids.resize(enc.input_ids.size(), 1);
  }
  for (const SpecialsTemplate::Piece& p : pieces) {
    const std::vector<int64_t>& src = p.sequence < 0 ? p.ids : (p.sequence == 0 ? ids_a : ids_b);
    enc.input_ids.insert(enc.input_ids.end(), src.begin(), src.end());
    enc.token_type_ids.resize(enc.input_ids.size(), p.type_id);
  }
  enc.attention_mask.assign(enc.input_ids.size(), 1);
  return enc;
}

std::vector<std::string> PipelineTokenizer::tokenize(std::string_view text) const {
  const std::vector<int64_t> ids = encode_ids(text);
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) tokens.push_back(id_to_token(id));
  return tokens;
}

std::size_t PipelineTokenizer::vocab_size() const {
  std::size_t n = model_vocab_size();
  for (const auto& [id, content] : added_by_id_) {
    if (model_id_to_token(id) == nullptr) ++n;
  }
  return n;
}

std::optional<int64_t> PipelineTokenizer::token_to_id(std::string_view token) const {
  if (!added_by_content_.empty()) {
    auto it = added_by_content_.find(std::string(token));
    if (it != added_by_content_.end()) return it->second;
  }
  return model_token_to_id(token);
}

std::string PipelineTokenizer::id_to_token(int64_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) return it->second;
  if (const std::string* t = model_id_to_token(id)) return *t;
  throw Error("token id " + std::to_string(id) + " is outside the vocabulary");
}

}  // namespace deltatune::text
