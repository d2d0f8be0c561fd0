// Unicode helpers shared by the tokenizers (private to src/text).
//
// Character classes follow the definitions Hugging Face's Rust tokenizers use:
// utf8proc supplies the general categories, and hf_unicode_tables.h lists the
// code points where HF's older Unicode tables disagree with them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <utf8proc.h>

#include "hf_unicode_tables.h"

namespace deltatune::text::detail {

template <std::size_t N>
inline bool in_ranges(const hf_tables::Range (&ranges)[N], char32_t cp) {
  std::size_t lo = 0, hi = N;
  while (lo < hi) {
    const std::size_t mid = (lo + hi) / 2;
    if (ranges[mid].hi < cp) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo < N && ranges[lo].lo <= cp;
}

// Throws deltatune::Error unless `s` is well-formed UTF-8 (RFC 3629: no overlong
// forms, no surrogates, nothing above U+10FFFF). The message names the byte offset.
void check_utf8(std::string_view s);

// Decodes the code point starting at s[i] and advances i past it.
// Precondition: s is well-formed UTF-8 (see check_utf8) and i < s.size().
inline char32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  auto cont = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]) & 0x3Fu; };
  char32_t cp;
  if (b0 < 0xE0) {
    cp = ((b0 & 0x1Fu) << 6) | cont(1);
    i += 2;
  } else if (b0 < 0xF0) {
    cp = ((b0 & 0x0Fu) << 12) | (cont(1) << 6) | cont(2);
    i += 3;
  } else {
    cp = ((b0 & 0x07u) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3);
    i += 4;
  }
  return cp;
}

inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

inline utf8proc_category_t category(char32_t cp) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(cp));
}

// Unicode White_Space: Rust's char::is_whitespace, Rust regex's \s, and
// Oniguruma's Unicode \s (which the GPT-2 pre-tokenizer regex runs on).
inline bool is_white_space(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// \p{L} (Lu, Ll, Lt, Lm, Lo) as the GPT-2 regex sees it (Oniguruma's Unicode tables).
inline bool is_gpt2_letter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  const auto c = category(cp);
  return c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO &&
         !in_ranges(hf_tables::kOnigUnassigned, cp);
}

// \p{N} (Nd, Nl, No) as the GPT-2 regex sees it.
inline bool is_gpt2_number(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  const auto c = category(cp);
  return c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO &&
         !in_ranges(hf_tables::kOnigUnassigned, cp);
}

// HF's BertPreTokenizer punctuation: char::is_ascii_punctuation (which includes
// the ASCII symbols $+<=>^`|~) or any Unicode P* category.
inline bool is_bert_punctuation(char32_t cp) {
  if (cp < 0x80) {
    return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
           (cp >= 123 && cp <= 126);
  }
  const auto c = category(cp);
  if (c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO) {
    return !in_ranges(hf_tables::kNotPunct, cp);
  }
  return in_ranges(hf_tables::kExtraPunct, cp);
}

// HF BertNormalizer's is_control: Cc, Cf or Co (unicode_categories' is_other(),
// which leaves out Cn), except \t \n \r which count as whitespace.
inline bool is_bert_control(char32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  if (cp < 0x20 || cp == 0x7F) return true;
  if (cp < 0x80) return false;
  const auto c = category(cp);
  return (c == UTF8PROC_CATEGORY_CC || c == UTF8PROC_CATEGORY_CF || c == UTF8PROC_CATEGORY_CO) &&
         !in_ranges(hf_tables::kNotControl, cp);
}

// HF BertNormalizer's "chinese character" ranges (CJK ideograph blocks only).
inline bool is_cjk_ideograph(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

// Mn as HF BertNormalizer's accent stripping sees it.
inline bool is_nonspacing_mark(char32_t cp) {
  if (cp < 0x300) return false;
  if (category(cp) == UTF8PROC_CATEGORY_MN) return !in_ranges(hf_tables::kNotMn, cp);
  return in_ranges(hf_tables::kExtraMn, cp);
}

// Rust's char::to_lowercase. utf8proc_tolower is the simple (1:1) mapping; the
// only unconditional 1:n lowercase mapping in SpecialCasing.txt is U+0130, which
// Rust lowercases to "i\u0307". Passes each resulting code point to f.
template <typename F>
inline void to_lowercase(char32_t cp, F&& f) {
  if (cp < 0x80) {
    f((cp >= 'A' && cp <= 'Z') ? cp + 32 : cp);
  } else if (cp == 0x130) {
    f(U'i');
    f(char32_t{0x307});
  } else {
    f(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))));
  }
}

// Canonical decomposition (NFD, without canonical reordering) of one code point,
// as HF's unicode-normalization tables give it.
// Returns the number of code points written to buf (capacity 8 is enough: the
// longest canonical decomposition in Unicode 15 has 4 code points).
std::size_t canonical_decomposition(char32_t cp, char32_t* buf, std::size_t capacity);

}  // namespace deltatune::text::detail
