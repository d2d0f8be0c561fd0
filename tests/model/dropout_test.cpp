// model::dropout against at::dropout: the same kept entries, values,
// gradients and random stream afterwards, with PyTorch's generator.
#include "deltatune/model/dropout.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <cmath>
#include <utility>
#include <vector>

namespace deltatune::model {
namespace {

// The CI's LibTorch (Debian's, no MKL) draws bernoulli_ through the serial
// kernel the replica follows; a build with MKL may draw otherwise, and then
// dropout falls back to ATen's own draw (the equality tests below hold either way).
TEST(Dropout, DrawsThroughItsOwnLoopWhereLibTorchsKernelIsTheSerialOne) {
  if (at::hasMKL()) GTEST_SKIP() << "this LibTorch has MKL: its bernoulli_ may draw otherwise";
  EXPECT_TRUE(dropout_draws_replicated());
}

TEST(Dropout, KeepMaskIsAtensDrawAndLeavesTheGeneratorWhereAtenDoes) {
  for (const double keep : {0.9, 0.5, 0.0001}) {
    for (const std::vector<int64_t>& sizes :
         std::vector<std::vector<int64_t>>{{1}, {7, 333}, {2, 3, 4, 5}}) {
      at::manual_seed(11);
      const at::Tensor expected = at::empty(sizes, at::kFloat).bernoulli_(keep).ne(0);
      const at::Tensor expected_next = at::rand({4});
      at::manual_seed(11);
      const at::Tensor mask = dropout_keep_mask(sizes, keep);
      const at::Tensor next = at::rand({4});
      EXPECT_EQ(mask.scalar_type(), at::kBool);
      EXPECT_TRUE(at::equal(mask, expected))
          << "keep " << keep << ", " << mask.numel() << " entries";
      EXPECT_TRUE(at::equal(next, expected_next)) << "the stream after the draw differs";
    }
  }
}

// uniform_float is uniform_'s draw on fp32: the same values from the same
// seed (sizes crossing many of MT19937's 624-word twists, a range that is not
// Diff Pruning's), and the generator left where uniform_ leaves it; through
// its own loop on this LibTorch.
TEST(Dropout, UniformDrawsAreAtensBitForBit) {
  for (const auto& [from, to] : {std::pair{1e-6, 1.0 - 1e-6}, std::pair{-3.0, 5.5}}) {
    at::manual_seed(41);
    const at::Tensor reference = at::empty({7, 10007}, at::kFloat).uniform_(from, to);
    const at::Tensor reference_next = at::rand({4});
    at::manual_seed(41);
    const at::Tensor mine = uniform_float({7, 10007}, from, to);
    EXPECT_TRUE(at::equal(mine, reference)) << "from " << from << " to " << to;
    EXPECT_TRUE(at::equal(at::rand({4}), reference_next)) << "the random stream moved apart";
  }
  EXPECT_TRUE(uniform_draws_replicated());
  EXPECT_THROW(uniform_float({3}, 1.0, 0.0), c10::Error);
}

TEST(Dropout, KeepProbabilitiesOutsideZeroToOneAreRefusedAsBernoulliRefusesThem) {
  for (const double keep : {-0.1, 1.5, std::nan("")}) {
    EXPECT_THROW(at::empty({3}, at::kFloat).bernoulli_(keep), c10::Error) << keep;
    EXPECT_THROW(dropout_keep_mask({3}, keep), c10::Error) << keep;
  }
  EXPECT_TRUE(dropout_keep_mask({3}, 1.0).all().item<bool>());
  EXPECT_FALSE(dropout_keep_mask({3}, 0.0).any().item<bool>());
}

TEST(Dropout, ValuesAndGradientsAreAtDropoutsBitForBit) {
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    at::manual_seed(3);
    const at::Tensor x = at::randn({4, 9, 64}).to(type);
    const at::Tensor upstream = at::randn({4, 9, 64}).to(type);
    auto run = [&](bool ours) {
      at::manual_seed(5);
      at::Tensor input = x.clone().requires_grad_(true);
      at::Tensor y = ours ? model::dropout(input, 0.1, true) : at::dropout(input, 0.1, true);
      y.backward(upstream);
      return std::make_pair(y.detach(), input.grad());
    };
    const auto [y_aten, grad_aten] = run(false);
    const auto [y_ours, grad_ours] = run(true);
    EXPECT_TRUE(at::equal(y_ours, y_aten)) << type;
    EXPECT_TRUE(at::equal(grad_ours, grad_aten)) << type;
    EXPECT_GT(y_ours.eq(0).sum().item<int64_t>(), 0);  // some entries were dropped
  }
}

TEST(Dropout, OutsideTrainingOrAtZeroItIsTheInputItself) {
  const at::Tensor x = at::randn({3, 5});
  EXPECT_TRUE(model::dropout(x, 0.1, false).is_same(x));
  EXPECT_TRUE(model::dropout(x, 0.0, true).is_same(x));
}

}  // namespace
}  // namespace deltatune::model
