// A task's delta as the serving engine holds it: only what differs from the
// one shared base model, keyed by the base's parameter and module names, so
// that rows of many tasks can share one forward pass (mixed_batch.h).
//
// Invariant: a ServedTask holds no copy of any base tensor. What it keeps is
// the delta's own values (replacement vectors, sparse changes, hook modules
// with their parameters, the head), so its resident bytes are its delta's.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "deltatune/data/task.h"
#include "deltatune/methods/delta.h"
#include "deltatune/model/encoder.h"
#include "deltatune/train/task_model.h"

namespace deltatune::serve {

// Changed rows of an embedding table, sorted by row: a lookup adds
// differences[k] wherever the id equals rows[k].
struct EmbeddingChanges {
  at::Tensor rows;         // [K] int64, ascending
  at::Tensor differences;  // [K, E]: task value - base value
};

struct ServedTask {
  std::string name;
  std::filesystem::path directory;
  data::TaskSpec spec;
  std::string method;
  std::size_t max_length = 128;
  int64_t num_labels = 0;
  int64_t added_positions = 0;

  // 1-D base parameters the task replaces (biases, LayerNorm weights), whole:
  // their values one after another in vector_values (one allocation per
  // task, not one per bias), by name as (offset, length). The layout is
  // shared by every task with the same names and lengths (all BitFit tasks
  // of a base): a thousand tasks hold one copy of the ~100 names.
  using VectorLayout = std::map<std::string, std::pair<int64_t, int64_t>>;
  at::Tensor vector_values;
  std::shared_ptr<const VectorLayout> vector_layout;
  const VectorLayout& vectors() const;
  // The replaced value of `name` (a view), undefined when the task keeps the base's.
  at::Tensor vector(const std::string& name) const;
  // 2-D base parameters the task replaces whole (full fine-tuning, dense-stored masks).
  std::map<std::string, at::Tensor> matrices;
  // 2-D weights with a few changed entries: (task - base) as a sparse COO matrix.
  std::map<std::string, at::Tensor> sparse_changes;
  // Embedding tables with a few changed entries.
  std::map<std::string, EmbeddingChanges> embedding_changes;

  // The method's hook modules, by the name of the module they hang on
  // ("bert.encoder.layer.0.attention.self.query", "...attention.output", ...).
  std::map<std::string, std::vector<std::shared_ptr<model::DenseDelta>>> dense_deltas;
  std::map<std::string, std::shared_ptr<model::SublayerAdapter>> adapters;
  std::map<int64_t, std::shared_ptr<model::FeedForward>> feed_forwards;  // by layer
  std::shared_ptr<model::AttentionPrefix> prefix;
  // What `prefix` gives each layer, taken once at load: [1, P, H] keys and
  // values per layer (views of its table) and its position offset. Passes
  // read these, never the hook, so batches may run concurrently.
  std::vector<at::Tensor> prefix_keys, prefix_values;
  int64_t prefix_position_offset = 0;
  std::shared_ptr<model::EmbeddingInserter> inserter;

  // The classifier's tensors by their names ("classifier.weight", ...).
  std::map<std::string, at::Tensor> head;

  int64_t delta_bytes = 0;     // the delta's tensor bytes on disk
  int64_t resident_bytes = 0;  // bytes of every tensor held above

  // Label of class `index` (HF's LABEL_i when the delta names none).
  std::string label(int64_t index) const;
  nlohmann::json describe() const;  // for GET /tasks
};

// Builds ServedTasks against one base. Holds a scratch task model whose
// parameters share the base model's storage, on which a method's hook
// modules are made and filled before they are moved into the task.
class TaskLoader {
 public:
  // `shared` is the served base model (eval mode, no hooks installed).
  TaskLoader(const train::BaseModel& base, model::SequenceClassifierImpl& shared);
  ~TaskLoader();
  // Refuses a delta made on another base, one whose tensors the base does not
  // have, or one that does not fit the position table, with an Error naming
  // the directory.
  std::shared_ptr<const ServedTask> load(const std::string& name,
                                         const std::filesystem::path& directory);

 private:
  // Moves the method modules installed on the scratch model into `harvest`
  // (nullptr: drops them), leaving the scratch model bare.
  void take_modules(ServedTask* harvest);
  const train::BaseModel& base_;
  model::SequenceClassifierImpl& shared_;
  model::SequenceClassifier scratch_{nullptr};
  std::set<std::string> base_names_;  // the scratch model's own parameters, without any method's
  // Vector layouts handed out so far, by their names and lengths.
  std::map<std::string, std::weak_ptr<const ServedTask::VectorLayout>> layouts_;
};

}  // namespace deltatune::serve
