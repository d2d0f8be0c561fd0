// Output problems of `deltatune train`: a full disk (RLIMIT_FSIZE), a
// read-only output directory, and an --out that holds another run. Each
// gives a one-line error naming the path, a non-zero exit, and leaves no
// half-written delta or checkpoint behind.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "cli/cli_run.h"
#include "deltatune/data/glue.h"
#include "deltatune/io/atomic_file.h"
#include "test_paths.h"

namespace deltatune {
namespace {
namespace fs = std::filesystem;

class OutputErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ifstream glue(data::glue_dir_from_env() / "SST-2" / "train.tsv");
    ASSERT_TRUE(glue) << "GLUE SST-2 not found: set GLUE_DIR";
    std::string line;
    std::ofstream train(tmp_.path() / "train.tsv");
    for (int i = 0; i < 17 && std::getline(glue, line); ++i) train << line << "\n";
  }
  std::string train_arguments(const fs::path& out, const std::string& flags = {}) const {
    const std::string data = (tmp_.path() / "train.tsv").string();
    return "train --train '" + data + "' --dev '" + data +
           "' --batch-size 8 --max-length 32 --max-steps 1 " + flags + " --out '" + out.string() +
           "'";
  }
  // Every path under `dir` that is part of a delta, a checkpoint or a staging directory.
  static std::vector<std::string> written(const fs::path& dir) {
    std::vector<std::string> out;
    if (!fs::exists(dir)) return out;
    for (const auto& entry : fs::recursive_directory_iterator(dir)) {
      const std::string path = fs::relative(entry.path(), dir).string();
      if (path.find("delta") != std::string::npos || path.find("checkpoint") != std::string::npos ||
          path.find(".partial-") != std::string::npos || path.find(".tmp.") != std::string::npos)
        out.push_back(path);
    }
    return out;
  }
  test::ScratchDir tmp_;
};

TEST_F(OutputErrors, AFullDiskFailsTheDeltaWriteWithAClearErrorAndLeavesNoPartOfIt) {
  const fs::path out = tmp_.path() / "run";
  // Full fine-tuning's delta is the whole model (~90 MB); files may grow to 8 MB.
  test::CliRun run = test::deltatune(train_arguments(out, "--method full"), {}, "ulimit -f 8192;");
  EXPECT_NE(run.status, 0) << run.output;
  EXPECT_NE(run.output.find("deltatune: error: write to " + (out / "delta").string()),
            std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("File too large"), std::string::npos) << run.output;
  EXPECT_TRUE(written(out).empty()) << written(out).front();

  // With checkpoints on, the checkpoint write fails first, as cleanly.
  const fs::path checkpointed = tmp_.path() / "checkpointed";
  run = test::deltatune(train_arguments(checkpointed, "--method full --checkpoint-every 1"), {},
                        "ulimit -f 8192;");
  EXPECT_NE(run.status, 0) << run.output;
  EXPECT_NE(run.output.find("write to " + (checkpointed / "checkpoint").string()),
            std::string::npos)
      << run.output;
  EXPECT_TRUE(written(checkpointed).empty()) << written(checkpointed).front();
}

TEST_F(OutputErrors, AReadOnlyOutputDirectoryIsNamedBeforeAnyTraining) {
  const fs::path out = tmp_.path() / "read-only";
  fs::create_directories(out);
  bool read_only = false;
  if (::geteuid() != 0) {
    read_only = ::chmod(out.c_str(), 0555) == 0;
  } else {  // root writes through permissions: an immutable directory refuses even root
    read_only = std::system(("chattr +i '" + out.string() + "' 2>/dev/null").c_str()) == 0;
  }
  if (!read_only) GTEST_SKIP() << "cannot make a read-only directory here";
  test::CliRun run = test::deltatune(train_arguments(out));
  if (::geteuid() == 0) std::system(("chattr -i '" + out.string() + "'").c_str());
  ::chmod(out.c_str(), 0755);
  EXPECT_NE(run.status, 0) << run.output;
  EXPECT_NE(run.output.find("deltatune: error: cannot write " + (out / "run.json").string()),
            std::string::npos)
      << run.output;
  EXPECT_TRUE(fs::is_empty(out));  // no log: no training started
}

TEST_F(OutputErrors, AnOutHoldingAnotherRunIsRefusedUnlessResumedOrOverwritten) {
  const fs::path out = tmp_.path() / "run";
  ASSERT_EQ(test::deltatune(train_arguments(out)).status, 0);
  const std::string delta = io::read_text_file(out / "delta" / "delta.safetensors");
  test::CliRun other = test::deltatune(train_arguments(out, "--lr 0.01"));
  EXPECT_NE(other.status, 0) << other.output;
  EXPECT_NE(other.output.find(out.string() + " holds another run (learning_rate"),
            std::string::npos)
      << other.output;
  EXPECT_NE(other.output.find("--overwrite"), std::string::npos) << other.output;
  // Untouched by the refused run.
  EXPECT_EQ(io::read_text_file(out / "delta" / "delta.safetensors"), delta);

  // The same run again is no conflict; --overwrite replaces another.
  EXPECT_EQ(test::deltatune(train_arguments(out)).status, 0);
  test::CliRun replaced = test::deltatune(train_arguments(out, "--lr 0.01 --overwrite"));
  EXPECT_EQ(replaced.status, 0) << replaced.output;
}

}  // namespace
}  // namespace deltatune
