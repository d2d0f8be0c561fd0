// The hook points methods will use, checked by equivalences that hold only
// when the hook is wired where it should be.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "deltatune/model/pretrained.h"
#include "test_paths.h"

namespace deltatune::model {
namespace {

LoadedClassifier tiny_bert() {
  auto loaded = load_classifier(test::fixtures() / "model" / "tiny_bert");
  loaded.model->eval();
  return loaded;
}

EncoderInput sample_input(int64_t batch = 3, int64_t length = 9) {
  at::manual_seed(7);
  EncoderInput in;
  in.input_ids = at::randint(5, 1000, {batch, length}, at::kLong);
  in.attention_mask = at::ones({batch, length}, at::kLong);
  in.attention_mask.index_put_({1, at::indexing::Slice(6, at::indexing::None)}, 0);
  in.token_type_ids = at::zeros({batch, length}, at::kLong);
  return in;
}

class ConstantDelta : public DenseDelta {
 public:
  explicit ConstantDelta(at::Tensor shift) : shift_(std::move(shift)) {}
  at::Tensor forward(const at::Tensor& input) override {
    return shift_.expand({input.size(0), input.size(1), shift_.size(0)});
  }

 private:
  at::Tensor shift_;
};

TEST(Hooks, DenseDeltaActsLikeABiasChange) {
  auto with_delta = tiny_bert();
  auto with_bias = tiny_bert();
  at::Tensor shift = at::randn({32});
  auto query = with_delta.model->encoder->layer(1)->attention->self->query;
  query->add_delta("shift", std::make_shared<ConstantDelta>(shift));
  {
    at::NoGradGuard no_grad;
    with_bias.model->encoder->layer(1)->attention->self->query->bias.add_(shift);
  }
  at::NoGradGuard no_grad;
  auto in = sample_input();
  at::Tensor a = with_delta.model->forward(in), b = with_bias.model->forward(in);
  EXPECT_TRUE(at::allclose(a, b, 1e-5, 1e-6));
  query->remove_delta("shift");
  EXPECT_FALSE(at::allclose(with_delta.model->forward(in), b, 1e-5, 1e-6));
  EXPECT_TRUE(at::equal(with_delta.model->forward(in), tiny_bert().model->forward(in)));
}

class Identity : public SublayerAdapter {
 public:
  at::Tensor forward(const at::Tensor& hidden) override { return hidden; }
};

class Scale : public SublayerAdapter {
 public:
  at::Tensor forward(const at::Tensor& hidden) override { return 2 * hidden; }
};

TEST(Hooks, AdapterSitsBeforeTheResidualAndLayerNorm) {
  auto plain = tiny_bert();
  auto adapted = tiny_bert();
  auto in = sample_input();
  at::NoGradGuard no_grad;
  adapted.model->encoder->layer(0)->output->set_adapter("adapter", std::make_shared<Identity>());
  EXPECT_TRUE(at::equal(adapted.model->forward(in), plain.model->forward(in)));
  // Doubling the FFN sublayer's output equals doubling its dense weight and bias.
  adapted.model->encoder->layer(0)->output->set_adapter("adapter", std::make_shared<Scale>());
  auto dense = plain.model->encoder->layer(0)->output->dense;
  dense->weight.mul_(2);
  dense->bias.mul_(2);
  EXPECT_TRUE(at::allclose(adapted.model->forward(in), plain.model->forward(in), 1e-5, 1e-6));
  // The adapter's parameters (none here) are named under the sublayer.
  adapted.model->encoder->layer(0)->output->clear_adapter();
}

class FixedPrefix : public AttentionPrefix {
 public:
  FixedPrefix(int64_t layers, int64_t length, int64_t hidden) {
    keys_ = register_parameter("keys", at::randn({layers, length, hidden}));
    values_ = register_parameter("values", at::randn({layers, length, hidden}));
  }
  std::pair<at::Tensor, at::Tensor> forward(int64_t layer, int64_t) override {
    return {keys_[layer].unsqueeze(0), values_[layer].unsqueeze(0)};
  }
  at::Tensor keys_, values_;
};

TEST(Hooks, AttentionPrefixIsAttendedToAndTrainable) {
  auto loaded = tiny_bert();
  auto in = sample_input();
  at::Tensor before;
  {
    at::NoGradGuard no_grad;
    before = loaded.model->forward(in);
  }
  auto prefix = std::make_shared<FixedPrefix>(2, 4, 32);
  loaded.model->encoder->set_attention_prefix("prefix", prefix);
  bool named = false;
  for (const auto& p : loaded.model->named_parameters()) named |= p.key() == "bert.prefix.keys";
  EXPECT_TRUE(named);
  at::Tensor after = loaded.model->forward(in);
  EXPECT_EQ(after.sizes(), before.sizes());
  EXPECT_FALSE(at::allclose(after, before));
  after.sum().backward();
  ASSERT_TRUE(prefix->keys_.grad().defined());
  EXPECT_GT(prefix->keys_.grad().abs().sum().item<float>(), 0.f);
  // Padding stays masked with a prefix: changing padded ids changes nothing.
  at::NoGradGuard no_grad;
  auto changed = in;
  changed.input_ids = in.input_ids.clone();
  changed.input_ids.index_put_({1, at::indexing::Slice(6, at::indexing::None)}, 17);
  EXPECT_TRUE(at::allclose(loaded.model->forward(changed), loaded.model->forward(in), 1e-5, 1e-6));
  loaded.model->encoder->clear_attention_prefix();
  EXPECT_TRUE(at::equal(loaded.model->forward(in), before));
}

class InsertAfterFirst : public EmbeddingInserter {
 public:
  explicit InsertAfterFirst(int64_t count, int64_t width) {
    prompt_ = register_parameter("prompt", at::randn({count, width}));
  }
  WordInput forward(const WordInput& in) override {
    const int64_t batch = in.word_vectors.size(0), count = prompt_.size(0);
    auto after_first = [&](const at::Tensor& x, const at::Tensor& inserted) {
      return at::cat({x.narrow(1, 0, 1), inserted, x.narrow(1, 1, x.size(1) - 1)}, 1);
    };
    return {after_first(in.word_vectors, prompt_.unsqueeze(0).expand({batch, -1, -1})),
            after_first(in.attention_mask, at::ones({batch, count}, in.attention_mask.options())),
            after_first(in.token_type_ids, at::zeros({batch, count}, in.token_type_ids.options()))};
  }
  at::Tensor prompt_;
};

class InsertNothing : public EmbeddingInserter {
 public:
  WordInput forward(const WordInput& in) override { return in; }
};

TEST(Hooks, EmbeddingInserterLengthensTheSequenceAndMask) {
  auto loaded = tiny_bert();
  loaded.model->encoder->set_embedding_inserter("prompt",
                                                std::make_shared<InsertAfterFirst>(5, 32));
  at::NoGradGuard no_grad;
  auto in = sample_input();
  auto out = loaded.model->encoder->forward(in);
  EXPECT_EQ(out.last_hidden_state.size(1), in.input_ids.size(1) + 5);
  EXPECT_EQ(out.attention_mask.sum(1).sub(in.attention_mask.sum(1)).eq(5).all().item<bool>(), true);
}

TEST(Hooks, EmbeddingInserterWorksOnWordVectorsBeforePositions) {
  // Passing the word vectors through unchanged must give the plain model:
  // the hook sits before positions, token types and the LayerNorm.
  auto loaded = tiny_bert();
  auto in = sample_input();
  in.token_type_ids.index_put_({0, at::indexing::Slice(4, at::indexing::None)}, 1);
  at::NoGradGuard no_grad;
  at::Tensor plain = loaded.model->forward(in);
  loaded.model->encoder->set_embedding_inserter("prompt", std::make_shared<InsertNothing>());
  EXPECT_TRUE(at::allclose(loaded.model->forward(in), plain, 1e-6, 1e-6));
}

class OffsetPrefix : public AttentionPrefix {
 public:
  explicit OffsetPrefix(int64_t offset) : offset_(offset) {}
  std::pair<at::Tensor, at::Tensor> forward(int64_t, int64_t) override {
    return {at::Tensor(), at::Tensor()};
  }
  int64_t position_offset() const override { return offset_; }

 private:
  int64_t offset_;
};

TEST(Hooks, PrefixPositionOffsetShiftsTokenPositions) {
  // An empty prefix that shifts positions by k equals the plain model whose
  // position table is moved up by k rows.
  auto loaded = tiny_bert();
  auto shifted = tiny_bert();
  auto in = sample_input();
  at::NoGradGuard no_grad;
  auto& table = shifted.model->encoder->embeddings->position_embeddings->weight;
  table.narrow(0, 0, table.size(0) - 3).copy_(table.narrow(0, 3, table.size(0) - 3).clone());
  at::Tensor expected = shifted.model->forward(in);
  EXPECT_FALSE(at::allclose(loaded.model->forward(in), expected));
  loaded.model->encoder->set_attention_prefix("prefix", std::make_shared<OffsetPrefix>(3));
  EXPECT_TRUE(at::allclose(loaded.model->forward(in), expected, 1e-6, 1e-6));
}

}  // namespace
}  // namespace deltatune::model
