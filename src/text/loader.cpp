// load_tokenizer: reads Hugging Face tokenizer files into the pipeline classes.
#include <algorithm>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "deltatune/error.h"
#include "deltatune/text/bpe.h"
#include "deltatune/text/tokenizer.h"
#include "deltatune/text/wordpiece.h"
#include "unicode.h"

namespace deltatune::text {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open file");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path.string() + ": read error");
  return ss.str();
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

json read_json(const fs::path& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path.string() + ": invalid JSON: " + one_line(e.what()));
  }
}

std::optional<json> read_json_if_exists(const fs::path& path) {
  if (!fs::exists(path)) return std::nullopt;
  json j = read_json(path);
  if (!j.is_object()) throw Error(path.string() + ": expected a JSON object");
  return j;
}

// Typed access that reports the file and field on mismatch.
class Fields {
 public:
  Fields(fs::path file, const json& j, std::string prefix = "")
      : file_(std::move(file)), j_(j), prefix_(std::move(prefix)) {
    if (!j_.is_object()) fail("", "expected an object");
  }

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(file_.string() + ": " + name(key) + ": " + what);
  }
  std::string name(const std::string& key) const {
    if (prefix_.empty()) return key.empty() ? "(root)" : key;
    return key.empty() ? prefix_ : prefix_ + "." + key;
  }

  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const json& at(const std::string& key) const {
    if (!j_.contains(key)) fail(key, "missing");
    return j_.at(key);
  }
  Fields object(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_object()) fail(key, "expected an object");
    return Fields(file_, v, name(key));
  }
  std::string str(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_string()) fail(key, "expected a string");
    return v.get<std::string>();
  }
  std::string str_or(const std::string& key, const std::string& def) const {
    return has(key) ? str(key) : def;
  }
  bool boolean_or(const std::string& key, bool def) const {
    if (!has(key)) return def;
    const json& v = j_.at(key);
    if (!v.is_boolean()) fail(key, "expected true or false");
    return v.get<bool>();
  }
  std::optional<bool> optional_bool(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    return boolean_or(key, false);
  }
  int64_t integer(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_number_integer()) fail(key, "expected an integer");
    return v.get<int64_t>();
  }
  const json& raw() const { return j_; }
  const fs::path& file() const { return file_; }

 private:
  fs::path file_;
  const json& j_;
  std::string prefix_;
};

// An added token's content and flags as HF writes them in tokenizer.json's
// added_tokens and tokenizer_config.json's added_tokens_decoder (same keys).
void read_added_token_fields(const Fields& t, AddedToken& a) {
  a.content = t.str("content");
  a.single_word = t.boolean_or("single_word", false);
  a.lstrip = t.boolean_or("lstrip", false);
  a.rstrip = t.boolean_or("rstrip", false);
  a.special = t.boolean_or("special", false);
  a.normalized = t.boolean_or("normalized", !a.special);
}

std::unordered_map<std::string, int64_t> parse_vocab_object(const Fields& model) {
  const json& v = model.at("vocab");
  if (!v.is_object()) model.fail("vocab", "expected an object of token -> id");
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0) {
      model.fail("vocab", "id of token '" + it.key() + "' is not a non-negative integer");
    }
    vocab.emplace(it.key(), it.value().get<int64_t>());
  }
  return vocab;
}

std::vector<AddedToken> parse_added_tokens(const Fields& root) {
  std::vector<AddedToken> tokens;
  if (!root.has("added_tokens")) return tokens;
  const json& arr = root.at("added_tokens");
  if (!arr.is_array()) root.fail("added_tokens", "expected an array");
  for (std::size_t i = 0; i < arr.size(); ++i) {
    Fields t(root.file(), arr[i], "added_tokens[" + std::to_string(i) + "]");
    AddedToken a;
    a.id = t.integer("id");
    read_added_token_fields(t, a);
    tokens.push_back(std::move(a));
  }
  return tokens;
}

