#include "deltatune/model/fused_kernels.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <tuple>

#include "deltatune/model/device.h"
#include "deltatune/model/dropout.h"
#include "deltatune/model/encoder.h"
#include "deltatune/model/linear_kernel.h"
#include "deltatune/torch_compat.h"

namespace deltatune::model {
namespace {

// The largest absolute difference, for messages.
double max_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

// Runs `f` with fusion off (the plain LibTorch composition) and on.
template <typename F>
std::pair<at::Tensor, at::Tensor> plain_and_fused(F f) {
  set_fused_kernels(false);
  at::Tensor plain = f();
  set_fused_kernels(true);
  at::Tensor fused = f();
  return {plain, fused};
}

class FusedKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fused_kernels_active()) GTEST_SKIP() << "built without oneDNN: only the plain path exists";
  }
  void TearDown() override { set_fused_kernels(true); }
  at::NoGradGuard no_grad_;
};

TEST_F(FusedKernels, LinearActivationEqualsPlainForEveryActivation) {
  at::manual_seed(1);
  at::Tensor x = at::randn({4, 7, 48}), w = at::randn({20, 48}) * 0.3, b = at::randn({20});
  for (const char* name : {"gelu", "gelu_new", "relu", "silu"}) {
    for (bool with_bias : {true, false}) {
      at::Tensor bias = with_bias ? b : at::Tensor();
      auto [plain, fused] = plain_and_fused([&] { return linear_activation(x, w, bias, name); });
      ASSERT_EQ(fused.sizes(), (std::vector<int64_t>{4, 7, 20}));
      EXPECT_TRUE(at::allclose(fused, plain, 1e-5, 1e-5)) << name << ": " << max_diff(fused, plain);
      // The plain composition is what the encoder computed before fusion.
      EXPECT_TRUE(at::allclose(plain, activation(at::linear(x, w, bias), name), 1e-5, 1e-5));
    }
  }
}

TEST_F(FusedKernels, LinearResidualEqualsPlainAndLeavesTheResidualAlone) {
  at::manual_seed(2);
  at::Tensor x = at::randn({3, 5, 64}), w = at::randn({32, 64}) * 0.2, b = at::randn({32});
  at::Tensor residual = at::randn({3, 5, 32});
  at::Tensor before = residual.clone();
  auto [plain, fused] = plain_and_fused([&] { return linear_residual(x, w, b, residual); });
  EXPECT_TRUE(at::allclose(fused, plain, 1e-5, 1e-5)) << max_diff(fused, plain);
  EXPECT_TRUE(at::allclose(plain, at::linear(x, w, b) + residual, 1e-5, 1e-5));
  EXPECT_TRUE(at::equal(residual, before));
}

TEST_F(FusedKernels, PerRowBiasesInTheEpilogueEqualThePlainBroadcast) {
  // A mixed batch: each of 3 rows carries its own task's bias, added before
  // the activation (and, for a sub-layer output, beside the residual).
  at::manual_seed(6);
  at::Tensor x = at::randn({3, 5, 24}), w = at::randn({16, 24}) * 0.3;
  at::Tensor rows = at::randn({3, 16}), residual = at::randn({3, 5, 16});
  auto [plain, fused] =
      plain_and_fused([&] { return linear_activation(x, w, at::Tensor(), "gelu", rows); });
  EXPECT_TRUE(at::allclose(fused, plain, 1e-5, 1e-5)) << max_diff(fused, plain);
  EXPECT_TRUE(at::allclose(plain, at::gelu(at::linear(x, w) + rows.unsqueeze(1)), 1e-5, 1e-5));
  std::tie(plain, fused) =
      plain_and_fused([&] { return linear_residual(x, w, at::Tensor(), residual, rows); });
  EXPECT_TRUE(at::allclose(fused, plain, 1e-5, 1e-5)) << max_diff(fused, plain);
  EXPECT_TRUE(at::allclose(plain, at::linear(x, w) + rows.unsqueeze(1) + residual, 1e-5, 1e-5));
  // Shared and per-row biases together, on token rows [B, L, K] and on [B, K].
  at::Tensor shared = at::randn({16});
  for (const at::Tensor& input : {x, x.select(1, 0)}) {
    std::tie(plain, fused) =
        plain_and_fused([&] { return linear_row_bias(input, w, shared, rows); });
    EXPECT_TRUE(at::allclose(fused, plain, 1e-5, 1e-5)) << max_diff(fused, plain);
    at::Tensor broadcast = input.dim() == 3 ? rows.unsqueeze(1) : rows;
    EXPECT_TRUE(at::allclose(plain, at::linear(input, w, shared) + broadcast, 1e-5, 1e-5));
  }
}

