// Hand-checked WordPiece cases: a toy vocabulary for the algorithm, and
// MiniLM's uncased vocabulary for HF BertNormalizer / BertPreTokenizer behaviour.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "deltatune/error.h"
#include "deltatune/text/tokenizer.h"
#include "deltatune/text/wordpiece.h"
#include "text_test_util.h"

namespace deltatune::text {
namespace {

using Tokens = std::vector<std::string>;
using Ids = std::vector<int64_t>;

std::unique_ptr<WordPieceTokenizer> toy_tokenizer(BertNormalizerOptions n = {},
                                                  std::size_t max_chars = 100) {
  std::unordered_map<std::string, int64_t> vocab;
  const std::vector<std::string> tokens = {"[PAD]",  "[UNK]", "[CLS]", "[SEP]", "un",  "##aff",
                                           "##able", "aff",   "##a",   "a",     "##b", "b",
                                           "!",      "é",     "e",     "##ff",  "##é"};
  for (std::size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = static_cast<int64_t>(i);
  WordPieceOptions o;
  o.max_input_chars_per_word = max_chars;
  std::vector<AddedToken> added;
  for (const char* s : {"[PAD]", "[UNK]", "[CLS]", "[SEP]"}) {
    AddedToken t;
    t.content = s;
    t.id = vocab[s];
    added.push_back(t);
  }
  return std::make_unique<WordPieceTokenizer>(vocab, n, o, added, SpecialsTemplate::bert(2, 3), 0);
}

TEST(WordPieceToy, GreedyLongestMatchFirst) {
  auto tok = toy_tokenizer();
  EXPECT_EQ(tok->tokenize("unaffable"), (Tokens{"un", "##aff", "##able"}));
  EXPECT_EQ(tok->tokenize("aab ab"), (Tokens{"a", "##a", "##b", "a", "##b"}));
  // One unmatched piece turns the whole word into [UNK], not just the piece.
  EXPECT_EQ(tok->tokenize("unaffablex b"), (Tokens{"[UNK]", "b"}));
  EXPECT_EQ(tok->tokenize("ab!b"), (Tokens{"a", "##b", "!", "b"}));
}

TEST(WordPieceToy, MaxInputCharsCountsCodePoints) {
  auto tok = toy_tokenizer(BertNormalizerOptions{true, true, false, false}, 3);
  EXPECT_EQ(tok->tokenize("aab"), (Tokens{"a", "##a", "##b"}));
  EXPECT_EQ(tok->tokenize("aaba"), (Tokens{"[UNK]"}));
  // "ééé" is 6 bytes but 3 code points: within the limit.
  EXPECT_EQ(tok->tokenize("ééé"), (Tokens{"é", "##é", "##é"}));
  EXPECT_EQ(tok->tokenize("éééé"), (Tokens{"[UNK]"}));
}

TEST(WordPieceToy, StripAccentsFollowsLowercaseWhenUnset) {
  BertNormalizerOptions cased;
  cased.lowercase = false;  // strip_accents unset -> no stripping
  EXPECT_EQ(toy_tokenizer(cased)->tokenize("é"), (Tokens{"é"}));
  BertNormalizerOptions uncased;  // lowercase -> strip
  EXPECT_EQ(toy_tokenizer(uncased)->tokenize("É"), (Tokens{"e"}));
  BertNormalizerOptions explicit_keep;
  explicit_keep.strip_accents = false;
  EXPECT_EQ(toy_tokenizer(explicit_keep)->tokenize("É"), (Tokens{"é"}));
}

TEST(WordPieceToy, PairTemplateAndTypeIds) {
  auto tok = toy_tokenizer();
  const Encoding e = tok->encode("a b", std::string_view("un"), 64);
  EXPECT_EQ(e.input_ids, (Ids{2, 9, 11, 3, 4, 3}));
  EXPECT_EQ(e.token_type_ids, (Ids{0, 0, 0, 0, 1, 1}));
  EXPECT_EQ(e.attention_mask, (Ids{1, 1, 1, 1, 1, 1}));
  EXPECT_THROW(tok->encode("a", std::string_view("b"), 2), Error);
  EXPECT_EQ(tok->encode("a b", std::nullopt, 2).input_ids, (Ids{2, 3}));
}

class MiniLmTokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::filesystem::exists(testing::minilm_dir() / "tokenizer.json")) {
      tok_ = load_tokenizer(testing::minilm_dir()).release();
    }
  }
  static void TearDownTestSuite() {
    delete tok_;
    tok_ = nullptr;
  }
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(testing::require_minilm()); }
  static const Tokenizer* tok_;
};
const Tokenizer* MiniLmTokenizer::tok_ = nullptr;

TEST_F(MiniLmTokenizer, AccentsAndCase) {
  EXPECT_EQ(tok_->tokenize("Héllo, Wörld!"), (Tokens{"hello", ",", "world", "!"}));
  EXPECT_EQ(tok_->tokenize("naïve café Ångström"), (Tokens{"naive", "cafe", "ang", "##strom"}));
  // U+0130 lowercases to "i" + U+0307 in Rust; the mark is stripped first here anyway.
  // Σ lowercases per character (σ, never the final ς).
  EXPECT_EQ(tok_->tokenize("İstanbul ΟΔΟΣ"), (Tokens{"istanbul", "ο", "##δ", "##ο", "##σ"}));
  // Compatibility characters are not decomposed (NFD, not NFKD); ǅ lowercases to ǆ.
  EXPECT_EQ(tok_->tokenize("ﬁne ℌ ǅ"), (Tokens{"ﬁ", "##ne", "[UNK]", "[UNK]"}));
}

