#include "deltatune/model/parameter_groups.h"

#include <map>

namespace deltatune::model {

namespace {
bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

const char* group_name(ParameterGroup group) {
  switch (group) {
    case ParameterGroup::kEmbeddings:
      return "embeddings";
    case ParameterGroup::kAttentionWeight:
      return "attention weights";
    case ParameterGroup::kAttentionBias:
      return "attention biases";
    case ParameterGroup::kFfnWeight:
      return "FFN weights";
    case ParameterGroup::kFfnBias:
      return "FFN biases";
    case ParameterGroup::kLayerNormWeight:
      return "LayerNorm weights";
    case ParameterGroup::kLayerNormBias:
      return "LayerNorm biases";
    case ParameterGroup::kPooler:
      return "pooler";
    case ParameterGroup::kHead:
      return "head";
    case ParameterGroup::kOther:
      return "other";
  }
  return "other";
}

ParameterGroup classify_parameter(const std::string& name) {
  const bool bias = ends_with(name, ".bias");
  const bool weight = ends_with(name, ".weight");
  if (name.rfind("classifier.", 0) == 0) return ParameterGroup::kHead;
  if (contains(name, "pooler.")) return ParameterGroup::kPooler;
  if (contains(name, "LayerNorm.")) {
    if (bias) return ParameterGroup::kLayerNormBias;
    if (weight) return ParameterGroup::kLayerNormWeight;
  }
  if (contains(name, "embeddings.") || contains(name, "embeddings_project.")) {
    if (contains(name, "_embeddings.weight") || contains(name, "embeddings_project."))
      return ParameterGroup::kEmbeddings;
  }
  const bool attention =
      contains(name, ".attention.self.query.") || contains(name, ".attention.self.key.") ||
      contains(name, ".attention.self.value.") || contains(name, ".attention.output.dense.");
  const bool ffn = contains(name, ".intermediate.dense.") ||
                   (contains(name, ".output.dense.") && !contains(name, ".attention."));
  if (attention && (bias || weight))
    return bias ? ParameterGroup::kAttentionBias : ParameterGroup::kAttentionWeight;
  if (ffn && (bias || weight)) return bias ? ParameterGroup::kFfnBias : ParameterGroup::kFfnWeight;
  return ParameterGroup::kOther;
}

int layer_of(const std::string& name) {
  const std::string marker = "encoder.layer.";
  const size_t at = name.find(marker);
  if (at == std::string::npos) return -1;
  return std::atoi(name.c_str() + at + marker.size());
}

std::vector<GroupCount> count_by_group(const torch::nn::Module& module) {
  std::map<ParameterGroup, int64_t> counts;
  for (const auto& item : module.named_parameters(true))
    counts[classify_parameter(item.key())] += item.value().numel();
  std::vector<GroupCount> out;
  for (const auto& [group, count] : counts) out.push_back({group, count});
  return out;
}

}  // namespace deltatune::model
