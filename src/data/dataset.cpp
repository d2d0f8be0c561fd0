#include "deltatune/data/dataset.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>

#include "deltatune/data/shuffle.h"
#include "deltatune/error.h"
#include "deltatune/text/utf8.h"

namespace deltatune::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A record that cannot become an example; `line` is where the record starts.
struct BadRecord {
  std::size_t line;
  std::string what;
};

void check_utf8(std::string_view s, std::size_t line) {
  const std::size_t at = text::invalid_utf8_at(s);
  if (at == std::string_view::npos) return;
  static const char* hex = "0123456789ABCDEF";
  const auto b = static_cast<unsigned char>(s[at]);
  throw BadRecord{line, "invalid UTF-8 (byte 0x" + std::string{hex[b >> 4], hex[b & 15]} +
                            " at column " + std::to_string(at + 1) + ")"};
}

bool is_blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  });
}

// Quotes a user value for a one-line message: control characters escaped, long
// values cut.
std::string shown(std::string_view s) {
  std::string out = "'";
  for (std::size_t i = 0; i < s.size() && i < 60; ++i) {
    const char c = s[i];
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else {
      out += c;
    }
  }
  if (s.size() > 60) out += "...";
  return out + "'";
}

std::string join(const std::vector<std::string>& items, std::size_t max_items = 20) {
  std::string out;
  for (std::size_t i = 0; i < items.size() && i < max_items; ++i) out += (i ? ", " : "") + items[i];
  if (items.size() > max_items) out += ", ...";
  return out;
}

// Physical lines without their '\n' (and a '\r' before it), a leading UTF-8
// BOM removed from line 1. A last line without a newline is still a line.
class LineReader {
 public:
  explicit LineReader(const fs::path& path) : file_(path.string()), in_(path, std::ios::binary) {
    if (!in_) throw Error(file_ + ": cannot open file");
  }
  bool next(std::string& line) {
    if (!std::getline(in_, line)) {
      if (in_.bad()) throw Error(file_ + ": read error");
      return false;
    }
    ++number_;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (number_ == 1 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);
    return true;
  }
  std::size_t number() const { return number_; }
  bool empty_file() { return in_.peek() == std::ifstream::traits_type::eof() && number_ == 0; }

 private:
  std::string file_;
  std::ifstream in_;
  std::size_t number_ = 0;
};

void split_tab(const std::string& line, std::vector<std::string>& fields) {
  fields.clear();
  std::size_t start = 0;
  for (;;) {
    const std::size_t tab = line.find('\t', start);
    if (tab == std::string::npos) {
      fields.emplace_back(line, start);
      return;
    }
    fields.emplace_back(line, start, tab - start);
    start = tab + 1;
  }
}

// One RFC 4180 record starting at `first` (already read). A quoted field may
// span lines; its line breaks become '\n'. Throws BadRecord at the record's
// first line; the rest of the offending physical line is dropped.
void parse_csv_record(LineReader& lines, const std::string& first, std::vector<std::string>& fields,
                      std::size_t& record_line) {
  fields.clear();
  record_line = lines.number();
  std::string field;
  enum class State { kFieldStart, kUnquoted, kQuoted, kAfterQuote } state = State::kFieldStart;
  std::string line = first;
  for (;;) {
    check_utf8(line, record_line);
    for (const char c : line) {
      switch (state) {
        case State::kFieldStart:
          if (c == '"') {
            state = State::kQuoted;
          } else if (c == ',') {
            fields.push_back(std::move(field));
            field.clear();
          } else {
            field += c;
            state = State::kUnquoted;
          }
          break;
        case State::kUnquoted:
          if (c == ',') {
            fields.push_back(std::move(field));
            field.clear();
            state = State::kFieldStart;
          } else if (c == '"') {
            throw BadRecord{record_line,
                            "quote inside an unquoted field (RFC 4180: quote the "
                            "whole field and double the quote)"};
          } else {
            field += c;
          }
          break;
        case State::kQuoted:
          if (c == '"') {
            state = State::kAfterQuote;
          } else {
            field += c;
          }
          break;
        case State::kAfterQuote:
          if (c == '"') {
            field += '"';
            state = State::kQuoted;
          } else if (c == ',') {
            fields.push_back(std::move(field));
            field.clear();
            state = State::kFieldStart;
          } else {
            throw BadRecord{record_line,
                            "unexpected " + shown(std::string(1, c)) + " after a closing quote"};
          }
          break;
      }
    }
    if (state != State::kQuoted) break;
    field += '\n';
    if (!lines.next(line)) throw BadRecord{record_line, "quoted field not closed before the end"};
  }
  fields.push_back(std::move(field));
}

