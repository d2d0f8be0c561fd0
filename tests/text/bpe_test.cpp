// Hand-checked byte-level BPE cases on a toy vocabulary: the GPT-2
// pre-tokenization regex, the byte -> char table, merge order and added tokens.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "deltatune/error.h"
#include "deltatune/text/bpe.h"
#include "deltatune/text/pipeline.h"

namespace deltatune::text {
namespace {

using Pieces = std::vector<std::string>;
using Tokens = std::vector<std::string>;
using Ids = std::vector<int64_t>;

std::string utf8(char32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

Pieces pre(std::string_view text, bool prefix = false) {
  return ByteLevelBpeTokenizer::pre_tokenize(text, prefix);
}

TEST(Gpt2PreTokenizer, WordsPunctuationAndSpaces) {
  EXPECT_EQ(
      pre("Hello my friend, how is your day going?"),
      (Pieces{"Hello", " my", " friend", ",", " how", " is", " your", " day", " going", "?"}));
  EXPECT_EQ(pre("Hello there\nHello there"), (Pieces{"Hello", " there", "\n", "Hello", " there"}));
  // \s+(?!\S) leaves the last space of a run to prefix the next word.
  EXPECT_EQ(pre("Hello there       dear"), (Pieces{"Hello", " there", "      ", " dear"}));
  EXPECT_EQ(pre("a \t b"), (Pieces{"a", " \t", " b"}));
  EXPECT_EQ(pre("a  "), (Pieces{"a", "  "}));
  EXPECT_EQ(pre(" "), (Pieces{" "}));
  EXPECT_TRUE(pre("").empty());
}

TEST(Gpt2PreTokenizer, ContractionsAreLowerCaseAsciiOnly) {
  EXPECT_EQ(pre("don't I'LL we've 'sup"),
            (Pieces{"don", "'t", " I", "'", "LL", " we", "'ve", " '", "sup"}));
  EXPECT_EQ(pre("''s"), (Pieces{"''", "s"}));
  EXPECT_EQ(pre("it's'll"), (Pieces{"it", "'s", "'ll"}));
}

TEST(Gpt2PreTokenizer, UnicodeCategories) {
  // ½ is No (a number), é is a letter, U+0301 a mark (neither letter nor number).
  EXPECT_EQ(pre("abc123 ½x été"), (Pieces{"abc", "123", " ½", "x", " été"}));
  EXPECT_EQ(pre("e\u0301!"), (Pieces{"e", "\u0301!"}));
  // U+3000 is White_Space (Oniguruma's Unicode \s).
  EXPECT_EQ(pre("a\u3000b"), (Pieces{"a", "\u3000", "b"}));
}

TEST(Gpt2PreTokenizer, LettersFollowOnigurumaTables) {
  // U+11F04 (Kawi, Unicode 15) is not \p{L} for HF's Oniguruma; U+0905 is.
  EXPECT_EQ(pre("a\U00011F04b"), (Pieces{"a", "\U00011F04", "b"}));
  EXPECT_EQ(pre("a\u0905b"), (Pieces{"a\u0905b"}));
}

TEST(Gpt2PreTokenizer, AddPrefixSpace) {
  EXPECT_EQ(pre("Hello", true), (Pieces{" Hello"}));
  EXPECT_EQ(pre(" Hello", true), (Pieces{" Hello"}));
  EXPECT_TRUE(pre("", true).empty());
}

TEST(ByteLevel, ByteToCharTable) {
  EXPECT_EQ(ByteLevelBpeTokenizer::byte_to_char('!'), U'!');
  EXPECT_EQ(ByteLevelBpeTokenizer::byte_to_char(' '), char32_t{0x120});   // Ġ
  EXPECT_EQ(ByteLevelBpeTokenizer::byte_to_char('\n'), char32_t{0x10A});  // Ċ
  EXPECT_EQ(ByteLevelBpeTokenizer::byte_to_char(0), char32_t{0x100});
  EXPECT_EQ(ByteLevelBpeTokenizer::byte_to_char(0xAD), char32_t{0x143});  // last remapped
  EXPECT_EQ(ByteLevelBpeTokenizer::byte_to_char(0xC3), char32_t{0xC3});
}

// Vocabulary: the 256 byte characters (id = byte) plus the merge results.
std::unique_ptr<ByteLevelBpeTokenizer> toy_bpe(
    const std::vector<std::pair<std::string, std::string>>& merges, bool add_prefix_space,
    std::vector<AddedToken> added = {}) {
  std::unordered_map<std::string, int64_t> vocab;
  for (int b = 0; b < 256; ++b) {
    vocab[utf8(ByteLevelBpeTokenizer::byte_to_char(static_cast<unsigned char>(b)))] = b;
  }
  int64_t next = 256;
  for (const auto& [a, b] : merges) vocab.emplace(a + b, next++);
  for (const char* s : {"<s>", "</s>", "<pad>", "<mask>"}) vocab.emplace(s, next++);
  for (AddedToken& t : added) t.id = vocab.at(t.content);
  ByteLevelBpeOptions o;
  o.add_prefix_space = add_prefix_space;
  return std::make_unique<ByteLevelBpeTokenizer>(
      vocab, merges, o, added, SpecialsTemplate::roberta(vocab.at("<s>"), vocab.at("</s>")),
      vocab.at("<pad>"));
}

TEST(ByteLevelBpe, MergesApplyByRankNotPosition) {
  const std::string G = utf8(0x120);
  auto tok = toy_bpe({{G, "t"},
                      {"h", "e"},
                      {G + "t", "he"},
                      {"l", "o"},
                      {"lo", "w"},
                      {"b", "c"},
                      {"a", "b"},
                      {"a", "a"}},
                     false);
  EXPECT_EQ(tok->tokenize("the low the"), (Tokens{"t", "he", G, "low", G + "the"}));
  // (b,c) outranks (a,b), so "abc" -> a + bc even though "ab" comes first.
  EXPECT_EQ(tok->tokenize("abc"), (Tokens{"a", "bc"}));
  // Overlapping occurrences merge left to right.
  EXPECT_EQ(tok->tokenize("aaa"), (Tokens{"aa", "a"}));
  // Bytes of non-ASCII characters map through the GPT-2 table.
  EXPECT_EQ(tok->tokenize("é"), (Tokens{"Ã", "©"}));
  // Cached words give the same result the second time.
  EXPECT_EQ(tok->tokenize("abc abc"), (Tokens{"a", "bc", G, "a", "bc"}));
}

TEST(ByteLevelBpe, RobertaTemplateAndTruncation) {
  auto tok = toy_bpe({}, false);
  const int64_t s = *tok->token_to_id("<s>");
  const int64_t e = *tok->token_to_id("</s>");
  const Encoding enc = tok->encode("ab", std::string_view("cde"), 100);
  EXPECT_EQ(enc.input_ids, (Ids{s, 'a', 'b', e, e, 'c', 'd', 'e', e}));
  EXPECT_EQ(enc.token_type_ids, Ids(9, 0));  // RoBERTa: every type id is 0
  // 2 + 3 into 7 - 4 = 3: the shorter gets 3 / 2 = 1, the longer 2.
  EXPECT_EQ(tok->encode("ab", std::string_view("cde"), 7).input_ids,
            (Ids{s, 'a', e, e, 'c', 'd', e}));
  EXPECT_EQ(tok->encode("", std::nullopt, 10).input_ids, (Ids{s, e}));
}

TEST(ByteLevelBpe, AddedTokenLstripAndPrefixSpacePerPiece) {
  AddedToken mask;
  mask.content = "<mask>";
  mask.lstrip = true;
  const std::string G = utf8(0x120);
  auto tok = toy_bpe({}, true, {mask});
  // lstrip swallows the space before <mask>; each text piece gets its own prefix space.
  EXPECT_EQ(tok->tokenize("a <mask>b"), (Tokens{G, "a", "<mask>", G, "b"}));
  auto no_prefix = toy_bpe({}, false, {mask});
  EXPECT_EQ(no_prefix->tokenize("a  <mask> b"), (Tokens{"a", "<mask>", G, "b"}));
}

TEST(ByteLevelBpe, MergeOutsideVocabularyIsAnError) {
  std::unordered_map<std::string, int64_t> vocab = {{"a", 0}, {"b", 1}, {"<pad>", 2}};
  EXPECT_THROW(ByteLevelBpeTokenizer(vocab, {{"a", "b"}}, {}, {}, {}, 2), Error);
}

}  // namespace
}  // namespace deltatune::text
