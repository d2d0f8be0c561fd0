// --gradient-checkpointing: each encoder layer recomputed during backward
// gives the gradients of the plain pass (1e-6), with dropout on (the
// recomputation must draw the same masks) and for methods whose layers
// receive no input that needs a gradient (LoRA, prefixes, adapters on a
// frozen encoder: HF's transformers#21381 trap).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "deltatune/model/batch.h"
#include "deltatune/model/device.h"
#include "deltatune/train/task_model.h"
#include "glue_sample.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {

struct Pass {
  std::map<std::string, at::Tensor> gradients;
  at::Tensor logits;
  double next_draw = 0;  // the CPU stream's next number after backward
};

Pass train_pass(const BaseModel& base, const std::string& method_name,
                const nlohmann::json& options, bool checkpointing,
                model::Precision precision = model::Precision::kFloat32) {
  auto model = make_task_model(base, 2, 3);
  auto method = methods::make_method(method_name, options);
  method->attach(*model);
  model->encoder->set_gradient_checkpointing(checkpointing);
  model->train();
  const auto& sample = test::sst2_sample(64, 48);
  data::BatchOptions batching;
  batching.batch_size = 12;
  batching.shuffle = false;
  data::Batcher batcher(sample.train, batching);
  data::Batch batch = batcher.make(batcher.plan(0).batches.front());
  at::manual_seed(17);
  method->before_forward(*model, true);
  Pass pass;
  {
    model::AutocastScope autocast(at::Device(at::kCPU), precision);
    pass.logits = model->forward(batch.input);
  }
  task_loss(pass.logits.to(at::kFloat), batch.labels).backward();
  pass.next_draw = at::rand({1}).item<double>();
  for (const auto& item : model->named_parameters(true))
    if (item.value().requires_grad() && item.value().grad().defined())
      pass.gradients[item.key()] = item.value().grad().clone();
  return pass;
}

TEST(GradientCheckpointing, GivesThePlainPassGradients) {
  const BaseModel base = load_base(test::minilm_dir());  // dropout 0.1 as configured
  const std::vector<std::pair<std::string, nlohmann::json>> methods = {
      {"full", {}},
      {"bitfit", {}},
      {"lora", {{"dropout", 0.1}}},
      {"prefix-tuning", {{"length", 4}, {"seed", 1}}},
      {"prompt-tuning", {{"length", 4}, {"seed", 1}}},
      {"adapters", {{"seed", 1}}},
  };
  for (const auto& [name, options] : methods) {
    SCOPED_TRACE(name);
    const Pass plain = train_pass(base, name, options, false);
    const Pass checkpointed = train_pass(base, name, options, true);
    EXPECT_TRUE(plain.logits.equal(checkpointed.logits));
    // The stream continues as if the recomputation had not drawn.
    EXPECT_EQ(plain.next_draw, checkpointed.next_draw);
    ASSERT_EQ(plain.gradients.size(), checkpointed.gradients.size());
    for (const auto& [parameter, gradient] : plain.gradients) {
      auto other = checkpointed.gradients.find(parameter);
      ASSERT_NE(other, checkpointed.gradients.end()) << parameter << " got no gradient";
      EXPECT_LT((gradient - other->second).abs().max().item<double>(), 1e-6) << parameter;
    }
  }
}

// Under bf16 autocast the recomputation runs in bf16 too (the autocast state
// is replayed during backward, where it is off): its gradients are the plain
// bf16 pass's, not an fp32 recomputation's (which differ by bf16's rounding).
TEST(GradientCheckpointing, UnderBf16AutocastRecomputesInBf16) {
  const BaseModel base = load_base(test::minilm_dir());
  for (const std::string name : {"full", "lora"}) {
    SCOPED_TRACE(name);
    const nlohmann::json options =
        name == "lora" ? nlohmann::json{{"dropout", 0.1}} : nlohmann::json::object();
    const Pass plain = train_pass(base, name, options, false, model::Precision::kBFloat16);
    const Pass checkpointed = train_pass(base, name, options, true, model::Precision::kBFloat16);
    const Pass fp32 = train_pass(base, name, options, false);
    EXPECT_TRUE(plain.logits.equal(checkpointed.logits));
    double worst = 0, against_fp32 = 0;
    for (const auto& [parameter, gradient] : plain.gradients) {
      auto other = checkpointed.gradients.find(parameter);
      ASSERT_NE(other, checkpointed.gradients.end()) << parameter << " got no gradient";
      worst = std::max(worst, (gradient - other->second).abs().max().item<double>());
      against_fp32 = std::max(against_fp32,
                              (gradient - fp32.gradients.at(parameter)).abs().max().item<double>());
    }
    // fp32 rounding of sums that backward forms in another order when layers
    // are recomputed (LoRA: 3.8e-6 for gradients up to 0.16); an fp32
    // recomputation would differ by bf16's rounding (2.7e-4 there).
    const double tolerance = 1e-5;
    RecordProperty(name + "_worst", std::to_string(worst));
    RecordProperty(name + "_against_fp32", std::to_string(against_fp32));
    EXPECT_LT(worst, tolerance);
    // The check can tell: bf16's gradients are not fp32's, by far more.
    EXPECT_GT(against_fp32, 10 * tolerance);
  }
}

}  // namespace
}  // namespace deltatune::train
