#include "deltatune/train/report.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/version.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <ctime>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/io/cpus.h"
#include "deltatune/io/gnuplot.h"
#include "deltatune/methods/bitfit.h"
#include "deltatune/methods/delta.h"
#include "deltatune/train/task_model.h"
#include "deltatune/version.h"

namespace deltatune::train {
namespace fs = std::filesystem;
using json = nlohmann::json;

std::string ReportRun::main_metric() const {
  return summary.value("dev", json::object()).value("main_metric", std::string());
}

double ReportRun::main_value() const {
  const json& dev = summary.value("dev", json::object());
  const std::string metric = main_metric();
  return dev.contains(metric) && dev[metric].is_number() ? dev[metric].get<double>() : NAN;
}

int64_t ReportRun::stored_values() const {
  return summary.value("delta_values", delta.value("stored_values", int64_t{0}));
}

double ReportRun::stored_share() const {
  const int64_t total = delta.value("parameters", json::object()).value("total", int64_t{0});
  return total > 0 ? static_cast<double>(stored_values()) / static_cast<double>(total) : NAN;
}

namespace {

json read_json(const fs::path& path) {
  try {
    return json::parse(io::read_text_file(path));
  } catch (const json::exception& e) {
    throw Error(path.string() + ": not valid JSON (" + e.what() + ")");
  }
}

std::vector<json> read_jsonl(const fs::path& path) {
  std::vector<json> records;
  std::istringstream lines(io::read_text_file(path));
  int number = 0;
  for (std::string line; std::getline(lines, line);) {
    ++number;
    if (line.empty()) continue;
    try {
      records.push_back(json::parse(line));
    } catch (const json::exception&) {
      throw Error(fmt::format("{}:{}: not a JSON record", path.string(), number));
    }
  }
  return records;
}

bool is_run_directory(const fs::path& dir) { return fs::exists(dir / "run.json"); }

ReportRun read_run(const fs::path& dir) {
  ReportRun run;
  run.directory = dir;
  run.summary = read_json(dir / "summary.json");
  run.plan = read_json(dir / "run.json");
  if (fs::exists(dir / "delta" / "delta.json")) run.delta = read_json(dir / "delta" / "delta.json");
  run.task = run.summary.value("task", std::string("?"));
  run.method = run.summary.value("method", std::string("?"));
  run.seed = run.plan.value("config", json::object()).value("seed", int64_t{0});
  if (fs::exists(dir / "cell.json")) {
    const json cell = read_json(dir / "cell.json");
    if (cell.contains("variant") && cell["variant"].is_string()) run.variant = cell["variant"];
  }
  run.train_examples = run.plan.value("train_data", json::object()).value("examples", int64_t{0});
  // Every stage's log in stage order (Method::stages' layout): the earlier
  // stages' subdirectories by name, then the run's own, the last stage's.
  std::vector<fs::path> logs;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_directory() && fs::exists(entry.path() / "metrics.jsonl"))
      logs.push_back(entry.path() / "metrics.jsonl");
  std::sort(logs.begin(), logs.end());
  if (fs::exists(dir / "metrics.jsonl")) logs.push_back(dir / "metrics.jsonl");
  // Each stage counts its steps from its own start; its records are placed
  // after the earlier stages' steps, as the run took them.
  int64_t earlier_steps = 0;
  json closing_records = json::array();
  for (const fs::path& log : logs) {
    int64_t last_step = 0;
    json closing;
    for (json& record : read_jsonl(log)) {
      if (record.value("split", std::string()) == "summary") closing = record;
      if (record.contains("step") && record["step"].is_number_integer()) {
        last_step = std::max(last_step, record["step"].get<int64_t>());
        record["step"] = record["step"].get<int64_t>() + earlier_steps;
      }
      run.log.push_back(std::move(record));
    }
    earlier_steps += closing.is_null() ? last_step : closing.value("steps", last_step);
    if (!closing.is_null()) closing_records.push_back(std::move(closing));
  }
  std::stable_sort(run.log.begin(), run.log.end(), [](const json& a, const json& b) {
    return a.value("step", int64_t{0}) < b.value("step", int64_t{0});
  });
  // A staged run's figures from its stages' logs (runs written before the
  // summary held the whole run's carry only the last stage's there).
  if (logs.size() > 1 && closing_records.size() == logs.size()) {
    run.figures = whole_run_figures(closing_records);
  } else {
    run.figures.steps = run.summary.value("steps", int64_t{0});
    run.figures.seconds = run.summary.value("train_seconds", 0.0);
    run.figures.train_tokens_per_second = run.summary.value("train_tokens_per_s", 0.0);
  }
  return run;
}

// Names in natural order: runs of digits compare as numbers, so a sweep's
// n100, n300, n1000 list in that order.
bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) &&
        std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t i_end = i, j_end = j;
      while (i_end < a.size() && std::isdigit(static_cast<unsigned char>(a[i_end]))) ++i_end;
      while (j_end < b.size() && std::isdigit(static_cast<unsigned char>(b[j_end]))) ++j_end;
      const std::string x = a.substr(i, i_end - i), y = b.substr(j, j_end - j);
      const size_t x_zeros = x.find_first_not_of('0'), y_zeros = y.find_first_not_of('0');
      const std::string xs = x_zeros == std::string::npos ? "" : x.substr(x_zeros);
      const std::string ys = y_zeros == std::string::npos ? "" : y.substr(y_zeros);
      if (xs.size() != ys.size()) return xs.size() < ys.size();
      if (xs != ys) return xs < ys;
      i = i_end;
      j = j_end;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

