#include "deltatune/serve/engine.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

#include "deltatune/io/cpus.h"
#include "deltatune/serve/mixed_batch.h"
#include "deltatune/version.h"

namespace deltatune::serve {
namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string names_of(const std::map<std::string, std::shared_ptr<const ServedTask>>& tasks) {
  std::string out;
  for (const auto& [name, task] : tasks) out += (out.empty() ? "" : ", ") + name;
  return out.empty() ? "none" : out;
}

const std::vector<double> kSecondsBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                             0.1,    0.25,  0.5,    1,     2.5,  5,     10};

}  // namespace

std::vector<std::vector<size_t>> length_groups(const std::vector<size_t>& lengths,
                                               size_t pass_overhead) {
  const size_t n = lengths.size();
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return lengths[a] < lengths[b]; });
  // cost[j]: the cheapest split of the j shortest rows; a group of rows
  // i..j-1 (sorted) costs (j - i) * length of its longest + the overhead.
  std::vector<size_t> cost(n + 1, 0), start(n + 1, 0);
  for (size_t j = 1; j <= n; ++j) {
    cost[j] = SIZE_MAX;
    for (size_t i = 0; i < j; ++i) {
      const size_t c = cost[i] + (j - i) * lengths[order[j - 1]] + pass_overhead;
      if (c < cost[j]) cost[j] = c, start[j] = i;
    }
  }
  std::vector<std::vector<size_t>> groups;
  for (size_t j = n; j > 0; j = start[j])
    groups.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(start[j]),
                        order.begin() + static_cast<std::ptrdiff_t>(j));
  std::reverse(groups.begin(), groups.end());
  return groups;
}

int ServeError::http_status() const {
  switch (kind_) {
    case Kind::kValidation:
      return 422;
    case Kind::kNotFound:
      return 404;
    case Kind::kOverloaded:
      return 429;
    case Kind::kUnhealthy:
      return 503;
    case Kind::kBackend:
      return 500;
    case Kind::kCancelled:
      return 499;  // nginx's "client closed request"
  }
  return 500;
}

std::string ServeError::type_name() const {
  switch (kind_) {
    case Kind::kValidation:
      return "Validation";
    case Kind::kNotFound:
      return "NotFound";
    case Kind::kOverloaded:
      return "Overloaded";
    case Kind::kUnhealthy:
      return "Unhealthy";
    case Kind::kBackend:
      return "Backend";
    case Kind::kCancelled:
      return "Cancelled";
  }
  return "Backend";
}

struct Engine::Job {
  PredictRequest request;
  std::vector<std::shared_ptr<const ServedTask>> tasks;  // per item
  bool truncate = false;
  std::promise<std::vector<ItemPrediction>> promise;
  std::mutex mutex;
  std::vector<ItemPrediction> results;
  size_t remaining = 0;
  bool done = false;
  Clock::time_point submitted = Clock::now();
};

