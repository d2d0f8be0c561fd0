#include "onednn_matmul.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>

#ifdef DELTATUNE_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace deltatune::model::onednn {

View view_of(const at::Tensor& tensor, std::vector<int64_t> dims, std::vector<int64_t> strides) {
  View view;
  view.bf16 = tensor.scalar_type() == at::kBFloat16;
  view.data = view.bf16 ? tensor.data_ptr() : tensor.data_ptr<float>();
  view.dims = dims.empty() ? tensor.sizes().vec() : std::move(dims);
  view.strides = strides.empty() ? tensor.strides().vec() : std::move(strides);
  return view;
}

bool switched_on(const char* variable) {
  const char* value = std::getenv(variable);
  return value == nullptr || std::strcmp(value, "0") != 0;
}

#ifdef DELTATUNE_HAVE_ONEDNN

namespace {

using dnnl::memory;

// oneDNN's own primitive cache keeps 1,024 primitives (with their JIT code)
// by default; under primitive_for's it only saves rebuilding what that one
// evicted. Measured in the server soak (docs/RELIABILITY.md): at 1,024 a
// server's resident memory kept growing for minutes, a primitive per new
// batch shape; at 64 it is flat with the same throughput. A user's
// DNNL_PRIMITIVE_CACHE_CAPACITY wins.
constexpr int kOneDnnCacheCapacity = 64;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine = [] {
    if (std::getenv("DNNL_PRIMITIVE_CACHE_CAPACITY") == nullptr)
      dnnl::set_primitive_cache_capacity(kOneDnnCacheCapacity);
    return dnnl::engine(dnnl::engine::kind::cpu, 0);
  }();
  return engine;
}

memory::data_type type_of(const View& v) {
  return v.bf16 ? memory::data_type::bf16 : memory::data_type::f32;
}

memory::desc describe(const View& v) {
  return memory::desc(memory::dims(v.dims.begin(), v.dims.end()), type_of(v),
                      memory::dims(v.strides.begin(), v.strides.end()));
}

// The bias as oneDNN broadcasts it: [1, .., 1, N], contiguous.
memory::desc bias_desc(const View& c) {
  const int64_t n = c.dims.back();
  memory::dims dims(c.dims.size(), 1), strides(c.dims.size(), n);
  dims.back() = n;
  strides.back() = 1;
  return memory::desc(dims, memory::data_type::f32, strides);
}

bool accumulates(const EpilogueSpec& e) { return e.kind == Epilogue::kAccumulate || e.onto_output; }

dnnl::post_ops post_ops_for(const EpilogueSpec& e) {
  dnnl::post_ops ops;
  auto eltwise = [&](dnnl::algorithm algorithm, float alpha) {
#if DNNL_VERSION_MAJOR >= 3
    ops.append_eltwise(algorithm, alpha, 0.f);
#else
    ops.append_eltwise(1.f, algorithm, alpha, 0.f);
#endif
  };
  if (accumulates(e)) ops.append_sum(1.f);
  switch (e.kind) {
    case Epilogue::kNone:
    case Epilogue::kAccumulate:
      break;
    case Epilogue::kGelu:
      eltwise(dnnl::algorithm::eltwise_gelu_erf, 0.f);
      break;
    case Epilogue::kGeluTanh:
      eltwise(dnnl::algorithm::eltwise_gelu_tanh, 0.f);
      break;
    case Epilogue::kRelu:
      eltwise(dnnl::algorithm::eltwise_relu, 0.f);
      break;
    case Epilogue::kSilu:
      eltwise(dnnl::algorithm::eltwise_swish, 1.f);
      break;
    case Epilogue::kScaleAdd:
      eltwise(dnnl::algorithm::eltwise_linear, e.scale);
      ops.append_binary(dnnl::algorithm::binary_add, describe(*e.addend));
      break;
  }
  return ops;
}

