// The serving engine in-process: rows of every method's tasks in one mixed
// forward pass equal each task model run on that row alone (the path
// `deltatune predict` takes), and the engine's refusals, bounds and hot loading.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <regex>
#include <thread>

#include "deltatune/model/fused_kernels.h"
#include "deltatune/serve/engine.h"
#include "served_deltas.h"

namespace deltatune::serve {
namespace {
namespace fs = std::filesystem;
using test::served_delta_specs;
using test::served_deltas_dir;

std::unique_ptr<Engine> make_engine(EngineOptions options = {}) {
  return std::make_unique<Engine>(train::load_base(test::minilm_dir()),
                                  text::load_tokenizer(test::minilm_dir()), options);
}

// The value of an unlabelled sample line "name value" in Prometheus text.
double sample(const std::string& text, const std::string& name) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex("\n" + name + " ([-0-9.e+]+)\n"))) return -1;
  return std::stod(m[1]);
}

ServeError::Kind error_kind(const std::function<void()>& action) {
  try {
    action();
  } catch (const ServeError& e) {
    return e.kind();
  }
  ADD_FAILURE() << "no ServeError";
  return ServeError::Kind::kBackend;
}

struct Reference {
  std::string task;
  text::Encoding encoding;
  at::Tensor logits;  // of the task model alone on this one row
};

// Three dev inputs per task, interleaved across tasks, with their logits
// from each task's own model on each row alone.
std::pair<PredictRequest, std::vector<Reference>> mixed_request() {
  train::BaseModel base = train::load_base(test::minilm_dir());
  auto tokenizer = text::load_tokenizer(test::minilm_dir());
  std::vector<std::vector<PredictItem>> per_task;
  std::vector<std::vector<Reference>> references;
  for (const auto& spec : served_delta_specs()) {
    auto model =
        train::model_from_delta(base, methods::Delta::load(served_deltas_dir() / spec.name));
    per_task.emplace_back();
    references.emplace_back();
    for (const auto& [a, b] : test::dev_inputs(spec.glue_task, 3)) {
      per_task.back().push_back({spec.name, a, b});
      data::EncodedDataset alone;
      alone.encodings.push_back(tokenizer->encode(a, b, 48));
      alone.pad_token_id = tokenizer->pad_token_id();
      alone.type = data::find_glue_task(spec.glue_task).type;
      alone.labels = {0};
      alone.scores = {0};
      alone.lines = {1};
      at::Tensor logits = train::predict_logits(*model, alone, 1, false)[0];
      references.back().push_back({spec.name, alone.encodings[0], logits});
    }
  }
  PredictRequest request;
  request.truncate = true;
  request.raw_scores = true;
  std::vector<Reference> flat;
  for (size_t i = 0; i < 3; ++i)
    for (size_t t = 0; t < per_task.size(); ++t) {
      request.items.push_back(per_task[t][i]);
      flat.push_back(references[t][i]);
    }
  return {request, flat};
}

// `bf16`: the pass ran under bf16 autocast, and agrees to bf16's precision
// (8 mantissa bits through 6 layers: 0.1 + 5% of the logit).
void expect_equal_to_alone(const Engine& engine, const std::vector<ItemPrediction>& served,
                           const std::vector<Reference>& references, bool bf16 = false) {
  ASSERT_EQ(served.size(), references.size());
  for (size_t i = 0; i < served.size(); ++i) {
    const auto task = engine.task(references[i].task);
    ASSERT_TRUE(task);
    EXPECT_EQ(served[i].task, references[i].task);
    ASSERT_EQ(static_cast<int64_t>(served[i].scores.size()), references[i].logits.numel());
    for (int64_t k = 0; k < references[i].logits.numel(); ++k) {
      const std::string label = task->label(k);
      auto found = std::find_if(served[i].scores.begin(), served[i].scores.end(),
                                [&](const LabelScore& s) { return s.label == label; });
      ASSERT_NE(found, served[i].scores.end()) << label;
      const double expected = references[i].logits[k].item<double>();
      const double tolerance =
          bf16 ? 0.1 + 0.05 * std::abs(expected) : test::fp32_tolerance(expected);
      EXPECT_NEAR(found->score, expected, tolerance)
          << "row " << i << " (" << references[i].task << "), label " << label;
    }
  }
}

