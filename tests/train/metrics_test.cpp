// Metrics against independently computed values. Unless stated otherwise the
// expected numbers were computed once with scikit-learn 1.3.2 (accuracy_score,
// f1_score, matthews_corrcoef) and SciPy 1.11.4 (pearsonr, spearmanr,
// rankdata) on NumPy 1.24.2, from the same inputs, and are written here as
// printed by repr().
#include "deltatune/train/metrics.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "deltatune/data/task.h"
#include "deltatune/error.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {

using I = std::vector<int64_t>;
using D = std::vector<double>;

using test::error_of;

// y_true = [1,1,0,1,0,0,1,0,1,1], y_pred = [1,0,0,1,1,0,1,0,0,1].
// By hand: TP 4, FN 2, FP 1, TN 3 -> accuracy 7/10, F1 = 8/11,
// MCC = (4*3 - 1*2) / sqrt(5*6*4*5) = 10/sqrt(600). sklearn agrees:
// 0.7, 0.7272727272727272, 0.408248290463863.
const I kBinaryTrue = {1, 1, 0, 1, 0, 0, 1, 0, 1, 1};
const I kBinaryPred = {1, 0, 0, 1, 1, 0, 1, 0, 0, 1};

TEST(Metrics, Binary) {
  EXPECT_DOUBLE_EQ(accuracy(kBinaryPred, kBinaryTrue), 0.7);
  EXPECT_DOUBLE_EQ(f1_binary(kBinaryPred, kBinaryTrue), 8.0 / 11.0);
  EXPECT_NEAR(f1_binary(kBinaryPred, kBinaryTrue), 0.7272727272727272, 1e-15);
  EXPECT_NEAR(matthews_correlation(kBinaryPred, kBinaryTrue), 10.0 / std::sqrt(600.0), 1e-15);
  EXPECT_NEAR(matthews_correlation(kBinaryPred, kBinaryTrue), 0.408248290463863, 1e-15);
  // MCC is symmetric in its arguments; F1 is not (precision <-> recall).
  EXPECT_NEAR(matthews_correlation(kBinaryTrue, kBinaryPred), 0.408248290463863, 1e-15);
}

TEST(Metrics, AllCorrectAndAllWrong) {
  const I y = {0, 1, 0, 1};
  const I flipped = {1, 0, 1, 0};
  EXPECT_DOUBLE_EQ(accuracy(y, y), 1.0);
  EXPECT_DOUBLE_EQ(f1_binary(y, y), 1.0);
  EXPECT_DOUBLE_EQ(matthews_correlation(y, y), 1.0);
  // sklearn: matthews_corrcoef -> -1.0, f1_score -> 0.0.
  EXPECT_DOUBLE_EQ(accuracy(flipped, y), 0.0);
  EXPECT_DOUBLE_EQ(f1_binary(flipped, y), 0.0);
  EXPECT_DOUBLE_EQ(matthews_correlation(flipped, y), -1.0);
}

