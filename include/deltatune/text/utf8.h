// UTF-8 validation shared by the tokenizers and the data readers.
#pragma once

#include <cstddef>
#include <string_view>

namespace deltatune::text {

// Byte offset of the first ill-formed sequence in `s` (RFC 3629: no overlong
// forms, no surrogates, nothing above U+10FFFF), or std::string_view::npos.
std::size_t invalid_utf8_at(std::string_view s);

}  // namespace deltatune::text