TEST(MixedBatch, EveryMethodsRowsInOnePassEqualTheirTaskModelAlone) {
  EngineOptions options;
  options.max_wait = std::chrono::milliseconds(500);
  options.max_batch_rows = 256;
  options.max_batch_tokens = 1 << 20;
  options.max_client_batch_size = 256;
  auto engine = make_engine(options);
  for (const auto& spec : served_delta_specs())
    engine->load_task(spec.name, served_deltas_dir() / spec.name);
  auto [request, references] = mixed_request();
  const auto served = engine->predict(request);
  expect_equal_to_alone(*engine, served, references);
  // All of it was one forward pass over every task.
  const std::string metrics = engine->metrics().render();
  EXPECT_EQ(sample(metrics, "deltatune_batch_size_count"), 1);
  EXPECT_EQ(sample(metrics, "deltatune_batch_tasks_sum"),
            static_cast<double>(served_delta_specs().size()));
  // Sparse, low-rank, adapter, prompt and prefix tasks hold their own kinds of parts.
  EXPECT_FALSE(engine->task("fish-stsb")->sparse_changes.empty());
  EXPECT_FALSE(engine->task("lora-rte")->dense_deltas.empty());
  EXPECT_FALSE(engine->task("adapters-stsb")->adapters.empty());
  EXPECT_TRUE(engine->task("prompt-sst2")->inserter);
  EXPECT_TRUE(engine->task("prefix-rte")->prefix);
  EXPECT_FALSE(engine->task("full-rte")->matrices.empty());
  EXPECT_FALSE(engine->task("bitfit-sst2")->vectors().empty());
  // A frozen encoder's task changes only its head (BERT's pooler is part of it).
  for (const auto& [name, value] : engine->task("frozen-stsb")->vectors())
    EXPECT_EQ(name.rfind("bert.pooler.", 0), 0u) << name;
  // Tasks of one method share the names of their vectors, never the values.
  engine->load_task("bitfit-again", served_deltas_dir() / "bitfit-sst2");
  const auto first = engine->task("bitfit-sst2"), again = engine->task("bitfit-again");
  EXPECT_EQ(first->vector_layout.get(), again->vector_layout.get());
  EXPECT_NE(first->vector_values.data_ptr(), again->vector_values.data_ptr());
  EXPECT_NE(first->vector_layout.get(), engine->task("frozen-stsb")->vector_layout.get());
}

// The same on a CUDA device (skipped where there is none): the shared model
// and every task's tensors on the GPU, each row against its task model alone
// on the CPU (fp32, 1e-4).
TEST(MixedBatch, OnCudaEveryMethodsRowsEqualTheirTaskModelAloneOnTheCpu) {
  if (!model::cuda_available())
    GTEST_SKIP() << "no CUDA device here (a LibTorch without CUDA, or no GPU visible)";
  EngineOptions options;
  options.max_wait = std::chrono::milliseconds(500);
  options.max_batch_rows = 256;
  options.max_batch_tokens = 1 << 20;
  options.max_client_batch_size = 256;
  options.device = at::Device(at::kCUDA, 0);
  auto engine = make_engine(options);
  for (const auto& spec : served_delta_specs())
    engine->load_task(spec.name, served_deltas_dir() / spec.name);
  EXPECT_TRUE(engine->task("lora-rte")->head.begin()->second.is_cuda());
  auto [request, references] = mixed_request();
  const auto served = engine->predict(request);
  ASSERT_EQ(served.size(), references.size());
  for (size_t i = 0; i < served.size(); ++i) {
    const auto task = engine->task(references[i].task);
    for (int64_t k = 0; k < references[i].logits.numel(); ++k) {
      auto found = std::find_if(served[i].scores.begin(), served[i].scores.end(),
                                [&](const LabelScore& s) { return s.label == task->label(k); });
      ASSERT_NE(found, served[i].scores.end());
      EXPECT_NEAR(found->score, references[i].logits[k].item<double>(), 1e-4)
          << "row " << i << " (" << references[i].task << ")";
    }
  }
}

