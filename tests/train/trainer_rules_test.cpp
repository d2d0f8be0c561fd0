// The trainer's bookkeeping rules, each on a short real run of
// all-MiniLM-L6-v2 on SST-2: gradient accumulation's step count, window
// mean and later-stage start; what a fresh run clears; what --resume checks;
// the position-table check.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "deltatune/io/atomic_file.h"
#include "deltatune/methods/method.h"
#include "deltatune/train/task_model.h"
#include "glue_sample.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

TrainConfig quiet(int64_t batch_size) {
  TrainConfig c;
  c.learning_rate = 1e-3;
  c.batch_size = batch_size;
  c.epochs = 1;
  c.seed = 2;
  c.progress = false;
  return c;
}

std::vector<json> records(const fs::path& run_dir, const std::string& split) {
  std::vector<json> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    json record = json::parse(line);
    if (record.value("split", "") == split) out.push_back(record);
  }
  return out;
}

struct BitFitRun {
  BaseModel& base;
  model::SequenceClassifier model{nullptr};
  std::unique_ptr<methods::Method> method;
  explicit BitFitRun(BaseModel& b) : base(b) {
    model = make_task_model(base, 2, 2);
    method = methods::make_method("bitfit");
    method->attach(*model);
  }
  TrainResult fit(const TrainConfig& config, const data::EncodedDataset& train,
                  const data::EncodedDataset& dev, bool resume = false) {
    return Trainer(model, *method, data::find_glue_task("SST-2"), config).fit(train, dev, resume);
  }
};

// 80 examples in batches of 8: 10 batches an epoch, which accumulation over 4 does not divide.
TEST(TrainerRules, AccumulationStepsOnEachEpochsPartialWindowAndRunsEveryEpoch) {
  const test::GlueSample& d = test::sst2_sample(80, 40);
  BaseModel base = load_base(test::minilm_dir());
  test::ScratchDir dir;
  TrainConfig config = quiet(8);
  config.epochs = 3;
  config.gradient_accumulation = 4;
  config.run_dir = dir.path();
  EXPECT_EQ(planned_steps(d.train, config), 9);  // ceil(10 / 4) = 3 steps an epoch
  TrainResult result = BitFitRun(base).fit(config, d.train, d.dev);
  EXPECT_EQ(result.steps, 9);
  const auto evaluations = records(dir.path(), "dev");
  ASSERT_EQ(evaluations.size(), 3u);  // all three epochs ran
  for (size_t e = 0; e < 3; ++e) {
    EXPECT_EQ(evaluations[e]["step"], 3 * (e + 1));
    EXPECT_DOUBLE_EQ(evaluations[e]["epoch"].get<double>(), static_cast<double>(e + 1));
  }
}

// A window of 2 batches under accumulation 4 (the epoch's partial last
// window) must take the same step as a full window of 2 under accumulation 2:
// its loss is the mean over the batches it has. A large Adam epsilon makes the
// update proportional to the gradient, so a halved gradient would show.
TEST(TrainerRules, APartialWindowsLossIsTheMeanOverItsOwnBatches) {
  const test::GlueSample& d = test::sst2_sample(16, 40);
  BaseModel base = load_base(test::minilm_dir());
  auto run = [&](int64_t accumulation) {
    BitFitRun r(base);
    TrainConfig config = quiet(8);
    config.gradient_accumulation = accumulation;
    config.learning_rate = 10;
    config.adam_eps = 1e3;
    config.max_grad_norm = 0;
    config.keep_best = false;
    TrainResult result = r.fit(config, d.train, d.dev);
    EXPECT_EQ(result.steps, 1);
    std::map<std::string, at::Tensor> values;
    for (const auto& item : r.model->named_parameters(true))
      if (item.value().requires_grad()) values[item.key()] = item.value().detach().clone();
    return values;
  };
  auto partial = run(4), full = run(2);
  ASSERT_EQ(partial.size(), full.size());
  size_t moved = 0;  // (key biases get no gradient: softmax ignores a shift per query)
  for (const auto& [name, value] : full) {
    if (name.rfind("classifier.", 0) != 0)
      moved += !at::equal(value, base.checkpoint.at(name.substr(std::string("bert.").size())));
    EXPECT_TRUE(at::allclose(partial.at(name), value, 0, 1e-9)) << name;
  }
  EXPECT_GT(moved, full.size() / 2);
}

