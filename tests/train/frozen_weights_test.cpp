// A task model's base weights are the checkpoint file's own pages (a private
// copy-on-write mapping made for the model), not a second copy in memory;
// writing to them copies only the touched pages and never reaches the file,
// the BaseModel's checkpoint tensors or another task model.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "deltatune/io/safetensors.h"
#include "deltatune/methods/method.h"
#include "deltatune/model/device.h"
#include "deltatune/model/pretrained.h"
#include "deltatune/train/task_model.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {
namespace fs = std::filesystem;

// What is mapped at `address` in this process: a file's path, a pseudo-path
// such as "[heap]", or "" (anonymous memory).
std::string mapped_file_at(const void* address) {
  const auto at = reinterpret_cast<uintptr_t>(address);
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream fields(line);
    std::string range, perms, offset, device, inode, path;
    fields >> range >> perms >> offset >> device >> inode >> path;
    const size_t dash = range.find('-');
    const uintptr_t begin = std::stoull(range.substr(0, dash), nullptr, 16);
    const uintptr_t end = std::stoull(range.substr(dash + 1), nullptr, 16);
    if (begin <= at && at < end) return path;
  }
  return "";
}

std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(FrozenBaseWeights, AreTheCheckpointFilesPagesAndWritesToThemStayPrivate) {
  test::ScratchDir dir;
  for (const char* name : {"config.json", "model.safetensors"})
    dir.copy_from(test::minilm_dir(), name);
  const fs::path weights = dir.path() / "model.safetensors";
  const std::string before = file_bytes(weights);
  const BaseModel base = load_base(dir.path());

  auto model = make_task_model(base, 2, 0);
  at::Tensor weight, head;
  std::string weight_name;
  for (auto& item : model->named_parameters(true)) {
    if (item.key().rfind("classifier.", 0) == 0) head = item.value();
    if (!weight.defined() && item.key().find("layer.0.") != std::string::npos &&
        item.value().dim() == 2) {
      weight = item.value();
      weight_name = item.key();
    }
  }
  ASSERT_TRUE(weight.defined() && head.defined());
  EXPECT_EQ(fs::path(mapped_file_at(weight.data_ptr())).filename(), "model.safetensors")
      << weight_name << " is not a view of the checkpoint file";
  EXPECT_NE(fs::path(mapped_file_at(head.data_ptr())).filename(), "model.safetensors")
      << "the fresh head is not the model's own memory";

  std::string key = weight_name;  // the checkpoint may name it without the model's prefix
  if (!base.checkpoint.count(key)) key = weight_name.substr(weight_name.find('.') + 1);
  ASSERT_TRUE(base.checkpoint.count(key)) << weight_name;
  const at::Tensor& base_value = base.checkpoint.at(key);
  ASSERT_TRUE(at::equal(weight, base_value));
  {
    at::NoGradGuard no_grad;
    weight.add_(1.0);
  }
  EXPECT_TRUE(at::allclose(weight, base_value + 1.0));
  EXPECT_TRUE(at::equal(base.checkpoint.at(key), model::read_checkpoint(dir.path()).at(key)))
      << "a write to the model reached the BaseModel's checkpoint";
  EXPECT_TRUE(file_bytes(weights) == before) << "a write to the model reached the file";
  auto other = make_task_model(base, 2, 0);
  for (auto& item : other->named_parameters(true)) {
    if (item.key() == weight_name) {
      EXPECT_TRUE(at::equal(item.value(), base_value));
    }
  }

  // DELTATUNE_MAP_WEIGHTS=0: the weights are the model's own memory.
  ::setenv("DELTATUNE_MAP_WEIGHTS", "0", 1);
  auto copied = make_task_model(base, 2, 0);
  ::unsetenv("DELTATUNE_MAP_WEIGHTS");
  for (auto& item : copied->named_parameters(true)) {
    if (item.key() == weight_name) {
      EXPECT_NE(fs::path(mapped_file_at(item.value().data_ptr())).filename(), "model.safetensors");
      EXPECT_TRUE(at::equal(item.value(), base_value));
    }
  }
}

