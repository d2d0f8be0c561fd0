// longest_first_lengths against the table of HF tokenizers' own unit test
// (utils/truncation.rs, truncate_encodings_longest_first, max_length 7).
#include <utility>

#include <gtest/gtest.h>

#include "deltatune/text/pipeline.h"

namespace deltatune::text {
namespace {

using Lengths = std::pair<std::size_t, std::size_t>;

TEST(LongestFirst, MatchesHfTable) {
  const std::size_t empty = 0, short_ = 2, medium = 4, long_ = 8;
  EXPECT_EQ(longest_first_lengths(empty, empty, 7), Lengths(0, 0));
  EXPECT_EQ(longest_first_lengths(empty, short_, 7), Lengths(0, 2));
  EXPECT_EQ(longest_first_lengths(empty, medium, 7), Lengths(0, 4));
  EXPECT_EQ(longest_first_lengths(empty, long_, 7), Lengths(0, 7));
  EXPECT_EQ(longest_first_lengths(short_, empty, 7), Lengths(2, 0));
  EXPECT_EQ(longest_first_lengths(short_, short_, 7), Lengths(2, 2));
  EXPECT_EQ(longest_first_lengths(short_, medium, 7), Lengths(2, 4));
  EXPECT_EQ(longest_first_lengths(short_, long_, 7), Lengths(2, 5));
  EXPECT_EQ(longest_first_lengths(medium, empty, 7), Lengths(4, 0));
  EXPECT_EQ(longest_first_lengths(medium, short_, 7), Lengths(4, 2));
  EXPECT_EQ(longest_first_lengths(medium, medium, 7), Lengths(3, 4));
  EXPECT_EQ(longest_first_lengths(medium, long_, 7), Lengths(3, 4));
  EXPECT_EQ(longest_first_lengths(long_, empty, 7), Lengths(7, 0));
  EXPECT_EQ(longest_first_lengths(long_, short_, 7), Lengths(5, 2));
  EXPECT_EQ(longest_first_lengths(long_, medium, 7), Lengths(4, 3));
  EXPECT_EQ(longest_first_lengths(long_, long_, 7), Lengths(3, 4));
}

TEST(LongestFirst, ZeroBudgetAndOverlongShorterSide) {
  EXPECT_EQ(longest_first_lengths(4, 4, 0), Lengths(0, 0));
  EXPECT_EQ(longest_first_lengths(0, 5, 0), Lengths(0, 0));
  // Shorter side alone exceeds the budget: split budget / 2 and the rest.
  EXPECT_EQ(longest_first_lengths(20, 30, 9), Lengths(4, 5));
  EXPECT_EQ(longest_first_lengths(30, 20, 9), Lengths(5, 4));
  // Not the one-token-at-a-time rule of transformers' slow tokenizers (that gives 6 + 5).
  EXPECT_EQ(longest_first_lengths(8, 20, 11), Lengths(5, 6));
}

}  // namespace
}  // namespace deltatune::text