// A later stage (FAR after priming) continues the data order at the batch
// after the earlier stage's last step, also across epochs under accumulation.
// With lr 0 and no dropout the model never changes, so each step's logged loss
// names the batches it saw.
TEST(TrainerRules, ALaterStageStartsAtTheBatchAfterThePriorSteps) {
  const test::GlueSample& d = test::sst2_sample(80, 40);
  BaseModel base = load_base(test::minilm_dir());
  override_dropout(base, 0.0);
  TrainConfig config = quiet(8);
  config.learning_rate = 0;
  config.epochs = 3;
  config.gradient_accumulation = 4;
  config.log_every = 1;
  test::ScratchDir straight, staged_first, staged_rest;
  config.run_dir = straight.path();
  BitFitRun(base).fit(config, d.train, d.dev);
  const auto uninterrupted = records(straight.path(), "train");
  ASSERT_EQ(uninterrupted.size(), 9u);

  BitFitRun staged(base);
  TrainConfig first = config, rest = config;
  first.run_dir = staged_first.path();
  first.max_steps = 4;  // one epoch (3 steps) and one step into the second
  first.schedule_steps = 9;
  staged.fit(first, d.train, d.dev);
  rest.run_dir = staged_rest.path();
  rest.prior_steps = 4;
  rest.max_steps = 5;
  rest.schedule_steps = 9;
  staged.fit(rest, d.train, d.dev);
  const auto continued = records(staged_rest.path(), "train");
  ASSERT_EQ(continued.size(), 5u);
  for (size_t j = 0; j < 5; ++j)
    EXPECT_DOUBLE_EQ(continued[j]["loss"].get<double>(), uninterrupted[4 + j]["loss"].get<double>())
        << "step " << 5 + j;
}

// Batches of 8, a checkpoint every 2 steps into `dir`.
TrainConfig checkpointed(const test::ScratchDir& dir) {
  TrainConfig config = quiet(8);
  config.run_dir = dir.path();
  config.checkpoint_every = 2;
  return config;
}

TEST(TrainerRules, AFreshRunClearsTheDirectorysLogAndStaleCheckpoint) {
  const test::GlueSample& d = test::sst2_sample(32, 40);
  BaseModel base = load_base(test::minilm_dir());
  test::ScratchDir dir;
  TrainConfig config = checkpointed(dir);
  BitFitRun(base).fit(config, d.train, d.dev);
  ASSERT_TRUE(fs::exists(dir.path() / "checkpoint" / "state.json"));
  config.checkpoint_every = 0;
  BitFitRun(base).fit(config, d.train, d.dev);
  EXPECT_EQ(records(dir.path(), "summary").size(), 1u);  // not appended to the first run's
  EXPECT_FALSE(fs::exists(dir.path() / "checkpoint"));   // nothing stale to --resume from
}

TEST(TrainerRules, ResumeRefusesACheckpointOfAnotherPlanNamingWhatDiffers) {
  const test::GlueSample& d = test::sst2_sample(64, 40);
  const test::GlueSample& fewer = test::sst2_sample(48, 40);
  BaseModel base = load_base(test::minilm_dir());
  test::ScratchDir dir;
  TrainConfig config = checkpointed(dir);
  config.max_steps = 4;
  BitFitRun(base).fit(config, d.train, d.dev);

  TrainConfig other_batch = config;
  other_batch.batch_size = 16;
  std::string message =
      test::error_of([&] { BitFitRun(base).fit(other_batch, d.train, d.dev, true); });
  EXPECT_NE(message.find("batch_size 8 in the checkpoint, 16 now"), std::string::npos) << message;
  TrainConfig other_seed = config;
  other_seed.seed = 3;
  other_seed.gradient_accumulation = 2;
  message = test::error_of([&] { BitFitRun(base).fit(other_seed, d.train, d.dev, true); });
  EXPECT_NE(message.find("seed"), std::string::npos) << message;
  EXPECT_NE(message.find("gradient_accumulation"), std::string::npos) << message;
  message = test::error_of([&] { BitFitRun(base).fit(config, fewer.train, d.dev, true); });
  EXPECT_NE(message.find("train_data"), std::string::npos) << message;
  message = test::error_of([&] {
    auto lora = methods::make_method("lora");
    auto model = make_task_model(base, 2, 2);
    lora->attach(*model);
    Trainer(model, *lora, d.task, config).fit(d.train, d.dev, true);
  });
  EXPECT_NE(message.find("method"), std::string::npos) << message;
  // The same plan resumes: a log interval may differ, and under a constant
  // schedule so may the run's length.
  TrainConfig same = config;
  same.log_every = 7;
  same.max_steps = 6;
  EXPECT_EQ(BitFitRun(base).fit(same, d.train, d.dev, true).steps, 6);
}

