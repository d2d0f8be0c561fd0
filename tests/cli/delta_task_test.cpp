// The command line as a user runs it: `deltatune eval` and `predict` take a
// delta's own task record (labels, type, pairness), and refuse data that
// does not fit it with a one-line error and a non-zero exit.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "cli/cli_run.h"
#include "deltatune/data/task.h"
#include "deltatune/methods/method.h"
#include "deltatune/model/device.h"
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

// --device on every verb that runs the model: cpu answers as the default
// does; without a GPU, cuda is refused before any work, in one line that names
// the flag and the way out.
TEST(CliDeltaTask, EveryModelVerbTakesDeviceCpuAndRefusesAMissingGpu) {
  test::ScratchDir tmp;
  const fs::path delta = user_delta(tmp);
  tmp.write("inputs.tsv", "sentence\nwhat a film\n");
  ASSERT_TRUE(test::write_sst2_user_files(tmp.path(), 8, 8))
      << "GLUE SST-2 not found: set GLUE_DIR";
  const std::string predict = "predict --delta '" + delta.string() + "' --input '" +
                              (tmp.path() / "inputs.tsv").string() + "'";
  CliRun plain = deltatune(predict), on_cpu = deltatune(predict + " --device cpu");
  ASSERT_EQ(plain.status, 0) << plain.output;
  ASSERT_EQ(on_cpu.status, 0) << on_cpu.output;
  EXPECT_EQ(plain.output, on_cpu.output);
  CliRun embedded = deltatune("embed 'a film' 'a movie' --device cpu");
  EXPECT_EQ(embedded.status, 0) << embedded.output;

  if (model::cuda_available())
    GTEST_SKIP() << "a GPU is visible: --device cuda is not refused here";
  const std::vector<std::string> verbs = {
      "train --method bitfit --train '" + (tmp.path() / "train.tsv").string() + "' --dev '" +
          (tmp.path() / "dev.tsv").string() + "' --epochs 1 --out '" +
          (tmp.path() / "run").string() + "'",
      "eval --delta '" + delta.string() + "' --dev '" + (tmp.path() / "dev.tsv").string() + "'",
      predict,
      "embed 'a film'",
      "classify 'a film'",
      "serve --task sst2='" + delta.string() + "' --port 0"};
  for (const std::string& verb : verbs) {
    CliRun run = deltatune(verb + " --device cuda");
    EXPECT_EQ(run.status, 1) << verb << "\n" << run.output;
    EXPECT_NE(run.output.find("--device cuda"), std::string::npos) << verb << "\n" << run.output;
    EXPECT_NE(run.output.find("--device cpu"), std::string::npos) << verb << "\n" << run.output;
  }
  EXPECT_FALSE(fs::exists(tmp.path() / "run" / "delta")) << "train wrote a delta it was refused";
}

// --precision on predict and eval: auto says on stderr what the CPU's probe
// chose and answers within bf16's precision of fp32; eval's --bf16 and
// --precision together, or an unknown precision, are refused.
TEST(CliDeltaTask, PrecisionAutoSaysWhatItChoseAndAnswersLikeFp32) {
  test::ScratchDir tmp;
  const fs::path delta = user_delta(tmp);
  tmp.write("inputs.tsv", "sentence\nwhat a film\na dull, tired mess\n");
  const std::string common =
      " --delta '" + delta.string() + "' --input '" + (tmp.path() / "inputs.tsv").string() + "'";
  auto rows = [](const std::string& output) {
    std::vector<nlohmann::json> out;
    std::istringstream lines(output);
    for (std::string line; std::getline(lines, line);)
      if (!line.empty() && line.front() == '{') out.push_back(nlohmann::json::parse(line));
    return out;
  };
  CliRun fp32 = deltatune("predict --precision fp32" + common);
  ASSERT_EQ(fp32.status, 0) << fp32.output;
  EXPECT_EQ(fp32.output.find("products at"), std::string::npos) << fp32.output;
  CliRun automatic = deltatune("predict --precision auto" + common);
  ASSERT_EQ(automatic.status, 0) << automatic.output;
  EXPECT_NE(automatic.output.find("deltatune predict: products at"), std::string::npos)
      << automatic.output;
  const auto exact = rows(fp32.output), chosen = rows(automatic.output);
  ASSERT_EQ(exact.size(), 2u) << fp32.output;
  ASSERT_EQ(chosen.size(), 2u) << automatic.output;
  for (size_t i = 0; i < exact.size(); ++i) {
    EXPECT_EQ(chosen[i]["line"], exact[i]["line"]);
    EXPECT_NEAR(chosen[i]["probability"].get<double>(), exact[i]["probability"].get<double>(),
                0.02);
  }

  CliRun both = deltatune("eval --bf16 --precision fp32 --delta '" + delta.string() + "'");
  EXPECT_NE(both.status, 0) << both.output;
  EXPECT_NE(both.output.find("excludes"), std::string::npos) << both.output;
  CliRun unknown = deltatune("predict --precision fp8" + common);
  EXPECT_NE(unknown.status, 0) << unknown.output;
  EXPECT_NE(unknown.output.find("--precision"), std::string::npos) << unknown.output;
}

}  // namespace
}  // namespace deltatune
