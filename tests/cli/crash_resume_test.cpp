// Kill anywhere, resume, and get the same delta: real `deltatune train`
// processes are killed with SIGKILL at a step, inside a checkpoint write and
// inside the final delta write (DELTATUNE_CRASH_AT, io/crash_point.h), or at
// a random moment, then resumed with --resume until they finish. The delta's
// tensors must be bit-identical to those of an uninterrupted run (fp32, same
// seed, one thread), and no partial file may be left behind. SIGTERM and
// SIGINT checkpoint and exit 143 / 130.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "cli/cli_run.h"
#include "deltatune/data/glue.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/train/trainer.h"
#include "test_paths.h"

extern char** environ;

namespace deltatune {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

std::string file_bytes(const fs::path& path) { return io::read_text_file(path); }

// delta.json without the fields that record when, not what: "created".
json delta_record(const fs::path& delta_dir) {
  json record = json::parse(file_bytes(delta_dir / "delta.json"));
  record.erase("created");
  return record;
}

// Files a killed writer may have left: hidden partial or temporary siblings.
std::vector<std::string> leftovers(const fs::path& dir) {
  std::vector<std::string> found;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.find(".partial-") != std::string::npos || name.find(".tmp.") != std::string::npos)
      found.push_back(entry.path().string());
  }
  return found;
}

// The shell that runs the command reports a SIGKILL as 137, or dies with it.
bool killed(const test::CliRun& run) { return run.status == 128 + SIGKILL || run.status == -1; }

// A method's run for these tests, small enough to finish in seconds: its
// flags, and how often it checkpoints (the full-size tensors of FISH and
// Diff Pruning make every checkpoint hundreds of MB).
struct Case {
  std::string method, flags;
  int epochs = 2, checkpoint_every = 1;
  // Which checkpoint write of the first resumed process (from step 2) is
  // killed: one of the last stage.
  int killed_write = 6;
};

Case case_of(const std::string& method) {
  if (method == "fish") return {method, "--fisher-samples 16", 2, 2, 2};
  if (method == "diff-pruning") return {method, "--finetune-epochs 1 --lr 1e-3", 1, 2, 3};
  if (method == "far") return {method, "--priming 0.25 --lr 1e-4"};
  if (method == "prefix-tuning") return {method, "--num-virtual-tokens 4 --projection-size 16"};
  return {method, ""};
}

// 32 training and 16 dev sentences of GLUE SST-2 as a user's files.
class CrashResume : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(test::write_sst2_user_files(tmp_.path(), 32, 16))
        << "GLUE SST-2 not found: set GLUE_DIR";
  }

  // The command's arguments for a run into `out`.
  std::string arguments(const fs::path& out) const {
    const Case c = case_of(GetParam());
    return "train --method " + c.method + " " + c.flags + " --train '" +
           (tmp_.path() / "train.tsv").string() + "' --dev '" + (tmp_.path() / "dev.tsv").string() +
           "' --epochs " + std::to_string(c.epochs) + " --checkpoint-every " +
           std::to_string(c.checkpoint_every) + " --batch-size 8 --max-length 32 --seed 3 --out '" +
           out.string() + "'";
  }

  test::CliRun train(const fs::path& out, const std::string& crash_at = {},
                     bool resume = false) const {
    const std::string env = crash_at.empty() ? std::string() : "DELTATUNE_CRASH_AT=" + crash_at;
    return test::deltatune(arguments(out) + (resume ? " --resume" : ""), {}, env);
  }

  void expect_same_delta(const fs::path& reference, const fs::path& resumed) const {
    EXPECT_TRUE(file_bytes(reference / "delta" / "delta.safetensors") ==
                file_bytes(resumed / "delta" / "delta.safetensors"))
        << GetParam() << ": the resumed run's delta.safetensors differs";
    EXPECT_TRUE(delta_record(reference / "delta") == delta_record(resumed / "delta"))
        << GetParam() << ": the resumed run's delta.json differs";
    EXPECT_TRUE(leftovers(resumed).empty()) << leftovers(resumed).front();
  }

  test::ScratchDir tmp_;
};

TEST_P(CrashResume, KilledAtAStepInACheckpointWriteAndInTheDeltaWriteEndsWithTheSameDelta) {
  const fs::path reference = tmp_.path() / "reference", resumed = tmp_.path() / "resumed";
  test::CliRun whole = train(reference);
  ASSERT_EQ(whole.status, 0) << whole.output;

  // Killed after step 3, before its checkpoint.
  test::CliRun first = train(resumed, "step:3");
  ASSERT_TRUE(killed(first)) << "not killed: " << first.output;
  // Resumed from step 2, then killed inside a checkpoint write of the last
  // stage (for the staged methods, after the earlier stage ended in this process).
  test::CliRun second =
      train(resumed, "write:checkpoint:" + std::to_string(case_of(GetParam()).killed_write), true);
  ASSERT_TRUE(killed(second)) << "not killed: " << second.output;
  ASSERT_TRUE(fs::exists(resumed / "checkpoint" / "state.json") ||
              fs::exists(resumed / "stage1" / "checkpoint" / "state.json") ||
              fs::exists(resumed / "priming" / "checkpoint" / "state.json"));
  // Resumed, then killed with the delta staged but not yet in place.
  test::CliRun third = train(resumed, "write:delta", true);
  ASSERT_TRUE(killed(third)) << "not killed: " << third.output;
  EXPECT_FALSE(fs::exists(resumed / "delta" / "delta.json")) << "a delta appeared half-way";
  test::CliRun last = train(resumed, {}, true);
  ASSERT_EQ(last.status, 0) << last.output;
  expect_same_delta(reference, resumed);
}

