// deltatune report RUN_OR_SWEEP_DIR... --out report.html: one self-contained
// HTML page of the runs' results, charts by gnuplot (train/report.h).
#include <fmt/format.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/train/report.h"

namespace deltatune::cli {
namespace {
namespace fs = std::filesystem;

struct ReportOptions {
  std::vector<std::string> inputs;
  std::string out = "report.html";
  std::string model_dir;
  std::string title = "deltatune report";
  bool json_output = false;
};

int run_report(const ReportOptions& o) {
  std::vector<fs::path> paths(o.inputs.begin(), o.inputs.end());
  const train::ReportInputs inputs = train::read_report_inputs(paths);
  train::ReportOptions options;
  options.title = o.title;
  options.model_dir = o.model_dir;
  const train::Report report = train::make_report(inputs, options);
  io::write_text_atomically(o.out, report.html);
  if (o.json_output) {
    nlohmann::json out = report.contents;
    out["out"] = o.out;
    out["bytes"] = report.html.size();
    fmt::print("{}\n", out.dump());
    return 0;
  }
  fmt::print("{}: {} runs, {} charts, {:.0f} KB\n", o.out, inputs.runs.size(),
             report.contents["charts"].size(), report.html.size() / 1024.0);
  for (const auto& note : report.contents["notes"])
    fmt::print("note: {}\n", note.get<std::string>());
  for (const auto& note : inputs.notes) fmt::print("note: {}\n", note);
  return 0;
}

}  // namespace

void register_report_verb(CLI::App& app, Action& action) {
  auto o = std::make_shared<ReportOptions>();
  auto* report = app.add_subcommand(
      "report", "one self-contained HTML page of runs and sweeps: curves, charts and tables");
  report->add_option("inputs", o->inputs, "run directories, or directories above runs (sweeps)")
      ->required();
  report->add_option("--out,-o", o->out, "the HTML file to write")->capture_default_str();
  report->add_option("--model,-m", o->model_dir,
                     "base model for the bias heat map (default: the path each delta records)");
  report->add_option("--title", o->title, "the page's title")->capture_default_str();
  report->add_flag("--json", o->json_output, "print what the page holds as JSON");
  report->callback([&action, o] { action = [o] { return run_report(*o); }; });
}

}  // namespace deltatune::cli
