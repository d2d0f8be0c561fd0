// The encoder against Hugging Face outputs recorded by tools/make_fixtures.py.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "deltatune/error.h"
#include "deltatune/io/safetensors.h"
#include "deltatune/io/torch_pickle.h"
#include "deltatune/model/batch.h"
#include "deltatune/model/linear_kernel.h"
#include "deltatune/model/pretrained.h"
#include "deltatune/text/tokenizer.h"
#include "test_paths.h"

namespace deltatune::model {
namespace {
namespace fs = std::filesystem;

constexpr double kTolerance = 1e-4;

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<double>();
}

// Hidden states at padded positions are unspecified in HF too (they attend to
// real tokens only, but nothing reads them); compare real tokens only.
double max_abs_diff_on_tokens(const at::Tensor& a, const at::Tensor& b, const at::Tensor& mask) {
  at::Tensor keep = mask.to(at::kBool).unsqueeze(-1).expand_as(a);
  return max_abs_diff(a.masked_select(keep), b.masked_select(keep));
}

EncoderInput inputs_of(const io::SafetensorsFile& expected) {
  EncoderInput in;
  in.input_ids = expected.tensor("input_ids");
  in.attention_mask = expected.tensor("attention_mask");
  in.token_type_ids = expected.tensor("token_type_ids");
  return in;
}

TEST(Parity, MiniLmHiddenStatesAndPoolerMatchHuggingFace) {
  auto loaded = load_encoder(test::minilm_dir());
  EXPECT_TRUE(loaded.report.unexpected.empty()) << loaded.report.unexpected.front();
  EXPECT_TRUE(loaded.report.initialized.empty());
  loaded.model->eval();
  auto expected = io::SafetensorsFile::open(test::fixtures() / "model" / "minilm_expected.safetensors");
  EncoderInput in = inputs_of(expected);
  ASSERT_GE(in.input_ids.size(0), 16);
  // The batch really is padded: lengths differ.
  at::Tensor lengths = in.attention_mask.sum(1);
  EXPECT_GT(lengths.max().item<int64_t>() - lengths.min().item<int64_t>(), 20);
  at::NoGradGuard no_grad;
  EncoderOutput out = loaded.model->forward(in);
  const double hidden_diff = max_abs_diff_on_tokens(
      out.last_hidden_state, expected.tensor("last_hidden_state"), in.attention_mask);
  const double pooled_diff = max_abs_diff(out.pooler_output, expected.tensor("pooler_output"));
  RecordProperty("max_abs_diff_last_hidden_state", std::to_string(hidden_diff));
  RecordProperty("max_abs_diff_pooler_output", std::to_string(pooled_diff));
  std::cout << "[parity] MiniLM vs HF: max |diff| hidden " << hidden_diff << ", pooled "
            << pooled_diff << " (oneDNN linear " << (onednn_linear_active() ? "on" : "off")
            << ")\n";
  EXPECT_LT(hidden_diff, kTolerance);
  EXPECT_LT(pooled_diff, kTolerance);
  // The same with LibTorch's own at::linear.
  set_onednn_linear(false);
  EncoderOutput reference = loaded.model->forward(in);
  set_onednn_linear(true);
  EXPECT_LT(max_abs_diff_on_tokens(reference.last_hidden_state, expected.tensor("last_hidden_state"),
                                   in.attention_mask),
            kTolerance);
}

// Text in, hidden states out: our tokenizer and batching produce HF's ids,
// and the encoder HF's outputs, for the 16 recorded GLUE inputs.
TEST(Parity, MiniLmFromRawTextMatchesHuggingFace) {
  auto tokenizer = text::load_tokenizer(test::minilm_dir());
  std::ifstream lines(test::fixtures() / "model" / "minilm_inputs.jsonl");
  std::vector<text::Encoding> encodings;
  for (std::string line; std::getline(lines, line);) {
    auto j = nlohmann::json::parse(line);
    std::optional<std::string> b;
    if (!j["b"].is_null()) b = j["b"].get<std::string>();
    encodings.push_back(tokenizer->encode(j["a"].get<std::string>(),
                                          b ? std::optional<std::string_view>(*b) : std::nullopt,
                                          j["max_length"].get<size_t>()));
  }
  auto expected = io::SafetensorsFile::open(test::fixtures() / "model" / "minilm_expected.safetensors");
  EncoderInput in = make_batch(encodings, tokenizer->pad_token_id());
  ASSERT_TRUE(at::equal(in.input_ids, expected.tensor("input_ids")));
  ASSERT_TRUE(at::equal(in.attention_mask, expected.tensor("attention_mask")));
  ASSERT_TRUE(at::equal(in.token_type_ids, expected.tensor("token_type_ids")));
  auto loaded = load_encoder(test::minilm_dir());
  loaded.model->eval();
  at::NoGradGuard no_grad;
  EXPECT_LT(max_abs_diff(loaded.model->forward(in).pooler_output, expected.tensor("pooler_output")),
            kTolerance);
}

struct TinyCase {
  const char* dir;
  bool has_pooler;
};

// Readable, stable test names in ctest (not the struct's bytes).
void PrintTo(const TinyCase& c, std::ostream* out) { *out << c.dir; }

class TinyModelParity : public testing::TestWithParam<TinyCase> {};

TEST_P(TinyModelParity, HiddenStatesAndLogitsMatchHuggingFace) {
  const fs::path dir = test::fixtures() / "model" / GetParam().dir;
  auto loaded = load_classifier(dir);
  EXPECT_TRUE(loaded.report.initialized.empty()) << loaded.report.initialized.front();
  EXPECT_TRUE(loaded.report.unexpected.empty()) << loaded.report.unexpected.front();
  loaded.model->eval();
  auto expected = io::SafetensorsFile::open(dir / "expected.safetensors");
  EncoderInput in = inputs_of(expected);
  at::NoGradGuard no_grad;
  EncoderOutput encoded = loaded.model->encoder->forward(in);
  EXPECT_LT(max_abs_diff_on_tokens(encoded.last_hidden_state, expected.tensor("last_hidden_state"),
                                   in.attention_mask),
            kTolerance);
  if (GetParam().has_pooler) {
    EXPECT_LT(max_abs_diff(encoded.pooler_output, expected.tensor("pooler_output")), kTolerance);
  }
  at::Tensor logits = loaded.model->head(encoded);
  EXPECT_EQ(logits.sizes(), expected.tensor("logits").sizes());
  EXPECT_LT(max_abs_diff(logits, expected.tensor("logits")), kTolerance);
}

INSTANTIATE_TEST_SUITE_P(Architectures, TinyModelParity,
                         testing::Values(TinyCase{"tiny_bert", true},
                                         TinyCase{"tiny_bert_regression", true},
                                         TinyCase{"tiny_roberta", false},
                                         TinyCase{"tiny_electra", false}),
                         [](const auto& info) { return std::string(info.param.dir); });

TEST(Parity, SavedStateRoundTripsThroughSafetensors) {
  test::ScratchDir tmp;
  const fs::path dir = test::fixtures() / "model" / "tiny_roberta";
  auto loaded = load_classifier(dir);
  io::save_safetensors(tmp.path() / "model.safetensors", named_state(*loaded.model));
  fs::copy_file(dir / "config.json", tmp.path() / "config.json");
  auto reloaded = load_classifier(tmp.path());
  auto a = loaded.model->named_parameters();
  auto b = reloaded.model->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& item : a) EXPECT_TRUE(at::equal(item.value(), b[item.key()])) << item.key();
  // Every saved key is a Hugging Face key the original checkpoint had.
  auto original = read_checkpoint(dir);
  for (const auto& [name, tensor] : named_state(*loaded.model))
    EXPECT_TRUE(original.count(name)) << name << " is not a HF key";
}

TEST(Parity, BareEncoderCheckpointLoadsIntoTaskModelWithFreshHead) {
  auto loaded = load_classifier(test::minilm_dir(), 3);
  EXPECT_EQ(loaded.model->num_labels(), 3);
  ASSERT_EQ(loaded.report.initialized.size(), 2u);  // classifier.weight and classifier.bias
  for (const auto& name : loaded.report.initialized) EXPECT_EQ(name.rfind("classifier.", 0), 0u);
}

TEST(Parity, PytorchModelBinLoadsLikeSafetensors) {
  const fs::path dir = test::fixtures() / "model" / "tiny_bert";
  auto from_safetensors = read_checkpoint(dir);
  auto from_bin = io::load_torch_state_dict(dir / "pytorch_model.bin");
  ASSERT_EQ(from_bin.size(), from_safetensors.size());
  for (const auto& [name, tensor] : from_safetensors) {
    ASSERT_TRUE(from_bin.count(name)) << name;
    EXPECT_TRUE(at::equal(from_bin[name], tensor)) << name;
  }
}

}  // namespace
}  // namespace deltatune::model
