// GLUE task specs: names, label orders (HF datasets' glue ClassLabel names),
// metrics and lookup.
#include "deltatune/data/task.h"

#include <gtest/gtest.h>

#include "data_test_util.h"

namespace deltatune::data {
namespace {

using test::error_of;
using Names = std::vector<std::string>;

TEST(GlueTasks, EightTasksInGlueOrder) {
  Names names;
  for (const TaskSpec& t : glue_tasks()) names.push_back(t.name);
  EXPECT_EQ(names, (Names{"CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE"}));
}

// The label orders are the `names` of the ClassLabel features in HF datasets'
// glue builder (the dataset card lists them per config: cola, sst2, mrpc, qqp,
// mnli, qnli, rte), so label id i here is label id i in run_glue.py.
TEST(GlueTasks, LabelOrdersMatchHfDatasets) {
  EXPECT_EQ(find_glue_task("cola").label_names, (Names{"unacceptable", "acceptable"}));
  EXPECT_EQ(find_glue_task("sst2").label_names, (Names{"negative", "positive"}));
  EXPECT_EQ(find_glue_task("mrpc").label_names, (Names{"not_equivalent", "equivalent"}));
  EXPECT_EQ(find_glue_task("qqp").label_names, (Names{"not_duplicate", "duplicate"}));
  EXPECT_EQ(find_glue_task("mnli").label_names, (Names{"entailment", "neutral", "contradiction"}));
  EXPECT_EQ(find_glue_task("qnli").label_names, (Names{"entailment", "not_entailment"}));
  EXPECT_EQ(find_glue_task("rte").label_names, (Names{"entailment", "not_entailment"}));
  const TaskSpec& stsb = find_glue_task("stsb");
  EXPECT_EQ(stsb.type, TaskType::kRegression);
  EXPECT_TRUE(stsb.label_names.empty());
  EXPECT_EQ(stsb.num_labels(), 1);
  EXPECT_EQ(find_glue_task("mnli").num_labels(), 3);
}

TEST(GlueTasks, MetricsAndMainMetric) {
  struct Row {
    const char* task;
    Names metrics;
    const char* main;
    bool pair;
  };
  const std::vector<Row> rows = {
      {"CoLA", {"matthews_correlation"}, "matthews_correlation", false},
      {"SST-2", {"accuracy"}, "accuracy", false},
      {"MRPC", {"accuracy", "f1"}, "f1", true},
      {"STS-B", {"pearson", "spearmanr"}, "pearson", true},
      {"QQP", {"accuracy", "f1"}, "f1", true},
      {"MNLI", {"accuracy"}, "accuracy", true},
      {"QNLI", {"accuracy"}, "accuracy", true},
      {"RTE", {"accuracy"}, "accuracy", true},
  };
  for (const Row& r : rows) {
    const TaskSpec& t = find_glue_task(r.task);
    EXPECT_EQ(t.metrics, r.metrics) << r.task;
    EXPECT_EQ(t.main_metric, r.main) << r.task;
    EXPECT_EQ(t.is_pair, r.pair) << r.task;
  }
  EXPECT_EQ(find_glue_task("mnli").eval_splits, (Names{"dev_matched", "dev_mismatched"}));
  EXPECT_EQ(find_glue_task("rte").eval_splits, (Names{"dev"}));
}

TEST(GlueTasks, LookupIsCaseAndPunctuationInsensitive) {
  for (const char* name : {"sst2", "SST-2", "Sst_2", "sst-2"})
    EXPECT_EQ(find_glue_task(name).name, "SST-2") << name;
  for (const char* name : {"sts-b", "STSB", "stsb", "STS_B"})
    EXPECT_EQ(find_glue_task(name).name, "STS-B") << name;
  EXPECT_EQ(find_glue_task("MnLi").name, "MNLI");
  EXPECT_EQ(find_glue_task("cola").hf_name, "cola");
}

TEST(GlueTasks, UnknownAndWnliAreErrors) {
  EXPECT_EQ(error_of([] { find_glue_task("imdb"); }),
            "unknown task 'imdb' (valid: CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE)");
  EXPECT_EQ(error_of([] { find_glue_task("WNLI"); }),
            "task 'WNLI' is not supported (left out of GLUE training, as in the BitFit paper)");
}

TEST(CustomTask, MetricsFollowTheLabelSpace) {
  TaskSpec binary = custom_task("spam", TaskType::kClassification, {"ham", "spam"}, false);
  EXPECT_EQ(binary.metrics, (Names{"accuracy", "f1", "matthews_correlation"}));
  EXPECT_EQ(binary.main_metric, "accuracy");
  EXPECT_EQ(binary.num_labels(), 2);
  TaskSpec three = custom_task("nli", TaskType::kClassification, {"a", "b", "c"}, true);
  EXPECT_EQ(three.metrics, (Names{"accuracy", "matthews_correlation"}));
  EXPECT_TRUE(three.is_pair);
  TaskSpec reg = custom_task("sim", TaskType::kRegression, {}, true);
  EXPECT_EQ(reg.metrics, (Names{"pearson", "spearmanr"}));
  EXPECT_EQ(reg.main_metric, "pearson");
  EXPECT_EQ(error_of([] { custom_task("one", TaskType::kClassification, {"a"}, false); }),
            "task 'one': classification needs at least 2 labels, found 1");
}

}  // namespace
}  // namespace deltatune::data
