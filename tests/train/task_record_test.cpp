// A delta's own task record decides how it is evaluated and what predict
// prints: its labels, type and pairness win over the GLUE table.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "deltatune/data/glue.h"
#include "deltatune/methods/method.h"
#include "deltatune/train/task_model.h"
#include "glue_sample.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {
using json = nlohmann::json;

methods::Delta recorded(json task, json labels, int64_t num_labels) {
  methods::Delta delta;
  delta.meta = {{"task", std::move(task)}, {"num_labels", num_labels}};
  if (!labels.is_null()) delta.meta["label_names"] = std::move(labels);
  return delta;
}

TEST(TaskRecord, AUserTaskNamedLikeAGlueTaskKeepsItsOwnLabels) {
  // `train --task sst2 --train mine.csv`: labels neg/pos, not GLUE's SST-2.
  const auto delta = recorded(
      {{"name", "sst2"}, {"source", "user"}, {"type", "classification"}, {"is_pair", false}},
      {"neg", "pos"}, 2);
  const data::TaskSpec task = task_of(delta);
  EXPECT_EQ(task.label_names, (std::vector<std::string>{"neg", "pos"}));
  EXPECT_TRUE(task.hf_name.empty());  // user data: eval needs --dev, never reads GLUE
  // The same record without "source" (older deltas): its labels differ from
  // GLUE's SST-2, so it is still the user's task.
  auto older = delta;
  older.meta["task"].erase("source");
  EXPECT_EQ(task_of(older).label_names, (std::vector<std::string>{"neg", "pos"}));
}

TEST(TaskRecord, AGlueDeltaIsGluesTaskAndADisagreeingRecordIsAnError) {
  const data::TaskSpec& sst2 = data::find_glue_task("SST-2");
  auto delta = recorded(
      {{"name", "SST-2"}, {"source", "glue"}, {"type", "classification"}, {"is_pair", false}},
      sst2.label_names, 2);
  EXPECT_EQ(task_of(delta).hf_name, "sst2");
  delta.meta["task"]["is_pair"] = true;
  EXPECT_NE(test::error_of([&] { task_of(delta); }).find("recorded as GLUE's"), std::string::npos);
  // A PEFT adapter records no label names: its head's width decides.
  const auto peft = recorded({{"name", "SST-2"}}, json::array(), 2);
  EXPECT_EQ(task_of(peft).hf_name, "sst2");
}

TEST(TaskRecord, BuiltDeltasRecordWhereTheirTaskCameFrom) {
  BaseModel base = load_base(test::minilm_dir());
  auto model = make_task_model(base, 2, 0);
  auto method = methods::make_method("bitfit");
  method->attach(*model);
  const data::TaskSpec user =
      data::custom_task("sst2", data::TaskType::kClassification, {"neg", "pos"}, false);
  methods::Delta delta = build_delta(base, *model, *method, user, 64, TrainConfig{}, TrainResult{});
  EXPECT_EQ(delta.meta["task"]["source"], "user");
  EXPECT_EQ(task_of(delta).label_names, user.label_names);
  methods::Delta glue = build_delta(base, *model, *method, data::find_glue_task("RTE"), 64,
                                    TrainConfig{}, TrainResult{});
  EXPECT_EQ(glue.meta["task"]["source"], "glue");
  EXPECT_EQ(task_of(glue).name, "RTE");
}

TEST(TaskRecord, DataOfAnotherLabelSetOrShapeIsRefusedNamingBoth) {
  const data::TaskSpec trained =
      data::custom_task("reviews", data::TaskType::kClassification, {"neg", "pos"}, false);
  // Same count, other strings: once mapped silently by sort order.
  const data::TaskSpec other =
      data::custom_task("x", data::TaskType::kClassification, {"bad", "good"}, false);
  std::string message = test::error_of([&] { check_same_labels(trained, other, "dev.tsv"); });
  EXPECT_NE(message.find("dev.tsv has labels [bad, good], but the delta was trained on reviews "
                         "with labels [neg, pos]"),
            std::string::npos)
      << message;
  const data::TaskSpec pairs =
      data::custom_task("x", data::TaskType::kClassification, {"neg", "pos"}, true);
  message = test::error_of([&] { check_same_labels(trained, pairs, "dev.tsv"); });
  EXPECT_NE(message.find("dev.tsv has text pairs, but the delta was trained on reviews with "
                         "single texts"),
            std::string::npos)
      << message;
  EXPECT_NE(test::error_of([&] {
              check_same_labels(data::find_glue_task("RTE"), data::find_glue_task("MRPC"), "GLUE");
            }),
            "");
  // Transfer between tasks of one label set is allowed (RTE -> QNLI).
  EXPECT_NO_THROW(
      check_same_labels(data::find_glue_task("RTE"), data::find_glue_task("QNLI"), "GLUE task"));
  EXPECT_NO_THROW(check_same_labels(trained, trained, "dev.tsv"));
}

}  // namespace
}  // namespace deltatune::train
