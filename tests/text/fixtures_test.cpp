// Every case of tests/fixtures/text/{bert,roberta}_cases.jsonl (HF fast tokenizers,
// tokenizers 0.15.2) must be reproduced exactly, through both loading paths.
#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "deltatune/error.h"
#include "deltatune/text/tokenizer.h"
#include "text_test_util.h"

namespace deltatune::text {
namespace {

using nlohmann::json;
using testing::TempDir;

std::string show(const std::vector<int64_t>& v) {
  std::ostringstream s;
  s << "[";
  for (std::size_t i = 0; i < v.size(); ++i) s << (i ? "," : "") << v[i];
  return s.str() + "]";
}

std::string show(const std::vector<std::string>& v) { return json(v).dump(); }

// Compares one tokenizer against every case; returns the number of mismatching
// cases and fills `report` with the first few differences.
std::size_t count_mismatches(const Tokenizer& tok, const std::vector<json>& cases,
                             std::string& report) {
  std::size_t bad = 0;
  std::ostringstream out;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const json& c = cases[i];
    const std::string a = c.at("a").get<std::string>();
    std::optional<std::string> b;
    if (!c.at("b").is_null()) b = c.at("b").get<std::string>();
    const auto max_length = c.at("max_length").get<std::size_t>();
    const auto want_ids = c.at("input_ids").get<std::vector<int64_t>>();
    const auto want_types = c.at("token_type_ids").get<std::vector<int64_t>>();
    const auto want_mask = c.at("attention_mask").get<std::vector<int64_t>>();
    const auto want_tokens = c.at("tokens").get<std::vector<std::string>>();

    std::string problem;
    try {
      const Encoding e =
          tok.encode(a, b ? std::optional<std::string_view>(*b) : std::nullopt, max_length);
      std::vector<std::string> tokens;
      for (int64_t id : e.input_ids) tokens.push_back(tok.id_to_token(id));
      if (e.input_ids != want_ids) {
        problem = "input_ids " + show(e.input_ids) + " != " + show(want_ids);
      } else if (e.token_type_ids != want_types) {
        problem = "token_type_ids " + show(e.token_type_ids) + " != " + show(want_types);
      } else if (e.attention_mask != want_mask) {
        problem = "attention_mask " + show(e.attention_mask) + " != " + show(want_mask);
      } else if (tokens != want_tokens) {
        problem = "tokens " + show(tokens) + " != " + show(want_tokens);
      } else if (!b || b->empty()) {
        // tokenize() is the untruncated content of a single sequence.
        const std::vector<std::string> sub = tok.tokenize(a);
        if (sub.size() + 2 == want_tokens.size() &&
            !std::equal(sub.begin(), sub.end(), want_tokens.begin() + 1)) {
          problem = "tokenize(a) " + show(sub) + " disagrees with the tokens";
        }
      }
    } catch (const std::exception& ex) {
      problem = std::string("threw: ") + ex.what();
    }
    if (!problem.empty()) {
      if (bad < 5) {
        out << "\n  case " << i << " [" << c.value("tag", "") << "] a=" << json(a).dump()
            << " b=" << c.at("b").dump() << " max_length=" << max_length << ": " << problem;
      }
      ++bad;
    }
  }
  report = out.str();
  return bad;
}

void expect_all_cases(const Tokenizer& tok, const std::filesystem::path& jsonl) {
  ASSERT_TRUE(std::filesystem::exists(jsonl)) << jsonl << " is missing";
  const std::vector<json> cases = testing::read_jsonl(jsonl);
  ASSERT_GT(cases.size(), 1000u) << jsonl;
  std::string report;
  const std::size_t bad = count_mismatches(tok, cases, report);
  EXPECT_EQ(bad, 0u) << bad << " of " << cases.size() << " cases of " << jsonl
                     << " differ; first ones:" << report;
}

TEST(BertFixtures, TokenizerJsonMatchesEveryCase) {
  ASSERT_NO_FATAL_FAILURE(testing::require_minilm());
  auto tok = load_tokenizer(testing::minilm_dir());
  expect_all_cases(*tok, testing::fixtures_dir() / "bert_cases.jsonl");
}

TEST(BertFixtures, VocabTxtMatchesEveryCaseAndTokenizerJson) {
  ASSERT_NO_FATAL_FAILURE(testing::require_minilm());
  TempDir dir;
  for (const char* f : {"vocab.txt", "tokenizer_config.json", "special_tokens_map.json"}) {
    if (std::filesystem::exists(testing::minilm_dir() / f)) dir.copy_from(testing::minilm_dir(), f);
  }
  auto from_vocab = load_tokenizer(dir.path());
  auto from_json = load_tokenizer(testing::minilm_dir());
  expect_all_cases(*from_vocab, testing::fixtures_dir() / "bert_cases.jsonl");

  EXPECT_EQ(from_vocab->vocab_size(), from_json->vocab_size());
  EXPECT_EQ(from_vocab->pad_token_id(), from_json->pad_token_id());
  std::size_t differ = 0;
  for (const json& c : testing::read_jsonl(testing::fixtures_dir() / "bert_cases.jsonl")) {
    const std::string a = c.at("a").get<std::string>();
    std::optional<std::string> b;
    if (!c.at("b").is_null()) b = c.at("b").get<std::string>();
    const auto m = c.at("max_length").get<std::size_t>();
    const auto bv = b ? std::optional<std::string_view>(*b) : std::nullopt;
    const Encoding x = from_vocab->encode(a, bv, m);
    const Encoding y = from_json->encode(a, bv, m);
    if (x.input_ids != y.input_ids || x.token_type_ids != y.token_type_ids) ++differ;
  }
  EXPECT_EQ(differ, 0u) << "vocab.txt and tokenizer.json loads disagree";
}

TEST(RobertaFixtures, TokenizerJsonMatchesEveryCase) {
  auto tok = load_tokenizer(testing::fixtures_dir() / "roberta_bpe");
  expect_all_cases(*tok, testing::fixtures_dir() / "roberta_cases.jsonl");
  EXPECT_EQ(tok->pad_token_id(), 1);
  EXPECT_EQ(tok->vocab_size(), 2000u);
}

TEST(RobertaFixtures, VocabJsonAndMergesMatchEveryCase) {
  TempDir dir;
  const auto src = testing::fixtures_dir() / "roberta_bpe";
  for (const char* f :
       {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}) {
    dir.copy_from(src, f);
  }
  auto tok = load_tokenizer(dir.path());
  expect_all_cases(*tok, testing::fixtures_dir() / "roberta_cases.jsonl");
  EXPECT_EQ(tok->pad_token_id(), 1);
}

}  // namespace
}  // namespace deltatune::text
