// Prompt Tuning (Lester et al., EMNLP 2021; docs/METHODS.md "Prompt Tuning").
//
// A trainable soft prompt E [m, E] is inserted into the sequence of word
// vectors through the EmbeddingInserter hook, with the attention mask
// extended by m ones and token type 0; the embeddings then add positions
// 0..L+m-1, token types and the LayerNorm as for any token. Only the input
// layer gets prompts. The encoder is frozen; the prompt and the classifier
// train, and the delta holds exactly those.
//
// Placement: "after_cls" (default) keeps [CLS] at position 0, where BERT's
// pooler and RoBERTa's head read; "start" puts the prompt before [CLS], as
// Hugging Face PEFT does (its adapters are read and written in that mode).
//
// Initialisation: "random" (uniform in [-0.5, 0.5], Lester's), "vocab" (the
// embeddings of sampled vocabulary tokens) or "tokens" (the embeddings of
// given token ids, repeated to length m: class-label words or a text, resolved
// by the caller's tokenizer; PEFT's TEXT init).
#pragma once

#include <string>
#include <vector>

#include "deltatune/methods/method.h"

namespace deltatune::methods {

struct PromptTuningOptions {
  int64_t length = 20;  // m, the number of soft tokens
  std::string placement = "after_cls";
  std::string init = "vocab";
  std::vector<int64_t> init_token_ids;  // for init "tokens"
  uint64_t seed = 0;                    // for "random" and "vocab"
};

class PromptTuning : public Method {
 public:
  explicit PromptTuning(PromptTuningOptions options = {});
  std::string name() const override { return "prompt-tuning"; }
  nlohmann::json config() const override;
  const PromptTuningOptions& options() const { return options_; }

  void attach(model::SequenceClassifierImpl& model) override;
  void attach_modules(model::SequenceClassifierImpl& model) override;
  bool folds_into_weights() const override { return false; }
  int64_t added_positions() const override { return options_.length; }
  std::vector<std::pair<std::string, StorageKind>> stored_parameters(
      const model::SequenceClassifierImpl& model) const override;
  std::string describe() const override;

  // The prompt [m, E] (after attach_modules()).
  at::Tensor prompt() const;

 private:
  class Inserter;
  PromptTuningOptions options_;
  std::shared_ptr<Inserter> inserter_;
};

// The parameter that holds a prompt: "<encoder>.prompt.embedding".
bool is_prompt_parameter(const std::string& name);

// `input` with `prompts` [1 or B, m, E] inserted after each sequence's first
// token (after_first) or before it: mask 1 and token type 0 on the prompt.
model::WordInput insert_prompts(const model::WordInput& input, const at::Tensor& prompts,
                                bool after_first);

}  // namespace deltatune::methods
