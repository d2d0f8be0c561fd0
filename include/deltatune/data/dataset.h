// Labelled text examples read from TSV, CSV or JSONL files.
//
// Reading streams the file record by record. Every malformed record is an
// error "FILE:LINE: what" (LINE 1-based, the record's first physical line,
// the header counting as line 1), unless ReadOptions::skip_bad_lines, which
// counts and skips it instead. Empty lines carry no record and are ignored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/data/task.h"

namespace deltatune::data {

struct Example {
  std::string text_a;
  std::optional<std::string> text_b;  // set exactly when the dataset is a pair task
  int64_t label = 0;                  // classification: index into Dataset::label_names
  float score = 0;                    // regression target
  std::size_t line = 0;               // 1-based line of the record in `Dataset::source`
};

// Bad records that were skipped (ReadOptions::skip_bad_lines).
struct SkippedLines {
  static constexpr std::size_t kKept = 5;
  std::size_t count = 0;
  std::vector<std::size_t> first_lines;   // the first kKept line numbers
  std::vector<std::string> first_errors;  // their "FILE:LINE: what" messages
};

struct Dataset {
  std::string source;  // the file read
  TaskType type = TaskType::kClassification;
  bool is_pair = false;
  // Classification: names by label id. For a file read with inferred labels
  // they are the distinct label strings, sorted (see ReadOptions::label_names).
  std::vector<std::string> label_names;
  std::vector<Example> examples;  // in file order (also after max_samples)
  std::size_t records = 0;        // good records in the file, before max_samples
  SkippedLines skipped;
};

// Examples per label id (classification).
std::vector<std::size_t> label_counts(const Dataset& dataset);

enum class Format {
  kAuto,   // by extension: .tsv/.tab, .csv, .jsonl/.ndjson (.json is not JSONL)
  kTsv,    // split on '\t' only, quotes are ordinary characters (GLUE's files)
  kCsv,    // ',' with RFC 4180 quoting: "a, ""b""" ; quoted fields may span lines
  kJsonl,  // one JSON object per line; columns are keys
};

// A column by header name (or JSONL key), or by 0-based index.
class ColumnRef {
 public:
  ColumnRef(std::string name) : name_(std::move(name)) {}  // NOLINT(runtime/explicit)
  ColumnRef(const char* name) : name_(name) {}             // NOLINT(runtime/explicit)
  ColumnRef(std::size_t index) : index_(index) {}          // NOLINT(runtime/explicit)
  ColumnRef(int index);                                    // NOLINT(runtime/explicit)
  // "3" -> index 3, anything else -> a name (for command-line flags).
  static ColumnRef parse(const std::string& text);

  bool is_index() const { return index_.has_value(); }
  std::size_t index() const { return *index_; }
  const std::string& name() const { return name_; }
  std::string describe() const;  // "'sentence'" or "#3"

 private:
  std::string name_;
  std::optional<std::size_t> index_;
};

struct ReadOptions {
  Format format = Format::kAuto;
  // TSV/CSV: whether line 1 names the columns. Default: yes. JSONL has none.
  std::optional<bool> header;
  // Default with a header (or JSONL): the first present of "sentence", "text",
  // "sentence1"; without one, column 0.
  std::optional<ColumnRef> text_a;
  // Default: none, except "sentence2" when text_a defaulted to "sentence1".
  std::optional<ColumnRef> text_b;
  // Default: "label" with a header (or JSONL); the last column without one.
  std::optional<ColumnRef> label;

  TaskType type = TaskType::kClassification;
  // Classification label set, by id. Empty: inferred from this file as its
  // distinct label strings, sorted numerically when all are integers and
  // bytewise otherwise. Given (read dev with train's label_names): fixed, and a
  // label outside it is a bad record. Labels compare as exact strings (" 1" is
  // not "1"); JSONL numbers as their JSON text (1 is "1", 1.0 is "1.0").
  std::vector<std::string> label_names;
  // Prediction inputs: no label column is read (a column named like the
  // label is simply ignored); every example gets label 0 / score 0.
  bool unlabeled = false;

  // Keep records whose text is empty or blank (HF datasets does for GLUE);
  // otherwise they are bad records.
  bool allow_empty_text = false;

  // Count and skip bad records instead of throwing. A file with no good
  // record is an error either way.
  bool skip_bad_lines = false;

  // Keep only max_samples records (0: all): the first max_samples of a seeded
  // shuffle of the good records (shuffled_indices(records, seed)), so a smaller
  // sample is a subset of a larger one with the same seed. Labels are inferred
  // from all records first.
  std::size_t max_samples = 0;
  uint64_t seed = 0;

  // TSV/CSV: the number of columns every record must have. Default: the
  // header's, or the first record's without a header.
  std::optional<std::size_t> num_columns;
};

// Throws deltatune::Error "FILE:LINE: what" for the first bad record (unless
// skip_bad_lines), "FILE: ..." for file-level problems (cannot open, empty, a
// missing column in the header, no good record).
Dataset read_dataset(const std::filesystem::path& path, const ReadOptions& options = {});

// The format kAuto picks for `path`; throws for an unknown extension.
Format format_for(const std::filesystem::path& path);

}  // namespace deltatune::data
