#include "deltatune/model/linear_kernel.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include "deltatune/torch_compat.h"

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

// The graph keeps a linear layer's input only for its weight's gradient:
// with the weight frozen, the GELU output feeding it is freed after forward.
TEST(LinearKernel, AFrozenWeightKeepsNoCopyOfItsInputForBackward) {
  if (!onednn_linear_active()) GTEST_SKIP() << "built without oneDNN";
  at::manual_seed(5);
  for (bool weight_trains : {false, true}) {
    at::Tensor x = at::randn({3, 5, 16}).requires_grad_(true);
    at::Tensor w = at::randn({8, 16}).requires_grad_(weight_trains);
    at::Tensor b = at::randn({8}).requires_grad_(true);
    at::Tensor h = at::gelu(x);  // GELU's backward saves x, never h
    c10::weak_intrusive_ptr<c10::StorageImpl> storage(h.storage().getWeakStorageImpl());
    at::Tensor y = linear(h, w, b);
    h.reset();
    EXPECT_EQ(storage.expired(), !weight_trains) << "weight trains: " << weight_trains;
    y.sum().backward();
    at::Tensor expected_dx = torch::autograd::grad({at::linear(at::gelu(x), w, b).sum()}, {x})[0];
    EXPECT_TRUE(at::allclose(x.grad(), expected_dx, 1e-4, 1e-5));
    EXPECT_EQ(w.grad().defined(), weight_trains);
  }
}

TEST(LinearKernel, OtherDtypesAndEmptyBatchesFallThrough) {
  at::Tensor w = at::randn({5, 8});
  at::Tensor bf16 = linear(at::randn({3, 8}).to(at::kBFloat16), w.to(at::kBFloat16), at::Tensor());
  EXPECT_EQ(bf16.scalar_type(), at::kBFloat16);
  EXPECT_EQ(linear(at::randn({0, 8}), w, at::randn({5})).sizes(), (std::vector<int64_t>{0, 5}));
}

// Autocast on for the scope, as the trainer's bf16 mode sets it.
struct Bf16Autocast {
  Bf16Autocast() {
    compat::set_autocast_enabled(c10::DeviceType::CPU, true);
    compat::set_autocast_dtype(c10::DeviceType::CPU, at::kBFloat16);
  }
  ~Bf16Autocast() { compat::set_autocast_enabled(c10::DeviceType::CPU, false); }
};

TEST(WeightOperand, FrozenPartsArePreparedOnceAndRedoneWhenAPartChanges) {
  at::manual_seed(5);
  at::Tensor q = at::randn({4, 3}), k = at::randn({4, 3}), v = at::randn({4, 3});
  // fp32, no autocast: the fused Q/K/V weight, built once.
  at::Tensor fused = weight_operand({q, k, v});
  EXPECT_TRUE(at::equal(fused, at::cat({q, k, v})));
  EXPECT_EQ(weight_operand({q, k, v}).data_ptr(), fused.data_ptr());
  EXPECT_EQ(weight_operand({q}).data_ptr(), q.data_ptr());  // nothing to prepare

  {
    Bf16Autocast autocast;
    at::Tensor cast = weight_operand({q});
    EXPECT_EQ(cast.scalar_type(), at::kBFloat16);
    EXPECT_TRUE(at::equal(cast, q.to(at::kBFloat16)));
    EXPECT_EQ(weight_operand({q}).data_ptr(), cast.data_ptr());
    {
      at::NoGradGuard no_grad;
      q.add_(1.0);  // as applying a delta does: a new version
    }
    at::Tensor recast = weight_operand({q});
    EXPECT_TRUE(at::equal(recast, q.to(at::kBFloat16)));
    // The product under autocast equals at::linear's own casting.
    at::Tensor x = at::randn({2, 3}), b = at::randn({4});
    EXPECT_TRUE(at::equal(linear(x, recast, b), at::linear(x, q, b)));
  }
  at::Tensor after = weight_operand({q, k, v});
  EXPECT_TRUE(at::equal(after, at::cat({q, k, v})));
}

// After an evaluation in training: copies of trained or changed weights are
// freed, a frozen weight's copy is kept for the next evaluation.
TEST(WeightOperand, StaleCopiesAreReleasedAndFrozenOnesKept) {
  at::manual_seed(6);
  at::Tensor frozen = at::randn({4, 3});
  at::Tensor trained = at::randn({4, 3}).requires_grad_(true);
  Bf16Autocast autocast;
  at::NoGradGuard no_grad;  // an evaluation: the trained weight is prepared too
  const at::Tensor frozen_copy = weight_operand({frozen});
  const at::Tensor trained_copy = weight_operand({trained});
  const void* frozen_data = frozen_copy.data_ptr();
  const void* trained_data = trained_copy.data_ptr();
  EXPECT_EQ(weight_operand({trained}).data_ptr(), trained_data);  // cached until released
  release_stale_weight_copies();
  EXPECT_EQ(weight_operand({frozen}).data_ptr(), frozen_data);
  at::Tensor again = weight_operand({trained});
  EXPECT_NE(again.data_ptr(), trained_data) << "the trained weight's copy was kept";
  EXPECT_TRUE(at::equal(again, trained.to(at::kBFloat16)));
}

TEST(WeightOperand, TrainablePartsStayDifferentiableAndUncached) {
  at::Tensor q = at::randn({4, 3}).requires_grad_(true), k = at::randn({4, 3});
  at::Tensor fused = weight_operand({q, k});
  EXPECT_TRUE(fused.requires_grad());
  fused.sum().backward();
  EXPECT_TRUE(at::equal(q.grad(), at::ones_like(q)));
  EXPECT_NE(weight_operand({q, k}).data_ptr(), fused.data_ptr());
  Bf16Autocast autocast;
  EXPECT_EQ(weight_operand({q}).scalar_type(), at::kFloat);  // autocast casts it per call
}

}  // namespace
}  // namespace deltatune::model
