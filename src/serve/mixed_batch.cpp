#include "deltatune/serve/mixed_batch.h"

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <map>
#include <string>

#include "deltatune/error.h"
#include "deltatune/model/fused_kernels.h"
#include "deltatune/model/linear_kernel.h"

namespace deltatune::serve {
namespace {

using model::per_row;

at::Tensor pad_dim1(const at::Tensor& x, int64_t length, double value = 0) {
  const int64_t missing = length - x.size(1);
  if (missing == 0) return x;
  std::vector<int64_t> pad(static_cast<size_t>(2 * (x.dim() - 1)), 0);
  pad.back() = missing;  // constant_pad_nd's pairs run from the last dimension back
  return at::constant_pad_nd(x, pad, value);
}

// Rows `rows` of `y` become `values` / gain `values`, collected over the tasks
// of a batch and applied in one indexed copy and one indexed add. The result
// has the type y and the values promote to (a bf16 product's rows replaced
// or corrected by fp32 ones: fp32, as the plain sum would give).
struct RowUpdates {
  std::vector<at::Tensor> copy_rows, copy_values, add_rows, add_values;
  at::Tensor apply(at::Tensor y) const {
    auto onto = [&y](const std::vector<at::Tensor>& values) {
      at::Tensor all = at::cat(values);
      const at::ScalarType type = at::promote_types(y.scalar_type(), all.scalar_type());
      if (y.scalar_type() != type) y = y.to(type);
      return all.to(type);
    };
    if (!copy_rows.empty()) y = y.index_copy(0, at::cat(copy_rows), onto(copy_values));
    if (!add_rows.empty()) y = y.index_add(0, at::cat(add_rows), onto(add_values));
    return y;
  }
};

class MixedPass {
 public:
  MixedPass(model::SequenceClassifierImpl& base, const std::vector<MixedRow>& rows,
            int64_t pad_token_id, const MixedOptions& options)
      : options_(options),
        device_(model::device_of(base)),
        base_(base),
        config_(base.config()),
        prefix_(config_.base_model_prefix()),
        rows_(rows),
        pad_token_id_(pad_token_id) {
    std::map<const ServedTask*, int64_t> slot_of;
    std::vector<int64_t> slots;
    for (size_t r = 0; r < rows.size(); ++r) {
      auto [it, fresh] = slot_of.emplace(rows[r].task, static_cast<int64_t>(tasks_.size()));
      if (fresh) {
        tasks_.push_back(rows[r].task);
        rows_of_.emplace_back();
      }
      rows_of_[static_cast<size_t>(it->second)].push_back(static_cast<int64_t>(r));
      slots.push_back(it->second);
    }
    slot_ = at::tensor(slots, at::kLong).to(device_);
    for (const auto& list : rows_of_) row_index_.push_back(at::tensor(list, at::kLong).to(device_));
  }

  std::vector<at::Tensor> run() {
    at::Tensor hidden = embed();
    for (int64_t i = 0; i < config_.num_hidden_layers; ++i) hidden = layer(i, hidden);
    return heads(hidden);
  }

 private:
  int64_t batch() const { return static_cast<int64_t>(rows_.size()); }

  template <typename Map, typename Key>
  bool any_task_has(Map ServedTask::*member, const Key& name) const {
    for (const ServedTask* t : tasks_)
      if ((t->*member).count(name)) return true;
    return false;
  }
  // The same for a part a task gives through an accessor (its vector layout).
  template <typename Map, typename Key>
  bool any_task_has(const Map& (ServedTask::*accessor)() const, const Key& name) const {
    for (const ServedTask* t : tasks_)
      if ((t->*accessor)().count(name)) return true;
    return false;
  }

