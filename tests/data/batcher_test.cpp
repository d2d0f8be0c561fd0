// encode_dataset and Batcher: coverage of every example each epoch, padding,
// determinism by (seed, epoch), length grouping, sharding, and the time to
// read and tokenize SST-2 train.
#include "deltatune/data/batcher.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <set>
#include <thread>

#include "data_test_util.h"
#include "deltatune/data/glue.h"
#include "test_paths.h"

namespace deltatune::data {
namespace {

using test::error_of;
using Indices = std::vector<std::size_t>;
using Plan = std::vector<Indices>;

// `n` examples; example i has 3 + (i * 7) % 11 tokens, ids 100 + i, label i % 3.
EncodedDataset synthetic(std::size_t n, TaskType type = TaskType::kClassification) {
  EncodedDataset d;
  d.type = type;
  d.pad_token_id = 0;
  d.max_length = 16;
  for (std::size_t i = 0; i < n; ++i) {
    text::Encoding e;
    const std::size_t len = 3 + (i * 7) % 11;
    for (std::size_t t = 0; t < len; ++t) {
      e.input_ids.push_back(static_cast<int64_t>(100 + i));
      e.token_type_ids.push_back(t >= len / 2 ? 1 : 0);
      e.attention_mask.push_back(1);
    }
    d.encodings.push_back(e);
    d.labels.push_back(static_cast<int64_t>(i % 3));
    d.scores.push_back(0.5f * static_cast<float>(i));
    d.lines.push_back(i + 2);
  }
  if (type == TaskType::kRegression) d.labels.clear();
  if (type == TaskType::kClassification) d.scores.clear();
  return d;
}

// Sorted concatenation of a plan's batches.
Indices flatten(const Plan& plan) {
  Indices all;
  for (const auto& b : plan) all.insert(all.end(), b.begin(), b.end());
  std::sort(all.begin(), all.end());
  return all;
}

Indices iota(std::size_t n) {
  Indices v(n);
  std::iota(v.begin(), v.end(), std::size_t{0});
  return v;
}

// Padding positions in a plan: sum over batches of (size * longest - tokens).
std::size_t padding_tokens(const EncodedDataset& d, const Plan& plan) {
  std::size_t pad = 0;
  for (const auto& b : plan) {
    std::size_t longest = 0, tokens = 0;
    for (std::size_t i : b) {
      longest = std::max(longest, d.encodings[i].input_ids.size());
      tokens += d.encodings[i].input_ids.size();
    }
    pad += b.size() * longest - tokens;
  }
  return pad;
}

TEST(Batcher, EveryExampleOncePerEpoch) {
  const EncodedDataset d = synthetic(103);
  for (bool shuffle : {true, false}) {
    for (bool group : {false, true}) {
      BatchOptions o;
      o.batch_size = 8;
      o.shuffle = shuffle;
      o.group_by_length = group;
      o.mega_batch_factor = 3;
      Batcher b(d, o);
      EXPECT_EQ(b.batches_per_epoch(), 13u);
      for (std::size_t epoch = 0; epoch < 3; ++epoch) {
        const EpochPlan p = b.plan(epoch);
        EXPECT_EQ(p.batches.size(), 13u);
        EXPECT_EQ(p.padding, 0u);
        EXPECT_EQ(flatten(p.batches), iota(103)) << shuffle << group << epoch;
        std::size_t small = 0;
        for (const auto& batch : p.batches) small += batch.size() != 8;
        EXPECT_EQ(small, 1u);  // the one partial batch (103 = 12 * 8 + 7)
      }
    }
  }
}

TEST(Batcher, GoldenOrderMatchesTheReferenceShuffle) {
  // Epoch e shuffles with make_generator(seed, 2^32 + e): the permutation below
  // is shuffled_indices(12, 7, 2^32 + 3) from the Python reference (shuffle_test.cpp).
  const EncodedDataset d = synthetic(12);
  BatchOptions o;
  o.batch_size = 4;
  o.seed = 7;
  EXPECT_EQ(Batcher(d, o).plan(3).batches, (Plan{{5, 3, 0, 7}, {11, 4, 9, 10}, {6, 2, 8, 1}}));
}

TEST(Batcher, DeterministicBySeedAndEpoch) {
  const EncodedDataset d = synthetic(200);
  BatchOptions o;
  o.batch_size = 16;
  o.seed = 11;
  for (bool group : {false, true}) {
    o.group_by_length = group;
    Batcher a(d, o), b(d, o);
    const Plan e2 = a.plan(2).batches;
    // Resuming = asking for the plan again: the same, whatever came before.
    EXPECT_EQ(b.plan(2).batches, e2);
    a.plan(0);
    a.plan(5);
    EXPECT_EQ(a.plan(2).batches, e2);
    EXPECT_NE(a.plan(3).batches, e2);
    BatchOptions other = o;
    other.seed = 12;
    EXPECT_NE(Batcher(d, other).plan(2).batches, e2);
  }
}

TEST(Batcher, EvaluationOrder) {
  const EncodedDataset d = synthetic(10);
  BatchOptions o;
  o.batch_size = 4;
  o.shuffle = false;
  Batcher plain(d, o);
  EXPECT_EQ(plain.plan(0).batches, (Plan{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9}}));
  EXPECT_EQ(plain.plan(7).batches, plain.plan(0).batches);
  // Lengths 3 + 7i mod 11: 3, 10, 6, 13, 9, 5, 12, 8, 4, 11 -> longest first.
  o.group_by_length = true;
  EXPECT_EQ(Batcher(d, o).plan(0).batches, (Plan{{3, 6, 9, 1}, {4, 7, 2, 5}, {8, 0}}));
}

TEST(Batcher, BatchTensorsArePaddedToTheLongest) {
  const EncodedDataset d = synthetic(10);
  Batcher b(d, BatchOptions{});
  const Batch batch = b.make({0, 3, 8});  // lengths 3, 13, 4
  EXPECT_EQ(batch.indices, (Indices{0, 3, 8}));
  ASSERT_EQ(batch.input.input_ids.sizes(), (std::vector<int64_t>{3, 13}));
  EXPECT_EQ(batch.input.input_ids.scalar_type(), at::kLong);
  const auto ids = batch.input.input_ids.accessor<int64_t, 2>();
  const auto mask = batch.input.attention_mask.accessor<int64_t, 2>();
  const auto types = batch.input.token_type_ids.accessor<int64_t, 2>();
  const std::vector<std::size_t> examples = {0, 3, 8};
  for (int64_t r = 0; r < 3; ++r) {
    const auto& e = d.encodings[examples[r]];
    for (int64_t t = 0; t < 13; ++t) {
      const bool real = static_cast<std::size_t>(t) < e.input_ids.size();
      EXPECT_EQ(ids[r][t], real ? e.input_ids[t] : d.pad_token_id) << r << "," << t;
      EXPECT_EQ(mask[r][t], real ? 1 : 0) << r << "," << t;
      EXPECT_EQ(types[r][t], real ? e.token_type_ids[t] : 0) << r << "," << t;
    }
  }
  EXPECT_EQ(batch.labels.scalar_type(), at::kLong);
  EXPECT_TRUE(at::equal(batch.labels, at::tensor({0, 0, 2}, at::kLong)));

  const EncodedDataset r = synthetic(10, TaskType::kRegression);
  const Batch rb = Batcher(r, BatchOptions{}).make({1, 4});
  EXPECT_EQ(rb.labels.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(rb.labels, at::tensor({0.5f, 2.0f})));
  EXPECT_EQ(error_of([&] { b.make({10}); }), "example 10 is outside the dataset (10 examples)");
}

TEST(Batcher, DropLast) {
  const EncodedDataset d = synthetic(10);
  BatchOptions o;
  o.batch_size = 4;
  o.drop_last = true;
  for (bool group : {false, true}) {
    o.group_by_length = group;
    Batcher b(d, o);
    EXPECT_EQ(b.batches_per_epoch(), 2u);
    const Plan p = b.plan(1).batches;
    ASSERT_EQ(p.size(), 2u);
    EXPECT_EQ(p[0].size() + p[1].size(), 8u);
  }
  o.batch_size = 11;
  EXPECT_EQ(error_of([&] { Batcher(d, o); }),
            "drop_last with 10 examples and batch_size 11 leaves no batch");
}

TEST(Batcher, ShardingPartitionsTheBatches) {
  const EncodedDataset d = synthetic(90);
  BatchOptions o;
  o.batch_size = 8;  // 12 batches: 11 full, one of 2
  o.seed = 3;
  const Plan global = Batcher(d, o).plan(4).batches;
  ASSERT_EQ(global.size(), 12u);
  for (std::size_t world : {2u, 3u, 5u}) {
    SCOPED_TRACE(world);
    o.world_size = world;
    std::vector<Indices> seen;
    std::size_t per_rank = 0, padding = 0;
    for (std::size_t rank = 0; rank < world; ++rank) {
      o.rank = rank;
      Batcher b(d, o);
      const EpochPlan p = b.plan(4);
      if (rank == 0) per_rank = p.batches.size();
      EXPECT_EQ(p.batches.size(), per_rank);  // equal step counts on every rank
      EXPECT_EQ(b.batches_per_epoch(), per_rank);
      padding += p.padding;
      // Rank r holds global batches r, r + W, ...; padding repeats the list's start.
      for (std::size_t k = 0; k < p.batches.size(); ++k)
        EXPECT_EQ(p.batches[k], global[(rank + k * world) % global.size()]);
      for (std::size_t k = 0; k + p.padding < p.batches.size(); ++k) seen.push_back(p.batches[k]);
    }
    EXPECT_EQ(per_rank, (12 + world - 1) / world);
    EXPECT_EQ(padding, per_rank * world - 12);
    // Without the padding, the ranks' batches are exactly the global ones.
    std::sort(seen.begin(), seen.end());
    Plan expected = global;
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(seen, expected);
  }
  o.world_size = 2;
  o.rank = 2;
  EXPECT_EQ(error_of([&] { Batcher(d, o); }), "rank 2 is outside world_size 2");
}

class Sst2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto dir = test::glue_dir();
    if (dir.empty()) return;
    const auto start = std::chrono::steady_clock::now();
    train_ = new Dataset(read_glue(dir, "sst2", "train"));
    const auto read = std::chrono::steady_clock::now();
    tokenizer_ = text::load_tokenizer(test::minilm_dir()).release();
    const auto loaded = std::chrono::steady_clock::now();
    encoded_ = new EncodedDataset(encode_dataset(*train_, *tokenizer_, 128));
    const auto done = std::chrono::steady_clock::now();
    auto ms = [](auto a, auto b) {
      return std::chrono::duration<double, std::milli>(b - a).count();
    };
    read_ms_ = ms(start, read);
    encode_ms_ = ms(loaded, done);
    const auto single_start = std::chrono::steady_clock::now();
    encode_dataset(*train_, *tokenizer_, 128, 1);
    const double single_ms = ms(single_start, std::chrono::steady_clock::now());
    std::printf(
        "SST-2 train: read %zu examples in %.0f ms, tokenized in %.0f ms (%u threads), %.0f ms "
        "(1 thread)\n",
        train_->examples.size(), read_ms_, encode_ms_,
        std::max(1u, std::thread::hardware_concurrency()), single_ms);
  }
  static void TearDownTestSuite() {
    delete encoded_;
    delete tokenizer_;
    delete train_;
  }
  void SetUp() override {
    if (encoded_ == nullptr) GTEST_FAIL() << "SST-2 not loaded: set GLUE_DIR";
  }
  static inline Dataset* train_ = nullptr;
  static inline text::Tokenizer* tokenizer_ = nullptr;
  static inline EncodedDataset* encoded_ = nullptr;
  static inline double read_ms_ = 0, encode_ms_ = 0;
};

