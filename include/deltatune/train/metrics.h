// Evaluation metrics, defined as scikit-learn and SciPy define them (what
// evaluate's "glue" metric and run_glue.py report).
//
// Convention for undefined correlations: when a correlation's denominator is
// zero (constant predictions or constant labels), Matthews, Pearson and
// Spearman are 0, as sklearn's matthews_corrcoef does (SciPy's pearsonr and
// spearmanr return NaN there). Keep-best compares numbers, so a metric never
// returns NaN. Every function throws deltatune::Error for empty inputs or
// inputs of different lengths.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "deltatune/data/task.h"

namespace deltatune::train {

// Fraction of positions where prediction == label.
double accuracy(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels);

// Binary F1 of class 1 (sklearn f1_score, average="binary", pos_label=1):
// 2TP / (2TP + FP + FN), 0 when there is no TP, FP or FN (zero_division=0).
// Values other than 0 and 1 are an error.
double f1_binary(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels);

// Matthews correlation (sklearn matthews_corrcoef): the binary phi
// coefficient, and Gorodkin's R_K for more than two classes.
double matthews_correlation(const std::vector<int64_t>& predictions,
                            const std::vector<int64_t>& labels);

// Pearson's r (scipy.stats.pearsonr's statistic).
double pearson(const std::vector<double>& x, const std::vector<double>& y);

// Spearman's rho (scipy.stats.spearmanr): Pearson's r of the ranks, tied
// values sharing their average rank.
double spearman(const std::vector<double>& x, const std::vector<double>& y);

struct MetricValues {
  std::map<std::string, double> values;  // every name in TaskSpec::metrics
  std::string main_metric;
  double main = 0;  // values[main_metric]; higher is better
};

// Classification tasks: class ids.
MetricValues compute_metrics(const data::TaskSpec& task, const std::vector<int64_t>& predictions,
                             const std::vector<int64_t>& labels);
// Regression tasks: predicted and gold scores.
MetricValues compute_metrics(const data::TaskSpec& task, const std::vector<double>& predictions,
                             const std::vector<double>& labels);
// From the head's output: logits [N, num_labels] (argmax) or [N, 1] / [N]
// scores (regression); labels [N] int64 or floating. Any device and dtype.
MetricValues compute_metrics(const data::TaskSpec& task, const at::Tensor& logits,
                             const at::Tensor& labels);

}  // namespace deltatune::train
