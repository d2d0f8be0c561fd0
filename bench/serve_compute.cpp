// The serving engine's forward pass alone (no HTTP, no queue): sequences per
// second of batches whose rows are spread over T tasks, run as one mixed pass,
// grouped per task, or all of one task; and, for tasks with sparse weight
// changes, the per-row correction against a merged copy per batch.
//
//   serve_compute --tasks-dir DIR [--tasks 16] --texts sst2.txt --batch 32 --length 64
//                 --mode mixed|grouped|single [--sparse correction|merged] [--seconds 10] [--bf16]
//
// Prints one JSON line.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>

#include "deltatune/io/cpus.h"
#include "deltatune/serve/mixed_batch.h"
#include "deltatune/text/tokenizer.h"

using namespace deltatune;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  CLI::App app{"the serving engine's mixed forward pass, timed"};
  std::string model_dir, tasks_dir, texts_file, mode = "mixed", sparse = "correction";
  size_t tasks_wanted = 0, batch = 32, length = 64;
  double seconds = 10;
  int threads = 0;
  bool bf16 = false;
  app.add_option("--model", model_dir, "base model directory")->required();
  app.add_option("--tasks-dir", tasks_dir, "directory of delta directories")->required();
  app.add_option("--tasks", tasks_wanted, "first N tasks (0: all)");
  app.add_option("--texts", texts_file, "one text per line")->required();
  app.add_option("--batch", batch)->capture_default_str();
  app.add_option("--length", length, "tokens per row (texts cut or repeated to it)")
      ->capture_default_str();
  app.add_option("--mode", mode, "mixed, grouped or single")->capture_default_str();
  app.add_option("--sparse", sparse, "correction or merged")->capture_default_str();
  app.add_flag("--bf16", bf16, "passes under bf16 autocast (serve --bf16)");
  app.add_option("--seconds", seconds, "time spent measuring")->capture_default_str();
  app.add_option("--threads", threads, "intra-op threads (0: LibTorch's default)");
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) at::set_num_threads(threads);

  train::BaseModel base = train::load_base(model_dir);
  auto tokenizer = text::load_tokenizer(model_dir);
  auto shared = train::make_task_model(base, 1, 0);
  for (auto& p : shared->parameters(true)) p.requires_grad_(false);
  shared->eval();
  serve::TaskLoader loader(base, *shared);
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(tasks_dir))
    if (fs::exists(entry.path() / "delta.json")) dirs.push_back(entry.path());
  std::sort(dirs.begin(), dirs.end());
  if (tasks_wanted > 0 && tasks_wanted < dirs.size()) dirs.resize(tasks_wanted);
  std::vector<std::shared_ptr<const serve::ServedTask>> tasks;
  const double resident_before = io::resident_bytes();
  const auto load_start = Clock::now();
  for (const auto& dir : dirs) tasks.push_back(loader.load(dir.filename().string(), dir));
  const double load_seconds = std::chrono::duration<double>(Clock::now() - load_start).count();
  const double resident_loaded = io::resident_bytes();
  int64_t delta_bytes = 0, task_bytes = 0;
  for (const auto& t : tasks) delta_bytes += t->delta_bytes, task_bytes += t->resident_bytes;

  // Rows of exactly `length` tokens: a text's ids repeated, [CLS] ... [SEP].
  std::vector<std::string> texts;
  std::ifstream in(texts_file);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) texts.push_back(line);
  std::vector<text::Encoding> encodings;
  for (size_t r = 0; r < batch; ++r) {
    text::Encoding e = tokenizer->encode(texts[r % texts.size()], std::nullopt, 1 << 20);
    std::vector<int64_t> body(e.input_ids.begin() + 1, e.input_ids.end() - 1);
    text::Encoding fixed;
    fixed.input_ids.push_back(e.input_ids.front());
    for (size_t k = 0; fixed.input_ids.size() + 1 < length; ++k)
      fixed.input_ids.push_back(body[k % body.size()]);
    fixed.input_ids.push_back(e.input_ids.back());
    fixed.token_type_ids.assign(fixed.input_ids.size(), 0);
    fixed.attention_mask.assign(fixed.input_ids.size(), 1);
    encodings.push_back(fixed);
  }
  // Rows spread evenly over the tasks (single: all of task 0); successive
  // batches rotate, so every task is used.
  auto make_rows = [&](size_t iteration) {
    std::vector<serve::MixedRow> rows;
    for (size_t r = 0; r < batch; ++r) {
      const size_t t = mode == "single" ? 0 : (iteration * batch + r) % tasks.size();
      rows.push_back({tasks[t].get(), &encodings[r]});
    }
    return rows;
  };
  serve::MixedOptions options;
  options.sparse_weights =
      sparse == "merged" ? serve::SparseWeights::kMerged : serve::SparseWeights::kCorrection;
  options.precision = bf16 ? model::Precision::kBFloat16 : model::Precision::kFloat32;
  auto run = [&](size_t iteration) {
    at::NoGradGuard no_grad;
    auto rows = make_rows(iteration);
    if (mode != "grouped")
      return serve::mixed_forward(*shared, rows, tokenizer->pad_token_id(), options);
    std::map<const serve::ServedTask*, std::vector<serve::MixedRow>> groups;
    for (const auto& row : rows) groups[row.task].push_back(row);
    std::vector<at::Tensor> out;
    for (const auto& [task, group] : groups)
      for (auto& logits : serve::mixed_forward(*shared, group, tokenizer->pad_token_id(), options))
        out.push_back(logits);
    return out;
  };
  for (size_t i = 0; i < 3; ++i) run(i);
  size_t iterations = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  while (elapsed < seconds) {
    run(iterations++);
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  }
  nlohmann::json out = {{"mode", mode},
                        {"precision", bf16 ? "bf16" : "fp32"},
                        {"sparse", sparse},
                        {"tasks", tasks.size()},
                        {"method", tasks.front()->method},
                        {"batch", batch},
                        {"length", length},
                        {"threads", at::get_num_threads()},
                        {"iterations", iterations},
                        {"seq_per_s", static_cast<double>(iterations * batch) / elapsed},
                        {"load_seconds", load_seconds},
                        {"resident_growth_loading", resident_loaded - resident_before},
                        {"delta_bytes", delta_bytes},
                        {"task_tensor_bytes", task_bytes}};
  std::cout << out.dump() << std::endl;
  return 0;
}