TEST(Metrics, ConstantPredictions) {
  // y_true [0,1,1,0], y_pred all 1: sklearn matthews_corrcoef 0.0 (its
  // convention for a zero denominator, which we use for every correlation);
  // F1 = 2*2 / (2*2 + 2 + 0) = 0.6666666666666666.
  const I y = {0, 1, 1, 0};
  const I ones = {1, 1, 1, 1};
  EXPECT_DOUBLE_EQ(matthews_correlation(ones, y), 0.0);
  EXPECT_DOUBLE_EQ(f1_binary(ones, y), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(accuracy(ones, y), 0.5);
  // No positive anywhere: sklearn f1_score (zero_division) 0.0, MCC 0.0.
  const I zeros = {0, 0, 0};
  EXPECT_DOUBLE_EQ(f1_binary(zeros, zeros), 0.0);
  EXPECT_DOUBLE_EQ(matthews_correlation(zeros, zeros), 0.0);
}

TEST(Metrics, MulticlassMatthews) {
  // sklearn: accuracy 0.6, matthews_corrcoef 0.4090909090909091.
  const I t = {0, 1, 2, 0, 1, 2, 0, 1, 2, 2};
  const I p = {0, 2, 1, 0, 0, 2, 0, 1, 2, 1};
  EXPECT_DOUBLE_EQ(accuracy(p, t), 0.6);
  EXPECT_NEAR(matthews_correlation(p, t), 0.4090909090909091, 1e-15);
  // 300 examples: t_i = 7i mod 3, p_i = t_i unless i % 4 == 0, then (5i + i/3) mod 3.
  // sklearn: matthews_corrcoef 0.7500375028127344, accuracy 0.8333333333333334.
  I tt, pp;
  for (int64_t i = 0; i < 300; ++i) {
    tt.push_back(i * 7 % 3);
    pp.push_back(i % 4 ? tt.back() : (i * 5 + i / 3) % 3);
  }
  EXPECT_NEAR(matthews_correlation(pp, tt), 0.7500375028127344, 1e-14);
  EXPECT_NEAR(accuracy(pp, tt), 0.8333333333333334, 1e-15);
}

TEST(Metrics, PearsonAndSpearman) {
  // SciPy: pearsonr 0.9026132994891061, spearmanr 0.942857142857143 (no ties:
  // ranks x 1,3,5,2,6,4 and y 2,3,5,1,6,4 give 1 - 6*2/(6*35) = 33/35).
  const D x = {0.5, 2.1, 3.3, 1.0, 4.8, 2.2};
  const D y = {1.0, 1.9, 3.9, 0.2, 4.1, 3.0};
  EXPECT_NEAR(pearson(x, y), 0.9026132994891061, 1e-14);
  EXPECT_NEAR(spearman(x, y), 33.0 / 35.0, 1e-14);
  // Exact linear relations.
  D lin, neg;
  for (double v : x) {
    lin.push_back(3 * v + 1);
    neg.push_back(-2 * v);
  }
  EXPECT_NEAR(pearson(x, lin), 1.0, 1e-15);
  EXPECT_NEAR(pearson(x, neg), -1.0, 1e-15);
  EXPECT_LE(pearson(x, lin), 1.0);
  // Spearman only sees order: a monotone transform is a perfect 1.
  D cubed;
  for (double v : x) cubed.push_back(v * v * v);
  EXPECT_DOUBLE_EQ(spearman(x, cubed), 1.0);
}

TEST(Metrics, SpearmanTiesShareAverageRanks) {
  // SciPy rankdata: x -> 1, 2.5, 2.5, 4, 6, 6, 6, 8; y -> 2, 1, 3.5, 3.5, 6.5, 5, 8, 6.5.
  // spearmanr 0.8510794409931051 (pearsonr of the raw values 0.8361161327578968).
  const D x = {1, 2, 2, 3, 4, 4, 4, 5};
  const D y = {2, 1, 3, 3, 5, 4, 6, 5};
  EXPECT_NEAR(spearman(x, y), 0.8510794409931051, 1e-14);
  EXPECT_NEAR(pearson(x, y), 0.8361161327578968, 1e-14);
  // 200 values with heavy ties: x_i = 37i mod 17, y_i = 53i mod 23 + (i mod 5) / 2.
  // SciPy: pearsonr 0.060111123361903884, spearmanr 0.05768644603278364.
  D xs, ys;
  for (int i = 0; i < 200; ++i) {
    xs.push_back(i * 37 % 17);
    ys.push_back(i * 53 % 23 + (i % 5) * 0.5);
  }
  EXPECT_NEAR(pearson(xs, ys), 0.060111123361903884, 1e-13);
  EXPECT_NEAR(spearman(xs, ys), 0.05768644603278364, 1e-13);
}

TEST(Metrics, ConstantInputsCorrelateZero) {
  // SciPy returns nan here (with a ConstantInputWarning); we define 0.
  const D c = {0.1, 0.1, 0.1};
  const D y = {1, 2, 3};
  EXPECT_EQ(pearson(c, y), 0.0);
  EXPECT_EQ(pearson(y, c), 0.0);
  EXPECT_EQ(spearman(c, y), 0.0);
  EXPECT_EQ(pearson({2.0}, {3.0}), 0.0);
}

TEST(Metrics, BadInputs) {
  EXPECT_EQ(error_of([] { accuracy({1, 0}, {1}); }), "accuracy: 2 predictions but 1 labels");
  EXPECT_EQ(error_of([] { accuracy({}, {}); }), "accuracy: no examples");
  EXPECT_EQ(error_of([] {
              f1_binary({0, 2}, {0, 1});
            }),
            "f1: binary metric got class 2 at position 1");
  EXPECT_EQ(error_of([] {
              pearson({1.0, NAN}, {1.0, 2.0});
            }),
            "pearson: prediction 1 is not finite");
}

TEST(ComputeMetrics, GlueTasks) {
  const auto& mrpc = data::find_glue_task("mrpc");
  MetricValues m = compute_metrics(mrpc, kBinaryPred, kBinaryTrue);
  EXPECT_EQ(m.values.size(), 2u);
  EXPECT_DOUBLE_EQ(m.values.at("accuracy"), 0.7);
  EXPECT_DOUBLE_EQ(m.values.at("f1"), 8.0 / 11.0);
  EXPECT_EQ(m.main_metric, "f1");
  EXPECT_DOUBLE_EQ(m.main, 8.0 / 11.0);

  MetricValues cola = compute_metrics(data::find_glue_task("cola"), kBinaryPred, kBinaryTrue);
  EXPECT_EQ(cola.main_metric, "matthews_correlation");
  EXPECT_NEAR(cola.main, 0.408248290463863, 1e-15);
  EXPECT_EQ(cola.values.size(), 1u);

  const auto& stsb = data::find_glue_task("stsb");
  MetricValues s =
      compute_metrics(stsb, D{0.5, 2.1, 3.3, 1.0, 4.8, 2.2}, D{1.0, 1.9, 3.9, 0.2, 4.1, 3.0});
  EXPECT_NEAR(s.values.at("pearson"), 0.9026132994891061, 1e-14);
  EXPECT_NEAR(s.values.at("spearmanr"), 33.0 / 35.0, 1e-14);
  EXPECT_EQ(s.main_metric, "pearson");

  EXPECT_EQ(error_of([&] { compute_metrics(stsb, I{1}, I{1}); }),
            "task 'STS-B' is a regression task: compute its metrics on scores");
  EXPECT_EQ(error_of([&] { compute_metrics(mrpc, D{1}, D{1}); }),
            "task 'MRPC' is a classification task: compute its metrics on class ids");
}

TEST(ComputeMetrics, FromTensors) {
  const auto& mnli = data::find_glue_task("mnli");
  // argmax per row: 0, 2, 1, 1 against labels 0, 2, 2, 1 -> 3/4.
  at::Tensor logits = at::tensor({2.0f, 1.0f, 0.0f,  //
                                  0.1f, 0.2f, 0.3f,  //
                                  0.0f, 5.0f, 1.0f,  //
                                  -1.0f, 0.0f, -2.0f})
                          .reshape({4, 3});
  MetricValues m = compute_metrics(mnli, logits, at::tensor({0, 2, 2, 1}, at::kLong));
  EXPECT_DOUBLE_EQ(m.main, 0.75);
  EXPECT_EQ(error_of([&] { compute_metrics(mnli, logits.slice(1, 0, 2), at::zeros({4})); }),
            "task 'MNLI': expected logits [N, 3], got [4, 2]");
  const auto& stsb = data::find_glue_task("sts-b");
  MetricValues s = compute_metrics(stsb, at::tensor({0.5, 2.1, 3.3, 1.0, 4.8, 2.2}).reshape({6, 1}),
                                   at::tensor({1.0f, 1.9f, 3.9f, 0.2f, 4.1f, 3.0f}));
  // float32 labels: equal to the double result to float precision.
  EXPECT_NEAR(s.values.at("pearson"), 0.9026132994891061, 1e-6);
  EXPECT_NEAR(s.values.at("spearmanr"), 33.0 / 35.0, 1e-12);
}

}  // namespace
}  // namespace deltatune::train