  // Each row's value of the 1-D parameter `name` (its task's, else the
  // base's): `shared` [n] when every row of the batch has the same one (a
  // one-task batch, or no task replaces it), so the plain broadcast and the
  // fused kernels apply; else `table` [B, n].
  struct RowVectors {
    at::Tensor shared, table;
  };
  RowVectors vectors_of(const std::string& name, const at::Tensor& base) const {
    if (!base.defined() || !any_task_has(&ServedTask::vectors, name)) return {base, {}};
    if (tasks_.size() == 1) return {tasks_.front()->vector(name), {}};
    std::vector<at::Tensor> per_slot;
    for (const ServedTask* t : tasks_) {
      at::Tensor own = t->vector(name);
      per_slot.push_back(own.defined() ? own : base);
    }
    return {{}, at::stack(per_slot).index_select(0, slot_)};
  }

  // z + each row's bias, for rows `rows` of the batch (all rows when undefined).
  static at::Tensor add_bias(const at::Tensor& z, const RowVectors& bias, const at::Tensor& rows) {
    if (bias.table.defined())
      return z + per_row(rows.defined() ? bias.table.index_select(0, rows) : bias.table, z.dim());
    return bias.shared.defined() ? z + bias.shared : z;
  }

  // Whether every row's Dense `name` is the base product plus its bias: no
  // task of the batch changes its weight or hooks it. Then the fused
  // inference kernels apply, with each row's bias in the product's epilogue.
  bool plain_dense(const std::string& name) const {
    const std::string weight = name + ".weight";
    return !any_task_has(&ServedTask::matrices, weight) &&
           !any_task_has(&ServedTask::sparse_changes, weight) &&
           !any_task_has(&ServedTask::dense_deltas, name);
  }

  // act(dense(x)) for the FFN's first product.
  at::Tensor dense_activation(const std::string& name, model::DenseImpl& d, const at::Tensor& x) {
    if (plain_dense(name)) {
      RowVectors bias = vectors_of(name + ".bias", d.bias);
      return model::linear_activation(x, model::weight_operand({d.weight}), bias.shared,
                                      config_.hidden_act, bias.table);
    }
    return model::activation(dense(name, d, x), config_.hidden_act);
  }

  // A sub-layer's output: dense -> each row's adapter -> LayerNorm(. + residual).
  at::Tensor sublayer_output(const std::string& site, model::SublayerOutputImpl& out,
                             const at::Tensor& x, const at::Tensor& residual) {
    const std::string name = site + ".dense";
    if (plain_dense(name) && !any_task_has(&ServedTask::adapters, site)) {
      RowVectors bias = vectors_of(name + ".bias", out.dense->bias);
      return layer_norm(site + ".LayerNorm", *out.LayerNorm,
                        model::linear_residual(x, model::weight_operand({out.dense->weight}),
                                               bias.shared, residual, bias.table));
    }
    return finish(site, out, dense(name, *out.dense, x), residual);
  }

  // The Dense `name`'s output for every row: the shared product plus each
  // row's task part.
  at::Tensor dense(const std::string& name, model::DenseImpl& d, const at::Tensor& x) {
    RowVectors bias = vectors_of(name + ".bias", d.bias);
    at::Tensor y =
        model::linear_row_bias(x, model::weight_operand({d.weight}), bias.shared, bias.table);
    return task_parts(name, d, x, y, bias);
  }