TEST_F(Sst2, ReadAndTokenizeAreFast) {
  // 67,349 sentences; measured here at ~0.1 s to read and ~0.5 s to tokenize
  // on 2 cores. The bound leaves room for a loaded machine.
  EXPECT_LT(read_ms_ + encode_ms_, 5000.0);
}

TEST_F(Sst2, EncodingsEqualTheTokenizer) {
  ASSERT_EQ(encoded_->size(), 67349u);
  EXPECT_EQ(encoded_->labels.size(), 67349u);
  EXPECT_TRUE(encoded_->scores.empty());
  EXPECT_EQ(encoded_->pad_token_id, tokenizer_->pad_token_id());
  for (std::size_t i : {std::size_t{0}, std::size_t{1}, std::size_t{33333}, std::size_t{67348}}) {
    const Example& e = train_->examples[i];
    const text::Encoding expected = tokenizer_->encode(e.text_a, std::nullopt, 128);
    EXPECT_EQ(encoded_->encodings[i].input_ids, expected.input_ids) << i;
    EXPECT_EQ(encoded_->labels[i], e.label);
    EXPECT_EQ(encoded_->lines[i], e.line);
  }
  // "hide new secretions from the parental units " -> [CLS] ... [SEP].
  EXPECT_EQ(encoded_->encodings[0].input_ids.front(), 101);
  EXPECT_EQ(encoded_->encodings[0].input_ids.back(), 102);
  // The thread count does not change the result.
  Dataset head = *train_;
  head.examples.resize(9000);
  const EncodedDataset one = encode_dataset(head, *tokenizer_, 32, 1);
  const EncodedDataset two = encode_dataset(head, *tokenizer_, 32, 2);
  for (std::size_t i = 0; i < head.examples.size(); ++i)
    ASSERT_EQ(one.encodings[i].input_ids, two.encodings[i].input_ids) << i;
  EXPECT_EQ(one.at_max_length, two.at_max_length);
  EXPECT_GT(one.at_max_length, 0u);
  EXPECT_EQ(encoded_->at_max_length, 0u);  // SST-2's longest sentence is ~66 tokens
}

