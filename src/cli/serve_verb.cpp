// deltatune serve: flag parsing over serve::Engine and serve::serve_http.
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "deltatune/error.h"
#include "deltatune/serve/engine.h"
#include "deltatune/serve/http_server.h"
#include "deltatune/text/tokenizer.h"

namespace deltatune::cli {
namespace fs = std::filesystem;

namespace {

struct ServeOptions {
  std::string model_dir = default_model_dir();
  std::vector<std::string> tasks;  // NAME=DELTA_DIR
  std::string tasks_dir;
  serve::HttpOptions http;
  serve::EngineOptions engine;
  double max_wait_ms = 2;
  bool group_per_task = false;
  bool allow_base_mismatch = false;
  std::string device = "auto";
  std::string precision = "fp32";
};

int run_serve(ServeOptions& o) {
  std::vector<std::pair<std::string, fs::path>> deltas;
  for (const std::string& spec : o.tasks) {
    const auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      throw Error("--task '" + spec + "': expected NAME=DELTA_DIR");
    deltas.emplace_back(spec.substr(0, eq), spec.substr(eq + 1));
  }
  if (!o.tasks_dir.empty()) {
    if (!fs::is_directory(o.tasks_dir))
      throw Error("--tasks-dir " + o.tasks_dir + ": not a directory");
    std::vector<fs::path> found;
    for (const auto& entry : fs::directory_iterator(o.tasks_dir))
      if (entry.is_directory() && (fs::exists(entry.path() / "delta.json") ||
                                   fs::exists(entry.path() / "adapter_config.json")))
        found.push_back(entry.path());
    std::sort(found.begin(), found.end());
    for (const auto& dir : found) deltas.emplace_back(dir.filename().string(), dir);
  }
  if (deltas.empty()) fmt::print(stderr, "deltatune serve: no task yet (POST /tasks loads one)\n");
  o.engine.max_wait = std::chrono::microseconds(static_cast<int64_t>(o.max_wait_ms * 1000));
  o.engine.group_per_task = o.group_per_task;
  o.engine.device = model::parse_device(o.device);
  o.engine.mixed.precision =
      forward_precision(o.precision, o.engine.device, "serve", &o.engine.precision_probe);
  train::BaseModel base = train::load_base(o.model_dir);
  base.allow_mismatch = o.allow_base_mismatch;
  serve::Engine engine(std::move(base), text::load_tokenizer(o.model_dir), o.engine);
  const auto start = std::chrono::steady_clock::now();
  for (const auto& [name, dir] : deltas) engine.load_task(name, dir);
  if (!deltas.empty())
    fmt::print(stderr, "deltatune serve: {} tasks loaded in {:.1f} s\n", deltas.size(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  if (const auto warm = engine.warm_up(); !warm.empty())
    fmt::print(stderr, "deltatune serve: warmed up with a batch of {} x {} tokens in {:.1f} s\n",
               warm["rows"].get<size_t>(), warm["tokens_per_row"].get<size_t>(),
               warm["seconds"].get<double>());
  return serve::serve_http(engine, o.http, [&](int port) {
    fmt::print("deltatune serve: {} on http://{}:{}\n", engine.base().name, o.http.host, port);
    std::fflush(stdout);
  });
}

}  // namespace

void register_serve_verb(CLI::App& app, Action& action, int& threads) {
  auto o = std::make_shared<ServeOptions>();
  auto* serve = app.add_subcommand(
      "serve", "serve many tasks on one base over HTTP (TEI's /predict API), batched together");
  serve->add_option("--model,-m", o->model_dir, "base model directory")->capture_default_str();
  serve->add_option("--task", o->tasks, "NAME=DELTA_DIR, once per task");
  serve->add_option("--tasks-dir", o->tasks_dir,
                    "serve every delta directory in DIR under its name");
  serve->add_option("--host", o->http.host, "address to listen on")->capture_default_str();
  serve->add_option("--port,-p", o->http.port, "port (0: any free one)")->capture_default_str();
  serve
      ->add_option("--max-batch-tokens", o->engine.max_batch_tokens,
                   "padded tokens per batch (rows x longest)")
      ->capture_default_str();
  serve->add_option("--max-batch-requests", o->engine.max_batch_rows, "inputs per batch")
      ->capture_default_str();
  serve->add_option("--max-wait-ms", o->max_wait_ms, "longest an input waits for its batch to fill")
      ->capture_default_str();
  serve->add_option("--max-queue", o->engine.queue_capacity, "inputs waiting at most; beyond, 429")
      ->capture_default_str();
  serve
      ->add_option("--max-client-batch-size", o->engine.max_client_batch_size, "inputs per request")
      ->capture_default_str();
  serve->add_option("--tokenization-workers", o->engine.tokenizer_threads, "tokenizer threads")
      ->capture_default_str();
  serve
      ->add_option("--batch-workers", o->engine.batch_workers,
                   "batches run at once, sharing --threads")
      ->capture_default_str();
  serve->add_flag("--auto-truncate", o->engine.auto_truncate,
                  "truncate inputs over a task's max length instead of refusing them");
  serve->add_option("--payload-limit", o->http.payload_limit, "bytes of a request body")
      ->capture_default_str();
  serve->add_option("--http-threads", o->http.http_threads, "connections served at once")
      ->capture_default_str();
  serve
      ->add_option("--pass-overhead-tokens", o->engine.pass_overhead_tokens,
                   "a batch splits into passes over rows of similar length when the padding "
                   "saved exceeds this many tokens per extra pass")
      ->capture_default_str();
  serve->add_flag("--group-per-task", o->group_per_task,
                  "run each task's rows of a batch separately (for comparison)");
  serve->add_flag("--allow-base-mismatch", o->allow_base_mismatch,
                  "load deltas made on another base (checksum differs) with a warning instead "
                  "of refusing them");
  serve->add_option("--device", o->device, kDeviceHelp)->capture_default_str();
  add_precision_option(serve, o->precision);
  serve->add_option("--threads", threads,
                    "intra-op threads of the forward pass (0: every CPU the process may use)");
  serve->callback([&action, o] { action = [o] { return run_serve(*o); }; });
}

}  // namespace deltatune::cli