  // Query, key and value from one fused product, as the encoder computes them.
  std::vector<at::Tensor> query_key_value(const std::string& name, model::SelfAttentionImpl& self,
                                          const at::Tensor& x) {
    model::DenseImpl* parts[] = {self.query.get(), self.key.get(), self.value.get()};
    const std::string names[] = {name + ".query", name + ".key", name + ".value"};
    RowVectors bias[3];
    bool any_table = false;
    for (int i = 0; i < 3; ++i) {
      bias[i] = vectors_of(names[i] + ".bias", parts[i]->bias);
      any_table = any_table || bias[i].table.defined();
    }
    at::Tensor weight =
        model::weight_operand({parts[0]->weight, parts[1]->weight, parts[2]->weight});
    at::Tensor fused;
    if (any_table) {  // one [B, 3n] table of each row's query, key and value biases
      std::vector<at::Tensor> tables;
      for (const RowVectors& b : bias)
        tables.push_back(b.table.defined() ? b.table : b.shared.expand({batch(), -1}));
      fused = model::linear_row_bias(x, weight, {}, at::cat(tables, 1));
    } else {
      fused = model::linear(x, weight, at::cat({bias[0].shared, bias[1].shared, bias[2].shared}));
    }
    auto chunks = fused.chunk(3, -1);
    std::vector<at::Tensor> out;
    for (int i = 0; i < 3; ++i)
      out.push_back(task_parts(names[i], *parts[i], x, chunks[static_cast<size_t>(i)], bias[i]));
    return out;
  }

  // y (the shared product with each row's bias) -> with each row's weight
  // changes and hooks.
  at::Tensor task_parts(const std::string& name, model::DenseImpl& d, const at::Tensor& x,
                        at::Tensor y, const RowVectors& bias) {
    const std::string weight = name + ".weight";
    RowUpdates updates;
    std::vector<int64_t> low_rows;
    std::vector<at::Tensor> downs, ups;
    std::vector<double> scales;
    int64_t rank = 0;
    for (size_t s = 0; s < tasks_.size(); ++s) {
      const ServedTask* t = tasks_[s];
      const at::Tensor& rows = row_index_[s];
      if (auto found = t->matrices.find(weight); found != t->matrices.end()) {
        at::Tensor z = add_bias(model::linear(x.index_select(0, rows), found->second, at::Tensor()),
                                bias, rows);
        updates.copy_rows.push_back(rows);
        updates.copy_values.push_back(z);
      }
      if (auto found = t->sparse_changes.find(weight); found != t->sparse_changes.end()) {
        at::Tensor xr = x.index_select(0, rows);
        if (options_.sparse_weights == SparseWeights::kMerged) {
          at::Tensor z =
              add_bias(model::linear(xr, d.weight + found->second, at::Tensor()), bias, rows);
          updates.copy_rows.push_back(rows);
          updates.copy_values.push_back(z);
        } else {
          at::Tensor flat = xr.reshape({-1, xr.size(-1)});
          std::vector<int64_t> shape = xr.sizes().vec();
          shape.back() = y.size(-1);
          updates.add_rows.push_back(rows);
          // Sparse products have no bf16 kernels: this one stays in fp32 under autocast.
          c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
          at::Tensor correction = at::mm(found->second, flat.t().to(found->second.scalar_type()));
          updates.add_values.push_back(correction.t().reshape(shape));
        }
      }
      auto hooks = t->dense_deltas.find(name);
      if (hooks == t->dense_deltas.end()) continue;
      for (const auto& hook : hooks->second) {
        if (auto factors = hook->low_rank()) {
          for (int64_t r : rows_of_[s]) {
            low_rows.push_back(r);
            downs.push_back(factors->down);
            ups.push_back(factors->up);
            scales.push_back(factors->scaling);
          }
          rank = std::max(rank, factors->down.size(0));
        } else if (at::Tensor z = hook->forward(x.index_select(0, rows)); z.defined()) {
          updates.add_rows.push_back(rows);
          updates.add_values.push_back(z);
        }
      }
    }
    if (!low_rows.empty()) {
      // One batched product for every row's own factors.
      for (size_t i = 0; i < downs.size(); ++i) {
        const int64_t missing = rank - downs[i].size(0);
        if (missing == 0) continue;
        downs[i] = at::constant_pad_nd(downs[i], {0, 0, 0, missing});
        ups[i] = at::constant_pad_nd(ups[i], {0, missing});
      }
      at::Tensor rows = at::tensor(low_rows, at::kLong).to(device_);
      at::Tensor xr = x.index_select(0, rows);
      const bool flat = xr.dim() == 2;
      if (flat) xr = xr.unsqueeze(1);
      at::Tensor z =
          at::bmm(at::bmm(xr, at::stack(downs).transpose(1, 2)), at::stack(ups).transpose(1, 2)) *
          at::tensor(scales, at::kDouble).to(device_, xr.scalar_type()).view({-1, 1, 1});
      updates.add_rows.push_back(rows);
      updates.add_values.push_back(flat ? z.squeeze(1) : z);
    }
    return updates.apply(std::move(y));
  }

