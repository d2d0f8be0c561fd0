#include "deltatune/data/shuffle.h"

#include <numeric>

#include "deltatune/error.h"

namespace deltatune::data {
namespace {

// SplitMix64's finaliser: a bijection on 64 bits that spreads nearby inputs
// (seed 0 vs 1, epoch 3 vs 4) over unrelated generator states.
uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace

std::mt19937_64 make_generator(uint64_t seed, uint64_t stream) {
  return std::mt19937_64(mix(mix(seed) ^ stream));
}

uint64_t uniform_below(std::mt19937_64& generator, uint64_t n) {
  if (n == 0) throw Error("uniform_below: empty range");
  // 2^64 mod n: draws below it are the incomplete last block of residues.
  const uint64_t threshold = (0 - n) % n;
  for (;;) {
    const uint64_t x = generator();
    if (x >= threshold) return x % n;
  }
}

std::vector<std::size_t> shuffled_indices(std::size_t n, uint64_t seed, uint64_t stream) {
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  auto generator = make_generator(seed, stream);
  shuffle_in_place(order, generator);
  return order;
}

}  // namespace deltatune::data
