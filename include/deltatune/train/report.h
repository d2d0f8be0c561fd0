// `deltatune report`: finished runs and sweeps as one self-contained HTML
// page (no network needed to view it) with gnuplot charts: training curves,
// dev metric against the delta's share of the model's parameters, against
// the training-set size, the bias-change heat map (BitFit paper, Figure 2),
// the parameter table, and where the figures were made.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "deltatune/train/run_figures.h"

namespace deltatune::train {

// One finished run, read from its directory.
struct ReportRun {
  std::filesystem::path directory;
  std::string task, method;
  std::string variant;  // the sweep cell's variant (cell.json); empty: none
  int64_t seed = 0;
  int64_t train_examples = 0;  // the training set's size, from run.json
  nlohmann::json summary;      // summary.json
  nlohmann::json plan;         // run.json
  nlohmann::json delta;        // delta/delta.json (empty when absent)
  // metrics.jsonl of every stage, in step order: a later stage's steps
  // follow the earlier stages' (each stage's log counts from its own start).
  std::vector<nlohmann::json> log;
  RunFigures figures;  // the whole run's steps, seconds and training tokens/s

  // The method as charts and tables name it: "frozen/from-full" for a variant.
  std::string label() const { return variant.empty() ? method : method + "/" + variant; }
  std::string main_metric() const;
  double main_value() const;  // the dev main metric the run reports
  int64_t stored_values() const;
  // Stored values of the delta per parameter of the task model (0..1).
  double stored_share() const;
};

// What the report reads: the runs, the sweeps' configs, and what was skipped.
struct ReportInputs {
  std::vector<ReportRun> runs;
  std::vector<std::pair<std::filesystem::path, nlohmann::json>> sweeps;  // sweep.json
  std::vector<std::string> notes;
};

// Each path is a run directory (summary.json and run.json) or any directory
// above runs (a sweep's): every finished run under it is read; runs without
// summary.json are unfinished and only counted in the notes. Throws
// deltatune::Error naming the path when it holds no finished run or a file
// of a run cannot be read.
ReportInputs read_report_inputs(const std::vector<std::filesystem::path>& paths);

struct ReportOptions {
  std::string title = "deltatune report";
  // Base model for the bias heat map; empty: the path each delta records.
  std::filesystem::path model_dir;
};

struct Report {
  std::string html;
  nlohmann::json contents;  // the page's charts and tables, for --json
};

Report make_report(const ReportInputs& inputs, const ReportOptions& options);

}  // namespace deltatune::train