// Finished runs under `dir` (not inside a run: its stages are part of it);
// unfinished ones counted.
void find_runs(const fs::path& dir, std::vector<fs::path>& finished, int& unfinished) {
  if (is_run_directory(dir)) {
    if (fs::exists(dir / "summary.json")) {
      finished.push_back(dir);
    } else {
      ++unfinished;
    }
    return;
  }
  std::vector<fs::path> children;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_directory()) children.push_back(entry.path());
  std::sort(children.begin(), children.end(), [](const fs::path& a, const fs::path& b) {
    return natural_less(a.filename().string(), b.filename().string());
  });
  for (const fs::path& child : children) find_runs(child, finished, unfinished);
}

std::string html_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// An id fragment from free text (task names such as STS-B).
std::string slug(const std::string& text) {
  std::string out;
  for (char c : text) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '-';
  return out;
}

std::string percent(double share) {
  if (std::isnan(share)) return "-";
  const double p = 100 * share;
  return p >= 10     ? fmt::format("{:.1f}%", p)
         : p >= 0.01 ? fmt::format("{:.3f}%", p)
                     : fmt::format("{:.2g}%", p);
}

// A chart of the page: gnuplot's SVG and what it shows.
struct Chart {
  std::string id, kind, task, title, caption, svg;
  int series = 0;
  int points = 0;
};

// Mean, lowest and highest of the seeds' values.
struct Spread {
  double mean = 0, low = 0, high = 0;
  int count = 0;
};

Spread spread_of(const std::vector<double>& values) {
  Spread s;
  s.count = static_cast<int>(values.size());
  if (values.empty()) return s;
  s.low = *std::min_element(values.begin(), values.end());
  s.high = *std::max_element(values.begin(), values.end());
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / static_cast<double>(values.size());
  return s;
}

class ReportBuilder {
 public:
  ReportBuilder(const ReportInputs& inputs, const ReportOptions& options)
      : inputs_(inputs), options_(options) {
    for (const ReportRun& run : inputs.runs) {
      if (std::find(tasks_.begin(), tasks_.end(), run.task) == tasks_.end())
        tasks_.push_back(run.task);
      if (std::find(methods_.begin(), methods_.end(), run.label()) == methods_.end())
        methods_.push_back(run.label());
    }
  }

