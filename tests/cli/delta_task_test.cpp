// The command line as a user runs it: `deltatune eval` and `predict` take a
// delta's own task record (labels, type, pairness), and refuse data that
// does not fit it with a one-line error and a non-zero exit.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli/cli_run.h"
#include "deltatune/data/task.h"
#include "deltatune/methods/method.h"
#include "deltatune/train/task_model.h"
#include "test_paths.h"

namespace deltatune {
namespace {
namespace fs = std::filesystem;

using test::CliRun;
using test::deltatune;

fs::path user_delta(const test::ScratchDir& tmp) {
  return test::user_bitfit_delta(tmp.path() / "delta");
}

TEST(CliDeltaTask, EvalReadsADevFileWithTheDeltasLabelsEvenWhenAClassIsMissing) {
  test::ScratchDir tmp;
  const fs::path delta = user_delta(tmp);
  tmp.write("only_pos.tsv", "sentence\tlabel\na fine film\tpos\ngreat fun\tpos\n");
  CliRun run = deltatune("eval --json --delta '" + delta.string() + "' --dev '" +
                         (tmp.path() / "only_pos.tsv").string() + "'");
  ASSERT_EQ(run.status, 0) << run.output;
  const auto result = nlohmann::json::parse(run.output.substr(run.output.find('{')));
  EXPECT_EQ(result["examples"], 2);
  EXPECT_EQ(result["task"], "sst2");
}

TEST(CliDeltaTask, EvalRefusesOtherLabelsOtherInputsAndGlueDataForAUserTask) {
  test::ScratchDir tmp;
  const fs::path delta = user_delta(tmp);
  tmp.write("other_labels.tsv", "sentence\tlabel\nfine\tgood\nbad\tbad\n");
  CliRun run = deltatune("eval --delta '" + delta.string() + "' --dev '" +
                         (tmp.path() / "other_labels.tsv").string() + "'");
  EXPECT_EQ(run.status, 1) << run.output;
  EXPECT_NE(run.output.find("unknown label"), std::string::npos) << run.output;
  tmp.write("pairs.tsv", "sentence1\tsentence2\tlabel\na\tb\tpos\nc\td\tneg\n");
  run = deltatune("eval --delta '" + delta.string() + "' --dev '" +
                  (tmp.path() / "pairs.tsv").string() + "'");
  EXPECT_EQ(run.status, 1) << run.output;
  EXPECT_NE(run.output.find("has text pairs, but the delta was trained on sst2 with single texts"),
            std::string::npos)
      << run.output;
  // Without --dev it is not GLUE's SST-2 that gets read.
  run = deltatune("eval --delta '" + delta.string() + "'");
  EXPECT_EQ(run.status, 1) << run.output;
  EXPECT_NE(run.output.find("was trained on user data (task 'sst2')"), std::string::npos)
      << run.output;
}

TEST(CliDeltaTask, PredictPrintsTheDeltasOwnLabelNames) {
  test::ScratchDir tmp;
  const fs::path delta = user_delta(tmp);
  tmp.write("inputs.tsv", "sentence\nwhat a film\n");
  CliRun run = deltatune("predict --delta '" + delta.string() + "' --input '" +
                         (tmp.path() / "inputs.tsv").string() + "'");
  ASSERT_EQ(run.status, 0) << run.output;
  const auto row = nlohmann::json::parse(run.output.substr(run.output.find('{')));
  const std::string label = row["label"];
  EXPECT_TRUE(label == "neg" || label == "pos") << run.output;
}

}  // namespace
}  // namespace deltatune