  at::Tensor layer_norm(const std::string& name, torch::nn::LayerNormImpl& norm,
                        const at::Tensor& x) {
    RowVectors gains = vectors_of(name + ".weight", norm.weight);
    RowVectors shifts = vectors_of(name + ".bias", norm.bias);
    return model::layer_norm_rows(x, gains.table.defined() ? gains.table : gains.shared,
                                  shifts.table.defined() ? shifts.table : shifts.shared,
                                  norm.options.eps());
  }

  // Rows of table `name` for ids [B, L], each row from its task's table.
  at::Tensor lookup(const std::string& name, const at::Tensor& table, const at::Tensor& ids) {
    at::Tensor out = at::embedding(table, ids);
    RowUpdates updates;
    for (size_t s = 0; s < tasks_.size(); ++s) {
      const ServedTask* t = tasks_[s];
      const at::Tensor& rows = row_index_[s];
      if (auto found = t->matrices.find(name); found != t->matrices.end()) {
        updates.copy_rows.push_back(rows);
        updates.copy_values.push_back(at::embedding(found->second, ids.index_select(0, rows)));
      }
      if (auto found = t->embedding_changes.find(name); found != t->embedding_changes.end()) {
        const EmbeddingChanges& changes = found->second;
        at::Tensor wanted = ids.index_select(0, rows);
        at::Tensor slots =
            at::searchsorted(changes.rows, wanted).clamp_max(changes.rows.size(0) - 1);
        at::Tensor hit = at::embedding(changes.rows.unsqueeze(1), slots).squeeze(-1).eq(wanted);
        updates.add_rows.push_back(rows);
        updates.add_values.push_back(at::embedding(changes.differences, slots) *
                                     hit.unsqueeze(-1).to(out.scalar_type()));
      }
    }
    return updates.apply(std::move(out));
  }

