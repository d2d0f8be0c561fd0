// Real fine-tuning of all-MiniLM-L6-v2 on GLUE data, short enough for CI.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "deltatune/data/glue.h"
#include "deltatune/error.h"
#include "deltatune/io/safetensors.h"
#include "deltatune/methods/method.h"
#include "deltatune/text/tokenizer.h"
#include "deltatune/train/optimizer.h"
#include "deltatune/train/task_model.h"
#include "deltatune/train/trainer.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {
namespace fs = std::filesystem;

struct Sst2 {
  data::TaskSpec task = data::find_glue_task("SST-2");
  data::EncodedDataset train, dev;
  double majority = 0;
};

const Sst2& sst2() {
  static const Sst2 data = [] {
    Sst2 d;
    auto tokenizer = text::load_tokenizer(test::minilm_dir());
    const fs::path glue = data::glue_dir_from_env();
    data::GlueReadOptions options;
    options.max_samples = 2000;
    d.train = data::encode_dataset(data::read_glue(glue, d.task, "train", options), *tokenizer, 64);
    d.dev = data::encode_dataset(data::read_glue(glue, d.task, "dev"), *tokenizer, 64);
    int64_t positives = 0;
    for (int64_t label : d.dev.labels) positives += label;
    d.majority = std::max(positives, static_cast<int64_t>(d.dev.size()) - positives) /
                 static_cast<double>(d.dev.size());
    return d;
  }();
  return data;
}

// The first n examples of SST-2's dev split.
data::EncodedDataset first_dev_examples(size_t n) {
  data::EncodedDataset part = sst2().dev;
  part.encodings.resize(n);
  part.labels.resize(n);
  part.lines.resize(n);
  return part;
}

TrainConfig quick_config(int64_t steps) {
  TrainConfig c;
  c.learning_rate = 1e-3;
  c.batch_size = 8;
  c.epochs = 1;
  c.max_steps = steps;
  c.seed = 3;
  c.progress = false;
  return c;
}

TEST(Training, BitFitLearnsSst2ChangesOnlyBiasesAndHeadAndTheDeltaReproducesIt) {
  const Sst2& d = sst2();
  BaseModel base = load_base(test::minilm_dir());
  auto task_model = make_task_model(base, 2, 3);
  auto method = methods::make_method("bitfit");
  method->attach(*task_model);
  TrainConfig config = quick_config(250);
  Trainer trainer(task_model, *method, d.task, config);
  TrainResult result = trainer.fit(d.train, d.dev);
  EXPECT_GT(result.best.metrics.main, d.majority + 0.08)
      << "accuracy " << result.best.metrics.main << " vs majority " << d.majority;

  // Every weight matrix and embedding is bit-identical to the base.
  for (const auto& item : task_model->named_parameters()) {
    const std::string& name = item.key();
    if (name.rfind("classifier.", 0) == 0) continue;
    const at::Tensor& original = base.checkpoint.at(name.substr(std::string("bert.").size()));
    const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (is_bias) {
      EXPECT_FALSE(at::equal(item.value(), original)) << name << " did not train";
    } else {
      EXPECT_TRUE(at::equal(item.value(), original)) << name << " changed";
    }
  }

  // The stored delta alone reproduces the metric exactly.
  methods::Delta delta = build_delta(base, *task_model, *method, d.task, 64, config, result);
  EXPECT_LT(delta.stored_bytes(), 120 * 1024);
  test::ScratchDir tmp;
  delta.save(tmp.path() / "delta");
  auto restored = model_from_delta(base, methods::Delta::load(tmp.path() / "delta"));
  Evaluation again = evaluate(*restored, d.task, d.dev, 64, false);
  EXPECT_EQ(again.metrics.main, result.best.metrics.main);
}

