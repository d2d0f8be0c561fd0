// The Fisher and top-k machinery against values computed by hand: a linear
// softmax classifier, logits = x W^T, whose log-likelihood gradient is
// (softmax(z) - onehot(y)) x^T.
#include "deltatune/methods/fisher.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "deltatune/error.h"

namespace deltatune::methods {
namespace {

struct LinearSoftmax {
  at::Tensor x = at::tensor({1.0f, -2.0f, 0.5f, 0.0f, 1.5f, -1.0f, 2.0f, 1.0f, 1.0f}).view({3, 3});
  at::Tensor y = at::tensor({0, 1, 1}, at::kLong);
  at::Tensor w = at::tensor({0.2f, -0.1f, 0.3f, -0.4f, 0.5f, 0.1f}).view({2, 3});

  ExampleForward forward() {
    return [this](const std::vector<std::size_t>& rows) {
      std::vector<int64_t> index(rows.begin(), rows.end());
      at::Tensor pick = at::tensor(index, at::kLong);
      return std::make_pair(at::matmul(x.index_select(0, pick), w.t()), y.index_select(0, pick));
    };
  }
  double prob(int n, int k) const {
    double z[2];
    for (int r = 0; r < 2; ++r) {
      z[r] = 0;
      for (int i = 0; i < 3; ++i) z[r] += x[n][i].item<double>() * w[r][i].item<double>();
    }
    return std::exp(z[k]) / (std::exp(z[0]) + std::exp(z[1]));
  }
  // d(-log p(c | x_n)) / dW [k][j] = (p_k - [k == c]) x_nj, in doubles.
  double grad(int n, int c, int k, int j) const {
    return (prob(n, k) - (k == c ? 1.0 : 0.0)) * x[n][j].item<double>();
  }
};

TEST(Fisher, PerSampleGoldLabelFisherIsTheMeanSquaredGradient) {
  LinearSoftmax m;
  auto fisher = diagonal_fisher({{"w", m.w}}, 3, m.forward(), FisherOptions{});
  for (int k = 0; k < 2; ++k)
    for (int j = 0; j < 3; ++j) {
      double expected = 0;
      for (int n = 0; n < 3; ++n) expected += std::pow(m.grad(n, m.y[n].item<int>(), k, j), 2) / 3;
      EXPECT_NEAR(fisher.at("w")[k][j].item<double>(), expected, 1e-6) << k << "," << j;
    }
  EXPECT_FALSE(m.w.requires_grad());  // left as it was
}

TEST(Fisher, BatchGradientsAreSquaredAfterAveragingAndClipped) {
  LinearSoftmax m;
  FisherOptions options;
  options.batch_size = 2;  // batches {0, 1} and {2}
  auto fisher = diagonal_fisher({{"w", m.w}}, 3, m.forward(), options);
  for (int k = 0; k < 2; ++k)
    for (int j = 0; j < 3; ++j) {
      const double g01 = (m.grad(0, 0, k, j) + m.grad(1, 1, k, j)) / 2, g2 = m.grad(2, 1, k, j);
      EXPECT_NEAR(fisher.at("w")[k][j].item<double>(), (g01 * g01 + g2 * g2) / 2, 1e-6);
    }
  options.batch_size = 1;
  options.clip_norm = 1e-3;  // every gradient is longer: each contributes clip^2 in total
  auto clipped = diagonal_fisher({{"w", m.w}}, 3, m.forward(), options);
  EXPECT_NEAR(clipped.at("w").sum().item<double>(), 1e-6, 1e-9);
}

TEST(Fisher, ClippingIsPerParameterTensorAsChildTuningDoesIt) {
  // W as two parameters, one row each: each tensor's gradient is clipped to
  // the norm on its own, so each contributes clip^2 (global clipping would
  // share one clip^2 between them).
  LinearSoftmax m;
  at::Tensor w0 = m.w[0].clone().unsqueeze(0), w1 = m.w[1].clone().unsqueeze(0);
  ExampleForward forward = [&](const std::vector<std::size_t>& rows) {
    std::vector<int64_t> index(rows.begin(), rows.end());
    at::Tensor pick = at::tensor(index, at::kLong);
    return std::make_pair(at::matmul(m.x.index_select(0, pick), at::cat({w0, w1}).t()),
                          m.y.index_select(0, pick));
  };
  FisherOptions options;
  options.clip_norm = 1e-3;
  auto clipped = diagonal_fisher({{"w0", w0}, {"w1", w1}}, 3, forward, options);
  EXPECT_NEAR(clipped.at("w0").sum().item<double>(), 1e-6, 1e-9);
  EXPECT_NEAR(clipped.at("w1").sum().item<double>(), 1e-6, 1e-9);
}

TEST(Fisher, ExpectedLabelFisherWeightsEveryClassByItsProbability) {
  LinearSoftmax m;
  FisherOptions options;
  options.expected_labels = true;
  auto fisher = diagonal_fisher({{"w", m.w}}, 3, m.forward(), options);
  for (int k = 0; k < 2; ++k)
    for (int j = 0; j < 3; ++j) {
      double expected = 0;
      for (int n = 0; n < 3; ++n)
        for (int c = 0; c < 2; ++c) expected += m.prob(n, c) * std::pow(m.grad(n, c, k, j), 2) / 3;
      EXPECT_NEAR(fisher.at("w")[k][j].item<double>(), expected, 1e-6);
    }
}

TEST(Fisher, FewerExamplesThanTheSetAreASeededSample) {
  LinearSoftmax m;
  FisherOptions options;
  options.examples = 1;
  options.seed = 4;
  auto one = diagonal_fisher({{"w", m.w}}, 3, m.forward(), options);
  // The one example is some n: its squared gradient, exactly.
  int matches = 0;
  for (int n = 0; n < 3; ++n)
    matches += std::abs(one.at("w")[0][0].item<double>() -
                        std::pow(m.grad(n, m.y[n].item<int>(), 0, 0), 2)) < 1e-7;
  EXPECT_EQ(matches, 1);
  EXPECT_TRUE(
      at::equal(one.at("w"), diagonal_fisher({{"w", m.w}}, 3, m.forward(), options).at("w")));
}

TEST(TopKMasks, SelectExactlyKLargestOverAllTensors) {
  std::map<std::string, at::Tensor> scores{
      {"a", at::tensor({0.1f, 5.0f, 3.0f})},
      {"b", at::tensor({4.0f, 0.2f, 5.0f, 1.0f}).view({2, 2})}};
  auto masks = top_k_masks(scores, 3);
  // (LibTorch 1.13 has no bool tensor literals: compare as integers.)
  auto as_ints = [](const at::Tensor& m) { return m.to(at::kLong); };
  EXPECT_TRUE(at::equal(as_ints(masks.at("a")), at::tensor({0, 1, 0}, at::kLong)));
  EXPECT_TRUE(at::equal(as_ints(masks.at("b")), at::tensor({1, 0, 1, 0}, at::kLong).view({2, 2})));
  EXPECT_EQ(count_selected(masks), 3);
  EXPECT_EQ(count_selected(top_k_masks(scores, 0)), 0);
  EXPECT_EQ(count_selected(top_k_masks(scores, 7)), 7);
  // Ties: the lower flat index wins, so the count stays exact.
  auto tied = top_k_masks({{"t", at::ones({5})}}, 2);
  EXPECT_TRUE(at::equal(as_ints(tied.at("t")), at::tensor({1, 1, 0, 0, 0}, at::kLong)));
  EXPECT_THROW(top_k_masks(scores, 8), Error);
}

// The selection a stable descending sort of every score concatenated in name
// order makes (the former implementation): the first k of that order.
std::map<std::string, at::Tensor> sorted_selection(const std::map<std::string, at::Tensor>& scores,
                                                   int64_t k) {
  std::vector<at::Tensor> flat;
  for (const auto& [name, s] : scores) flat.push_back(s.flatten());
  at::Tensor all = at::cat(flat);
  at::Tensor order = std::get<1>(all.sort(/*stable=*/true, 0, /*descending=*/true));
  at::Tensor selected = at::zeros({all.numel()}, at::kBool);
  selected.index_fill_(0, order.slice(0, 0, k), true);
  std::map<std::string, at::Tensor> out;
  int64_t offset = 0;
  for (const auto& [name, s] : scores) {
    out[name] = selected.slice(0, offset, offset + s.numel()).view(s.sizes());
    offset += s.numel();
  }
  return out;
}

TEST(TopKMasks, EqualTheStableSortsSelectionWithTiesZerosAndNegatives) {
  at::manual_seed(5);
  // Coarse values so that many entries tie, plus exact zeros, -0.0 and negatives.
  std::map<std::string, at::Tensor> scores{
      {"b.weight", at::randint(-3, 4, {40, 30}).to(at::kFloat) * 0.5},
      {"a.bias", at::zeros({50})},
      {"c.weight", at::randn({700})},
      {"d.neg_zero", at::full({20}, -0.0)}};
  int64_t total = 0;
  for (const auto& [name, s] : scores) total += s.numel();
  for (int64_t k : {int64_t{1}, int64_t{17}, int64_t{600}, int64_t{1210}, int64_t{1300},
                    int64_t{1500}, total - 1, total}) {
    auto fast = top_k_masks(scores, k), reference = sorted_selection(scores, k);
    EXPECT_EQ(count_selected(fast), k);
    for (const auto& [name, mask] : reference)
      EXPECT_TRUE(at::equal(fast.at(name), mask)) << name << ", k = " << k;
  }
  // Fisher scores of a real size ordering (non-negative, heavy-tailed).
  std::map<std::string, at::Tensor> fisher{{"x", at::randn({200000}).pow(2)},
                                           {"y", at::randn({3000, 20}).pow(4)}};
  for (int64_t k : {int64_t{1000}, int64_t{130000}}) {
    auto fast = top_k_masks(fisher, k), reference = sorted_selection(fisher, k);
    for (const auto& [name, mask] : reference)
      EXPECT_TRUE(at::equal(fast.at(name), mask)) << name << ", k = " << k;
  }
}

TEST(TopKMasks, RefusesNanScoresNamingTheTensor) {
  std::map<std::string, at::Tensor> scores{{"ok", at::ones({3})},
                                           {"broken", at::tensor({1.0f, NAN})}};
  const std::string message = [&] {
    try {
      top_k_masks(scores, 2);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  }();
  EXPECT_NE(message.find("'broken'"), std::string::npos) << message;
}

}  // namespace
}  // namespace deltatune::methods