  at::Tensor embed() {
    const int64_t b = batch();
    int64_t length = 0;
    for (const MixedRow& row : rows_)
      length = std::max<int64_t>(length, static_cast<int64_t>(row.encoding->input_ids.size()));
    at::Tensor ids = at::full({b, length}, pad_token_id_, at::kLong);
    at::Tensor mask = at::zeros({b, length}, at::kLong);
    at::Tensor types = at::zeros({b, length}, at::kLong);
    std::vector<int64_t> offsets(static_cast<size_t>(b), 0);
    for (int64_t r = 0; r < b; ++r) {
      const text::Encoding& e = *rows_[static_cast<size_t>(r)].encoding;
      const int64_t n = static_cast<int64_t>(e.input_ids.size());
      ids[r].narrow(0, 0, n).copy_(at::tensor(e.input_ids, at::kLong));
      types[r].narrow(0, 0, n).copy_(at::tensor(e.token_type_ids, at::kLong));
      mask[r].narrow(0, 0, n).fill_(1);
      offsets[static_cast<size_t>(r)] = rows_[static_cast<size_t>(r)].task->prefix_position_offset;
    }
    // Made on the CPU row by row, then moved in one copy each.
    ids = ids.to(device_);
    mask = mask.to(device_);
    types = types.to(device_);
    model::EmbeddingsImpl& embeddings = *base_.encoder->embeddings;
    const std::string at = prefix_ + ".embeddings.";
    at::Tensor words =
        lookup(at + "word_embeddings.weight", embeddings.word_embeddings->weight, ids);
    at::Tensor positions =
        embeddings.position_ids(ids, at::tensor(offsets, at::kLong).to(device_).view({b, 1}));

    // Prompts: each task's inserter on its rows; every row right-padded to the longest.
    std::vector<size_t> inserting;
    for (size_t s = 0; s < tasks_.size(); ++s)
      if (tasks_[s]->inserter) inserting.push_back(s);
    if (!inserting.empty()) {
      std::vector<model::WordInput> inserted;
      int64_t longest = length;
      for (size_t s : inserting) {
        const at::Tensor& rows = row_index_[s];
        inserted.push_back(
            tasks_[s]->inserter->forward({words.index_select(0, rows), mask.index_select(0, rows),
                                          types.index_select(0, rows)}));
        longest = std::max(longest, inserted.back().word_vectors.size(1));
      }
      words = pad_dim1(words, longest);
      mask = pad_dim1(mask, longest);
      types = pad_dim1(types, longest);
      positions = pad_dim1(positions.expand({b, length}), longest);
      at::Tensor sequential =
          embeddings.vector_position_ids(longest, positions.options()).expand({-1, longest});
      for (size_t i = 0; i < inserting.size(); ++i) {
        const at::Tensor& rows = row_index_[inserting[i]];
        words = words.index_copy(0, rows, pad_dim1(inserted[i].word_vectors, longest));
        mask = mask.index_copy(0, rows, pad_dim1(inserted[i].attention_mask, longest));
        types = types.index_copy(0, rows, pad_dim1(inserted[i].token_type_ids, longest));
        positions = positions.index_copy(0, rows, sequential.expand({rows.size(0), longest}));
      }
      length = longest;
    }
    // Padding's positions do not matter (masked) but must stay in the table.
    positions = at::where(mask.to(at::kBool), positions.expand({b, length}), at::zeros_like(mask));
    mask_ = mask;

    at::Tensor hidden = words +
                        lookup(at + "token_type_embeddings.weight",
                               embeddings.token_type_embeddings->weight, types) +
                        lookup(at + "position_embeddings.weight",
                               embeddings.position_embeddings->weight, positions.contiguous());
    hidden = layer_norm(at + "LayerNorm", *embeddings.LayerNorm, hidden);
    if (!base_.encoder->embeddings_project.is_empty())
      hidden = dense(prefix_ + ".embeddings_project", *base_.encoder->embeddings_project, hidden);
    build_attention_mask();
    return hidden;
  }

  // Prefix slots first (each row's own prefix length visible), then tokens.
  void build_attention_mask() {
    int64_t longest = 0;
    for (const ServedTask* t : tasks_)
      if (!t->prefix_keys.empty()) longest = std::max(longest, t->prefix_keys[0].size(1));
    prefix_length_ = longest;
    at::Tensor mask = mask_;
    if (longest > 0) {
      at::Tensor visible = at::zeros({batch(), longest}, at::kLong);  // on the CPU, then moved
      for (size_t s = 0; s < tasks_.size(); ++s) {
        if (tasks_[s]->prefix_keys.empty()) continue;
        const int64_t own = tasks_[s]->prefix_keys[0].size(1);
        for (int64_t r : rows_of_[s]) visible[r].narrow(0, 0, own).fill_(1);
      }
      mask = at::cat({visible.to(device_), mask}, 1);
    }
    additive_mask_ = model::additive_attention_mask(mask, at::kFloat);
  }

