#include "deltatune/train/optimizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "deltatune/error.h"
#include "deltatune/io/safetensors.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {

// torch.optim.AdamW on the same gradients (tools/make_optimizer_fixture.py).
TEST(AdamW, MatchesTorchWithDecayGroupsAndWarmup) {
  auto fx = io::SafetensorsFile::open(test::fixtures() / "train" / "adamw.safetensors");
  at::Tensor w = fx.tensor("w0").clone().requires_grad_(true);
  at::Tensor b = fx.tensor("b0").clone().requires_grad_(true);
  AdamW optimizer({{"decay", {"w"}, {w}, 1e-2, 0.1}, {"no_decay", {"b"}, {b}, 1e-2, 0.0}});
  for (int t = 0; t < 4; ++t) {
    w.mutable_grad() = fx.tensor("grad_w" + std::to_string(t)).clone();
    b.mutable_grad() = fx.tensor("grad_b" + std::to_string(t)).clone();
    optimizer.step(lr_multiplier(Schedule::kLinear, t, 2, 4));
    EXPECT_TRUE(at::allclose(w, fx.tensor("w" + std::to_string(t + 1)), 1e-6, 1e-7))
        << "step " << t;
    EXPECT_TRUE(at::allclose(b, fx.tensor("b" + std::to_string(t + 1)), 1e-6, 1e-7))
        << "step " << t;
  }
  EXPECT_EQ(optimizer.steps(), 4);
}

TEST(AdamW, MaskedEntriesStayBitIdentical) {
  at::manual_seed(1);
  at::Tensor w = at::randn({6, 4}).requires_grad_(true);
  const at::Tensor before = w.detach().clone();
  AdamW optimizer({{"decay", {"w"}, {w}, 1e-1, 0.5}});
  at::Tensor mask = at::zeros({6, 4});
  mask.index_put_({at::indexing::Slice(0, 2)}, 1);
  optimizer.set_mask("w", mask);
  for (int t = 0; t < 3; ++t) {
    w.mutable_grad() = at::randn({6, 4});
    optimizer.step();
  }
  at::Tensor frozen_rows = w.detach().index({at::indexing::Slice(2, at::indexing::None)});
  EXPECT_TRUE(at::equal(frozen_rows, before.index({at::indexing::Slice(2, at::indexing::None)})));
  EXPECT_FALSE(at::equal(w.detach().index({at::indexing::Slice(0, 2)}),
                         before.index({at::indexing::Slice(0, 2)})));
  auto state = optimizer.state();
  for (const auto& [name, tensor] : state) {
    if (name.find("exp_avg") == std::string::npos) continue;
    EXPECT_TRUE(tensor.index({at::indexing::Slice(2, at::indexing::None)}).eq(0).all().item<bool>())
        << name;
  }
}

// A parameter above the update's slice size (2^20 values, so three slices
// and a partial fourth), masked and not: every value ends as one whole-tensor
// AdamW computes it.
TEST(AdamW, LargeParametersUpdateSliceBySliceAsOneWholeTensor) {
  const int64_t n = 3 * (int64_t{1} << 20) + 37;
  const double lr = 1e-2, decay = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  for (const bool masked : {false, true}) {
    at::manual_seed(7);
    at::Tensor w = at::randn({n}).requires_grad_(true);
    const at::Tensor keep = at::rand({n}) < 0.3;
    AdamW optimizer({{"decay", {"w"}, {w}, lr, decay}});
    if (masked) optimizer.set_mask("w", keep);
    at::Tensor p = w.detach().clone(), m = at::zeros({n}), v = at::zeros({n});
    for (int t = 1; t <= 3; ++t) {
      const at::Tensor g = at::randn({n});
      w.mutable_grad() = g.clone();
      optimizer.step();
      const double c1 = 1 - std::pow(b1, t), c2 = std::sqrt(1 - std::pow(b2, t));
      at::Tensor new_m = m * b1 + g * (1 - b1), new_v = v * b2 + g * g * (1 - b2);
      at::Tensor new_p = p * (1 - lr * decay) - (lr / c1) * new_m / (new_v.sqrt() / c2 + eps);
      if (masked) {
        new_m = at::where(keep, new_m, m), new_v = at::where(keep, new_v, v);
        new_p = at::where(keep, new_p, p);
      }
      m = new_m, v = new_v, p = new_p;
    }
    EXPECT_TRUE(at::allclose(w.detach(), p, 1e-6, 1e-7))
        << (masked ? "masked" : "unmasked") << ": " << (w.detach() - p).abs().max().item<double>();
    if (masked) {
      EXPECT_TRUE(at::equal(w.detach().masked_select(~keep), p.masked_select(~keep)))
          << "a masked-out value moved";
    }
  }
}

