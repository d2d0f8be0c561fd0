#include "deltatune/methods/frozen.h"

namespace deltatune::methods {

void FrozenEncoder::attach(model::SequenceClassifierImpl& model) {
  for (auto& item : model.named_parameters(true))
    item.value().requires_grad_(model.is_head_parameter(item.key()));
}

}  // namespace deltatune::methods
