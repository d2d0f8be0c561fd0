#include "deltatune/methods/prompt_tuning.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/core.h>

#include <random>

#include "deltatune/error.h"

namespace deltatune::methods {

namespace {

const char* const kModule = "prompt";
const std::string kParameterSuffix = ".prompt.embedding";

// Vocabulary ids "vocab" samples from: BERT's uncased vocabulary keeps its
// special and [unusedN] tokens in the first 999 ids, so those are skipped.
int64_t first_sampled_id(int64_t vocab_size) { return vocab_size > 2000 ? 1000 : 0; }

}  // namespace

bool is_prompt_parameter(const std::string& name) {
  return name.size() > kParameterSuffix.size() &&
         name.compare(name.size() - kParameterSuffix.size(), kParameterSuffix.size(),
                      kParameterSuffix) == 0;
}

model::WordInput insert_prompts(const model::WordInput& in, const at::Tensor& prompts,
                                bool after_first) {
  const int64_t batch = in.word_vectors.size(0), count = prompts.size(1);
  auto insert = [&](const at::Tensor& x, const at::Tensor& prompt) {
    if (!after_first) return at::cat({prompt, x}, 1);
    return at::cat({x.narrow(1, 0, 1), prompt, x.narrow(1, 1, x.size(1) - 1)}, 1);
  };
  at::Tensor vectors =
      prompts.to(in.word_vectors.scalar_type()).expand({batch, count, prompts.size(2)});
  return {insert(in.word_vectors, vectors),
          insert(in.attention_mask, at::ones({batch, count}, in.attention_mask.options())),
          insert(in.token_type_ids, at::zeros({batch, count}, in.token_type_ids.options()))};
}

// Inserts the one prompt into every sequence.
class PromptTuning::Inserter : public model::EmbeddingInserter {
 public:
  Inserter(at::Tensor initial, bool after_first) : after_first_(after_first) {
    embedding = register_parameter("embedding", std::move(initial));
  }

  model::WordInput forward(const model::WordInput& in) override {
    return insert_prompts(in, embedding.unsqueeze(0), after_first_);
  }

  at::Tensor embedding;

 private:
  bool after_first_;
};

PromptTuning::PromptTuning(PromptTuningOptions options) : options_(std::move(options)) {
  if (options_.length < 1) throw Error("prompt-tuning: length must be at least 1");
  if (options_.placement != "after_cls" && options_.placement != "start")
    throw Error("prompt-tuning: placement must be after_cls or start, not '" + options_.placement +
                "'");
  if (options_.init != "random" && options_.init != "vocab" && options_.init != "tokens")
    throw Error("prompt-tuning: init must be random, vocab or tokens, not '" + options_.init + "'");
  if (options_.init == "tokens" && options_.init_token_ids.empty())
    throw Error("prompt-tuning: init 'tokens' needs at least one token id");
}

nlohmann::json PromptTuning::config() const {
  nlohmann::json c = {{"length", options_.length},
                      {"placement", options_.placement},
                      {"init", options_.init},
                      {"seed", options_.seed}};
  if (options_.init == "tokens") c["init_token_ids"] = options_.init_token_ids;
  return c;
}

void PromptTuning::attach_modules(model::SequenceClassifierImpl& model) {
  if (inserter_) throw Error("prompt-tuning: already attached");
  const at::Tensor& vocabulary = model.encoder->embeddings->word_embeddings->weight;
  const int64_t vocab_size = vocabulary.size(0), width = vocabulary.size(1);
  std::vector<int64_t> ids;
  if (options_.init == "tokens") {
    for (int64_t i = 0; i < options_.length; ++i)
      ids.push_back(options_.init_token_ids[i % options_.init_token_ids.size()]);
    for (int64_t id : ids)
      if (id < 0 || id >= vocab_size)
        throw Error(fmt::format("prompt-tuning: init token id {} is outside the vocabulary (0..{})",
                                id, vocab_size - 1));
  } else if (options_.init == "vocab") {
    std::mt19937_64 rng(options_.seed);
    std::uniform_int_distribution<int64_t> pick(first_sampled_id(vocab_size), vocab_size - 1);
    for (int64_t i = 0; i < options_.length; ++i) ids.push_back(pick(rng));
  }
  at::Tensor initial;
  {
    at::NoGradGuard no_grad;
    if (ids.empty()) {
      auto generator = at::make_generator<at::CPUGeneratorImpl>(options_.seed);
      // Drawn on the CPU (the generator's device), then moved: the same
      // prompt on every device.
      initial = at::empty({options_.length, width}, vocabulary.options().device(at::kCPU))
                    .uniform_(-0.5, 0.5, generator)
                    .to(vocabulary.device());
    } else {
      initial =
          vocabulary.index_select(0, at::tensor(ids, at::kLong).to(vocabulary.device())).clone();
    }
  }
  inserter_ = std::make_shared<Inserter>(initial, options_.placement == "after_cls");
  model.encoder->set_embedding_inserter(kModule, inserter_);
}

void PromptTuning::attach(model::SequenceClassifierImpl& model) {
  for (auto& item : model.named_parameters(true))
    item.value().requires_grad_(is_classifier_parameter(item.key()));
  attach_modules(model);
  inserter_->embedding.requires_grad_(true);
}

at::Tensor PromptTuning::prompt() const {
  if (!inserter_) throw Error("prompt-tuning: not attached");
  return inserter_->embedding;
}

std::vector<std::pair<std::string, StorageKind>> PromptTuning::stored_parameters(
    const model::SequenceClassifierImpl& model) const {
  std::vector<std::pair<std::string, StorageKind>> stored;
  for (const auto& item : model.named_parameters(true))
    if (is_classifier_parameter(item.key()) || is_prompt_parameter(item.key()))
      stored.emplace_back(item.key(), StorageKind::kDense);
  return stored;
}

std::string PromptTuning::describe() const {
  return fmt::format(
      "a soft prompt of {} input vectors ({}, initialised from {}) trains with the head; the "
      "encoder is frozen; dense delta of the prompt",
      options_.length, options_.placement == "after_cls" ? "after [CLS]" : "before [CLS], as PEFT",
      options_.init);
}

}  // namespace deltatune::methods
