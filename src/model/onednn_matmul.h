// oneDNN's fp32 matmul on strided views, with the epilogues the encoder's
// inference kernels fuse into it. Internal to src/model: only this pair of
// files sees oneDNN's headers (the precompiled header stays valid), and a
// build without oneDNN compiles `available()` to false.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace deltatune::model::onednn {

// A plain fp32 or bf16 tensor as oneDNN describes one: dims and strides in
// elements. Up to 4 dims; leading dims are batch dims, broadcast where 1.
struct View {
  void* data = nullptr;
  std::vector<int64_t> dims;
  std::vector<int64_t> strides;
  bool bf16 = false;
};

// The view of an fp32 or bf16 CPU tensor, with `dims`/`strides` taken as
// given when not empty (a transposed or head-split reading of the same buffer).
View view_of(const at::Tensor& tensor, std::vector<int64_t> dims = {},
             std::vector<int64_t> strides = {});

enum class Epilogue {
  kNone,
  kGelu,      // erf GELU (Hendrycks & Gimpel; BERT's "gelu")
  kGeluTanh,  // tanh approximation ("gelu_new")
  kRelu,
  kSilu,        // x sigmoid(x)
  kAccumulate,  // c += a b (+ bias): c holds the residual on entry
  kScaleAdd,    // c = scale (a b) + addend, addend broadcast to c's dims
};

struct EpilogueSpec {
  Epilogue kind = Epilogue::kNone;
  float scale = 1;
  const View* addend = nullptr;  // kScaleAdd only
  // c += a b before the activation: c holds an addend on entry (kAccumulate
  // without an activation, or a mixed batch's per-row biases before one).
  bool onto_output = false;
};

bool available();

// An environment switch of the kernels (DELTATUNE_ONEDNN, DELTATUNE_FUSED,
// ...): on unless the variable is set to "0".
bool switched_on(const char* variable);

// c = epilogue(a b + bias), a [.., M, K], b [.., K, N], c [.., M, N], bias
// [N] (fp32) or null. a and b are both fp32 or both bf16; c is either (a bf16
// product accumulates in fp32 and rounds once, when c is bf16). Primitives
// are cached by shape, strides, data types and epilogue. False,
// with c untouched, where oneDNN has no implementation for these layouts
// (the caller then takes its plain path) or was not built in.
bool matmul(const View& a, const View& b, const float* bias, const View& c,
            const EpilogueSpec& epilogue = {});

// epilogue(x W^T + bias) for x [.., K] and a weight W [N, K] that does not
// change while it is used this way (a frozen base weight at inference), as
// [.., N]. W is reordered once into the blocked layout oneDNN's kernel
// prefers and the copy kept while W is alive and unchanged (same version
// counter): packing a plain W on every call costs as much as the product
// itself at small M. kAccumulate adds the product onto `residual` (shaped as
// the result; not modified). `row_bias` [B, N] for x [B, L, K] adds each
// batch row's own bias before the activation: the output is filled with the
// rows' biases (plus the residual) and one 2-D product accumulates onto it,
// so W is streamed once for the whole batch.
// A bf16 W makes it a bf16 product (x cast to bf16 first, as autocast does):
// the result is bf16, or fp32 with an fp32 residual or row bias (bf16 + fp32
// promotes).
// Undefined where oneDNN has no implementation.
// Drops the packed copies whose weight is gone, has changed since, or is
// trained (requires grad): a trained weight's copy is stale after the next
// step and would otherwise be held until the next lookup.
void drop_packed_copies_of_changing_weights();

at::Tensor linear_frozen(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         EpilogueSpec epilogue = {}, const at::Tensor& residual = {},
                         const at::Tensor& row_bias = {});

}  // namespace deltatune::model::onednn