  // Each row's prefix keys and values for layer `index`, padded to the longest.
  std::pair<at::Tensor, at::Tensor> prefixes(int64_t index, const at::Tensor& like) {
    at::Tensor keys = at::zeros({batch(), prefix_length_, like.size(-1)}, like.options());
    at::Tensor values = at::zeros_like(keys);
    for (size_t s = 0; s < tasks_.size(); ++s) {
      if (tasks_[s]->prefix_keys.empty()) continue;
      const int64_t n = row_index_[s].size(0);
      const at::Tensor& k = tasks_[s]->prefix_keys[static_cast<size_t>(index)];
      const at::Tensor& v = tasks_[s]->prefix_values[static_cast<size_t>(index)];
      keys = keys.index_copy(
          0, row_index_[s], pad_dim1(k.to(like.scalar_type()).expand({n, -1, -1}), prefix_length_));
      values = values.index_copy(
          0, row_index_[s], pad_dim1(v.to(like.scalar_type()).expand({n, -1, -1}), prefix_length_));
    }
    return {keys, values};
  }

  // dropout (eval: none) -> each row's adapter -> LayerNorm(. + residual).
  at::Tensor finish(const std::string& name, model::SublayerOutputImpl& out,
                    const at::Tensor& projected, const at::Tensor& residual) {
    at::Tensor h = adapters(name, projected);
    return layer_norm(name + ".LayerNorm", *out.LayerNorm, h + residual);
  }

  at::Tensor adapters(const std::string& site, const at::Tensor& h) {
    RowUpdates updates;
    std::map<std::string, std::vector<std::pair<size_t, model::SublayerAdapter::Bottleneck>>>
        batched;  // by activation
    for (size_t s = 0; s < tasks_.size(); ++s) {
      auto found = tasks_[s]->adapters.find(site);
      if (found == tasks_[s]->adapters.end()) continue;
      if (auto weights = found->second->bottleneck()) {
        batched[weights->activation].emplace_back(s, *weights);
      } else {
        updates.copy_rows.push_back(row_index_[s]);
        updates.copy_values.push_back(found->second->forward(h.index_select(0, row_index_[s])));
      }
    }
    for (const auto& [activation, group] : batched) {
      int64_t width = 0;
      for (const auto& [s, w] : group) width = std::max(width, w.down_weight.size(0));
      std::vector<at::Tensor> rows, down_w, down_b, up_w, up_b;
      for (const auto& [s, w] : group) {
        // Zero-padded bottleneck units add act(0) = 0 through zero up-weights.
        const int64_t missing = width - w.down_weight.size(0);
        at::Tensor dw = at::constant_pad_nd(w.down_weight, {0, 0, 0, missing});
        at::Tensor db = at::constant_pad_nd(w.down_bias, {0, missing});
        at::Tensor uw = at::constant_pad_nd(w.up_weight, {0, missing});
        rows.push_back(row_index_[s]);
        for (size_t i = 0; i < rows_of_[s].size(); ++i) {
          down_w.push_back(dw), down_b.push_back(db), up_w.push_back(uw), up_b.push_back(w.up_bias);
        }
      }
      at::Tensor all = at::cat(rows);
      at::Tensor x = h.index_select(0, all);
      at::Tensor inner = model::activation(
          at::bmm(x, at::stack(down_w).transpose(1, 2)) + at::stack(down_b).unsqueeze(1),
          activation);
      updates.copy_rows.push_back(all);
      updates.copy_values.push_back(
          x + (at::bmm(inner, at::stack(up_w).transpose(1, 2)) + at::stack(up_b).unsqueeze(1)));
    }
    return updates.apply(h);
  }

