// Seeded permutations are fixed numbers, not "whatever this standard library
// does": the expected values come from an independent Python implementation of
// MT19937-64 (Matsumoto & Nishimura's mt19937-64.c), SplitMix64 and the same
// draw and Fisher-Yates, which reproduces the standard's check value below.
#include "deltatune/data/shuffle.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

namespace deltatune::data {
namespace {

using Indices = std::vector<std::size_t>;

TEST(Shuffle, Mt19937_64IsTheStandardOne) {
  // [rand.predef]: the 10000th output of a default-constructed mt19937_64.
  std::mt19937_64 g;
  g.discard(9999);
  EXPECT_EQ(g(), 9981545732273789042ULL);
}

TEST(Shuffle, GoldenPermutations) {
  EXPECT_EQ(shuffled_indices(10, 42), (Indices{2, 0, 4, 7, 8, 3, 5, 1, 9, 6}));
  EXPECT_EQ(shuffled_indices(10, 43), (Indices{1, 6, 4, 7, 0, 2, 3, 9, 5, 8}));
  EXPECT_EQ(shuffled_indices(12, 7, (uint64_t{1} << 32) + 3),
            (Indices{5, 3, 0, 7, 11, 4, 9, 10, 6, 2, 8, 1}));
  EXPECT_TRUE(shuffled_indices(0, 1).empty());
  EXPECT_EQ(shuffled_indices(1, 1), (Indices{0}));
}

TEST(Shuffle, IsAPermutationAndRoughlyUniform) {
  Indices p = shuffled_indices(1000, 5);
  Indices sorted = p;
  std::sort(sorted.begin(), sorted.end());
  Indices iota(1000);
  std::iota(iota.begin(), iota.end(), std::size_t{0});
  EXPECT_EQ(sorted, iota);
  // Position of element 0 over many seeds: each of 4 slots gets ~1/4.
  std::vector<int> slot(4, 0);
  for (uint64_t seed = 0; seed < 4000; ++seed) {
    const Indices q = shuffled_indices(4, seed);
    ++slot[std::find(q.begin(), q.end(), 0) - q.begin()];
  }
  for (int s : slot) EXPECT_NEAR(s, 1000, 120);
}

TEST(Shuffle, UniformBelowStaysInRange) {
  auto g = make_generator(9);
  for (uint64_t n : {1ULL, 2ULL, 3ULL, 7ULL, 1000ULL, (1ULL << 63) + 1}) {
    for (int i = 0; i < 200; ++i) EXPECT_LT(uniform_below(g, n), n);
  }
}

}  // namespace
}  // namespace deltatune::data
