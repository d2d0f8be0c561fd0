// Encoder forward throughput (sequences/s) and achieved GFLOP/s, plus the
// machine's GEMM peak for reference. bench/run_forward.sh runs this next to
// the Hugging Face reference (bench/hf_forward.py) and writes the ratios.
//
//   encoder_forward --benchmark_filter=Forward --benchmark_format=json
//
// Environment: DELTATUNE_THREADS (intra-op threads, default every core),
// DELTATUNE_MODEL_DIR or DELTATUNE_HOME (MiniLM weights; random ones otherwise).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "deltatune/model/device.h"
#include "deltatune/model/linear_kernel.h"
#include "deltatune/model/pretrained.h"

namespace {
using namespace deltatune::model;
namespace fs = std::filesystem;

enum ModelKind : int64_t { kMiniLm = 0, kBertBase = 1 };

fs::path minilm_dir() {
  if (const char* dir = std::getenv("DELTATUNE_MODEL_DIR")) return dir;
  const char* home = std::getenv("DELTATUNE_HOME");
  fs::path root = home ? fs::path(home) : fs::path(std::getenv("HOME")) / ".cache" / "deltatune";
  return root / "models" / "all-MiniLM-L6-v2";
}

EncoderConfig bert_base_config() {
  nlohmann::json j = {
      {"model_type", "bert"},          {"vocab_size", 30522},       {"hidden_size", 768},
      {"num_hidden_layers", 12},       {"num_attention_heads", 12}, {"intermediate_size", 3072},
      {"max_position_embeddings", 512}};
  return EncoderConfig::from_json(j, "bert-base (random)");
}

EncoderModel make_model(int64_t kind) {
  if (kind == kMiniLm) {
    if (fs::exists(minilm_dir() / "model.safetensors")) return load_encoder(minilm_dir()).model;
    nlohmann::json j = {{"model_type", "bert"},      {"vocab_size", 30522},
                        {"hidden_size", 384},        {"num_hidden_layers", 6},
                        {"num_attention_heads", 12}, {"intermediate_size", 1536}};
    return EncoderModel(EncoderConfig::from_json(j, "minilm (random)"), true);
  }
  at::manual_seed(0);
  return EncoderModel(bert_base_config(), true);
}

// Multiply-adds counted twice: QKV + attention output, FFN, and the two
// attention batched products; softmax / LayerNorm / GELU are not counted.
double forward_flops(const EncoderConfig& c, int64_t batch, int64_t length) {
  const double tokens = static_cast<double>(batch) * length;
  const double h = c.hidden_size, inter = c.intermediate_size;
  const double per_layer = 2 * tokens * (4 * h * h + 2 * h * inter) + 4 * tokens * length * h;
  return per_layer * c.num_hidden_layers;
}

// Debian's LibTorch starts with one intra-op thread: always set the count.
void configure_threads() {
  const char* threads = std::getenv("DELTATUNE_THREADS");
  at::set_num_threads(threads
                          ? std::atoi(threads)
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

// Args: model kind, batch, sequence length, bf16: 0 fp32; 1 bf16 as eval,
// predict and the server run it (CPU autocast to bf16, as HF's bf16 side);
// 2 the whole model cast to bf16 (this table's "bf16" before 2026-12-05).
void BM_Forward(benchmark::State& state) {
  configure_threads();
  const int64_t batch = state.range(1), length = state.range(2);
  const int64_t bf16 = state.range(3);
  EncoderModel model = make_model(state.range(0));
  model->eval();
  if (bf16 == 2) model->to(at::kBFloat16);
  AutocastScope autocast(at::Device(at::kCPU),
                         bf16 == 1 ? Precision::kBFloat16 : Precision::kFloat32);
  at::manual_seed(0);
  EncoderInput in;
  in.input_ids = at::randint(1000, model->config().vocab_size, {batch, length}, at::kLong);
  in.attention_mask = at::ones({batch, length}, at::kLong);
  in.token_type_ids = at::zeros({batch, length}, at::kLong);
  at::NoGradGuard no_grad;
  for (int i = 0; i < 2; ++i) model->forward(in);  // warm-up: oneDNN primitive caches
  for (auto _ : state) {
    auto out = model->forward(in);
    benchmark::DoNotOptimize(out.last_hidden_state.data_ptr());
  }
  const double flops = forward_flops(model->config(), batch, length);
  state.counters["seq_per_s"] =
      benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP_per_s"] =
      benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = at::get_num_threads();
  state.SetLabel(std::string(state.range(0) == kMiniLm ? "minilm" : "bert-base") +
                 (bf16 == 1   ? " bf16"
                  : bf16 == 2 ? " bf16-weights"
                              : " fp32"));
}
BENCHMARK(BM_Forward)
    ->ArgNames({"model", "batch", "len", "bf16"})
    ->ArgsProduct({{kMiniLm, kBertBase}, {1, 32}, {16, 64, 128}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(3.0);

// Square GEMM: the machine's attainable matmul rate, the ceiling for the above.
// kernel 0: at::matmul fp32 (LibTorch's BLAS), 1: at::matmul bf16 (oneDNN),
// 2: deltatune's fp32 linear (oneDNN when built with it).
void BM_Gemm(benchmark::State& state) {
  configure_threads();
  const int64_t n = state.range(0), kernel = state.range(1);
  const auto dtype = kernel == 1 ? at::kBFloat16 : at::kFloat;
  at::Tensor a = at::randn({n, n}).to(dtype), b = at::randn({n, n}).to(dtype);
  auto product = [&] {
    return kernel == 2 ? deltatune::model::linear(a, b, {}) : at::matmul(a, b);
  };
  for (int i = 0; i < 2; ++i) product();
  for (auto _ : state) benchmark::DoNotOptimize(product().data_ptr());
  state.counters["GFLOP_per_s"] =
      benchmark::Counter(2.0 * n * n * n / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  static const char* kLabels[] = {"fp32 at::matmul", "bf16 at::matmul", "fp32 deltatune linear"};
  state.SetLabel(kLabels[kernel]);
}
BENCHMARK(BM_Gemm)
    ->ArgNames({"n", "kernel"})
    ->ArgsProduct({{1024, 2048}, {0, 1, 2}})
    ->UseRealTime()
    ->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
