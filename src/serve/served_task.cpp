#include "deltatune/serve/served_task.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (its home from fmt 11 on, as LibTorch 2.x ships)

#include <set>

#include "deltatune/error.h"

namespace deltatune::serve {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

int64_t tensor_bytes(const at::Tensor& t) {
  if (!t.defined()) return 0;
  if (t.is_sparse()) return tensor_bytes(t._indices()) + tensor_bytes(t._values());
  return t.numel() * static_cast<int64_t>(t.element_size());
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// An embedding table (looked up by id) rather than a product's weight.
bool is_embedding_table(const std::string& name) { return ends_with(name, "_embeddings.weight"); }

// The full value of a stored tensor: dense as stored, sparse written over `base`.
at::Tensor full_value(const methods::DeltaTensor& t, const at::Tensor& base) {
  if (!t.sparse()) return t.values.to(at::kFloat).reshape(base.sizes()).contiguous();
  at::Tensor value = base.detach().clone().contiguous();
  value.view({-1}).index_put_({t.indices.to(at::kLong)}, t.values.to(at::kFloat));
  return value;
}

// (task - base) at a sparse tensor's entries, for an [out, in] weight.
at::Tensor sparse_change(const methods::DeltaTensor& t, const at::Tensor& base) {
  at::Tensor flat = t.indices.to(at::kLong);
  const int64_t columns = base.size(1);
  at::Tensor differences =
      t.values.to(at::kFloat) - base.detach().reshape({-1}).index_select(0, flat);
  at::Tensor coordinates =
      at::stack({at::div(flat, columns, "floor"), at::remainder(flat, columns)});
  return at::sparse_coo_tensor(coordinates, differences, base.sizes()).coalesce();
}

EmbeddingChanges embedding_changes(const methods::DeltaTensor& t, const at::Tensor& base) {
  at::Tensor flat = t.indices.to(at::kLong);
  const int64_t width = base.size(1);
  at::Tensor rows_of_entries = at::div(flat, width, "floor");
  at::Tensor rows = std::get<0>(at::unique_consecutive(rows_of_entries));
  at::Tensor slots = at::searchsorted(rows, rows_of_entries);
  at::Tensor differences = at::zeros({rows.size(0), width}, base.options().dtype(at::kFloat));
  differences.index_put_(
      {slots, at::remainder(flat, width)},
      t.values.to(at::kFloat) - base.detach().reshape({-1}).index_select(0, flat));
  return {rows, differences};
}

void check_head(const ServedTask& task, const model::EncoderConfig& config,
                const std::string& where) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected;
  const int64_t h = config.hidden_size, n = task.num_labels;
  if (config.architecture == model::Architecture::kBert) {
    expected = {{"classifier.weight", {n, h}}, {"classifier.bias", {n}}};
  } else {
    expected = {{"classifier.dense.weight", {h, h}},
                {"classifier.dense.bias", {h}},
                {"classifier.out_proj.weight", {n, h}},
                {"classifier.out_proj.bias", {n}}};
  }
  for (const auto& [name, shape] : expected) {
    auto found = task.head.find(name);
    if (found == task.head.end())
      throw Error(fmt::format("{}: the delta has no '{}' (its classifier)", where, name));
    if (found->second.sizes().vec() != shape)
      throw Error(fmt::format("{}: '{}' has shape [{}], {} labels need [{}]", where, name,
                              fmt::join(found->second.sizes(), ", "), n, fmt::join(shape, ", ")));
  }
}

}  // namespace

const ServedTask::VectorLayout& ServedTask::vectors() const {
  static const VectorLayout none;
  return vector_layout ? *vector_layout : none;
}

at::Tensor ServedTask::vector(const std::string& name) const {
  const VectorLayout& layout = vectors();
  auto found = layout.find(name);
  if (found == layout.end()) return {};
  return vector_values.narrow(0, found->second.first, found->second.second);
}

std::string ServedTask::label(int64_t index) const {
  if (index >= 0 && index < static_cast<int64_t>(spec.label_names.size()))
    return spec.label_names[static_cast<size_t>(index)];
  return "LABEL_" + std::to_string(index);
}

json ServedTask::describe() const {
  json labels = json::array();
  for (int64_t i = 0; i < num_labels; ++i) labels.push_back(label(i));
  return {{"name", name},
          {"directory", directory.string()},
          {"method", method},
          {"task", spec.name},
          {"type", spec.type == data::TaskType::kRegression ? "regression" : "classification"},
          {"is_pair", spec.is_pair},
          {"labels", labels},
          {"max_length", max_length},
          {"delta_bytes", delta_bytes},
          {"resident_bytes", resident_bytes}};
}

