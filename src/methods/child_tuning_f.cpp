#include "deltatune/methods/child_tuning_f.h"

#include <ATen/ATen.h>
#include <fmt/core.h>

#include "deltatune/error.h"
#include "deltatune/model/dropout.h"

namespace deltatune::methods {

ChildTuningF::ChildTuningF(double reserve_p) : reserve_p_(reserve_p) {
  if (!(reserve_p > 0 && reserve_p <= 1))
    throw Error(fmt::format("child-tuning-f: reserve_p must be in (0, 1], not {}", reserve_p));
}

void ChildTuningF::attach(model::SequenceClassifierImpl& model) {
  for (auto& p : model.parameters(true)) p.requires_grad_(true);
}

void ChildTuningF::before_step(model::SequenceClassifierImpl& model, int64_t /*step*/) {
  at::NoGradGuard no_grad;
  for (auto& p : model.parameters(true)) {
    at::Tensor grad = p.mutable_grad();
    if (!grad.defined()) continue;
    // M / p_F with M ~ Bernoulli(p_F), from the default CPU generator (seeded,
    // checkpointed) whatever the device: the same masks on a GPU as on the
    // CPU, and in every rank of a job (train::Trainer's shared draws). For
    // fp32 gradients the draw is model::dropout_keep_mask's: bernoulli_'s
    // values and stream bit for bit, without ATen's serial one-call-per-entry
    // kernel (a whole model's entries every step).
    const auto cpu = grad.options().device(at::kCPU);
    at::Tensor mask = grad.scalar_type() == at::kFloat
                          ? model::dropout_keep_mask(grad.sizes(), reserve_p_).to(cpu)
                          : at::empty(grad.sizes(), cpu).bernoulli_(reserve_p_);
    grad.mul_(mask.to(grad.device()).div_(reserve_p_));
  }
}

std::string ChildTuningF::describe() const {
  return fmt::format(
      "every parameter trains; each step keeps a random {:.0f}% of gradient entries (scaled "
      "by 1/p); dense delta",
      100 * reserve_p_);
}

}  // namespace deltatune::methods
