#!/usr/bin/env python3
"""Generates hf_unicode_tables.h: where HF tokenizers' character classes differ from utf8proc's.

HF tokenizers (Rust) classify characters with tables of different Unicode versions:
BertNormalizer / BertPreTokenizer use the `unicode_categories` crate (Unicode 8-era:
later additions count as unassigned), ByteLevel's GPT-2 regex runs on Oniguruma
(Unicode 14), NFD comes from `unicode-normalization`. utf8proc is newer, so the C++
side takes utf8proc's answer and applies the exceptions listed here.

Every code point is probed through the HF Python bindings, so the tables are exact for
the tokenizers version used (the fixtures' 0.15.2) and the utf8proc the build links.

  python3 tools/gen_hf_unicode_tables.py > src/text/hf_unicode_tables.h
  clang-format -i src/text/hf_unicode_tables.h

Needs `tokenizers` (tools/requirements-hf.txt) and libutf8proc.so.2.
"""
import ctypes
import sys

import tokenizers
from tokenizers import normalizers, pre_tokenizers

U = ctypes.CDLL("libutf8proc.so.2")
U.utf8proc_category.restype = ctypes.c_int
U.utf8proc_tolower.restype = ctypes.c_int32
U.utf8proc_version.restype = ctypes.c_char_p
U.utf8proc_unicode_version.restype = ctypes.c_char_p
CATS = ["Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
        "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"]
UTF8PROC_DECOMPOSE = 1 << 4
WHITE_SPACE = {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F,
               0x205F, 0x3000, *range(0x2000, 0x200B)}


def category(cp):
    return CATS[U.utf8proc_category(cp)]


def decompose(cp):
    buf = (ctypes.c_int32 * 8)()
    bound = ctypes.c_int(0)
    n = U.utf8proc_decompose_char(cp, buf, 8, UTF8PROC_DECOMPOSE, ctypes.byref(bound))
    return "".join(chr(buf[i]) for i in range(n))


def ranges(cps):
    out = []
    for cp in sorted(cps):
        if out and out[-1][1] + 1 == cp:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


def main():
    clean = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False,
                                       strip_accents=False, lowercase=False)
    strip = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False,
                                       strip_accents=True, lowercase=False)
    lower = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False,
                                       strip_accents=False, lowercase=True)
    nfd = normalizers.NFD()
    bert_pre = pre_tokenizers.BertPreTokenizer()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)

    sets = {k: set() for k in ["not_control", "not_punct", "extra_punct", "not_mn", "extra_mn",
                               "no_decompose", "onig_unassigned"]}
    problems = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        cat = category(cp)
        ascii_punct = 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126

        cleaned = clean.normalize_str("a" + c + "a")
        hf_control = cleaned == "aa"
        hf_space = cleaned == "a a"
        my_control = cp == 0 or cp == 0xFFFD or (cp not in (9, 10, 13) and cat in ("Cc", "Cf", "Co"))
        my_space = not my_control and (cp in WHITE_SPACE)
        if hf_control and not my_control:
            problems.append(f"U+{cp:04X}: control in HF only")
        elif my_control and not hf_control:
            sets["not_control"].add(cp)
        if hf_space != my_space:
            problems.append(f"U+{cp:04X}: BertNormalizer whitespace differs")

        if cp not in WHITE_SPACE:
            hf_punct = [p for p, _ in bert_pre.pre_tokenize_str("a" + c + "a")] == ["a", c, "a"]
            my_punct = ascii_punct or cat.startswith("P")
            if my_punct and not hf_punct:
                sets["not_punct"].add(cp)
            elif hf_punct and not my_punct:
                sets["extra_punct"].add(cp)

        hf_nfd = nfd.normalize_str(c)
        if hf_nfd != decompose(cp):
            if hf_nfd == c:
                sets["no_decompose"].add(cp)
            else:
                problems.append(f"U+{cp:04X}: NFD differs")
        if hf_nfd == c:
            hf_mn = strip.normalize_str(c) == ""
            if cat == "Mn" and not hf_mn:
                sets["not_mn"].add(cp)
            elif hf_mn and cat != "Mn":
                sets["extra_mn"].add(cp)

        my_lower = "i\u0307" if cp == 0x130 else chr(U.utf8proc_tolower(cp))
        if lower.normalize_str(c) != my_lower:
            problems.append(f"U+{cp:04X}: lowercase differs")

        # GPT-2 regex classes: c joins a letter run, a number run, or an "other" run.
        def joins(prefix):
            return len(byte_level.pre_tokenize_str(prefix + c)) == 1

        hf_l, hf_n, hf_o = joins("a"), joins("1"), joins("!")
        my_l = cat in ("Lu", "Ll", "Lt", "Lm", "Lo")
        my_n = cat in ("Nd", "Nl", "No")
        my_s = cp in WHITE_SPACE
        if (my_l or my_n) and hf_o and not (hf_l or hf_n):
            sets["onig_unassigned"].add(cp)
        elif (hf_l, hf_n, hf_o) != (my_l, my_n, not (my_l or my_n or my_s)):
            problems.append(f"U+{cp:04X}: GPT-2 regex class differs")

    if problems:
        sys.exit("unhandled differences:\n" + "\n".join(problems[:50]))

    out = sys.stdout
    out.write(
        "// Generated by tools/gen_hf_unicode_tables.py; do not edit.\n"
        f"// HF tokenizers {tokenizers.__version__} vs utf8proc "
        f"{U.utf8proc_version().decode()} (Unicode {U.utf8proc_unicode_version().decode()}):\n"
        "// code points where HF's character classes differ from utf8proc's categories.\n"
        "#pragma once\n\n"
        "namespace deltatune::text::detail::hf_tables {\n\n"
        "struct Range {\n  char32_t lo, hi;\n};\n\n")
    docs = {
        "not_control": "Cc/Cf/Co in utf8proc, kept by HF BertNormalizer's clean_text",
        "not_punct": "P* in utf8proc, not punctuation for HF BertPreTokenizer",
        "extra_punct": "punctuation for HF BertPreTokenizer, not P* in utf8proc",
        "not_mn": "Mn in utf8proc, not stripped by HF BertNormalizer's strip_accents",
        "extra_mn": "stripped by HF BertNormalizer's strip_accents, not Mn in utf8proc",
        "no_decompose": "decomposed by utf8proc's NFD, left alone by HF's NFD",
        "onig_unassigned": "L*/N* in utf8proc, neither \\p{L} nor \\p{N} for HF's GPT-2 regex",
    }
    for key, doc in docs.items():
        name = "k" + "".join(w.capitalize() for w in key.split("_"))
        rs = ranges(sets[key]) or [[0x110000, 0x110000]]  # sentinel: no code point
        out.write(f"// {doc}.\ninline constexpr Range {name}[] = {{\n")
        line = "   "
        for lo, hi in rs:
            item = f" {{0x{lo:X}, 0x{hi:X}}},"
            if len(line) + len(item) > 99:
                out.write(line + "\n")
                line = "   "
            line += item
        out.write(line + "\n};\n\n")
    out.write("}  // namespace deltatune::text::detail::hf_tables\n")


if __name__ == "__main__":
    main()
