#include "deltatune/model/linear_kernel.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace deltatune::model {
namespace {

struct Grads {
  at::Tensor y, dx, dw, db;
};

Grads run(bool onednn, const at::Tensor& x0, const at::Tensor& w0, const at::Tensor& b0) {
  set_onednn_linear(onednn);
  at::Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
  at::Tensor b = b0.defined() ? b0.clone().requires_grad_(true) : b0;
  at::Tensor y = linear(x, w, b);
  (y * at::linspace(-1, 1, y.numel()).view(y.sizes())).sum().backward();
  set_onednn_linear(true);
  return {y.detach(), x.grad(), w.grad(), b.defined() ? b.grad() : at::Tensor()};
}

TEST(LinearKernel, MatchesAtLinearForwardAndBackward) {
  at::manual_seed(3);
  for (bool with_bias : {true, false}) {
    at::Tensor x = at::randn({4, 7, 48}), w = at::randn({20, 48});
    at::Tensor b = with_bias ? at::randn({20}) : at::Tensor();
    Grads fast = run(true, x, w, b), reference = run(false, x, w, b);
    EXPECT_EQ(fast.y.sizes(), (std::vector<int64_t>{4, 7, 20}));
    EXPECT_TRUE(at::allclose(fast.y, reference.y, 1e-4, 1e-5));
    EXPECT_TRUE(at::allclose(fast.dx, reference.dx, 1e-4, 1e-5));
    EXPECT_TRUE(at::allclose(fast.dw, reference.dw, 1e-4, 1e-5));
    if (with_bias) {
      EXPECT_TRUE(at::allclose(fast.db, reference.db, 1e-4, 1e-5));
    }
  }
}

TEST(LinearKernel, FrozenWeightGetsNoGradientAndNonContiguousInputWorks) {
  at::manual_seed(4);
  at::Tensor x = at::randn({48, 6}).t().requires_grad_(true);  // [6, 48], not contiguous
  at::Tensor w = at::randn({10, 48});                          // frozen, as in BitFit
  at::Tensor b = at::randn({10}).requires_grad_(true);
  at::Tensor y = linear(x, w, b);
  EXPECT_TRUE(at::allclose(y, at::linear(x, w, b), 1e-4, 1e-5));
  y.sum().backward();
  EXPECT_FALSE(w.grad().defined());
  EXPECT_TRUE(at::allclose(b.grad(), at::full({10}, 6.0f)));
  EXPECT_TRUE(at::allclose(x.grad(), w.sum(0).expand({6, 48}), 1e-4, 1e-5));
}

TEST(LinearKernel, OtherDtypesAndEmptyBatchesFallThrough) {
  at::Tensor w = at::randn({5, 8});
  at::Tensor bf16 = linear(at::randn({3, 8}).to(at::kBFloat16), w.to(at::kBFloat16), at::Tensor());
  EXPECT_EQ(bf16.scalar_type(), at::kBFloat16);
  EXPECT_EQ(linear(at::randn({0, 8}), w, at::randn({5})).sizes(), (std::vector<int64_t>{0, 5}));
}

}  // namespace
}  // namespace deltatune::model
