#include "deltatune/data/batcher.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <exception>
#include <numeric>
#include <thread>

#include "deltatune/data/shuffle.h"
#include "deltatune/error.h"
#include "deltatune/io/cpus.h"
#include "deltatune/model/batch.h"

namespace deltatune::data {
namespace {

// Epoch streams start here so that they never meet stream 0, which
// read_dataset's max_samples draws from (a user may pass one seed to both).
constexpr uint64_t kEpochStreamBase = uint64_t{1} << 32;

// Below this many examples a thread costs more than it saves.
constexpr std::size_t kExamplesPerThread = 4096;

}  // namespace

EncodedDataset encode_dataset(const Dataset& dataset, const text::Tokenizer& tokenizer,
                              std::size_t max_length, unsigned threads) {
  const std::size_t n = dataset.examples.size();
  EncodedDataset out;
  out.type = dataset.type;
  out.pad_token_id = tokenizer.pad_token_id();
  out.max_length = max_length;
  out.encodings.resize(n);
  out.lines.resize(n);

  if (threads == 0) threads = io::available_cpus();
  const std::size_t workers =
      std::max<std::size_t>(1, std::min<std::size_t>(threads, n / kExamplesPerThread));
  // Each worker owns a contiguous range and writes only its own slots; the
  // first failing example (lowest index) is reported, whatever the timing.
  std::vector<std::exception_ptr> errors(workers);
  std::vector<std::size_t> failed_at(workers, n);
  auto work = [&](std::size_t w) {
    const std::size_t begin = n * w / workers, end = n * (w + 1) / workers;
    for (std::size_t i = begin; i < end; ++i) {
      const Example& e = dataset.examples[i];
      try {
        std::optional<std::string_view> b;
        if (e.text_b) b = *e.text_b;
        out.encodings[i] = tokenizer.encode(e.text_a, b, max_length);
      } catch (const Error& err) {
        errors[w] = std::make_exception_ptr(
            Error(dataset.source + ":" + std::to_string(e.line) + ": " + err.what()));
        failed_at[w] = i;
        return;
      }
    }
  };
  if (workers == 1) {
    work(0);
  } else {
    std::vector<std::thread> pool;
    for (std::size_t w = 0; w < workers; ++w) pool.emplace_back(work, w);
    for (auto& t : pool) t.join();
  }
  const auto first = std::min_element(failed_at.begin(), failed_at.end());
  if (*first < n) std::rethrow_exception(errors[first - failed_at.begin()]);

  if (dataset.type == TaskType::kRegression) {
    out.scores.reserve(n);
  } else {
    out.labels.reserve(n);
  }
  for (std::size_t i = 0; i < n; ++i) {
    const Example& e = dataset.examples[i];
    out.lines[i] = e.line;
    if (dataset.type == TaskType::kRegression) {
      out.scores.push_back(e.score);
    } else {
      out.labels.push_back(e.label);
    }
    if (out.encodings[i].input_ids.size() >= max_length) ++out.at_max_length;
  }
  return out;
}

Batcher::Batcher(const EncodedDataset& dataset, BatchOptions options)
    : dataset_(dataset), options_(options) {
  if (options_.batch_size == 0) throw Error("batch_size must be positive");
  if (options_.world_size == 0) throw Error("world_size must be positive");
  if (options_.rank >= options_.world_size)
    throw Error("rank " + std::to_string(options_.rank) + " is outside world_size " +
                std::to_string(options_.world_size));
  if (options_.mega_batch_factor == 0) throw Error("mega_batch_factor must be positive");
  if (dataset_.size() == 0) throw Error("cannot batch an empty dataset");
  if (global_batch_count() == 0)
    throw Error("drop_last with " + std::to_string(dataset_.size()) + " examples and batch_size " +
                std::to_string(options_.batch_size) + " leaves no batch");
}

std::size_t Batcher::global_batch_count() const {
  const std::size_t n = dataset_.size(), b = options_.batch_size;
  return options_.drop_last ? n / b : (n + b - 1) / b;
}

std::size_t Batcher::batches_per_epoch() const {
  return (global_batch_count() + options_.world_size - 1) / options_.world_size;
}

std::vector<std::vector<std::size_t>> Batcher::global_batches(std::size_t epoch) const {
  const std::size_t n = dataset_.size(), b = options_.batch_size;
  auto length = [&](std::size_t i) { return dataset_.encodings[i].input_ids.size(); };
  auto longest_first = [&](std::size_t x, std::size_t y) { return length(x) > length(y); };
  auto cut = [&](const std::vector<std::size_t>& order) {
    std::vector<std::vector<std::size_t>> batches;
    for (std::size_t start = 0; start < n; start += b)
      batches.emplace_back(order.begin() + start, order.begin() + std::min(n, start + b));
    if (options_.drop_last && n % b != 0) batches.pop_back();
    return batches;
  };

  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  if (!options_.shuffle) {
    if (options_.group_by_length) std::stable_sort(order.begin(), order.end(), longest_first);
    return cut(order);
  }
  auto generator = make_generator(options_.seed, kEpochStreamBase + epoch);
  shuffle_in_place(order, generator);
  if (!options_.group_by_length) return cut(order);

  // HF's LengthGroupedSampler: mega-batches of `mult` batches, mult capped so
  // that there are at least ~4 mega-batches, then sorted by length. A whole
  // number of batches per mega-batch keeps batch boundaries inside them.
  const std::size_t mult =
      std::max<std::size_t>(1, std::min(options_.mega_batch_factor, n / (4 * b)));
  const std::size_t mega = mult * b;
  for (std::size_t start = 0; start < n; start += mega)
    std::stable_sort(order.begin() + start, order.begin() + std::min(n, start + mega),
                     longest_first);
  auto batches = cut(order);
  shuffle_in_place(batches, generator);
  return batches;
}

EpochPlan Batcher::plan(std::size_t epoch) const {
  auto global = global_batches(epoch);
  const std::size_t count = global.size(), world = options_.world_size;
  EpochPlan plan;
  if (world == 1) {
    plan.batches = std::move(global);
    return plan;
  }
  const std::size_t per_rank = batches_per_epoch();
  plan.batches.reserve(per_rank);
  for (std::size_t k = 0; k < per_rank; ++k) {
    const std::size_t g = options_.rank + k * world;
    if (g >= count) ++plan.padding;
    plan.batches.push_back(global[g % count]);
  }
  return plan;
}

Batch Batcher::make(const std::vector<std::size_t>& indices) const {
  if (indices.empty()) throw Error("cannot make an empty batch");
  std::vector<text::Encoding> encodings;
  encodings.reserve(indices.size());
  for (std::size_t i : indices) {
    if (i >= dataset_.size())
      throw Error("example " + std::to_string(i) + " is outside the dataset (" +
                  std::to_string(dataset_.size()) + " examples)");
    encodings.push_back(dataset_.encodings[i]);
  }
  Batch batch;
  batch.input = model::make_batch(encodings, dataset_.pad_token_id);
  const auto size = static_cast<int64_t>(indices.size());
  if (dataset_.type == TaskType::kRegression) {
    batch.labels = at::empty({size}, at::kFloat);
    auto* p = batch.labels.data_ptr<float>();
    for (std::size_t k = 0; k < indices.size(); ++k) p[k] = dataset_.scores[indices[k]];
  } else {
    batch.labels = at::empty({size}, at::kLong);
    auto* p = batch.labels.data_ptr<int64_t>();
    for (std::size_t k = 0; k < indices.size(); ++k) p[k] = dataset_.labels[indices[k]];
  }
  batch.indices = indices;
  return batch;
}

}  // namespace deltatune::data
