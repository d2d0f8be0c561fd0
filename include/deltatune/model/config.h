// The encoder's architecture as read from a Hugging Face config.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace deltatune::model {

enum class Architecture { kBert, kRoberta, kElectra };

struct EncoderConfig {
  Architecture architecture = Architecture::kBert;
  std::string model_type;  // as in config.json ("bert", "roberta", "electra", ...)
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t embedding_size = 0;  // ELECTRA may embed in a smaller space; else == hidden_size
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t intermediate_size = 0;
  std::string hidden_act = "gelu";
  double layer_norm_eps = 1e-12;
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;
  int64_t pad_token_id = 0;
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  std::optional<double> classifier_dropout;
  double initializer_range = 0.02;
  std::vector<std::string> id2label;  // empty: not given
  std::optional<std::string> problem_type;
  nlohmann::json raw;  // the whole file, kept for export

  // RoBERTa numbers positions from pad_token_id + 1 (padding gets pad_token_id).
  bool positions_from_padding() const { return architecture == Architecture::kRoberta; }
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  // Tokens a sequence may hold: the position table's size, less RoBERTa's
  // pad_token_id + 1 positions that no token takes.
  int64_t max_sequence_tokens() const {
    return max_position_embeddings - (positions_from_padding() ? pad_token_id + 1 : 0);
  }
  // The prefix under which a task model keeps the encoder ("bert.", ...).
  std::string base_model_prefix() const;

  // Throws deltatune::Error naming `source` and the missing or bad field.
  static EncoderConfig from_json(const nlohmann::json& json, const std::string& source);
  static EncoderConfig from_file(const std::filesystem::path& path);
  nlohmann::json to_json() const;  // raw with the fields above written back
};

}  // namespace deltatune::model
