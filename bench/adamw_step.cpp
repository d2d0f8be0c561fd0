// AdamW's update over MiniLM's parameter sizes (22.7M fp32 values, fully
// fine-tuned): the one-pass update against ATen's composition
// (torch.optim.AdamW's kernels), unmasked and with a 0.5% mask (FISH, Diff
// Pruning's sparse update).
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

#include "deltatune/train/optimizer.h"

namespace {

using deltatune::train::AdamW;
using deltatune::train::AdamWOptions;

// MiniLM-L6's tensors: word/position/type embeddings and per layer Q, K, V,
// attention output, FFN in and out, with biases and LayerNorms.
std::vector<std::vector<int64_t>> minilm_shapes() {
  std::vector<std::vector<int64_t>> shapes = {{30522, 384}, {512, 384}, {2, 384}, {384}, {384}};
  for (int layer = 0; layer < 6; ++layer) {
    for (int i = 0; i < 4; ++i) shapes.push_back({384, 384}), shapes.push_back({384});
    shapes.push_back({1536, 384}), shapes.push_back({1536});
    shapes.push_back({384, 1536}), shapes.push_back({384});
    for (int i = 0; i < 4; ++i) shapes.push_back({384});
  }
  return shapes;
}

// MiniLM's parameters, random, on the benchmark's thread count.
std::vector<at::Tensor> minilm_parameters(benchmark::State& state) {
  at::set_num_threads(static_cast<int>(state.range(0)));
  at::manual_seed(0);
  std::vector<at::Tensor> parameters;
  for (const auto& shape : minilm_shapes()) parameters.push_back(at::randn(shape));
  return parameters;
}

// Fresh gradients, outside the timed region.
void fresh_gradients(benchmark::State& state, std::vector<at::Tensor>& parameters) {
  state.PauseTiming();
  for (auto& p : parameters) p.mutable_grad() = at::randn(p.sizes());
  state.ResumeTiming();
}

void run(benchmark::State& state, bool fused, bool masked) {
  std::vector<at::Tensor> parameters = minilm_parameters(state);
  std::vector<std::string> names;
  for (auto& p : parameters) {
    p.requires_grad_(true);
    names.push_back("p" + std::to_string(names.size()));
  }
  AdamWOptions options;
  options.fused = fused;
  AdamW optimizer({{"all", names, parameters, 2e-5, 0.01}}, options);
  int64_t values = 0;
  for (size_t i = 0; i < parameters.size(); ++i) {
    values += parameters[i].numel();
    if (masked) optimizer.set_mask(names[i], at::rand(parameters[i].sizes()) < 0.005);
  }
  for (auto _ : state) {
    fresh_gradients(state, parameters);
    optimizer.step();
  }
  state.counters["values/s"] = benchmark::Counter(static_cast<double>(values),
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

// Gradient clipping over the same gradients (torch's clip_grad_norm_: the
// norm, then a scale of every gradient), what a full fine-tuning step runs
// before the update.
void BM_ClipGradNorm(benchmark::State& state) {
  std::vector<at::Tensor> parameters = minilm_parameters(state);
  for (auto _ : state) {
    fresh_gradients(state, parameters);
    benchmark::DoNotOptimize(deltatune::train::clip_grad_norm(parameters, 1.0));
  }
}
BENCHMARK(BM_ClipGradNorm)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_AdamWComposition(benchmark::State& state) { run(state, false, false); }
void BM_AdamWOnePass(benchmark::State& state) { run(state, true, false); }
void BM_AdamWMaskedComposition(benchmark::State& state) { run(state, false, true); }
void BM_AdamWMaskedOnePass(benchmark::State& state) { run(state, true, true); }

BENCHMARK(BM_AdamWComposition)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AdamWOnePass)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AdamWMaskedComposition)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AdamWMaskedOnePass)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
