#include "deltatune/model/dropout.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/MT19937RNGEngine.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <mutex>

#include "deltatune/model/vector_clones.h"

namespace deltatune::model {

namespace {

at::CPUGeneratorImpl* default_generator() {
  return at::get_generator_or_default<at::CPUGeneratorImpl>(c10::nullopt,
                                                            at::detail::getDefaultCPUGenerator());
}

// at::mt19937's state update (MT19937's twist of all 624 words), as its
// next_state() computes it (AVX2 where the CPU has it: integer work, the
// same words either way).
DELTATUNE_INTEGER_CLONES void twist(std::array<uint32_t, at::MERSENNE_STATE_N>& state) {
  constexpr int n = at::MERSENNE_STATE_N, m = at::MERSENNE_STATE_M;
  auto mixed = [](uint32_t u, uint32_t v) {
    return ((((u & at::UMASK) | (v & at::LMASK)) >> 1) ^ ((v & 1) ? at::MATRIX_A : 0));
  };
  for (int i = 0; i < n - m; ++i) state[i] = state[i + m] ^ mixed(state[i], state[i + 1]);
  for (int i = n - m; i < n - 1; ++i) state[i] = state[i + m - n] ^ mixed(state[i], state[i + 1]);
  state[n - 1] = state[m - 1] ^ mixed(state[n - 1], state[0]);
}

// MT19937's tempering of `count` state words (AVX2 where the CPU has it).
DELTATUNE_INTEGER_CLONES void temper(const uint32_t* state, int64_t count, uint32_t* out) {
  for (int64_t i = 0; i < count; ++i) {
    uint32_t y = state[i];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= (y >> 18);
    out[i] = y;
  }
}

// The next `count` outputs of `engine` (its operator() `count` times), into
// `out`: whole runs of the state tempered at once rather than word by word.
void next_words(at::mt19937_data_pod& engine, uint32_t* out, int64_t count) {
  while (count > 0) {
    // operator() twists when its decremented `left_` reaches 0, then reads
    // state_[0]; until then it reads state_[next_++].
    if (engine.left_ == 1) {
      twist(engine.state_);
      engine.left_ = at::MERSENNE_STATE_N + 1;
      engine.next_ = 0;
    }
    const int64_t take = std::min<int64_t>(count, engine.left_ - 1);
    temper(engine.state_.data() + engine.next_, take, out);
    engine.next_ += static_cast<uint32_t>(take);
    engine.left_ -= static_cast<int>(take);
    out += take;
    count -= take;
  }
}

// Which of `entries` draws (two words each, the first the high one) fall
// below `threshold` in their low 53 bits. AVX2's 64-bit compares where the
// CPU has them (the default build targets SSE2, which has none).
DELTATUNE_INTEGER_CLONES void keep_below(const uint32_t* words, int64_t entries, uint64_t threshold,
                                         bool* out) {
  for (int64_t i = 0; i < entries; ++i) {
    const uint64_t low53 =
        (static_cast<uint64_t>(words[2 * i] & 0x1fffffu) << 32) | words[2 * i + 1];
    out[i] = low53 < threshold;
  }
}

// The generator's next `words_per_value` n words, in runs of up to 4096
// words handed to consume(words, first value, values) in order: the words
// operator() would return, drawn from a copy of the engine under the
// generator's lock, which then takes the copy's state.
template <typename Consume>
void draw_words(at::CPUGeneratorImpl* generator, int64_t words_per_value, int64_t n,
                Consume consume) {
  constexpr int64_t kBlockWords = 4096;
  const int64_t block = kBlockWords / words_per_value;
  std::array<uint32_t, kBlockWords> words;
  std::lock_guard<std::mutex> lock(generator->mutex_);
  at::mt19937 engine = generator->engine();
  at::mt19937_data_pod state = engine.data();
  for (int64_t begin = 0; begin < n; begin += block) {
    const int64_t count = std::min(block, n - begin);
    next_words(state, words.data(), words_per_value * count);
    consume(words.data(), begin, count);
  }
  engine.set_data(state);
  generator->set_engine(engine);
}

// ATen's bernoulli_(p) on a CPU tensor, entry by entry: random64() (two
// 32-bit mt19937 draws, the first the high word) through
// uniform_real_distribution<double> (its low 53 bits x / 2^53), kept when
// x / 2^53 < p. Both sides are exact doubles (x < 2^53; the division by a
// power of two only moves the exponent), so that is x < p 2^53 as real
// numbers, and for an integer x, x < ceil(p 2^53): one integer compare.
void draw_keep(at::CPUGeneratorImpl* generator, double keep_probability, bool* out, int64_t n) {
  const uint64_t threshold =
      static_cast<uint64_t>(std::ceil(std::ldexp(std::clamp(keep_probability, 0.0, 1.0), 53)));
  draw_words(generator, 2, n, [&](const uint32_t* words, int64_t begin, int64_t count) {
    keep_below(words, count, threshold, out + begin);
  });
}

// ATen's uniform_(from, to) on fp32 values (at::uniform_real_distribution<float>):
// one 32-bit word per value, x = (word & (2^24 - 1)) 2^-24 (exact), then
// x (to - from) + from in float: two roundings in ATen's DEFAULT build, one
// multiply-add where its AVX2 / AVX-512 builds contracted it. Which of the two
// this LibTorch computes is found once (uniform_variant).
void uniform_from_words(const uint32_t* words, int64_t n, float from, float range, float* out) {
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<float>(words[i] & 0xFFFFFFu) * 0x1p-24f * range + from;
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
bool cpu_has_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#else
bool cpu_has_fma() { return false; }
#endif

DELTATUNE_TARGET_FMA void uniform_from_words_fma(const uint32_t* words, int64_t n, float from,
                                                 float range, float* out) {
  for (int64_t i = 0; i < n; ++i)
    out[i] = std::fma(static_cast<float>(words[i] & 0xFFFFFFu) * 0x1p-24f, range, from);
}

enum class UniformVariant { kAten, kTwoRoundings, kMultiplyAdd };

void draw_uniform(at::CPUGeneratorImpl* generator, UniformVariant variant, float from, float to,
                  float* out, int64_t n) {
  const float range = to - from;
  draw_words(generator, 1, n, [&](const uint32_t* words, int64_t begin, int64_t count) {
    if (variant == UniformVariant::kMultiplyAdd)
      uniform_from_words_fma(words, count, from, range, out + begin);
    else
      uniform_from_words(words, count, from, range, out + begin);
  });
}

at::mt19937 engine_of(at::CPUGeneratorImpl* generator) {
  std::lock_guard<std::mutex> lock(generator->mutex_);
  return generator->engine();
}

void set_engine_of(at::CPUGeneratorImpl* generator, const at::mt19937& engine) {
  std::lock_guard<std::mutex> lock(generator->mutex_);
  generator->set_engine(engine);
}

bool same_engine(const at::mt19937& a, const at::mt19937& b) {
  const auto x = a.data(), y = b.data();
  return x.seed_ == y.seed_ && x.left_ == y.left_ && x.seeded_ == y.seeded_ && x.next_ == y.next_ &&
         x.state_ == y.state_;
}

// Whether draw_keep gives this LibTorch's bernoulli_ draws and leaves the
// generator where it does: both drawn from the same state, which is then
// restored, so the check consumes nothing of the run's stream.
bool replica_matches_aten() {
  at::CPUGeneratorImpl* generator = default_generator();
  const at::mt19937 start = engine_of(generator);
  constexpr int64_t kEntries = 4099;  // crosses a 624-word twist several times
  const at::Tensor reference = at::empty({kEntries}, at::kFloat).bernoulli_(0.9).ne(0);
  const at::mt19937 after_reference = engine_of(generator);
  set_engine_of(generator, start);
  at::Tensor mine = at::empty({kEntries}, at::kBool);
  draw_keep(generator, 0.9, mine.data_ptr<bool>(), kEntries);
  const at::mt19937 after_mine = engine_of(generator);
  set_engine_of(generator, start);
  return at::equal(reference, mine) && same_engine(after_reference, after_mine);
}

bool replica_usable() {
  static const bool usable = replica_matches_aten();
  return usable;
}

// Which arithmetic gives this LibTorch's uniform_ values, with the generator
// left where ATen leaves it (kAten: neither, so ATen's own draw is used);
// each candidate drawn from the same state, which is then restored.
UniformVariant find_uniform_variant() {
  at::CPUGeneratorImpl* generator = default_generator();
  const at::mt19937 start = engine_of(generator);
  constexpr int64_t kValues = 9001;  // crosses a 624-word twist many times
  constexpr double kFrom = 1e-6, kTo = 1.0 - 1e-6;
  const at::Tensor reference = at::empty({kValues}, at::kFloat).uniform_(kFrom, kTo);
  const at::mt19937 after_reference = engine_of(generator);
  UniformVariant found = UniformVariant::kAten;
  for (const UniformVariant candidate :
       {UniformVariant::kTwoRoundings, UniformVariant::kMultiplyAdd}) {
    if (candidate == UniformVariant::kMultiplyAdd && !cpu_has_fma()) continue;
    set_engine_of(generator, start);
    at::Tensor mine = at::empty({kValues}, at::kFloat);
    draw_uniform(generator, candidate, static_cast<float>(kFrom), static_cast<float>(kTo),
                 mine.data_ptr<float>(), kValues);
    if (at::equal(reference, mine) && same_engine(after_reference, engine_of(generator))) {
      found = candidate;
      break;
    }
  }
  set_engine_of(generator, start);
  return found;
}

UniformVariant uniform_variant() {
  static const UniformVariant variant = find_uniform_variant();
  return variant;
}

class Dropout : public torch::autograd::Function<Dropout> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, double p) {
    const at::Tensor keep = dropout_keep_mask(x.sizes(), 1 - p);
    ctx->saved_data["keep"] = keep;
    ctx->saved_data["p"] = p;
    return x * dropout_noise(keep, p, x.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor& grad = grads[0];
    const at::Tensor keep = ctx->saved_data["keep"].toTensor();
    const double p = ctx->saved_data["p"].toDouble();
    const at::Tensor noise = dropout_noise(keep, p, grad.scalar_type());
    return {grad * noise, at::Tensor()};  // d(x noise)/dx; p takes no gradient
  }
};

}  // namespace

bool dropout_draws_replicated() { return replica_usable(); }

at::Tensor dropout_keep_mask(c10::IntArrayRef sizes, double keep_probability) {
  // bernoulli_'s own check, made before either draw (NaN fails it too).
  TORCH_CHECK(keep_probability >= 0 && keep_probability <= 1,
              "bernoulli_ expects p to be in [0, 1], but got p=", keep_probability);
  if (!replica_usable()) return at::empty(sizes, at::kFloat).bernoulli_(keep_probability).ne(0);
  at::Tensor keep = at::empty(sizes, at::kBool);
  draw_keep(default_generator(), keep_probability, keep.data_ptr<bool>(), keep.numel());
  return keep;
}

at::Tensor dropout_noise(const at::Tensor& keep, double p, at::ScalarType type) {
  return keep.to(type).div_(1 - p);
}

at::Tensor dropout(const at::Tensor& x, double p, bool train) {
  if (!train || p == 0) return x;
  if (p >= 1 || !x.device().is_cpu() || !at::isFloatingType(x.scalar_type()) || x.numel() == 0)
    return at::dropout(x, p, train);
  return Dropout::apply(x, p);
}

bool uniform_draws_replicated() { return uniform_variant() != UniformVariant::kAten; }

at::Tensor uniform_float(c10::IntArrayRef sizes, double from, double to) {
  // uniform_'s own checks, made before either draw.
  TORCH_CHECK(from <= to, "uniform_ expects to return a [from, to) range, but found from=", from,
              " > to=", to);
  at::Tensor out = at::empty(sizes, at::kFloat);
  const bool representable = std::isfinite(from) && std::isfinite(to) &&
                             std::isfinite(static_cast<float>(to) - static_cast<float>(from));
  if (!representable || !uniform_draws_replicated()) return out.uniform_(from, to);
  draw_uniform(default_generator(), uniform_variant(), static_cast<float>(from),
               static_cast<float>(to), out.data_ptr<float>(), out.numel());
  return out;
}

}  // namespace deltatune::model
