// Prefix Tuning (Li & Liang, ACL 2021; docs/METHODS.md "Prefix Tuning") and its
// variant without reparameterisation (deep prompts, P-Tuning v2).
//
// Every layer l attends to m trainable key and value vectors ahead of the
// tokens, through the AttentionPrefix hook; the attention mask lets every
// token see them. The prefixes of all layers form one table
//   P [m, 2 L H],  layer l's keys = P[:, 2l H : (2l+1) H], values = the next H,
// each H split into heads as the model's own keys are (PEFT's layout).
// With reparameterisation (the default while training) P = MLP(P'),
//   MLP(x) = W_b tanh(W_a x + c_a) + c_b,  P' [m, H],  W_a [h, H], W_b [2LH, h],
// and after training after_training() replaces the MLP by the P it computes,
// so the delta holds only P and the classifier. The encoder is frozen.
//
// Positions: "unchanged" (default) numbers the tokens 0..L-1 as without a
// prefix; "shifted" numbers them from m, as Hugging Face does when it counts
// the prefix as past keys (PEFT's prefix tuning; its adapters use this mode).
#pragma once

#include <string>

#include "deltatune/methods/method.h"

namespace deltatune::methods {

struct PrefixTuningOptions {
  int64_t length = 20;            // m
  bool reparameterize = true;     // train P through the MLP
  int64_t projection_size = 512;  // h, the MLP's hidden width
  std::string positions = "unchanged";
  uint64_t seed = 0;
};

class PrefixTuning : public Method {
 public:
  explicit PrefixTuning(PrefixTuningOptions options = {});
  std::string name() const override { return "prefix-tuning"; }
  nlohmann::json config() const override;
  const PrefixTuningOptions& options() const { return options_; }

  // Trains P' and the MLP (or P itself) and the classifier.
  void attach(model::SequenceClassifierImpl& model) override;
  // The plain table P, which a stored delta fills.
  void attach_modules(model::SequenceClassifierImpl& model) override;
  // Replaces the MLP by the table it computes (a no-op without it).
  void after_training(model::SequenceClassifierImpl& model) override;
  bool folds_into_weights() const override { return false; }
  // Shifted positions number the tokens from m, as HF does after a prefix.
  int64_t added_positions() const override {
    return options_.positions == "shifted" ? options_.length : 0;
  }
  std::vector<std::pair<std::string, StorageKind>> stored_parameters(
      const model::SequenceClassifierImpl& model) const override;
  std::string describe() const override;

  // P [m, 2 L H] as the model currently computes it.
  at::Tensor prefixes() const;
  bool reparameterized() const;

 private:
  class Prefix;
  void install(model::SequenceClassifierImpl& model, bool with_mlp);
  PrefixTuningOptions options_;
  std::shared_ptr<Prefix> prefix_;
};

// The stored table: "<encoder>.prefix.key_values".
bool is_prefix_table(const std::string& name);

}  // namespace deltatune::methods