  Report build() {
    for (const std::string& task : tasks_) {
      const std::vector<const ReportRun*> shown = representative_runs(task);
      add_curves(task, shown, "loss");
      add_curves(task, shown, "dev");
      add_efficiency(task);
      add_data_size(task);
      add_bias_heat_map(task, shown);
    }
    // The tables' rows, made once for the page and for --json.
    results_ = results_rows();
    parameters_ = parameter_rows();
    Report report;
    report.html = page();
    json charts = json::array();
    for (const Chart& c : charts_)
      charts.push_back({{"id", c.id},
                        {"kind", c.kind},
                        {"task", c.task},
                        {"title", c.title},
                        {"series", c.series},
                        {"points", c.points}});
    report.contents = {{"title", options_.title},   {"runs", inputs_.runs.size()},
                       {"tasks", tasks_},           {"methods", methods_},
                       {"charts", charts},          {"results", results_},
                       {"parameters", parameters_}, {"notes", notes_}};
    return report;
  }

 private:
  std::vector<const ReportRun*> runs_of(const std::string& task) const {
    std::vector<const ReportRun*> out;
    for (const ReportRun& run : inputs_.runs)
      if (run.task == task) out.push_back(&run);
    return out;
  }

  // Per method, the run drawn in the curve charts: the largest training set,
  // then the lowest seed (sweeps hold many; one line per method stays legible).
  std::vector<const ReportRun*> representative_runs(const std::string& task) const {
    std::vector<const ReportRun*> out;
    for (const std::string& method : methods_) {
      const ReportRun* best = nullptr;
      for (const ReportRun* run : runs_of(task)) {
        if (run->label() != method) continue;
        if (best == nullptr || run->train_examples > best->train_examples ||
            (run->train_examples == best->train_examples && run->seed < best->seed))
          best = run;
      }
      if (best) out.push_back(best);
    }
    return out;
  }

  // The seeds' spread of the dev metric per method at each training-set size.
  std::map<std::string, std::map<int64_t, Spread>> by_size(const std::string& task) const {
    std::map<std::string, std::map<int64_t, std::vector<double>>> values;
    for (const ReportRun* run : runs_of(task))
      if (std::isfinite(run->main_value()))
        values[run->label()][run->train_examples].push_back(run->main_value());
    std::map<std::string, std::map<int64_t, Spread>> out;
    for (const auto& [method, sizes] : values)
      for (const auto& [size, list] : sizes) out[method][size] = spread_of(list);
    return out;
  }

  std::string metric_of(const std::string& task) const {
    for (const ReportRun* run : runs_of(task))
      if (!run->main_metric().empty()) return run->main_metric();
    return "metric";
  }

  void add_chart(Chart chart, const std::string& script, const std::vector<io::PlotData>& data) {
    chart.svg = io::gnuplot_svg(script, data, 640, 400, chart.id + "-");
    charts_.push_back(std::move(chart));
  }

  static std::string common_settings(const std::string& title) {
    return "set title " + io::gnuplot_quote(title) +
           "\nset grid lc rgb '#dddddd'\nset border lc rgb '#555555'\n"
           "set key outside top center horizontal\n";
  }

  // Training loss or dev metric against the optimizer step, one line per method.
  void add_curves(const std::string& task, const std::vector<const ReportRun*>& shown,
                  const std::string& kind) {
    const bool loss = kind == "loss";
    const std::string metric = metric_of(task);
    std::vector<io::PlotData> data;
    std::vector<std::string> plots;
    int points = 0;
    for (const ReportRun* run : shown) {
      std::string text;
      int count = 0;
      for (const json& record : run->log) {
        const std::string split = record.value("split", std::string());
        // Only finite values are drawn (a diverged run's inf or nan is left out).
        if (loss && split == "train" && record.contains("loss") && record["loss"].is_number() &&
            std::isfinite(record["loss"].get<double>())) {
          text += fmt::format("{} {:.9g}\n", record.value("step", int64_t{0}),
                              record["loss"].get<double>());
          ++count;
        } else if (!loss && split == "dev" && record.contains(metric) &&
                   record[metric].is_number() && std::isfinite(record[metric].get<double>())) {
          text += fmt::format("{} {:.9g}\n", record.value("step", int64_t{0}),
                              record[metric].get<double>());
          ++count;
        }
      }
      if (count == 0) continue;
      const std::string name = fmt::format("series{}.dat", data.size());
      data.push_back({name, text});
      plots.push_back(fmt::format("{} using 1:2 with {} lw 1.5 title {}", io::gnuplot_quote(name),
                                  loss ? "lines" : "linespoints pt 7 ps 0.6",
                                  io::gnuplot_quote(run->label())));
      points += count;
    }
    if (plots.empty()) return;
    Chart chart;
    chart.kind = loss ? "loss" : "dev-curve";
    chart.task = task;
    chart.id = fmt::format("chart-{}-{}", chart.kind, slug(task));
    chart.title = loss ? task + ": training loss" : task + ": dev " + metric;
    chart.caption = fmt::format(
        "{} per optimizer step, one line per method (its run with the most training examples, "
        "lowest seed).",
        loss ? "Mean training loss over each logging window" : "Dev " + metric);
    chart.series = static_cast<int>(plots.size());
    chart.points = points;
    add_chart(chart,
              common_settings(chart.title) + "set xlabel 'optimizer step'\nset ylabel " +
                  io::gnuplot_quote(loss ? "loss" : metric) + "\nplot " +
                  fmt::format("{}", fmt::join(plots, ", \\\n  ")),
              data);
  }