Engine::Engine(train::BaseModel base, std::unique_ptr<text::Tokenizer> tokenizer,
               EngineOptions options)
    : base_(std::move(base)), tokenizer_(std::move(tokenizer)), options_(options) {
  if (options_.max_batch_rows < 1 || options_.max_batch_tokens < 1 || options_.queue_capacity < 1 ||
      options_.max_client_batch_size < 1 || options_.tokenizer_threads < 1)
    throw Error(
        "serve: batch rows, batch tokens, queue capacity, client batch size and "
        "tokenizer threads must be at least 1");
  model_ = train::make_task_model(base_, 1, 0, options_.device);
  for (auto& parameter : model_->parameters(true)) parameter.requires_grad_(false);
  model_->eval();
  loader_ = std::make_unique<TaskLoader>(base_, *model_);
  tasks_ = std::make_shared<const TaskSet>();

  metrics_.add_counter("deltatune_requests_total", "Predict requests by outcome");
  metrics_.add_counter("deltatune_items_total", "Inputs predicted, by task");
  metrics_.add_computed_gauge(
      "deltatune_queue_items", "Inputs accepted and not yet answered", [this] {
        return std::vector<std::pair<Labels, double>>{{{}, static_cast<double>(pending_.load())}};
      });
  metrics_.add_computed_gauge("deltatune_queue_capacity", "Most inputs the queue holds", [this] {
    return std::vector<std::pair<Labels, double>>{
        {{}, static_cast<double>(options_.queue_capacity)}};
  });
  metrics_.add_histogram("deltatune_request_duration_seconds",
                         "From acceptance to the last input's answer", kSecondsBuckets);
  metrics_.add_histogram("deltatune_tokenization_duration_seconds", "Tokenizing one request",
                         kSecondsBuckets);
  metrics_.add_histogram("deltatune_queue_duration_seconds",
                         "An input's wait from tokenized to its batch's start", kSecondsBuckets);
  metrics_.add_histogram("deltatune_inference_duration_seconds", "One batch's forward pass",
                         kSecondsBuckets);
  metrics_.add_histogram("deltatune_batch_size", "Inputs per batch",
                         {1, 2, 4, 8, 16, 32, 64, 128, 256});
  metrics_.add_histogram("deltatune_batch_tokens", "Padded tokens per batch",
                         {64, 256, 1024, 2048, 4096, 8192, 16384, 32768});
  metrics_.add_histogram("deltatune_batch_tasks", "Distinct tasks per batch",
                         {1, 2, 4, 8, 16, 32, 64, 128});
  metrics_.add_computed_gauge("deltatune_tasks_loaded", "Tasks being served", [this] {
    return std::vector<std::pair<Labels, double>>{{{}, static_cast<double>(tasks().size())}};
  });
  metrics_.add_computed_gauge(
      "deltatune_task_resident_bytes", "Bytes a task holds beyond the shared base", [this] {
        std::vector<std::pair<Labels, double>> out;
        for (const auto& t : tasks())
          out.push_back({{{"task", t->name}}, static_cast<double>(t->resident_bytes)});
        return out;
      });
  metrics_.add_computed_gauge("deltatune_resident_bytes", "Resident memory of the process", [] {
    return std::vector<std::pair<Labels, double>>{{{}, io::resident_bytes()}};
  });

  for (unsigned i = 0; i < options_.tokenizer_threads; ++i)
    tokenizers_.emplace_back([this] { tokenizer_loop(); });
  // OpenMP's thread count is per thread: the batchers share the creator's.
  const int per_worker =
      std::max(1, at::get_num_threads() / static_cast<int>(options_.batch_workers));
  for (unsigned i = 0; i < options_.batch_workers; ++i)
    batchers_.emplace_back([this, per_worker] {
      at::set_num_threads(per_worker);
      batcher_loop();
    });
}

Engine::~Engine() { shutdown(); }

json Engine::load_task(const std::string& name, const fs::path& directory) {
  if (name.empty() || name.find_first_of("/ \t\n\"\\") != std::string::npos)
    throw ServeError(ServeError::Kind::kValidation,
                     "task name '" + name + "' must be non-empty, without '/', spaces or quotes");
  std::lock_guard load_lock(load_mutex_);
  if (task(name))
    throw ServeError(ServeError::Kind::kValidation,
                     "a task named '" + name + "' is loaded already");
  std::shared_ptr<const ServedTask> loaded;
  try {
    at::NoGradGuard no_grad;
    loaded = loader_->load(name, directory);
  } catch (const ServeError&) {
    throw;
  } catch (const std::exception& e) {
    throw ServeError(ServeError::Kind::kValidation, e.what());
  }
  std::lock_guard lock(tasks_mutex_);
  auto next = std::make_shared<TaskSet>(*tasks_);
  (*next)[name] = loaded;
  tasks_ = next;
  return loaded->describe();
}

