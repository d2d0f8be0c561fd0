// Short real runs of the Fisher-selected and random-mask methods on
// all-MiniLM-L6-v2 and SST-2, each asserting the property that defines it.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "deltatune/data/glue.h"
#include "deltatune/methods/child_tuning_d.h"
#include "deltatune/methods/diff_pruning.h"
#include "deltatune/methods/far.h"
#include "deltatune/methods/method.h"
#include "deltatune/text/tokenizer.h"
#include "deltatune/train/task_model.h"
#include "glue_sample.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {
namespace fs = std::filesystem;

using Data = test::GlueSample;

const Data& sst2_sample() { return test::sst2_sample(160, 200); }

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

TEST(SelectiveMethods, ChildTuningDMasksTheTopShareOfEncoderLayersAndDecaysEveryWeightAsItsRecipe) {
  const Data& d = sst2_sample();
  BaseModel base = load_base(test::minilm_dir());
  auto task_model = make_task_model(base, 2, 1);
  methods::ChildTuningD method(0.2, 16, 1.0);
  method.attach(*task_model);
  EXPECT_THROW(method.masks(), Error);  // before prepare() chose them
  TrainConfig config = short_run(1e-3);
  config.weight_decay = 0.1;
  TrainResult result = Trainer(task_model, method, d.task, config).fit(d.train, d.dev);
  ASSERT_EQ(result.steps, 6);

  const auto& masks = method.masks();
  int64_t layer_total = 0;
  for (const auto& item : task_model->named_parameters(true))
    if (methods::ChildTuningD::scored(item.key())) {
      layer_total += item.value().numel();
      EXPECT_TRUE(masks.count(item.key())) << item.key();
    }
  EXPECT_EQ(methods::count_selected(masks), std::llround(0.2 * layer_total));
  auto params = task_model->named_parameters(true);
  int64_t decayed_tensors = 0;
  for (const auto& [name, changed] : changed_entries(base, *task_model)) {
    if (!masks.count(name)) {
      if (name.find("position_embeddings") == std::string::npos &&
          name.find("token_type") == std::string::npos) {
        EXPECT_GT(changed.sum().item<int64_t>(), 0) << name << " (always trains) did not change";
      }
      continue;
    }
    // Outside the mask only decoupled weight decay moves an entry, as in
    // ChildTuningAdamW: w <- w (1 - lr wd) per step on the decay group
    // (constant schedule), nothing at all on biases and LayerNorm weights.
    const at::Tensor outside = masks.at(name).logical_not();
    const at::Tensor initial = base.checkpoint.at(name.substr(std::string("bert.").size()));
    const bool decays =
        name.find(".bias") == std::string::npos && name.find("LayerNorm.") == std::string::npos;
    at::Tensor expected = initial.clone();
    if (decays) {
      for (int64_t step = 0; step < result.steps; ++step) expected.mul_(1 - 1e-3 * 0.1);
      ++decayed_tensors;
    }
    EXPECT_TRUE(
        at::equal(params[name].detach().masked_select(outside), expected.masked_select(outside)))
        << name;
  }
  EXPECT_GT(decayed_tensors, 0);
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
  method->before_step(*task_model, 0);
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
  const at::Tensor next_draw = at::rand({4});

  // Exactly ATen's bernoulli_ draws from the same seed, in the same order,
  // and the generator left where they leave it.
  at::manual_seed(7);
  for (const auto& item : task_model->named_parameters(true)) {
    const at::Tensor& g0 = before.at(item.key());
    const at::Tensor mask = at::empty(g0.sizes(), g0.options()).bernoulli_(0.25);
    EXPECT_TRUE(at::equal(item.value().grad(), g0 * mask.div_(0.25))) << item.key();
  }
  EXPECT_TRUE(at::equal(at::rand({4}), next_draw));
}

