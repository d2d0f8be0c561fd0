#include "deltatune/text/bpe.h"

#include <array>
#include <limits>
#include <string>
#include <utility>

#include "deltatune/error.h"
#include "unicode.h"

namespace deltatune::text {
namespace {

std::array<char32_t, 256> make_byte_table() {
  // GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the other
  // 68 bytes to U+0100.. in byte order.
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    table[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
  }
  return table;
}

const std::array<char32_t, 256>& byte_table() {
  static const std::array<char32_t, 256> table = make_byte_table();
  return table;
}

enum class CharClass : unsigned char { kLetter, kNumber, kSpace, kOther };

CharClass classify(char32_t cp) {
  if (detail::is_white_space(cp)) return CharClass::kSpace;
  if (detail::is_gpt2_letter(cp)) return CharClass::kLetter;
  if (detail::is_gpt2_number(cp)) return CharClass::kNumber;
  return CharClass::kOther;
}

// End (exclusive, in code points) of the GPT-2 pre-tokenization regex match at i:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Alternatives are tried in order (first match wins, each quantifier greedy); the
// alternatives cover every character, so a match always exists.
std::size_t gpt2_match_end(const std::vector<char32_t>& cps, const std::vector<CharClass>& cls,
                           std::size_t i) {
  const std::size_t m = cps.size();
  const char32_t c = cps[i];
  if (c == '\'' && i + 1 < m) {
    const char32_t n1 = cps[i + 1];
    if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') return i + 2;
    if (i + 2 < m) {
      const char32_t n2 = cps[i + 2];
      if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
        return i + 3;
      }
    }
  }
  // The optional leading ' ' of the three run alternatives.
  const std::size_t k = (c == ' ' && i + 1 < m) ? i + 1 : i;
  const CharClass run = cls[k];
  if (run != CharClass::kSpace) {
    std::size_t j = k + 1;
    while (j < m && cls[j] == run) ++j;
    return j;
  }
  // cls[i] is whitespace here.
  std::size_t j = i + 1;
  while (j < m && cls[j] == CharClass::kSpace) ++j;
  if (j == m) return m;          // \s+(?!\S) up to the end
  if (j - i >= 2) return j - 1;  // \s+(?!\S) leaves the last space for the next word
  return j;                      // \s+
}

}  // namespace

char32_t ByteLevelBpeTokenizer::byte_to_char(unsigned char b) { return byte_table()[b]; }

ByteLevelBpeTokenizer::ByteLevelBpeTokenizer(
    std::unordered_map<std::string, int64_t> vocab,
    const std::vector<std::pair<std::string, std::string>>& merges, ByteLevelBpeOptions options,
    std::vector<AddedToken> added_tokens, SpecialsTemplate post, int64_t pad_token_id)
    : vocab_(std::move(vocab), "BPE vocabulary"), options_(std::move(options)) {
  // Merge keys pack two ids into 32 bits each.
  for (const auto& [token, id] : vocab_.ids()) {
    if (id > std::numeric_limits<uint32_t>::max()) {
      throw Error("BPE vocabulary: id out of range for token '" + token + "'");
    }
  }
  for (int b = 0; b < 256; ++b) {
    std::string s;
    detail::append_utf8(s, byte_to_char(static_cast<unsigned char>(b)));
    auto it = vocab_.ids().find(s);
    byte_ids_[static_cast<std::size_t>(b)] = it == vocab_.ids().end() ? -1 : it->second;
  }
  if (options_.unk_token) {
    auto it = vocab_.ids().find(*options_.unk_token);
    if (it == vocab_.ids().end()) {
      throw Error("BPE vocabulary: unk token '" + *options_.unk_token + "' is missing");
    }
    unk_id_ = it->second;
  }
  merges_.reserve(merges.size());
  for (std::size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    auto ia = vocab_.ids().find(a);
    auto ib = vocab_.ids().find(b);
    auto iab = vocab_.ids().find(a + b);
    if (ia == vocab_.ids().end() || ib == vocab_.ids().end() || iab == vocab_.ids().end()) {
      throw Error("BPE merge " + std::to_string(r + 1) + " '" + a + " " + b +
                  "': token not in the vocabulary");
    }
    const uint64_t key =
        (static_cast<uint64_t>(ia->second) << 32) | static_cast<uint64_t>(ib->second);
    // A repeated merge keeps its last rank, as HF's HashMap collection does.
    merges_[key] = {static_cast<uint32_t>(r), iab->second};
  }
  init_pipeline(std::move(added_tokens), std::move(post), pad_token_id);
}