bool Engine::unload_task(const std::string& name) {
  std::lock_guard lock(tasks_mutex_);
  if (!tasks_->count(name)) return false;
  auto next = std::make_shared<TaskSet>(*tasks_);
  next->erase(name);
  tasks_ = next;  // rows already accepted keep their task alive until answered
  return true;
}

std::shared_ptr<const ServedTask> Engine::task(const std::string& name) const {
  std::lock_guard lock(tasks_mutex_);
  auto found = tasks_->find(name);
  return found == tasks_->end() ? nullptr : found->second;
}

std::vector<std::shared_ptr<const ServedTask>> Engine::tasks() const {
  std::shared_ptr<const TaskSet> snapshot;
  {
    std::lock_guard lock(tasks_mutex_);
    snapshot = tasks_;
  }
  std::vector<std::shared_ptr<const ServedTask>> out;
  for (const auto& [name, t] : *snapshot) out.push_back(t);
  return out;
}

std::future<std::vector<ItemPrediction>> Engine::submit(PredictRequest request) {
  auto refuse = [this](ServeError::Kind kind, const std::string& message) {
    ServeError error(kind, message);
    metrics_.increment("deltatune_requests_total", {{"outcome", error.type_name()}});
    return error;
  };
  if (!accepting_) throw refuse(ServeError::Kind::kUnhealthy, "the server is shutting down");
  const size_t n = request.items.size();
  if (n == 0) throw refuse(ServeError::Kind::kValidation, "`inputs` cannot be empty");
  if (n > options_.max_client_batch_size)
    throw refuse(ServeError::Kind::kValidation,
                 fmt::format("batch size {} > maximum allowed batch size {}", n,
                             options_.max_client_batch_size));
  auto job = std::make_shared<Job>();
  std::shared_ptr<const TaskSet> snapshot;
  {
    std::lock_guard lock(tasks_mutex_);
    snapshot = tasks_;
  }
  for (size_t i = 0; i < n; ++i) {
    const PredictItem& item = request.items[i];
    std::shared_ptr<const ServedTask> t;
    if (item.task.empty()) {
      if (snapshot->size() != 1)
        throw refuse(ServeError::Kind::kValidation,
                     fmt::format("no task given for input {}: name one with `task` (loaded: {})", i,
                                 names_of(*snapshot)));
      t = snapshot->begin()->second;
    } else {
      auto found = snapshot->find(item.task);
      if (found == snapshot->end())
        throw refuse(
            ServeError::Kind::kNotFound,
            fmt::format("task '{}' is not loaded (loaded: {})", item.task, names_of(*snapshot)));
      t = found->second;
    }
    if (t->spec.is_pair != item.text_b.has_value())
      throw refuse(ServeError::Kind::kValidation,
                   fmt::format("task '{}' reads {}; input {} is {}", t->name,
                               t->spec.is_pair ? "text pairs" : "single texts", i,
                               item.text_b ? "a pair" : "one text"));
    job->tasks.push_back(std::move(t));
  }
  for (size_t current = pending_.load();;) {
    if (current + n > options_.queue_capacity)
      throw refuse(ServeError::Kind::kOverloaded,
                   fmt::format("the queue is full ({} inputs waiting, capacity {})", current,
                               options_.queue_capacity));
    if (pending_.compare_exchange_weak(current, current + n)) break;
  }
  job->truncate = request.truncate.value_or(options_.auto_truncate);
  job->request = std::move(request);
  job->results.resize(n);
  job->remaining = n;
  auto future = job->promise.get_future();
  {
    std::lock_guard lock(tokenize_mutex_);
    tokenize_queue_.push_back(std::move(job));
  }
  tokenize_ready_.notify_one();
  return future;
}

std::vector<ItemPrediction> Engine::predict(PredictRequest request) {
  return submit(std::move(request)).get();
}