INSTANTIATE_TEST_SUITE_P(EveryKindOfMethod, CrashResume,
                         ::testing::Values("bitfit", "fish", "diff-pruning", "far", "lora",
                                           "prefix-tuning"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

// A `deltatune train` running in the background.
class Background {
 public:
  explicit Background(const std::string& command) {
    const char* argv[] = {"/bin/sh", "-c", command.c_str(), nullptr};
    if (::posix_spawn(&pid_, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ) != 0)
      pid_ = -1;
  }
  // The exit status, or 128 + the signal that killed it.
  int wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
};

class StopAndResume : public CrashResume {
 protected:
  std::string command(const fs::path& out) const {
    // exec: the signal goes to deltatune itself, not to the shell.
    return "exec " + std::string(DELTATUNE_CLI) + " " + arguments(out) + " --model '" +
           test::minilm_dir().string() + "' --threads 1 > '" + (out.string() + ".log") + "' 2>&1";
  }
  // Waits (up to 60 s) for the checkpoint at `state` to be past `step`; returns its step.
  static int wait_for_step_beyond(const fs::path& state, int step) {
    for (int i = 0; i < 1200; ++i) {
      try {
        if (fs::exists(state)) {
          const int now = json::parse(file_bytes(state)).value("step", 0);
          if (now > step) return now;
        }
      } catch (const json::exception&) {  // read while being swapped: try again
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return step;
  }
};

TEST_P(StopAndResume, SigtermAndSigintCheckpointExitWith143And130AndResumeToTheSameDelta) {
  const fs::path reference = tmp_.path() / "reference", resumed = tmp_.path() / "resumed";
  ASSERT_EQ(train(reference).status, 0);
  const fs::path checkpoint = resumed / "checkpoint" / "state.json";
  int step = 0;
  for (const int signal_number : {SIGTERM, SIGINT}) {
    Background run(command(resumed) + (signal_number == SIGINT ? " --resume" : ""));
    ASSERT_GT(run.pid(), 0);
    // Signalled once training runs (a checkpoint past the last one exists).
    step = wait_for_step_beyond(checkpoint, step);
    ::kill(run.pid(), signal_number);
    const int status = run.wait();
    const std::string log = file_bytes(resumed.string() + ".log");
    if (status == 0) break;  // it finished before the signal: nothing to resume
    EXPECT_EQ(status, 128 + signal_number) << log;
    EXPECT_NE(log.find("--resume continues"), std::string::npos) << log;
    step = json::parse(file_bytes(checkpoint)).value("step", 0);
  }
  test::CliRun last = train(resumed, {}, true);
  ASSERT_EQ(last.status, 0) << last.output;
  expect_same_delta(reference, resumed);
}

// Killed right after a stage's finished checkpoint replaced its last step's,
// before that one was removed: a resume finds the stage finished and never
// writes its checkpoint again. The finished checkpoint is write 3 for FAR's
// priming (2 of 8 steps at --priming 0.25), write 9 for BitFit (8 steps).
TEST_P(StopAndResume, KilledBetweenACheckpointSwapAndItsCleanupLeavesNothingBehind) {
  const fs::path reference = tmp_.path() / "reference", resumed = tmp_.path() / "resumed";
  ASSERT_EQ(train(reference).status, 0);
  const std::string finished_write = GetParam() == std::string("far") ? "3" : "9";
  test::CliRun first = train(resumed, "swapped:checkpoint:" + finished_write);
  ASSERT_TRUE(killed(first)) << "not killed: " << first.output;
  ASSERT_FALSE(leftovers(resumed).empty()) << "the kill left no old checkpoint to clean up";
  test::CliRun last = train(resumed, {}, true);
  ASSERT_EQ(last.status, 0) << last.output;
  expect_same_delta(reference, resumed);
}

TEST_P(StopAndResume, SigkillAtRandomMomentsEndsWithTheSameDelta) {
  const fs::path reference = tmp_.path() / "reference", resumed = tmp_.path() / "resumed";
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(train(reference).status, 0);
  // Kills fall anywhere in a whole run's time, start-up included.
  const int whole_ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                            std::chrono::steady_clock::now() - start)
                                            .count());
  std::mt19937 random(20261202);
  int kills = 0;
  bool done = false;
  for (int attempt = 0; attempt < 20 && !done; ++attempt) {
    // Resumed once any stage has a checkpoint; before that, started afresh
    // (a kill inside a checkpoint write leaves none).
    const bool resumable = train::has_checkpoint(resumed);
    Background run(command(resumed) + (resumable ? " --resume" : ""));
    ASSERT_GT(run.pid(), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(
        std::uniform_int_distribution<int>(whole_ms / 4, whole_ms)(random)));
    ::kill(run.pid(), SIGKILL);
    const int status = run.wait();
    if (status == 0)
      done = true;
    else if (status == 128 + SIGKILL)
      ++kills;
    else
      FAIL() << "exit " << status << ": " << file_bytes(resumed.string() + ".log");
  }
  if (!done) {
    test::CliRun last = train(resumed, {}, true);
    ASSERT_EQ(last.status, 0) << last.output;
  }
  EXPECT_GE(kills, 1);
  expect_same_delta(reference, resumed);
}

INSTANTIATE_TEST_SUITE_P(OneAndTwoStages, StopAndResume, ::testing::Values("bitfit", "far"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace deltatune
