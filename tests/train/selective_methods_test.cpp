// Short real runs of the Fisher-selected and random-mask methods on
// all-MiniLM-L6-v2 and SST-2, each asserting the property that defines it.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "deltatune/data/glue.h"
#include "deltatune/methods/child_tuning_d.h"
#include "deltatune/methods/diff_pruning.h"
#include "deltatune/methods/method.h"
#include "deltatune/text/tokenizer.h"
#include "deltatune/train/task_model.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {
namespace fs = std::filesystem;

struct Data {
  data::TaskSpec task = data::find_glue_task("SST-2");
  data::EncodedDataset train, dev;
};

const Data& sst2_sample() {
  static const Data data = [] {
    Data d;
    auto tokenizer = text::load_tokenizer(test::minilm_dir());
    const fs::path glue = data::glue_dir_from_env();
    data::GlueReadOptions options;
    options.max_samples = 160;
    d.train = data::encode_dataset(data::read_glue(glue, d.task, "train", options), *tokenizer, 48);
    options.max_samples = 200;
    d.dev = data::encode_dataset(data::read_glue(glue, d.task, "dev", options), *tokenizer, 48);
    return d;
  }();
  return data;
}

TrainConfig short_run(double lr) {
  TrainConfig c;
  c.learning_rate = lr;
  c.batch_size = 16;
  c.epochs = 1;
  c.max_steps = 6;
  c.seed = 1;
  c.progress = false;
  return c;
}

// Entries of each parameter that differ from the base, as bool masks.
std::map<std::string, at::Tensor> changed_entries(const BaseModel& base,
                                                  model::SequenceClassifierImpl& model) {
  std::map<std::string, at::Tensor> changed;
  for (const auto& item : model.named_parameters(true)) {
    const std::string& name = item.key();
    if (name.rfind("classifier.", 0) == 0) continue;
    changed[name] = item.value().ne(base.checkpoint.at(name.substr(std::string("bert.").size())));
  }
  return changed;
}

TEST(SelectiveMethods, FishTrainsExactlyItsFisherTopSetAndItsSparseDeltaReproducesTheModel) {
  const Data& d = sst2_sample();
  BaseModel base = load_base(test::minilm_dir());
  auto task_model = make_task_model(base, 2, 1);
  auto method = methods::make_method("fish", {{"fisher_samples", 32}});
  method->attach(*task_model);
  TrainConfig config = short_run(5e-5);
  Trainer trainer(task_model, *method, d.task, config);
  TrainResult result = trainer.fit(d.train, d.dev);

  const auto masks = method->gradient_masks();
  int64_t total = 0, head = 0;
  for (const auto& item : task_model->named_parameters(true)) {
    total += item.value().numel();
    if (item.key().rfind("classifier.", 0) == 0) head += item.value().numel();
  }
  EXPECT_EQ(methods::count_selected(masks), std::llround(0.005 * total) - head);

  // The mask is the top set of a Fisher computed independently on a fresh model.
  auto fresh = make_task_model(base, 2, 1);
  fresh->eval();
  std::vector<std::pair<std::string, at::Tensor>> parameters;
  for (const auto& item : fresh->named_parameters(true))
    if (item.key().rfind("classifier.", 0) != 0) parameters.emplace_back(item.key(), item.value());
  data::BatchOptions one;
  one.batch_size = 1;
  one.shuffle = false;
  data::Batcher examples(d.train, one);
  methods::FisherOptions options;
  options.examples = 32;
  options.seed = 1;
  auto fisher = methods::diagonal_fisher(
      parameters, d.train.size(),
      [&](const std::vector<size_t>& rows) {
        auto batch = examples.make(rows);
        return std::make_pair(fresh->forward(batch.input), batch.labels);
      },
      options);
  const auto top = methods::top_k_masks(fisher, methods::count_selected(masks));
  int64_t changed_total = 0;
  for (const auto& [name, changed] : changed_entries(base, *task_model)) {
    EXPECT_TRUE(at::equal(masks.at(name), top.at(name))) << name;
    // Nothing outside the mask moved; inside it, whatever got a gradient did.
    EXPECT_EQ(changed.logical_and(masks.at(name).logical_not()).sum().item<int64_t>(), 0) << name;
    changed_total += changed.sum().item<int64_t>();
  }
  EXPECT_GT(changed_total, methods::count_selected(masks) / 2);

  methods::Delta delta = build_delta(base, *task_model, *method, d.task, 48, config, result);
  // Each tensor is stored sparse (8 bytes an entry) or, where that is not
  // smaller, dense: never more than the sparse cost of what changed.
  EXPECT_GE(delta.stored_values(), changed_total + head);
  EXPECT_LE(delta.stored_bytes(), 8 * (changed_total + head));
  auto restored = model_from_delta(base, delta);
  EXPECT_EQ(evaluate(*restored, d.task, d.dev, 64, false).metrics.main, result.best.metrics.main);
}

