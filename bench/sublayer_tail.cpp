// A training sub-layer's tail, LayerNorm(dropout(P) + R), forward and
// backward: model::dropout_residual_layer_norm's one pass against autograd's
// composition (model::dropout, the sum, at::layer_norm), the two paths the
// encoder can take in training.
//
//   build/bench/sublayer_tail --benchmark_min_time=1
//
// Arguments: tokens, width, 0 = fp32 / 1 = a bf16 projection onto an fp32
// residual (what autocast training runs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include "deltatune/model/dropout.h"
#include "deltatune/model/fused_kernels.h"

namespace {

constexpr double kDropout = 0.1;

struct Operands {
  at::Tensor projected, residual, gain, shift, grad;
  Operands(int64_t tokens, int64_t width, bool bf16_projection) {
    at::manual_seed(0);
    projected = at::randn({tokens, width});
    if (bf16_projection) projected = projected.to(at::kBFloat16);
    projected.requires_grad_(true);
    residual = at::randn({tokens, width}).requires_grad_(true);
    gain = (1 + 0.1 * at::randn({width})).requires_grad_(true);
    shift = (0.1 * at::randn({width})).requires_grad_(true);
    grad = at::randn({tokens, width});
  }
  void clear() {
    for (at::Tensor* t : {&projected, &residual, &gain, &shift}) t->mutable_grad() = at::Tensor();
  }
};

void run(benchmark::State& state, bool fused) {
  at::set_num_threads(2);
  Operands x(state.range(0), state.range(1), state.range(2) != 0);
  for (auto _ : state) {
    at::Tensor y;
    if (fused)
      y = deltatune::model::dropout_residual_layer_norm(x.projected, x.residual, kDropout, x.gain,
                                                        x.shift, 1e-12);
    else
      y = at::layer_norm(deltatune::model::dropout(x.projected, kDropout, true) + x.residual,
                         {x.projected.size(-1)}, x.gain, x.shift, 1e-12);
    y.backward(x.grad);
    x.clear();
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void Fused(benchmark::State& state) { run(state, true); }
void Composition(benchmark::State& state) { run(state, false); }

void Shapes(benchmark::internal::Benchmark* b) {
  for (int64_t bf16 : {0, 1})
    for (int64_t width : {384, 768}) b->Args({16 * 128, width, bf16});
  b->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(Composition)->Apply(Shapes);
BENCHMARK(Fused)->Apply(Shapes);
BENCHMARK_MAIN();