// A MiniLM task model with Diff Pruning (density 0.1%) attached, and stage
// 1's settings at a rate high enough for the diffs and log-alphas to move in
// a few steps.
struct DiffPruningSetUp {
  BaseModel base = load_base(test::minilm_dir());
  model::SequenceClassifier task_model = make_task_model(base, 2, 1);
  methods::DiffPruning method{methods::DiffPruningOptions{0.001}};
  TrainConfig relaxed;
  explicit DiffPruningSetUp(double lr) : relaxed(short_run(lr)) {
    method.attach(*task_model);
    relaxed.batch_size = 8;
  }
};

TEST(SelectiveMethods, DiffPruningEndsWithExactlyTheTargetNumberOfChangedEntries) {
  const Data& d = sst2_sample();
  DiffPruningSetUp set_up(1e-3);
  BaseModel& base = set_up.base;
  model::SequenceClassifier& task_model = set_up.task_model;
  methods::DiffPruning& method = set_up.method;
  TrainConfig& relaxed = set_up.relaxed;
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

// Stage 1's gates and gradient folds run as one pass each over the
// parameters; their values are the ATen composition's bit for bit: the
// sampled hard-concrete gate z, the parameter θ_0 + z w, and the gradients
// of w and log-alpha (written, then accumulated over a second micro-batch),
// with the L0 penalty's term added as before. Gates span both clamped ends.
TEST(SelectiveMethods, DiffPruningGatesAndGradientFoldsAreTheCompositionBitForBit) {
  DiffPruningSetUp set_up(1e-3);
  model::SequenceClassifierImpl& model = *set_up.task_model;
  methods::DiffPruning& method = set_up.method;
  const methods::DiffPruningOptions options{0.001};
  const double span = options.right - options.left;
  std::vector<std::string> names;
  std::vector<at::Tensor> diffs, alphas, bases, parameters;
  for (const auto& group : method.parameter_groups(model, 1e-3, 0.0)) {
    if (group.label != "diff" && group.label != "log_alpha") continue;
    for (size_t i = 0; i < group.parameters.size(); ++i) {
      if (group.label == "diff") {
        names.push_back(group.names[i].substr(6));  // "diff::" + the parameter's name
        diffs.push_back(group.parameters[i]);
      } else {
        alphas.push_back(group.parameters[i]);
      }
    }
  }
  ASSERT_EQ(diffs.size(), alphas.size());
  ASSERT_GT(diffs.size(), 50u);
  auto named = model.named_parameters(true);
  at::manual_seed(20);
  {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < names.size(); ++i) {
      parameters.push_back(named[names[i]]);
      bases.push_back(parameters[i].detach().clone());  // θ_0: no step taken yet
      diffs[i].normal_(0.0, 0.01);
      alphas[i].normal_(0.0, 2.0);
    }
  }
  at::manual_seed(21);
  method.before_forward(model, /*training=*/true);
  const at::Tensor next_draw = at::rand({4});

  at::manual_seed(21);
  std::vector<at::Tensor> z(names.size()), dz(names.size());
  int64_t clamped_low = 0, clamped_high = 0;
  {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < names.size(); ++i) {
      const at::Tensor u = at::empty(alphas[i].sizes()).uniform_(1e-6, 1.0 - 1e-6);
      const at::Tensor s = at::sigmoid(u.log() - (-u).log1p() + alphas[i]);
      const at::Tensor stretched = s * span + options.left;
      z[i] = stretched.clamp(0.0, 1.0);
      dz[i] = (s * (1 - s) * span) * stretched.gt(0).logical_and(stretched.lt(1));
      clamped_low += z[i].eq(0).sum().item<int64_t>();
      clamped_high += z[i].eq(1).sum().item<int64_t>();
      ASSERT_TRUE(at::equal(parameters[i], bases[i] + z[i] * diffs[i])) << names[i];
    }
  }
  EXPECT_TRUE(at::equal(at::rand({4}), next_draw)) << "the random stream moved apart";
  EXPECT_GT(clamped_low, 1000);
  EXPECT_GT(clamped_high, 1000);

  const double shift = std::log(-options.left / options.right);
  std::vector<at::Tensor> expected_w(names.size()), expected_alpha(names.size());
  for (int micro_batch = 0; micro_batch < 2; ++micro_batch) {
    at::manual_seed(30 + micro_batch);
    std::vector<at::Tensor> g(names.size());
    for (size_t i = 0; i < names.size(); ++i) {
      g[i] = at::randn(parameters[i].sizes());
      parameters[i].mutable_grad() = g[i].clone();
    }
    method.on_backward(model, micro_batch);
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < names.size(); ++i) {
      const at::Tensor dw = g[i] * z[i], dalpha = g[i] * diffs[i] * dz[i];
      if (micro_batch == 0) {
        expected_w[i] = dw;
        expected_alpha[i] = dalpha;
      } else {
        expected_w[i].add_(dw);
        expected_alpha[i].add_(dalpha);
      }
      const at::Tensor p = at::sigmoid(alphas[i] - shift);
      expected_alpha[i].add_(p * (1 - p), options.l0_penalty);
      ASSERT_TRUE(at::equal(diffs[i].grad(), expected_w[i]))
          << names[i] << ", micro-batch " << micro_batch;
      ASSERT_TRUE(at::equal(alphas[i].grad(), expected_alpha[i]))
          << names[i] << ", micro-batch " << micro_batch;
      EXPECT_FALSE(parameters[i].grad().defined()) << names[i];
    }
  }
}

