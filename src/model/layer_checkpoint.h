// Gradient checkpointing of one encoder layer (internal to src/model).
#pragma once

#include <ATen/core/Tensor.h>

#include "deltatune/model/encoder.h"

namespace deltatune::model {

// layer.forward(hidden, mask, prefix_keys, prefix_values), keeping only the
// inputs for backward, which runs the layer again to get its gradients (a
// reentrant autograd function, as torch.utils.checkpoint(use_reentrant=True)).
// Invariants that make the gradients equal the plain pass's:
//  - the layer's trainable parameters are explicit inputs of the function,
//    so they get gradients even when nothing else entering the layer needs
//    one (PEFT on a frozen encoder: HF's trap in transformers#21381);
//  - the default generators' states (CPU, and the device's) at the forward
//    are restored for the recomputation, so dropout draws the same masks,
//    and the streams continue afterwards as if it had not run;
//  - the autocast state of the forward is replayed (backward may run on
//    another thread, where autocast is off);
//  - the forward runs with autograd recording, on detached inputs, so that it
//    takes the same kernels (never the inference-only fused ones) as the
//    recomputation: its output is bit-identical to the plain pass.
at::Tensor checkpointed_layer(LayerImpl& layer, const at::Tensor& hidden,
                              const at::Tensor& additive_mask, const at::Tensor& prefix_keys,
                              const at::Tensor& prefix_values);

}  // namespace deltatune::model
