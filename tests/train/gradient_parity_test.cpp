// deltatune's backward pass against PyTorch autograd on HF's BERT
// (tools/make_gradient_fixture.py): the same loss and the same gradients for
// every bias, LayerNorm weight and the checked weight matrices of
// all-MiniLM-L6-v2 on real MRPC pairs, dropout off.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "deltatune/io/safetensors.h"
#include "deltatune/methods/method.h"
#include "deltatune/model/linear_kernel.h"
#include "deltatune/train/task_model.h"
#include "deltatune/train/trainer.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {

void expect_hf_gradients(bool onednn) {
  model::set_onednn_linear(onednn);
  auto fixture =
      io::SafetensorsFile::open(test::fixtures() / "train" / "minilm_gradients.safetensors")
          .load_all();
  BaseModel base = load_base(test::minilm_dir());
  auto task_model = make_task_model(base, 2, 0);
  methods::make_method("full")->attach(*task_model);
  {
    at::NoGradGuard no_grad;
    auto params = task_model->named_parameters(true);
    params["classifier.weight"].copy_(fixture.at("init.classifier.weight"));
    params["classifier.bias"].copy_(fixture.at("init.classifier.bias"));
  }
  task_model->eval();
  model::EncoderInput input{fixture.at("input.input_ids"), fixture.at("input.attention_mask"),
                            fixture.at("input.token_type_ids")};
  at::Tensor loss = task_loss(task_model->forward(input), fixture.at("input.labels"));
  EXPECT_NEAR(loss.item<double>(), fixture.at("loss").item<double>(), 1e-5);
  loss.backward();

  size_t compared = 0;
  for (const auto& item : task_model->named_parameters(true)) {
    auto expected = fixture.find("grad." + item.key());
    if (expected == fixture.end()) continue;
    const at::Tensor& grad = item.value().grad();
    ASSERT_TRUE(grad.defined()) << item.key();
    const double scale = expected->second.abs().max().item<double>();
    const double error = (grad - expected->second).abs().max().item<double>();
    EXPECT_LE(error, 1e-4 * scale + 1e-7) << item.key() << " (max |grad| " << scale << ")";
    ++compared;
  }
  EXPECT_EQ(compared, fixture.size() - 7);  // all but the 5 inputs, the head init and the loss
  model::set_onednn_linear(true);
}

TEST(GradientParity, BackwardMatchesPyTorchAutogradOnHfBert) { expect_hf_gradients(true); }

TEST(GradientParity, BackwardMatchesWithoutTheOneDnnKernel) { expect_hf_gradients(false); }

}  // namespace
}  // namespace deltatune::train