// The binary post-ops' operands with their positions in post_ops_for's chain.
std::vector<std::pair<int, const View*>> binary_operands(const EpilogueSpec& e) {
  std::vector<std::pair<int, const View*>> operands;
  const int position = accumulates(e) ? 1 : 0;
  if (e.kind == Epilogue::kScaleAdd) operands.emplace_back(position + 1, e.addend);
  return operands;
}

// Everything a primitive depends on: dims, strides, bias, epilogue.
using Key = std::vector<int64_t>;

Key key_of(const View& a, const View& b, bool bias, const View& c, const EpilogueSpec& e,
           bool packed) {
  Key key{static_cast<int64_t>(e.kind), static_cast<int64_t>(accumulates(e)),
          static_cast<int64_t>(bias), static_cast<int64_t>(packed)};
  auto add = [&](const View& v) {
    key.push_back(static_cast<int64_t>(v.bf16));
    key.push_back(static_cast<int64_t>(v.dims.size()));
    key.insert(key.end(), v.dims.begin(), v.dims.end());
    key.insert(key.end(), v.strides.begin(), v.strides.end());
  };
  add(a), add(b), add(c);
  for (const auto& [position, operand] : binary_operands(e)) {
    key.push_back(position);
    add(*operand);
  }
  if (e.kind == Epilogue::kScaleAdd) {
    float scale = e.scale;
    int32_t bits;
    static_assert(sizeof bits == sizeof scale);
    std::memcpy(&bits, &scale, sizeof bits);
    key.push_back(bits);
  }
  return key;
}

struct Primitive {
  dnnl::matmul matmul;
  memory::desc weights;  // as the primitive reads them (blocked when packed)
};

// Building a primitive descriptor costs tens of microseconds (implementation
// dispatch), as much as a small product: recent calls' primitives are kept,
// least recently used first out. A server sees a new shape for most batches
// (rows x longest row), so the set is bounded by count, not by what was seen;
// each primitive holds ~25-50 KB (descriptor and JIT kernels). oneDNN's own
// primitive cache (DNNL_PRIMITIVE_CACHE_CAPACITY, default 1024) sits under
// this one and is bounded the same way.
// `packed`: the weights' layout is left to oneDNN (format_tag::any).
size_t primitive_capacity() {
  static const size_t capacity = [] {
    const char* text = std::getenv("DELTATUNE_ONEDNN_PRIMITIVES");
    return text ? static_cast<size_t>(std::max(1L, std::strtol(text, nullptr, 10))) : size_t{256};
  }();
  return capacity;
}

std::shared_ptr<Primitive> primitive_for(const View& a, const View& b, bool bias, const View& c,
                                         const EpilogueSpec& e, bool packed) {
  static std::mutex mutex;
  using Recent = std::list<std::pair<Key, std::shared_ptr<Primitive>>>;
  static Recent recent;  // most recently used first
  static std::map<Key, Recent::iterator> cache;
  Key key = key_of(a, b, bias, c, e, packed);
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto found = cache.find(key); found != cache.end()) {
      recent.splice(recent.begin(), recent, found->second);
      return found->second->second;
    }
  }
  memory::desc bias_md = bias ? bias_desc(c) : memory::desc();
  memory::desc weights_md = packed ? memory::desc(memory::dims(b.dims.begin(), b.dims.end()),
                                                  type_of(b), memory::format_tag::any)
                                   : describe(b);
  dnnl::primitive_attr attr;
  attr.set_post_ops(post_ops_for(e));
  auto& engine = cpu_engine();
#if DNNL_VERSION_MAJOR >= 3
  dnnl::matmul::primitive_desc pd(engine, describe(a), weights_md, bias_md, describe(c), attr);
#else
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(describe(a), weights_md, bias_md, describe(c)),
                                  attr, engine);
#endif
  auto primitive = std::make_shared<Primitive>(Primitive{dnnl::matmul(pd), pd.weights_desc()});
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.count(key) == 0) {  // another thread may have built it meanwhile
    recent.emplace_front(key, primitive);
    cache.emplace(std::move(key), recent.begin());
    while (cache.size() > primitive_capacity()) {
      cache.erase(recent.back().first);
      recent.pop_back();
    }
  }
  return primitive;
}