// The inference path keeps packed copies of the weights, keyed on each
// tensor's version. An optimizer step between two evaluations must be seen by
// the second (the trainer evaluates every eval_every steps): the evaluation
// after the step equals one made after every tensor's version was advanced by
// hand, which drops every packed copy. (AdamW's one-pass update once wrote
// without advancing versions: Diff Pruning's recorded dev loss was then not
// its delta's.)
TEST(Training, AnEvaluationAfterAnOptimizerStepSeesTheStepsWeights) {
  const Sst2& d = sst2();
  const data::EncodedDataset dev = first_dev_examples(96);
  BaseModel base = load_base(test::minilm_dir());
  auto task_model = make_task_model(base, 2, 3);
  auto method = methods::make_method("full");
  method->attach(*task_model);
  const Evaluation before = evaluate(*task_model, d.task, dev, 32, false);
  AdamW optimizer(method->parameter_groups(*task_model, 1e-3, 0.01));
  at::manual_seed(5);
  for (auto& p : task_model->parameters())
    if (p.requires_grad()) p.mutable_grad() = at::randn(p.sizes()) * 0.01;
  optimizer.step();
  const Evaluation after = evaluate(*task_model, d.task, dev, 32, false);
  {
    at::NoGradGuard no_grad;
    for (auto& p : task_model->parameters()) p.unsafeGetTensorImpl()->bump_version();
  }
  const Evaluation uncached = evaluate(*task_model, d.task, dev, 32, false);
  EXPECT_NE(after.loss, before.loss) << "the step changed no prediction";
  EXPECT_EQ(after.loss, uncached.loss)
      << "the evaluation after the step read weights from before it";
}

TEST(Training, ResumingFromACheckpointEqualsAnUninterruptedRun) {
  const Sst2& d = sst2();
  BaseModel base = load_base(test::minilm_dir());
  auto run = [&](const fs::path& dir, int64_t steps, bool resume) {
    auto task_model = make_task_model(base, 2, 3);
    auto method = methods::make_method("bitfit");
    method->attach(*task_model);
    TrainConfig config = quick_config(steps);
    config.checkpoint_every = 10;
    config.run_dir = dir;
    Trainer trainer(task_model, *method, d.task, config);
    trainer.fit(d.train, d.dev, resume);
    // The last step's parameters (the checkpoint), not the kept best.
    return io::SafetensorsFile::open(dir / "checkpoint" / "state.safetensors").load_all();
  };
  test::ScratchDir straight, interrupted;
  auto uninterrupted = run(straight.path(), 20, false);
  run(interrupted.path(), 10, false);
  auto resumed = run(interrupted.path(), 20, true);
  size_t compared = 0;
  for (const auto& [name, value] : uninterrupted) {
    if (name.rfind("model.", 0) != 0) continue;
    EXPECT_TRUE(at::equal(value, resumed.at(name))) << name;
    ++compared;
  }
  EXPECT_EQ(compared, 52u);  // BitFit's trainable tensors on MiniLM
}

TEST(Training, AnOtherEvaluationSplitIsReportedBesideDevAsMnliMismatchedIs) {
  const Sst2& d = sst2();
  // A second split: the first 300 dev sentences, standing in for dev_mismatched.
  const data::EncodedDataset other = first_dev_examples(300);
  BaseModel base = load_base(test::minilm_dir());
  auto task_model = make_task_model(base, 2, 3);
  auto method = methods::make_method("bitfit");
  method->attach(*task_model);
  Trainer trainer(task_model, *method, d.task, quick_config(20));
  trainer.add_eval_split("dev_other", other);
  TrainResult result = trainer.fit(d.train, d.dev);

  const auto& values = result.best.metrics.values;
  ASSERT_TRUE(values.count("dev_other_accuracy"));
  // The reported numbers are those of the kept model on each split.
  const Evaluation on_dev = evaluate(*task_model, d.task, d.dev, 64, false);
  const Evaluation on_other = evaluate(*task_model, d.task, other, 64, false);
  EXPECT_DOUBLE_EQ(values.at("accuracy"), on_dev.metrics.main);
  EXPECT_DOUBLE_EQ(result.best.metrics.main, on_dev.metrics.main);
  EXPECT_DOUBLE_EQ(values.at("dev_other_accuracy"), on_other.metrics.main);
  EXPECT_NE(on_dev.examples, on_other.examples);
}

TEST(Training, RefusesADeltaMadeOnAnotherBase) {
  BaseModel base = load_base(test::minilm_dir());
  methods::Delta delta;
  delta.meta = {{"base_model", {{"name", "other"}, {"checksum", std::string(64, '0')}}},
                {"num_labels", 2}};
  try {
    model_from_delta(base, delta);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("delta was made on base 'other'"), std::string::npos);
  }
}

}  // namespace
}  // namespace deltatune::train
