// Counters, gauges and histograms rendered in Prometheus' text exposition
// format (version 0.0.4). Every update is thread-safe.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace deltatune::serve {

using Labels = std::map<std::string, std::string>;

class MetricsRegistry {
 public:
  void add_counter(const std::string& name, const std::string& help);
  void add_gauge(const std::string& name, const std::string& help);
  // Upper bounds, ascending; +Inf is added.
  void add_histogram(const std::string& name, const std::string& help, std::vector<double> bounds);
  // A gauge computed when rendered (resident bytes, tasks loaded).
  void add_computed_gauge(const std::string& name, const std::string& help,
                          std::function<std::vector<std::pair<Labels, double>>()> values);

  void increment(const std::string& name, const Labels& labels = {}, double by = 1);
  void set(const std::string& name, const Labels& labels, double value);
  void observe(const std::string& name, double value, const Labels& labels = {});
  // The value of a counter or gauge (0 when never set), for tests and logs.
  double value(const std::string& name, const Labels& labels = {}) const;

  std::string render() const;

 private:
  struct Histogram {
    std::vector<double> counts;  // per bound, then +Inf
    double sum = 0;
    double count = 0;
  };
  struct Family {
    std::string type, help;
    std::vector<double> bounds;
    std::map<Labels, double> values;
    std::map<Labels, Histogram> histograms;
    std::function<std::vector<std::pair<Labels, double>>()> computed;
  };
  Family& family(const std::string& name);
  mutable std::mutex mutex_;
  std::map<std::string, Family> families_;
  std::vector<std::string> order_;
};

}  // namespace deltatune::serve
