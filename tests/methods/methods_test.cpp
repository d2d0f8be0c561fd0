#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "deltatune/error.h"
#include "deltatune/methods/bitfit.h"
#include "deltatune/methods/delta.h"
#include "deltatune/model/pretrained.h"
#include "test_paths.h"

namespace deltatune::methods {
namespace {

model::LoadedClassifier minilm(int64_t labels = 2) {
  return model::load_classifier(test::minilm_dir(), labels);
}

std::vector<std::string> trainable(model::SequenceClassifierImpl& m) {
  std::vector<std::string> names;
  for (const auto& p : m.named_parameters())
    if (p.value().requires_grad()) names.push_back(p.key());
  return names;
}

int64_t count(model::SequenceClassifierImpl& m, const std::vector<std::string>& names) {
  auto params = m.named_parameters();
  int64_t n = 0;
  for (const auto& name : names) n += params[name].numel();
  return n;
}

TEST(BitFit, TrainsEveryBiasAndTheClassifierOnly) {
  auto loaded = minilm();
  auto method = make_method("bitfit");
  method->attach(*loaded.model);
  auto names = trainable(*loaded.model);
  for (const auto& n : names)
    EXPECT_TRUE(n.size() > 5 &&
                (n.compare(n.size() - 5, 5, ".bias") == 0 || n.rfind("classifier.", 0) == 0))
        << n;
  // 6 layers x (q,k,v,attn-out,inter,out, 2 LayerNorm) + embeddings LayerNorm + pooler + classifier
  // w,b.
  EXPECT_EQ(names.size(), 6u * 8 + 1 + 1 + 2);
  // MiniLM: per layer 4x384 + 1536 + 384 + 2x384 biases = 4224; x6 + 384 (emb LN) + 384 (pooler) +
  // 770 (head).
  EXPECT_EQ(count(*loaded.model, names), 6 * 4224 + 384 + 384 + 770);
}

TEST(BitFit, SubsetTrainsQueryAndIntermediateBiases) {
  auto loaded = minilm();
  auto method = make_method("bitfit", {{"bias_terms", {"query", "intermediate"}}});
  method->attach(*loaded.model);
  auto names = trainable(*loaded.model);
  EXPECT_EQ(count(*loaded.model, names), 6 * (384 + 1536) + 770);
  for (const auto& n : names)
    EXPECT_TRUE(n.find("query.bias") != std::string::npos ||
                n.find("intermediate.dense.bias") != std::string::npos ||
                n.rfind("classifier.", 0) == 0)
        << n;
}

TEST(Far, PrimesTheFfnAndCountsItsLearnedNodesInTheFootprint) {
  auto loaded = minilm();
  auto method = make_method("far", {{"learned_fraction", 0.25}});
  method->attach(*loaded.model);
  // Every other bias and LayerNorm trains throughout: the embedding
  // LayerNorm, per layer the q/k/v/attention-output biases and two LayerNorms,
  // the pooler bias.
  const int64_t biases_and_layer_norms = 384 * (2 + 6 * (4 + 2 + 2) + 1);
  // Priming: W1, b1, W2, b2 of the 6 FFNs, those, and the head.
  EXPECT_EQ(count(*loaded.model, trainable(*loaded.model)),
            6 * (1536 * 384 + 1536 + 384 * 1536 + 384) + biases_and_layer_norms + 770);
  auto fresh = minilm();
  Footprint f = footprint(*make_method("far", {{"learned_fraction", 0.25}}), *fresh.model);
  // After priming: 384 of 1536 nodes per layer (row of W1, bias, column of
  // W2), every b2, the other biases and LayerNorms, the head; the nodes
  // stored sparse (value + int32 index).
  const int64_t nodes = 6 * 384 * (2 * 384 + 1);
  const int64_t dense = 6 * 384 + biases_and_layer_norms + 770;
  EXPECT_EQ(f.trainable, nodes + dense);
  EXPECT_EQ(f.stored_values, nodes + dense);
  EXPECT_EQ(f.stored_bytes, nodes * 8 + dense * 4);
  EXPECT_THROW(make_method("far", {{"priming_fraction", 1.0}}), Error);
  EXPECT_THROW(make_method("far", {{"learned_fraction", 0.0}}), Error);
  EXPECT_THROW(make_method("far", {{"nodes", 3}}), Error);
}

TEST(Footprint, LoraCountsItsFactorsAndDiffPruningItsDoubledParameters) {
  auto for_lora = minilm();
  Footprint lora = footprint(*make_method("lora"), *for_lora.model);
  EXPECT_EQ(lora.encoder, 22713216);  // the task model's own encoder, without the factors
  EXPECT_EQ(lora.trainable, 12 * 8 * (384 + 384) + 770);
  EXPECT_EQ(lora.stored_values, lora.trainable);
  auto for_diff = minilm();
  Footprint diff = footprint(*make_method("diff-pruning"), *for_diff.model);
  EXPECT_EQ(diff.trainable, 2 * 22713216 + 770);  // w and log-alpha per entry, and the head
  EXPECT_EQ(diff.stored_values, std::llround(0.005 * 22713216) + 770);
}

TEST(Methods, FullAndFrozenAndUnknownOptions) {
  auto loaded = minilm();
  make_method("frozen")->attach(*loaded.model);
  for (const auto& n : trainable(*loaded.model))
    EXPECT_TRUE(n.rfind("classifier.", 0) == 0 || n.rfind("bert.pooler.", 0) == 0) << n;
  make_method("full")->attach(*loaded.model);
  EXPECT_EQ(trainable(*loaded.model).size(), loaded.model->named_parameters().size());
  EXPECT_THROW(make_method("bitfit", {{"bias_term", {"query"}}}), Error);
  EXPECT_THROW(make_method("bitfit", {{"bias_terms", {"quarry"}}}), Error);
  EXPECT_THROW(make_method("lora-ish"), Error);
}

TEST(Delta, SparseAndDenseRoundTripAndApplyRemoveIsBitExact) {
  auto trained = model::load_classifier(test::fixtures() / "model" / "tiny_bert");
  auto base_state = model::read_checkpoint(test::fixtures() / "model" / "tiny_bert");
  const std::string sparse_name = "bert.encoder.layer.0.intermediate.dense.weight";
  const std::string dense_name = "bert.encoder.layer.1.attention.self.query.bias";
  {
    at::NoGradGuard no_grad;
    auto params = trained.model->named_parameters();
    params[sparse_name].view({-1}).index_put_({at::tensor({3, 100, 2000}, at::kLong)},
                                              at::tensor({1.f, 2.f, 3.f}));
    params[dense_name].add_(0.5);
  }
  Delta delta;
  delta.meta["method"] = "test";
  delta.tensors = collect_delta_tensors(
      *trained.model, base_state,
      {{sparse_name, StorageKind::kSparse}, {dense_name, StorageKind::kDense}}, "bert");
  ASSERT_TRUE(delta.tensors[0].sparse());
  EXPECT_EQ(delta.tensors[0].values.numel(), 3);
  EXPECT_FALSE(delta.tensors[1].sparse());
  EXPECT_EQ(delta.stored_values(), 3 + 32);
  test::ScratchDir tmp;
  delta.save(tmp.path() / "d");
  Delta loaded = Delta::load(tmp.path() / "d");
  EXPECT_EQ(loaded.meta["method"], "test");
  EXPECT_EQ(loaded.stored_bytes(), delta.stored_bytes());

  auto base = model::load_classifier(test::fixtures() / "model" / "tiny_bert");
  std::map<std::string, at::Tensor> original;
  for (const auto& p : base.model->named_parameters())
    original[p.key()] = p.value().detach().clone();
  auto applied = apply_delta(loaded, *base.model);
  auto after = base.model->named_parameters();
  for (const auto& p : trained.model->named_parameters())
    EXPECT_TRUE(at::equal(after[p.key()], p.value())) << p.key();
  remove_delta(applied, *base.model);
  for (const auto& p : base.model->named_parameters())
    EXPECT_TRUE(at::equal(p.value(), original[p.key()])) << p.key();
}

TEST(Delta, ShapeMismatchAndCorruptFilesAreRefused) {
  auto base = model::load_classifier(test::fixtures() / "model" / "tiny_bert");
  Delta wrong;
  wrong.tensors.push_back(
      {"bert.encoder.layer.0.attention.self.query.bias", {64}, at::zeros({64}), {}});
  EXPECT_THROW(apply_delta(wrong, *base.model), Error);
  Delta unknown;
  unknown.tensors.push_back({"bert.nothing.bias", {4}, at::zeros({4}), {}});
  EXPECT_THROW(apply_delta(unknown, *base.model), Error);
  test::ScratchDir tmp;
  EXPECT_THROW(Delta::load(tmp.path()), Error);
  tmp.write("delta.json", "{\"format\": \"something-else\"}");
  EXPECT_THROW(Delta::load(tmp.path()), Error);
  // Found by the delta fuzz target (fuzz/regressions/delta): wrongly typed
  // fields threw nlohmann's exceptions, and a float size was converted to an
  // integer outside its range (undefined behaviour).
  tmp.write("delta.json", "{\"format\": 7, \"version\": \"1\"}");
  EXPECT_NE(test::error_of([&] { Delta::load(tmp.path()); }).find("field 'format'"),
            std::string::npos);
  io::save_safetensors(tmp.path() / "delta.safetensors", {{"w", at::zeros({2})}});
  tmp.write("delta.json",
            "{\"format\": \"deltatune-delta\", \"version\": 1, \"tensors\": {\"w\": "
            "{\"shape\": [1.1e41], \"storage\": \"dense\"}}}");
  EXPECT_NE(test::error_of([&] { Delta::load(tmp.path()); }).find("'shape' holds 1.1e+41"),
            std::string::npos);
}

}  // namespace
}  // namespace deltatune::methods