// [token, id] as in BertProcessing / RobertaProcessing.
int64_t processor_token_id(const Fields& f, const std::string& key) {
  const json& v = f.at(key);
  if (!v.is_array() || v.size() != 2 || !v[1].is_number_integer()) {
    f.fail(key, "expected [token, id]");
  }
  return v[1].get<int64_t>();
}

std::vector<SpecialsTemplate::Piece> parse_template(const Fields& pp, const std::string& key) {
  const json& arr = pp.at(key);
  if (!arr.is_array()) pp.fail(key, "expected an array");
  std::optional<Fields> specials;
  if (pp.has("special_tokens")) specials.emplace(pp.object("special_tokens"));
  std::vector<SpecialsTemplate::Piece> pieces;
  for (std::size_t i = 0; i < arr.size(); ++i) {
    const std::string item_name = key + "[" + std::to_string(i) + "]";
    Fields item(pp.file(), arr[i], pp.name(item_name));
    SpecialsTemplate::Piece piece;
    if (item.has("Sequence")) {
      Fields seq = item.object("Sequence");
      const std::string id = seq.str("id");
      if (id != "A" && id != "B") seq.fail("id", "expected \"A\" or \"B\"");
      piece.sequence = id == "A" ? 0 : 1;
      piece.type_id = seq.integer("type_id");
    } else if (item.has("SpecialToken")) {
      Fields sp = item.object("SpecialToken");
      const std::string id = sp.str("id");
      piece.type_id = sp.integer("type_id");
      if (!specials || !specials->has(id)) {
        pp.fail("special_tokens", "no entry for special token '" + id + "'");
      }
      Fields entry = specials->object(id);
      const json& ids = entry.at("ids");
      if (!ids.is_array()) entry.fail("ids", "expected an array");
      for (const json& x : ids) {
        if (!x.is_number_integer()) entry.fail("ids", "expected integers");
        piece.ids.push_back(x.get<int64_t>());
      }
    } else {
      item.fail("", "expected a Sequence or SpecialToken item");
    }
    pieces.push_back(std::move(piece));
  }
  return pieces;
}

SpecialsTemplate parse_post_processor(const Fields& root) {
  if (!root.has("post_processor")) return {};
  Fields pp = root.object("post_processor");
  const std::string type = pp.str("type");
  if (type == "TemplateProcessing") {
    SpecialsTemplate t;
    t.single = parse_template(pp, "single");
    t.pair = parse_template(pp, "pair");
    return t;
  }
  if (type == "BertProcessing") {
    return SpecialsTemplate::bert(processor_token_id(pp, "cls"), processor_token_id(pp, "sep"));
  }
  if (type == "RobertaProcessing") {
    return SpecialsTemplate::roberta(processor_token_id(pp, "cls"), processor_token_id(pp, "sep"));
  }
  if (type == "ByteLevel") return {};  // only trims offsets
  if (type == "Sequence") {
    const json& procs = pp.at("processors");
    if (!procs.is_array()) pp.fail("processors", "expected an array");
    SpecialsTemplate result;
    bool have = false;
    for (std::size_t i = 0; i < procs.size(); ++i) {
      json wrapper = {{"post_processor", procs[i]}};
      Fields w(root.file(), wrapper);
      SpecialsTemplate t = parse_post_processor(w);
      if (t.single.empty() && t.pair.empty()) continue;
      if (have) pp.fail("processors", "more than one processor adds special tokens");
      result = std::move(t);
      have = true;
    }
    return result;
  }
  pp.fail("type", "unsupported post-processor '" + type + "'");
}

struct ConfigToken {
  AddedToken token;
  bool has_flags = false;  // given as an object (with lstrip/rstrip/...), not a plain string
};

