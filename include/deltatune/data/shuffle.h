// Seeded permutations that are the same on every platform and standard
// library: std::mt19937_64 (its output is fixed by the standard) with our own
// unbiased draw and Fisher-Yates, never std::shuffle or
// std::uniform_int_distribution, whose outputs are implementation-defined.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace deltatune::data {

// A generator for one (seed, stream) pair; distinct streams (an epoch, a
// purpose) give unrelated sequences for the same seed.
std::mt19937_64 make_generator(uint64_t seed, uint64_t stream = 0);

// Uniform in [0, n), n > 0, by rejection (no modulo bias).
uint64_t uniform_below(std::mt19937_64& generator, uint64_t n);

// Fisher-Yates, from the last position down, with uniform_below.
template <typename T>
void shuffle_in_place(std::vector<T>& values, std::mt19937_64& generator) {
  for (std::size_t i = values.size(); i > 1; --i) {
    const auto j = static_cast<std::size_t>(uniform_below(generator, i));
    std::swap(values[i - 1], values[j]);
  }
}

// A permutation of 0..n-1, a pure function of (n, seed, stream).
std::vector<std::size_t> shuffled_indices(std::size_t n, uint64_t seed, uint64_t stream = 0);

}  // namespace deltatune::data
