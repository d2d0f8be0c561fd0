#include "deltatune/model/batch.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "deltatune/error.h"

namespace deltatune::model {

EncoderInput make_batch(const std::vector<text::Encoding>& encodings, int64_t pad_token_id) {
  if (encodings.empty()) throw Error("cannot make a batch of zero sequences");
  size_t longest = 0;
  for (const auto& e : encodings) longest = std::max(longest, e.input_ids.size());
  const auto batch = static_cast<int64_t>(encodings.size());
  const auto length = static_cast<int64_t>(longest);
  EncoderInput in;
  in.input_ids = at::full({batch, length}, pad_token_id, at::kLong);
  in.attention_mask = at::zeros({batch, length}, at::kLong);
  in.token_type_ids = at::zeros({batch, length}, at::kLong);
  auto ids = in.input_ids.accessor<int64_t, 2>();
  auto mask = in.attention_mask.accessor<int64_t, 2>();
  auto types = in.token_type_ids.accessor<int64_t, 2>();
  for (int64_t b = 0; b < batch; ++b) {
    const auto& e = encodings[b];
    for (size_t t = 0; t < e.input_ids.size(); ++t) {
      ids[b][t] = e.input_ids[t];
      mask[b][t] = 1;
      types[b][t] = t < e.token_type_ids.size() ? e.token_type_ids[t] : 0;
    }
  }
  return in;
}

at::Tensor mean_pool(const at::Tensor& last_hidden_state, const at::Tensor& attention_mask,
                     bool normalize) {
  at::Tensor mask = attention_mask.unsqueeze(-1).to(last_hidden_state.scalar_type());
  at::Tensor summed = (last_hidden_state * mask).sum(1);
  at::Tensor pooled = summed / mask.sum(1).clamp_min(1e-9);
  if (!normalize) return pooled;
  return pooled / pooled.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12);
}

}  // namespace deltatune::model