TEST(TrainerRules, MaxLengthAndAMethodsAddedPositionsMustFitThePositionTable) {
  BaseModel base = load_base(test::minilm_dir());  // 512 positions
  auto prompt = methods::make_method("prompt-tuning", {{"length", 20}});
  std::string message = test::error_of([&] { check_sequence_fits(base.config, *prompt, 512); });
  EXPECT_NE(message.find("--max-length 512 plus 20 positions of prompt-tuning needs 532"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("lower --max-length to 492"), std::string::npos) << message;
  EXPECT_NO_THROW(check_sequence_fits(base.config, *prompt, 492));
  auto shifted = methods::make_method("prefix-tuning", {{"length", 10}, {"positions", "shifted"}});
  EXPECT_THROW(check_sequence_fits(base.config, *shifted, 510), Error);
  auto unchanged = methods::make_method("prefix-tuning", {{"length", 10}});
  EXPECT_NO_THROW(check_sequence_fits(base.config, *unchanged, 512));
  // RoBERTa's table keeps pad_token_id + 1 positions for no token.
  const auto roberta =
      model::EncoderConfig::from_file(test::fixtures() / "model" / "tiny_roberta" / "config.json");
  auto bitfit = methods::make_method("bitfit");
  EXPECT_NO_THROW(check_sequence_fits(roberta, *bitfit, roberta.max_sequence_tokens()));
  EXPECT_THROW(check_sequence_fits(roberta, *bitfit, roberta.max_position_embeddings), Error);

  // The trainer refuses before its first step, not at the first long batch.
  const test::GlueSample& d = test::sst2_sample(16, 16);
  data::EncodedDataset long_train = d.train;
  long_train.max_length = 512;
  auto model = make_task_model(base, 2, 0);
  prompt->attach(*model);
  TrainConfig config = quiet(8);
  message = test::error_of([&] { Trainer(model, *prompt, d.task, config).fit(long_train, d.dev); });
  EXPECT_NE(message.find("needs 532 positions"), std::string::npos) << message;
}

// Trains the classifier head alone and records, before each training
// forward pass, how many trainable parameters still hold a gradient.
class HeadOnlyWatchingGradients : public methods::Method {
 public:
  std::vector<int64_t> held_at_forward;
  std::string name() const override { return "head-only-watching-gradients"; }
  nlohmann::json config() const override { return json::object(); }
  std::string describe() const override { return name(); }
  void attach(model::SequenceClassifierImpl& model) override {
    for (auto& item : model.named_parameters(true))
      item.value().set_requires_grad(item.key().rfind("classifier.", 0) == 0);
  }
  void before_forward(model::SequenceClassifierImpl& model, bool training) override {
    if (!training) return;
    int64_t held = 0;
    for (auto& item : model.named_parameters(true)) held += item.value().grad().defined();
    held_at_forward.push_back(held);
  }
};

// A step frees its gradients (torch's zero_grad(set_to_none=True)): the next
// forward pass's activations never sit beside a full set of stale ones.
TEST(TrainerRules, NoGradientOutlivesItsStep) {
  const test::GlueSample& d = test::sst2_sample(32, 40);
  BaseModel base = load_base(test::minilm_dir());
  model::SequenceClassifier model = make_task_model(base, 2, 2);
  HeadOnlyWatchingGradients method;
  method.attach(*model);
  TrainConfig config = quiet(8);
  config.epochs = 2;
  config.gradient_accumulation = 2;
  const TrainResult result =
      Trainer(model, method, data::find_glue_task("SST-2"), config).fit(d.train, d.dev);
  EXPECT_EQ(result.steps, 4);
  int64_t trained = 0;
  for (auto& item : model->named_parameters(true)) trained += item.value().requires_grad();
  ASSERT_GT(trained, 0);
  // 8 batches: the second of each accumulation window sees the first's.
  ASSERT_EQ(method.held_at_forward.size(), 8u);
  for (size_t b = 0; b < 8; ++b)
    EXPECT_EQ(method.held_at_forward[b], b % 2 == 0 ? 0 : trained) << "batch " << b;
}

}  // namespace
}  // namespace deltatune::train
