// Names the part of the encoder a Hugging Face parameter key belongs to, for
// parameter tables and for methods that select by kind (BitFit's bias groups).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/module.h>

namespace deltatune::model {

enum class ParameterGroup {
  kEmbeddings,       // word / position / token-type tables and ELECTRA's projection
  kAttentionWeight,  // query, key, value, attention output dense
  kAttentionBias,
  kFfnWeight,        // intermediate (d -> 4d) and output (4d -> d) dense
  kFfnBias,
  kLayerNormWeight,
  kLayerNormBias,
  kPooler,
  kHead,             // classifier
  kOther,            // anything a method added (prompts, adapters, ...)
};

const char* group_name(ParameterGroup group);

// Classifies by the HF key, prefix ("bert.", ...) or not.
ParameterGroup classify_parameter(const std::string& name);

// The layer index in "...encoder.layer.<i>..." or -1.
int layer_of(const std::string& name);

struct GroupCount {
  ParameterGroup group;
  int64_t count = 0;
};

// Parameter counts per group, in enum order, groups with zero omitted.
std::vector<GroupCount> count_by_group(const torch::nn::Module& module);

}  // namespace deltatune::model
