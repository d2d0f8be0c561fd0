#include "deltatune/io/yaml.h"

#include <yaml.h>

#include <cmath>
#include <limits>
#include <regex>

#include "deltatune/error.h"

namespace deltatune::io {
namespace {
using json = nlohmann::json;

// YAML 1.2 core schema resolution of a plain scalar.
json plain_scalar(const std::string& text) {
  static const std::regex null_value("~|null|Null|NULL|");
  static const std::regex true_value("true|True|TRUE");
  static const std::regex false_value("false|False|FALSE");
  static const std::regex decimal("[-+]?[0-9]+");
  static const std::regex octal("0o[0-7]+");
  static const std::regex hexadecimal("0x[0-9a-fA-F]+");
  static const std::regex number("[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?");
  static const std::regex infinity("[-+]?\\.(inf|Inf|INF)");
  static const std::regex not_a_number("\\.(nan|NaN|NAN)");
  if (std::regex_match(text, null_value)) return nullptr;
  if (std::regex_match(text, true_value)) return true;
  if (std::regex_match(text, false_value)) return false;
  try {
    if (std::regex_match(text, decimal)) return std::stoll(text);
    if (std::regex_match(text, octal)) return std::stoll(text.substr(2), nullptr, 8);
    if (std::regex_match(text, hexadecimal)) return std::stoll(text.substr(2), nullptr, 16);
  } catch (const std::out_of_range&) {
    return std::stod(text);
  }
  if (std::regex_match(text, number)) return std::stod(text);
  if (std::regex_match(text, infinity))
    return text[0] == '-' ? -std::numeric_limits<double>::infinity()
                          : std::numeric_limits<double>::infinity();
  if (std::regex_match(text, not_a_number)) return std::numeric_limits<double>::quiet_NaN();
  return text;
}

class Document {
 public:
  Document(yaml_document_t* document, const std::string& source)
      : document_(document), source_(source) {}

  json convert(yaml_node_t* node, int depth = 0) const {
    if (depth > 64) fail(node, "nested too deeply");
    switch (node->type) {
      case YAML_SCALAR_NODE: {
        const std::string text(reinterpret_cast<const char*>(node->data.scalar.value),
                               node->data.scalar.length);
        if (node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) return plain_scalar(text);
        return text;
      }
      case YAML_SEQUENCE_NODE: {
        json list = json::array();
        for (yaml_node_item_t* item = node->data.sequence.items.start;
             item < node->data.sequence.items.top; ++item)
          list.push_back(convert(yaml_document_get_node(document_, *item), depth + 1));
        return list;
      }
      case YAML_MAPPING_NODE: {
        json object = json::object();
        for (yaml_node_pair_t* pair = node->data.mapping.pairs.start;
             pair < node->data.mapping.pairs.top; ++pair) {
          yaml_node_t* key = yaml_document_get_node(document_, pair->key);
          if (key->type != YAML_SCALAR_NODE) fail(key, "a mapping key must be a plain value");
          const std::string name(reinterpret_cast<const char*>(key->data.scalar.value),
                                 key->data.scalar.length);
          if (object.contains(name)) fail(key, "key '" + name + "' given twice");
          object[name] = convert(yaml_document_get_node(document_, pair->value), depth + 1);
        }
        return object;
      }
      default:
        return nullptr;
    }
  }

 private:
  [[noreturn]] void fail(const yaml_node_t* node, const std::string& why) const {
    throw Error(source_ + ":" + std::to_string(node->start_mark.line + 1) + ":" +
                std::to_string(node->start_mark.column + 1) + ": " + why);
  }
  yaml_document_t* document_;
  const std::string& source_;
};

}  // namespace

json parse_yaml(std::string_view text, const std::string& source) {
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) throw Error(source + ": cannot start the YAML parser");
  yaml_parser_set_input_string(&parser, reinterpret_cast<const unsigned char*>(text.data()),
                               text.size());
  yaml_document_t document;
  if (!yaml_parser_load(&parser, &document)) {
    const std::string message =
        source + ":" + std::to_string(parser.problem_mark.line + 1) + ":" +
        std::to_string(parser.problem_mark.column + 1) + ": " +
        (parser.problem ? parser.problem : "not valid YAML") +
        (parser.context ? std::string(" ") + parser.context : std::string());
    yaml_parser_delete(&parser);
    throw Error(message);
  }
  json result;
  try {
    yaml_node_t* root = yaml_document_get_root_node(&document);
    result = root ? Document(&document, source).convert(root) : json();
  } catch (...) {
    yaml_document_delete(&document);
    yaml_parser_delete(&parser);
    throw;
  }
  yaml_document_delete(&document);
  yaml_parser_delete(&parser);
  return result;
}

}  // namespace deltatune::io