// Column positions resolved against a header (or the first record).
struct Columns {
  std::size_t count = 0;
  std::size_t text_a = 0;
  std::optional<std::size_t> text_b;
  std::size_t label = 0;
};

const std::vector<std::string>& default_text_names() {
  static const std::vector<std::string> names = {"sentence", "text", "sentence1"};
  return names;
}

std::string parse_label_text(const json& value, std::size_t line, const std::string& key) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_number() || value.is_boolean()) return value.dump();
  throw BadRecord{line, "field '" + key + "' must be a string or a number, found " +
                            std::string(value.type_name())};
}

// A record's fields before validation and label mapping.
struct RawRecord {
  std::size_t line = 0;
  std::string text_a;
  std::optional<std::string> text_b;
  std::string label;
};

class Reader {
 public:
  Reader(const fs::path& path, const ReadOptions& options)
      : path_(path), file_(path.string()), options_(options) {}

  Dataset read();

 private:
  // Calls accept() for each record; bad ones go through fail().
  void read_delimited(Format format);
  void read_jsonl();
  void resolve_header(const std::vector<std::string>& header, std::size_t line);
  void resolve_headerless(std::size_t count);
  void accept(RawRecord&& record);
  void fail(const BadRecord& bad);
  [[noreturn]] void file_error(const std::string& what) const { throw Error(file_ + ": " + what); }

  fs::path path_;
  std::string file_;
  const ReadOptions& options_;
  bool pair_ = false;
  Columns columns_;
  bool columns_ready_ = false;
  // JSONL keys.
  std::string key_a_, key_b_, key_label_;

  std::unordered_map<std::string, int64_t> fixed_ids_;
  std::vector<RawRecord> pending_;  // classification with inferred labels
  Dataset out_;
};

void Reader::fail(const BadRecord& bad) {
  std::string message = file_ + ":" + std::to_string(bad.line) + ": " + bad.what;
  if (!options_.skip_bad_lines) throw Error(message);
  SkippedLines& s = out_.skipped;
  ++s.count;
  if (s.first_lines.size() < SkippedLines::kKept) {
    s.first_lines.push_back(bad.line);
    s.first_errors.push_back(std::move(message));
  }
}

void Reader::accept(RawRecord&& r) {
  auto check_text = [&](const std::string& text, const std::string& which) {
    if (!options_.allow_empty_text && is_blank(text))
      throw BadRecord{r.line, "empty text in " + which};
  };
  check_text(r.text_a, "text_a");
  if (r.text_b) check_text(*r.text_b, "text_b");
  Example e;
  e.line = r.line;
  if (options_.unlabeled) {
    // No label to parse or map.
  } else if (r.label.empty()) {
    throw BadRecord{r.line, "empty label"};
  } else if (options_.type == TaskType::kRegression) {
    // Decimal or scientific, as Python's float() reads it (a leading '+'
    // included); no surrounding spaces, no hex.
    double value = 0;
    const char* begin = r.label.data();
    const char* end = begin + r.label.size();
    if (end - begin > 1 && *begin == '+' && begin[1] != '-') ++begin;
    const auto [ptr, ec] = std::from_chars(begin, end, value);
    if (ec != std::errc() || ptr != end || !std::isfinite(value))
      throw BadRecord{r.line, "label " + shown(r.label) + " is not a finite number"};
    e.score = static_cast<float>(value);
  } else if (!options_.label_names.empty()) {
    const auto it = fixed_ids_.find(r.label);
    if (it == fixed_ids_.end())
      throw BadRecord{r.line, "unknown label " + shown(r.label) +
                                  " (labels: " + join(options_.label_names) + ")"};
    e.label = it->second;
  } else {
    pending_.push_back(std::move(r));
    ++out_.records;
    return;
  }
  e.text_a = std::move(r.text_a);
  e.text_b = std::move(r.text_b);
  out_.examples.push_back(std::move(e));
  ++out_.records;
}

