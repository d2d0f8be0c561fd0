// Short real runs of Prefix Tuning, Prompt Tuning and Houlsby adapters on
// all-MiniLM-L6-v2 and SST-2: the base stays bit-identical, what the method
// trains moves, and the delta alone reproduces the dev metric.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "deltatune/methods/method.h"
#include "deltatune/train/task_model.h"
#include "glue_sample.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {
namespace fs = std::filesystem;

struct Case {
  const char* method;
  nlohmann::json options;
  const char* trained_marker;  // a name fragment of what the method adds
};

TEST(PromptMethodsTraining, BaseUnchangedMethodMovedAndTheDeltaReproducesTheMetric) {
  const test::GlueSample& d = test::sst2_sample(96, 120);
  BaseModel base = load_base(test::minilm_dir());
  for (const Case& c : {Case{"prefix-tuning", {{"length", 8}, {"projection_size", 32}}, ".prefix."},
                        Case{"prompt-tuning", {{"length", 8}}, ".prompt."},
                        Case{"adapters", {{"bottleneck", 16}}, ".adapter."}}) {
    SCOPED_TRACE(c.method);
    auto model = make_task_model(base, 2, 1);
    auto method = methods::make_method(c.method, c.options);
    method->attach(*model);
    std::map<std::string, at::Tensor> initial;
    for (const auto& item : model->named_parameters(true))
      initial[item.key()] = item.value().detach().clone();
    TrainConfig config;
    config.learning_rate = 5e-3;
    config.batch_size = 16;
    config.epochs = 1;
    config.max_steps = 4;
    config.seed = 1;
    config.progress = false;
    TrainResult result = Trainer(model, *method, d.task, config).fit(d.train, d.dev);
    EXPECT_EQ(result.steps, 4);

    for (const auto& item : model->named_parameters(true)) {
      const std::string& name = item.key();
      const bool moved = !item.value().equal(initial.at(name));
      const bool layer_norm = name.find("LayerNorm.") != std::string::npos;
      if (name.find(c.trained_marker) != std::string::npos ||
          methods::is_classifier_parameter(name)) {
        EXPECT_TRUE(moved) << name;
      } else if (!(layer_norm && std::string(c.method) == "adapters")) {
        EXPECT_FALSE(moved) << name;  // the frozen base, bit for bit
      }
    }

    method->after_training(*model);
    methods::Delta delta = build_delta(base, *model, *method, d.task, 48, config, result);
    auto restored = model_from_delta(base, delta);
    EXPECT_EQ(evaluate(*restored, d.task, d.dev, 64, false).metrics.main,
              evaluate(*model, d.task, d.dev, 64, false).metrics.main);
    EXPECT_EQ(evaluate(*restored, d.task, d.dev, 64, false).metrics.main, result.best.metrics.main);
  }
}

}  // namespace
}  // namespace deltatune::train
