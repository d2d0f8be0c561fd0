// Transfer as the Child-Tuning paper runs it, through the CLI: a new head on
// another task's encoder (--init-from a delta directory), whose delta then
// holds that encoder; a model scored on another task's dev split beside its
// own (--eval-also); and sweeps whose variants name the encoders.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli_run.h"
#include "deltatune/io/atomic_file.h"
#include "test_paths.h"

namespace deltatune::test {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

json read_json(const fs::path& path) { return json::parse(io::read_text_file(path)); }

TEST(Transfer, AHeadOnAnotherTasksEncoderStoresThatEncoderInItsDelta) {
  ScratchDir dir;
  const fs::path source = dir.path() / "rte", target = dir.path() / "mrpc";
  // An encoder that moved: BitFit on RTE at a high rate.
  CliRun run = deltatune(
      "train --task RTE --method bitfit --lr 0.02 --max-train-samples 32 "
      "--max-steps 4 --max-length 32 --out " +
      source.string());
  ASSERT_EQ(run.status, 0) << run.output;
  run = deltatune("train --task MRPC --method frozen --init-from " + (source / "delta").string() +
                  " --max-train-samples 32 --max-steps 2 --max-length 32 --out " + target.string());
  ASSERT_EQ(run.status, 0) << run.output;
  EXPECT_NE(run.output.find("encoder tensors copied into the task model"), std::string::npos)
      << run.output;
  // The delta holds more than what trained: RTE's biases came with the encoder.
  const json delta = read_json(target / "delta" / "delta.json");
  EXPECT_GT(delta["stored_values"].get<int64_t>(), delta["parameters"]["trainable"].get<int64_t>());
  // Applied to the base, the delta is the model that was trained: eval gives
  // the dev loss training reported, to the bit.
  const CliRun eval = deltatune("eval --json --delta " + (target / "delta").string());
  ASSERT_EQ(eval.status, 0) << eval.output;
  const json scored = json::parse(eval.output.substr(eval.output.find('{')));
  const json reported = read_json(target / "summary.json")["dev"];
  EXPECT_DOUBLE_EQ(scored["loss"].get<double>(), reported["loss"].get<double>());
  EXPECT_DOUBLE_EQ(scored["accuracy"].get<double>(), reported["accuracy"].get<double>());

  // A missing --init-from is named.
  run = deltatune("train --task MRPC --method frozen --init-from " +
                  (dir.path() / "nowhere").string() + " --max-steps 1 --out " +
                  (dir.path() / "bad").string());
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.output.find("nowhere"), std::string::npos) << run.output;
}

TEST(Transfer, EvalAlsoScoresAnotherTasksDevSplitAndRefusesOtherLabels) {
  ScratchDir dir;
  CliRun run = deltatune(
      "train --task RTE --method bitfit --eval-also QNLI --max-train-samples 16 --max-steps 1 "
      "--max-length 24 --out " +
      (dir.path() / "run").string());
  ASSERT_EQ(run.status, 0) << run.output;
  const json dev = read_json(dir.path() / "run" / "summary.json")["dev"];
  ASSERT_TRUE(dev.contains("QNLI_accuracy")) << dev.dump();
  EXPECT_GT(dev["QNLI_accuracy"].get<double>(), 0.3);
  EXPECT_LT(dev["QNLI_accuracy"].get<double>(), 0.7);

  run = deltatune("train --task RTE --eval-also CoLA --max-steps 1 --out " +
                  (dir.path() / "bad").string());
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.output.find("--eval-also CoLA: its labels (unacceptable, acceptable) are not "
                            "RTE's (entailment, not_entailment)"),
            std::string::npos)
      << run.output;
}

TEST(Transfer, SweepVariantsAreADimensionAndConfigDirExpands) {
  ScratchDir dir;
  std::ofstream(dir.path() / "heads.yaml") << R"(methods: [frozen]
tasks: [CoLA, RTE]
variants:
  from-a: {--init-from: "${CONFIG_DIR}/a/delta"}
  from-b: {--init-from: "${CONFIG_DIR}/b/delta"}
)";
  CliRun run = deltatune("sweep --dry-run " + (dir.path() / "heads.yaml").string());
  ASSERT_EQ(run.status, 0) << run.output;
  EXPECT_EQ(std::count(run.output.begin(), run.output.end(), '\n'), 4);
  const std::string canonical = fs::weakly_canonical(dir.path()).string();
  EXPECT_NE(run.output.find("--init-from " + canonical + "/b/delta"), std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("/RTE/frozen/from-b/seed0"), std::string::npos) << run.output;

  std::ofstream(dir.path() / "unset.yaml") << "methods: [bitfit]\ntasks: [RTE]\nflags: {--train: "
                                              "\"${DELTATUNE_NO_SUCH_VARIABLE}/t.tsv\"}\n";
  run = deltatune("sweep --dry-run " + (dir.path() / "unset.yaml").string());
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.output.find("${DELTATUNE_NO_SUCH_VARIABLE} is not set"), std::string::npos)
      << run.output;
}

}  // namespace
}  // namespace deltatune::test
