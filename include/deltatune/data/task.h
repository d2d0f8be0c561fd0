// What a task is to the data layer and the trainer: its label space, whether
// it reads one text or a pair, and the metrics it is judged by.
//
// The GLUE specs match Hugging Face's `glue` dataset and run_glue.py: label
// ids are the ClassLabel ids of datasets' glue configs, metric names are those
// of evaluate's "glue" metric, so a delta trained here has the same
// id2label as one trained there.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace deltatune::data {

enum class TaskType {
  kClassification,  // int64 class ids, cross-entropy
  kRegression,      // one float target, MSE (STS-B)
};

struct TaskSpec {
  std::string name;     // "CoLA", "SST-2", ...: also the directory under GLUE_DIR
  std::string hf_name;  // "cola", "sst2", ...: the HF datasets glue config
  TaskType type = TaskType::kClassification;
  // Classification: label names by id (HF ClassLabel order). Empty for regression.
  std::vector<std::string> label_names;
  bool is_pair = false;
  // Names compute_metrics() returns, and the one keep-best compares (higher is better).
  std::vector<std::string> metrics;
  std::string main_metric;
  // Splits evaluated during training, main one first ({"dev"}; MNLI
  // {"dev_matched", "dev_mismatched"}).
  std::vector<std::string> eval_splits;

  // Width of the classifier head: the number of labels, 1 for regression.
  int64_t num_labels() const {
    return type == TaskType::kRegression ? 1 : static_cast<int64_t>(label_names.size());
  }
};

// Metric names, as evaluate's "glue" metric and run_glue.py report them.
inline constexpr std::string_view kAccuracy = "accuracy";
inline constexpr std::string_view kF1 = "f1";
inline constexpr std::string_view kMatthews = "matthews_correlation";
inline constexpr std::string_view kPearson = "pearson";
inline constexpr std::string_view kSpearman = "spearmanr";

// The eight GLUE tasks deltatune trains on, in GLUE's order: CoLA, SST-2,
// MRPC, STS-B, QQP, MNLI, QNLI, RTE. WNLI is left out, as in the BitFit paper.
const std::vector<TaskSpec>& glue_tasks();

// Case-insensitive, ignoring '-' and '_': "sst2", "SST-2", "sts_b", "mnli".
// Throws deltatune::Error listing the valid names for anything else, and a
// dedicated one for WNLI.
const TaskSpec& find_glue_task(std::string_view name);

// A task for user data. Classification: accuracy and Matthews correlation
// (multi-class when more than two labels), plus F1 of label 1 when binary;
// main metric accuracy. Regression: Pearson and Spearman, main Pearson.
TaskSpec custom_task(std::string name, TaskType type, std::vector<std::string> label_names,
                     bool is_pair);

}  // namespace deltatune::data