void Engine::fail_job(const std::shared_ptr<Job>& job, const ServeError& error) {
  std::lock_guard lock(job->mutex);
  if (job->done) return;
  job->done = true;
  metrics_.increment("deltatune_requests_total", {{"outcome", error.type_name()}});
  job->promise.set_exception(std::make_exception_ptr(error));
}

void Engine::tokenizer_loop() {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock lock(tokenize_mutex_);
      tokenize_ready_.wait(lock, [this] { return stopping_ || !tokenize_queue_.empty(); });
      if (tokenize_queue_.empty()) return;
      job = std::move(tokenize_queue_.front());
      tokenize_queue_.pop_front();
      ++in_tokenizer_;
    }
    const auto start = Clock::now();
    const size_t n = job->request.items.size();
    std::vector<Row> rows;
    try {
      for (size_t i = 0; i < n && !*job->request.cancelled; ++i) {
        const PredictItem& item = job->request.items[i];
        const ServedTask& t = *job->tasks[i];
        std::optional<std::string_view> b;
        if (item.text_b) b = *item.text_b;
        text::Encoding encoding;
        try {
          encoding = tokenizer_->encode(item.text_a, b, size_t{1} << 30);
          if (encoding.input_ids.size() > t.max_length) {
            if (!job->truncate)
              throw ServeError(
                  ServeError::Kind::kValidation,
                  fmt::format("input {} has {} tokens, more than task '{}''s max length {} "
                              "(send \"truncate\": true to cut it)",
                              i, encoding.input_ids.size(), t.name, t.max_length));
            encoding = tokenizer_->encode(item.text_a, b, t.max_length);
          }
        } catch (const ServeError&) {
          throw;
        } catch (const std::exception& e) {
          throw ServeError(ServeError::Kind::kValidation, fmt::format("input {}: {}", i, e.what()));
        }
        rows.push_back(Row{job, i, job->tasks[i], std::move(encoding), {}});
      }
      if (*job->request.cancelled)
        throw ServeError(ServeError::Kind::kCancelled, "the client went away");
    } catch (const ServeError& error) {
      rows.clear();
      pending_ -= n;
      fail_job(job, error);
    }
    metrics_.observe("deltatune_tokenization_duration_seconds", seconds_since(start));
    {
      std::lock_guard lock(batch_mutex_);
      const auto now = Clock::now();
      for (Row& row : rows) {
        row.queued = now;
        batch_queue_.push_back(std::move(row));
      }
    }
    {
      std::lock_guard lock(tokenize_mutex_);
      --in_tokenizer_;
    }
    batch_ready_.notify_one();
    drained_.notify_all();
  }
}

nlohmann::json Engine::warm_up() {
  const std::vector<std::shared_ptr<const ServedTask>> loaded = tasks();
  if (loaded.empty()) return nlohmann::json::object();
  const auto start = Clock::now();
  size_t longest = 1;
  for (const auto& t : loaded)
    longest = std::max(longest, t->max_length + static_cast<size_t>(t->added_positions));
  const size_t rows =
      std::max<size_t>(1, std::min(options_.max_batch_rows, options_.max_batch_tokens / longest));
  // Rows of non-special tokens, each as long as its task's max length.
  std::vector<text::Encoding> encodings(loaded.size());
  for (size_t i = 0; i < loaded.size(); ++i) {
    const size_t n = loaded[i]->max_length;
    encodings[i].input_ids.assign(n, 1000);
    encodings[i].token_type_ids.assign(n, 0);
    encodings[i].attention_mask.assign(n, 1);
  }
  std::vector<MixedRow> batch;
  for (size_t r = 0; r < rows; ++r)
    batch.push_back({loaded[r % loaded.size()].get(), &encodings[r % loaded.size()]});
  {
    at::NoGradGuard no_grad;
    mixed_forward(*model_, batch, tokenizer_->pad_token_id(), options_.mixed);
  }
  return {{"rows", rows}, {"tokens_per_row", longest}, {"seconds", seconds_since(start)}};
}

