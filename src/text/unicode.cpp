#include "unicode.h"

#include <string>

#include "deltatune/error.h"

namespace deltatune::text::detail {

void check_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char b0 = p[i];
    if (b0 < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    char32_t min;
    char32_t cp;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
      min = 0x80;
      cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      min = 0x800;
      cp = b0 & 0x0F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      min = 0x10000;
      cp = b0 & 0x07;
    } else {
      static const char* hex = "0123456789ABCDEF";
      throw Error(std::string("invalid UTF-8: unexpected byte 0x") + hex[b0 >> 4] + hex[b0 & 15] +
                  " at byte offset " + std::to_string(i));
    }
    if (i + len > n) {
      throw Error("invalid UTF-8: truncated sequence at byte offset " + std::to_string(i));
    }
    for (std::size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) {
        throw Error("invalid UTF-8: bad continuation byte at byte offset " + std::to_string(i + k));
      }
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      throw Error("invalid UTF-8: overlong, surrogate or out-of-range sequence at byte offset " +
                  std::to_string(i));
    }
    i += len;
  }
}

std::size_t canonical_decomposition(char32_t cp, char32_t* buf, std::size_t capacity) {
  if (in_ranges(hf_tables::kNoDecompose, cp)) {
    buf[0] = cp;
    return 1;
  }
  utf8proc_int32_t tmp[8];
  int boundclass = 0;
  const utf8proc_ssize_t n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(cp), tmp, 8,
                                                     UTF8PROC_DECOMPOSE, &boundclass);
  if (n <= 0 || static_cast<std::size_t>(n) > capacity || n > 8) {
    // Not reachable for valid scalar values; keep the character unchanged.
    buf[0] = cp;
    return 1;
  }
  for (utf8proc_ssize_t k = 0; k < n; ++k) buf[k] = static_cast<char32_t>(tmp[k]);
  return static_cast<std::size_t>(n);
}

}  // namespace deltatune::text::detail
