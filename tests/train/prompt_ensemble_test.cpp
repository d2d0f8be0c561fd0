// Prompt ensembles on all-MiniLM-L6-v2: every member inside the one batch
// computes what its delta computes alone, and the combinations are the mean
// probability and the majority vote of those members.
#include "deltatune/train/prompt_ensemble.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "deltatune/methods/lora.h"
#include "deltatune/methods/prompt_tuning.h"
#include "glue_sample.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {

model::EncoderInput padded_batch() {
  model::EncoderInput input;
  input.input_ids = at::tensor({101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102,  0,   0, 0,
                                101, 2009, 2001, 102,  2204, 3185, 1012, 102,  0,    0,   0, 0,
                                101, 2307, 2154, 102,  2009, 2001, 2204, 2143, 1012, 102, 0, 0},
                               at::kLong)
                        .view({3, 12});
  input.attention_mask = input.input_ids.ne(0).to(at::kLong);
  input.token_type_ids = at::zeros_like(input.input_ids);
  return input;
}

// A prompt-tuning delta with its own random prompt and head, as after training.
methods::Delta prompt_delta(const BaseModel& base, uint64_t seed) {
  auto model = make_task_model(base, 3, seed);
  methods::PromptTuningOptions options;
  options.length = 6;
  options.init = "random";
  options.seed = seed;
  methods::PromptTuning method(options);
  method.attach(*model);
  {
    at::NoGradGuard no_grad;
    at::manual_seed(seed);
    for (auto& item : model->named_parameters(true))
      if (methods::is_classifier_parameter(item.key())) item.value().normal_(0, 0.5);
  }
  methods::Delta delta;
  delta.tensors = methods::collect_delta_tensors(
      *model, base.checkpoint, method.stored_parameters(*model), base.config.base_model_prefix());
  delta.meta = {{"method", {{"name", method.name()}, {"config", method.config()}}},
                {"base_model", base.identity()},
                {"num_labels", 3}};
  return delta;
}

at::Tensor alone(const BaseModel& base, const methods::Delta& delta,
                 const model::EncoderInput& input) {
  auto model = model_from_delta(base, delta);
  at::NoGradGuard no_grad;
  return model->forward(input);
}

TEST(PromptEnsemble, MembersComputeTheirOwnDeltaAndCombineByMeanOrVote) {
  BaseModel base = load_base(test::minilm_dir());
  std::vector<methods::Delta> deltas;
  for (uint64_t seed : {1, 2, 3}) deltas.push_back(prompt_delta(base, seed));
  PromptEnsemble ensemble(base, deltas);
  ASSERT_EQ(ensemble.size(), 3);
  const auto input = padded_batch();
  std::vector<at::Tensor> members;
  const at::Tensor together = ensemble.all_logits(input);
  for (int64_t k = 0; k < 3; ++k) {
    members.push_back(alone(base, deltas[k], input));
    EXPECT_TRUE(at::allclose(together[k], members[k], 1e-5, 1e-5)) << "member " << k << "\n"
                                                                   << together[k] << "\n"
                                                                   << members[k];
  }
  EXPECT_FALSE(at::allclose(members[0], members[1], 1e-3, 1e-3));  // distinct members

  at::Tensor mean =
      (at::softmax(members[0], -1) + at::softmax(members[1], -1) + at::softmax(members[2], -1)) / 3;
  EXPECT_TRUE(at::allclose(ensemble.forward(input, EnsembleCombine::kMeanProbability), mean.log(),
                           1e-5, 1e-5));

  at::Tensor votes = ensemble.forward(input, EnsembleCombine::kMajorityVote);
  for (int64_t row = 0; row < 3; ++row) {
    std::vector<int64_t> count(3, 0);
    for (const auto& m : members) ++count[m[row].argmax().item<int64_t>()];
    const int64_t top = *std::max_element(count.begin(), count.end());
    const int64_t chosen = votes[row].argmax().item<int64_t>();
    EXPECT_EQ(count[chosen], top) << "row " << row;  // a label with the most votes
    if (std::count(count.begin(), count.end(), top) > 1) continue;
    for (int64_t label = 0; label < 3; ++label)
      EXPECT_EQ(std::floor(votes[row][label].item<double>()), count[label]);
  }
}

TEST(PromptEnsemble, EvaluationRunsEachMemberOncePerExampleAndReportsEachMemberAlone) {
  BaseModel base = load_base(test::minilm_dir());
  std::vector<methods::Delta> deltas;
  for (uint64_t seed : {1, 2, 3}) deltas.push_back(prompt_delta(base, seed));
  PromptEnsemble ensemble(base, deltas);
  const test::GlueSample& sample = test::sst2_sample(16, 40);
  // A three-label head on SST-2's dev sentences: labels 0 and 1 occur, label 2 never.
  data::TaskSpec task =
      data::custom_task("three", data::TaskType::kClassification, {"a", "b", "c"}, false);
  EnsembleEvaluation evaluation =
      evaluate_ensemble(ensemble, task, sample.dev, 16, false, EnsembleCombine::kMeanProbability);
  // K encoder rows per example: each member once, not once per member and combination.
  EXPECT_EQ(ensemble.encoded_rows(), 3 * static_cast<int64_t>(sample.dev.size()));
  ASSERT_EQ(evaluation.members.size(), 3u);
  EXPECT_EQ(evaluation.combined.examples, static_cast<int64_t>(sample.dev.size()));
  for (int64_t k = 0; k < 3; ++k) {
    auto model = model_from_delta(base, deltas[k]);
    const Evaluation on_its_own = evaluate(*model, task, sample.dev, 16, false);
    EXPECT_NEAR(evaluation.members[k].loss, on_its_own.loss, 1e-5) << "member " << k;
    EXPECT_DOUBLE_EQ(evaluation.members[k].metrics.main, on_its_own.metrics.main) << "member " << k;
  }
}

TEST(PromptEnsemble, RefusesDeltasThatAreNotPromptsOfOneShape) {
  BaseModel base = load_base(test::minilm_dir());
  methods::Delta prompt = prompt_delta(base, 1);
  methods::Delta lora = prompt;
  lora.meta["method"] = {{"name", "lora"}, {"config", methods::Lora().config()}};
  EXPECT_THROW(PromptEnsemble(base, {prompt, lora}), Error);
  methods::Delta longer = prompt_delta(base, 2);
  longer.meta["method"]["config"]["length"] = 7;
  EXPECT_THROW(PromptEnsemble(base, {prompt, longer}), Error);
  EXPECT_THROW(parse_ensemble_combine("median"), Error);
}

}  // namespace
}  // namespace deltatune::train
