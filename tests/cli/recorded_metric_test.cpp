// What a run records is what its delta gives: for every method, a real
// `deltatune train` that evaluates several times during training (so that
// optimizer steps fall between evaluations, and staged methods change stage
// between them), then `deltatune eval` of the delta it wrote. The dev loss and
// accuracy eval computes from the delta alone must be those the run recorded
// for it (the kept best). A stale evaluation during training (weights read
// from before a step, as once through packed inference weights) or a delta
// that is not the evaluated model breaks the equality.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli/cli_run.h"
#include "test_paths.h"

namespace deltatune {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

// Each method's flags for a run of seconds that still moves its predictions
// between evaluations (a learning rate well above the recipes').
std::string flags_of(const std::string& method) {
  if (method == "fish") return "--fisher-samples 16 --lr 1e-3";
  if (method == "diff-pruning") return "--finetune-epochs 1 --lr 1e-3";
  if (method == "far") return "--priming 0.25 --lr 1e-3";
  if (method == "prefix-tuning") return "--num-virtual-tokens 4 --projection-size 16 --lr 1e-2";
  if (method == "prompt-tuning") return "--num-virtual-tokens 4 --lr 1e-1";
  return "--lr 1e-3";
}

class RecordedMetric : public ::testing::TestWithParam<std::string> {};

TEST_P(RecordedMetric, IsWhatTheDeltaGivesWhenEvaluatedAlone) {
  test::ScratchDir tmp;
  ASSERT_TRUE(test::write_sst2_user_files(tmp.path(), 32, 24))
      << "GLUE SST-2 not found: set GLUE_DIR";
  const fs::path out = tmp.path() / "run";
  const fs::path dev = tmp.path() / "dev.tsv";
  test::CliRun trained = test::deltatune(
      "train --json --method " + GetParam() + " " + flags_of(GetParam()) + " --train '" +
      (tmp.path() / "train.tsv").string() + "' --dev '" + dev.string() +
      "' --epochs 2 --eval-every 2 --batch-size 8 --max-length 32 --seed 3 --out '" + out.string() +
      "'");
  ASSERT_EQ(trained.status, 0) << trained.output;
  test::CliRun evaluated = test::deltatune("eval --json --delta '" + (out / "delta").string() +
                                           "' --dev '" + dev.string() + "'");
  ASSERT_EQ(evaluated.status, 0) << evaluated.output;
  const json result = json::parse(evaluated.output.substr(evaluated.output.find('{')));
  const json& recorded = result.at("recorded");
  ASSERT_TRUE(recorded.contains("loss")) << result.dump();
  EXPECT_NEAR(result.at("loss").get<double>(), recorded.at("loss").get<double>(), 1e-5)
      << GetParam() << ": the delta evaluates to " << result.dump() << ", the run recorded "
      << recorded.dump();
  EXPECT_EQ(result.at("accuracy"), recorded.at("accuracy")) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(EveryMethod, RecordedMetric,
                         ::testing::Values("full", "frozen", "bitfit", "child-tuning-f",
                                           "child-tuning-d", "fish", "diff-pruning", "far", "lora",
                                           "prefix-tuning", "prompt-tuning", "adapters"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

}  // namespace
}  // namespace deltatune
