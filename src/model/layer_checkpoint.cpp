#include "layer_checkpoint.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <optional>
#include <vector>

#include "deltatune/model/device.h"
#include "deltatune/torch_compat.h"

namespace deltatune::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The default generators a layer's dropout may draw from (model/device.h).
std::vector<at::Generator> generators_for(const at::Device& device) {
  std::vector<at::Generator> out;
  for (auto& [type, generator] : default_generators(device)) out.push_back(generator);
  return out;
}

// The layer's parameters that train: explicit inputs of the function, in
// this order both when it is applied and in backward.
std::vector<at::Tensor> trainable_parameters(const LayerImpl& layer) {
  std::vector<at::Tensor> out;
  for (const auto& p : layer.parameters(true))
    if (p.requires_grad()) out.push_back(p);
  return out;
}

// Autocast's thread-local state for one device type (CPU and CUDA have one).
struct AutocastState {
  bool enabled = false;
  at::ScalarType dtype = at::kFloat;
  static bool applies(const at::Device& device) { return device.is_cpu() || device.is_cuda(); }
  static AutocastState of(const at::Device& device) {
    if (!applies(device)) return {};
    return {compat::autocast_enabled(device.type()), compat::autocast_dtype(device.type())};
  }
  void apply(const at::Device& device) const {
    if (!applies(device)) return;
    compat::set_autocast_enabled(device.type(), enabled);
    compat::set_autocast_dtype(device.type(), dtype);
  }
};

std::vector<at::Tensor> states_of(const std::vector<at::Generator>& generators) {
  std::vector<at::Tensor> out;
  for (const auto& g : generators) out.push_back(g.get_state());
  return out;
}

void set_states(std::vector<at::Generator>& generators, const std::vector<at::Tensor>& states) {
  for (size_t i = 0; i < generators.size(); ++i) generators[i].set_state(states[i]);
}

// LibTorch 1.13's custom functions reject undefined inputs: an absent
// prefix travels as an empty tensor and is undefined again inside.
at::Tensor absent_as_empty(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options().requires_grad(false));
}
at::Tensor empty_as_absent(const at::Tensor& t) { return t.numel() == 0 ? at::Tensor() : t; }

// A leaf of its own with the input's requires_grad, for the layer to record on.
at::Tensor detached_like(const at::Tensor& t, bool requires_grad) {
  return t.defined() ? t.detach().requires_grad_(requires_grad) : t;
}

struct CheckpointedLayer : public torch::autograd::Function<CheckpointedLayer> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden,
                            const at::Tensor& additive_mask, const at::Tensor& prefix_keys,
                            const at::Tensor& prefix_values, at::TensorList parameters,
                            LayerImpl* layer) {
    const at::Device device = hidden.device();
    ctx->saved_data["layer"] = reinterpret_cast<int64_t>(layer);
    ctx->saved_data["parameters"] = static_cast<int64_t>(parameters.size());
    ctx->saved_data["hidden_grad"] = hidden.requires_grad();
    ctx->saved_data["prefix_keys_grad"] = prefix_keys.requires_grad();
    ctx->saved_data["prefix_values_grad"] = prefix_values.requires_grad();
    const AutocastState autocast = AutocastState::of(device);
    ctx->saved_data["autocast"] = autocast.enabled;
    ctx->saved_data["autocast_dtype"] = static_cast<int64_t>(autocast.dtype);
    ctx->saved_data["rng_states"] = states_of(generators_for(device));
    ctx->save_for_backward({hidden, additive_mask, prefix_keys, prefix_values});

    at::AutoGradMode recording(true);
    return layer
        ->forward(detached_like(hidden, hidden.requires_grad()), additive_mask,
                  detached_like(empty_as_absent(prefix_keys), prefix_keys.requires_grad()),
                  detached_like(empty_as_absent(prefix_values), prefix_values.requires_grad()))
        .detach();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto* layer = reinterpret_cast<LayerImpl*>(ctx->saved_data["layer"].toInt());
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& hidden = saved[0];
    const at::Tensor& additive_mask = saved[1];
    const at::Device device = hidden.device();

    const std::vector<at::Tensor> parameters = trainable_parameters(*layer);
    const auto count = static_cast<size_t>(ctx->saved_data["parameters"].toInt());

    std::vector<at::Generator> generators = generators_for(device);
    const std::vector<at::Tensor> now = states_of(generators);
    const std::vector<at::Tensor> then = ctx->saved_data["rng_states"].toTensorVector();

    at::Tensor h = detached_like(hidden, ctx->saved_data["hidden_grad"].toBool());
    at::Tensor keys =
        detached_like(empty_as_absent(saved[2]), ctx->saved_data["prefix_keys_grad"].toBool());
    at::Tensor values =
        detached_like(empty_as_absent(saved[3]), ctx->saved_data["prefix_values_grad"].toBool());
    at::Tensor output;
    {
      at::AutoGradMode recording(true);
      const AutocastState was = AutocastState::of(device);
      AutocastState{ctx->saved_data["autocast"].toBool(),
                    static_cast<at::ScalarType>(ctx->saved_data["autocast_dtype"].toInt())}
          .apply(device);
      set_states(generators, then);
      output = layer->forward(h, additive_mask, keys, values);
      set_states(generators, now);
      was.apply(device);
    }

    // Gradients of every input that wants one: hidden, the prefixes, the parameters.
    std::vector<at::Tensor> wanted;
    std::vector<int> slot;  // the forward input each of `wanted` is
    auto want = [&](const at::Tensor& t, int index) {
      if (t.defined() && t.requires_grad()) {
        wanted.push_back(t);
        slot.push_back(index);
      }
    };
    want(h, 0);
    want(keys, 2);
    want(values, 3);
    for (size_t i = 0; i < parameters.size() && i < count; ++i)
      want(parameters[i], 4 + static_cast<int>(i));
    // hidden, mask, prefix keys, prefix values, each parameter, the layer pointer.
    variable_list result(4 + count + 1);
    if (wanted.empty()) return result;
    const variable_list grads = torch::autograd::grad({output}, wanted, {grad_outputs[0]},
                                                      /*retain_graph=*/false,
                                                      /*create_graph=*/false,
                                                      /*allow_unused=*/true);
    for (size_t i = 0; i < grads.size(); ++i) result[static_cast<size_t>(slot[i])] = grads[i];
    return result;
  }
};

}  // namespace

at::Tensor checkpointed_layer(LayerImpl& layer, const at::Tensor& hidden,
                              const at::Tensor& additive_mask, const at::Tensor& prefix_keys,
                              const at::Tensor& prefix_values) {
  const std::vector<at::Tensor> parameters = trainable_parameters(layer);
  const bool any_gradient =
      hidden.requires_grad() || (prefix_keys.defined() && prefix_keys.requires_grad()) ||
      (prefix_values.defined() && prefix_values.requires_grad()) || !parameters.empty();
  // Nothing here can receive a gradient: no graph to save in the first place.
  if (!any_gradient) return layer.forward(hidden, additive_mask, prefix_keys, prefix_values);
  return CheckpointedLayer::apply(hidden, additive_mask, absent_as_empty(prefix_keys, hidden),
                                  absent_as_empty(prefix_values, hidden),
                                  at::TensorList(parameters), &layer);
}

}  // namespace deltatune::model
