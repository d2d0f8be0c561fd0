// The serving engine: one base model in memory, many tasks on it, requests
// of any tasks batched together (mixed_batch.h). The HTTP server
// (http_server.h) is a thin layer over it; C++ programs can use it directly.
//
// Flow: submit() validates and queues a request -> tokenizer threads encode
// its items -> one batcher thread forms batches under a token budget and a
// maximum wait, runs them, and completes each request's future.
// Passes read only immutable task data, so batch workers may run passes concurrently.
// Invariants: the queue never holds more than queue_capacity items (submit
// refuses beyond, kOverloaded); a cancelled request's items that have not
// run are dropped; loading and unloading tasks never blocks a running batch
// (batches hold the task set they started with).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "deltatune/error.h"
#include "deltatune/serve/metrics.h"
#include "deltatune/serve/mixed_batch.h"
#include "deltatune/serve/served_task.h"
#include "deltatune/text/tokenizer.h"
#include "deltatune/train/task_model.h"

namespace deltatune::serve {

// An error with the HTTP status class it maps to (TEI's error types).
class ServeError : public Error {
 public:
  enum class Kind { kValidation, kNotFound, kOverloaded, kUnhealthy, kBackend, kCancelled };
  ServeError(Kind kind, const std::string& message) : Error(message), kind_(kind) {}
  Kind kind() const { return kind_; }
  int http_status() const;
  std::string type_name() const;  // TEI's error_type: "Validation", "Overloaded", ...

 private:
  Kind kind_;
};

struct EngineOptions {
  std::size_t max_batch_tokens = 16384;  // padded tokens per batch (rows x longest)
  std::size_t max_batch_rows = 128;
  std::chrono::microseconds max_wait{2000};  // from the oldest queued item
  std::size_t queue_capacity = 2048;         // items queued or being tokenized
  std::size_t max_client_batch_size = 64;    // items per request (TEI's flag of that name)
  unsigned tokenizer_threads = 1;
  // Batches run at once, each on intra-op threads / batch_workers threads
  // (at least one): with more workers than one, a core idle inside one pass's
  // serial parts works on another pass.
  unsigned batch_workers = 1;
  bool auto_truncate = false;  // truncate over-long inputs instead of refusing them
  // Group rows per task instead of one mixed pass (for benchmarks).
  bool group_per_task = false;
  // A batch runs as passes over rows of similar length (length_groups) when
  // the padding that saves outweighs this cost of one more pass, in tokens.
  // Very large: one pass.
  std::size_t pass_overhead_tokens = 192;
  MixedOptions mixed;  // how a pass computes rows of different tasks
  // The start-up measurement that chose mixed.precision (serve --precision
  // auto), reported by /info; absent when the user chose.
  std::optional<model::PrecisionProbe> precision_probe;
  // Where the shared model and every task's tensors live; answers come back
  // to the CPU. (serve --device)
  at::Device device = at::Device(at::kCPU);
};

// Splits rows (their token counts) into groups of similar length, each one
// forward pass, minimising the padded tokens plus `pass_overhead` per pass
// (an exact dynamic programme over the rows sorted by length). Every row is
// in exactly one group; groups list row indices.
std::vector<std::vector<size_t>> length_groups(const std::vector<size_t>& lengths,
                                               size_t pass_overhead);

struct PredictItem {
  std::string task;
  std::string text_a;
  std::optional<std::string> text_b;
};

struct PredictRequest {
  std::vector<PredictItem> items;
  std::optional<bool> truncate;  // unset: EngineOptions::auto_truncate
  bool raw_scores = false;
  // Set by the caller when the client went away: items not yet run are dropped.
  std::shared_ptr<std::atomic<bool>> cancelled = std::make_shared<std::atomic<bool>>(false);
};

struct LabelScore {
  std::string label;
  double score = 0;
};

struct ItemPrediction {
  std::string task;
  std::vector<LabelScore> scores;  // sorted by score, highest first (regression: one value)
};

class Engine {
 public:
  Engine(train::BaseModel base, std::unique_ptr<text::Tokenizer> tokenizer,
         EngineOptions options = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Loads a delta under `name` while serving continues. Throws ServeError
  // (kValidation: bad or foreign delta, the name taken) naming the directory.
  nlohmann::json load_task(const std::string& name, const std::filesystem::path& directory);
  // False when no task has that name.
  bool unload_task(const std::string& name);
  std::shared_ptr<const ServedTask> task(const std::string& name) const;
  std::vector<std::shared_ptr<const ServedTask>> tasks() const;

  // Validates and queues; throws ServeError for a request refused outright
  // (unknown task, too many items, queue full, shutting down). The future
  // holds one prediction per item, or a ServeError (an input too long, bad UTF-8).
  std::future<std::vector<ItemPrediction>> submit(PredictRequest request);
  // submit() and wait.
  std::vector<ItemPrediction> predict(PredictRequest request);

  // One mixed forward pass of the largest batch the limits allow, before
  // serving (TEI warms up the same way): rows of every loaded task in turn,
  // each as long as its task accepts, as many as --max-batch-tokens and
  // --max-batch-requests let one batch hold. The allocator's high-water mark
  // is then reached here rather than at the first such batch, hours later,
  // and a budget too large for the machine fails at start. Returns
  // {"rows", "tokens_per_row", "seconds"}; nothing when no task is loaded.
  nlohmann::json warm_up();

  // Refuses new requests (kUnhealthy), finishes what was accepted, stops the threads.
  void shutdown();
  bool accepting() const { return accepting_; }

  nlohmann::json info() const;  // GET /info
  MetricsRegistry& metrics() { return metrics_; }
  const EngineOptions& options() const { return options_; }
  const train::BaseModel& base() const { return base_; }

 private:
  struct Job;
  struct Row {
    std::shared_ptr<Job> job;
    size_t index = 0;
    std::shared_ptr<const ServedTask> task;
    text::Encoding encoding;
    std::chrono::steady_clock::time_point queued;
  };
  using TaskSet = std::map<std::string, std::shared_ptr<const ServedTask>>;

  void tokenizer_loop();
  void batcher_loop();
  void run_batch(std::vector<Row>& batch);
  void finish_row(Row& row, ItemPrediction prediction);
  void fail_job(const std::shared_ptr<Job>& job, const ServeError& error);
  size_t padded_tokens(const Row& row) const;

  train::BaseModel base_;
  std::unique_ptr<text::Tokenizer> tokenizer_;
  EngineOptions options_;
  model::SequenceClassifier model_{nullptr};
  std::unique_ptr<TaskLoader> loader_;
  std::mutex load_mutex_;

  mutable std::mutex tasks_mutex_;
  std::shared_ptr<const TaskSet> tasks_;

  std::atomic<bool> accepting_{true};
  std::atomic<bool> stopping_{false};
  std::atomic<size_t> pending_{0};  // items accepted and not yet finished or dropped

  std::mutex tokenize_mutex_;
  std::condition_variable tokenize_ready_;
  std::deque<std::shared_ptr<Job>> tokenize_queue_;

  std::mutex batch_mutex_;
  std::condition_variable batch_ready_;
  std::deque<Row> batch_queue_;
  size_t in_tokenizer_ = 0;  // jobs taken by tokenizer threads, under tokenize_mutex_

  std::condition_variable drained_;
  std::mutex drained_mutex_;

  std::vector<std::thread> tokenizers_;
  std::vector<std::thread> batchers_;
  MetricsRegistry metrics_;
};

}  // namespace deltatune::serve
