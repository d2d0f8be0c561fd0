#include "unicode.h"

#include <string>

#include "deltatune/error.h"
#include "deltatune/text/utf8.h"

namespace deltatune::text::detail {

void check_utf8(std::string_view s) {
  const std::size_t at = invalid_utf8_at(s);
  if (at == std::string_view::npos) return;
  static const char* hex = "0123456789ABCDEF";
  const auto byte = static_cast<unsigned char>(s[at]);
  const std::size_t expected = byte >= 0xF0 && byte <= 0xF4   ? 4
                               : byte >= 0xE0 && byte <= 0xEF ? 3
                               : byte >= 0xC2 && byte <= 0xDF ? 2
                                                              : 0;
  if (expected > 0 && at + expected > s.size())
    throw Error("invalid UTF-8: truncated sequence at byte offset " + std::to_string(at));
  throw Error(std::string("invalid UTF-8: byte 0x") + hex[byte >> 4] + hex[byte & 15] +
              " at byte offset " + std::to_string(at));
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
