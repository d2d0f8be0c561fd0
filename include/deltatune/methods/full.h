// Full fine-tuning: every parameter trains and is stored (the baseline).
#pragma once

#include "deltatune/methods/method.h"

namespace deltatune::methods {

class FullFineTuning : public Method {
 public:
  std::string name() const override { return "full"; }
  nlohmann::json config() const override { return nlohmann::json::object(); }
  void attach(model::SequenceClassifierImpl& model) override;
  std::string describe() const override { return "every parameter trains; all are stored"; }
};

}  // namespace deltatune::methods
