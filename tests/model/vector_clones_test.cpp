#include "deltatune/model/vector_clones.h"

#include <c10/util/BFloat16.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>

namespace {

using deltatune::model::vector::Bf16Bits;
using deltatune::model::vector::narrowed;
using deltatune::model::vector::widened;

float from_bits(uint32_t word) {
  float v;
  std::memcpy(&v, &word, sizeof v);
  return v;
}

// The row kernels' branch-free bf16 rounding is c10::BFloat16's, bit for
// bit: every upper half with the lower halves that decide the rounding
// (zero, just below, at and just above the tie, the largest), which covers
// both signs, zeros, subnormals, the carry into the exponent and into
// infinity, infinities and every NaN payload class; and a stride through
// all 2^32 patterns.
TEST(VectorClones, Bf16RoundingIsC10sForEveryClassOfValue) {
  int64_t checked = 0, mismatches = 0;
  auto check = [&](uint32_t word) {
    const float v = from_bits(word);
    const uint16_t expected = c10::BFloat16(v).x;
    const Bf16Bits got = narrowed<Bf16Bits>(v);
    ++checked;
    if (got != expected && ++mismatches <= 5)
      ADD_FAILURE() << std::hex << "0x" << word << ": 0x" << got << " against c10's 0x" << expected;
  };
  for (uint32_t upper = 0; upper <= 0xFFFFu; ++upper)
    for (uint32_t lower : {0x0000u, 0x0001u, 0x7FFEu, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu})
      check((upper << 16) | lower);
  for (uint64_t word = 0; word <= 0xFFFFFFFFull; word += 65521) check(static_cast<uint32_t>(word));
  EXPECT_EQ(mismatches, 0) << "of " << checked;
  EXPECT_GT(checked, 7 * 65536);
}

// Widening is exact: a bf16 value's bits read back as the float c10 gives.
TEST(VectorClones, Bf16WideningIsExact) {
  for (uint32_t bits = 0; bits <= 0xFFFFu; ++bits) {
    c10::BFloat16 value;
    value.x = static_cast<uint16_t>(bits);
    const float expected = static_cast<float>(value), got = widened(static_cast<Bf16Bits>(bits));
    uint32_t a, b;
    std::memcpy(&a, &expected, sizeof a);
    std::memcpy(&b, &got, sizeof b);
    ASSERT_EQ(a, b) << "bits 0x" << std::hex << bits;
  }
  EXPECT_EQ(narrowed<float>(std::numeric_limits<float>::infinity()),
            std::numeric_limits<float>::infinity());
}

}  // namespace
