// From tokenizer encodings to padded model input.
#pragma once

#include <vector>

#include "deltatune/model/encoder.h"
#include "deltatune/text/tokenizer.h"

namespace deltatune::model {

// Pads every encoding to the longest one with `pad_token_id` (attention mask
// 0, token type 0), as HF's DataCollatorWithPadding does. CPU int64 tensors.
EncoderInput make_batch(const std::vector<text::Encoding>& encodings, int64_t pad_token_id);

// Sentence embeddings the sentence-transformers way: the mean of the last
// hidden states over real tokens; L2-normalised when `normalize`.
at::Tensor mean_pool(const at::Tensor& last_hidden_state, const at::Tensor& attention_mask,
                     bool normalize);

}  // namespace deltatune::model