// A special-token entry of tokenizer_config.json / special_tokens_map.json:
// a string or a serialized AddedToken object.
std::optional<ConfigToken> config_token(const Fields& config, const std::string& key) {
  if (!config.has(key)) return std::nullopt;
  const json& v = config.at(key);
  ConfigToken ct;
  AddedToken& t = ct.token;
  t.special = true;
  t.normalized = false;
  if (v.is_string()) {
    t.content = v.get<std::string>();
  } else if (v.is_object()) {
    ct.has_flags = true;
    Fields o = config.object(key);
    t.content = o.str("content");
    t.single_word = o.boolean_or("single_word", false);
    t.lstrip = o.boolean_or("lstrip", false);
    t.rstrip = o.boolean_or("rstrip", false);
    t.normalized = o.boolean_or("normalized", false);
  } else {
    config.fail(key, "expected a string or a token object");
  }
  return ct;
}

struct DirFiles {
  fs::path dir;
  std::optional<json> config;       // tokenizer_config.json
  std::optional<json> special_map;  // special_tokens_map.json
  fs::path config_path() const { return dir / "tokenizer_config.json"; }
  fs::path special_map_path() const { return dir / "special_tokens_map.json"; }
};

// Special token `key` from tokenizer_config.json, then special_tokens_map.json.
std::optional<ConfigToken> special_token(const DirFiles& files, const std::string& key) {
  if (files.config) {
    if (auto t = config_token(Fields(files.config_path(), *files.config), key)) return t;
  }
  if (files.special_map) {
    if (auto t = config_token(Fields(files.special_map_path(), *files.special_map), key)) return t;
  }
  return std::nullopt;
}

std::string special_content(const DirFiles& files, const std::string& key, const std::string& def) {
  if (auto t = special_token(files, key)) return t->token.content;
  return def;
}

// Id of `token` in HF's token_to_id order: added tokens, then the model vocabulary.
int64_t token_id(const std::vector<AddedToken>& added,
                 const std::unordered_map<std::string, int64_t>& vocab, const std::string& token,
                 const fs::path& dir, const std::string& what) {
  for (const AddedToken& t : added) {
    if (t.content == token) return t.id;
  }
  if (auto it = vocab.find(token); it != vocab.end()) return it->second;
  throw Error(dir.string() + ": " + what + " '" + token + "' is not in the vocabulary");
}

// Id of the special token `key` ("pad_token", ...): the one tokenizer_config.json or
// special_tokens_map.json names, else `fallback`.
int64_t special_id(const DirFiles& files, const std::vector<AddedToken>& added,
                   const std::unordered_map<std::string, int64_t>& vocab, const std::string& key,
                   const std::string& fallback) {
  std::string what = key;
  std::replace(what.begin(), what.end(), '_', ' ');
  return token_id(added, vocab, special_content(files, key, fallback), files.dir, what);
}

// Builds a tokenizer, reporting its constructor's errors against `source`.
template <typename T, typename... Args>
std::unique_ptr<Tokenizer> construct(const fs::path& source, Args&&... args) {
  try {
    return std::make_unique<T>(std::forward<Args>(args)...);
  } catch (const Error& e) {
    throw Error(source.string() + ": " + e.what());
  }
}

// Settings from tokenizer_config.json applied on top of tokenizer.json, as
// transformers' BertTokenizerFast does for the keys it is given.
void apply_bert_config(const DirFiles& files, BertNormalizerOptions& n) {
  if (!files.config) return;
  Fields c(files.config_path(), *files.config);
  n.lowercase = c.boolean_or("do_lower_case", n.lowercase);
  n.handle_chinese_chars = c.boolean_or("tokenize_chinese_chars", n.handle_chinese_chars);
  if (c.raw().contains("strip_accents")) n.strip_accents = c.optional_bool("strip_accents");
}

