// Error reporting: every failure is a one-line deltatune::Error naming its source.
#include <string>

#include <gtest/gtest.h>

#include "deltatune/error.h"
#include "deltatune/text/pipeline.h"
#include "deltatune/text/tokenizer.h"
#include "text_test_util.h"

namespace deltatune::text {
namespace {

using testing::TempDir;

// Runs f, expecting a deltatune::Error whose message contains `needle` and no newline.
template <typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected deltatune::Error containing '" << needle << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

// A crafted id would size the id-to-token table by itself, not by the file.
TEST(TokenizerErrors, AnImplausiblyLargeTokenIdIsRefusedNotAllocated) {
  expect_error(
      [] {
        Vocabulary({{"a", 0}, {"b", 1'000'000'000'000}}, "vocab.json");
      },
      "vocab.json: token id 1000000000000 is implausible for 2 tokens");
  // Ids a little past the count (added tokens after gaps) are real vocabularies.
  Vocabulary sparse({{"a", 0}, {"b", 1}, {"added", 40}}, "vocab.json");
  EXPECT_EQ(*sparse.token(40), "added");
}

TEST(TokenizerErrors, EmptyDirectoryNamesTheDirectory) {
  TempDir dir;
  expect_error([&] { load_tokenizer(dir.path()); }, dir.path().string());
}

TEST(TokenizerErrors, MissingDirectory) {
  TempDir dir;
  const auto missing = dir.path() / "nope";
  expect_error([&] { load_tokenizer(missing); }, missing.string());
}

TEST(TokenizerErrors, MalformedTokenizerJson) {
  TempDir dir;
  dir.write("tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\n");
  expect_error([&] { load_tokenizer(dir.path()); }, "tokenizer.json: invalid JSON");
}

TEST(TokenizerErrors, TokenizerJsonWithWrongFieldNamesTheField) {
  TempDir dir;
  dir.write("tokenizer.json",
            R"({"model": {"type": "WordPiece", "vocab": {"[UNK]": 0, "[PAD]": "one"}}})");
  expect_error([&] { load_tokenizer(dir.path()); }, "model.vocab");

  dir.write("tokenizer.json", R"({"model": {"type": "Unigram", "vocab": []}})");
  expect_error([&] { load_tokenizer(dir.path()); }, "model.type");

  dir.write("tokenizer.json",
            R"({"model": {"type": "WordPiece", "vocab": {"[UNK]": 0, "[PAD]": 1}},
                "normalizer": {"type": "NFKC"}, "pre_tokenizer": {"type": "BertPreTokenizer"}})");
  expect_error([&] { load_tokenizer(dir.path()); }, "normalizer.type");
}

TEST(TokenizerErrors, MalformedMergesLineNamesTheLine) {
  TempDir dir;
  dir.write("vocab.json", R"({"a": 0, "b": 1, "ab": 2, "<pad>": 3, "<s>": 4, "</s>": 5})");
  dir.write("merges.txt", "#version: 0.2\na b\nab\n");
  expect_error([&] { load_tokenizer(dir.path()); }, "merges.txt:3");
}

TEST(TokenizerErrors, InvalidUtf8Input) {
  TempDir dir;
  dir.write("vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nab\n");
  auto tok = load_tokenizer(dir.path());
  EXPECT_EQ(tok->encode("ab", std::nullopt, 8).input_ids, (std::vector<int64_t>{2, 5, 3}));
  expect_error([&] { tok->encode("a\xff", std::nullopt, 8); }, "invalid UTF-8");
  expect_error([&] { tok->tokenize("ab\xc3"); }, "truncated");            // cut multi-byte sequence
  expect_error([&] { tok->tokenize("\xc0\xaf"); }, "invalid UTF-8");      // overlong '/'
  expect_error([&] { tok->tokenize("\xed\xa0\x80"); }, "invalid UTF-8");  // surrogate
  expect_error([&] { tok->encode("ab", std::string_view("\x80"), 8); }, "invalid UTF-8");
}

TEST(TokenizerErrors, MaxLengthBelowSpecialTokens) {
  TempDir dir;
  dir.write("vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nab\n");
  auto tok = load_tokenizer(dir.path());
  expect_error([&] { tok->encode("ab", std::string_view("ab"), 2); }, "max_length 2");
}

}  // namespace
}  // namespace deltatune::text
