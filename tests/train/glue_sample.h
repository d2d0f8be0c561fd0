// A small tokenized slice of a real GLUE task for the short training runs.
#pragma once

#include <map>
#include <utility>

#include "deltatune/data/glue.h"
#include "deltatune/text/tokenizer.h"
#include "test_paths.h"

namespace deltatune::test {

struct GlueSample {
  data::TaskSpec task;
  data::EncodedDataset train, dev;
};

// The first `train_examples` and `dev_examples` of SST-2 from $GLUE_DIR,
// tokenized for all-MiniLM-L6-v2 at max length 48; read once per size.
inline const GlueSample& sst2_sample(size_t train_examples, size_t dev_examples) {
  static std::map<std::pair<size_t, size_t>, GlueSample> cache;
  const auto key = std::make_pair(train_examples, dev_examples);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  GlueSample sample{data::find_glue_task("SST-2"), {}, {}};
  auto tokenizer = text::load_tokenizer(minilm_dir());
  const std::filesystem::path glue = data::glue_dir_from_env();
  data::GlueReadOptions options;
  options.max_samples = train_examples;
  sample.train =
      data::encode_dataset(data::read_glue(glue, sample.task, "train", options), *tokenizer, 48);
  options.max_samples = dev_examples;
  sample.dev =
      data::encode_dataset(data::read_glue(glue, sample.task, "dev", options), *tokenizer, 48);
  return cache.emplace(key, std::move(sample)).first->second;
}

}  // namespace deltatune::test