// Stage 1 keeps its best evaluation: the diff w and log-alpha come back with
// the head of that evaluation, so the model that is projected is the one whose
// dev metric was reported.
TEST(SelectiveMethods, DiffPruningKeepsTheBestEvaluationsDiffAndGatesWithItsHead) {
  const Data& d = sst2_sample();
  DiffPruningSetUp set_up(3e-3);
  model::SequenceClassifier& task_model = set_up.task_model;
  methods::DiffPruning& method = set_up.method;
  TrainConfig& relaxed = set_up.relaxed;
  relaxed.max_steps = 8;
  relaxed.eval_every = 1;
  TrainResult first = Trainer(task_model, method, d.task, relaxed).fit(d.train, d.dev);
  ASSERT_LT(first.best_step, first.steps) << "the last evaluation was the best: nothing to check";
  method.before_forward(*task_model, false);  // θ = θ_0 + z(α) ⊙ w, as evaluation sees it
  const Evaluation again = evaluate(*task_model, d.task, d.dev, 64, false);
  EXPECT_DOUBLE_EQ(again.metrics.main, first.best.metrics.main);
  EXPECT_NEAR(again.loss, first.best.loss, 1e-6);
}

TEST(SelectiveMethods, StagedMethodsRefuseCallsOutOfOrder) {
  BaseModel base = load_base(test::minilm_dir());
  auto task_model = make_task_model(base, 2, 1);
  methods::DiffPruning diff;
  diff.attach(*task_model);
  EXPECT_NE(test::error_of([&] { diff.attach(*task_model); }).find("attach() called twice"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { diff.project(*task_model); }).find("before stage 1 took a step"),
            std::string::npos);
  auto far_model = make_task_model(base, 2, 1);
  methods::Far far;
  EXPECT_THROW(far.restore_layout(*far_model), Error);
  far.attach(*far_model);
  EXPECT_NE(test::error_of([&] { far.reconfigure(*far_model); }).find("before priming"),
            std::string::npos);
  auto fish = methods::make_method("fish");
  EXPECT_NE(test::error_of([&] { fish->gradient_masks(); }).find("before prepare()"),
            std::string::npos);
}