TEST_F(MiniLmTokenizer, CjkIdeographsAreSplitAndHangulDecomposed) {
  EXPECT_EQ(tok_->tokenize("北京欢迎你"), (Tokens{"北", "京", "[UNK]", "[UNK]", "[UNK]"}));
  EXPECT_EQ(tok_->tokenize("한국어"),
            (Tokens{"ᄒ", "##ᅡ", "##ᆫ", "##ᄀ", "##ᅮ", "##ᆨ", "##ᄋ", "##ᅥ"}));
}

TEST_F(MiniLmTokenizer, CleaningAndWhitespace) {
  EXPECT_EQ(tok_->tokenize(std::string("hel\0lo\tworld\u200b!", 17)),
            (Tokens{"hello", "world", "!"}));
  EXPECT_EQ(tok_->tokenize("\ufffd\u0085ok"), (Tokens{"ok"}));
  EXPECT_EQ(tok_->tokenize("x\u3000y\u00a0z\u2028w"), (Tokens{"x", "y", "z", "w"}));
  EXPECT_TRUE(tok_->tokenize("  \t\n ").empty());
}

TEST_F(MiniLmTokenizer, PunctuationIncludesAsciiSymbols) {
  EXPECT_EQ(tok_->tokenize("$5+3 a–b “q”"),
            (Tokens{"$", "5", "+", "3", "a", "–", "b", "“", "q", "”"}));
}

TEST_F(MiniLmTokenizer, CharacterClassesFollowHfUnicodeTables) {
  // HF's category tables predate Unicode 9: later punctuation, format characters and
  // marks are ordinary word characters there (so these words become [UNK]).
  EXPECT_EQ(tok_->tokenize("x\u2E43y"), (Tokens{"[UNK]"}));            // Po since Unicode 10
  EXPECT_EQ(tok_->tokenize("x\u2E42y"), (Tokens{"x", "[UNK]", "y"}));  // Ps, Unicode 8
  EXPECT_EQ(tok_->tokenize("x\u0890y"), (Tokens{"[UNK]"}));            // Cf since Unicode 14
  EXPECT_EQ(tok_->tokenize("x\u200By"), (Tokens{"x", "##y"}));         // Cf, removed
  EXPECT_EQ(tok_->tokenize("e\u0898"), (Tokens{"[UNK]"}));             // Mn since Unicode 14
  EXPECT_EQ(tok_->tokenize("e\u1734"), (Tokens{"e"}));                 // Mn in HF's tables, Mc now
  EXPECT_EQ(tok_->tokenize("a\U00011938"), (Tokens{"[UNK]"}));         // not decomposed by HF
}

TEST_F(MiniLmTokenizer, LongWordsBecomeUnk) {
  EXPECT_EQ(tok_->tokenize(std::string(101, 'a')), (Tokens{"[UNK]"}));
  const Tokens t100 = tok_->tokenize(std::string(100, 'a'));
  ASSERT_EQ(t100.size(), 50u);  // aaa + 48 x ##aa + ##a
  EXPECT_EQ(t100.front(), "aaa");
  EXPECT_EQ(t100.back(), "##a");
}

TEST_F(MiniLmTokenizer, SpecialTokensInTextAreMatchedVerbatim) {
  EXPECT_EQ(tok_->tokenize("[CLS] hi [SEP]"), (Tokens{"[CLS]", "hi", "[SEP]"}));
  EXPECT_EQ(tok_->encode("hello[MASK]world", std::nullopt, 512).input_ids,
            (Ids{101, 7592, 103, 2088, 102}));
  // Special tokens are not normalized, so lower-case lookalikes are plain text.
  EXPECT_EQ(tok_->tokenize("[mask]"), (Tokens{"[", "mask", "]"}));
}

TEST_F(MiniLmTokenizer, PairTruncationLongestFirst) {
  // 8 + 11 tokens into 11 - 3 = 8: both over half, so 4 + 4.
  Encoding e = tok_->encode("a b c d e f g h", std::string_view("i j k l m n o p q r s"), 11);
  EXPECT_EQ(e.input_ids, (Ids{101, 1037, 1038, 1039, 1040, 102, 1045, 1046, 1047, 1048, 102}));
  EXPECT_EQ(e.token_type_ids, (Ids{0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1}));
  // 4 + 7 tokens into 7: shorter gets 3 (= 7 / 2), longer 4.
  e = tok_->encode("The quick brown fox",
                   std::string_view("jumps over the lazy dog again and again"), 10);
  EXPECT_EQ(e.input_ids, (Ids{101, 1996, 4248, 2829, 102, 14523, 2058, 1996, 13971, 102}));
  // Only the longer side is cut when the shorter fits in half.
  e = tok_->encode("one two three four five six seven", std::string_view("eight"), 7);
  EXPECT_EQ(e.input_ids, (Ids{101, 2028, 2048, 2093, 102, 2809, 102}));
  EXPECT_EQ(e.token_type_ids, (Ids{0, 0, 0, 0, 0, 1, 1}));
  EXPECT_EQ(e.attention_mask, Ids(7, 1));
}

TEST_F(MiniLmTokenizer, VocabularyAccessors) {
  EXPECT_EQ(tok_->pad_token_id(), 0);
  EXPECT_EQ(tok_->vocab_size(), 30522u);
  EXPECT_EQ(tok_->token_to_id("[CLS]"), 101);
  EXPECT_EQ(tok_->token_to_id("hello"), 7592);
  EXPECT_FALSE(tok_->token_to_id("definitely-not-a-token").has_value());
  EXPECT_EQ(tok_->id_to_token(7592), "hello");
  EXPECT_THROW(tok_->id_to_token(30522), Error);
  EXPECT_THROW(tok_->id_to_token(-1), Error);
}

}  // namespace
}  // namespace deltatune::text