void Reader::resolve_header(const std::vector<std::string>& header, std::size_t line) {
  auto find = [&](const ColumnRef& ref, const std::string& role) -> std::size_t {
    if (ref.is_index()) {
      if (ref.index() >= header.size())
        throw Error(file_ + ":" + std::to_string(line) + ": " + role + " column " + ref.describe() +
                    " is out of range (" + std::to_string(header.size()) + " columns)");
      return ref.index();
    }
    const auto it = std::find(header.begin(), header.end(), ref.name());
    if (it == header.end())
      throw Error(file_ + ":" + std::to_string(line) + ": no " + role + " column " +
                  ref.describe() + " (columns: " + join(header) + ")");
    return static_cast<std::size_t>(it - header.begin());
  };
  columns_.count = header.size();
  if (options_.text_a) {
    columns_.text_a = find(*options_.text_a, "text_a");
  } else {
    const auto& names = default_text_names();
    const auto it = std::find_first_of(header.begin(), header.end(), names.begin(), names.end());
    if (it == header.end())
      throw Error(file_ + ":" + std::to_string(line) +
                  ": no 'sentence', 'text' or 'sentence1' column: choose text_a (columns: " +
                  join(header) + ")");
    columns_.text_a = static_cast<std::size_t>(it - header.begin());
    if (!options_.text_b && *it == "sentence1") {
      const auto b = std::find(header.begin(), header.end(), "sentence2");
      if (b != header.end()) columns_.text_b = static_cast<std::size_t>(b - header.begin());
    }
  }
  if (options_.text_b) columns_.text_b = find(*options_.text_b, "text_b");
  if (!options_.unlabeled)
    columns_.label = find(options_.label.value_or(ColumnRef("label")), "label");
  columns_ready_ = true;
}

void Reader::resolve_headerless(std::size_t count) {
  auto index_of = [&](const ColumnRef& ref, const std::string& role) {
    if (!ref.is_index())
      file_error(role + " column " + ref.describe() + " is a name, but the file has no header");
    if (ref.index() >= count)
      file_error(role + " column " + ref.describe() + " is out of range (the first record has " +
                 std::to_string(count) + " columns)");
    return ref.index();
  };
  columns_.count = count;
  if (!options_.unlabeled && !options_.text_a && !options_.label && count < 2)
    file_error("needs a text and a label column, the first record has 1 column");
  columns_.text_a = options_.text_a ? index_of(*options_.text_a, "text_a") : 0;
  if (options_.text_b) columns_.text_b = index_of(*options_.text_b, "text_b");
  if (!options_.unlabeled)
    columns_.label = options_.label ? index_of(*options_.label, "label") : count - 1;
  columns_ready_ = true;
}

void Reader::read_delimited(Format format) {
  LineReader lines(path_);
  if (lines.empty_file()) file_error("empty file");
  const bool header = options_.header.value_or(true);
  std::string line;
  std::vector<std::string> fields;
  std::size_t record_line = 0;
  bool saw_header = false;
  while (lines.next(line)) {
    if (line.empty()) continue;
    try {
      if (format == Format::kTsv) {
        record_line = lines.number();
        check_utf8(line, record_line);
        split_tab(line, fields);
      } else {
        parse_csv_record(lines, line, fields, record_line);
      }
    } catch (const BadRecord& bad) {
      if (header && !saw_header)
        throw Error(file_ + ":" + std::to_string(bad.line) + ": header: " + bad.what);
      fail(bad);
      continue;
    }
    if (header && !saw_header) {
      saw_header = true;
      resolve_header(fields, record_line);
      if (options_.num_columns && *options_.num_columns != columns_.count)
        throw Error(file_ + ":" + std::to_string(record_line) + ": header has " +
                    std::to_string(columns_.count) + " columns, expected " +
                    std::to_string(*options_.num_columns));
      continue;
    }
    if (!columns_ready_) resolve_headerless(options_.num_columns.value_or(fields.size()));
    try {
      if (fields.size() != columns_.count)
        throw BadRecord{record_line, "expected " + std::to_string(columns_.count) +
                                         " columns, found " + std::to_string(fields.size())};
      RawRecord r;
      r.line = record_line;
      r.text_a = std::move(fields[columns_.text_a]);
      if (columns_.text_b) r.text_b = std::move(fields[*columns_.text_b]);
      if (!options_.unlabeled) r.label = std::move(fields[columns_.label]);
      accept(std::move(r));
    } catch (const BadRecord& bad) {
      fail(bad);
    }
  }
  if (header && !saw_header) file_error("empty file");
  pair_ = columns_.text_b.has_value();
}

