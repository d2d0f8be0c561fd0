#include "deltatune/data/glue.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <utility>

#include "deltatune/error.h"

namespace deltatune::data {
namespace {

namespace fs = std::filesystem;

// How one task's files are laid out; see the table in glue.h.
struct GlueLayout {
  bool header = true;
  std::optional<std::size_t> num_columns;
  ColumnRef text_a;
  std::optional<ColumnRef> text_b;
  ColumnRef label;
  // Label strings as written in the file, by HF label id.
  std::vector<std::string> file_labels;
};

GlueLayout pair(const char* text_a, const char* text_b, const char* label,
                std::vector<std::string> file_labels) {
  return {true, std::nullopt, text_a, ColumnRef(text_b), label, std::move(file_labels)};
}

GlueLayout layout_of(const TaskSpec& task) {
  const std::vector<std::string> binary = {"0", "1"};
  const std::string& n = task.hf_name;
  // CoLA: source, label, original label, sentence; no header.
  if (n == "cola") return {false, 4, 3, std::nullopt, 1, binary};
  if (n == "sst2") return {true, std::nullopt, "sentence", std::nullopt, "label", binary};
  if (n == "mrpc") return pair("#1 String", "#2 String", "Quality", binary);
  if (n == "stsb") return pair("sentence1", "sentence2", "score", {});
  if (n == "qqp") return pair("question1", "question2", "is_duplicate", binary);
  // MNLI's, QNLI's and RTE's file labels are the HF label names. MNLI train
  // has 12 columns (label1, gold_label), dev 16 (label1..label5, gold_label).
  if (n == "mnli") return pair("sentence1", "sentence2", "gold_label", task.label_names);
  if (n == "qnli") return pair("question", "sentence", "label", task.label_names);
  if (n == "rte") return pair("sentence1", "sentence2", "label", task.label_names);
  throw Error("task '" + task.name + "' has no GLUE file layout");
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

}  // namespace

fs::path glue_file(const fs::path& glue_dir, const TaskSpec& task, std::string_view split) {
  const std::string s = lower(split);
  const bool mnli = task.hf_name == "mnli";
  std::string file;
  if (s == "train") {
    file = "train";
  } else if (s == "dev" || s == "validation") {
    file = mnli ? "dev_matched" : "dev";
  } else if (mnli && (s == "dev_matched" || s == "validation_matched")) {
    file = "dev_matched";
  } else if (mnli && (s == "dev_mismatched" || s == "validation_mismatched")) {
    file = "dev_mismatched";
  } else if (s == "test" || s.rfind("test_", 0) == 0) {
    throw Error(task.name + ": split '" + std::string(split) +
                "': GLUE test files have no labels (use train or dev)");
  } else {
    throw Error(task.name + ": unknown split '" + std::string(split) + "' (valid: train, " +
                (mnli ? "dev_matched, dev_mismatched" : "dev") + ")");
  }
  return glue_dir / task.name / (file + ".tsv");
}

Dataset read_glue(const fs::path& glue_dir, const TaskSpec& task, std::string_view split,
                  const GlueReadOptions& options) {
  const fs::path path = glue_file(glue_dir, task, split);
  const GlueLayout layout = layout_of(task);
  ReadOptions read;
  read.format = Format::kTsv;
  read.header = layout.header;
  read.num_columns = layout.num_columns;
  read.text_a = layout.text_a;
  read.text_b = layout.text_b;
  read.label = layout.label;
  read.type = task.type;
  read.label_names = layout.file_labels;
  // HF datasets keeps GLUE rows with an empty text, and the official record
  // counts include them.
  read.allow_empty_text = true;
  read.skip_bad_lines = options.skip_bad_lines;
  read.max_samples = options.max_samples;
  read.seed = options.seed;
  Dataset dataset = read_dataset(path, read);
  dataset.label_names = task.label_names;
  dataset.is_pair = task.is_pair;
  return dataset;
}

Dataset read_glue(const fs::path& glue_dir, std::string_view task_name, std::string_view split,
                  const GlueReadOptions& options) {
  return read_glue(glue_dir, find_glue_task(task_name), split, options);
}

fs::path glue_dir_from_env() {
  const char* dir = std::getenv("GLUE_DIR");
  if (dir == nullptr || *dir == '\0')
    throw Error(
        "GLUE_DIR is not set: set it to the directory holding <TASK>/{train,dev}.tsv (or pass "
        "the directory explicitly)");
  return fs::path(dir);
}

}  // namespace deltatune::data