// The library's one training path runs a staged method start to finish:
// each stage with its share of steps, the transitions between them, and
// after_training(); the summary records every stage.
TEST(SelectiveMethods, RunMethodRunsEveryStageAndTransitionOfFarAndDiffPruning) {
  const Data& d = sst2_sample();
  BaseModel base = load_base(test::minilm_dir());
  auto far_model = make_task_model(base, 2, 1);
  auto far = methods::make_method("far");
  far->attach(*far_model);
  const TrainConfig config = short_run(1e-3);  // 6 steps
  MethodRun run = run_method(far_model, *far, d.task, config, d.train, d.dev);
  ASSERT_EQ(run.stages.size(), 2u);
  EXPECT_EQ(run.stages[0]["stage"], "priming");
  EXPECT_EQ(run.stages[0]["steps"], 1);  // round(0.1 x 6)
  EXPECT_EQ(run.stages[1]["stage"], "learned_nodes");
  EXPECT_EQ(run.stages[1]["steps"], 5);
  EXPECT_EQ(run.stages[1]["learned_nodes"], 6 * 154);
  // The run's figures are the whole run's: both stages' steps and time.
  EXPECT_EQ(run.result.steps, 6);
  EXPECT_DOUBLE_EQ(run.result.seconds,
                   run.stages[0]["seconds"].get<double>() + run.stages[1]["seconds"].get<double>());
  EXPECT_GT(run.result.best_step, 1);  // in the learned-nodes stage, after priming's step
  EXPECT_LE(run.result.best_step, 6);
  // after_training() put the ordinary layout back.
  EXPECT_EQ(
      far_model->named_parameters(true).find("bert.encoder.layer.0.feed_forward.learned_up.weight"),
      nullptr);

  DiffPruningSetUp set_up(1e-3);
  set_up.relaxed.max_steps = 3;
  run = run_method(set_up.task_model, set_up.method, d.task, set_up.relaxed, d.train, d.dev);
  ASSERT_EQ(run.stages.size(), 3u);
  EXPECT_EQ(run.stages[0]["stage"], "relaxed");
  EXPECT_EQ(run.stages[1]["stage"], "projected");
  EXPECT_EQ(run.stages[1]["kept"], *set_up.method.sparse_budget(*set_up.task_model));
  EXPECT_TRUE(run.stages[1].contains("dev"));
  EXPECT_EQ(run.stages[2]["stage"], "fixed_mask");
  EXPECT_TRUE(set_up.method.projected());
  EXPECT_EQ(run.result.steps, 3 + run.stages[2]["steps"].get<int64_t>());
  EXPECT_GT(run.result.best_step, 3);  // the fixed-mask stage keeps its best, after the relaxed 3
}

// A run's tokens/s is its training tokens over its training time, whatever
// share of each stage went to evaluations; steps and seconds add up.
TEST(SelectiveMethods, WholeRunFiguresWeighStagesByTheirTrainingTime) {
  const RunFigures one = whole_run_figures(
      {{{"steps", 7}, {"seconds", 9.0}, {"eval_seconds", 1.0}, {"train_tokens_per_s", 50.0}}});
  EXPECT_EQ(one.steps, 7);
  EXPECT_DOUBLE_EQ(one.train_tokens_per_second, 50.0);
  // 100 tok/s for 10 s of training (2 s evaluating), then 1,000 tok/s for 1 s.
  const RunFigures two = whole_run_figures(
      {{{"steps", 10}, {"seconds", 12.0}, {"eval_seconds", 2.0}, {"train_tokens_per_s", 100.0}},
       {{"steps", 4}, {"seconds", 1.5}, {"eval_seconds", 0.5}, {"train_tokens_per_s", 1000.0}}});
  EXPECT_EQ(two.steps, 14);
  EXPECT_DOUBLE_EQ(two.seconds, 13.5);
  EXPECT_DOUBLE_EQ(two.train_tokens_per_second, 2000.0 / 11.0);
}

// W1, b1, W2 of layer `i`, by the model's names.
struct FeedForwardNames {
  std::string up_weight, up_bias, down_weight, down_bias;
};
FeedForwardNames ffn_names(int64_t i) {
  const std::string p = "bert.encoder.layer." + std::to_string(i) + ".";
  return {p + "intermediate.dense.weight", p + "intermediate.dense.bias", p + "output.dense.weight",
          p + "output.dense.bias"};
}

