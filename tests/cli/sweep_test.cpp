// deltatune sweep, run as a user does: config errors name the cell before
// anything runs, and a sweep interrupted and run again trains only the cells
// that had not finished.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "cli_run.h"
#include "deltatune/io/atomic_file.h"
#include "test_paths.h"

namespace deltatune::test {
namespace {
namespace fs = std::filesystem;

void write(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

// `deltatune sweep CONFIG` as a process of its own (to be signalled); its pid.
pid_t start_sweep(const fs::path& config) {
  const std::string model = minilm_dir().string();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl(DELTATUNE_CLI, DELTATUNE_CLI, "sweep", config.c_str(), "--model", model.c_str(),
            "--threads", "1", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

TEST(Sweep, ConfigErrorsNameTheCellBeforeAnythingRuns) {
  ScratchDir dir;
  write(dir.path() / "method.json",
        R"({"methods": ["bitfit", "fsh"], "tasks": ["SST-2", "RTE"], "seeds": [1, 2]})");
  CliRun run = deltatune("sweep " + (dir.path() / "method.json").string());
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.output.find("cell 3 of 8 (task SST-2, method fsh, seed 1): unknown method 'fsh'"),
            std::string::npos)
      << run.output;
  EXPECT_FALSE(fs::exists(dir.path() / "method")) << "a cell ran or its directory was made";

  write(dir.path() / "flag.json",
        R"({"methods": ["bitfit"], "tasks": ["RTE"], "train_sizes": [null, 100],
            "task_flags": {"RTE": {"--lora-rnk": 4}}})");
  run = deltatune("sweep " + (dir.path() / "flag.json").string());
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.output.find("cell 1 of 2 (task RTE, method bitfit, seed 0)"), std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("--lora-rnk"), std::string::npos) << run.output;
  EXPECT_FALSE(fs::exists(dir.path() / "flag"));

  write(dir.path() / "key.json", R"({"methods": ["bitfit"], "tasks": ["RTE"], "seed": [1]})");
  run = deltatune("sweep " + (dir.path() / "key.json").string());
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.output.find("unknown key 'seed'"), std::string::npos) << run.output;
}

// The presets in examples/sweeps are valid configs: every cell parses.
TEST(Sweep, ThePresetsCheckCleanly) {
  const fs::path presets =
      fs::path(DELTATUNE_FIXTURES).parent_path().parent_path() / "examples" / "sweeps";
  size_t checked = 0;
  for (const auto& entry : fs::directory_iterator(presets)) {
    const std::string extension = entry.path().extension().string();
    if (extension != ".json" && extension != ".yaml" && extension != ".yml") continue;
    const CliRun run = deltatune("sweep --dry-run " + entry.path().string());
    EXPECT_EQ(run.status, 0) << entry.path() << ": " << run.output;
    EXPECT_NE(run.output.find("deltatune train --method"), std::string::npos) << run.output;
    ++checked;
  }
  EXPECT_GE(checked, 1u);
}

// A YAML config means what its JSON twin means: the same cells, the same flags.
TEST(Sweep, AYamlConfigGivesTheCellsOfItsJsonTwin) {
  ScratchDir dir;
  write(dir.path() / "twin.json",
        R"({"methods": ["bitfit", "lora"], "tasks": ["RTE"], "seeds": [1, 2],
            "train_sizes": [100, null], "flags": {"--max-length": 64, "--bf16": true},
            "method_flags": {"lora": {"--lora-rank": 4, "--target-modules": ["query", "value"]}}})");
  write(dir.path() / "twin.yaml", R"(# the same sweep
methods: [bitfit, lora]
tasks: [RTE]
seeds: [1, 2]
train_sizes: [100, null]
flags: {--max-length: 64, --bf16: true}
method_flags:
  lora:
    --lora-rank: 4
    --target-modules: [query, value]
)");
  const CliRun json_run = deltatune("sweep --dry-run " + (dir.path() / "twin.json").string());
  const CliRun yaml_run = deltatune("sweep --dry-run " + (dir.path() / "twin.yaml").string());
  ASSERT_EQ(json_run.status, 0) << json_run.output;
  ASSERT_EQ(yaml_run.status, 0) << yaml_run.output;
  EXPECT_EQ(std::count(yaml_run.output.begin(), yaml_run.output.end(), '\n'), 8);
  EXPECT_NE(yaml_run.output.find("--lora-rank 4 --target-modules query,value"), std::string::npos)
      << yaml_run.output;
  // Only the output directory differs: each config's own name.
  EXPECT_EQ(std::regex_replace(yaml_run.output, std::regex("twin/"), "X/"),
            std::regex_replace(json_run.output, std::regex("twin/"), "X/"));