size_t Engine::padded_tokens(const Row& row) const {
  return row.encoding.input_ids.size() + static_cast<size_t>(row.task->added_positions);
}

void Engine::batcher_loop() {
  for (;;) {
    std::vector<Row> batch;
    {
      std::unique_lock lock(batch_mutex_);
      batch_ready_.wait(lock, [this] { return stopping_ || !batch_queue_.empty(); });
      if (batch_queue_.empty()) return;  // stopping, nothing left
      // Wait for a full batch or the oldest input's deadline.
      const auto deadline = batch_queue_.front().queued + options_.max_wait;
      for (;;) {
        size_t longest = 0, rows = 0;
        bool full = false;
        for (const Row& row : batch_queue_) {
          longest = std::max(longest, padded_tokens(row));
          if (++rows >= options_.max_batch_rows || rows * longest >= options_.max_batch_tokens) {
            full = true;
            break;
          }
        }
        if (full || stopping_ || Clock::now() >= deadline) break;
        batch_ready_.wait_until(lock, deadline);
      }
      size_t longest = 0;
      while (!batch_queue_.empty() && batch.size() < options_.max_batch_rows) {
        Row& next = batch_queue_.front();
        const size_t grown = std::max(longest, padded_tokens(next));
        if (!batch.empty() && (batch.size() + 1) * grown > options_.max_batch_tokens) break;
        longest = grown;
        batch.push_back(std::move(next));
        batch_queue_.pop_front();
      }
      if (!batch_queue_.empty()) batch_ready_.notify_one();  // another worker's batch
    }
    // Inputs of requests that failed or whose client went away are dropped.
    std::vector<Row> live;
    for (Row& row : batch) {
      bool drop;
      {
        std::lock_guard lock(row.job->mutex);
        drop = row.job->done || *row.job->request.cancelled;
      }
      if (drop) {
        --pending_;
        fail_job(row.job, ServeError(ServeError::Kind::kCancelled, "the client went away"));
      } else {
        live.push_back(std::move(row));
      }
    }
    if (!live.empty()) run_batch(live);
    drained_.notify_all();
  }
}

void Engine::run_batch(std::vector<Row>& batch) {
  const auto start = Clock::now();
  std::vector<at::Tensor> logits(batch.size());
  try {
    at::NoGradGuard no_grad;
    std::vector<MixedRow> rows;
    size_t longest = 0;
    std::map<const ServedTask*, std::vector<size_t>> by_task;
    for (size_t i = 0; i < batch.size(); ++i) {
      rows.push_back({batch[i].task.get(), &batch[i].encoding});
      longest = std::max(longest, padded_tokens(batch[i]));
      by_task[batch[i].task.get()].push_back(i);
      metrics_.observe("deltatune_queue_duration_seconds",
                       std::chrono::duration<double>(start - batch[i].queued).count());
    }
    std::vector<std::vector<size_t>> passes;
    if (options_.group_per_task) {
      for (const auto& [t, indices] : by_task) passes.push_back(indices);
    } else {
      std::vector<size_t> lengths;
      for (const Row& row : batch) lengths.push_back(padded_tokens(row));
      passes = length_groups(lengths, options_.pass_overhead_tokens);
    }
    for (const auto& indices : passes) {
      std::vector<MixedRow> group;
      for (size_t i : indices) group.push_back(rows[i]);
      auto out = mixed_forward(*model_, group, tokenizer_->pad_token_id(), options_.mixed);
      for (size_t k = 0; k < indices.size(); ++k) logits[indices[k]] = out[k];
    }
    metrics_.observe("deltatune_inference_duration_seconds", seconds_since(start));
    metrics_.observe("deltatune_batch_size", static_cast<double>(batch.size()));
    metrics_.observe("deltatune_batch_tokens", static_cast<double>(batch.size() * longest));
    metrics_.observe("deltatune_batch_tasks", static_cast<double>(by_task.size()));
  } catch (const std::exception& e) {
    ServeError error(ServeError::Kind::kBackend, std::string("inference failed: ") + e.what());
    for (Row& row : batch) {
      --pending_;
      fail_job(row.job, error);
    }
    return;
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    Row& row = batch[i];
    const ServedTask& t = *row.task;
    ItemPrediction prediction;
    prediction.task = t.name;
    at::Tensor values = logits[i].to(at::kDouble).contiguous();
    if (t.spec.type == data::TaskType::kRegression) {
      prediction.scores.push_back({t.label(0), values[0].item<double>()});
    } else {
      if (!row.job->request.raw_scores) values = at::softmax(values, -1);
      const double* v = values.data_ptr<double>();
      for (int64_t k = 0; k < values.numel(); ++k) prediction.scores.push_back({t.label(k), v[k]});
      std::stable_sort(prediction.scores.begin(), prediction.scores.end(),
                       [](const LabelScore& a, const LabelScore& b) { return a.score > b.score; });
    }
    metrics_.increment("deltatune_items_total", {{"task", t.name}});
    finish_row(row, std::move(prediction));
  }
}