  // Dev metric against the delta's share of the model's parameters (log x),
  // one point per method: the seeds' mean at the largest training set.
  void add_efficiency(const std::string& task) {
    const std::string metric = metric_of(task);
    std::string text;
    int points = 0;
    for (const std::string& method : methods_) {
      std::vector<double> values;
      double share = NAN;
      int64_t largest = -1;
      for (const ReportRun* run : runs_of(task))
        if (run->label() == method) largest = std::max(largest, run->train_examples);
      for (const ReportRun* run : runs_of(task)) {
        if (run->label() != method || run->train_examples != largest) continue;
        if (!std::isfinite(run->main_value()) || std::isnan(run->stored_share()) ||
            run->stored_share() <= 0)
          continue;
        values.push_back(run->main_value());
        share = run->stored_share();
      }
      if (values.empty()) continue;
      const Spread s = spread_of(values);
      // Method names hold no spaces: one column each.
      text += fmt::format("{:.9g} {:.9g} {:.9g} {:.9g} {}\n", 100 * share, s.mean, s.low, s.high,
                          method);
      ++points;
    }
    if (points == 0) return;
    Chart chart;
    chart.kind = "efficiency";
    chart.task = task;
    chart.id = "chart-efficiency-" + slug(task);
    chart.title = task + ": dev " + metric + " against parameters stored";
    chart.caption =
        "Each method's delta as a share of the task model's parameters (log scale) against its "
        "dev " +
        metric +
        "; the mean of its seeds at its largest training set, bars from lowest to highest.";
    chart.series = 1;
    chart.points = points;
    add_chart(chart,
              common_settings(chart.title) +
                  "set logscale x 10\nset format x '%g%%'\nset xlabel 'values in the delta (% of "
                  "the model''s parameters)'\nset ylabel " +
                  io::gnuplot_quote(metric) +
                  "\nset offsets graph 0.08, graph 0.2, graph 0.12, graph 0.12\nunset key\n"
                  "plot 'points.dat' using 1:2:3:4 with yerrorbars pt 7 ps 1.2 lc rgb '#1f4e99', "
                  "'' using 1:2:5 with labels offset char 0.8,0.8 left tc rgb '#222222'",
              {{"points.dat", text}});
  }

