// deltatune report, as a user meets it: a real sweep's runs made into a page,
// which headless Chromium (Debian's chromium) then opens at desktop and phone
// widths. A probe script measures every chart and table in the rendered
// page; the screenshot's pixels inside each chart's box show it was drawn.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#ifdef DELTATUNE_HAVE_ZLIB
#include <zlib.h>
#endif

#include "cli_run.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/train/report.h"
#include "test_paths.h"

namespace deltatune::test {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

std::string sh_quote(const std::string& text) { return "'" + text + "'"; }
std::string sh_quote(const fs::path& path) { return sh_quote(path.string()); }

// Headless Chromium on `page` with `flags` (a scratch profile, no sandbox:
// tests may run as root).
CliRun chromium(const fs::path& page, const fs::path& profile, const std::string& flags) {
  return run_shell(
      "timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
      "--hide-scrollbars --force-device-scale-factor=1 --user-data-dir=" +
      sh_quote(profile) + " " + flags + " " + sh_quote("file://" + page.string()));
}

// Measures the page as rendered in a frame `width` pixels wide (headless
// Chromium's windows are at least 500 wide; a frame can be a phone's) into
// <pre id="probe">, read back with --dump-dom: each chart's box and drawn SVG
// elements, each table's filled rows, and whether the page is wider than the
// frame.
const char* const kProbe = R"(<script>
window.addEventListener('load', () => {
  const w = document.getElementById('page').contentWindow, d = w.document;
  const charts = [...d.querySelectorAll('figure.chart')].map(f => {
    const svg = f.querySelector('svg');
    const box = svg ? svg.getBoundingClientRect() : {left: 0, top: 0, width: 0, height: 0};
    const drawn = svg ? [...svg.querySelectorAll('path, polyline, rect, image, circle, use')]
      .filter(e => { const b = e.getBBox(); return b.width > 0 || b.height > 0; }).length : 0;
    const paths = svg ? [...svg.querySelectorAll('path')]
      .filter(p => (p.getAttribute('d') || '').length > 20).length : 0;
    return {id: f.id, kind: f.dataset.kind, task: f.dataset.task,
            left: box.left + w.scrollX, top: box.top + w.scrollY,
            width: box.width, height: box.height, drawn: drawn, paths: paths,
            texts: svg ? svg.querySelectorAll('text').length : 0};
  });
  const tables = {};
  for (const t of d.querySelectorAll('table')) {
    const cells = [...t.querySelectorAll('tbody td')];
    tables[t.className] = {rows: t.querySelectorAll('tbody tr').length,
                           empty: cells.filter(c => c.textContent.trim() === '').length};
  }
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({charts, tables,
    pageWidth: d.documentElement.scrollWidth, frameWidth: w.innerWidth,
    pageHeight: d.documentElement.scrollHeight});
  document.body.appendChild(out);
});
</script>)";

std::string attribute_escape(const std::string& text) {
  std::string out;
  for (char c : text) out += c == '&' ? "&amp;" : c == '"' ? "&quot;" : std::string(1, c);
  return out;
}

json probe(const fs::path& report, const fs::path& dir, int width) {
  const fs::path page = dir / ("probe-" + std::to_string(width) + ".html");
  std::ofstream(page) << "<!DOCTYPE html><html><head><style>body{margin:0}iframe{border:0;"
                         "display:block}</style></head><body><iframe id=\"page\" style=\"width:"
                      << width << "px;height:900px\" srcdoc=\""
                      << attribute_escape(io::read_text_file(report)) << "\"></iframe>" << kProbe
                      << "</body></html>";
  const CliRun run = chromium(page, dir / "profile",
                              "--window-size=1400,1000 --virtual-time-budget=5000 --dump-dom");
  const size_t start = run.output.find("<pre id=\"probe\">");
  if (run.status != 0 || start == std::string::npos) {
    ADD_FAILURE() << "chromium gave no probe (exit " << run.status << "): " << run.output;
    return json();
  }
  const size_t from = start + std::string("<pre id=\"probe\">").size();
  std::string text = run.output.substr(from, run.output.find("</pre>", from) - from);
  // --dump-dom escapes &, < and > in text.
  for (const auto& [entity, character] : std::vector<std::pair<std::string, std::string>>{
           {"&lt;", "<"}, {"&gt;", ">"}, {"&quot;", "\""}, {"&amp;", "&"}})
    for (size_t at; (at = text.find(entity)) != std::string::npos;)
      text.replace(at, entity.size(), character);
  return json::parse(text);
}