// Gradients freed between steps (as every step and evaluation does) train
// exactly as zeroed ones (torch 1.13's zero_grad default).
TEST(AdamW, ReleasedGradientsTrainAsZeroedOnes) {
  at::manual_seed(9);
  const at::Tensor start = at::randn({5, 3});
  std::vector<at::Tensor> grads;
  for (int t = 0; t < 3; ++t) grads.push_back(at::randn({5, 3}));
  at::Tensor ends[2];
  for (const bool release : {false, true}) {
    at::Tensor w = start.clone().requires_grad_(true);
    AdamW optimizer({{"decay", {"w"}, {w}, 1e-2, 0.1}});
    for (const at::Tensor& g : grads) {
      if (w.grad().defined())
        w.mutable_grad().add_(g);  // backward accumulates into the zeroed gradient
      else
        w.mutable_grad() = g.clone();  // or allocates it afresh
      optimizer.step();
      w.mutable_grad().zero_();
      if (release) {
        optimizer.release_gradients();
        EXPECT_FALSE(w.grad().defined());
      }
    }
    ends[release] = w.detach();
  }
  EXPECT_TRUE(at::equal(ends[0], ends[1]));
}

TEST(AdamW, StateRoundTripsForResume) {
  at::manual_seed(2);
  at::Tensor a = at::randn({3}).requires_grad_(true), b = a.detach().clone().requires_grad_(true);
  AdamW first({{"g", {"p"}, {a}, 1e-2, 0.0}}), second({{"g", {"p"}, {b}, 1e-2, 0.0}});
  at::Tensor g1 = at::randn({3}), g2 = at::randn({3});
  a.mutable_grad() = g1.clone();
  first.step();
  b.mutable_grad() = g1.clone();
  second.step();
  std::map<std::string, at::Tensor> saved;
  for (auto& [k, v] : first.state()) saved[k] = v.clone();
  AdamW resumed({{"g", {"p"}, {b}, 1e-2, 0.0}});
  resumed.load_state(saved);
  a.mutable_grad() = g2.clone();
  first.step();
  b.mutable_grad() = g2.clone();
  resumed.step();
  EXPECT_TRUE(at::equal(a, b));
}