  // Dev metric against the training-set size (log x), one line per method
  // with at least two sizes: the BitFit paper's small-data comparison.
  void add_data_size(const std::string& task) {
    const std::string metric = metric_of(task);
    std::vector<io::PlotData> data;
    std::vector<std::string> plots;
    int points = 0;
    std::set<int64_t> all_sizes;
    for (const auto& [method, sizes] : by_size(task)) {
      if (sizes.size() < 2) continue;
      for (const auto& entry : sizes) all_sizes.insert(entry.first);
      std::string text;
      for (const auto& [size, s] : sizes)
        text += fmt::format("{} {:.9g} {:.9g} {:.9g}\n", size, s.mean, s.low, s.high);
      const std::string name = fmt::format("size{}.dat", data.size());
      data.push_back({name, text});
      plots.push_back(fmt::format("{} using 1:2:3:4 with yerrorlines lw 1.5 pt 7 title {}",
                                  io::gnuplot_quote(name), io::gnuplot_quote(method)));
      points += static_cast<int>(sizes.size());
    }
    if (plots.empty()) return;
    Chart chart;
    chart.kind = "data-size";
    chart.task = task;
    chart.id = "chart-data-size-" + slug(task);
    chart.title = task + ": dev " + metric + " against training examples";
    chart.caption = "Mean of the seeds' dev " + metric +
                    " at each training-set size (log scale), bars from lowest to highest seed.";
    chart.series = static_cast<int>(plots.size());
    chart.points = points;
    add_chart(chart,
              common_settings(chart.title) + "set logscale x 10\nset xtics (" +
                  fmt::format("{}", fmt::join(all_sizes, ", ")) +
                  ")\nset xlabel 'training examples'\nset ylabel " + io::gnuplot_quote(metric) +
                  "\nset offsets graph 0.05, graph 0.05, 0, 0\nplot " +
                  fmt::format("{}", fmt::join(plots, ", \\\n  ")),
              data);
  }

  const BaseModel* base_for(const ReportRun& run) {
    fs::path dir = options_.model_dir;
    if (dir.empty())
      dir = run.delta.value("base_model", json::object()).value("path", std::string());
    if (dir.empty()) return nullptr;
    auto it = bases_.find(dir);
    if (it == bases_.end()) it = bases_.emplace(dir, load_base(dir)).first;
    return &it->second;
  }

  // Mean |b_F - b_0| per layer and bias type of the task's BitFit run (the
  // BitFit paper's Figure 2), as a heat map.
  void add_bias_heat_map(const std::string& task, const std::vector<const ReportRun*>& shown) {
    const ReportRun* run = nullptr;
    for (const ReportRun* r : shown)
      if (r->method == "bitfit") run = r;
    if (run == nullptr || run->delta.is_null()) return;
    std::vector<methods::BiasChange> changes;
    try {
      const BaseModel* base = base_for(*run);
      if (base == nullptr) throw Error("its delta records no base model path; give --model");
      const methods::Delta delta = methods::Delta::load(run->directory / "delta");
      check_base_identity(*base, delta);
      changes = methods::bias_changes(delta, base->checkpoint, base->config.base_model_prefix());
    } catch (const Error& e) {
      notes_.push_back(
          fmt::format("{}: no bias heat map for {} ({})", task, run->directory.string(), e.what()));
      return;
    }
    std::vector<std::string> groups;
    int layers = 0;
    std::string text;
    for (const auto& c : changes) {
      if (c.layer < 0) continue;
      auto at = std::find(groups.begin(), groups.end(), c.group);
      if (at == groups.end()) at = groups.insert(groups.end(), c.group);
      layers = std::max(layers, c.layer + 1);
    }
    if (groups.empty()) return;
    for (const auto& c : changes)
      if (c.layer >= 0 && std::isfinite(c.mean_abs_change))
        text += fmt::format("{} {} {:.9g}\n",
                            std::find(groups.begin(), groups.end(), c.group) - groups.begin(),
                            c.layer, c.mean_abs_change);
    if (text.empty()) return;
    std::vector<std::string> xtics, ytics;
    for (size_t g = 0; g < groups.size(); ++g)
      xtics.push_back(fmt::format("{} {}", io::gnuplot_quote(groups[g]), g));
    for (int l = 0; l < layers; ++l) ytics.push_back(fmt::format("'{}' {}", l + 1, l));
    Chart chart;
    chart.kind = "bias-heat-map";
    chart.task = task;
    chart.id = "chart-bias-heat-map-" + slug(task);
    chart.title = task + ": mean |b_F - b_0| of BitFit's biases";
    chart.caption =
        "How far BitFit moved each bias: the mean absolute change over its entries, "
        "per encoder layer (1 is the lowest) and bias type (" +
        run->directory.string() + ").";
    chart.series = static_cast<int>(groups.size());
    chart.points = static_cast<int>(changes.size());
    add_chart(chart,
              "set title " + io::gnuplot_quote(chart.title) +
                  "\nset palette defined (0 '#ffffff', 1 '#9ecae1', 2 '#08306b')\n"
                  "set cbrange [0:*]\nset xtics (" +
                  fmt::format("{}", fmt::join(xtics, ", ")) + ") rotate by 35 right\nset ytics (" +
                  fmt::format("{}", fmt::join(ytics, ", ")) + ")\n" +
                  fmt::format("set xrange [-0.5:{}]\nset yrange [-0.5:{}]\n", groups.size() - 0.5,
                              layers - 0.5) +
                  "set ylabel 'layer'\nset lmargin 14\nset bmargin 8\nunset key\n"
                  "set style fill solid 1.0 noborder\n"
                  "plot 'heat.dat' using 1:2:(0.5):(0.5):3 with boxxyerror fc palette",
              {{"heat.dat", text}});
  }

