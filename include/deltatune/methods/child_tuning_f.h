// Child-Tuning_F (Xu et al., EMNLP 2021), the task-free variant: every step,
// each gradient entry is kept with probability p_F and scaled by 1/p_F
// (g <- g * M / p_F, M ~ Bernoulli(p_F) drawn afresh), after gradient clipping
// and before the optimizer
// updates its moments. Every parameter changes over a run: the delta is dense.
#pragma once

#include "deltatune/methods/method.h"

namespace deltatune::methods {

class ChildTuningF : public Method {
 public:
  explicit ChildTuningF(double reserve_p);
  std::string name() const override { return "child-tuning-f"; }
  nlohmann::json config() const override { return {{"reserve_p", reserve_p_}}; }
  void attach(model::SequenceClassifierImpl& model) override;
  void before_step(model::SequenceClassifierImpl& model, int64_t step) override;
  std::string describe() const override;

 private:
  double reserve_p_;
};

}  // namespace deltatune::methods