TaskLoader::TaskLoader(const train::BaseModel& base, model::SequenceClassifierImpl& shared)
    : base_(base), shared_(shared) {
  scratch_ = model::SequenceClassifier(base.config, 1);
  // The scratch model's base parameters are the shared model's: methods make
  // their modules against it (shapes, a prompt's vocabulary draw) without a
  // second copy of the weights.
  auto shared_parameters = shared_.named_parameters(true);
  at::NoGradGuard no_grad;
  for (auto& item : scratch_->named_parameters(true)) {
    base_names_.insert(item.key());
    if (const at::Tensor* same = shared_parameters.find(item.key()); same != nullptr)
      item.value().set_data(*same);
  }
  scratch_->eval();
}

TaskLoader::~TaskLoader() = default;

void TaskLoader::take_modules(ServedTask* harvest) {
  for (const auto& item : scratch_->named_modules()) {
    auto* dense = dynamic_cast<model::DenseImpl*>(item.value().get());
    if (dense == nullptr || !dense->has_deltas()) continue;
    std::vector<std::string> names;
    for (const auto& [delta_name, hook] : dense->deltas()) {
      if (harvest) harvest->dense_deltas[item.key()].push_back(hook);
      names.push_back(delta_name);
    }
    for (const auto& delta_name : names) dense->remove_delta(delta_name);
  }
  model::EncoderModelImpl& encoder = *scratch_->encoder;
  const std::string prefix = base_.config.base_model_prefix() + ".encoder.layer.";
  for (int64_t i = 0; i < encoder.num_layers(); ++i) {
    model::Layer layer = encoder.layer(i);
    const std::string at = prefix + std::to_string(i);
    if (harvest && layer->attention->output->adapter())
      harvest->adapters[at + ".attention.output"] = layer->attention->output->adapter();
    if (harvest && layer->output->adapter())
      harvest->adapters[at + ".output"] = layer->output->adapter();
    if (harvest && layer->feed_forward()) harvest->feed_forwards[i] = layer->feed_forward();
    layer->attention->output->clear_adapter();
    layer->output->clear_adapter();
    layer->clear_feed_forward();
  }
  if (harvest) {
    harvest->prefix = encoder.attention_prefix();
    harvest->inserter = encoder.embedding_inserter();
  }
  encoder.clear_attention_prefix();
  encoder.clear_embedding_inserter();
}