  json results_rows() const {
    json rows = json::array();
    for (const ReportRun& run : inputs_.runs) {
      const json env = run.summary.value("environment", json::object());
      // Other splits scored beside dev (--eval-also, MNLI's mismatched): SPLIT_<metric>.
      json other = json::object();
      const json& dev = run.summary.value("dev", json::object());
      for (const json& metric :
           run.delta.value("task", json::object()).value("metrics", json::array()))
        for (const auto& [key, value] : dev.items()) {
          const std::string suffix = "_" + metric.get<std::string>();
          if (key.size() > suffix.size() && value.is_number() &&
              key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0)
            other[key] = value;
        }
      rows.push_back(
          {{"task", run.task},
           {"method", run.label()},
           {"seed", run.seed},
           {"train_examples", run.train_examples},
           {"metric", run.main_metric()},
           {"value", std::isnan(run.main_value()) ? json() : json(run.main_value())},
           {"steps", run.figures.steps},
           {"delta_values", run.stored_values()},
           {"delta_share", std::isnan(run.stored_share()) ? json() : json(run.stored_share())},
           {"delta_bytes", run.summary.value("delta_bytes", int64_t{0})},
           {"train_seconds", run.figures.seconds},
           {"train_tokens_per_s", run.figures.train_tokens_per_second},
           {"device", env.value("device", std::string())},
           {"other_splits", other},
           {"directory", run.directory.string()}});
    }
    return rows;
  }

  // One row per method: what trains and what is stored (first task's run).
  json parameter_rows() const {
    json rows = json::array();
    for (const std::string& method : methods_) {
      for (const ReportRun& run : inputs_.runs) {
        if (run.label() != method || run.delta.is_null()) continue;
        const json params = run.delta.value("parameters", json::object());
        rows.push_back(
            {{"method", method},
             {"task", run.task},
             {"model_parameters", params.value("total", int64_t{0})},
             {"trained", params.value("trainable", int64_t{0})},
             {"stored_values", run.stored_values()},
             {"stored_share", std::isnan(run.stored_share()) ? json() : json(run.stored_share())},
             {"stored_bytes", run.summary.value("delta_bytes", int64_t{0})},
             {"config",
              run.delta.value("method", json::object()).value("config", json::object())}});
        break;
      }
    }
    return rows;
  }

  static std::string other_splits(const json& values) {
    if (values.empty()) return "-";
    std::vector<std::string> parts;
    for (const auto& [key, value] : values.items())
      parts.push_back(fmt::format("{} {:.4f}", key, value.get<double>()));
    return fmt::format("{}", fmt::join(parts, ", "));
  }