#ifdef DELTATUNE_HAVE_ZLIB
// An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium's screenshots are),
// decoded to rows of RGB.
struct Image {
  int width = 0, height = 0;
  std::vector<std::array<uint8_t, 3>> pixels;
  const std::array<uint8_t, 3>& at(int x, int y) const { return pixels[y * width + x]; }
};

uint32_t big_endian(const std::string& bytes, size_t at) {
  return (uint32_t(uint8_t(bytes[at])) << 24) | (uint32_t(uint8_t(bytes[at + 1])) << 16) |
         (uint32_t(uint8_t(bytes[at + 2])) << 8) | uint32_t(uint8_t(bytes[at + 3]));
}

Image decode_png(const std::string& file) {
  Image image;
  std::string compressed;
  int channels = 0;
  for (size_t at = 8; at + 8 <= file.size();) {
    const uint32_t length = big_endian(file, at);
    const std::string type = file.substr(at + 4, 4);
    if (type == "IHDR") {
      image.width = static_cast<int>(big_endian(file, at + 8));
      image.height = static_cast<int>(big_endian(file, at + 12));
      const int depth = uint8_t(file[at + 16]), colour = uint8_t(file[at + 17]);
      const int interlace = uint8_t(file[at + 20]);
      if (depth != 8 || (colour != 2 && colour != 6) || interlace != 0) return Image();
      channels = colour == 6 ? 4 : 3;
    } else if (type == "IDAT") {
      compressed += file.substr(at + 8, length);
    }
    at += 12 + length;
  }
  const size_t stride = static_cast<size_t>(image.width) * channels;
  std::vector<uint8_t> raw((stride + 1) * image.height);
  uLongf size = raw.size();
  if (channels == 0 ||
      uncompress(raw.data(), &size, reinterpret_cast<const Bytef*>(compressed.data()),
                 compressed.size()) != Z_OK)
    return Image();
  // PNG's per-row filters (none, sub, up, average, Paeth), undone in place.
  std::vector<uint8_t> previous(stride, 0), row(stride);
  for (int y = 0; y < image.height; ++y) {
    const uint8_t filter = raw[y * (stride + 1)];
    const uint8_t* in = &raw[y * (stride + 1) + 1];
    for (size_t i = 0; i < stride; ++i) {
      const int a = i >= size_t(channels) ? row[i - channels] : 0, b = previous[i],
                c = i >= size_t(channels) ? previous[i - channels] : 0;
      int predictor = 0;
      if (filter == 1) predictor = a;
      if (filter == 2) predictor = b;
      if (filter == 3) predictor = (a + b) / 2;
      if (filter == 4) {
        const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
        predictor = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      row[i] = static_cast<uint8_t>(in[i] + predictor);
    }
    for (int x = 0; x < image.width; ++x)
      image.pixels.push_back({row[x * channels], row[x * channels + 1], row[x * channels + 2]});
    previous = row;
  }
  return image;
}
#endif

class Report : public ::testing::Test {
 protected:
  // One small real sweep for every test here: BitFit and LoRA on RTE at two
  // training-set sizes (a few steps each: the page, not accuracy, is tested).
  static void SetUpTestSuite() {
    dir_ = new ScratchDir();
    const fs::path config = dir_->path() / "small.json";
    std::ofstream(config) << R"({"methods": ["bitfit", "lora"], "tasks": ["RTE"], "seeds": [1],
      "train_sizes": [8, 16],
      "flags": {"--max-steps": 4, "--max-length": 32, "--batch-size": 8, "--log-every": 1,
                "--eval-every": 2}})";
    sweep_ = new CliRun(
        deltatune("sweep " + sh_quote(config) + " --out " + sh_quote(dir_->path() / "sweep")));
  }
  static void TearDownTestSuite() {
    delete sweep_;
    delete dir_;
  }
  void SetUp() override { ASSERT_EQ(sweep_->status, 0) << sweep_->output; }
  static fs::path sweep_dir() { return dir_->path() / "sweep"; }

  static ScratchDir* dir_;
  static CliRun* sweep_;
};
ScratchDir* Report::dir_ = nullptr;
CliRun* Report::sweep_ = nullptr;