std::shared_ptr<const ServedTask> TaskLoader::load(const std::string& name,
                                                   const fs::path& directory) {
  const std::string where = directory.string();
  methods::Delta delta = methods::Delta::load(directory);
  train::check_base_identity(base_, delta);
  auto method = train::method_of(delta);
  auto task = std::make_shared<ServedTask>();
  task->name = name;
  task->directory = directory;
  task->spec = train::task_of(delta);
  task->method = method->name();
  task->max_length = delta.meta.value("max_length", size_t{128});
  task->num_labels = delta.meta.value("num_labels", int64_t{0});
  if (task->num_labels < 1) throw Error(where + "/delta.json: missing field 'num_labels'");
  if (task->num_labels != task->spec.num_labels())
    throw Error(fmt::format("{}/delta.json: num_labels {} but the task has {} labels", where,
                            task->num_labels, task->spec.num_labels()));
  task->added_positions = method->added_positions();
  train::check_sequence_fits(base_.config, *method, static_cast<int64_t>(task->max_length));
  task->delta_bytes = delta.stored_bytes();
  delta = methods::with_encoder_name(delta, base_.config.base_model_prefix());
  // The task's tensors live where the shared model computes: everything
  // derived from them below (changes, tables, hook modules) is made there.
  if (const at::Device device = model::device_of(shared_); !device.is_cpu())
    for (methods::DeltaTensor& t : delta.tensors) {
      t.values = t.values.to(device);
      if (t.indices.defined()) t.indices = t.indices.to(device);
    }

  auto shared_parameters = shared_.named_parameters(true);

  // The method's modules are made on the scratch model and always taken off
  // it again, whatever happens in between.
  struct Guard {
    TaskLoader* loader;
    ~Guard() {
      if (loader) loader->take_modules(nullptr);
    }
  } guard{this};
  method->attach_modules(*scratch_);
  auto scratch_parameters = scratch_->named_parameters(true);
  std::set<std::string> module_names;  // the method's own parameters, to be filled
  for (const auto& item : scratch_parameters)
    if (!base_names_.count(item.key())) module_names.insert(item.key());

  at::NoGradGuard no_grad;
  std::vector<std::pair<std::string, at::Tensor>> replaced_vectors;
  for (const methods::DeltaTensor& t : delta.tensors) {
    if (methods::is_classifier_parameter(t.name)) {
      if (t.sparse()) throw Error(where + ": classifier tensor '" + t.name + "' is stored sparse");
      task->head[t.name] = t.values.to(at::kFloat).contiguous();
      continue;
    }
    if (module_names.count(t.name)) {
      at::Tensor& target = *scratch_parameters.find(t.name);
      if (t.sparse() || target.sizes().vec() != t.shape)
        throw Error(fmt::format("{}: tensor '{}' has shape [{}], the method's is [{}]", where,
                                t.name, fmt::join(t.shape, ", "), fmt::join(target.sizes(), ", ")));
      target.copy_(t.values.reshape(target.sizes()));
      module_names.erase(t.name);
      continue;
    }
    const at::Tensor* base_value = shared_parameters.find(t.name);
    if (base_value == nullptr)
      throw Error(
          fmt::format("{}: tensor '{}' is neither a parameter of base {} nor of {}'s modules",
                      where, t.name, base_.name, task->method));
    if (base_value->sizes().vec() != t.shape)
      throw Error(fmt::format("{}: tensor '{}' has shape [{}], the base's is [{}]", where, t.name,
                              fmt::join(t.shape, ", "), fmt::join(base_value->sizes(), ", ")));
    if (base_value->dim() == 2 && t.sparse()) {
      if (is_embedding_table(t.name)) {
        task->embedding_changes[t.name] = embedding_changes(t, *base_value);
      } else {
        task->sparse_changes[t.name] = sparse_change(t, *base_value);
      }
      continue;
    }
    at::Tensor value = full_value(t, *base_value);
    if (at::equal(value, *base_value)) continue;  // stored but unchanged (a frozen pooler)
    if (base_value->dim() == 1) {
      replaced_vectors.emplace_back(t.name, value);
    } else {
      task->matrices[t.name] = value;
    }
  }
  if (!replaced_vectors.empty()) {
    std::vector<at::Tensor> parts;
    ServedTask::VectorLayout layout;
    std::string signature;
    int64_t offset = 0;
    for (const auto& [vector_name, value] : replaced_vectors) {
      layout[vector_name] = {offset, value.numel()};
      signature += fmt::format("{}:{}:{};", vector_name, offset, value.numel());
      offset += value.numel();
      parts.push_back(value);
    }
    task->vector_values = at::cat(parts);
    std::shared_ptr<const ServedTask::VectorLayout> shared = layouts_[signature].lock();
    if (!shared) {
      shared = std::make_shared<const ServedTask::VectorLayout>(std::move(layout));
      layouts_[signature] = shared;
    }
    task->vector_layout = std::move(shared);
  }
  if (!module_names.empty())
    throw Error(fmt::format("{}: the delta lacks '{}', which {} needs", where,
                            *module_names.begin(), task->method));
  check_head(*task, base_.config, where);
  guard.loader = nullptr;
  take_modules(task.get());
  int64_t bytes = tensor_bytes(task->vector_values);
  for (const auto* table : {&task->matrices, &task->sparse_changes, &task->head})
    for (const auto& [key, value] : *table) bytes += tensor_bytes(value);
  for (const auto& [key, changes] : task->embedding_changes)
    bytes += tensor_bytes(changes.rows) + tensor_bytes(changes.differences);
  std::vector<std::shared_ptr<torch::nn::Module>> modules;
  for (const auto& [key, hooks] : task->dense_deltas)
    for (const auto& hook : hooks) modules.push_back(hook);
  for (const auto& [key, hook] : task->adapters) modules.push_back(hook);
  for (const auto& [key, hook] : task->feed_forwards) modules.push_back(hook);
  if (task->prefix) modules.push_back(task->prefix);
  if (task->inserter) modules.push_back(task->inserter);
  for (const auto& module : modules) {
    module->eval();
    for (auto& parameter : module->parameters(true)) {
      parameter.requires_grad_(false);
      bytes += tensor_bytes(parameter);
    }
  }
  if (task->prefix) {
    for (int64_t i = 0; i < base_.config.num_hidden_layers; ++i) {
      auto [keys, values] = task->prefix->forward(i, 1);
      task->prefix_keys.push_back(keys.detach());
      task->prefix_values.push_back(values.detach());
    }
    task->prefix_position_offset = task->prefix->position_offset();
  }
  task->resident_bytes = bytes;
  return task;
}

}  // namespace deltatune::serve