std::unique_ptr<Tokenizer> load_tokenizer_json(const DirFiles& files) {
  const fs::path path = files.dir / "tokenizer.json";
  const json j = read_json(path);
  Fields root(path, j);
  Fields model = root.object("model");
  std::string type;
  if (model.has("type")) {
    type = model.str("type");
  } else if (model.has("merges")) {
    type = "BPE";
  } else if (model.has("max_input_chars_per_word")) {
    type = "WordPiece";
  } else {
    model.fail("type", "missing");
  }

  std::vector<AddedToken> added = parse_added_tokens(root);
  SpecialsTemplate post = parse_post_processor(root);
  std::string padding_token;
  if (root.has("padding")) padding_token = root.object("padding").str_or("pad_token", "");

  if (type == "WordPiece") {
    auto vocab = parse_vocab_object(model);
    WordPieceOptions opts;
    opts.unk_token = model.str_or("unk_token", opts.unk_token);
    opts.continuing_subword_prefix =
        model.str_or("continuing_subword_prefix", opts.continuing_subword_prefix);
    if (model.has("max_input_chars_per_word")) {
      const int64_t m = model.integer("max_input_chars_per_word");
      if (m < 0) model.fail("max_input_chars_per_word", "negative");
      opts.max_input_chars_per_word = static_cast<std::size_t>(m);
    }
    std::optional<BertNormalizerOptions> normalizer;
    if (root.has("normalizer")) {
      Fields nf = root.object("normalizer");
      const std::string ntype = nf.str("type");
      if (ntype != "BertNormalizer") nf.fail("type", "unsupported normalizer '" + ntype + "'");
      BertNormalizerOptions n;
      n.clean_text = nf.boolean_or("clean_text", true);
      n.handle_chinese_chars = nf.boolean_or("handle_chinese_chars", true);
      n.strip_accents = nf.optional_bool("strip_accents");
      n.lowercase = nf.boolean_or("lowercase", true);
      apply_bert_config(files, n);
      normalizer = n;
    }
    if (root.has("pre_tokenizer")) {
      Fields pf = root.object("pre_tokenizer");
      const std::string ptype = pf.str("type");
      if (ptype != "BertPreTokenizer") {
        pf.fail("type", "unsupported pre-tokenizer '" + ptype + "' for WordPiece");
      }
    } else {
      root.fail("pre_tokenizer", "missing (WordPiece needs BertPreTokenizer)");
    }
    const int64_t pad = special_id(files, added, vocab, "pad_token",
                                   padding_token.empty() ? "[PAD]" : padding_token);
    return construct<WordPieceTokenizer>(path, std::move(vocab), normalizer, std::move(opts),
                                         std::move(added), std::move(post), pad);
  }

  if (type == "BPE") {
    auto vocab = parse_vocab_object(model);
    if (model.has("dropout") &&
        (!model.at("dropout").is_number() || model.at("dropout").get<double>() != 0.0)) {
      model.fail("dropout", "BPE dropout is not supported");
    }
    if (!model.str_or("continuing_subword_prefix", "").empty()) {
      model.fail("continuing_subword_prefix", "not supported for byte-level BPE");
    }
    if (!model.str_or("end_of_word_suffix", "").empty()) {
      model.fail("end_of_word_suffix", "not supported for byte-level BPE");
    }
    if (model.boolean_or("byte_fallback", false)) {
      model.fail("byte_fallback", "not supported for byte-level BPE");
    }
    ByteLevelBpeOptions opts;
    opts.ignore_merges = model.boolean_or("ignore_merges", false);
    if (model.has("unk_token")) opts.unk_token = model.str("unk_token");

    const json& jm = model.at("merges");
    if (!jm.is_array()) model.fail("merges", "expected an array");
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(jm.size());
    for (std::size_t i = 0; i < jm.size(); ++i) {
      const json& m = jm[i];
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const auto sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
          model.fail("merges[" + std::to_string(i) + "]", "expected \"left right\"");
        }
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        model.fail("merges[" + std::to_string(i) + "]", "expected \"left right\" or [left, right]");
      }
    }

    if (root.has("normalizer")) {
      root.fail("normalizer", "normalizers are not supported with byte-level BPE");
    }
    if (!root.has("pre_tokenizer")) root.fail("pre_tokenizer", "missing (expected ByteLevel)");
    Fields pf = root.object("pre_tokenizer");
    if (pf.str("type") != "ByteLevel") {
      pf.fail("type", "unsupported pre-tokenizer '" + pf.str("type") + "' for BPE");
    }
    if (!pf.boolean_or("use_regex", true)) {
      pf.fail("use_regex", "only the GPT-2 regex is supported");
    }
    opts.add_prefix_space = pf.boolean_or("add_prefix_space", false);
    // transformers' RobertaTokenizerFast rebuilds the pre-tokenizer with the
    // configured add_prefix_space.
    if (files.config) {
      Fields c(files.config_path(), *files.config);
      opts.add_prefix_space = c.boolean_or("add_prefix_space", opts.add_prefix_space);
    }
    const int64_t pad = special_id(files, added, vocab, "pad_token",
                                   padding_token.empty() ? "<pad>" : padding_token);
    return construct<ByteLevelBpeTokenizer>(path, std::move(vocab), merges, std::move(opts),
                                            std::move(added), std::move(post), pad);
  }
  model.fail("type", "unsupported model type '" + type + "' (expected WordPiece or BPE)");
}