void Reader::read_jsonl() {
  for (const auto* ref : {&options_.text_a, &options_.text_b, &options_.label}) {
    if (*ref && (*ref)->is_index())
      file_error("JSONL fields are named, not numbered: " + (*ref)->describe());
  }
  if (options_.header.value_or(false)) file_error("JSONL has no header line");
  LineReader lines(path_);
  if (lines.empty_file()) file_error("empty file");
  key_label_ = options_.label ? options_.label->name() : "label";
  if (options_.text_a) key_a_ = options_.text_a->name();
  if (options_.text_b) key_b_ = options_.text_b->name();
  bool keys_ready = options_.text_a.has_value();
  pair_ = options_.text_b.has_value();
  std::string line;
  while (lines.next(line)) {
    if (is_blank(line)) continue;
    const std::size_t n = lines.number();
    try {
      check_utf8(line, n);
      json j;
      try {
        j = json::parse(line);
      } catch (const json::exception& e) {
        // nlohmann's message: "[json.exception.parse_error.101] parse error at line 1, column 5:
        // syntax error ..."; keep from "column". Out-of-range numbers
        // ("[json.exception.out_of_range.406] number overflow parsing '1E400'") are
        // parse failures too: keep what follows the bracket.
        std::string what = e.what();
        const auto at = what.find("column ");
        const auto bracket = what.find("] ");
        throw BadRecord{
            n, "invalid JSON" + (at != std::string::npos        ? " at " + what.substr(at)
                                 : bracket != std::string::npos ? ": " + what.substr(bracket + 2)
                                                                : ": " + what)};
      }
      if (!j.is_object())
        throw BadRecord{n, std::string("expected a JSON object, found ") + j.type_name()};
      if (!keys_ready) {
        const auto& names = default_text_names();
        const auto it = std::find_if(names.begin(), names.end(),
                                     [&](const std::string& k) { return j.contains(k); });
        if (it == names.end())
          throw Error(file_ + ":" + std::to_string(n) +
                      ": no 'sentence', 'text' or 'sentence1' field: choose text_a");
        key_a_ = *it;
        if (*it == "sentence1" && j.contains("sentence2")) {
          key_b_ = "sentence2";
          pair_ = true;
        }
        keys_ready = true;
      }
      auto text = [&](const std::string& key) {
        const auto it = j.find(key);
        if (it == j.end()) throw BadRecord{n, "missing field '" + key + "'"};
        if (!it->is_string())
          throw BadRecord{
              n, "field '" + key + "' must be a string, found " + std::string(it->type_name())};
        return it->get<std::string>();
      };
      RawRecord r;
      r.line = n;
      r.text_a = text(key_a_);
      if (pair_) r.text_b = text(key_b_);
      if (!options_.unlabeled) {
        const auto label = j.find(key_label_);
        if (label == j.end() || label->is_null())
          throw BadRecord{n, "missing field '" + key_label_ + "'"};
        r.label = parse_label_text(*label, n, key_label_);
      }
      accept(std::move(r));
    } catch (const BadRecord& bad) {
      fail(bad);
    }
  }
}

// Integers by value, then anything else bytewise (so "2" < "10").
std::vector<std::string> sorted_label_set(const std::vector<RawRecord>& records) {
  std::vector<std::string> names;
  {
    std::map<std::string, bool> seen;
    for (const auto& r : records) seen.emplace(r.label, true);
    for (auto& [name, unused] : seen) names.push_back(name);
  }
  auto integer = [](const std::string& s, long long& v) {
    const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    return ec == std::errc() && ptr == s.data() + s.size();
  };
  long long v = 0;
  const bool all_integers =
      std::all_of(names.begin(), names.end(), [&](const std::string& s) { return integer(s, v); });
  if (all_integers) {
    std::stable_sort(names.begin(), names.end(), [&](const std::string& a, const std::string& b) {
      long long x = 0, y = 0;
      integer(a, x);
      integer(b, y);
      return x < y;
    });
  }
  return names;
}

