// LoRA (Hu et al., ICLR 2022; docs/METHODS.md "beyond"). Every targeted Dense
// layer W [out, in] gains a low-rank update through the DenseDelta hook:
//   y = x W^T + b + (alpha / r) * dropout(x) A^T B^T,
// A [r, in] ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform(a = sqrt 5)),
// B [out, r] = 0, so training starts at the base model. The base is frozen;
// A, B and the head train. merge() adds (alpha / r) B A to W and turns the
// branch off; unmerge() subtracts it again (fp32 round trip within 1e-6).
// Parameter names are "<dense>.lora.lora_A.weight" / "...lora_B.weight",
// which map one to one onto PEFT's "<dense>.lora_A.weight" (peft_format.h).
#pragma once

#include <string>
#include <vector>

#include "deltatune/methods/method.h"

namespace deltatune::methods {

struct LoraOptions {
  int64_t rank = 8;
  double alpha = 8;
  double dropout = 0.0;
  // A Dense layer is targeted when its name equals an entry or ends with
  // "." + entry (PEFT's rule for a list of target modules).
  std::vector<std::string> target_modules = {"query", "value"};
  double scaling() const { return alpha / static_cast<double>(rank); }
};

class Lora : public Method {
 public:
  explicit Lora(LoraOptions options = {});
  std::string name() const override { return "lora"; }
  nlohmann::json config() const override;
  const LoraOptions& options() const { return options_; }

  void attach(model::SequenceClassifierImpl& model) override;
  void attach_modules(model::SequenceClassifierImpl& model) override;
  void fold_into_weights(model::SequenceClassifierImpl& model) override;
  std::vector<std::pair<std::string, StorageKind>> stored_parameters(
      const model::SequenceClassifierImpl& model) const override;
  std::string describe() const override;

  // W += scaling B A for every branch, which then adds nothing; unmerge()
  // subtracts it and turns the branches back on.
  void merge();
  void unmerge();
  bool merged() const { return merged_; }
  // Names of the targeted Dense layers (after attach_modules()).
  std::vector<std::string> targets() const;

 private:
  struct Branch;
  LoraOptions options_;
  std::vector<std::shared_ptr<Branch>> branches_;
  bool merged_ = false;
};

}  // namespace deltatune::methods
