#include "deltatune/data/task.h"

#include <cctype>
#include <string>
#include <utility>

#include "deltatune/error.h"

namespace deltatune::data {
namespace {

// Lower case without '-' and '_', so "SST-2", "sst_2" and "sst2" meet.
std::string normalized(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (c == '-' || c == '_') continue;
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

TaskSpec classification(std::string name, std::string hf_name, std::vector<std::string> labels,
                        bool is_pair, std::vector<std::string> metrics, std::string main_metric,
                        std::vector<std::string> eval_splits = {"dev"}) {
  TaskSpec t;
  t.name = std::move(name);
  t.hf_name = std::move(hf_name);
  t.type = TaskType::kClassification;
  t.label_names = std::move(labels);
  t.is_pair = is_pair;
  t.metrics = std::move(metrics);
  t.main_metric = std::move(main_metric);
  t.eval_splits = std::move(eval_splits);
  return t;
}

std::vector<TaskSpec> make_glue_tasks() {
  const std::string acc(kAccuracy), f1(kF1), mcc(kMatthews);
  // Label names and their order: HF datasets' glue ClassLabel features
  // (cola, sst2, mrpc, qqp, mnli, qnli, rte), the ids run_glue.py trains with.
  std::vector<TaskSpec> tasks;
  tasks.push_back(
      classification("CoLA", "cola", {"unacceptable", "acceptable"}, false, {mcc}, mcc));
  tasks.push_back(classification("SST-2", "sst2", {"negative", "positive"}, false, {acc}, acc));
  tasks.push_back(
      classification("MRPC", "mrpc", {"not_equivalent", "equivalent"}, true, {acc, f1}, f1));
  TaskSpec stsb;
  stsb.name = "STS-B";
  stsb.hf_name = "stsb";
  stsb.type = TaskType::kRegression;
  stsb.is_pair = true;
  stsb.metrics = {std::string(kPearson), std::string(kSpearman)};
  stsb.main_metric = kPearson;
  stsb.eval_splits = {"dev"};
  tasks.push_back(stsb);
  tasks.push_back(
      classification("QQP", "qqp", {"not_duplicate", "duplicate"}, true, {acc, f1}, f1));
  tasks.push_back(classification("MNLI", "mnli", {"entailment", "neutral", "contradiction"}, true,
                                 {acc}, acc, {"dev_matched", "dev_mismatched"}));
  tasks.push_back(
      classification("QNLI", "qnli", {"entailment", "not_entailment"}, true, {acc}, acc));
  tasks.push_back(classification("RTE", "rte", {"entailment", "not_entailment"}, true, {acc}, acc));
  return tasks;
}

}  // namespace

const std::vector<TaskSpec>& glue_tasks() {
  static const std::vector<TaskSpec> tasks = make_glue_tasks();
  return tasks;
}

const TaskSpec& find_glue_task(std::string_view name) {
  const std::string key = normalized(name);
  for (const TaskSpec& t : glue_tasks()) {
    if (normalized(t.name) == key || normalized(t.hf_name) == key) return t;
  }
  if (key == "wnli")
    throw Error("task 'WNLI' is not supported (left out of GLUE training, as in the BitFit paper)");
  std::string valid;
  for (const TaskSpec& t : glue_tasks()) valid += (valid.empty() ? "" : ", ") + t.name;
  throw Error("unknown task '" + std::string(name) + "' (valid: " + valid + ")");
}

TaskSpec custom_task(std::string name, TaskType type, std::vector<std::string> label_names,
                     bool is_pair) {
  TaskSpec t;
  t.name = std::move(name);
  t.type = type;
  t.is_pair = is_pair;
  t.eval_splits = {"dev"};
  if (type == TaskType::kRegression) {
    if (!label_names.empty()) throw Error("task '" + t.name + "': regression takes no label names");
    t.metrics = {std::string(kPearson), std::string(kSpearman)};
    t.main_metric = kPearson;
    return t;
  }
  if (label_names.size() < 2)
    throw Error("task '" + t.name + "': classification needs at least 2 labels, found " +
                std::to_string(label_names.size()));
  t.metrics = {std::string(kAccuracy)};
  if (label_names.size() == 2) t.metrics.emplace_back(kF1);
  t.metrics.emplace_back(kMatthews);
  t.main_metric = kAccuracy;
  t.label_names = std::move(label_names);
  return t;
}

}  // namespace deltatune::data
