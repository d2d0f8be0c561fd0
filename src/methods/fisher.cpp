#include "deltatune/methods/fisher.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "deltatune/data/shuffle.h"
#include "deltatune/error.h"

namespace deltatune::methods {

namespace {

// Gradients of `loss` with respect to `inputs`, zeros where one is unused.
std::vector<at::Tensor> gradients(const at::Tensor& loss, const std::vector<at::Tensor>& inputs,
                                  bool retain) {
  auto grads = torch::autograd::grad({loss}, inputs, {}, retain, false, /*allow_unused=*/true);
  for (size_t i = 0; i < grads.size(); ++i)
    if (!grads[i].defined()) grads[i] = at::zeros_like(inputs[i]);
  return grads;
}

// Each tensor's gradient to at most max_norm on its own, with
// torch.nn.utils.clip_grad_norm_'s factor, as Child-Tuning's calculate_fisher
// calls clip_grad_norm_(params, max_grad_norm) per parameter.
void clip_to_norm(std::vector<at::Tensor>& grads, double max_norm) {
  if (max_norm <= 0) return;
  for (auto& g : grads) {
    const double factor = max_norm / (g.norm().item<double>() + 1e-6);
    if (factor < 1) g.mul_(factor);
  }
}

}  // namespace

std::map<std::string, at::Tensor> diagonal_fisher(
    const std::vector<std::pair<std::string, at::Tensor>>& parameters, std::size_t num_examples,
    const ExampleForward& forward, const FisherOptions& options) {
  if (parameters.empty()) throw Error("Fisher estimation: no parameters to score");
  if (num_examples == 0) throw Error("Fisher estimation: no training examples");
  if (options.batch_size == 0) throw Error("Fisher estimation: batch size must be positive");
  std::vector<std::size_t> order;
  const std::size_t used =
      options.examples == 0 ? num_examples : std::min(options.examples, num_examples);
  if (used < num_examples) {
    order = data::shuffled_indices(num_examples, options.seed);
    order.resize(used);
  } else {
    order.resize(num_examples);
    for (std::size_t i = 0; i < num_examples; ++i) order[i] = i;
  }

  std::vector<at::Tensor> inputs, sums;
  std::vector<bool> required;
  for (const auto& [name, p] : parameters) {
    required.push_back(p.requires_grad());
    inputs.push_back(p);
    // fp64 sums: the estimate then hardly depends on the order the
    // gradients are added in (one process, or shards summed over ranks).
    sums.push_back(at::zeros_like(p, p.options().dtype(at::kDouble)));
  }
  for (auto& p : inputs) p.requires_grad_(true);

  const int rank = options.shards ? options.shards->rank : 0;
  const int world = options.shards ? options.shards->world : 1;
  const auto gradients_taken =
      static_cast<int64_t>((used + options.batch_size - 1) / options.batch_size);
  try {
    for (std::size_t start = 0, g = 0; start < used; start += options.batch_size, ++g) {
      if (static_cast<int>(g % static_cast<std::size_t>(world)) != rank) continue;
      std::vector<std::size_t> batch(order.begin() + start,
                                     order.begin() + std::min(used, start + options.batch_size));
      auto [logits, labels] = forward(batch);
      logits = logits.to(at::kFloat);
      auto accumulate = [&](std::vector<at::Tensor> grads, double weight) {
        clip_to_norm(grads, options.clip_norm);
        for (size_t i = 0; i < grads.size(); ++i)
          sums[i].add_(grads[i].to(at::kDouble).pow(2), weight);
      };
      if (logits.size(-1) == 1) {  // regression: Gaussian log-likelihood, up to scale
        at::Tensor loss = at::mse_loss(logits.squeeze(-1), labels.to(at::kFloat));
        accumulate(gradients(loss, inputs, false), 1.0);
      } else if (!options.expected_labels) {
        at::Tensor loss = at::cross_entropy_loss(logits, labels);
        accumulate(gradients(loss, inputs, false), 1.0);
      } else {
        // E_{c ~ p(c|x)} of the squared gradient: one backward per class,
        // each weighted by its (detached) mean probability over the batch.
        at::Tensor log_probs = at::log_softmax(logits, -1);
        at::Tensor probs = log_probs.detach().exp();
        const int64_t classes = logits.size(-1);
        for (int64_t c = 0; c < classes; ++c) {
          at::Tensor loss = -log_probs.select(-1, c).mean();
          const double weight = probs.select(-1, c).mean().item<double>();
          accumulate(gradients(loss, inputs, c + 1 < classes), weight);
        }
      }
    }
  } catch (...) {
    for (size_t i = 0; i < inputs.size(); ++i) inputs[i].requires_grad_(required[i]);
    throw;
  }
  for (size_t i = 0; i < inputs.size(); ++i) inputs[i].requires_grad_(required[i]);

  if (world > 1) options.shards->sum_over_ranks(sums);
  std::map<std::string, at::Tensor> fisher;
  for (size_t i = 0; i < parameters.size(); ++i)
    fisher[parameters[i].first] = sums[i].div_(static_cast<double>(gradients_taken)).to(at::kFloat);
  return fisher;
}

namespace {

// Float order as unsigned order: the key of a larger float is larger (-0 sorts
// just below +0, which compare equal as floats; NaN has been refused).
uint32_t order_key(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

float from_order_key(uint32_t key) {
  const uint32_t bits = (key & 0x80000000u) ? key & 0x7fffffffu : ~key;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

}  // namespace

std::map<std::string, at::Tensor> top_k_masks(const std::map<std::string, at::Tensor>& scores,
                                              int64_t k) {
  // Exactly as a stable descending sort of all scores concatenated in name
  // order would select, without materialising that sort: find the k-th
  // largest value t by bisection on the float order (32 counting passes, no
  // memory beyond one tensor's comparison), take every entry above t, then
  // the first (k - #above) entries equal to t in flat order.
  std::vector<std::pair<std::string, at::Tensor>> flat;
  int64_t total = 0;
  for (const auto& [name, s] : scores) {
    at::Tensor values = s.detach().to(at::kFloat).contiguous().view(-1);
    if (values.numel() > 0 && values.isnan().any().item<bool>())
      throw Error("cannot rank scores of '" + name + "': they hold NaN");
    flat.emplace_back(name, values);
    total += values.numel();
  }
  if (k < 0 || k > total)
    throw Error("cannot select " + std::to_string(k) + " of " + std::to_string(total) + " entries");
  auto count_at_least = [&](float t) {
    int64_t n = 0;
    for (const auto& [name, v] : flat) n += v.ge(t).sum().item<int64_t>();
    return n;
  };
  std::map<std::string, at::Tensor> masks;
  if (k == 0) {
    for (const auto& [name, s] : scores)
      masks[name] = at::zeros(s.sizes(), s.options().dtype(at::kBool));
    return masks;
  }
  // lo: a key whose value has at least k entries at or above it; hi: none above.
  uint32_t lo = UINT32_MAX, hi = 0;
  for (const auto& [name, v] : flat) {
    if (v.numel() == 0) continue;
    lo = std::min(lo, order_key(v.min().item<float>()));
    hi = std::max(hi, order_key(v.max().item<float>()));
  }
  while (lo < hi) {  // the largest key with count_at_least(value) >= k
    const uint32_t mid = lo + (hi - lo + 1) / 2;
    if (count_at_least(from_order_key(mid)) >= k) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const float threshold = from_order_key(lo);
  int64_t ties_left = k;
  for (const auto& [name, v] : flat) ties_left -= v.gt(threshold).sum().item<int64_t>();
  for (const auto& [name, v] : flat) {
    at::Tensor selected = v.gt(threshold);
    if (ties_left > 0) {
      at::Tensor ties = v.eq(threshold).nonzero().view(-1);
      const int64_t take = std::min<int64_t>(ties_left, ties.numel());
      selected.index_fill_(0, ties.narrow(0, 0, take), true);
      ties_left -= take;
    }
    masks[name] = selected.view(scores.at(name).sizes());
  }
  return masks;
}

int64_t count_selected(const std::map<std::string, at::Tensor>& masks) {
  int64_t n = 0;
  for (const auto& [name, m] : masks) n += m.ne(0).sum().item<int64_t>();
  return n;
}

}  // namespace deltatune::methods
