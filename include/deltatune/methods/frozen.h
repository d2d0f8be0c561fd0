// Frozen encoder / linear probe: only the task head trains (classifier, and
// for BERT the pooler, as docs/METHODS.md counts the head).
#pragma once

#include "deltatune/methods/method.h"

namespace deltatune::methods {

class FrozenEncoder : public Method {
 public:
  std::string name() const override { return "frozen"; }
  nlohmann::json config() const override { return nlohmann::json::object(); }
  void attach(model::SequenceClassifierImpl& model) override;
  std::string describe() const override { return "encoder frozen; the head trains and is stored"; }
};

}  // namespace deltatune::methods
