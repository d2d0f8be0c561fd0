// deltatune sweep CONFIG: methods x tasks x seeds x training-set sizes, each
// cell an ordinary `deltatune train` run in its own directory (variants add
// named flag sets as one more dimension). Resumable: a
// cell whose summary.json exists is finished and skipped. Every cell's
// command line is checked by train's own parser before anything runs. A cell
// interrupted after a checkpoint (flags with --checkpoint-every) resumes.
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "commands.h"
#include "deltatune/data/task.h"
#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/io/progress.h"
#include "deltatune/io/yaml.h"
#include "deltatune/methods/method.h"
#include "deltatune/train/trainer.h"

extern char** environ;

namespace deltatune::cli {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

bool is_glue_task(const std::string& name) {
  try {
    data::find_glue_task(name);
    return true;
  } catch (const Error&) {
    return false;
  }
}

struct SweepOptions {
  std::string config;
  std::string out;
  std::string model_dir = default_model_dir();
  int threads = 0;
  bool json_output = false;
  bool dry_run = false;
};

struct Cell {
  std::string task, method;
  std::string variant;  // a name from the config's "variants"; empty: none
  int64_t seed = 0;
  std::optional<int64_t> train_size;  // --max-train-samples; none: the whole set
  std::vector<std::string> flags;     // the cell's own train flags, in order
  int nproc = 1;                      // > 1: a data-parallel job of this many ranks
  fs::path directory;
  std::string describe(size_t index, size_t count) const {
    return fmt::format("cell {} of {} (task {}, method {}{}, seed {}{})", index + 1, count, task,
                       method, variant.empty() ? std::string() : ", variant " + variant, seed,
                       train_size ? fmt::format(", {} examples", *train_size) : std::string());
  }
  // What the cell is, for its directory's cell.json (read by `deltatune report`).
  json to_json() const {
    return {{"task", task},
            {"method", method},
            {"variant", variant.empty() ? json() : json(variant)},
            {"seed", seed},
            {"train_size", train_size ? json(*train_size) : json()},
            {"flags", flags},
            {"nproc", nproc}};
  }
};

// ${NAME} in a string value: CONFIG_DIR (the config file's directory) or an
// environment variable; an unset one is an error naming it.
std::string expand_variables(const std::string& text, const fs::path& config_dir,
                             const std::string& where) {
  std::string out;
  for (size_t at = 0; at < text.size();) {
    const size_t start = text.find("${", at);
    if (start == std::string::npos) {
      out += text.substr(at);
      break;
    }
    const size_t end = text.find('}', start);
    if (end == std::string::npos) throw Error(where + ": unclosed ${ in '" + text + "'");
    out += text.substr(at, start - at);
    const std::string name = text.substr(start + 2, end - start - 2);
    if (name == "CONFIG_DIR") {
      out += config_dir.string();
    } else if (const char* value = std::getenv(name.c_str())) {
      out += value;
    } else {
      throw Error(where + ": ${" + name + "} is not set (CONFIG_DIR or an environment variable)");
    }
    at = end + 1;
  }
  return out;
}

// Every string of a config (values, not keys) with its ${NAME}s expanded.
json expand_config(const json& value, const fs::path& config_dir, const std::string& where) {
  if (value.is_string()) return expand_variables(value.get<std::string>(), config_dir, where);
  if (value.is_array() || value.is_object()) {
    json out = value;
    for (auto& [key, item] : out.items())
      item = expand_config(item, config_dir, where + (value.is_object() ? "." + key : ""));
    return out;
  }
  return value;
}

// {"--flag": value, ...} as command-line words: true adds the bare flag,
// false and null add nothing, arrays join with commas.
std::vector<std::string> flag_words(const json& flags, const std::string& where) {
  std::vector<std::string> words;
  if (flags.is_null()) return words;
  if (!flags.is_object()) throw Error(where + ": flags must be an object like {\"--epochs\": 3}");
  for (const auto& [flag, value] : flags.items()) {
    if (flag.rfind("--", 0) != 0)
      throw Error(fmt::format("{}: flag '{}' must start with --", where, flag));
    if (value.is_null() || (value.is_boolean() && !value.get<bool>())) continue;
    if (value.is_boolean()) {
      words.push_back(flag);
    } else if (value.is_string()) {
      words.insert(words.end(), {flag, value.get<std::string>()});
    } else if (value.is_array()) {
      std::string joined;
      for (const auto& item : value)
        joined += (joined.empty() ? "" : ",") +
                  (item.is_string() ? item.get<std::string>() : item.dump());
      words.insert(words.end(), {flag, joined});
    } else {
      words.insert(words.end(), {flag, value.dump()});
    }
  }
  return words;
}

template <typename T>
std::vector<T> list_of(const json& config, const char* key, std::vector<T> otherwise) {
  if (!config.contains(key)) return otherwise;
  const json& value = config[key];
  if (!value.is_array() || value.empty())
    throw Error(fmt::format("sweep config: '{}' must be a non-empty list", key));
  try {
    return value.get<std::vector<T>>();
  } catch (const json::exception&) {
    throw Error(fmt::format("sweep config: '{}' holds a value of the wrong type", key));
  }
}

// The cells of a config, in the order they run: tasks, then methods, then
// training-set sizes, then seeds.
std::vector<Cell> cells_of(const json& config, const fs::path& out) {
  if (!config.is_object()) throw Error("sweep config: expected a JSON object");
  for (const auto& [key, value] : config.items()) {
    static const std::vector<std::string> known = {"methods",      "tasks",      "seeds",
                                                   "train_sizes",  "variants",   "flags",
                                                   "method_flags", "task_flags", "nproc"};
    if (std::find(known.begin(), known.end(), key) == known.end())
      throw Error(
          fmt::format("sweep config: unknown key '{}' (known: methods, tasks, seeds, "
                      "train_sizes, variants, flags, method_flags, task_flags, nproc)",
                      key));
  }
  if (!config.contains("methods") || !config.contains("tasks"))
    throw Error("sweep config: 'methods' and 'tasks' are required");
  const auto methods = list_of<std::string>(config, "methods", {});
  const auto tasks = list_of<std::string>(config, "tasks", {});
  const auto seeds = list_of<int64_t>(config, "seeds", {0});
  std::vector<std::optional<int64_t>> sizes{std::nullopt};
  if (config.contains("train_sizes")) {
    sizes.clear();
    for (const json& size : list_of<json>(config, "train_sizes", {})) {
      if (size.is_null()) {
        sizes.push_back(std::nullopt);
      } else if (size.is_number_integer() && size.get<int64_t>() > 0) {
        sizes.push_back(size.get<int64_t>());
      } else {
        throw Error("sweep config: 'train_sizes' entries are positive integers or null (all)");
      }
    }
  }
  // Named flag sets, one more dimension (e.g. which encoder a head starts from).
  std::vector<std::pair<std::string, std::vector<std::string>>> variants{{"", {}}};
  if (config.contains("variants")) {
    const json& given = config["variants"];
    if (!given.is_object() || given.empty())
      throw Error("sweep config: 'variants' must be an object of named flag sets");
    variants.clear();
    for (const auto& [name, flags] : given.items())
      variants.emplace_back(name, flag_words(flags, "sweep config: variants." + name));
  }
  const json nproc = config.value("nproc", json(1));
  if (!nproc.is_number_integer() || nproc.get<int64_t>() < 1 || nproc.get<int64_t>() > 1024)
    throw Error("sweep config: 'nproc' must be a whole number of ranks from 1 to 1024");
  const json method_flags = config.value("method_flags", json::object());
  const json task_flags = config.value("task_flags", json::object());
  const std::vector<std::string> global =
      flag_words(config.value("flags", json::object()), "sweep config: flags");
  std::vector<Cell> cells;
  for (const auto& task : tasks) {
    const std::vector<std::string> for_task =
        flag_words(task_flags.value(task, json::object()), "sweep config: task_flags." + task);
    for (const auto& method : methods) {
      // Global flags, then the method's, then the task's; a flag given at two
      // levels is refused by train's parser in check_cells, naming the cell.
      std::vector<std::string> flags = global;
      for (const auto& words : {flag_words(method_flags.value(method, json::object()),
                                           "sweep config: method_flags." + method),
                                for_task})
        flags.insert(flags.end(), words.begin(), words.end());
      for (const auto& [variant, variant_flags] : variants)
        for (const auto& size : sizes)
          for (int64_t seed : seeds) {
            Cell cell{task, method, variant, seed, size, flags, nproc.get<int>(), {}};
            cell.flags.insert(cell.flags.end(), variant_flags.begin(), variant_flags.end());
            fs::path dir = out / task / method;
            if (!variant.empty()) dir /= variant;
            if (size) dir /= "n" + std::to_string(*size);
            cell.directory = dir / ("seed" + std::to_string(seed));
            cells.push_back(std::move(cell));
          }
    }
  }
  return cells;
}

// The words after `deltatune` of the cell's train command.
std::vector<std::string> train_words(const Cell& cell, const SweepOptions& o) {
  std::vector<std::string> words = {"train", "--method", cell.method, "--seed",
                                    std::to_string(cell.seed)};
  if (is_glue_task(cell.task)) words.insert(words.end(), {"--task", cell.task});
  if (cell.train_size)
    words.insert(words.end(), {"--max-train-samples", std::to_string(*cell.train_size)});
  words.insert(words.end(), cell.flags.begin(), cell.flags.end());
  words.insert(words.end(), {"--model", o.model_dir, "--out", cell.directory.string(), "--json"});
  if (o.threads > 0) words.insert(words.end(), {"--threads", std::to_string(o.threads)});
  return words;
}

// The words after `deltatune` that run a cell: its train command, as the
// ranks of `deltatune launch` when it has more than one.
std::vector<std::string> cell_words(const Cell& cell, const SweepOptions& o) {
  std::vector<std::string> words = train_words(cell, o);
  if (cell.nproc > 1)
    words.insert(words.begin(), {"launch", "--nproc", std::to_string(cell.nproc), "--"});
  return words;
}

// Refuses, before any cell runs, a cell that train would refuse at parse
// time or that names an unknown method or task, naming the cell.
void check_cells(const std::vector<Cell>& cells, const SweepOptions& o) {
  const std::vector<std::string> methods = methods::method_names();
  for (size_t i = 0; i < cells.size(); ++i) {
    const Cell& cell = cells[i];
    const std::string where = cell.describe(i, cells.size());
    if (std::find(methods.begin(), methods.end(), cell.method) == methods.end())
      throw Error(fmt::format("{}: unknown method '{}' (known: {})", where, cell.method,
                              fmt::join(methods, ", ")));
    const bool user_data =
        std::find(cell.flags.begin(), cell.flags.end(), "--train") != cell.flags.end();
    if (!is_glue_task(cell.task) && !user_data)
      throw Error(fmt::format(
          "{}: '{}' is not a GLUE task; a user task needs task_flags.{} with --train and --dev",
          where, cell.task, cell.task));
    std::vector<std::string> words = train_words(cell, o);
    words.insert(words.begin(), "deltatune");
    std::vector<const char*> argv;
    for (const auto& w : words) argv.push_back(w.c_str());
    CLI::App app;
    Action action;
    int threads = 0;
    register_training_verbs(app, action, threads);
    try {
      app.parse(static_cast<int>(argv.size()), argv.data());
    } catch (const CLI::ParseError& e) {
      throw Error(fmt::format("{}: {}", where, e.what()));
    }
  }
}

std::atomic<int> stop_signal{0};
std::atomic<pid_t> running_child{0};
extern "C" void forward_stop(int signal) {
  stop_signal.store(signal);
  if (const pid_t child = running_child.load(); child > 0) ::kill(child, signal);
}

// Runs one cell as `deltatune train ...` (this same binary), its output in
// the cell's train.log. Returns the exit status (128 + signal when killed).
int run_cell(const Cell& cell, const SweepOptions& o) {
  std::error_code ec;
  fs::create_directories(cell.directory, ec);
  if (ec) throw Error("cannot create " + cell.directory.string() + ": " + ec.message());
  io::write_text_atomically(cell.directory / "cell.json", cell.to_json().dump(2) + "\n");
  std::vector<std::string> words = cell_words(cell, o);
  // An unfinished cell continues from its checkpoint where it has one (flags
  // with --checkpoint-every); otherwise it starts again from scratch.
  const bool resume = train::has_checkpoint(cell.directory);
  words.push_back(resume ? "--resume" : "--overwrite");
  // The cell runs this very binary: spawned through /proc/self/exe, which
  // stays this process's executable even once its file is replaced or
  // removed (an upgrade during a days-long sweep); its path, with the
  // kernel's " (deleted)" mark, is only the cell's argv[0].
  words.insert(words.begin(), fs::read_symlink("/proc/self/exe").string());
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  const std::string log = (cell.directory / "train.log").string();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | (resume ? O_APPEND : O_TRUNC), 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) throw Error(std::string("cannot start a cell: ") + std::strerror(spawned));
  running_child.store(pid);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  running_child.store(0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// One result record per cell: its settings, status and (finished) summary.
json record_of(const Cell& cell, const std::string& status) {
  json record = cell.to_json();
  record["directory"] = cell.directory.string();
  record["status"] = status;
  const fs::path summary = cell.directory / "summary.json";
  if (fs::exists(summary)) record["summary"] = json::parse(io::read_text_file(summary));
  return record;
}

void write_results(const fs::path& path, const std::vector<json>& records) {
  std::string lines;
  for (const json& r : records) lines += r.dump() + "\n";
  io::write_text_atomically(path, lines);
}

void print_table(const std::vector<json>& records) {
  fmt::print("{:<8} {:<24} {:>5} {:>7} {:>22} {:>10} {:>9}  {}\n", "task", "method", "seed", "n",
             "dev", "delta KB", "tok/s", "status");
  for (const json& r : records) {
    std::string dev = "-", delta = "-", speed = "-";
    if (r.contains("summary")) {
      const json& s = r["summary"];
      const json& d = s.value("dev", json::object());
      const std::string metric = d.value("main_metric", std::string("?"));
      dev = fmt::format("{} {:.4f}", metric, d.value(metric, 0.0));
      delta = fmt::format("{:.1f}", s.value("delta_bytes", 0) / 1024.0);
      speed = fmt::format("{:.0f}", s.value("train_tokens_per_s", 0.0));
    }
    fmt::print("{:<8} {:<24} {:>5} {:>7} {:>22} {:>10} {:>9}  {}\n", r["task"].get<std::string>(),
               r["method"].get<std::string>() +
                   (r["variant"].is_null() ? "" : "/" + r["variant"].get<std::string>()),
               r["seed"].get<int64_t>(),
               r["train_size"].is_null() ? std::string("all") : r["train_size"].dump(), dev, delta,
               speed, r["status"].get<std::string>());
  }
}

int run_sweep(SweepOptions& o) {
  json config;
  const std::string extension = fs::path(o.config).extension().string();
  if (extension == ".yaml" || extension == ".yml") {
    config = io::parse_yaml(io::read_text_file(o.config), o.config);
  } else {
    try {
      config = json::parse(io::read_text_file(o.config));
    } catch (const json::exception& e) {
      throw Error(o.config + ": not valid JSON (" + e.what() + ")");
    }
  }
  config = expand_config(config, fs::weakly_canonical(fs::absolute(o.config)).parent_path(),
                         "sweep config");
  // Default: beside the config, named like it without its extension.
  fs::path out = o.out.empty() ? fs::path(o.config).replace_extension("") : fs::path(o.out);
  if (o.out.empty() && out == fs::path(o.config)) out += ".runs";
  const std::vector<Cell> cells = cells_of(config, out);
  check_cells(cells, o);
  if (o.dry_run) {
    for (size_t i = 0; i < cells.size(); ++i) {
      std::vector<std::string> words = cell_words(cells[i], o);
      fmt::print("deltatune {}\n", fmt::join(words, " "));
    }
    return 0;
  }
  fs::create_directories(out);
  // The config beside its results, for `deltatune report`.
  io::write_text_atomically(out / "sweep.json", config.dump(2) + "\n");
  struct sigaction action {};
  action.sa_handler = forward_stop;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);

  size_t skipped = 0, failed = 0;
  std::vector<json> records;
  io::ProgressBar bar("sweep", static_cast<int64_t>(cells.size()));
  for (size_t i = 0; i < cells.size() && stop_signal.load() == 0; ++i) {
    const Cell& cell = cells[i];
    if (fs::exists(cell.directory / "summary.json")) {
      ++skipped;
      records.push_back(record_of(cell, "finished earlier"));
      bar.advance(1);
      continue;
    }
    bar.set_suffix(fmt::format("{} {} seed {}", cell.task, cell.method, cell.seed));
    const int status = run_cell(cell, o);
    if (stop_signal.load() != 0) break;
    if (status != 0) ++failed;
    records.push_back(record_of(
        cell, status == 0 ? "ran" : fmt::format("failed (exit {}, see train.log)", status)));
    // After every cell: a long sweep's results so far can be read (and reported) while it runs.
    write_results(out / "results.jsonl", records);
    bar.advance(1);
  }
  bar.finish();
  write_results(out / "results.jsonl", records);
  if (const int signal = stop_signal.load(); signal != 0) {
    fmt::print(stderr,
               "sweep stopped by signal {}: {} of {} cells recorded; run it again to go on\n",
               signal, records.size(), cells.size());
    return 128 + signal;
  }
  if (o.json_output) {
    fmt::print("{}\n", json(records).dump());
  } else {
    print_table(records);
    fmt::print("{} cells: {} ran, {} finished earlier, {} failed; results in {}\n", cells.size(),
               cells.size() - skipped - failed, skipped, failed, (out / "results.jsonl").string());
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace

void register_sweep_verb(CLI::App& app, Action& action) {
  auto o = std::make_shared<SweepOptions>();
  auto* sweep = app.add_subcommand(
      "sweep", "train every cell of methods x tasks x seeds x training-set sizes (resumable)");
  sweep
      ->add_option(
          "config", o->config,
          "YAML (.yaml, .yml) or JSON: {\"methods\": [...], \"tasks\": [...], \"seeds\": [...], "
          "\"train_sizes\": [...], \"variants\": {NAME: {...}}, \"flags\": {...}, "
          "\"method_flags\": {METHOD: {...}}, \"task_flags\": {TASK: {...}}, \"nproc\": N}; "
          "${CONFIG_DIR} and ${ENV_VAR} expand in values")
      ->required();
  sweep->add_option("--out,-o", o->out, "sweep directory (default: the config's name)");
  sweep->add_option("--model,-m", o->model_dir, "base model directory")->capture_default_str();
  sweep->add_option("--threads", o->threads, "intra-op threads of each cell (0: every CPU)");
  sweep->add_flag("--json", o->json_output, "print the results as JSON");
  sweep->add_flag("--dry-run", o->dry_run, "check the config and print each cell's command");
  sweep->callback([&action, o] { action = [o] { return run_sweep(*o); }; });
}

}  // namespace deltatune::cli