void ByteLevelBpeTokenizer::merge_word(std::string_view word, std::vector<int64_t>& out) const {
  std::vector<int64_t> sym;
  sym.reserve(word.size());
  for (char ch : word) {
    const int64_t id = byte_ids_[static_cast<unsigned char>(ch)];
    if (id >= 0) {
      sym.push_back(id);
    } else if (unk_id_ >= 0) {
      sym.push_back(unk_id_);
    }
  }
  // Repeatedly merge the lowest-ranked adjacent pair, all its occurrences left to
  // right; equivalent to HF's priority queue ordered by (rank, position).
  while (sym.size() > 1) {
    uint32_t best_rank = std::numeric_limits<uint32_t>::max();
    uint64_t best_key = 0;
    int64_t best_new = -1;
    for (std::size_t p = 0; p + 1 < sym.size(); ++p) {
      const uint64_t key =
          (static_cast<uint64_t>(sym[p]) << 32) | static_cast<uint64_t>(sym[p + 1]);
      auto it = merges_.find(key);
      if (it != merges_.end() && it->second.first < best_rank) {
        best_rank = it->second.first;
        best_key = key;
        best_new = it->second.second;
      }
    }
    if (best_new < 0) break;
    const auto left = static_cast<int64_t>(best_key >> 32);
    const auto right = static_cast<int64_t>(best_key & 0xFFFFFFFFu);
    std::size_t w = 0;
    for (std::size_t p = 0; p < sym.size();) {
      if (p + 1 < sym.size() && sym[p] == left && sym[p + 1] == right) {
        sym[w++] = best_new;
        p += 2;
      } else {
        sym[w++] = sym[p++];
      }
    }
    sym.resize(w);
  }
  out.insert(out.end(), sym.begin(), sym.end());
}

void ByteLevelBpeTokenizer::encode_word(std::string_view word, std::vector<int64_t>& ids) const {
  if (options_.ignore_merges) {
    std::string mapped;
    for (char ch : word) detail::append_utf8(mapped, byte_to_char(static_cast<unsigned char>(ch)));
    if (auto it = vocab_.ids().find(mapped); it != vocab_.ids().end()) {
      ids.push_back(it->second);
      return;
    }
  }
  std::string key(word);
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (auto it = cache_.find(key); it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int64_t> merged;
  merge_word(word, merged);
  ids.insert(ids.end(), merged.begin(), merged.end());
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (cache_.size() < kCacheCapacity) cache_.emplace(std::move(key), std::move(merged));
}

namespace {

// Calls f(piece) for each GPT-2 pre-token of valid UTF-8 `text` (never empty).
template <typename F>
void for_each_gpt2_piece(std::string_view text, bool add_prefix_space, F&& f) {
  if (text.empty()) return;
  // HF prepends on each non-empty piece; an empty piece stays empty.
  std::string prefixed;
  if (add_prefix_space && text.front() != ' ') {
    prefixed.reserve(text.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(text);
    text = prefixed;
  }
  std::vector<char32_t> cps;
  std::vector<CharClass> cls;
  std::vector<std::size_t> offsets;  // byte offset of each code point, plus the end
  cps.reserve(text.size());
  cls.reserve(text.size());
  offsets.reserve(text.size() + 1);
  for (std::size_t i = 0; i < text.size();) {
    offsets.push_back(i);
    const char32_t cp = detail::next_code_point(text, i);
    cps.push_back(cp);
    cls.push_back(classify(cp));
  }
  offsets.push_back(text.size());
  for (std::size_t i = 0; i < cps.size();) {
    const std::size_t j = gpt2_match_end(cps, cls, i);
    f(text.substr(offsets[i], offsets[j] - offsets[i]));
    i = j;
  }
}

}  // namespace

std::vector<std::string> ByteLevelBpeTokenizer::pre_tokenize(std::string_view text,
                                                             bool add_prefix_space) {
  detail::check_utf8(text);
  std::vector<std::string> pieces;
  for_each_gpt2_piece(text, add_prefix_space,
                      [&](std::string_view piece) { pieces.emplace_back(piece); });
  return pieces;
}

void ByteLevelBpeTokenizer::encode_normalized(std::string_view text,
                                              std::vector<int64_t>& ids) const {
  for_each_gpt2_piece(text, options_.add_prefix_space,
                      [&](std::string_view piece) { encode_word(piece, ids); });
}

}  // namespace deltatune::text