  std::string results_table() const {
    std::string html =
        "<div class=\"table-wrap\"><table class=\"results\"><thead><tr><th>task</th>"
        "<th>method</th><th>seed</th><th>train examples</th><th>dev metric</th><th>value</th>"
        "<th>steps</th><th>delta values</th><th>% of model</th><th>delta KB</th>"
        "<th>train tok/s</th><th>device</th><th>other splits</th></tr></thead><tbody>\n";
    for (const json& r : results_) {
      html += fmt::format(
          "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
          "<td>{}</td><td>{}</td><td>{:.1f}</td><td>{:.0f}</td><td>{}</td><td>{}</td></tr>\n",
          html_escape(r["task"]), html_escape(r["method"]), r["seed"].get<int64_t>(),
          r["train_examples"].get<int64_t>(), html_escape(r["metric"]),
          r["value"].is_null() ? std::string("-") : fmt::format("{:.4f}", r["value"].get<double>()),
          r["steps"].get<int64_t>(), r["delta_values"].get<int64_t>(),
          r["delta_share"].is_null() ? std::string("-") : percent(r["delta_share"].get<double>()),
          r["delta_bytes"].get<int64_t>() / 1024.0, r["train_tokens_per_s"].get<double>(),
          html_escape(r["device"]), html_escape(other_splits(r["other_splits"])));
    }
    return html + "</tbody></table></div>\n";
  }

  std::string parameters_table() const {
    std::string html =
        "<div class=\"table-wrap\"><table class=\"parameters\"><thead><tr><th>method</th>"
        "<th>settings</th><th>trained values</th><th>stored values</th><th>% of model</th>"
        "<th>stored KB</th><th>task</th></tr></thead><tbody>\n";
    for (const json& r : parameters_) {
      std::vector<std::string> settings;
      for (const auto& [key, value] : r["config"].items())
        settings.push_back(key + " " +
                           (value.is_string() ? value.get<std::string>() : value.dump()));
      html += fmt::format(
          "<tr><td>{}</td><td class=\"text\">{}</td><td>{}</td><td>{}</td><td>{}</td>"
          "<td>{:.1f}</td><td>{}</td></tr>\n",
          html_escape(r["method"]), html_escape(fmt::format("{}", fmt::join(settings, ", "))),
          r["trained"].get<int64_t>(), r["stored_values"].get<int64_t>(),
          r["stored_share"].is_null() ? std::string("-") : percent(r["stored_share"].get<double>()),
          r["stored_bytes"].get<int64_t>() / 1024.0, html_escape(r["task"]));
    }
    return html + "</tbody></table></div>\n";
  }

  std::string environment_table() const {
    std::set<std::string> seen;
    std::string rows;
    for (const ReportRun& run : inputs_.runs) {
      const json env = run.summary.value("environment", json::object());
      const std::string row = fmt::format(
          "<tr><td>training runs</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
          "</tr>\n",
          html_escape(env.value("cpu", std::string("not recorded"))),
          html_escape(env.value("device", std::string("-"))),
          html_escape(env.value("precision", std::string("-"))),
          env.contains("threads") ? env["threads"].dump() : std::string("-"),
          html_escape(env.value("libtorch", std::string("-"))));
      if (seen.insert(row).second) rows += row;
    }
    rows += fmt::format(
        "<tr><td>this report</td><td>{}</td><td>-</td><td>-</td><td>{}</td><td>{}</td></tr>\n",
        html_escape(io::cpu_model_name()), io::available_cpus(), TORCH_VERSION);
    return "<div class=\"table-wrap\"><table class=\"environment\"><thead><tr><th>made by</th>"
           "<th>CPU</th><th>device</th><th>precision</th><th>threads</th><th>LibTorch</th></tr>"
           "</thead><tbody>\n" +
           rows + "</tbody></table></div>\n";
  }

  std::string configurations() const {
    std::string html;
    for (const auto& [path, config] : inputs_.sweeps)
      html += "<h3>sweep " + html_escape(path.string()) + "</h3>\n<pre class=\"config\">" +
              html_escape(config.dump(2)) + "</pre>\n";
    for (const ReportRun& run : inputs_.runs)
      html += "<details><summary>" + html_escape(run.directory.string()) +
              "</summary><pre class=\"config\">" + html_escape(run.plan.dump(2)) +
              "</pre></details>\n";
    return html;
  }

  std::string chart_html(const Chart& c) const {
    return fmt::format(
        "<figure class=\"chart\" id=\"{}\" data-kind=\"{}\" data-task=\"{}\">\n{}\n"
        "<figcaption>{}</figcaption>\n</figure>\n",
        c.id, c.kind, html_escape(c.task), c.svg, html_escape(c.caption));
  }