TEST_F(Sst2, LengthGroupingCutsPadding) {
  BatchOptions o;
  o.batch_size = 32;
  o.seed = 1;
  const Plan random = Batcher(*encoded_, o).plan(0).batches;
  o.group_by_length = true;
  Batcher grouped_batcher(*encoded_, o);
  const Plan grouped = grouped_batcher.plan(0).batches;
  EXPECT_EQ(flatten(grouped), iota(encoded_->size()));
  const std::size_t pad_random = padding_tokens(*encoded_, random);
  const std::size_t pad_grouped = padding_tokens(*encoded_, grouped);
  std::printf("SST-2 padding tokens per epoch (batch 32): random %zu, length-grouped %zu\n",
              pad_random, pad_grouped);
  EXPECT_LT(pad_grouped * 10, pad_random);  // more than a 10x reduction
  // Still a different grouping every epoch.
  EXPECT_NE(grouped_batcher.plan(1).batches, grouped);
}

TEST_F(Sst2, PairsAndErrorsCarryTheLine) {
  Dataset rte = read_glue(test::glue_dir(), "RTE", "dev");
  const EncodedDataset e = encode_dataset(rte, *tokenizer_, 64);
  const text::Encoding expected =
      tokenizer_->encode(rte.examples[5].text_a, *rte.examples[5].text_b, 64);
  EXPECT_EQ(e.encodings[5].input_ids, expected.input_ids);
  EXPECT_EQ(e.encodings[5].token_type_ids, expected.token_type_ids);
  const std::string message = error_of([&] { encode_dataset(rte, *tokenizer_, 2); });
  EXPECT_EQ(message.rfind(rte.source + ":2: ", 0), 0u) << message;
}

}  // namespace
}  // namespace deltatune::data
