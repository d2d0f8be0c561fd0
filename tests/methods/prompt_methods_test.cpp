// Prompt Tuning, Prefix Tuning and Houlsby adapters on all-MiniLM-L6-v2:
// what trains, where prompts and prefixes sit (a prompt initialised from
// token embeddings equals those tokens typed into the input), that padding
// inside a batch changes no sequence's output, the prefix MLP folding into
// the plain table, and PEFT's prefix and prompt adapters both ways.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>

#include "deltatune/methods/adapters.h"
#include "deltatune/methods/peft_format.h"
#include "deltatune/methods/prefix_tuning.h"
#include "deltatune/methods/prompt_tuning.h"
#include "deltatune/train/task_model.h"
#include "test_paths.h"

namespace deltatune::methods {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int64_t kHidden = 384, kLayers = 6, kHead = 2 * kHidden + 2;

// Two sentences of different lengths, right-padded with id 0.
model::EncoderInput padded_batch() {
  model::EncoderInput input;
  input.input_ids = at::tensor({101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102, 0, 0, 0,
                                101, 2009, 2001, 102,  2204, 3185, 1012, 102,  0,   0, 0, 0},
                               at::kLong)
                        .view({2, 12});
  input.attention_mask = input.input_ids.ne(0).to(at::kLong);
  input.token_type_ids = at::zeros_like(input.input_ids);
  input.token_type_ids[1].narrow(0, 4, 4).fill_(1);
  return input;
}

// Row `row` of `batch` without its padding.
model::EncoderInput single(const model::EncoderInput& batch, int64_t row) {
  const int64_t length = batch.attention_mask[row].sum().item<int64_t>();
  model::EncoderInput one;
  one.input_ids = batch.input_ids[row].narrow(0, 0, length).unsqueeze(0);
  one.attention_mask = batch.attention_mask[row].narrow(0, 0, length).unsqueeze(0);
  one.token_type_ids = batch.token_type_ids[row].narrow(0, 0, length).unsqueeze(0);
  return one;
}

at::Tensor logits_of(model::SequenceClassifierImpl& model, const model::EncoderInput& input) {
  model.eval();
  at::NoGradGuard no_grad;
  return model.forward(input);
}

int64_t trainable_values(model::SequenceClassifierImpl& model) {
  int64_t n = 0;
  for (const auto& item : model.named_parameters(true))
    if (item.value().requires_grad()) n += item.value().numel();
  return n;
}

// Every sequence of a padded batch gets the logits it gets alone.
void expect_padding_invariant(model::SequenceClassifierImpl& model) {
  const auto batch = padded_batch();
  const at::Tensor together = logits_of(model, batch);
  for (int64_t row = 0; row < 2; ++row)
    EXPECT_TRUE(at::allclose(together[row], logits_of(model, single(batch, row))[0], 1e-5, 1e-5))
        << "row " << row << ": " << together[row] << " vs "
        << logits_of(model, single(batch, row))[0];
}

void randomize_head(model::SequenceClassifierImpl& model) {
  at::NoGradGuard no_grad;
  at::manual_seed(11);
  for (auto& item : model.named_parameters(true))
    if (is_classifier_parameter(item.key())) item.value().normal_(0, 0.2);
}

TEST(PromptTuning, TrainsOnlyThePromptAndTheHead) {
  train::BaseModel base = train::load_base(test::minilm_dir());
  auto model = train::make_task_model(base, 2, 0);
  PromptTuning prompt;
  prompt.attach(*model);
  EXPECT_EQ(trainable_values(*model), 20 * kHidden + kHead);
  for (const auto& item : model->named_parameters(true)) {
    if (item.value().requires_grad()) {
      EXPECT_TRUE(is_prompt_parameter(item.key()) || is_classifier_parameter(item.key()))
          << item.key();
    }
  }
  // "vocab" takes rows of the word-embedding table past BERT's reserved ids.
  const at::Tensor table = model->encoder->embeddings->word_embeddings->weight;
  for (int64_t i = 0; i < 20; ++i) {
    at::Tensor matches = (table - prompt.prompt()[i]).abs().sum(1).eq(0).nonzero();
    ASSERT_GE(matches.size(0), 1) << "prompt row " << i << " is no vocabulary row";
    EXPECT_GE(matches[0][0].item<int64_t>(), 1000);
  }
  PromptTuningOptions random;
  random.init = "random";
  auto other = train::make_task_model(base, 2, 0);
  PromptTuning uniform(random);
  uniform.attach(*other);
  EXPECT_LE(uniform.prompt().abs().max().item<double>(), 0.5);
  EXPECT_GT(uniform.prompt().std().item<double>(), 0.2);  // U(-0.5, 0.5) has std 0.29
}

TEST(PromptTuning, APromptOfTokenEmbeddingsEqualsTypingThoseTokens) {
  // Placement, positions, token types and the mask all line up only if the
  // prompt goes exactly where the tokens would.
  train::BaseModel base = train::load_base(test::minilm_dir());
  const std::vector<int64_t> words = {2023, 2003, 1037};  // "this is a"
  for (const std::string placement : {"after_cls", "start"}) {
    PromptTuningOptions options;
    options.length = 3;
    options.init = "tokens";
    options.init_token_ids = words;
    options.placement = placement;
    auto model = train::make_task_model(base, 2, 0);
    randomize_head(*model);
    PromptTuning(options).attach(*model);
    auto plain = train::make_task_model(base, 2, 0);
    randomize_head(*plain);

    const auto one = single(padded_batch(), 0);
    std::vector<int64_t> ids;
    const at::Tensor original = one.input_ids[0];
    const int64_t at = placement == "after_cls" ? 1 : 0;
    for (int64_t i = 0; i < at; ++i) ids.push_back(original[i].item<int64_t>());
    ids.insert(ids.end(), words.begin(), words.end());
    for (int64_t i = at; i < original.size(0); ++i) ids.push_back(original[i].item<int64_t>());
    model::EncoderInput typed;
    typed.input_ids = at::tensor(ids, at::kLong).unsqueeze(0);
    typed.attention_mask = at::ones_like(typed.input_ids);
    typed.token_type_ids = at::zeros_like(typed.input_ids);
    EXPECT_TRUE(at::allclose(logits_of(*model, one), logits_of(*plain, typed), 1e-5, 1e-6))
        << placement;
    // Anywhere else the tokens give other logits.
    std::swap(ids[at], ids[at + 3]);
    typed.input_ids = at::tensor(ids, at::kLong).unsqueeze(0);
    EXPECT_FALSE(at::allclose(logits_of(*model, one), logits_of(*plain, typed), 1e-4, 1e-5))
        << placement;
  }
}

TEST(PrefixTuning, TheMlpTrainsAndFoldsIntoTheTableItComputes) {
  train::BaseModel base = train::load_base(test::minilm_dir());
  auto model = train::make_task_model(base, 2, 0);
  randomize_head(*model);
  const auto batch = padded_batch();
  const at::Tensor plain = logits_of(*model, batch);
  PrefixTuningOptions options;
  options.length = 10;
  options.projection_size = 64;
  PrefixTuning prefix(options);
  prefix.attach(*model);
  EXPECT_TRUE(prefix.reparameterized());
  const int64_t mlp =
      10 * kHidden + (kHidden * 64 + 64) + (64 * 2 * kLayers * kHidden + 2 * kLayers * kHidden);
  EXPECT_EQ(trainable_values(*model), mlp + kHead);
  EXPECT_EQ(prefix.prefixes().sizes(), (at::IntArrayRef{10, 2 * kLayers * kHidden}));
  const at::Tensor with_mlp = logits_of(*model, batch);
  EXPECT_FALSE(at::allclose(with_mlp, plain, 1e-3, 1e-3));  // the prefix is attended to

  // One step of training reaches the MLP's first layer.
  model->train();
  model->forward(batch).sum().backward();
  for (const auto& item : model->named_parameters(true))
    if (item.key().find(".prefix.") != std::string::npos) {
      ASSERT_TRUE(item.value().grad().defined()) << item.key();
      EXPECT_GT(item.value().grad().abs().sum().item<double>(), 0) << item.key();
    }

  prefix.after_training(*model);
  EXPECT_FALSE(prefix.reparameterized());
  std::vector<std::string> prefix_parameters;
  for (const auto& item : model->named_parameters(true))
    if (item.key().find(".prefix.") != std::string::npos) prefix_parameters.push_back(item.key());
  EXPECT_EQ(prefix_parameters, std::vector<std::string>{"bert.prefix.key_values"});
  EXPECT_TRUE(at::allclose(logits_of(*model, batch), with_mlp, 1e-5, 1e-6));
  const auto stored = prefix.stored_parameters(*model);
  ASSERT_EQ(stored.size(), 3u);  // the table and the classifier's weight and bias
}

TEST(PrefixTuning, WithoutTheMlpThePrefixesThemselvesTrain) {
  train::BaseModel base = train::load_base(test::minilm_dir());
  auto model = train::make_task_model(base, 2, 0);
  PrefixTuningOptions options;
  options.reparameterize = false;
  PrefixTuning(options).attach(*model);
  EXPECT_EQ(trainable_values(*model), 20 * 2 * kLayers * kHidden + kHead);
}

TEST(PromptAndPrefixTuning, PaddingInsideABatchChangesNoSequence) {
  train::BaseModel base = train::load_base(test::minilm_dir());
  const std::vector<std::pair<std::string, json>> layouts = {
      {"prompt-tuning", {{"placement", "after_cls"}}},
      {"prompt-tuning", {{"placement", "start"}}},
      {"prefix-tuning", {{"positions", "unchanged"}}},
      {"prefix-tuning", {{"positions", "shifted"}}}};
  for (const auto& [method, options] : layouts) {
    SCOPED_TRACE(method + " " + options.dump());
    auto model = train::make_task_model(base, 2, 0);
    randomize_head(*model);
    make_method(method, options)->attach(*model);
    expect_padding_invariant(*model);
  }
}

TEST(Adapters, StartNearTheIdentityAndTrainWithTheLayerNorms) {
  train::BaseModel base = train::load_base(test::minilm_dir());
  auto model = train::make_task_model(base, 2, 0);
  randomize_head(*model);
  const auto batch = padded_batch();
  const at::Tensor plain = logits_of(*model, batch);
  Adapters adapters;
  adapters.attach(*model);
  const int64_t per_adapter = 2 * kHidden * 64 + 64 + kHidden;
  const int64_t layer_norms = (1 + 2 * kLayers) * 2 * kHidden;
  EXPECT_EQ(trainable_values(*model), 2 * kLayers * per_adapter + layer_norms + kHead);
  const at::Tensor adapted = logits_of(*model, batch);
  const double moved = (adapted - plain).abs().max().item<double>();
  EXPECT_GT(moved, 0);
  EXPECT_LT(moved, 1e-3);
  // With W_up = 0 each adapter is exactly the identity.
  {
    at::NoGradGuard no_grad;
    for (auto& item : model->named_parameters(true))
      if (item.key().find(".adapter.up.") != std::string::npos) item.value().zero_();
  }
  EXPECT_TRUE(at::allclose(logits_of(*model, batch), plain, 1e-6, 1e-7));
  int64_t adapter_tensors = 0;
  for (const auto& [name, kind] : adapters.stored_parameters(*model))
    adapter_tensors += is_adapter_parameter(name);
  EXPECT_EQ(adapter_tensors, 2 * kLayers * 4);
  EXPECT_FALSE(adapters.folds_into_weights());
}

// --- PEFT's prefix and prompt adapters ------------------------------------------------

model::EncoderInput fixture_input(const json& expected) {
  auto tensor = [&](const char* key) {
    std::vector<int64_t> flat;
    for (const auto& row : expected[key])
      for (const auto& v : row) flat.push_back(v.get<int64_t>());
    return at::tensor(flat, at::kLong).view({static_cast<int64_t>(expected[key].size()), -1});
  };
  model::EncoderInput input;
  input.input_ids = tensor("input_ids");
  input.token_type_ids = tensor("token_type_ids");
  input.attention_mask = tensor("attention_mask");
  return input;
}

at::Tensor fixture_logits(const json& expected, const at::Tensor& like) {
  std::vector<float> flat;
  for (const auto& row : expected["logits"])
    for (const auto& v : row) flat.push_back(v.get<float>());
  return at::tensor(flat).view_as(like);
}

TEST(PromptPeft, APeftMadePrefixAdapterGivesPeftsLogits) {
  const fs::path fixtures = fs::path(DELTATUNE_FIXTURES) / "peft";
  const json expected = json::parse(std::ifstream(fixtures / "minilm_prefix_logits.json"));
  Delta delta = Delta::load(fixtures / "minilm_prefix");
  EXPECT_EQ(delta.meta["method"]["name"], "prefix-tuning");
  EXPECT_EQ(delta.meta["method"]["config"]["positions"], "shifted");
  EXPECT_EQ(delta.meta["num_labels"], 3);
  train::BaseModel base = train::load_base(test::minilm_dir());
  auto model = train::model_from_delta(base, delta);
  const auto input = fixture_input(expected);
  const at::Tensor ours = logits_of(*model, input);
  const at::Tensor peft = fixture_logits(expected, ours);
  EXPECT_LE((ours - peft).abs().max().item<double>(), 1e-4) << ours << "\n" << peft;
  // PEFT's position shift matters: unshifted positions give other logits.
  delta.meta["method"]["config"]["positions"] = "unchanged";
  auto unshifted = train::model_from_delta(base, delta);
  EXPECT_GT((logits_of(*unshifted, input) - peft).abs().max().item<double>(), 1e-3);
}

TEST(PromptPeft, APeftMadePromptAdapterGivesPeftsLogits) {
  const fs::path fixtures = fs::path(DELTATUNE_FIXTURES) / "peft";
  const json expected = json::parse(std::ifstream(fixtures / "minilm_prompt_logits.json"));
  Delta delta = Delta::load(fixtures / "minilm_prompt");
  EXPECT_EQ(delta.meta["method"]["name"], "prompt-tuning");
  EXPECT_EQ(delta.meta["method"]["config"]["placement"], "start");
  train::BaseModel base = train::load_base(test::minilm_dir());
  auto model = train::model_from_delta(base, delta);
  const auto input = fixture_input(expected);
  const at::Tensor ours = logits_of(*model, input);
  const at::Tensor peft = fixture_logits(expected, ours);
  EXPECT_LE((ours - peft).abs().max().item<double>(), 1e-4) << ours << "\n" << peft;
  delta.meta["method"]["config"]["placement"] = "after_cls";
  auto after_cls = train::model_from_delta(base, delta);
  EXPECT_GT((logits_of(*after_cls, input) - peft).abs().max().item<double>(), 1e-3);
}

// A trained-like delta of `method` on MiniLM, as the CLI builds it.
Delta delta_of(Method& method, model::SequenceClassifierImpl& model, const train::BaseModel& base) {
  method.after_training(model);
  Delta delta;
  delta.tensors = collect_delta_tensors(model, base.checkpoint, method.stored_parameters(model),
                                        base.config.base_model_prefix());
  delta.meta = {{"method", {{"name", method.name()}, {"config", method.config()}}},
                {"base_model", base.identity()},
                {"num_labels", 2},
                {"label_names", {"negative", "positive"}}};
  return delta;
}

TEST(PromptPeft, AdaptersWrittenHereReadBackToTheSameModel) {
  train::BaseModel base = train::load_base(test::minilm_dir());
  const auto batch = padded_batch();
  PrefixTuningOptions shifted;
  shifted.positions = "shifted";
  PromptTuningOptions start;
  start.placement = "start";
  std::vector<std::unique_ptr<Method>> methods;
  methods.push_back(std::make_unique<PrefixTuning>(shifted));
  methods.push_back(std::make_unique<PromptTuning>(start));
  for (auto& method : methods) {
    auto model = train::make_task_model(base, 2, 0);
    randomize_head(*model);
    method->attach(*model);
    const at::Tensor expected = logits_of(*model, batch);
    Delta delta = delta_of(*method, *model, base);
    test::ScratchDir dir;
    save_peft_adapter(delta, dir.path());
    const json config = json::parse(std::ifstream(dir.path() / "adapter_config.json"));
    EXPECT_EQ(config["num_layers"], kLayers);
    EXPECT_EQ(config["num_virtual_tokens"], 20);
    EXPECT_EQ(config["token_dim"], kHidden);
    Delta back = Delta::load(dir.path());
    EXPECT_EQ(back.meta["imported_from"], "peft");
    EXPECT_EQ(back.meta["label_names"], json({"negative", "positive"}));
    auto restored = train::model_from_delta(base, back);
    EXPECT_TRUE(at::allclose(logits_of(*restored, batch), expected, 1e-5, 1e-6)) << method->name();
  }
}

TEST(PromptPeft, LayoutsPeftComputesDifferentlyAreNotWritten) {
  train::BaseModel base = train::load_base(test::minilm_dir());
  PrefixTuning prefix;  // positions unchanged
  auto model = train::make_task_model(base, 2, 0);
  prefix.attach(*model);
  Delta delta = delta_of(prefix, *model, base);
  ASSERT_TRUE(peft_incompatibility(delta).has_value());
  EXPECT_NE(peft_incompatibility(delta)->find("--prefix-positions shifted"), std::string::npos);
  test::ScratchDir dir;
  EXPECT_THROW(save_peft_adapter(delta, dir.path() / "peft"), Error);
  EXPECT_FALSE(fs::exists(dir.path() / "peft" / "adapter_config.json"));
}

}  // namespace
}  // namespace deltatune::methods