bool execute(const Primitive& primitive, const View& a, void* weights, const float* bias,
             const View& c, const EpilogueSpec& epilogue) {
  auto& engine = cpu_engine();
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, memory(describe(a), engine, a.data)},
      {DNNL_ARG_WEIGHTS, memory(primitive.weights, engine, weights)},
      {DNNL_ARG_DST, memory(describe(c), engine, c.data)}};
  if (bias) args.emplace(DNNL_ARG_BIAS, memory(bias_desc(c), engine, const_cast<float*>(bias)));
  for (const auto& [position, operand] : binary_operands(epilogue))
    args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(position) | DNNL_ARG_SRC_1,
                 memory(describe(*operand), engine, operand->data));
  dnnl::stream stream(engine);
  primitive.matmul.execute(stream, args);
  stream.wait();
  return true;
}

// A weight reordered into a primitive's layout, valid while the source tensor
// is alive at the same version.
struct PackedWeight {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> source;
  int64_t version;
  memory::desc layout;
  at::Tensor buffer;  // layout.get_size() bytes
};

std::mutex& packed_mutex() {
  static std::mutex m;
  return m;
}
std::map<const void*, std::vector<PackedWeight>>& packed_weights() {
  static std::map<const void*, std::vector<PackedWeight>> cache;
  return cache;
}

// The packed copy of `weight` in `layout`, made on first use. Returned by
// reference count: a concurrent repack never frees a buffer in use.
at::Tensor packed_for(const at::Tensor& weight, const View& plain, const memory::desc& layout) {
  std::lock_guard<std::mutex> lock(packed_mutex());
  auto& cache = packed_weights();
  if (auto found = cache.find(weight.unsafeGetTensorImpl()); found != cache.end()) {
    auto& list = found->second;
    for (auto it = list.begin(); it != list.end(); ++it) {
      if (it->layout != layout) continue;
      if (it->source.lock().get() == weight.unsafeGetTensorImpl() &&
          it->version == weight._version())
        return it->buffer;
      list.erase(it);  // changed since it was packed
      break;
    }
  }
  // A miss: drop the copies of freed weights before making a new one.
  for (auto it = cache.begin(); it != cache.end();) {
    auto& list = it->second;
    list.erase(std::remove_if(list.begin(), list.end(),
                              [](const PackedWeight& p) { return p.source.expired(); }),
               list.end());
    it = list.empty() ? cache.erase(it) : ++it;
  }
  auto& list = cache[weight.unsafeGetTensorImpl()];
  PackedWeight packed{
      c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(weight.getIntrusivePtr()),
      weight._version(), layout,
      at::empty({static_cast<int64_t>(layout.get_size())}, weight.options().dtype(at::kByte))};
  auto& engine = cpu_engine();
  memory source(describe(plain), engine, plain.data);
  memory target(layout, engine, packed.buffer.data_ptr());
  dnnl::stream stream(engine);
  dnnl::reorder(source, target).execute(stream, source, target);
  stream.wait();
  list.push_back(std::move(packed));
  return list.back().buffer;
}

}  // namespace

void drop_packed_copies_of_changing_weights() {
  std::lock_guard<std::mutex> lock(packed_mutex());
  auto& cache = packed_weights();
  for (auto it = cache.begin(); it != cache.end();) {
    auto& list = it->second;
    list.erase(std::remove_if(list.begin(), list.end(),
                              [](const PackedWeight& p) {
                                auto source = p.source.lock();
                                return !source ||
                                       source->version_counter().current_version() != p.version ||
                                       source->requires_grad();
                              }),
               list.end());
    it = list.empty() ? cache.erase(it) : ++it;
  }
}

bool available() { return true; }

