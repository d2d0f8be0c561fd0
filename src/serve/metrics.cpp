#include "deltatune/serve/metrics.h"

#include <fmt/format.h>

#include <cmath>

#include "deltatune/error.h"

namespace deltatune::serve {
namespace {

std::string escape(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string label_text(const Labels& labels, const std::string& extra = {}) {
  std::string out;
  for (const auto& [key, value] : labels)
    out += (out.empty() ? "" : ",") + key + "=\"" + escape(value) + "\"";
  if (!extra.empty()) out += (out.empty() ? "" : ",") + extra;
  return out.empty() ? "" : "{" + out + "}";
}

std::string number(double value) {
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (value == std::floor(value) && std::fabs(value) < 1e15)
    return fmt::format("{}", static_cast<long long>(value));
  return fmt::format("{:.9g}", value);
}

}  // namespace

MetricsRegistry::Family& MetricsRegistry::family(const std::string& name) {
  auto found = families_.find(name);
  if (found == families_.end()) throw Error("metrics: no metric named '" + name + "'");
  return found->second;
}

void MetricsRegistry::add_counter(const std::string& name, const std::string& help) {
  std::lock_guard lock(mutex_);
  families_[name] = Family{"counter", help, {}, {}, {}, {}};
  order_.push_back(name);
}

void MetricsRegistry::add_gauge(const std::string& name, const std::string& help) {
  std::lock_guard lock(mutex_);
  families_[name] = Family{"gauge", help, {}, {}, {}, {}};
  order_.push_back(name);
}

void MetricsRegistry::add_histogram(const std::string& name, const std::string& help,
                                    std::vector<double> bounds) {
  std::lock_guard lock(mutex_);
  families_[name] = Family{"histogram", help, std::move(bounds), {}, {}, {}};
  order_.push_back(name);
}

void MetricsRegistry::add_computed_gauge(
    const std::string& name, const std::string& help,
    std::function<std::vector<std::pair<Labels, double>>()> values) {
  std::lock_guard lock(mutex_);
  families_[name] = Family{"gauge", help, {}, {}, {}, std::move(values)};
  order_.push_back(name);
}

void MetricsRegistry::increment(const std::string& name, const Labels& labels, double by) {
  std::lock_guard lock(mutex_);
  family(name).values[labels] += by;
}

void MetricsRegistry::set(const std::string& name, const Labels& labels, double value) {
  std::lock_guard lock(mutex_);
  family(name).values[labels] = value;
}

void MetricsRegistry::observe(const std::string& name, double value, const Labels& labels) {
  std::lock_guard lock(mutex_);
  Family& f = family(name);
  Histogram& h = f.histograms[labels];
  if (h.counts.empty()) h.counts.assign(f.bounds.size() + 1, 0);
  size_t bucket = 0;
  while (bucket < f.bounds.size() && value > f.bounds[bucket]) ++bucket;
  h.counts[bucket] += 1;
  h.sum += value;
  h.count += 1;
}

double MetricsRegistry::value(const std::string& name, const Labels& labels) const {
  std::lock_guard lock(mutex_);
  auto found = families_.find(name);
  if (found == families_.end()) return 0;
  auto v = found->second.values.find(labels);
  return v == found->second.values.end() ? 0 : v->second;
}

std::string MetricsRegistry::render() const {
  // Computed gauges run outside the lock (they may take other locks).
  std::map<std::string, std::vector<std::pair<Labels, double>>> computed;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [name, f] : families_)
      if (f.computed) computed[name];
  }
  for (auto& [name, values] : computed) {
    std::function<std::vector<std::pair<Labels, double>>()> fn;
    {
      std::lock_guard lock(mutex_);
      fn = families_.at(name).computed;
    }
    values = fn();
  }
  std::lock_guard lock(mutex_);
  std::string out;
  for (const std::string& name : order_) {
    const Family& f = families_.at(name);
    out += "# HELP " + name + " " + f.help + "\n# TYPE " + name + " " + f.type + "\n";
    if (f.computed) {
      for (const auto& [labels, value] : computed[name])
        out += name + label_text(labels) + " " + number(value) + "\n";
    }
    for (const auto& [labels, value] : f.values)
      out += name + label_text(labels) + " " + number(value) + "\n";
    for (const auto& [labels, h] : f.histograms) {
      double cumulative = 0;
      for (size_t i = 0; i < h.counts.size(); ++i) {
        cumulative += h.counts[i];
        const std::string le =
            "le=\"" + (i < f.bounds.size() ? number(f.bounds[i]) : std::string("+Inf")) + "\"";
        out += name + "_bucket" + label_text(labels, le) + " " + number(cumulative) + "\n";
      }
      out += name + "_sum" + label_text(labels) + " " + number(h.sum) + "\n";
      out += name + "_count" + label_text(labels) + " " + number(h.count) + "\n";
    }
  }
  return out;
}

}  // namespace deltatune::serve