namespace deltatune::methods {
namespace {

TEST(BiasAnalysis, MeanAbsoluteChangePerLayerAndGroup) {
  auto base_state = model::read_checkpoint(test::fixtures() / "model" / "tiny_bert");
  auto trained = model::load_classifier(test::fixtures() / "model" / "tiny_bert");
  auto method = make_method("bitfit");
  method->attach(*trained.model);
  {
    at::NoGradGuard no_grad;
    auto params = trained.model->named_parameters();
    params["bert.encoder.layer.1.attention.self.query.bias"].add_(0.25);
    params["bert.encoder.layer.0.intermediate.dense.bias"].sub_(0.5);
  }
  Delta delta;
  delta.tensors = collect_delta_tensors(*trained.model, base_state,
                                        method->stored_parameters(*trained.model), "bert");
  auto changes = bias_changes(delta, base_state, "bert");
  int checked = 0;
  for (const auto& c : changes) {
    if (c.name == "bert.encoder.layer.1.attention.self.query.bias") {
      EXPECT_EQ(c.layer, 1);
      EXPECT_EQ(c.group, "query");
      EXPECT_NEAR(c.mean_abs_change, 0.25, 1e-6);
      ++checked;
    } else if (c.name == "bert.encoder.layer.0.intermediate.dense.bias") {
      EXPECT_EQ(c.group, "intermediate");
      EXPECT_NEAR(c.mean_abs_change, 0.5, 1e-6);
      ++checked;
    } else {
      EXPECT_EQ(c.mean_abs_change, 0.0) << c.name;
    }
  }
  EXPECT_EQ(checked, 2);
}

}  // namespace
}  // namespace deltatune::methods