// The fused per-row kernels (biases accumulated into one product, LayerNorm
// with each row's parameters) are the default; this is the plain path.
TEST(MixedBatch, PlainKernelsGiveTheSameScores) {
  EngineOptions options;
  options.max_client_batch_size = 256;
  auto engine = make_engine(options);
  for (const auto& spec : served_delta_specs())
    engine->load_task(spec.name, served_deltas_dir() / spec.name);
  auto [request, references] = mixed_request();
  model::set_fused_kernels(false);
  auto served = engine->predict(request);
  model::set_fused_kernels(true);
  expect_equal_to_alone(*engine, served, references);
}

TEST(MixedBatch, Bf16PassesOfEveryMethodStayWithinBf16PrecisionOfFp32Alone) {
  EngineOptions options;
  options.max_client_batch_size = 256;
  options.mixed.precision = model::Precision::kBFloat16;
  auto engine = make_engine(options);
  for (const auto& spec : served_delta_specs())
    engine->load_task(spec.name, served_deltas_dir() / spec.name);
  EXPECT_EQ(engine->info()["model_dtype"], "bfloat16");
  auto [request, references] = mixed_request();
  expect_equal_to_alone(*engine, engine->predict(request), references, /*bf16=*/true);
}

TEST(MixedBatch, GroupingRowsPerTaskGivesTheSameScores) {
  EngineOptions options;
  options.group_per_task = true;
  options.max_client_batch_size = 256;
  auto engine = make_engine(options);
  for (const auto& spec : served_delta_specs())
    engine->load_task(spec.name, served_deltas_dir() / spec.name);
  auto [request, references] = mixed_request();
  expect_equal_to_alone(*engine, engine->predict(request), references);
}

TEST(MixedBatch, ProbabilitiesAreSortedAndRegressionIsNotSquashed) {
  auto engine = make_engine();
  engine->load_task("sst2", served_deltas_dir() / "bitfit-sst2");
  engine->load_task("stsb", served_deltas_dir() / "fish-stsb");
  PredictRequest request;
  request.truncate = true;
  request.items = {{"sst2", "a gripping, beautifully made film", std::nullopt},
                   {"stsb", "A man is playing a guitar.", std::string("A man plays the guitar.")}};
  const auto served = engine->predict(request);
  ASSERT_EQ(served[0].scores.size(), 2u);
  EXPECT_GE(served[0].scores[0].score, served[0].scores[1].score);
  EXPECT_NEAR(served[0].scores[0].score + served[0].scores[1].score, 1.0, 1e-9);
  ASSERT_EQ(served[1].scores.size(), 1u);
  // The same regression value with and without raw_scores: never a sigmoid.
  request.raw_scores = true;
  EXPECT_EQ(engine->predict(request)[1].scores[0].score, served[1].scores[0].score);
}

// The warm-up runs the largest batch the limits allow over every loaded
// task (each with its added prompt or prefix positions), then serving goes on.
TEST(ServeEngine, WarmUpRunsTheLargestBatchTheLimitsAllow) {
  EngineOptions options;
  options.max_batch_tokens = 1000;
  options.max_batch_rows = 64;
  auto engine = make_engine(options);
  EXPECT_TRUE(engine->warm_up().empty()) << "no task: nothing to warm up";
  size_t longest = 0;
  for (const auto& spec : served_delta_specs()) {
    engine->load_task(spec.name, served_deltas_dir() / spec.name);
    const auto t = engine->task(spec.name);
    longest = std::max(longest, t->max_length + static_cast<size_t>(t->added_positions));
  }
  const auto warm = engine->warm_up();
  EXPECT_EQ(warm["tokens_per_row"].get<size_t>(), longest);
  EXPECT_EQ(warm["rows"].get<size_t>(), std::min<size_t>(64, 1000 / longest));
  EXPECT_GT(warm["seconds"].get<double>(), 0.0);
  PredictRequest request;
  request.items = {{"bitfit-sst2", "a gripping, beautifully made film", std::nullopt}};
  EXPECT_EQ(engine->predict(request)[0].scores.size(), 2u);
}