  std::string page() const {
    const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    std::string html = R"(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>)" + html_escape(options_.title) +
                       R"(</title>
<style>
body{font-family:"DejaVu Sans",system-ui,sans-serif;color:#222;margin:0 auto;max-width:1180px;padding:1rem;line-height:1.45}
h1{font-size:1.6rem;margin:.2rem 0}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ccc}
h3{font-size:1.05rem}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,460px),1fr));gap:1.2rem}
figure{margin:0}figure svg{display:block;width:100%;height:auto}
figcaption{font-size:.85rem;color:#555}
.table-wrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.85rem;font-variant-numeric:tabular-nums}
th,td{padding:.25rem .55rem;border-bottom:1px solid #e2e2e2;text-align:right;white-space:nowrap}
th:first-child,td:first-child,td.text{text-align:left}td.text{white-space:normal;min-width:12rem}
thead th{background:#f3f3f3}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto;font-size:.8rem}
.notes li{color:#7a4b00}
.meta{color:#555;font-size:.9rem}
</style>
</head>
<body>
)";
    html += "<h1>" + html_escape(options_.title) + "</h1>\n";
    html += fmt::format(
        "<p class=\"meta\">{} finished runs, tasks {}, methods {}; made {} by deltatune "
        "{}.</p>\n",
        inputs_.runs.size(), html_escape(fmt::format("{}", fmt::join(tasks_, ", "))),
        html_escape(fmt::format("{}", fmt::join(methods_, ", "))), date, kVersion);
    std::vector<std::string> notes = inputs_.notes;
    notes.insert(notes.end(), notes_.begin(), notes_.end());
    if (!notes.empty()) {
      html += "<ul class=\"notes\">\n";
      for (const auto& n : notes) html += "<li>" + html_escape(n) + "</li>\n";
      html += "</ul>\n";
    }
    html += "<h2 id=\"results\">Results</h2>\n" + results_table();
    for (const std::string& task : tasks_) {
      html += "<h2 id=\"task-" + slug(task) + "\">" + html_escape(task) +
              "</h2>\n<div class=\"charts\">\n";
      for (const Chart& c : charts_)
        if (c.task == task) html += chart_html(c);
      html += "</div>\n";
    }
    html += "<h2 id=\"parameters\">Parameters trained and stored</h2>\n" + parameters_table();
    html += "<h2 id=\"config\">Configuration</h2>\n" + configurations();
    html += "<h2 id=\"environment\">Environment</h2>\n" + environment_table();
    return html + "</body>\n</html>\n";
  }

  const ReportInputs& inputs_;
  const ReportOptions& options_;
  std::vector<std::string> tasks_, methods_;
  std::vector<Chart> charts_;
  json results_, parameters_;
  std::vector<std::string> notes_;
  std::map<fs::path, BaseModel> bases_;
};

}  // namespace

ReportInputs read_report_inputs(const std::vector<fs::path>& paths) {
  ReportInputs inputs;
  if (paths.empty()) throw Error("report: give at least one run or sweep directory");
  for (const fs::path& path : paths) {
    if (!fs::is_directory(path)) throw Error(path.string() + ": not a directory");
    std::vector<fs::path> finished;
    int unfinished = 0;
    find_runs(path, finished, unfinished);
    if (finished.empty())
      throw Error(path.string() + ": holds no finished run (no run.json with a summary.json" +
                  (unfinished ? fmt::format("; {} unfinished", unfinished) : std::string()) + ")");
    if (unfinished > 0)
      inputs.notes.push_back(fmt::format("{}: {} unfinished run{} left out", path.string(),
                                         unfinished, unfinished == 1 ? "" : "s"));
    if (fs::exists(path / "sweep.json"))
      inputs.sweeps.emplace_back(path, read_json(path / "sweep.json"));
    for (const fs::path& dir : finished) inputs.runs.push_back(read_run(dir));
  }
  return inputs;
}

Report make_report(const ReportInputs& inputs, const ReportOptions& options) {
  return ReportBuilder(inputs, options).build();
}

}  // namespace deltatune::train
