#include "deltatune/train/metrics.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

#include "deltatune/error.h"

namespace deltatune::train {
namespace {

template <typename T>
void check_sizes(const char* metric, const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size())
    throw Error(std::string(metric) + ": " + std::to_string(a.size()) + " predictions but " +
                std::to_string(b.size()) + " labels");
  if (a.empty()) throw Error(std::string(metric) + ": no examples");
}

void check_finite(const char* metric, const std::vector<double>& values, const char* what) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i]))
      throw Error(std::string(metric) + ": " + what + " " + std::to_string(i) + " is not finite");
  }
}

bool constant(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [&](double x) { return x == v.front(); });
}

// Pearson's r of finite, equally long, non-empty inputs; 0 when either is
// constant (SciPy: NaN).
double pearson_unchecked(const std::vector<double>& x, const std::vector<double>& y) {
  if (constant(x) || constant(y)) return 0.0;
  const double n = static_cast<double>(x.size());
  const double mx = std::accumulate(x.begin(), x.end(), 0.0) / n;
  const double my = std::accumulate(y.begin(), y.end(), 0.0) / n;
  double sxy = 0, sxx = 0, syy = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double dx = x[i] - mx, dy = y[i] - my;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  if (sxx == 0 || syy == 0) return 0.0;
  // Rounding can step just past +-1 for (anti)collinear inputs; SciPy clips too.
  return std::clamp(sxy / (std::sqrt(sxx) * std::sqrt(syy)), -1.0, 1.0);
}

// 1-based ranks; a run of equal values shares the mean of its ranks
// (scipy.stats.rankdata(method="average")).
std::vector<double> average_ranks(const std::vector<double>& v) {
  std::vector<std::size_t> order(v.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return v[a] < v[b]; });
  std::vector<double> ranks(v.size());
  for (std::size_t start = 0; start < order.size();) {
    std::size_t end = start + 1;
    while (end < order.size() && v[order[end]] == v[order[start]]) ++end;
    // Positions start..end-1 hold ranks start+1..end; their mean:
    const double rank = (static_cast<double>(start + 1) + static_cast<double>(end)) / 2.0;
    for (std::size_t k = start; k < end; ++k) ranks[order[k]] = rank;
    start = end;
  }
  return ranks;
}

std::vector<double> to_doubles(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU, at::kDouble).contiguous().reshape({-1});
  const double* p = c.data_ptr<double>();
  return std::vector<double>(p, p + c.numel());
}

std::vector<int64_t> to_int64s(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU, at::kLong).contiguous().reshape({-1});
  const int64_t* p = c.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

MetricValues finish(const data::TaskSpec& task, MetricValues result) {
  const auto it = result.values.find(task.main_metric);
  if (it == result.values.end())
    throw Error("task '" + task.name + "': main metric '" + task.main_metric +
                "' is not among its metrics");
  result.main_metric = task.main_metric;
  result.main = it->second;
  return result;
}

}  // namespace

double accuracy(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels) {
  check_sizes("accuracy", predictions, labels);
  std::size_t correct = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) correct += predictions[i] == labels[i];
  return static_cast<double>(correct) / static_cast<double>(labels.size());
}

double f1_binary(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels) {
  check_sizes("f1", predictions, labels);
  std::size_t tp = 0, fp = 0, fn = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    const int64_t p = predictions[i], y = labels[i];
    if ((p != 0 && p != 1) || (y != 0 && y != 1))
      throw Error("f1: binary metric got class " + std::to_string(p != 0 && p != 1 ? p : y) +
                  " at position " + std::to_string(i));
    tp += p == 1 && y == 1;
    fp += p == 1 && y == 0;
    fn += p == 0 && y == 1;
  }
  const std::size_t denominator = 2 * tp + fp + fn;
  return denominator == 0 ? 0.0 : 2.0 * static_cast<double>(tp) / static_cast<double>(denominator);
}