TEST(ServeEngine, RefusesWhatItCannotAnswer) {
  EngineOptions options;
  options.max_client_batch_size = 2;
  auto engine = make_engine(options);
  engine->load_task("sst2", served_deltas_dir() / "bitfit-sst2");
  engine->load_task("rte", served_deltas_dir() / "lora-rte");
  auto submit = [&](std::vector<PredictItem> items) {
    PredictRequest r;
    r.items = std::move(items);
    return engine->predict(r);
  };
  EXPECT_EQ(error_kind([&] { submit({}); }), ServeError::Kind::kValidation);
  EXPECT_EQ(error_kind([&] { submit({{"nope", "x", {}}}); }), ServeError::Kind::kNotFound);
  EXPECT_EQ(error_kind([&] {
              submit({{"sst2", "a", {}}, {"sst2", "b", {}}, {"sst2", "c", {}}});
            }),
            ServeError::Kind::kValidation);
  // RTE reads pairs; SST-2 single texts.
  EXPECT_EQ(error_kind([&] { submit({{"rte", "one text", {}}}); }), ServeError::Kind::kValidation);
  EXPECT_EQ(error_kind([&] {
              submit({{"sst2", "a", std::string("b")}});
            }),
            ServeError::Kind::kValidation);
  // Two tasks loaded: an input must name its task.
  EXPECT_EQ(error_kind([&] { submit({{"", "x", {}}}); }), ServeError::Kind::kValidation);
  // Longer than the delta's max length (48): refused unless truncation is asked for.
  std::string long_text;
  for (int i = 0; i < 80; ++i) long_text += "word ";
  try {
    submit({{"sst2", long_text, {}}});
    ADD_FAILURE() << "no error for an over-long input";
  } catch (const ServeError& e) {
    EXPECT_EQ(e.kind(), ServeError::Kind::kValidation);
    EXPECT_NE(std::string(e.what()).find("max length 48"), std::string::npos) << e.what();
  }
  PredictRequest truncated;
  truncated.items = {{"sst2", long_text, {}}};
  truncated.truncate = true;
  EXPECT_EQ(engine->predict(truncated).size(), 1u);
  // Invalid UTF-8 is a validation error, not a crash.
  EXPECT_EQ(error_kind([&] {
              submit({{"sst2", std::string("bad \xff\xfe text"), {}}});
            }),
            ServeError::Kind::kValidation);
}

TEST(ServeEngine, LoadingRefusesForeignAndBrokenDeltas) {
  auto engine = make_engine();
  test::ScratchDir dir;
  const fs::path foreign = dir.path() / "foreign";
  fs::copy(served_deltas_dir() / "bitfit-sst2", foreign);
  auto meta = nlohmann::json::parse(std::ifstream(foreign / "delta.json"));
  meta["base_model"]["checksum"] = std::string(64, '0');
  std::ofstream(foreign / "delta.json") << meta.dump();
  try {
    engine->load_task("foreign", foreign);
    ADD_FAILURE() << "a delta of another base was loaded";
  } catch (const ServeError& e) {
    EXPECT_EQ(e.kind(), ServeError::Kind::kValidation);
    EXPECT_NE(std::string(e.what()).find("made on base"), std::string::npos) << e.what();
  }
  EXPECT_EQ(error_kind([&] { engine->load_task("missing", dir.path() / "none"); }),
            ServeError::Kind::kValidation);
  engine->load_task("sst2", served_deltas_dir() / "bitfit-sst2");
  EXPECT_EQ(error_kind([&] { engine->load_task("sst2", served_deltas_dir() / "bitfit-sst2"); }),
            ServeError::Kind::kValidation);
  EXPECT_EQ(error_kind([&] { engine->load_task("a/b", served_deltas_dir() / "bitfit-sst2"); }),
            ServeError::Kind::kValidation);
  EXPECT_EQ(engine->tasks().size(), 1u);
  // A BitFit task holds exactly its delta's bytes: no copy of base tensors.
  EXPECT_EQ(engine->task("sst2")->resident_bytes, engine->task("sst2")->delta_bytes);
}

