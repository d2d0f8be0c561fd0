#include "deltatune/methods/full.h"

namespace deltatune::methods {

void FullFineTuning::attach(model::SequenceClassifierImpl& model) {
  for (auto& p : model.parameters(true)) p.requires_grad_(true);
}

}  // namespace deltatune::methods
