#include "deltatune/methods/bitfit.h"

#include <ATen/ATen.h>

#include "deltatune/error.h"
#include "deltatune/methods/delta.h"
#include "deltatune/model/parameter_groups.h"

namespace deltatune::methods {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

const std::vector<std::string>& BitFit::bias_group_names() {
  static const std::vector<std::string> names{"query",
                                              "key",
                                              "value",
                                              "attention_output",
                                              "intermediate",
                                              "output",
                                              "attention_layernorm",
                                              "output_layernorm",
                                              "embeddings_layernorm",
                                              "pooler"};
  return names;
}

std::string BitFit::bias_group_of(const std::string& name) {
  if (!ends_with(name, ".bias")) return "";
  if (ends_with(name, "attention.self.query.bias")) return "query";
  if (ends_with(name, "attention.self.key.bias")) return "key";
  if (ends_with(name, "attention.self.value.bias")) return "value";
  if (ends_with(name, "attention.output.dense.bias")) return "attention_output";
  if (ends_with(name, "attention.output.LayerNorm.bias")) return "attention_layernorm";
  if (ends_with(name, "intermediate.dense.bias")) return "intermediate";
  if (ends_with(name, "output.dense.bias"))
    return "output";  // FFN output (attention's matched above)
  if (ends_with(name, "output.LayerNorm.bias")) return "output_layernorm";
  if (ends_with(name, "embeddings.LayerNorm.bias")) return "embeddings_layernorm";
  if (ends_with(name, "pooler.dense.bias")) return "pooler";
  return "other";  // e.g. ELECTRA's embeddings_project.bias
}

BitFit::BitFit(std::set<std::string> groups) : groups_(std::move(groups)) {
  if (groups_.empty()) throw Error("bitfit: no bias terms selected");
  for (const auto& g : groups_) {
    const auto& known = bias_group_names();
    if (g != "all" && std::find(known.begin(), known.end(), g) == known.end()) {
      std::string list = "all";
      for (const auto& k : known) list += ", " + k;
      throw Error("bitfit: unknown bias term '" + g + "' (known: " + list + ")");
    }
  }
}

bool BitFit::selected(const std::string& group) const {
  return groups_.count("all") != 0 || groups_.count(group) != 0;
}

nlohmann::json BitFit::config() const {
  return {{"bias_terms", std::vector<std::string>(groups_.begin(), groups_.end())}};
}

void BitFit::attach(model::SequenceClassifierImpl& model) {
  for (auto& item : model.named_parameters(true)) {
    const std::string& name = item.key();
    const std::string group = bias_group_of(name);
    // The classifier always trains; of the pooler only its bias, as the authors' code does.
    const bool head = name.rfind("classifier.", 0) == 0;
    item.value().requires_grad_(head || (!group.empty() && selected(group)));
  }
}

std::string BitFit::describe() const {
  std::string terms;
  for (const auto& g : groups_) terms += (terms.empty() ? "" : ",") + g;
  return "bias terms (" + terms + ") and the classifier train and are stored";
}

std::vector<BiasChange> bias_changes(const Delta& delta,
                                     const std::map<std::string, at::Tensor>& base,
                                     const std::string& base_prefix) {
  std::vector<BiasChange> out;
  const std::string dotted = base_prefix + ".";
  for (const auto& t : delta.tensors) {
    const std::string group = BitFit::bias_group_of(t.name);
    if (group.empty() || t.name.rfind("classifier.", 0) == 0) continue;
    std::string key = t.name;
    if (!base.count(key) && key.rfind(dotted, 0) == 0) key = key.substr(dotted.size());
    auto original = base.find(key);
    if (original == base.end()) continue;
    at::Tensor before = original->second.to(at::kFloat).flatten();
    at::Tensor after = before.clone();
    if (t.sparse()) {
      after.index_copy_(0, t.indices.to(at::kLong), t.values.to(at::kFloat));
    } else {
      after = t.values.to(at::kFloat).flatten();
    }
    out.push_back({model::layer_of(t.name), group, t.name,
                   (after - before).abs().mean().item<double>(), before.numel()});
  }
  // By layer, then in the paper's order of bias types (query, key, value, ...).
  const auto& order = BitFit::bias_group_names();
  auto rank = [&](const std::string& group) {
    return std::find(order.begin(), order.end(), group) - order.begin();
  };
  std::stable_sort(out.begin(), out.end(), [&](const BiasChange& a, const BiasChange& b) {
    return std::make_pair(a.layer, rank(a.group)) < std::make_pair(b.layer, rank(b.group));
  });
  return out;
}

}  // namespace deltatune::methods