TEST(ServeEngine, QueueIsBoundedCancelledWorkIsDroppedAndShutdownRefuses) {
  EngineOptions options;
  options.queue_capacity = 3;
  options.max_wait = std::chrono::milliseconds(400);
  options.max_batch_tokens = 1 << 20;
  auto engine = make_engine(options);
  engine->load_task("sst2", served_deltas_dir() / "bitfit-sst2");
  PredictRequest two;
  two.items = {{"sst2", "fine", {}}, {"sst2", "awful", {}}};
  auto first = engine->submit(two);
  EXPECT_EQ(error_kind([&] { engine->submit(two); }), ServeError::Kind::kOverloaded);
  PredictRequest cancelled;
  cancelled.items = {{"sst2", "never run", {}}};
  auto dropped = engine->submit(cancelled);
  *cancelled.cancelled = true;
  EXPECT_EQ(first.get().size(), 2u);
  EXPECT_EQ(error_kind([&] { dropped.get(); }), ServeError::Kind::kCancelled);
  EXPECT_EQ(engine->metrics().value("deltatune_items_total", {{"task", "sst2"}}), 2);
  engine->shutdown();
  EXPECT_EQ(error_kind([&] { engine->submit(two); }), ServeError::Kind::kUnhealthy);
}

TEST(ServeEngine, UnloadingKeepsAcceptedRequestsAndLoadingJoinsTheNextBatch) {
  EngineOptions options;
  options.max_wait = std::chrono::milliseconds(300);
  auto engine = make_engine(options);
  engine->load_task("a", served_deltas_dir() / "bitfit-sst2");
  PredictRequest request;
  request.items = {{"a", "a lovely film", {}}};
  auto accepted = engine->submit(request);
  EXPECT_TRUE(engine->unload_task("a"));
  EXPECT_FALSE(engine->unload_task("a"));
  EXPECT_EQ(accepted.get().at(0).task, "a");  // answered by the task it was accepted for
  EXPECT_EQ(error_kind([&] { engine->predict(request); }), ServeError::Kind::kNotFound);
  engine->load_task("a", served_deltas_dir() / "prompt-sst2");
  EXPECT_EQ(engine->predict(request).at(0).scores.size(), 2u);
}

}  // namespace
}  // namespace deltatune::serve

namespace deltatune::serve {
namespace {

// The padded tokens plus overhead of a split, as length_groups minimises it.
size_t split_cost(const std::vector<std::vector<size_t>>& groups,
                  const std::vector<size_t>& lengths, size_t overhead) {
  size_t cost = 0;
  for (const auto& g : groups) {
    size_t longest = 0;
    for (size_t i : g) longest = std::max(longest, lengths[i]);
    cost += g.size() * longest + overhead;
  }
  return cost;
}

TEST(LengthGroups, CoverEveryRowOnceAndSplitOnlyWhenPaddingCostsMore) {
  const std::vector<size_t> lengths = {12, 60, 11, 58, 13, 61, 12, 59};
  // Two clusters: a pass per cluster saves 4 * ~47 padded tokens.
  auto groups = length_groups(lengths, 64);
  ASSERT_EQ(groups.size(), 2u);
  std::vector<size_t> seen;
  for (const auto& g : groups) seen.insert(seen.end(), g.begin(), g.end());
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<size_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(split_cost(groups, lengths, 64), 4 * 13 + 4 * 61 + 2 * 64u);
  // A pass costing more than the padding it saves: one pass.
  EXPECT_EQ(length_groups(lengths, 1000).size(), 1u);
  // Exact: no split of the sorted rows into contiguous groups is cheaper
  // (all 2^(n-1) of them for n = 8).
  const std::vector<size_t> mixed = {5, 17, 9, 33, 21, 8, 40, 12};
  std::vector<size_t> order(mixed.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return mixed[a] < mixed[b]; });
  size_t best = SIZE_MAX;
  for (unsigned cuts = 0; cuts < (1u << (mixed.size() - 1)); ++cuts) {
    std::vector<std::vector<size_t>> split(1);
    for (size_t k = 0; k < order.size(); ++k) {
      split.back().push_back(order[k]);
      if (k + 1 < order.size() && (cuts >> k & 1u)) split.emplace_back();
    }
    best = std::min(best, split_cost(split, mixed, 24));
  }
  EXPECT_EQ(split_cost(length_groups(mixed, 24), mixed, 24), best);
  EXPECT_TRUE(length_groups({}, 10).empty());
}

}  // namespace
}  // namespace deltatune::serve
