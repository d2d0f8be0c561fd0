#include "deltatune/train/prompt_ensemble.h"

#include <ATen/ATen.h>

#include "deltatune/error.h"
#include "deltatune/methods/method.h"
#include "deltatune/methods/prompt_tuning.h"

namespace deltatune::train {

using json = nlohmann::json;

EnsembleCombine parse_ensemble_combine(const std::string& name) {
  if (name == "mean") return EnsembleCombine::kMeanProbability;
  if (name == "vote") return EnsembleCombine::kMajorityVote;
  throw Error("--ensemble must be mean or vote, not '" + name + "'");
}

// Rows [k B, (k+1) B) of a batch repeated K times get prompt k.
class PromptEnsemble::Prompts : public model::EmbeddingInserter {
 public:
  Prompts(at::Tensor stacked, bool after_first)
      : stacked_(std::move(stacked)), after_first_(after_first) {}
  void move_to(const at::Device& device) { stacked_ = stacked_.to(device); }
  model::WordInput forward(const model::WordInput& in) override {
    const int64_t members = stacked_.size(0), batch = in.word_vectors.size(0) / members;
    return methods::insert_prompts(in, stacked_.repeat_interleave(batch, 0), after_first_);
  }

 private:
  at::Tensor stacked_;  // [K, m, E]
  bool after_first_;
};

PromptEnsemble::PromptEnsemble(const BaseModel& base, const std::vector<methods::Delta>& deltas) {
  if (deltas.empty()) throw Error("a prompt ensemble needs at least one delta");
  std::vector<at::Tensor> prompts;
  json first_config;
  int64_t labels = 0;
  for (size_t k = 0; k < deltas.size(); ++k) {
    const json method = deltas[k].meta.value("method", json::object());
    const std::string which = "delta " + std::to_string(k + 1);
    if (method.value("name", "") != "prompt-tuning")
      throw Error(which + " is of method '" + method.value("name", std::string("?")) +
                  "'; a prompt ensemble combines prompt-tuning deltas");
    const json config = method.value("config", json::object());
    if (k == 0) {
      first_config = config;
      labels = deltas[k].meta.value("num_labels", int64_t{0});
    } else if (config.value("placement", "") != first_config.value("placement", "") ||
               config.value("length", 0) != first_config.value("length", 0)) {
      throw Error(which + ": prompt length or placement differs from delta 1's");
    } else if (deltas[k].meta.value("num_labels", int64_t{0}) != labels) {
      throw Error(which + ": its head has another number of labels than delta 1's");
    }
    // Checks the base and shapes and gives the member's prompt and head.
    auto member = model_from_delta(base, deltas[k]);
    std::vector<at::Tensor> head;
    for (const auto& item : member->named_parameters(true)) {
      if (methods::is_prompt_parameter(item.key())) prompts.push_back(item.value().detach());
      if (methods::is_classifier_parameter(item.key())) head.push_back(item.value().detach());
    }
    if (prompts.size() != k + 1) throw Error(which + " holds no prompt");
    member_heads_.push_back(std::move(head));
  }
  model_ = make_task_model(base, labels, 0);
  for (auto& p : model_->parameters()) p.requires_grad_(false);
  // The members' models have this layout, so their classifier tensors come in this order.
  for (const auto& item : model_->named_parameters(true))
    if (methods::is_classifier_parameter(item.key())) head_.push_back(item.value());
  model_->eval();
  prompts_ = std::make_shared<Prompts>(at::stack(prompts),
                                       first_config.value("placement", "after_cls") == "after_cls");
  model_->encoder->set_embedding_inserter("prompt", prompts_);
}

PromptEnsemble::~PromptEnsemble() = default;

void PromptEnsemble::to(const at::Device& device) {
  model_->to(device);
  prompts_->move_to(device);
  for (auto& head : member_heads_)
    for (auto& t : head) t = t.to(device);
}

at::Device PromptEnsemble::device() const { return model::device_of(*model_); }

at::Tensor PromptEnsemble::all_logits(const model::EncoderInput& input) {
  const int64_t members = size(), batch = input.input_ids.size(0);
  model::EncoderInput repeated;
  repeated.input_ids = input.input_ids.repeat({members, 1});
  repeated.attention_mask = input.attention_mask.defined()
                                ? input.attention_mask.repeat({members, 1})
                                : at::ones_like(repeated.input_ids);
  if (input.token_type_ids.defined())
    repeated.token_type_ids = input.token_type_ids.repeat({members, 1});
  at::NoGradGuard no_grad;
  model::EncoderOutput encoded = model_->encoder->forward(repeated);
  encoded_rows_ += members * batch;
  std::vector<at::Tensor> logits;
  for (int64_t k = 0; k < members; ++k) {
    for (size_t i = 0; i < head_.size(); ++i) head_[i].copy_(member_heads_[k][i]);
    model::EncoderOutput part;
    part.last_hidden_state = encoded.last_hidden_state.narrow(0, k * batch, batch);
    if (encoded.pooler_output.defined())
      part.pooler_output = encoded.pooler_output.narrow(0, k * batch, batch);
    part.attention_mask = encoded.attention_mask.narrow(0, k * batch, batch);
    logits.push_back(model_->head(part).to(at::kFloat));
  }
  return at::stack(logits);
}

at::Tensor PromptEnsemble::forward(const model::EncoderInput& input, EnsembleCombine how) {
  return combine(all_logits(input), how);
}

at::Tensor PromptEnsemble::combine(const at::Tensor& logits, EnsembleCombine how) const {
  if (num_labels() == 1) {
    if (how == EnsembleCombine::kMajorityVote)
      throw Error("majority vote needs labels; a regression ensemble takes --ensemble mean");
    return logits.mean(0);
  }
  at::Tensor mean_probability = at::softmax(logits, -1).mean(0);
  if (how == EnsembleCombine::kMeanProbability) return mean_probability.log();
  at::Tensor votes = at::one_hot(logits.argmax(-1), num_labels()).sum(0).to(at::kFloat);  // [B, C]
  return votes + mean_probability * 0.5;  // a tie-break worth less than one vote
}

EnsembleEvaluation evaluate_ensemble(PromptEnsemble& ensemble, const data::TaskSpec& task,
                                     const data::EncodedDataset& dataset, int64_t batch_size,
                                     bool bf16, EnsembleCombine how) {
  const int64_t members = ensemble.size(), labels = ensemble.num_labels();
  // Rows [N, K * C]: each example's member logits side by side.
  at::Tensor rows = predict_batches(
      [&](const model::EncoderInput& input) {
        return ensemble.all_logits(input).permute({1, 0, 2}).reshape({input.input_ids.size(0), -1});
      },
      dataset, batch_size, model::parse_precision(bf16, false), ensemble.device());
  at::Tensor logits = rows.view({rows.size(0), members, labels}).permute({1, 0, 2});  // [K, N, C]
  EnsembleEvaluation out;
  out.combined = evaluate_logits(task, ensemble.combine(logits, how), dataset);
  for (int64_t k = 0; k < members; ++k)
    out.members.push_back(evaluate_logits(task, logits[k].contiguous(), dataset));
  return out;
}

}  // namespace deltatune::train