TEST(SelectiveMethods, ChildTuningDMasksTheTopShareOfEncoderLayersAndLetsTheRestTrain) {
  const Data& d = sst2_sample();
  BaseModel base = load_base(test::minilm_dir());
  auto task_model = make_task_model(base, 2, 1);
  auto method = methods::make_method("child-tuning-d", {{"reserve_p", 0.2}});
  method->attach(*task_model);
  Trainer trainer(task_model, *method, d.task, short_run(4e-5));
  trainer.fit(d.train, d.dev);

  const auto masks = method->gradient_masks();
  int64_t layer_total = 0;
  for (const auto& item : task_model->named_parameters(true))
    if (methods::ChildTuningD::scored(item.key())) {
      layer_total += item.value().numel();
      EXPECT_TRUE(masks.count(item.key())) << item.key();
    }
  EXPECT_EQ(methods::count_selected(masks), std::llround(0.2 * layer_total));
  for (const auto& [name, changed] : changed_entries(base, *task_model)) {
    if (masks.count(name)) {
      EXPECT_EQ(changed.logical_and(masks.at(name).logical_not()).sum().item<int64_t>(), 0) << name;
    } else if (name.find("position_embeddings") == std::string::npos &&
               name.find("token_type") == std::string::npos) {
      EXPECT_GT(changed.sum().item<int64_t>(), 0) << name << " (always trains) did not change";
    }
  }
}

TEST(SelectiveMethods, ChildTuningFKeepsAShareReserveOfGradientEntriesScaledUp) {
  const Data& d = sst2_sample();
  BaseModel base = load_base(test::minilm_dir());
  auto task_model = make_task_model(base, 2, 1);
  auto method = methods::make_method("child-tuning-f", {{"reserve_p", 0.25}});
  method->attach(*task_model);
  data::BatchOptions options;
  options.batch_size = 16;
  options.shuffle = false;
  data::Batcher batcher(d.train, options);
  auto batch = batcher.make(batcher.plan(0).batches.front());
  task_model->train();
  at::cross_entropy_loss(task_model->forward(batch.input), batch.labels).backward();
  std::map<std::string, at::Tensor> before;
  for (const auto& item : task_model->named_parameters(true))
    before[item.key()] = item.value().grad().clone();
  at::manual_seed(7);
  method->on_backward(*task_model, 0);
  int64_t kept = 0, nonzero = 0;
  for (const auto& item : task_model->named_parameters(true)) {
    const at::Tensor& g0 = before.at(item.key());
    const at::Tensor g = item.value().grad();
    const at::Tensor live = g0.ne(0);
    const at::Tensor survived = g.ne(0);
    EXPECT_TRUE(at::allclose(g.masked_select(survived), g0.masked_select(survived) / 0.25));
    kept += survived.logical_and(live).sum().item<int64_t>();
    nonzero += live.sum().item<int64_t>();
  }
  ASSERT_GT(nonzero, 1000000);
  EXPECT_NEAR(static_cast<double>(kept) / nonzero, 0.25, 0.002);
}

TEST(SelectiveMethods, DiffPruningEndsWithExactlyTheTargetNumberOfChangedEntries) {
  const Data& d = sst2_sample();
  BaseModel base = load_base(test::minilm_dir());
  auto task_model = make_task_model(base, 2, 1);
  methods::DiffPruningOptions options;
  options.density = 0.001;
  methods::DiffPruning method(options);
  method.attach(*task_model);

  // Stage 1 at a high rate so that the diffs and log-alphas move in 6 steps.
  TrainConfig relaxed = short_run(1e-3);
  relaxed.batch_size = 8;
  TrainResult first = Trainer(task_model, method, d.task, relaxed).fit(d.train, d.dev);
  EXPECT_GT(first.steps, 0);
  int64_t moved = 0;
  for (const auto& [name, changed] : changed_entries(base, *task_model))
    moved += changed.sum().item<int64_t>();
  EXPECT_GT(moved, 1000000);  // relaxed: (nearly) every entry carries a diff

  const int64_t k = method.project(*task_model);
  int64_t non_head = 0;
  for (const auto& item : task_model->named_parameters(true))
    if (item.key().rfind("classifier.", 0) != 0) non_head += item.value().numel();
  EXPECT_EQ(k, std::llround(0.001 * non_head));
  auto count_changed = [&] {
    int64_t n = 0;
    for (const auto& [name, changed] : changed_entries(base, *task_model)) {
      EXPECT_EQ(
          changed.logical_and(method.gradient_masks().at(name).logical_not()).sum().item<int64_t>(),
          0)
          << name;
      n += changed.sum().item<int64_t>();
    }
    return n;
  };
  EXPECT_EQ(count_changed(), k);

  TrainConfig fixed = short_run(5e-5);
  TrainResult last = Trainer(task_model, method, d.task, fixed).fit(d.train, d.dev);
  EXPECT_EQ(last.steps, 6);
  EXPECT_EQ(count_changed(), k);
  methods::Delta delta = build_delta(base, *task_model, method, d.task, 48, fixed, last);
  auto restored = model_from_delta(base, delta);
  EXPECT_EQ(evaluate(*restored, d.task, d.dev, 64, false).metrics.main, last.best.metrics.main);
}

}  // namespace
}  // namespace deltatune::train
