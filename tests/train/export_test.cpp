#include "deltatune/train/export.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "deltatune/methods/method.h"
#include "deltatune/model/pretrained.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {
namespace fs = std::filesystem;

TEST(Export, WritesAnHfDirectoryThatLoadsToTheSameLogits) {
  BaseModel base = load_base(test::fixtures() / "model" / "tiny_roberta");
  auto task_model = make_task_model(base, 3, 5);
  auto method = methods::make_method("bitfit");
  method->attach(*task_model);
  {
    at::NoGradGuard no_grad;
    for (auto& p : task_model->parameters())
      if (p.requires_grad()) p.add_(at::randn_like(p) * 0.1);
  }
  data::TaskSpec task =
      data::custom_task("toy", data::TaskType::kClassification, {"a", "b", "c"}, false);
  methods::Delta delta =
      build_delta(base, *task_model, *method, task, 32, TrainConfig{}, TrainResult{});
  test::ScratchDir tmp;
  const fs::path out = tmp.path() / "exported";
  export_hf_directory(base, delta, out);
  for (const char* file :
       {"model.safetensors", "config.json", "vocab.json", "merges.txt", "tokenizer.json"})
    EXPECT_TRUE(fs::exists(out / file)) << file;
  auto exported = model::load_classifier(out);
  EXPECT_TRUE(exported.report.initialized.empty());
  EXPECT_EQ(exported.config.id2label, (std::vector<std::string>{"a", "b", "c"}));
  exported.model->eval();
  task_model->eval();
  model::EncoderInput in;
  in.input_ids = at::randint(5, 1000, {2, 7}, at::kLong);
  in.attention_mask = at::ones({2, 7}, at::kLong);
  at::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(exported.model->forward(in), task_model->forward(in)));
  // An existing non-empty directory is refused, and nothing is left half-written.
  EXPECT_THROW(export_hf_directory(base, delta, out), Error);
  size_t entries = std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator{});
  EXPECT_EQ(entries, 1u);
}

}  // namespace
}  // namespace deltatune::train
