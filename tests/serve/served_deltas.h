// Real deltas of every method for the serving tests: each trained for a few
// steps on a slice of a real GLUE task (SST-2 single texts, RTE pairs, STS-B
// regression), with a learning rate high enough that every stored value
// moves away from the base. Trained once and kept under the temp directory,
// keyed by the base's checksum, so the test processes ctest starts share them.
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/data/glue.h"
#include "deltatune/methods/method.h"
#include "deltatune/text/tokenizer.h"
#include "deltatune/train/task_model.h"
#include "deltatune/train/trainer.h"
#include "test_paths.h"

namespace deltatune::test {

// "fp32 within 1e-5" between a served score and the same input predicted
// alone: absolute below 1, relative above (a regression score of 6 carries
// rounding of 6 * 2^-23 per operation), as torch.allclose's rtol and atol.
inline double fp32_tolerance(double expected) { return 1e-5 * std::max(1.0, std::fabs(expected)); }

struct ServedDeltaSpec {
  std::string name;    // the task name it is served under
  std::string method;  // make_method's name
  nlohmann::json options;
  std::string glue_task;  // "SST-2", "RTE", "STS-B"
};

// Every method once, spread over the three tasks, plus second variants where
// the mixed pass has to pad (LoRA ranks, prompt placements, prefix positions).
inline const std::vector<ServedDeltaSpec>& served_delta_specs() {
  static const std::vector<ServedDeltaSpec> specs = {
      {"bitfit-sst2", "bitfit", nlohmann::json::object(), "SST-2"},
      {"lora-rte", "lora", {{"rank", 8}}, "RTE"},
      {"lora4-stsb",
       "lora",
       {{"rank", 4}, {"target_modules", {"query", "value", "dense"}}},
       "STS-B"},
      {"adapters-stsb", "adapters", {{"bottleneck", 16}}, "STS-B"},
      {"prompt-sst2", "prompt-tuning", {{"length", 5}}, "SST-2"},
      {"prompt-start-rte", "prompt-tuning", {{"length", 3}, {"placement", "start"}}, "RTE"},
      {"prefix-rte", "prefix-tuning", {{"length", 4}, {"reparameterize", false}}, "RTE"},
      {"prefix-shifted-sst2",
       "prefix-tuning",
       {{"length", 6}, {"reparameterize", false}, {"positions", "shifted"}},
       "SST-2"},
      {"fish-stsb", "fish", {{"density", 0.01}, {"fisher_samples", 16}}, "STS-B"},
      {"diff-pruning-sst2", "diff-pruning", {{"density", 0.01}, {"finetune_epochs", 1}}, "SST-2"},
      {"child-tuning-f-rte", "child-tuning-f", nlohmann::json::object(), "RTE"},
      {"child-tuning-d-stsb", "child-tuning-d", {{"reserve_p", 0.01}}, "STS-B"},
      {"far-sst2", "far", nlohmann::json::object(), "SST-2"},
      {"full-rte", "full", nlohmann::json::object(), "RTE"},
      {"frozen-stsb", "frozen", nlohmann::json::object(), "STS-B"},
  };
  return specs;
}

inline data::EncodedDataset glue_slice(const text::Tokenizer& tokenizer, const std::string& task,
                                       const std::string& split, size_t examples) {
  data::GlueReadOptions options;
  options.max_samples = examples;
  return data::encode_dataset(
      data::read_glue(data::glue_dir_from_env(), data::find_glue_task(task), split, options),
      tokenizer, 48);
}

// The directory holding one subdirectory per spec, each a delta.
inline std::filesystem::path served_deltas_dir() {
  namespace fs = std::filesystem;
  static fs::path ready;
  if (!ready.empty()) return ready;
  train::BaseModel base = train::load_base(minilm_dir());
  const fs::path target =
      fs::temp_directory_path() / ("deltatune-served-deltas-v1-" + base.checksum.substr(0, 12));
  if (fs::exists(target / "complete")) return ready = target;
  // Trained in a private directory, then renamed into place in one step: a
  // concurrent test process either wins the rename or uses the winner's.
  std::string pattern = (fs::temp_directory_path() / "deltatune-served-deltas-XXXXXX").string();
  const fs::path scratch = ::mkdtemp(pattern.data());
  auto tokenizer = text::load_tokenizer(minilm_dir());
  for (const ServedDeltaSpec& spec : served_delta_specs()) {
    const data::TaskSpec& task = data::find_glue_task(spec.glue_task);
    auto train_set = glue_slice(*tokenizer, spec.glue_task, "train", 16);
    auto dev_set = glue_slice(*tokenizer, spec.glue_task, "dev", 8);
    auto model = train::make_task_model(base, task.num_labels(), 7);
    auto method = methods::make_method(spec.method, spec.options);
    train::TrainConfig config;
    config.learning_rate = spec.method == "full" ? 1e-3 : 2e-2;
    config.batch_size = 8;
    config.epochs = 1;
    config.progress = false;
    config.log_every = 0;
    config.keep_best = false;
    method->attach(*model);
    train::MethodRun run = train::run_method(model, *method, task, config, train_set, dev_set);
    methods::Delta delta = train::build_delta(base, *model, *method, task, 48, config, run.result);
    delta.save(scratch / spec.name);
  }
  std::ofstream(scratch / "complete") << "ok\n";
  std::error_code failed;
  fs::rename(scratch, target, failed);
  if (failed) fs::remove_all(scratch, failed);  // another process got there first
  return ready = target;
}

// The first `count` dev inputs of a spec's task: (text_a, text_b or none).
inline std::vector<std::pair<std::string, std::optional<std::string>>> dev_inputs(
    const std::string& glue_task, size_t count, size_t skip = 0) {
  data::GlueReadOptions options;
  options.max_samples = count + skip;
  auto set =
      data::read_glue(data::glue_dir_from_env(), data::find_glue_task(glue_task), "dev", options);
  std::vector<std::pair<std::string, std::optional<std::string>>> out;
  for (size_t i = skip; i < set.examples.size(); ++i) {
    const auto& e = set.examples[i];
    out.emplace_back(e.text_a, e.text_b);
  }
  return out;
}

}  // namespace deltatune::test