TEST_F(Report, ChromiumShowsEveryChartDrawnAndEveryTableFilledAtDesktopAndPhoneWidths) {
  ScratchDir out;
  const fs::path report = out.path() / "report.html";
  const CliRun run = run_shell(std::string(DELTATUNE_CLI) + " report " + sh_quote(sweep_dir()) +
                               " --out " + sh_quote(report) + " --json");
  ASSERT_EQ(run.status, 0) << run.output;
  const json contents = json::parse(run.output);
  EXPECT_EQ(contents["runs"], 4);
  std::set<std::string> kinds;
  for (const json& chart : contents["charts"]) kinds.insert(chart["kind"].get<std::string>());
  const std::set<std::string> expected = {"loss", "dev-curve", "efficiency", "data-size",
                                          "bias-heat-map"};
  EXPECT_EQ(kinds, expected);

  // Self-contained: nothing is fetched to view it.
  const std::string html = io::read_text_file(report);
  EXPECT_EQ(html.find("http://"), html.find("http://www.w3.org"));
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_EQ(html.find(" src="), std::string::npos);
  // Runs listed in natural order (the configuration section, last on the
  // page, names each run): 8 examples before 16, although "n16" < "n8".
  EXPECT_LT(html.rfind("bitfit/n8/seed1"), html.rfind("bitfit/n16/seed1"));

  json desktop;
  for (const int width : {1280, 390}) {
    const json page = probe(report, out.path(), width);
    ASSERT_FALSE(page.is_null());
    SCOPED_TRACE("window width " + std::to_string(width));
    // Readable at this width: the page itself never scrolls sideways (wide
    // tables scroll inside their own box).
    EXPECT_EQ(page["frameWidth"].get<int>(), width);
    EXPECT_LE(page["pageWidth"].get<int>(), width);
    ASSERT_EQ(page["charts"].size(), contents["charts"].size());
    for (const json& chart : page["charts"]) {
      SCOPED_TRACE(chart["id"].get<std::string>());
      EXPECT_GT(chart["width"].get<double>(), 0.8 * std::min(width - 40, 460));
      EXPECT_GT(chart["height"].get<double>(), 0.5 * chart["width"].get<double>());
      EXPECT_GT(chart["drawn"].get<int>(), 10);  // axes, tics, series
      EXPECT_GT(chart["texts"].get<int>(), 5);   // title, tic labels
      if (chart["kind"] != "bias-heat-map") {
        EXPECT_GE(chart["paths"].get<int>(), 2);
      }
    }
    EXPECT_EQ(page["tables"]["results"]["rows"], 4);
    EXPECT_EQ(page["tables"]["results"]["empty"], 0);
    EXPECT_EQ(page["tables"]["parameters"]["rows"], 2);
    EXPECT_GE(page["tables"]["environment"]["rows"], 2);
    if (width == 1280) desktop = page;
  }

#ifdef DELTATUNE_HAVE_ZLIB
  // The screenshot: inside each chart's box, the drawing's pixels.
  const int height = std::min(desktop["pageHeight"].get<int>(), 12000);
  const fs::path shot = out.path() / "shot.png";
  const CliRun screenshot =
      chromium(report, out.path() / "profile",
               "--window-size=1280," + std::to_string(height) + " --screenshot=" + sh_quote(shot));
  ASSERT_TRUE(fs::exists(shot)) << screenshot.output;
  const Image image = decode_png(io::read_text_file(shot));
  ASSERT_EQ(image.width, 1280);
  for (const json& chart : desktop["charts"]) {
    SCOPED_TRACE(chart["id"].get<std::string>());
    const int x0 = static_cast<int>(chart["left"].get<double>()),
              y0 = static_cast<int>(chart["top"].get<double>());
    const int x1 = std::min(image.width, x0 + static_cast<int>(chart["width"].get<double>())),
              y1 = std::min(image.height, y0 + static_cast<int>(chart["height"].get<double>()));
    ASSERT_LT(y0, image.height) << "the chart lies below the screenshot";
    int64_t inked = 0, total = 0;
    std::set<uint32_t> colours;
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) {
        const auto& p = image.at(x, y);
        ++total;
        if (p[0] < 230 || p[1] < 230 || p[2] < 230) ++inked;
        colours.insert((uint32_t(p[0]) << 16) | (uint32_t(p[1]) << 8) | p[2]);
      }
    EXPECT_GT(inked, total / 100) << "the chart's box is (almost) blank";
    EXPECT_GT(colours.size(), 8u) << "the chart has hardly any colours";
  }
