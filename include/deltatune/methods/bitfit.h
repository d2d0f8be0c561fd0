// BitFit (Ben Zaken et al., ACL 2022): freeze every weight matrix and
// embedding, train bias terms and the classifier.
//
// As in the authors' GLUE runner, "all" trains every parameter whose name
// ends in "bias" (attention q/k/v and output, FFN intermediate and output,
// both LayerNorms of each layer, the embedding LayerNorm and the pooler) plus
// the classifier; the pooler's weight stays frozen. A subset of bias groups
// can be chosen, e.g. {query, intermediate}: the paper's b_q + b_m2 variant.
#pragma once

#include <map>
#include <set>

#include "deltatune/methods/method.h"

namespace deltatune::methods {

struct Delta;  // delta.h

class BitFit : public Method {
 public:
  // Group names: query, key, value, attention_output, intermediate, output,
  // attention_layernorm, output_layernorm, embeddings_layernorm, pooler; "all".
  static const std::vector<std::string>& bias_group_names();
  // The bias group a parameter belongs to, or "" for a non-bias.
  static std::string bias_group_of(const std::string& name);

  explicit BitFit(std::set<std::string> groups = {"all"});
  std::string name() const override { return "bitfit"; }
  nlohmann::json config() const override;
  void attach(model::SequenceClassifierImpl& model) override;
  std::string describe() const override;
  const std::set<std::string>& groups() const { return groups_; }

 private:
  bool selected(const std::string& group) const;
  std::set<std::string> groups_;
};

// The paper's analysis of which biases move: for every stored bias of the
// encoder, mean over its dimensions of |b_F - b_0| (b_0 from `base`, the
// base checkpoint, whose keys may lack the task model's `base_prefix`).
struct BiasChange {
  int layer = -1;     // encoder layer, -1 outside the layers (embeddings, pooler)
  std::string group;  // BitFit::bias_group_names()
  std::string name;
  double mean_abs_change = 0;
  int64_t size = 0;
};
// In order of layer (embeddings and pooler, -1, first), then bias type.
std::vector<BiasChange> bias_changes(const Delta& delta,
                                     const std::map<std::string, at::Tensor>& base,
                                     const std::string& base_prefix);

}  // namespace deltatune::methods