TEST(FrozenBaseWeights, OverlappingCheckpointTensorsAreCopiedNotTied) {
  torch::nn::Module module;
  at::Tensor first = module.register_parameter("first", at::zeros({4}));
  at::Tensor second = module.register_parameter("second", at::zeros({4}));
  const at::Tensor storage = at::arange(6, at::kFloat);
  // Two checkpoint tensors sharing two floats of one buffer.
  const std::map<std::string, at::Tensor> checkpoint = {{"first", storage.slice(0, 0, 4)},
                                                        {"second", storage.slice(0, 2, 6)}};
  model::load_state(module, checkpoint, "", "overlap", nullptr, model::LoadMode::kAdopt);
  EXPECT_TRUE(at::equal(first, at::arange(0, 4, at::kFloat)));
  EXPECT_TRUE(at::equal(second, at::arange(2, 6, at::kFloat)));
  {
    at::NoGradGuard no_grad;
    first.fill_(-1);
  }
  EXPECT_TRUE(at::equal(second, at::arange(2, 6, at::kFloat))) << "the parameters were tied";
}

// The model is built without drawing initial values (every parameter is
// loaded or initialised explicitly): what a base lacks besides the new head
// still gets HF's initialisation, and the head stays the seed's first draws.
TEST(TaskModelInitialisation, WhatTheBaseLacksIsDrawnAndTheHeadIsTheSeedsFirstDraws) {
  test::ScratchDir dir;
  dir.copy_from(test::minilm_dir(), "config.json");
  io::NamedTensors without_pooler;
  for (const auto& [name, value] : model::read_checkpoint(test::minilm_dir()))
    if (name.find("pooler.") == std::string::npos) without_pooler.emplace_back(name, value);
  io::save_safetensors(dir.path() / "model.safetensors", without_pooler);

  const BaseModel full = load_base(test::minilm_dir()), lacking = load_base(dir.path());
  auto reference = make_task_model(full, 3, 5);
  auto model = make_task_model(lacking, 3, 5);
  std::map<std::string, at::Tensor> values;
  for (const auto& item : reference->named_parameters(true)) values[item.key()] = item.value();
  int checked_pooler = 0;
  for (const auto& item : model->named_parameters(true)) {
    const std::string& name = item.key();
    const at::Tensor& value = item.value();
    ASSERT_TRUE(at::isfinite(value).all().item<bool>()) << name;
    if (name.find("pooler.") != std::string::npos) {
      ++checked_pooler;
      if (name.find(".bias") != std::string::npos) {
        EXPECT_TRUE(at::equal(value, at::zeros_like(value))) << name;
      } else {
        EXPECT_NEAR(value.std().item<double>(), 0.02, 0.002) << name;
        EXPECT_NEAR(value.mean().item<double>(), 0.0, 0.002) << name;
      }
    } else {
      EXPECT_TRUE(at::equal(value, values.at(name))) << name;  // classifier included
    }
  }
  EXPECT_EQ(checked_pooler, 2);
}

// --frozen-weights bf16: the frozen Dense weights become bf16 copies, and
// their fp32 pages of the mapped checkpoint leave memory (else both stay
// resident: BERT-base size BitFit in bf16 1,436 -> 1,108 MB); the base's own
// mapping still reads the file's values. Heap memory is never handed back.
TEST(FrozenBaseWeights, StoredInBf16TheirFp32PagesLeaveMemory) {
  const BaseModel base = load_base(test::minilm_dir());
  ASSERT_TRUE(model::checkpoint_is_file_mapped(test::minilm_dir()));
  auto model = make_task_model(base, 2, 0);
  auto method = methods::make_method("bitfit");
  method->attach(*model);
  double touched = 0;  // every weight read: its pages resident
  int64_t frozen_bytes = 0;
  for (const auto& item : model->named_parameters(true)) {
    touched += item.value().sum().item<double>();
    if (!item.value().requires_grad() && item.value().dim() == 2 &&
        item.key().find("embeddings") == std::string::npos)
      frozen_bytes += item.value().nbytes();
  }
  ASSERT_TRUE(std::isfinite(touched));
  const int64_t before = test::resident_file_kb();
  const int64_t saved = model::store_frozen_dense_weights(*model, at::kBFloat16);
  const int64_t after = test::resident_file_kb();
  EXPECT_EQ(saved, frozen_bytes / 2);
  EXPECT_GT(before - after, frozen_bytes / 1024 * 9 / 10)
      << "kB of fp32 weight pages should have left memory";
  const std::string name = "encoder.layer.0.attention.self.query.weight";
  EXPECT_TRUE(base.checkpoint.at(name).equal(
      io::SafetensorsFile::open(test::minilm_dir() / "model.safetensors").tensor(name)));

  std::vector<float> heap(1 << 20, 1.0f);
  EXPECT_EQ(io::release_mapped_pages(heap.data(), heap.size() * sizeof(float)), 0);
  EXPECT_EQ(heap[12345], 1.0f);
}

}  // namespace
}  // namespace deltatune::train