// Special tokens of a slow (vocab file) tokenizer, in transformers' order, from
// tokenizer_config.json's added_tokens_decoder when present, else from the
// *_token entries with the given defaults. Ids come from the vocabulary; tokens
// missing from it get fresh ids after the vocabulary, as HF's add_tokens does.
std::vector<AddedToken> slow_added_tokens(
    const DirFiles& files, const std::vector<std::pair<std::string, AddedToken>>& defaults,
    const std::unordered_map<std::string, int64_t>& vocab) {
  std::vector<AddedToken> tokens;
  if (files.config && files.config->contains("added_tokens_decoder")) {
    Fields c(files.config_path(), *files.config);
    Fields dec = c.object("added_tokens_decoder");
    for (auto it = dec.raw().begin(); it != dec.raw().end(); ++it) {
      Fields t(files.config_path(), it.value(), "added_tokens_decoder." + it.key());
      AddedToken a;
      try {
        std::size_t used = 0;
        a.id = std::stoll(it.key(), &used);
        if (used != it.key().size() || a.id < 0) throw std::invalid_argument("id");
      } catch (const std::exception&) {
        dec.fail(it.key(), "key is not a token id");
      }
      read_added_token_fields(t, a);
      tokens.push_back(std::move(a));
    }
    std::sort(tokens.begin(), tokens.end(),
              [](const AddedToken& x, const AddedToken& y) { return x.id < y.id; });
    return tokens;
  }
  int64_t next_id = 0;
  for (const auto& [tok, id] : vocab) next_id = std::max(next_id, id + 1);
  for (const auto& [key, def] : defaults) {
    AddedToken t = def;
    if (auto c = special_token(files, key)) {
      // A plain string keeps the class defaults (e.g. RoBERTa's <mask> lstrip).
      if (c->has_flags) {
        t = c->token;
      } else {
        t.content = c->token.content;
      }
    }
    if (t.content.empty()) continue;
    if (std::any_of(tokens.begin(), tokens.end(),
                    [&](const AddedToken& x) { return x.content == t.content; })) {
      continue;
    }
    auto it = vocab.find(t.content);
    t.id = it != vocab.end() ? it->second : next_id++;
    tokens.push_back(std::move(t));
  }
  return tokens;
}

AddedToken special_default(const std::string& content, bool lstrip = false) {
  AddedToken t;
  t.content = content;
  t.lstrip = lstrip;
  t.special = true;
  t.normalized = false;
  return t;
}

