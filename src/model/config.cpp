#include "deltatune/model/config.h"

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"

namespace deltatune::model {
using json = nlohmann::json;

namespace {

int64_t required_int(const json& j, const char* field, const std::string& source) {
  if (!j.contains(field)) throw Error(source + ": missing field '" + field + "'");
  if (!j[field].is_number_integer() || j[field].get<int64_t>() <= 0)
    throw Error(source + ": field '" + field + "' must be a positive integer");
  return j[field].get<int64_t>();
}

template <typename T>
T optional_field(const json& j, const char* field, T fallback, const std::string& source) {
  if (!j.contains(field) || j[field].is_null()) return fallback;
  try {
    return j[field].get<T>();
  } catch (const json::exception&) {
    throw Error(source + ": field '" + field + "' has the wrong type");
  }
}

}  // namespace

std::string EncoderConfig::base_model_prefix() const {
  switch (architecture) {
    case Architecture::kBert:
      return "bert";
    case Architecture::kRoberta:
      return "roberta";
    case Architecture::kElectra:
      return "electra";
  }
  return "bert";
}

EncoderConfig EncoderConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": config is not a JSON object");
  EncoderConfig c;
  c.raw = j;
  c.model_type = optional_field<std::string>(j, "model_type", "", source);
  if (c.model_type == "bert" || c.model_type == "minilm" || c.model_type.empty()) {
    if (c.model_type.empty()) throw Error(source + ": missing field 'model_type'");
    c.architecture = Architecture::kBert;
  } else if (c.model_type == "roberta" || c.model_type == "xlm-roberta" ||
             c.model_type == "camembert") {
    c.architecture = Architecture::kRoberta;
  } else if (c.model_type == "electra") {
    c.architecture = Architecture::kElectra;
  } else {
    throw Error(source + ": model_type '" + c.model_type +
                "' is not supported (bert, roberta, electra, minilm)");
  }
  c.vocab_size = required_int(j, "vocab_size", source);
  c.hidden_size = required_int(j, "hidden_size", source);
  c.num_hidden_layers = required_int(j, "num_hidden_layers", source);
  c.num_attention_heads = required_int(j, "num_attention_heads", source);
  c.intermediate_size = required_int(j, "intermediate_size", source);
  if (c.hidden_size % c.num_attention_heads != 0)
    throw Error(source + ": hidden_size " + std::to_string(c.hidden_size) +
                " is not a multiple of num_attention_heads " +
                std::to_string(c.num_attention_heads));
  c.embedding_size = c.architecture == Architecture::kElectra
                         ? optional_field<int64_t>(j, "embedding_size", c.hidden_size, source)
                         : c.hidden_size;
  c.hidden_act = optional_field<std::string>(j, "hidden_act", "gelu", source);
  if (c.hidden_act != "gelu" && c.hidden_act != "gelu_new" && c.hidden_act != "gelu_pytorch_tanh" &&
      c.hidden_act != "gelu_fast" && c.hidden_act != "relu" && c.hidden_act != "silu" &&
      c.hidden_act != "swish")
    throw Error(source + ": hidden_act '" + c.hidden_act + "' is not supported");
  c.layer_norm_eps = optional_field<double>(j, "layer_norm_eps", 1e-12, source);
  c.max_position_embeddings = optional_field<int64_t>(j, "max_position_embeddings", 512, source);
  c.type_vocab_size = optional_field<int64_t>(j, "type_vocab_size", 2, source);
  c.pad_token_id = optional_field<int64_t>(
      j, "pad_token_id", c.architecture == Architecture::kRoberta ? 1 : 0, source);
  c.hidden_dropout_prob = optional_field<double>(j, "hidden_dropout_prob", 0.1, source);
  c.attention_probs_dropout_prob =
      optional_field<double>(j, "attention_probs_dropout_prob", 0.1, source);
  if (j.contains("classifier_dropout") && !j["classifier_dropout"].is_null())
    c.classifier_dropout = optional_field<double>(j, "classifier_dropout", 0.1, source);
  c.initializer_range = optional_field<double>(j, "initializer_range", 0.02, source);
  const std::string position_type =
      optional_field<std::string>(j, "position_embedding_type", "absolute", source);
  if (position_type != "absolute")
    throw Error(source + ": position_embedding_type '" + position_type +
                "' is not supported (absolute only)");
  if (j.contains("id2label") && j["id2label"].is_object()) {
    const json& labels = j["id2label"];
    c.id2label.resize(labels.size());
    for (auto it = labels.begin(); it != labels.end(); ++it) {
      size_t index = 0;
      try {
        index = std::stoul(it.key());
      } catch (const std::exception&) {
        throw Error(source + ": id2label key '" + it.key() + "' is not an integer");
      }
      if (index >= c.id2label.size())
        throw Error(source + ": id2label key '" + it.key() + "' is out of range");
      c.id2label[index] = it->get<std::string>();
    }
  }
  if (j.contains("problem_type") && j["problem_type"].is_string())
    c.problem_type = j["problem_type"].get<std::string>();
  return c;
}

EncoderConfig EncoderConfig::from_file(const std::filesystem::path& path) {
  const std::string text = io::read_text_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path.string() + ": not valid JSON (" + e.what() + ")");
  }
  return from_json(j, path.string());
}

json EncoderConfig::to_json() const {
  json j = raw.is_object() ? raw : json::object();
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  if (architecture == Architecture::kElectra) j["embedding_size"] = embedding_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["intermediate_size"] = intermediate_size;
  j["hidden_act"] = hidden_act;
  j["layer_norm_eps"] = layer_norm_eps;
  j["max_position_embeddings"] = max_position_embeddings;
  j["type_vocab_size"] = type_vocab_size;
  j["pad_token_id"] = pad_token_id;
  if (!id2label.empty()) {
    json id2 = json::object(), label2id = json::object();
    for (size_t i = 0; i < id2label.size(); ++i) {
      id2[std::to_string(i)] = id2label[i];
      label2id[id2label[i]] = i;
    }
    j["id2label"] = id2;
    j["label2id"] = label2id;
  }
  if (problem_type) j["problem_type"] = *problem_type;
  return j;
}

}  // namespace deltatune::model