// Under bf16 (a mixed batch's pass under autocast: bf16 inputs and weights,
// fp32 tables of each row's bias) a product with per-row biases and no
// residual gives bf16, as the shared bias in the epilogue does, so the next
// product reads it without a cast; with an fp32 residual it gives fp32. Both
// within bf16 precision of the fp32 computation.
TEST_F(FusedKernels, PerRowBiasesKeepABf16ProductsTypeUnlessAResidualPromotesIt) {
  at::manual_seed(7);
  const at::Tensor x = at::randn({3, 5, 32}), w = at::randn({16, 32}) * 0.3;
  const at::Tensor rows = at::randn({3, 16}), residual = at::randn({3, 5, 16});
  const at::Tensor xb = x.to(at::kBFloat16), wb = w.to(at::kBFloat16);
  const at::Tensor exact = at::linear(xb.to(at::kFloat), wb.to(at::kFloat)) + rows.unsqueeze(1);
  AutocastScope autocast(at::Device(at::kCPU), Precision::kBFloat16);
  auto close = [](const at::Tensor& got, const at::Tensor& want) {
    return at::allclose(got.to(at::kFloat), want, 2e-2, 2e-2);
  };
  const at::Tensor biased = linear_row_bias(xb, wb, at::Tensor(), rows);
  EXPECT_EQ(biased.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(close(biased, exact)) << max_diff(biased.to(at::kFloat), exact);
  const at::Tensor activated = linear_activation(xb, wb, at::Tensor(), "gelu", rows);
  EXPECT_EQ(activated.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(close(activated, at::gelu(exact)));
  const at::Tensor summed = linear_residual(xb, wb, at::Tensor(), residual, rows);
  EXPECT_EQ(summed.scalar_type(), at::kFloat);
  EXPECT_TRUE(close(summed, exact + residual));
}

TEST_F(FusedKernels, LayerNormWithEachRowsParametersEqualsThePlainBroadcast) {
  at::manual_seed(8);
  // Offset and scaled rows (a residual stream's statistics), 384 wide plus a tail.
  at::Tensor x = at::randn({4, 9, 389}) * 3 + 5;
  at::Tensor gains = at::randn({4, 389}), shifts = at::randn({4, 389});
  at::Tensor gain = at::randn({389}), shift = at::randn({389});
  struct Case {
    at::Tensor gain, shift;
  };
  for (const Case& c : {Case{gains, shifts}, Case{gain, shifts}, Case{gains, shift},
                        Case{gains, at::Tensor()}, Case{at::Tensor(), shifts}}) {
    auto [plain, fused] =
        plain_and_fused([&] { return layer_norm_rows(x, c.gain, c.shift, 1e-12); });
    EXPECT_TRUE(at::allclose(fused, plain, 1e-5, 1e-5)) << max_diff(fused, plain);
    auto expand = [&](const at::Tensor& t, double fill) {
      if (!t.defined()) return at::full({4, 389}, fill);
      return t.dim() == 2 ? t : t.expand({4, -1});
    };
    for (int64_t r = 0; r < 4; ++r) {
      at::Tensor alone =
          at::layer_norm(x[r], {389}, expand(c.gain, 1)[r], expand(c.shift, 0)[r], 1e-12);
      EXPECT_TRUE(at::allclose(fused[r], alone, 1e-5, 1e-5)) << "row " << r;
    }
  }
  EXPECT_THROW(layer_norm_rows(x, at::randn({3, 389}), {}, 1e-12), std::invalid_argument);
}

TEST_F(FusedKernels, AttentionOnStridedHeadsWithPaddingAndPrefixesEqualsPlain) {
  at::manual_seed(3);
  const int64_t batch = 3, length = 9, heads = 4, width = 32;
  // Q, K and V as views into one fused product, as SelfAttention makes them.
  at::Tensor qkv = at::randn({batch, length, 3 * width});
  auto parts = qkv.chunk(3, -1);
  at::Tensor mask = at::ones({batch, length}, at::kLong);
  mask[1].slice(0, 6).zero_();
  mask[2].slice(0, 2).zero_();
  at::Tensor additive = additive_attention_mask(mask, at::kFloat);
  auto [plain, fused] =
      plain_and_fused([&] { return attention(parts[0], parts[1], parts[2], additive, heads); });
  ASSERT_EQ(fused.sizes(), (std::vector<int64_t>{batch, length, width}));
  EXPECT_TRUE(at::allclose(fused, plain, 1e-5, 1e-5)) << max_diff(fused, plain);

  // Prefix keys: more keys than queries, contiguous keys, one mask for all rows.
  at::Tensor keys = at::randn({batch, length + 5, width}),
             values = at::randn({batch, length + 5, width});
  at::Tensor shared_mask =
      additive_attention_mask(at::ones({1, length + 5}, at::kLong), at::kFloat);
  std::tie(plain, fused) =
      plain_and_fused([&] { return attention(parts[0], keys, values, shared_mask, heads); });
  EXPECT_TRUE(at::allclose(fused, plain, 1e-5, 1e-5)) << max_diff(fused, plain);

  // The plain path equals a direct reading of Vaswani et al.'s equation 1 per head.
  at::Tensor q = parts[0].view({batch, length, heads, 8}).transpose(1, 2);
  at::Tensor k = parts[1].view({batch, length, heads, 8}).transpose(1, 2);
  at::Tensor v = parts[2].view({batch, length, heads, 8}).transpose(1, 2);
  at::Tensor direct =
      at::matmul(at::softmax(at::matmul(q, k.transpose(-1, -2)) / std::sqrt(8.0) + additive, -1), v)
          .transpose(1, 2)
          .reshape({batch, length, width});
  set_fused_kernels(false);
  EXPECT_TRUE(
      at::allclose(attention(parts[0], parts[1], parts[2], additive, heads), direct, 1e-5, 1e-5));
}

TEST(FusedKernelsAutograd, CallsThatNeedGradientsTakeThePlainDifferentiablePath) {
  at::manual_seed(4);
  at::Tensor x = at::randn({2, 3, 16}).requires_grad_(true);
  at::Tensor w = at::randn({8, 16}), b = at::randn({8}).requires_grad_(true);
  at::Tensor y = linear_activation(x, w, b, "gelu");
  ASSERT_TRUE(y.requires_grad());
  y.sum().backward();
  at::Tensor x2 = x.detach().clone().requires_grad_(true),
             b2 = b.detach().clone().requires_grad_(true);
  at::gelu(at::linear(x2, w, b2)).sum().backward();
  EXPECT_TRUE(at::allclose(x.grad(), x2.grad(), 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(b.grad(), b2.grad(), 1e-5, 1e-5));
}

// Attention with gradients (training, Fisher passes): the fused function's
// output, gradients and consumption of the random stream equal autograd's
// composition of the same draws (plain_attention), with and without dropout,
// with prefix keys.
TEST(FusedKernelsAutograd, TrainingAttentionEqualsAutogradsCompositionDrawForDraw) {
  if (!fused_kernels_active()) GTEST_SKIP() << "built without oneDNN: only the plain path exists";
  const int64_t batch = 3, length = 9, heads = 4, width = 32;
  at::manual_seed(5);
  const at::Tensor qkv_init = at::randn({batch, length, 3 * width});
  const at::Tensor prefix_init = at::randn({batch, 4, 2 * width});
  const at::Tensor upstream = at::randn({batch, length, width});
  at::Tensor mask = at::ones({batch, length}, at::kLong);
  mask[1].slice(0, 6).zero_();
  const at::Tensor additive = additive_attention_mask(mask, at::kFloat);
  const at::Tensor prefix_mask =
      additive_attention_mask(at::ones({batch, length + 4}, at::kLong), at::kFloat);
  for (const bool prefixed : {false, true}) {
    for (const double dropout : {0.0, 0.1}) {
      struct Outcome {
        at::Tensor out, grad_qkv, grad_prefix, next_draw;
      };
      auto run = [&](bool fused) {
        set_fused_kernels(fused);
        at::Tensor qkv = qkv_init.clone().requires_grad_(true);
        at::Tensor prefix = prefix_init.clone().requires_grad_(true);
        auto parts = qkv.chunk(3, -1);
        at::Tensor keys = parts[1], values = parts[2];
        if (prefixed) {
          auto prefix_parts = prefix.chunk(2, -1);
          keys = at::cat({prefix_parts[0], keys}, 1);
          values = at::cat({prefix_parts[1], values}, 1);
        }
        at::manual_seed(11);
        at::Tensor out =
            attention(parts[0], keys, values, prefixed ? prefix_mask : additive, heads, dropout);
        at::Tensor next_draw = at::rand({4});
        (out * upstream).sum().backward();
        set_fused_kernels(true);
        return Outcome{out.detach(), qkv.grad(), prefix.grad(), next_draw};
      };
      const Outcome plain = run(false), fused = run(true);
      const std::string where = std::string(prefixed ? "prefixed" : "plain keys") + ", dropout " +
                                std::to_string(dropout);
      EXPECT_TRUE(at::allclose(fused.out, plain.out, 1e-5, 1e-5))
          << where << ": " << max_diff(fused.out, plain.out);
      EXPECT_TRUE(at::allclose(fused.grad_qkv, plain.grad_qkv, 1e-5, 1e-5))
          << where << ": " << max_diff(fused.grad_qkv, plain.grad_qkv);
      if (prefixed) {
        EXPECT_TRUE(at::allclose(fused.grad_prefix, plain.grad_prefix, 1e-5, 1e-5))
            << where << ": " << max_diff(fused.grad_prefix, plain.grad_prefix);
      }
      EXPECT_TRUE(at::equal(fused.next_draw, plain.next_draw))
          << where << ": the stream moved apart";
      if (dropout > 0 && !prefixed) {
        // The draw is really there: another seed gives other outputs.
        set_fused_kernels(true);
        auto parts = qkv_init.chunk(3, -1);
        at::manual_seed(12);
        at::NoGradGuard no_grad;
        EXPECT_FALSE(at::allclose(attention(parts[0], parts[1], parts[2], additive, heads, dropout),
                                  fused.out))
            << where;
      }
    }
  }
}

// The training sub-layer tail LayerNorm(dropout(P) + R) and its composition
// from the same draw: model::dropout, the sum, at::layer_norm (with the
// casts autocast's bf16 training makes), run on copies of the same operands.
struct SublayerTail {
  at::Tensor y, grad_projected, grad_residual, grad_gain, grad_shift, next_draw;

  static SublayerTail run(bool fused, const at::Tensor& projected_init,
                          const at::Tensor& residual_init, const at::Tensor& gain_init,
                          const at::Tensor& shift_init, const at::Tensor& upstream, double p) {
    at::Tensor projected = projected_init.clone().requires_grad_(true);
    at::Tensor residual = residual_init.clone().requires_grad_(true);
    at::Tensor gain = gain_init.clone().requires_grad_(true);
    at::Tensor shift = shift_init.clone().requires_grad_(true);
    at::manual_seed(21);
    at::Tensor y;
    if (fused) {
      y = dropout_residual_layer_norm(projected, residual, p, gain, shift, 1e-12);
      EXPECT_TRUE(y.defined()) << "the fused tail declined";
    } else {
      at::Tensor h = model::dropout(projected, p, /*train=*/true) + residual;
      y = at::layer_norm(h.to(at::kFloat), {h.size(-1)}, gain, shift, 1e-12).to(h.scalar_type());
    }
    SublayerTail out;
    out.next_draw = at::rand({4});
    (y.to(at::kFloat) * upstream).sum().backward();
    out.y = y.detach();
    out.grad_projected = projected.grad();
    out.grad_residual = residual.grad();
    out.grad_gain = gain.grad();
    out.grad_shift = shift.grad();
    return out;
  }
};

// fp32: values and all four gradients within 1e-5 of autograd's composition,
// the same dropout decisions (zero gradient exactly where an entry was
// dropped) and the random stream left where the composition leaves it; a
// width that is no multiple of the 8 lanes; with and without dropout.
TEST(FusedKernelsAutograd, SublayerTailEqualsAutogradsCompositionDrawForDraw) {
  at::manual_seed(6);
  const at::Tensor projected = at::randn({3, 7, 389}), residual = at::randn({3, 7, 389});
  const at::Tensor gain = 1 + 0.1 * at::randn({389}), shift = 0.1 * at::randn({389});
  const at::Tensor upstream = at::randn({3, 7, 389});
  for (const double p : {0.0, 0.1}) {
    const auto plain = SublayerTail::run(false, projected, residual, gain, shift, upstream, p);
    const auto fused = SublayerTail::run(true, projected, residual, gain, shift, upstream, p);
    const std::string where = "dropout " + std::to_string(p);
    EXPECT_TRUE(at::allclose(fused.y, plain.y, 1e-5, 1e-5))
        << where << ": " << max_diff(fused.y, plain.y);
    for (auto [name, a, b] : {std::tuple{"projected", fused.grad_projected, plain.grad_projected},
                              std::tuple{"residual", fused.grad_residual, plain.grad_residual},
                              std::tuple{"gain", fused.grad_gain, plain.grad_gain},
                              std::tuple{"shift", fused.grad_shift, plain.grad_shift}}) {
      ASSERT_TRUE(a.defined() && b.defined()) << where << ": no gradient for " << name;
      EXPECT_TRUE(at::allclose(a, b, 1e-5, 1e-5))
          << where << ", " << name << ": " << max_diff(a, b);
    }
    EXPECT_TRUE(at::equal(fused.grad_projected.eq(0), plain.grad_projected.eq(0))) << where;
    if (p > 0) {
      EXPECT_GT(fused.grad_projected.eq(0).sum().item<int64_t>(), 0) << where;
    }
    EXPECT_TRUE(at::equal(fused.next_draw, plain.next_draw)) << where << ": the stream moved apart";
  }
}

// A bf16 projection onto an fp32 residual (autocast's training) and onto a
// bf16 one: the same types out, the same dropout decisions, values and
// gradients within bf16's rounding of the composition's.
TEST(FusedKernelsAutograd, SublayerTailOnBf16ProjectionsKeepsTheCompositionsTypes) {
  at::manual_seed(7);
  const at::Tensor projected = at::randn({2, 5, 64}).to(at::kBFloat16);
  const at::Tensor gain = 1 + 0.1 * at::randn({64}), shift = 0.1 * at::randn({64});
  const at::Tensor upstream = at::randn({2, 5, 64});
  for (const auto residual_type : {at::kFloat, at::kBFloat16}) {
    const at::Tensor residual = at::randn({2, 5, 64}).to(residual_type);
    const auto plain = SublayerTail::run(false, projected, residual, gain, shift, upstream, 0.1);
    const auto fused = SublayerTail::run(true, projected, residual, gain, shift, upstream, 0.1);
    const std::string where = residual_type == at::kFloat ? "fp32 residual" : "bf16 residual";
    EXPECT_EQ(fused.y.scalar_type(), residual_type) << where;
    EXPECT_EQ(fused.grad_projected.scalar_type(), at::kBFloat16) << where;
    EXPECT_EQ(fused.grad_residual.scalar_type(), residual_type) << where;
    EXPECT_TRUE(at::allclose(fused.y.to(at::kFloat), plain.y.to(at::kFloat), 2e-2, 2e-2)) << where;
    EXPECT_TRUE(at::allclose(fused.grad_projected.to(at::kFloat),
                             plain.grad_projected.to(at::kFloat), 2e-2, 2e-2))
        << where << ": "
        << max_diff(fused.grad_projected.to(at::kFloat), plain.grad_projected.to(at::kFloat));
    EXPECT_TRUE(at::allclose(fused.grad_gain, plain.grad_gain, 2e-2, 2e-2)) << where;
    EXPECT_TRUE(at::allclose(fused.grad_shift, plain.grad_shift, 1e-4, 1e-4)) << where;
    EXPECT_TRUE(at::equal(fused.grad_projected.eq(0), plain.grad_projected.eq(0))) << where;
    EXPECT_TRUE(at::equal(fused.next_draw, plain.next_draw)) << where;
  }
}

// The gain and shift gradients are sums over rows in fixed chunks: the same
// bits on one thread and on several. And the tail declines what it does not
// compute (another shape or type, fusion off), for the caller to compose.
TEST(FusedKernelsAutograd, SublayerTailSumsTheSameOnAnyThreadCountAndDeclinesTheRest) {
  at::manual_seed(8);
  const at::Tensor projected = at::randn({4, 33, 96}), residual = at::randn({4, 33, 96});
  const at::Tensor gain = at::randn({96}), shift = at::randn({96}),
                   upstream = at::randn({4, 33, 96});
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = SublayerTail::run(true, projected, residual, gain, shift, upstream, 0.1);
  at::set_num_threads(std::max(2, threads));
  const auto several = SublayerTail::run(true, projected, residual, gain, shift, upstream, 0.1);
  at::set_num_threads(threads);
  EXPECT_TRUE(at::equal(one.grad_gain, several.grad_gain));
  EXPECT_TRUE(at::equal(one.grad_shift, several.grad_shift));
  EXPECT_TRUE(at::equal(one.grad_projected, several.grad_projected));

  // A gain and shift read through strides (every other entry of a longer vector).
  const at::Tensor strided_gain =
      at::stack({gain, at::zeros({96})}, 1).view({-1}).slice(0, 0, 192, 2);
  const at::Tensor strided_shift =
      at::stack({shift, at::ones({96})}, 1).view({-1}).slice(0, 0, 192, 2);
  ASSERT_FALSE(strided_gain.is_contiguous());
  at::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(
      dropout_residual_layer_norm(projected, residual, 0.0, strided_gain, strided_shift, 1e-12),
      dropout_residual_layer_norm(projected, residual, 0.0, gain, shift, 1e-12)));

  EXPECT_FALSE(dropout_residual_layer_norm(projected, residual.slice(1, 1), 0.1, gain, shift, 1e-12)
                   .defined());
  EXPECT_FALSE(dropout_residual_layer_norm(projected.to(at::kHalf), residual.to(at::kHalf), 0.1,
                                           gain, shift, 1e-12)
                   .defined());
  EXPECT_FALSE(dropout_residual_layer_norm(projected, residual, 0.1, gain.slice(0, 1), shift, 1e-12)
                   .defined());
  set_fused_kernels(false);
  EXPECT_FALSE(dropout_residual_layer_norm(projected, residual, 0.1, gain, shift, 1e-12).defined());
  set_fused_kernels(true);
  EXPECT_TRUE(dropout_residual_layer_norm(projected, residual, 0.1, gain, shift, 1e-12).defined());
}

// A tiny random BERT in eval mode and a padded batch of 3 rows of 11 tokens.
struct TinyEncoder {
  TinyEncoder(int64_t hidden, uint64_t seed) {
    nlohmann::json j = {{"model_type", "bert"},         {"vocab_size", 120},
                        {"hidden_size", hidden},        {"num_hidden_layers", 2},
                        {"num_attention_heads", 4},     {"intermediate_size", 2 * hidden},
                        {"max_position_embeddings", 64}};
    at::manual_seed(seed);
    model = EncoderModel(EncoderConfig::from_json(j, "tiny"), true);
    model->eval();
    in.input_ids = at::randint(1, 120, {3, 11}, at::kLong);
    in.attention_mask = at::ones({3, 11}, at::kLong);
    in.attention_mask[2].slice(0, 4).zero_();
  }
  EncoderModel model{nullptr};
  EncoderInput in;
};

TEST_F(FusedKernels, EncoderInEvalModeEqualsThePlainPath) {
  TinyEncoder tiny(48, 5);
  EncoderModel& model = tiny.model;
  const EncoderInput& in = tiny.in;
  auto [plain, fused] = plain_and_fused([&] { return model->forward(in).last_hidden_state; });
  EXPECT_TRUE(at::allclose(fused, plain, 1e-5, 1e-5)) << max_diff(fused, plain);
}

// Under CPU autocast to bf16 (inference at --bf16 / --precision bf16) the
// fused kernels multiply bf16 operands with fp32 accumulation and round each
// product's result once. References: the fp32 composition on the operands
// rounded to bf16 (what a bf16 product computes exactly).
class FusedKernelsBf16 : public FusedKernels {
 protected:
  static at::Tensor rounded(const at::Tensor& t) { return t.to(at::kBFloat16).to(at::kFloat); }
  // The fp32 references are computed with autocast paused.
  struct AutocastPaused {
    AutocastPaused() { compat::set_autocast_enabled(c10::DeviceType::CPU, false); }
    ~AutocastPaused() { compat::set_autocast_enabled(c10::DeviceType::CPU, true); }
  };
  AutocastScope bf16_{at::Device(at::kCPU), Precision::kBFloat16};
};

TEST_F(FusedKernelsBf16, ProjectionOntoAnFp32ResidualRoundsNothingBeforeTheSum) {
  at::manual_seed(11);
  at::Tensor x = at::randn({3, 5, 64}), w = at::randn({32, 64}) * 0.2, b = at::randn({32});
  at::Tensor residual = at::randn({3, 5, 32});
  at::Tensor reference = [&] {
    AutocastPaused paused;
    return at::linear(rounded(x), rounded(w), b) + residual;
  }();
  at::Tensor w16 = weight_operand({w});
  ASSERT_EQ(w16.scalar_type(), at::kBFloat16);
  auto [plain, fused] = plain_and_fused([&] { return linear_residual(x, w16, b, residual); });
  ASSERT_EQ(fused.scalar_type(), at::kFloat);  // bf16 + fp32 promotes, as under autocast
  ASSERT_EQ(plain.scalar_type(), at::kFloat);
  // Fused: the product's fp32 sum is added unrounded (only summation order
  // differs); autocast's plain path rounds the product to bf16 first.
  EXPECT_LT(max_diff(fused, reference), 1e-4);
  EXPECT_GT(max_diff(plain, reference), 1e-3) << "the plain path no longer rounds: revisit";
  EXPECT_TRUE(at::allclose(fused, plain, 2e-2, 5e-2)) << max_diff(fused, plain);
}

TEST_F(FusedKernelsBf16, ActivatedProjectionIsTheRoundedExactValue) {
  at::manual_seed(12);
  at::Tensor x = at::randn({4, 7, 48}), w = at::randn({20, 48}) * 0.3, b = at::randn({20});
  at::Tensor w16 = weight_operand({w});
  for (const char* name : {"gelu", "relu"}) {
    at::Tensor reference = [&] {
      AutocastPaused paused;
      return activation(at::linear(rounded(x), rounded(w), b), name);
    }();
    auto [plain, fused] = plain_and_fused([&] { return linear_activation(x, w16, b, name); });
    ASSERT_EQ(fused.scalar_type(), at::kBFloat16) << name;
    // Within one bf16 rounding of the exact value (2^-8 relative).
    EXPECT_TRUE(at::allclose(fused.to(at::kFloat), reference, 1.0 / 256, 1e-3))
        << name << ": " << max_diff(fused.to(at::kFloat), reference);
    EXPECT_TRUE(at::allclose(fused.to(at::kFloat), plain.to(at::kFloat), 3e-2, 3e-2)) << name;
  }
}

TEST_F(FusedKernelsBf16, AttentionOnBf16HeadsKeepsFp32ScoresAndSoftmax) {
  at::manual_seed(13);
  const int64_t batch = 3, length = 9, heads = 4, width = 32;
  at::Tensor qkv = at::randn({batch, length, 3 * width}).to(at::kBFloat16);
  auto parts = qkv.chunk(3, -1);
  at::Tensor mask = at::ones({batch, length}, at::kLong);
  mask[1].slice(0, 6).zero_();
  at::Tensor additive = additive_attention_mask(mask, at::kFloat);
  at::Tensor reference = [&] {
    AutocastPaused paused;
    set_fused_kernels(false);
    return attention(parts[0].to(at::kFloat), parts[1].to(at::kFloat), parts[2].to(at::kFloat),
                     additive, heads);
  }();
  auto [plain, fused] =
      plain_and_fused([&] { return attention(parts[0], parts[1], parts[2], additive, heads); });
  ASSERT_EQ(fused.scalar_type(), at::kBFloat16);
  // Two roundings: the probabilities to bf16 for the context product, and its result.
  EXPECT_TRUE(at::allclose(fused.to(at::kFloat), reference, 2e-2, 1e-2))
      << max_diff(fused.to(at::kFloat), reference);
}

TEST_F(FusedKernelsBf16, EncoderIsAtLeastAsCloseToFp32AsAutocastsComposition) {
  TinyEncoder tiny(64, 15);
  EncoderModel& model = tiny.model;
  const EncoderInput& in = tiny.in;
  at::Tensor exact = [&] {
    AutocastPaused paused;
    return model->forward(in).last_hidden_state;
  }();
  auto [plain, fused] = plain_and_fused([&] { return model->forward(in).last_hidden_state; });
  const double fused_error = (fused.to(at::kFloat) - exact).abs().mean().item<double>();
  const double plain_error = (plain.to(at::kFloat) - exact).abs().mean().item<double>();
  EXPECT_LT(fused_error, 2e-2);
  EXPECT_LE(fused_error, plain_error * 1.1) << fused_error << " against autocast's " << plain_error;
  EXPECT_GT(max_diff(fused.to(at::kFloat), plain.to(at::kFloat)), 0) << "no fused path taken";
}

}  // namespace
}  // namespace deltatune::model
