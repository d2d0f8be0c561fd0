// LoRA on all-MiniLM-L6-v2: where the branches go, that a fresh branch adds
// exactly nothing, merge / unmerge, and the PEFT adapter format both ways
// (a PEFT-made adapter from tools/peft_interop.py gives PEFT's logits here).
#include "deltatune/methods/lora.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>

#include "deltatune/methods/peft_format.h"
#include "deltatune/model/fused_kernels.h"
#include "deltatune/model/hooks.h"
#include "deltatune/train/task_model.h"
#include "test_paths.h"

namespace deltatune::methods {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

model::EncoderInput sample_input() {
  model::EncoderInput input;
  input.input_ids = at::tensor({101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102,  0,
                                101, 2009, 2001, 1037, 2204, 3185, 1012, 102,  2200, 102},
                               at::kLong)
                        .view({2, 10});
  input.attention_mask = input.input_ids.ne(0).to(at::kLong);
  input.attention_mask[1].fill_(1);
  input.token_type_ids = at::zeros_like(input.input_ids);
  return input;
}

at::Tensor logits_of(model::SequenceClassifierImpl& model) {
  model.eval();
  at::NoGradGuard no_grad;
  return model.forward(sample_input());
}

// The same through LibTorch's plain kernels, whose products do not depend on
// whether Q, K and V come from one fused GEMM or three: bit-exact comparisons.
// (The fused attention reads heads through strides, and the kernel oneDNN
// picks for a stride changes the summation order.)
at::Tensor plain_logits_of(model::SequenceClassifierImpl& model) {
  model::set_fused_kernels(false);
  at::Tensor logits = logits_of(model);
  model::set_fused_kernels(true);
  return logits;
}

// Random non-zero factors, as after training.
void perturb(model::SequenceClassifierImpl& model) {
  at::NoGradGuard no_grad;
  at::manual_seed(3);
  for (auto& item : model.named_parameters(true))
    if (item.key().find(".lora.lora_B.") != std::string::npos) item.value().normal_(0.0, 0.05);
}

TEST(Lora, TargetsQueryAndValueAndAFreshBranchAddsExactlyNothing) {
  train::BaseModel base = train::load_base(test::minilm_dir());
  auto model = train::make_task_model(base, 2, 0);
  const at::Tensor before = plain_logits_of(*model), fused_before = logits_of(*model);
  Lora lora;
  lora.attach(*model);
  EXPECT_EQ(lora.targets().size(), 12u);  // 6 layers x {query, value}
  for (const auto& t : lora.targets())
    EXPECT_TRUE(t.find(".attention.self.query") != std::string::npos ||
                t.find(".attention.self.value") != std::string::npos)
        << t;
  int64_t trainable = 0;
  for (const auto& item : model->named_parameters(true))
    if (item.value().requires_grad()) {
      trainable += item.value().numel();
      EXPECT_TRUE(item.key().find(".lora.lora_") != std::string::npos ||
                  item.key().rfind("classifier.", 0) == 0)
          << item.key();
    }
  EXPECT_EQ(trainable, 12 * 8 * (384 + 384) + 770);
  EXPECT_TRUE(plain_logits_of(*model).equal(before));  // B = 0
  EXPECT_TRUE(at::allclose(logits_of(*model), fused_before, 1e-6, 1e-6));

  LoraOptions nothing;
  nothing.target_modules = {"no_such_layer"};
  auto other = train::make_task_model(base, 2, 0);
  EXPECT_THROW(Lora(nothing).attach(*other), Error);
}

// LoRA's dropout (PEFT's lora_dropout) is torch.nn.Dropout's, drawn through
// model::dropout: in training the branch gives scaling B A at::dropout(x) from
// the same draws, bit for bit, with the same input gradient, and leaves the
// random stream where at::dropout leaves it; in evaluation it draws nothing.
TEST(Lora, DropoutIsTorchsDropoutDrawForDraw) {
  train::BaseModel base = train::load_base(test::minilm_dir());
  auto model = train::make_task_model(base, 2, 0);
  LoraOptions options;
  options.dropout = 0.1;
  options.alpha = 16;
  Lora(options).attach(*model);
  perturb(*model);
  std::shared_ptr<model::DenseDelta> branch;
  for (const auto& item : model->named_modules("", false))
    if (!branch && item.key().size() > 26 &&
        item.key().compare(item.key().size() - 26, 26, ".attention.self.query.lora") == 0)
      branch = std::dynamic_pointer_cast<model::DenseDelta>(item.value());
  ASSERT_TRUE(branch) << "no LoRA branch on a query";
  // The factors' own Dense modules, so that both sides run the same products.
  auto down = std::dynamic_pointer_cast<model::DenseImpl>(branch->named_children()["lora_A"]);
  auto up = std::dynamic_pointer_cast<model::DenseImpl>(branch->named_children()["lora_B"]);
  ASSERT_TRUE(down && up);
  auto factors = [&](const at::Tensor& x) { return up->forward(down->forward(x)) * 2.0; };

  at::manual_seed(11);
  const at::Tensor input = at::randn({2, 7, 384});
  const at::Tensor x = input.clone().requires_grad_(true),
                   expected_x = input.clone().requires_grad_(true);
  branch->train();
  at::manual_seed(12);
  const at::Tensor got = branch->forward(x);
  const at::Tensor got_next = at::rand({4});
  at::manual_seed(12);
  const at::Tensor expected = factors(at::dropout(expected_x, 0.1, true));
  const at::Tensor expected_next = at::rand({4});
  EXPECT_TRUE(got.equal(expected)) << (got - expected).abs().max().item<double>();
  EXPECT_TRUE(got_next.equal(expected_next)) << "the random stream moved apart";
  got.sum().backward();
  expected.sum().backward();
  EXPECT_TRUE(x.grad().equal(expected_x.grad()));
  EXPECT_GT(x.grad().eq(0).sum().item<int64_t>(), 0) << "no entry was dropped";

  branch->eval();
  at::manual_seed(13);
  const at::Tensor evaluated = branch->forward(input);
  const at::Tensor eval_next = at::rand({4});
  at::manual_seed(13);
  EXPECT_TRUE(eval_next.equal(at::rand({4}))) << "evaluation drew from the stream";
  EXPECT_TRUE(evaluated.equal(factors(input)));
}

TEST(Lora, MergeAndUnmergeRoundTripTheWeightsWithin1e6) {
  train::BaseModel base = train::load_base(test::minilm_dir());
  auto model = train::make_task_model(base, 2, 0);
  LoraOptions options;
  options.target_modules = {"query", "value", "intermediate.dense", "output.dense"};
  Lora lora(options);
  lora.attach(*model);
  perturb(*model);
  std::map<std::string, at::Tensor> weights;
  for (const auto& item : model->named_parameters(true))
    weights[item.key()] = item.value().detach().clone();
  const at::Tensor unmerged = logits_of(*model);

  lora.merge();
  const at::Tensor merged = logits_of(*model);
  EXPECT_TRUE(at::allclose(merged, unmerged, 1e-5, 1e-5));
  int64_t changed = 0;
  for (const auto& t : lora.targets())
    changed += !model->named_parameters(true)[t + ".weight"].equal(weights[t + ".weight"]);
  EXPECT_EQ(changed, static_cast<int64_t>(lora.targets().size()));

  lora.unmerge();
  for (const auto& item : model->named_parameters(true))
    EXPECT_LE((item.value() - weights[item.key()]).abs().max().item<double>(), 1e-6) << item.key();
  EXPECT_TRUE(logits_of(*model).allclose(unmerged, 1e-5, 1e-5));

  lora.fold_into_weights(*model);
  for (const auto& item : model->named_parameters(true))
    EXPECT_EQ(item.key().find(".lora"), std::string::npos) << item.key();
  EXPECT_TRUE(logits_of(*model).allclose(unmerged, 1e-5, 1e-5));
}

TEST(LoraPeft, AnAdapterWrittenHereReadsBackToTheSameModel) {
  train::BaseModel base = train::load_base(test::minilm_dir());
  auto model = train::make_task_model(base, 2, 0);
  Lora lora;
  lora.attach(*model);
  perturb(*model);
  const at::Tensor expected = logits_of(*model);
  Delta delta;
  delta.tensors = collect_delta_tensors(*model, base.checkpoint, lora.stored_parameters(*model),
                                        base.config.base_model_prefix());
  delta.meta = {{"method", {{"name", "lora"}, {"config", lora.config()}}},
                {"base_model", base.identity()},
                {"num_labels", 2},
                {"label_names", {"negative", "positive"}}};
  test::ScratchDir dir;
  save_peft_adapter(delta, dir.path());
  const json config = json::parse(std::ifstream(dir.path() / "adapter_config.json"));
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["r"], 8);
  EXPECT_TRUE(fs::exists(dir.path() / "adapter_model.safetensors"));
  EXPECT_EQ(peft_key_of("bert.encoder.layer.0.attention.self.query.lora.lora_A.weight"),
            "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight");

