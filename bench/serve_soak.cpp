// A bounded soak of `deltatune serve` over loopback (docs/RELIABILITY.md):
// `--clients` connections send random valid and invalid requests for
// `--seconds`, while one more thread hot-loads and unloads a task again and
// again, and another samples the server's resident memory.
//
//   serve_soak --url http://127.0.0.1:8080 --pid PID --texts sst2.txt
//              --hot-task NAME=DELTA_DIR [--clients 64] [--seconds 180]
//
// Success: no 5xx other than 503 (and 429 under overload), the server alive at
// the end, and resident memory flat after the warm-up (the first quarter).
// Prints one JSON line; exits 1 when a success condition fails.
#include <httplib.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

int64_t resident_bytes_of(int pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}

// One random request body: valid ones of TEI's forms for the resident tasks,
// or one of the kinds of bad input the server must refuse with a 4xx.
struct Task {
  std::string name;
  bool is_pair = false;
};

std::pair<std::string, bool> random_body(std::mt19937_64& rng, const std::vector<Task>& tasks,
                                         const std::vector<std::string>& texts,
                                         const std::string& hot_task) {
  auto pick = [&] { return texts[rng() % texts.size()]; };
  const std::string text = pick();
  const Task& chosen = tasks[rng() % tasks.size()];
  const std::string& task = chosen.name;
  // One input of the task's form: a text, or a [text_a, text_b] pair.
  auto input = [&]() -> json {
    return chosen.is_pair ? json::array({pick(), pick()}) : json(pick());
  };
  switch (rng() % 12) {
    case 0:
      return {json{{"inputs", input()}, {"task", task}, {"truncate", true}}.dump(), true};
    case 1:
      return {json{{"inputs", input()}, {"adapter_id", task}, {"truncate", true}}.dump(), true};
    case 2: {
      json batch = json::array();
      for (int i = 0, n = 1 + static_cast<int>(rng() % 8); i < n; ++i)
        batch.push_back(chosen.is_pair ? json::array({pick(), pick()}) : json::array({pick()}));
      return {
          json{
              {"inputs", batch}, {"task", task}, {"raw_scores", rng() % 2 == 0}, {"truncate", true}}
              .dump(),
          true};
    }
    case 3: {  // a task per item, the hot one among them (may be unloaded: 404)
      json batch = json::array(), names = json::array();
      for (int i = 0; i < 4; ++i) {
        batch.push_back(json::array({texts[rng() % texts.size()]}));
        names.push_back(i == 0 ? hot_task : tasks[rng() % tasks.size()].name);
      }
      return {json{{"inputs", batch}, {"task", names}}.dump(), false};
    }
    case 4:
      return {json{{"inputs", {text, text}}, {"task", task}}.dump(), false};
    case 5:
      return {"{\"inputs\": [\"unterminated", false};
    case 6:
      return {json{{"inputs", 42}, {"task", task}}.dump(), false};
    case 7:
      return {json{{"inputs", text}, {"task", "no-such-task"}}.dump(), false};
    case 8:
      return {json{{"inputs", json::array()}, {"task", task}}.dump(), false};
    case 9:
      return {json{{"inputs", std::string(70000, 'a')}, {"task", task}}.dump(), false};
    case 10: {  // random bytes
      std::string bytes(1 + rng() % 200, '\0');
      for (char& c : bytes) c = static_cast<char>(rng());
      return {bytes, false};
    }
    default:
      return {json{{"inputs", {{text, text, text}}}, {"task", task}}.dump(), false};
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bounded soak of deltatune serve"};
  std::string url, texts_file, hot;
  int pid = 0;
  size_t clients = 64;
  double seconds = 180;
  app.add_option("--url", url, "server address")->required();
  app.add_option("--pid", pid, "the server's process id (resident memory)")->required();
  app.add_option("--texts", texts_file, "one input text per line")->required();
  app.add_option("--hot-task", hot,
                 "NAME=DELTA_DIR loaded and unloaded over and over (none: no hot loading)");
  app.add_option("--clients", clients, "concurrent connections")->capture_default_str();
  app.add_option("--seconds", seconds, "length of the soak")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const auto colon = url.rfind(':');
  const std::string host = url.substr(url.find("://") + 3, colon - url.find("://") - 3);
  const int port = std::stoi(url.substr(colon + 1));
  const std::string hot_name = hot.substr(0, hot.find('=')),
                    hot_dir = hot.substr(hot.find('=') + 1);
  std::vector<std::string> texts;
  {
    std::ifstream in(texts_file);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) texts.push_back(line);
  }
  std::vector<Task> tasks;
  {
    httplib::Client client(host, port);
    auto listed = client.Get("/tasks");
    if (!listed || listed->status != 200 || texts.empty()) {
      std::cerr << "serve_soak: GET /tasks failed or no texts\n";
      return 1;
    }
    for (const auto& t : json::parse(listed->body))
      if (t["name"] != hot_name) tasks.push_back({t["name"], t.value("is_pair", false)});
  }
  if (tasks.empty()) {
    std::cerr << "serve_soak: the server has no resident task\n";
    return 1;
  }

  const auto start = Clock::now();
  const auto end = start + std::chrono::duration<double>(seconds);
  std::mutex mutex;
  std::map<int, int64_t> statuses;  // HTTP status -> count; 0: no answer
  std::atomic<int64_t> valid_failed{0}, loads{0}, unloads{0}, shown{0};
  std::vector<std::thread> threads;
  for (size_t c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      std::mt19937_64 rng(1000 + c);
      httplib::Client client(host, port);
      client.set_read_timeout(60, 0);
      std::map<int, int64_t> mine;
      while (Clock::now() < end) {
        auto [body, valid] = random_body(rng, tasks, texts, hot_name);
        auto answer = client.Post("/predict", body, "application/json");
        const int status = answer ? answer->status : 0;
        ++mine[status];
        const bool failed = valid && status != 200 && status != 429 && status != 503;
        if (failed) ++valid_failed;
        if ((failed || status >= 500) && shown++ < 6) {
          std::lock_guard<std::mutex> lock(mutex);
          std::cerr << "serve_soak: " << status << " for " << body.substr(0, 200) << " -> "
                    << (answer ? answer->body.substr(0, 300) : std::string("no answer")) << "\n";
        }
      }
      std::lock_guard<std::mutex> lock(mutex);
      for (auto [status, n] : mine) statuses[status] += n;
    });
  if (!hot.empty())
    threads.emplace_back([&] {  // hot load and unload
      httplib::Client client(host, port);
      client.set_read_timeout(60, 0);
      while (Clock::now() < end) {
        auto loaded = client.Post("/tasks", json{{"name", hot_name}, {"path", hot_dir}}.dump(),
                                  "application/json");
        if (loaded && loaded->status / 100 == 2) ++loads;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        auto removed = client.Delete("/tasks/" + hot_name);
        if (removed && removed->status / 100 == 2) ++unloads;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
  std::vector<std::pair<double, int64_t>> rss;  // (seconds, bytes)
  threads.emplace_back([&] {
    while (Clock::now() < end) {
      rss.emplace_back(std::chrono::duration<double>(Clock::now() - start).count(),
                       resident_bytes_of(pid));
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  });
  for (auto& t : threads) t.join();

  // Memory after the warm-up (the first quarter): its first and last thirds'
  // medians, and the highest sample.
  std::vector<int64_t> after;
  for (const auto& [at, bytes] : rss)
    if (at >= seconds / 4 && bytes > 0) after.push_back(bytes);
  auto median = [](std::vector<int64_t> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
  };
  const size_t third = after.size() / 3;
  const int64_t early = median({after.begin(), after.begin() + third});
  const int64_t late = median({after.end() - third, after.end()});
  const int64_t peak = after.empty() ? 0 : *std::max_element(after.begin(), after.end());
  int64_t total = 0, server_errors = 0, unanswered = statuses[0];
  json by_status = json::object();
  for (auto [status, n] : statuses) {
    total += n;
    by_status[std::to_string(status)] = n;
    if (status >= 500 && status != 503) server_errors += n;
  }
  const bool alive = ::kill(pid, 0) == 0;
  json every_ten_seconds = json::array();
  for (size_t i = 0; i < rss.size(); i += 10)
    every_ten_seconds.push_back(std::round(rss[i].second / 1e5) / 10);
  const double growth = early > 0 ? static_cast<double>(late) / early : 0;
  const bool flat = growth > 0 && growth < 1.05;
  json out = {{"seconds", seconds},
              {"clients", clients},
              {"requests", total},
              {"by_status", by_status},
              {"server_errors_5xx_not_503", server_errors},
              {"unanswered", unanswered},
              {"valid_requests_failed", valid_failed.load()},
              {"hot_loads", loads.load()},
              {"hot_unloads", unloads.load()},
              {"rss_after_warmup_mb", early / 1e6},
              {"rss_end_mb", late / 1e6},
              {"rss_peak_mb", peak / 1e6},
              {"rss_growth", growth},
              {"rss_every_10s_mb", every_ten_seconds},
              {"server_alive", alive}};
  std::cout << out.dump() << "\n";
  return server_errors == 0 && unanswered == 0 && valid_failed == 0 && alive && flat ? 0 : 1;
}