Dataset Reader::read() {
  if (!fs::exists(path_)) file_error("no such file");
  const Format format = options_.format == Format::kAuto ? format_for(path_) : options_.format;
  out_.source = file_;
  out_.type = options_.type;
  if (options_.type == TaskType::kClassification) {
    for (std::size_t i = 0; i < options_.label_names.size(); ++i) {
      if (!fixed_ids_.emplace(options_.label_names[i], static_cast<int64_t>(i)).second)
        throw Error(file_ + ": label '" + options_.label_names[i] + "' given twice");
    }
    out_.label_names = options_.label_names;
  } else if (!options_.label_names.empty()) {
    file_error("regression takes no label names");
  }

  if (format == Format::kJsonl) {
    read_jsonl();
  } else {
    read_delimited(format);
  }
  out_.is_pair = pair_;

  if (out_.records == 0) {
    std::string what = "no examples";
    if (out_.skipped.count)
      what += " (" + std::to_string(out_.skipped.count) +
              " bad lines skipped, first: " + out_.skipped.first_errors.front() + ")";
    file_error(what);
  }

  if (!pending_.empty()) {
    out_.label_names = sorted_label_set(pending_);
    std::unordered_map<std::string, int64_t> ids;
    for (std::size_t i = 0; i < out_.label_names.size(); ++i)
      ids.emplace(out_.label_names[i], static_cast<int64_t>(i));
    out_.examples.reserve(pending_.size());
    for (auto& r : pending_) {
      Example e;
      e.line = r.line;
      e.label = ids.at(r.label);
      e.text_a = std::move(r.text_a);
      e.text_b = std::move(r.text_b);
      out_.examples.push_back(std::move(e));
    }
    pending_.clear();
  }

  if (options_.max_samples > 0 && options_.max_samples < out_.examples.size()) {
    std::vector<std::size_t> keep = shuffled_indices(out_.examples.size(), options_.seed);
    keep.resize(options_.max_samples);
    std::sort(keep.begin(), keep.end());
    std::vector<Example> sample;
    sample.reserve(keep.size());
    for (std::size_t i : keep) sample.push_back(std::move(out_.examples[i]));
    out_.examples = std::move(sample);
  }
  return std::move(out_);
}

}  // namespace

ColumnRef::ColumnRef(int index) {
  if (index < 0) throw Error("column index " + std::to_string(index) + " is negative");
  index_ = static_cast<std::size_t>(index);
}

ColumnRef ColumnRef::parse(const std::string& text) {
  std::size_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (!text.empty() && ec == std::errc() && ptr == text.data() + text.size()) return value;
  return ColumnRef(text);
}

std::string ColumnRef::describe() const {
  return index_ ? "#" + std::to_string(*index_) : "'" + name_ + "'";
}

std::vector<std::size_t> label_counts(const Dataset& dataset) {
  std::vector<std::size_t> counts(dataset.label_names.size(), 0);
  for (const Example& e : dataset.examples) {
    if (e.label < 0 || static_cast<std::size_t>(e.label) >= counts.size())
      throw Error(dataset.source + ":" + std::to_string(e.line) + ": label id " +
                  std::to_string(e.label) + " outside the label set");
    ++counts[static_cast<std::size_t>(e.label)];
  }
  return counts;
}

Format format_for(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (ext == ".tsv" || ext == ".tab") return Format::kTsv;
  if (ext == ".csv") return Format::kCsv;
  if (ext == ".jsonl" || ext == ".ndjson") return Format::kJsonl;
  throw Error(path.string() + ": unknown data format '" + ext +
              "' (expected .tsv, .csv or .jsonl, or choose the format explicitly)");
}

Dataset read_dataset(const fs::path& path, const ReadOptions& options) {
  return Reader(path, options).read();
}

}  // namespace deltatune::data