void Engine::finish_row(Row& row, ItemPrediction prediction) {
  Job& job = *row.job;
  std::lock_guard lock(job.mutex);
  // Off the queue before the caller can see the answer.
  --pending_;
  if (job.done) return;
  job.results[row.index] = std::move(prediction);
  if (--job.remaining == 0) {
    job.done = true;
    metrics_.increment("deltatune_requests_total", {{"outcome", "success"}});
    metrics_.observe("deltatune_request_duration_seconds", seconds_since(job.submitted));
    job.promise.set_value(std::move(job.results));
  }
}

void Engine::shutdown() {
  accepting_ = false;
  if (stopping_) return;
  const auto give_up = Clock::now() + std::chrono::seconds(60);
  while (pending_ != 0 && Clock::now() < give_up) {
    std::unique_lock lock(drained_mutex_);
    drained_.wait_for(lock, std::chrono::milliseconds(10));
  }
  stopping_ = true;
  tokenize_ready_.notify_all();
  batch_ready_.notify_all();
  for (auto& t : tokenizers_)
    if (t.joinable()) t.join();
  for (auto& t : batchers_)
    if (t.joinable()) t.join();
}

json Engine::info() const {
  json tasks_json = json::array();
  for (const auto& t : tasks()) tasks_json.push_back(t->describe());
  json answer = {{"model_id", base_.name},
                 {"model_path", fs::absolute(base_.directory).string()},
                 {"model_sha", base_.checksum},
                 {"model_dtype",
                  options_.mixed.precision == model::Precision::kBFloat16 ? "bfloat16" : "float32"},
                 {"model_device", options_.device.str()},
                 {"model_type", {{"classifier", {{"tasks", tasks_json.size()}}}}},
                 {"architecture", base_.config.model_type},
                 {"max_input_length", base_.config.max_sequence_tokens()},
                 {"max_batch_tokens", options_.max_batch_tokens},
                 {"max_batch_requests", options_.max_batch_rows},
                 {"max_client_batch_size", options_.max_client_batch_size},
                 {"max_wait_ms", options_.max_wait.count() / 1000.0},
                 {"queue_capacity", options_.queue_capacity},
                 {"tokenization_workers", options_.tokenizer_threads},
                 {"batch_workers", options_.batch_workers},
                 {"auto_truncate", options_.auto_truncate},
                 {"tasks", tasks_json},
                 {"version", std::string("deltatune ") + kVersion}};
  if (const auto& probe = options_.precision_probe)
    answer["precision_probe"] = {{"fp32_gflops", probe->fp32_gflops},
                                 {"bf16_gflops", probe->bf16_gflops},
                                 {"choice", model::precision_name(probe->choice)}};
  return answer;
}

}  // namespace deltatune::serve