  write(dir.path() / "broken.yaml", "methods: [bitfit\ntasks: [RTE]\n");
  const CliRun broken = deltatune("sweep " + (dir.path() / "broken.yaml").string());
  EXPECT_EQ(broken.status, 1);
  EXPECT_NE(broken.output.find("broken.yaml:"), std::string::npos) << broken.output;
}

// "nproc": each cell a data-parallel job, its ranks started by deltatune launch.
TEST(Sweep, CellsRunAsDataParallelJobsOfNprocRanks) {
  ScratchDir dir;
  const fs::path config = dir.path() / "ranks.yaml";
  write(config, R"(methods: [bitfit]
tasks: [RTE]
nproc: 2
flags: {--max-steps: 2, --max-length: 24, --batch-size: 4, --max-train-samples: 16}
)");
  CliRun run = deltatune("sweep --dry-run " + config.string());
  ASSERT_EQ(run.status, 0) << run.output;
  EXPECT_EQ(run.output.rfind("deltatune launch --nproc 2 -- train --method bitfit", 0), 0u)
      << run.output;
  run = deltatune("sweep " + config.string());
  ASSERT_EQ(run.status, 0) << run.output;
  const std::string summary =
      io::read_text_file(dir.path() / "ranks" / "RTE" / "bitfit" / "seed0" / "summary.json");
  EXPECT_TRUE(std::regex_search(summary, std::regex("\"world_size\": 2"))) << summary;

  write(config, "methods: [bitfit]\ntasks: [RTE]\nnproc: 0\n");
  run = deltatune("sweep --dry-run " + config.string());
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.output.find("'nproc' must be a whole number"), std::string::npos) << run.output;
}

TEST(Sweep, AnInterruptedSweepRunsOnlyItsMissingCellsAgain) {
  ScratchDir dir;
  const fs::path config = dir.path() / "small.json", out = dir.path() / "small";
  write(config, R"({"methods": ["bitfit", "frozen", "lora"], "tasks": ["SST-2"], "seeds": [1],
                    "train_sizes": [48],
                    "flags": {"--max-steps": 3, "--max-length": 32, "--batch-size": 8}})");
  const std::vector<fs::path> summaries = {out / "SST-2/bitfit/n48/seed1/summary.json",
                                           out / "SST-2/frozen/n48/seed1/summary.json",
                                           out / "SST-2/lora/n48/seed1/summary.json"};
  // The sweep as its own process, stopped with SIGTERM once the first cell is done.
  const pid_t pid = start_sweep(config);
  ASSERT_GT(pid, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
  while (!fs::exists(summaries[0]) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(fs::exists(summaries[0])) << "the first cell did not finish";
  // The results so far are written after each cell, while the sweep goes on.
  const fs::path results_file = out / "results.jsonl";
  const auto written = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!fs::exists(results_file) && std::chrono::steady_clock::now() < written)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(fs::exists(results_file)) << "no results.jsonl after the first cell";
  EXPECT_NE(io::read_text_file(results_file).find("\"method\":\"bitfit\""), std::string::npos);
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));

  std::map<fs::path, fs::file_time_type> finished;
  for (const auto& s : summaries)
    if (fs::exists(s)) finished[s] = fs::last_write_time(s);
  // Stopped mid-sweep it says so (143); had every cell finished first, 0.
  EXPECT_EQ(WEXITSTATUS(status), finished.size() < summaries.size() ? 143 : 0);

  const CliRun again = deltatune("sweep " + config.string());
  ASSERT_EQ(again.status, 0) << again.output;
  const size_t missing = summaries.size() - finished.size();
  EXPECT_NE(again.output.find(fmt::format("3 cells: {} ran, {} finished earlier, 0 failed", missing,
                                          finished.size())),
            std::string::npos)
      << again.output;
  for (const auto& s : summaries) EXPECT_TRUE(fs::exists(s)) << s;
  for (const auto& [s, when] : finished)
    EXPECT_EQ(fs::last_write_time(s), when) << s << " was trained again";
  // One result line per cell, each with its run's summary.
  const std::string results = io::read_text_file(out / "results.jsonl");
  EXPECT_EQ(std::count(results.begin(), results.end(), '\n'), 3);
  EXPECT_EQ(std::regex_search(results, std::regex("\"delta_bytes\"")), true);
}