bool matmul(const View& a, const View& b, const float* bias, const View& c,
            const EpilogueSpec& epilogue) {
  std::shared_ptr<Primitive> primitive;
  try {
    primitive = primitive_for(a, b, bias != nullptr, c, epilogue, /*packed=*/false);
  } catch (const dnnl::error&) {
    return false;  // no implementation for these layouts
  }
  return execute(*primitive, a, b.data, bias, c, epilogue);
}

at::Tensor linear_frozen(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         EpilogueSpec epilogue, const at::Tensor& residual,
                         const at::Tensor& row_bias) {
  const int64_t n = weight.size(0), k = weight.size(1);
  auto sizes = x.sizes().vec();
  sizes.back() = n;
  // The product's type is the weight's; with a residual the result's is what
  // adding the residual and the rows' biases to it promotes to, as in the
  // plain sum. Without one it stays the product's, as a shared bias in the
  // epilogue leaves it (bf16 under autocast: the next product's input type,
  // with no fp32 copy to write and cast back), each row's bias rounded to it
  // before the sum: one rounding more, of a bias-sized term.
  const at::ScalarType product = weight.scalar_type();
  at::ScalarType result =
      residual.defined() ? at::promote_types(product, residual.scalar_type()) : product;
  if (row_bias.defined() && residual.defined())
    result = at::promote_types(result, row_bias.scalar_type());
  at::Tensor out;
  if (row_bias.defined()) {  // [B, L, N] filled with each row's bias (+ the residual)
    std::vector<int64_t> shape(sizes.size(), 1);
    shape.front() = row_bias.size(0);
    shape.back() = n;
    at::Tensor rows = row_bias.reshape(shape);
    out = residual.defined() ? at::add(residual, rows).to(result)
                             : rows.to(result).expand(sizes).clone(at::MemoryFormat::Contiguous);
    out = out.view({-1, n});
    epilogue.onto_output = true;
  } else {
    out = residual.defined() ? residual.reshape({-1, n}).clone(at::MemoryFormat::Contiguous)
                             : at::empty({x.numel() / k, n}, x.options().dtype(result));
  }
  if (out.numel() == 0) return out.view(sizes);
  at::Tensor x2d = x.reshape({-1, k}).to(product).contiguous();
  at::Tensor w = weight.contiguous();
  at::Tensor b = bias.defined() ? bias.to(at::kFloat).contiguous() : bias;
  const float* bias_data = b.defined() ? b.data_ptr<float>() : nullptr;
  // One 2-D product [M, K] x [K, N] over every token of the batch; W^T is
  // read through strides (or from its packed copy). 2-D, not [1, M, K]: with
  // a batch dimension oneDNN 2.6 picked slower kernels (on an AMX Xeon, BERT-
  // base size batch 32 length 64: 20.5 -> 31 seq/s fp32, 104 -> 122 bf16).
  const int64_t m = x2d.size(0);
  const View a = view_of(x2d, {m, k}, {k, 1});
  const View c = view_of(out, {m, n}, {n, 1});
  const View plain = view_of(w, {k, n}, {1, k});
  std::shared_ptr<Primitive> primitive;
  try {
    primitive = primitive_for(a, plain, bias_data != nullptr, c, epilogue, /*packed=*/true);
  } catch (const dnnl::error&) {
    return {};
  }
  at::Tensor packed =
      primitive->weights == describe(plain) ? w : packed_for(weight, plain, primitive->weights);
  execute(*primitive, a, packed.data_ptr(), bias_data, c, epilogue);
  return out.view(sizes);
}

#else  // no oneDNN in this build

bool available() { return false; }

void drop_packed_copies_of_changing_weights() {}

bool matmul(const View&, const View&, const float*, const View&, const EpilogueSpec&) {
  return false;
}

at::Tensor linear_frozen(const at::Tensor&, const at::Tensor&, const at::Tensor&, EpilogueSpec,
                         const at::Tensor&, const at::Tensor&) {
  return {};
}

#endif

}  // namespace deltatune::model::onednn