  Delta back = Delta::load(dir.path());  // no delta.json: read as a PEFT adapter
  EXPECT_EQ(back.meta["imported_from"], "peft");
  EXPECT_EQ(back.meta["label_names"], json({"negative", "positive"}));
  ASSERT_EQ(back.tensors.size(), delta.tensors.size());
  auto restored = train::model_from_delta(base, back);
  EXPECT_TRUE(logits_of(*restored).equal(expected));
}

TEST(LoraPeft, APeftMadeAdapterGivesPeftsLogits) {
  const fs::path fixtures = fs::path(DELTATUNE_FIXTURES) / "peft";
  const json expected = json::parse(std::ifstream(fixtures / "minilm_lora_logits.json"));
  Delta delta = Delta::load(fixtures / "minilm_lora");
  EXPECT_EQ(delta.meta["method"]["config"]["rank"], 4);
  EXPECT_EQ(delta.meta["num_labels"], 3);
  train::BaseModel base = train::load_base(test::minilm_dir());
  auto model = train::model_from_delta(base, delta);
  model::EncoderInput input;
  auto tensor = [&](const char* key) {
    std::vector<int64_t> flat;
    for (const auto& row : expected[key])
      for (const auto& v : row) flat.push_back(v.get<int64_t>());
    return at::tensor(flat, at::kLong).view({static_cast<int64_t>(expected[key].size()), -1});
  };
  input.input_ids = tensor("input_ids");
  input.token_type_ids = tensor("token_type_ids");
  input.attention_mask = tensor("attention_mask");
  at::NoGradGuard no_grad;
  at::Tensor ours = model->forward(input);
  std::vector<float> flat;
  for (const auto& row : expected["logits"])
    for (const auto& v : row) flat.push_back(v.get<float>());
  at::Tensor peft = at::tensor(flat).view_as(ours);
  EXPECT_LE((ours - peft).abs().max().item<double>(), 1e-4) << ours << "\n" << peft;
  // Without the LoRA branches the logits differ well beyond the tolerance.
  for (auto& item : model->named_parameters(true))
    if (item.key().find(".lora.lora_B.") != std::string::npos) item.value().zero_();
  EXPECT_GT((model->forward(input) - peft).abs().max().item<double>(), 1e-3);
}

TEST(LoraPeft, UnsupportedAdaptersAreRefusedNamingTheField) {
  test::ScratchDir dir;
  dir.write("adapter_config.json", R"({"peft_type": "IA3", "task_type": "SEQ_CLS"})");
  try {
    Delta::load(dir.path());
    FAIL() << "an IA3 adapter was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("peft_type"), std::string::npos) << e.what();
  }
  dir.write("adapter_config.json",
            R"({"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 8, "lora_alpha": 8,
                "target_modules": "query|value"})");
  EXPECT_THROW(Delta::load(dir.path()), Error);
}

}  // namespace
}  // namespace deltatune::methods