double matthews_correlation(const std::vector<int64_t>& predictions,
                            const std::vector<int64_t>& labels) {
  check_sizes("matthews_correlation", predictions, labels);
  // sklearn's matthews_corrcoef over the confusion matrix C (rows true, columns
  // predicted): t = row sums, p = column sums, c = trace, s = total;
  // (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)). Exact in int64 up to ~3e9 examples.
  std::unordered_map<int64_t, std::size_t> index;
  for (const auto* v : {&labels, &predictions})
    for (int64_t c : *v) index.emplace(c, index.size());
  std::vector<int64_t> t(index.size(), 0), p(index.size(), 0);
  int64_t correct = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    ++t[index[labels[i]]];
    ++p[index[predictions[i]]];
    correct += labels[i] == predictions[i];
  }
  const auto s = static_cast<int64_t>(labels.size());
  int64_t tp = 0, pp = 0, tt = 0;
  for (std::size_t k = 0; k < t.size(); ++k) {
    tp += t[k] * p[k];
    pp += p[k] * p[k];
    tt += t[k] * t[k];
  }
  const int64_t cov_yt_yp = correct * s - tp;
  const int64_t cov_yp_yp = s * s - pp;
  const int64_t cov_yt_yt = s * s - tt;
  if (cov_yp_yp == 0 || cov_yt_yt == 0) return 0.0;
  return static_cast<double>(cov_yt_yp) /
         (std::sqrt(static_cast<double>(cov_yt_yt)) * std::sqrt(static_cast<double>(cov_yp_yp)));
}

double pearson(const std::vector<double>& x, const std::vector<double>& y) {
  check_sizes("pearson", x, y);
  check_finite("pearson", x, "prediction");
  check_finite("pearson", y, "label");
  return pearson_unchecked(x, y);
}

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  check_sizes("spearmanr", x, y);
  check_finite("spearmanr", x, "prediction");
  check_finite("spearmanr", y, "label");
  return pearson_unchecked(average_ranks(x), average_ranks(y));
}

MetricValues compute_metrics(const data::TaskSpec& task, const std::vector<int64_t>& predictions,
                             const std::vector<int64_t>& labels) {
  if (task.type != data::TaskType::kClassification)
    throw Error("task '" + task.name + "' is a regression task: compute its metrics on scores");
  MetricValues result;
  for (const std::string& name : task.metrics) {
    double value;
    if (name == data::kAccuracy) {
      value = accuracy(predictions, labels);
    } else if (name == data::kF1) {
      value = f1_binary(predictions, labels);
    } else if (name == data::kMatthews) {
      value = matthews_correlation(predictions, labels);
    } else {
      throw Error("task '" + task.name + "': metric '" + name + "' is not a classification metric");
    }
    result.values[name] = value;
  }
  return finish(task, std::move(result));
}

MetricValues compute_metrics(const data::TaskSpec& task, const std::vector<double>& predictions,
                             const std::vector<double>& labels) {
  if (task.type != data::TaskType::kRegression)
    throw Error("task '" + task.name +
                "' is a classification task: compute its metrics on class ids");
  MetricValues result;
  for (const std::string& name : task.metrics) {
    double value;
    if (name == data::kPearson) {
      value = pearson(predictions, labels);
    } else if (name == data::kSpearman) {
      value = spearman(predictions, labels);
    } else {
      throw Error("task '" + task.name + "': metric '" + name + "' is not a regression metric");
    }
    result.values[name] = value;
  }
  return finish(task, std::move(result));
}

MetricValues compute_metrics(const data::TaskSpec& task, const at::Tensor& logits,
                             const at::Tensor& labels) {
  if (task.type == data::TaskType::kRegression)
    return compute_metrics(task, to_doubles(logits), to_doubles(labels));
  if (logits.dim() != 2 || logits.size(1) != task.num_labels()) {
    std::string shape;
    for (int64_t d : logits.sizes()) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    throw Error("task '" + task.name + "': expected logits [N, " +
                std::to_string(task.num_labels()) + "], got [" + shape + "]");
  }
  return compute_metrics(task, to_int64s(logits.detach().argmax(1)), to_int64s(labels));
}

}  // namespace deltatune::train