// Priming for 3 steps at a rate that moves the FFN, as the CLI's first stage.
methods::Far primed_far(model::SequenceClassifier& task_model, const Data& d) {
  methods::FarOptions options;
  options.learned_fraction = 0.1;
  methods::Far method(options);
  method.attach(*task_model);
  TrainConfig priming = short_run(1e-3);
  priming.max_steps = 3;
  priming.schedule_steps = 8;
  priming.keep_best = false;
  Trainer(task_model, method, d.task, priming).fit(d.train, d.dev);
  return method;
}

TEST(SelectiveMethods, FarSplitsEveryFfnIntoLearnedAndFrozenNodesThatComputeTheUnsplitLayer) {
  const Data& d = sst2_sample();
  BaseModel base = load_base(test::minilm_dir());
  auto task_model = make_task_model(base, 2, 1);
  methods::Far method = primed_far(task_model, d);
  const int64_t layers = task_model->config().num_hidden_layers;
  const int64_t nodes = task_model->config().intermediate_size;
  const int64_t k = method.learned_per_layer(*task_model);
  EXPECT_EQ(k, std::llround(0.1 * nodes));

  // The learning metric, computed here from the base checkpoint.
  auto params = task_model->named_parameters(true);
  std::map<std::string, at::Tensor> primed;
  std::vector<at::Tensor> expected_learned;
  for (int64_t i = 0; i < layers; ++i) {
    const FeedForwardNames n = ffn_names(i);
    for (const auto& name : {n.up_weight, n.up_bias, n.down_weight})
      primed[name] = params[name].detach().clone();
    auto initial = [&](const std::string& name) { return base.checkpoint.at(name.substr(5)); };
    at::Tensor metric = (primed[n.up_weight] - initial(n.up_weight)).abs().sum(1) +
                        (primed[n.up_bias] - initial(n.up_bias)).abs() +
                        (primed[n.down_weight] - initial(n.down_weight)).abs().sum(0);
    ASSERT_GT(metric.max().item<float>(), 0.0f);
    at::Tensor top = std::get<1>(metric.topk(k));
    expected_learned.push_back(std::get<0>(top.sort()));
  }

  EXPECT_EQ(method.reconfigure(*task_model), k * layers);
  for (int64_t i = 0; i < layers; ++i)
    EXPECT_TRUE(method.learned_nodes()[i].equal(expected_learned[i])) << "layer " << i;
  // What trains now: the learned nodes, every bias and LayerNorm and the head, and nothing else.
  int64_t trainable = 0;
  for (const auto& item : task_model->named_parameters(true))
    if (item.value().requires_grad()) trainable += item.value().numel();
  EXPECT_EQ(trainable, *method.settled_trainable(*task_model));
  EXPECT_FALSE(task_model->named_parameters(true)[ffn_names(0).up_weight].requires_grad());
  ASSERT_NE(task_model->named_parameters(true).find(
                "bert.encoder.layer.0.feed_forward.learned_up.weight"),
            nullptr);

  at::Tensor split_logits = predict_logits(*task_model, d.dev, 64, false);
  method.restore_layout(*task_model);
  at::Tensor plain_logits = predict_logits(*task_model, d.dev, 64, false);
  EXPECT_TRUE(at::allclose(split_logits, plain_logits, 1e-5, 1e-5))
      << (split_logits - plain_logits).abs().max().item<float>();

  // Back in the ordinary layout: learned nodes as primed, frozen nodes as the base.
  params = task_model->named_parameters(true);
  for (int64_t i = 0; i < layers; ++i) {
    const FeedForwardNames n = ffn_names(i);
    at::Tensor learned = expected_learned[i];
    at::Tensor frozen_mask = at::ones({nodes}, at::kBool).index_fill_(0, learned, false);
    at::Tensor frozen = frozen_mask.nonzero().squeeze(1);
    auto initial = [&](const std::string& name) { return base.checkpoint.at(name.substr(5)); };
    EXPECT_TRUE(params[n.up_weight]
                    .index_select(0, learned)
                    .equal(primed[n.up_weight].index_select(0, learned)));
    EXPECT_TRUE(params[n.up_weight].index_select(0, frozen).equal(
        initial(n.up_weight).index_select(0, frozen)));
    EXPECT_TRUE(params[n.up_bias].index_select(0, frozen).equal(
        initial(n.up_bias).index_select(0, frozen)));
    EXPECT_TRUE(params[n.down_weight]
                    .index_select(1, learned)
                    .equal(primed[n.down_weight].index_select(1, learned)));
    EXPECT_TRUE(params[n.down_weight].index_select(1, frozen).equal(
        initial(n.down_weight).index_select(1, frozen)));
  }
}