std::unique_ptr<Tokenizer> load_vocab_txt(const DirFiles& files) {
  const fs::path path = files.dir / "vocab.txt";
  const std::string text = read_file(path);
  std::unordered_map<std::string, int64_t> vocab;
  // One token per line, id = line index; python's load_vocab strips only "\n"
  // (a "\r" of CRLF files is stripped too). A repeated token keeps its last id.
  std::size_t pos = 0;
  int64_t id = 0;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::size_t end = nl;
    if (end > pos && text[end - 1] == '\r') --end;
    vocab[text.substr(pos, end - pos)] = id++;
    pos = nl + 1;
  }
  if (vocab.empty()) throw Error(path.string() + ": empty vocabulary");

  BertNormalizerOptions n;
  n.strip_accents = std::nullopt;
  apply_bert_config(files, n);

  const std::vector<std::pair<std::string, AddedToken>> defaults = {
      {"unk_token", special_default("[UNK]")},
      {"sep_token", special_default("[SEP]")},
      {"pad_token", special_default("[PAD]")},
      {"cls_token", special_default("[CLS]")},
      {"mask_token", special_default("[MASK]")}};
  std::vector<AddedToken> added = slow_added_tokens(files, defaults, vocab);

  WordPieceOptions opts;
  opts.unk_token = special_content(files, "unk_token", "[UNK]");
  const int64_t cls = special_id(files, added, vocab, "cls_token", "[CLS]");
  const int64_t sep = special_id(files, added, vocab, "sep_token", "[SEP]");
  const int64_t pad = special_id(files, added, vocab, "pad_token", "[PAD]");
  return construct<WordPieceTokenizer>(path, std::move(vocab), n, std::move(opts), std::move(added),
                                       SpecialsTemplate::bert(cls, sep), pad);
}

std::unique_ptr<Tokenizer> load_vocab_json_merges(const DirFiles& files) {
  const fs::path vocab_path = files.dir / "vocab.json";
  const fs::path merges_path = files.dir / "merges.txt";
  const json jv = read_json(vocab_path);
  if (!jv.is_object()) throw Error(vocab_path.string() + ": expected an object of token -> id");
  const json wrapper = {{"vocab", jv}};
  auto vocab = parse_vocab_object(Fields(vocab_path, wrapper));

  const std::string text = read_file(merges_path);
  std::vector<std::pair<std::string, std::string>> merges;
  std::size_t pos = 0;
  std::size_t line_no = 0;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::size_t end = nl;
    if (end > pos && text[end - 1] == '\r') --end;
    std::string line = text.substr(pos, end - pos);
    pos = nl + 1;
    ++line_no;
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    const auto sp = line.find(' ');
    if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos) {
      throw Error(merges_path.string() + ":" + std::to_string(line_no) +
                  ": expected \"left right\"");
    }
    merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
  }

  ByteLevelBpeOptions opts;
  if (files.config) {
    opts.add_prefix_space =
        Fields(files.config_path(), *files.config).boolean_or("add_prefix_space", false);
  }
  // RobertaTokenizer's special tokens; <mask> swallows the whitespace before it.
  const std::vector<std::pair<std::string, AddedToken>> defaults = {
      {"bos_token", special_default("<s>")},          {"eos_token", special_default("</s>")},
      {"unk_token", special_default("<unk>")},        {"sep_token", special_default("</s>")},
      {"pad_token", special_default("<pad>")},        {"cls_token", special_default("<s>")},
      {"mask_token", special_default("<mask>", true)}};
  std::vector<AddedToken> added = slow_added_tokens(files, defaults, vocab);
  const int64_t cls = special_id(files, added, vocab, "cls_token", "<s>");
  const int64_t sep = special_id(files, added, vocab, "sep_token", "</s>");
  const int64_t pad = special_id(files, added, vocab, "pad_token", "<pad>");
  return construct<ByteLevelBpeTokenizer>(files.dir, std::move(vocab), merges, std::move(opts),
                                          std::move(added), SpecialsTemplate::roberta(cls, sep),
                                          pad);
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& dir) {
  if (!fs::is_directory(dir)) throw Error(dir.string() + ": tokenizer directory not found");
  DirFiles files;
  files.dir = dir;
  files.config = read_json_if_exists(files.config_path());
  files.special_map = read_json_if_exists(files.special_map_path());
  if (fs::exists(dir / "tokenizer.json")) return load_tokenizer_json(files);
  if (fs::exists(dir / "vocab.txt")) return load_vocab_txt(files);
  if (fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt")) {
    return load_vocab_json_merges(files);
  }
  throw Error(dir.string() +
              ": no tokenizer found (expected tokenizer.json, vocab.txt, or vocab.json + "
              "merges.txt)");
}

}  // namespace deltatune::text