  at::Tensor layer(int64_t index, const at::Tensor& hidden) {
    model::Layer l = base_.encoder->layer(index);
    const std::string at = prefix_ + ".encoder.layer." + std::to_string(index);
    auto qkv = query_key_value(at + ".attention.self", *l->attention->self, hidden);
    at::Tensor keys = qkv[1], values = qkv[2];
    if (prefix_length_ > 0) {
      auto [pk, pv] = prefixes(index, keys);
      keys = at::cat({pk, keys}, 1);
      values = at::cat({pv, values}, 1);
    }
    at::Tensor context = l->attention->self->attend(qkv[0], keys, values, additive_mask_);
    at::Tensor attended =
        sublayer_output(at + ".attention.output", *l->attention->output, context, hidden);
    at::Tensor inner =
        dense_activation(at + ".intermediate.dense", *l->intermediate->dense, attended);
    if (!any_task_has(&ServedTask::feed_forwards, index))
      return sublayer_output(at + ".output", *l->output, inner, attended);
    at::Tensor projected = dense(at + ".output.dense", *l->output->dense, inner);
    RowUpdates replaced;  // a task's own feed-forward module replaces the pair
    for (size_t s = 0; s < tasks_.size(); ++s) {
      auto found = tasks_[s]->feed_forwards.find(index);
      if (found == tasks_[s]->feed_forwards.end()) continue;
      replaced.copy_rows.push_back(row_index_[s]);
      replaced.copy_values.push_back(
          found->second->forward(attended.index_select(0, row_index_[s])));
    }
    projected = replaced.apply(projected);
    return finish(at + ".output", *l->output, projected, attended);
  }

  std::vector<at::Tensor> heads(const at::Tensor& hidden) {
    at::Tensor first = hidden.select(1, 0);
    const bool bert = config_.architecture == model::Architecture::kBert;
    if (bert)
      first = at::tanh(dense(prefix_ + ".pooler.dense", *base_.encoder->pooler->dense, first));
    std::vector<at::Tensor> out(rows_.size());
    for (size_t s = 0; s < tasks_.size(); ++s) {
      const auto& head = tasks_[s]->head;
      at::Tensor x = first.index_select(0, row_index_[s]);
      at::Tensor logits;
      if (bert) {
        logits = at::linear(x, head.at("classifier.weight"), head.at("classifier.bias"));
      } else {
        // RoBERTa's / ELECTRA's classifier: dense -> tanh (gelu) -> out_proj.
        x = at::linear(x, head.at("classifier.dense.weight"), head.at("classifier.dense.bias"));
        x = config_.architecture == model::Architecture::kElectra ? at::gelu(x) : at::tanh(x);
        logits = at::linear(x, head.at("classifier.out_proj.weight"),
                            head.at("classifier.out_proj.bias"));
      }
      logits = logits.to(at::kCPU, at::kFloat);  // what the engine reads (bf16 under autocast)
      for (size_t i = 0; i < rows_of_[s].size(); ++i)
        out[static_cast<size_t>(rows_of_[s][i])] = logits[static_cast<int64_t>(i)];
    }
    return out;
  }

  MixedOptions options_;
  at::Device device_;  // the shared model's, where every pass tensor lives
  model::SequenceClassifierImpl& base_;
  const model::EncoderConfig& config_;
  std::string prefix_;
  const std::vector<MixedRow>& rows_;
  int64_t pad_token_id_;
  std::vector<const ServedTask*> tasks_;       // distinct tasks, by slot
  std::vector<std::vector<int64_t>> rows_of_;  // per slot
  std::vector<at::Tensor> row_index_;          // per slot, as int64 tensors
  at::Tensor slot_;                            // [B]: each row's slot
  at::Tensor mask_;                            // [B, L] after prompts
  at::Tensor additive_mask_;                   // [B, 1, 1, P + L]
  int64_t prefix_length_ = 0;
};

}  // namespace

std::vector<at::Tensor> mixed_forward(model::SequenceClassifierImpl& base,
                                      const std::vector<MixedRow>& rows, int64_t pad_token_id,
                                      const MixedOptions& options) {
  if (rows.empty()) return {};
  for (const MixedRow& row : rows)
    if (row.task == nullptr || row.encoding == nullptr || row.encoding->input_ids.empty())
      throw Error("mixed_forward: a row without a task or tokens");
  model::AutocastScope autocast(model::device_of(base), options.precision);
  return MixedPass(base, rows, pad_token_id, options).run();
}

}  // namespace deltatune::serve