TEST(SelectiveMethods, FarTrainsOnlyItsLearnedNodesAfterPrimingAndItsDeltaReproducesTheModel) {
  const Data& d = sst2_sample();
  BaseModel base = load_base(test::minilm_dir());
  auto task_model = make_task_model(base, 2, 1);
  methods::Far method = primed_far(task_model, d);
  method.reconfigure(*task_model);
  std::vector<at::Tensor> learned = method.learned_nodes();
  TrainConfig rest = short_run(1e-3);
  rest.max_steps = 5;
  rest.prior_steps = 3;
  rest.schedule_steps = 8;
  TrainResult result = Trainer(task_model, method, d.task, rest).fit(d.train, d.dev);
  EXPECT_EQ(result.steps, 5);
  // The frozen sub-layers computed no weight gradient.
  auto params = task_model->named_parameters(true);
  for (int64_t i = 0; i < task_model->config().num_hidden_layers; ++i) {
    EXPECT_FALSE(params[ffn_names(i).up_weight].grad().defined());
    EXPECT_FALSE(params[ffn_names(i).down_weight].grad().defined());
  }
  method.restore_layout(*task_model);

  // Outside the learned nodes, the biases, the LayerNorms and the head
  // nothing differs from the base; those train (METHODS.md's FAR row).
  int64_t changed_learned = 0, changed_layer_norm = 0;
  for (const auto& [name, changed] : changed_entries(base, *task_model)) {
    at::Tensor allowed = at::zeros_like(changed);
    for (int64_t i = 0; i < task_model->config().num_hidden_layers; ++i) {
      const FeedForwardNames n = ffn_names(i);
      if (name == n.up_weight || name == n.up_bias) allowed.index_fill_(0, learned[i], true);
      if (name == n.down_weight) allowed.index_fill_(1, learned[i], true);
    }
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    const bool intermediate_bias = name.find("intermediate.dense.bias") != std::string::npos;
    if ((bias && !intermediate_bias) || name.find("LayerNorm.") != std::string::npos)
      allowed.fill_(true);
    EXPECT_EQ(changed.logical_and(allowed.logical_not()).sum().item<int64_t>(), 0) << name;
    if (name.find("intermediate.dense.weight") != std::string::npos)
      changed_learned += changed.sum().item<int64_t>();
    if (name.find("attention.output.LayerNorm.weight") != std::string::npos)
      changed_layer_norm += changed.sum().item<int64_t>();
  }
  EXPECT_GT(changed_learned, 0);
  EXPECT_GT(changed_layer_norm, 0);

  methods::Delta delta = build_delta(base, *task_model, method, d.task, 48, rest, result);
  EXPECT_LE(delta.stored_values(), *method.settled_trainable(*task_model));
  auto restored = model_from_delta(base, delta);
  EXPECT_EQ(evaluate(*restored, d.task, d.dev, 64, false).metrics.main,
            evaluate(*task_model, d.task, d.dev, 64, false).metrics.main);
}

}  // namespace
}  // namespace deltatune::train