#endif
}

TEST_F(Report, InputsWithoutFinishedRunsAndAMissingGnuplotAreClearErrorsThatWriteNothing) {
  ScratchDir out;
  const fs::path report = out.path() / "report.html";
  CliRun run = run_shell(std::string(DELTATUNE_CLI) + " report " + sh_quote(out.path()) +
                         " --out " + sh_quote(report));
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.output.find(out.path().string() + ": holds no finished run"), std::string::npos)
      << run.output;
  EXPECT_FALSE(fs::exists(report));

  run = run_shell("PATH=/nonexistent " + std::string(DELTATUNE_CLI) + " report " +
                  sh_quote(sweep_dir()) + " --out " + sh_quote(report));
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.output.find("gnuplot not found"), std::string::npos) << run.output;
  EXPECT_FALSE(fs::exists(report));
}

// A method of two stages (FAR: priming, then the learned nodes) logs each
// stage from its own step 1; the report places the second after the first,
// and its figures are the whole run's, as summary.json's are. A summary
// written before it held the whole run's (the last stage's figures) gets the
// same figures from the stages' logs.
TEST(ReportOfAStagedRun, CurvesFollowTheStagesInOrderAndTheFiguresAreTheWholeRuns) {
  ScratchDir dir;
  const fs::path out = dir.path() / "far";
  const CliRun run = deltatune(
      "train --task RTE --method far --max-train-samples 32 --max-steps 6 --max-length 32 "
      "--batch-size 8 --log-every 1 --eval-every 2 --out " +
      sh_quote(out));
  ASSERT_EQ(run.status, 0) << run.output;
  json summary = json::parse(io::read_text_file(out / "summary.json"));
  ASSERT_EQ(summary["stages"].size(), 2u);
  const json priming = summary["stages"][0], learned = summary["stages"][1];
  EXPECT_EQ(priming["steps"], 1);  // round(0.1 x 6)
  EXPECT_EQ(learned["steps"], 5);
  EXPECT_EQ(summary["steps"], 6);
  EXPECT_DOUBLE_EQ(summary["train_seconds"].get<double>(),
                   priming["seconds"].get<double>() + learned["seconds"].get<double>());
  EXPECT_GT(summary["best_step"].get<int64_t>(), 1);

  auto train_steps = [](const train::ReportRun& report_run) {
    std::vector<int64_t> steps;
    for (const json& record : report_run.log)
      if (record.value("split", std::string()) == "train") steps.push_back(record["step"]);
    return steps;
  };
  const std::vector<int64_t> whole_run = {1, 2, 3, 4, 5, 6};
  train::ReportInputs inputs = train::read_report_inputs({out});
  ASSERT_EQ(inputs.runs.size(), 1u);
  EXPECT_EQ(train_steps(inputs.runs[0]), whole_run);
  EXPECT_EQ(inputs.runs[0].figures.steps, 6);
  EXPECT_NEAR(inputs.runs[0].figures.train_tokens_per_second,
              summary["train_tokens_per_s"].get<double>(),
              1e-9 * summary["train_tokens_per_s"].get<double>());
  EXPECT_NE(summary["train_tokens_per_s"], learned["train_tokens_per_s"]);

  // As an older deltatune wrote it: the last stage's figures.
  summary["steps"] = learned["steps"];
  summary["train_seconds"] = learned["seconds"];
  summary["train_tokens_per_s"] = learned["train_tokens_per_s"];
  for (json& stage : summary["stages"]) stage.erase("seconds"), stage.erase("eval_seconds");
  io::write_text_atomically(out / "summary.json", summary.dump());
  inputs = train::read_report_inputs({out});
  EXPECT_EQ(train_steps(inputs.runs[0]), whole_run);
  EXPECT_EQ(inputs.runs[0].figures.steps, 6);
  EXPECT_NEAR(inputs.runs[0].figures.seconds,
              priming["seconds"].get<double>() + learned["seconds"].get<double>(), 1e-9);
}

}  // namespace
}  // namespace deltatune::test
