// The trainer against PyTorch step by step: from the same seed deltatune starts
// from the same head and, where LibTorch's dropout kernel is PyTorch's, draws
// the same dropout masks, so the losses of every step agree with the HF
// reference (fixture: tools/make_trajectory_fixture.py).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <torch/version.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "deltatune/data/glue.h"
#include "deltatune/error.h"
#include "deltatune/io/safetensors.h"
#include "deltatune/methods/method.h"
#include "deltatune/text/tokenizer.h"
#include "deltatune/train/task_model.h"
#include "glue_sample.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

const json& fixture() {
  static const json j = [] {
    std::ifstream in(fs::path(DELTATUNE_FIXTURES) / "train" / "reference_trajectory.json");
    return json::parse(in);
  }();
  return j;
}

// The fixture's seeded SST-2 subset, tokenized once.
const data::EncodedDataset& fixture_train_set() {
  static const data::EncodedDataset train = [] {
    const json& s = fixture()["settings"];
    data::GlueReadOptions options;
    options.max_samples = s["max_train_samples"].get<size_t>();
    options.seed = s["seed"].get<uint64_t>();
    auto tokenizer = text::load_tokenizer(test::minilm_dir());
    const data::TaskSpec task = data::find_glue_task(s["task"].get<std::string>());
    return data::encode_dataset(data::read_glue(data::glue_dir_from_env(), task, "train", options),
                                *tokenizer, s["max_length"].get<size_t>());
  }();
  return train;
}

// The fixture's run: BitFit's recipe, one loss line per step; `before_fit`
// runs between the model's set-up and training.
std::vector<double> train_losses(
    std::optional<double> dropout, const std::function<void()>& before_fit = [] {}) {
  const json& s = fixture()["settings"];
  const uint64_t seed = s["seed"].get<uint64_t>();
  const data::TaskSpec task = data::find_glue_task(s["task"].get<std::string>());
  static const BaseModel loaded = load_base(test::minilm_dir());
  BaseModel base = loaded;  // shares the checkpoint's tensors; only the config changes
  if (dropout) override_dropout(base, *dropout);
  auto task_model = make_task_model(base, 2, seed);
  auto method = methods::make_method(s["method"].get<std::string>());
  method->attach(*task_model);
  before_fit();

  test::ScratchDir run;
  TrainConfig config;
  config.learning_rate = s["lr"].get<double>();
  config.batch_size = s["batch_size"].get<int64_t>();
  config.epochs = 1;
  config.max_steps = s["max_steps"].get<int64_t>();
  config.schedule = "constant";
  config.seed = seed;
  config.log_every = 1;
  config.progress = false;
  config.run_dir = run.path();
  Trainer trainer(task_model, *method, task, config);
  trainer.fit(fixture_train_set(), test::sst2_sample(16, 16).dev);

  std::vector<double> losses;
  std::ifstream in(run.path() / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    json record = json::parse(line);
    if (record.value("split", "") == "train") losses.push_back(record["loss"].get<double>());
  }
  return losses;
}

void expect_same_losses(const std::vector<double>& ours, const json& reference) {
  ASSERT_EQ(ours.size(), reference.size());
  for (size_t i = 0; i < ours.size(); ++i)
    EXPECT_NEAR(ours[i], reference[i].get<double>(), 1e-4) << "step " << i + 1;
}

TEST(TrajectoryParity, WithoutDropoutEveryStepsLossEqualsPyTorchs) {
  // Same head (the seed's first normals), same batches, same AdamW steps.
  expect_same_losses(train_losses(0.0), fixture()["losses_without_dropout"]);
}

TEST(TrajectoryParity, WithDropoutEveryStepsLossEqualsPyTorchsOnTheSameKernels) {
  const json& f = fixture();
  const std::string version =
      std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + ".";
  if (f["torch"].get<std::string>().rfind(version, 0) != 0 || f["mkl"].get<bool>() != at::hasMKL())
    GTEST_SKIP() << "dropout masks come from bernoulli_, whose kernel differs between this "
                 << "LibTorch and the fixture's torch " << f["torch"].get<std::string>();
  expect_same_losses(train_losses(std::nullopt), f["losses_with_dropout"]);
}

TEST(TrajectoryParity, RandomNumbersDrawnBeforeTrainingDoNotChangeTheDropoutMasks) {
  const std::vector<double> plain = train_losses(std::nullopt);
  const std::vector<double> after_draws = train_losses(std::nullopt, [] { at::rand({1000}); });
  ASSERT_EQ(plain.size(), after_draws.size());
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_EQ(plain[i], after_draws[i]) << i;
}

TEST(StartingValues, AreCopiedByNameAndAWrongNameOrShapeChangesNothing) {
  BaseModel base = load_base(test::minilm_dir());
  auto task_model = make_task_model(base, 3, 0);
  at::Tensor head = at::full({3, 384}, 0.25);
  test::ScratchDir dir;
  io::save_safetensors(dir.path() / "head.safetensors",
                       {{"classifier.weight", head}, {"classifier.bias", at::ones({3})}});
  EXPECT_EQ(load_starting_values(*task_model, dir.path() / "head.safetensors").size(), 2u);
  auto parameters = task_model->named_parameters(true);
  EXPECT_TRUE(at::equal(*parameters.find("classifier.weight"), head));
  EXPECT_TRUE(at::equal(*parameters.find("classifier.bias"), at::ones({3})));

  io::save_safetensors(dir.path() / "bad_name.safetensors",
                       {{"classifier.bias", at::zeros({3})}, {"classifier.wieght", head}});
  EXPECT_NE(test::error_of([&] {
              load_starting_values(*task_model, dir.path() / "bad_name.safetensors");
            }).find("'classifier.wieght' is not a parameter"),
            std::string::npos);
  io::save_safetensors(
      dir.path() / "bad_shape.safetensors",
      {{"classifier.bias", at::zeros({3})}, {"classifier.weight", at::ones({2, 384})}});
  EXPECT_NE(test::error_of([&] {
              load_starting_values(*task_model, dir.path() / "bad_shape.safetensors");
            }).find("has shape [2, 384], the task model's is [3, 384]"),
            std::string::npos);
  // Neither failed file changed the bias it also held.
  EXPECT_TRUE(at::equal(*parameters.find("classifier.bias"), at::ones({3})));
}

}  // namespace
}  // namespace deltatune::train