// The one-pass update against ATen's composition (AdamWOptions::fused off,
// torch.optim.AdamW's kernels), the same gradients for 6 steps under a warmup
// schedule: a decayed matrix, an undecayed vector, a masked parameter above
// the slice size, and a gradient that is a strided view (which the one-pass
// update declines). p, m and v end bit for bit equal, with ATen's kernels
// in any of their builds (run with ATEN_CPU_CAPABILITY=default, avx2 and
// avx512 to see each); masked-out entries stay where they started.
TEST(AdamW, OnePassUpdateIsTheCompositionBitForBit) {
  at::manual_seed(11);
  const int64_t large = (int64_t{1} << 20) + 4099;
  const std::vector<at::Tensor> starts = {at::randn({300, 70}), at::randn({70}), at::randn({large}),
                                          at::randn({40, 6})};
  const at::Tensor keep = at::rand({large}) < 0.25;
  std::vector<std::vector<at::Tensor>> grads(6);
  for (auto& step : grads)
    for (const auto& s : starts) step.push_back(at::randn(s.sizes()) * 0.1);
  struct End {
    std::vector<at::Tensor> parameters;
    std::map<std::string, at::Tensor> state;
  };
  End ends[2];
  for (const bool fused : {false, true}) {
    std::vector<at::Tensor> ps;
    for (const auto& s : starts) ps.push_back(s.clone().requires_grad_(true));
    AdamWOptions options;
    options.fused = fused;
    AdamW optimizer({{"decay", {"w", "big", "strided"}, {ps[0], ps[2], ps[3]}, 3e-3, 0.01},
                     {"no_decay", {"b"}, {ps[1]}, 5e-3, 0.0}},
                    options);
    optimizer.set_mask("big", keep);
    for (size_t t = 0; t < grads.size(); ++t) {
      for (size_t i = 0; i < ps.size(); ++i) ps[i].mutable_grad() = grads[t][i].clone();
      // A gradient laid out transposed: a strided view of a [6, 40] tensor.
      ps[3].mutable_grad() = grads[t][3].t().contiguous().t();
      ASSERT_FALSE(ps[3].grad().is_contiguous());
      optimizer.step(lr_multiplier(Schedule::kLinear, static_cast<int64_t>(t), 2, 6));
      optimizer.release_gradients();
    }
    for (const auto& p : ps) ends[fused].parameters.push_back(p.detach());
    for (const auto& [name, tensor] : optimizer.state()) ends[fused].state[name] = tensor;
  }
  for (size_t i = 0; i < starts.size(); ++i) {
    const at::Tensor &a = ends[0].parameters[i], &b = ends[1].parameters[i];
    EXPECT_TRUE(at::equal(a, b)) << "parameter " << i << ": " << a.ne(b).sum().item<int64_t>()
                                 << " values differ, by up to "
                                 << (a - b).abs().max().item<double>();
    EXPECT_FALSE(at::equal(a, starts[i])) << "parameter " << i << " did not move";
  }
  for (const auto& [name, tensor] : ends[0].state)
    EXPECT_TRUE(at::equal(tensor, ends[1].state.at(name))) << name;
  EXPECT_TRUE(at::equal(ends[1].parameters[2].masked_select(~keep), starts[2].masked_select(~keep)))
      << "a masked-out value moved";
  EXPECT_TRUE(
      ends[1].state.at("optimizer.exp_avg_sq.big").masked_select(~keep).eq(0).all().item<bool>());
}

// Packed weights (the inference path's, linear_kernel and onednn_matmul) are
// keyed on a tensor's version: a step must advance the version of every
// parameter it writes, as ATen's in-place kernels do, or an evaluation after
// it reads the weights of before (as Diff Pruning's fixed-mask stage did,
// evaluated after the projection: its recorded dev loss was not its delta's).
TEST(AdamW, AStepAdvancesTheVersionOfEveryParameterItWrites) {
  for (const bool fused : {false, true}) {
    for (const bool masked : {false, true}) {
      at::Tensor w = at::randn({4, 3}).requires_grad_(true);
      AdamWOptions options;
      options.fused = fused;
      AdamW optimizer({{"decay", {"w"}, {w}, 1e-2, 0.1}}, options);
      if (masked) optimizer.set_mask("w", at::rand({4, 3}) < 0.5);
      w.mutable_grad() = at::randn({4, 3});
      const auto before = w._version();
      optimizer.step();
      EXPECT_GT(w._version(), before)
          << (fused ? "fused" : "composed") << (masked ? ", masked" : "");
    }
  }
}

TEST(Schedules, MatchHuggingFaceDefinitions) {
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::kConstant, 5, 10, 100), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::kLinear, 5, 10, 100), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::kLinear, 10, 10, 100), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::kLinear, 55, 10, 100), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::kLinear, 100, 10, 100), 0.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(Schedule::kConstantWithWarmup, 50, 10, 100), 1.0);
  EXPECT_THROW(parse_schedule("cosine-ish"), Error);
}

TEST(ClipGradNorm, ScalesToTheLimitLikeTorch) {
  at::Tensor p = at::zeros({2}).requires_grad_(true), q = at::zeros({1}).requires_grad_(true);
  p.mutable_grad() = at::tensor({3.0f, 0.0f});
  q.mutable_grad() = at::tensor({4.0f});
  EXPECT_NEAR(clip_grad_norm({p, q}, 1.0), 5.0, 1e-6);
  EXPECT_NEAR(p.grad()[0].item<float>(), 3.0f / (5.0f + 1e-6f), 1e-6);
  EXPECT_NEAR(q.grad()[0].item<float>(), 4.0f / (5.0f + 1e-6f), 1e-6);
}

}  // namespace
}  // namespace deltatune::train
