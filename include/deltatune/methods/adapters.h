// Houlsby adapters (Houlsby et al., ICML 2019; docs/METHODS.md "Adapters"), as the
// authors' adapter-bert builds them.
//
// Each layer gains two bottleneck adapters, one after the attention output
// projection and one after the FFN output, where their output dropout ends and
// before the residual connection and LayerNorm (the SublayerAdapter hook):
//   adapter(h) = h + W_up gelu(W_down h + b_down) + b_up,
// W_down [k, H], W_up [H, k], both drawn from a normal truncated at two
// standard deviations (std init_std, 1e-3), biases zero: near the identity.
// The adapters, every LayerNorm of the encoder and the classifier train; the
// delta holds exactly those.
#pragma once

#include "deltatune/methods/method.h"

namespace deltatune::methods {

struct AdapterOptions {
  int64_t bottleneck = 64;  // k
  double init_std = 1e-3;
  uint64_t seed = 0;
};

class Adapters : public Method {
 public:
  explicit Adapters(AdapterOptions options = {});
  std::string name() const override { return "adapters"; }
  nlohmann::json config() const override;
  const AdapterOptions& options() const { return options_; }

  void attach(model::SequenceClassifierImpl& model) override;
  void attach_modules(model::SequenceClassifierImpl& model) override;
  bool folds_into_weights() const override { return false; }
  std::vector<std::pair<std::string, StorageKind>> stored_parameters(
      const model::SequenceClassifierImpl& model) const override;
  std::string describe() const override;

 private:
  AdapterOptions options_;
  bool attached_ = false;
};

// "....output.adapter.*": a parameter of an adapter module.
bool is_adapter_parameter(const std::string& name);

}  // namespace deltatune::methods