// A sweep goes on when its binary's file is replaced or removed while it
// runs (an upgrade during a days-long sweep): its cells run the binary the
// sweep started as.
TEST(Sweep, CellsStillStartOnceTheBinarysFileIsGone) {
  ScratchDir dir;
  const fs::path binary = dir.path() / "deltatune-copy";
  fs::copy_file(DELTATUNE_CLI, binary);
  const fs::path config = dir.path() / "two.json", out = dir.path() / "two";
  write(config, R"({"methods": ["bitfit", "frozen"], "tasks": ["SST-2"], "seeds": [1],
                    "train_sizes": [16],
                    "flags": {"--max-steps": 1, "--max-length": 16, "--batch-size": 8}})");
  const std::string model = minilm_dir().string();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl(binary.c_str(), binary.c_str(), "sweep", config.c_str(), "--model", model.c_str(),
            "--threads", "1", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ASSERT_GT(pid, 0);
  // Gone once the sweep process runs it, before its first cell starts.
  const fs::path exe = fs::path("/proc") / std::to_string(pid) / "exe";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::error_code ec;
  while (fs::read_symlink(exe, ec) != binary && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_EQ(fs::read_symlink(exe, ec), binary);
  ASSERT_FALSE(fs::exists(out / "SST-2")) << "a cell started before the binary was removed";
  fs::remove(binary);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_TRUE(fs::exists(out / "SST-2/bitfit/n16/seed1/summary.json"));
  EXPECT_TRUE(fs::exists(out / "SST-2/frozen/n16/seed1/summary.json"));
}

// A cell stopped after a checkpoint continues from it when the sweep runs
// again, instead of training from the start.
TEST(Sweep, ACellStoppedAfterACheckpointResumesFromIt) {
  ScratchDir dir;
  const fs::path config = dir.path() / "one.json", cell = dir.path() / "one/RTE/bitfit/seed0";
  write(config, R"({"methods": ["bitfit"], "tasks": ["RTE"],
                    "flags": {"--max-steps": 40, "--max-length": 32, "--batch-size": 4,
                              "--max-train-samples": 200, "--checkpoint-every": 2,
                              "--eval-every": 1000, "--log-every": 1}})");
  const pid_t pid = start_sweep(config);
  ASSERT_GT(pid, 0);
  const fs::path state = cell / "checkpoint" / "state.json";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
  while (!fs::exists(state) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(fs::exists(state)) << "no checkpoint was written";
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  if (fs::exists(cell / "summary.json")) GTEST_SKIP() << "the cell finished before the signal";
  EXPECT_EQ(WEXITSTATUS(status), 143);

  // The time trained before the stop, as the checkpoint recorded it.
  const double before = nlohmann::json::parse(io::read_text_file(state)).value("elapsed_s", 0.0);
  EXPECT_GT(before, 0.0);
  const CliRun again = deltatune("sweep " + config.string());
  ASSERT_EQ(again.status, 0) << again.output;
  ASSERT_TRUE(fs::exists(cell / "summary.json"));
  // The clock goes on across the stop: the log's times never go back, and the
  // summary's training time is the whole run's, both parts.
  const auto summary = nlohmann::json::parse(io::read_text_file(cell / "summary.json"));
  EXPECT_GT(summary["train_seconds"].get<double>(), before);
  std::istringstream log_lines(io::read_text_file(cell / "metrics.jsonl"));
  double last = 0;
  int records = 0;
  for (std::string line; std::getline(log_lines, line); ++records) {
    const auto record = nlohmann::json::parse(line);
    if (!record.contains("elapsed_s")) continue;  // the closing summary
    const double elapsed = record["elapsed_s"].get<double>();
    EXPECT_GE(elapsed, last) << "record " << records << ": " << line;
    last = elapsed;
  }
  EXPECT_GT(records, 3);
  // train.log holds both runs: the stopped one and the resumed one.
  const std::string log = io::read_text_file(cell / "train.log");
  EXPECT_NE(log.find("--resume continues"), std::string::npos) << log;
  EXPECT_NE(log.find("from its checkpoint at step"), std::string::npos) << log;
}

}  // namespace
}  // namespace deltatune::test
