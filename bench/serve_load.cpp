// A bounded, closed-loop load generator for `deltatune serve` and for any
// server speaking TEI's POST /predict: `--clients` connections each send one
// request after the other until `--requests` have been answered; requests
// are spread evenly over the tasks (request i goes to task i mod T).
//
//   serve_load --url http://127.0.0.1:8080 --texts sst2.txt [--tasks 64]
//   serve_load --url http://127.0.0.1:9001 --url http://127.0.0.1:9002 ...   (one task per server)
//
// Prints one JSON line: requests/s, inputs/s, p50/p99 latency, failures.
#include <httplib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct Target {
  std::string host;
  int port = 0;
  std::string task;  // empty: the server's only task
  bool is_pair = false;
};

Target parse_url(const std::string& url) {
  const auto start = url.find("://");
  std::string rest = start == std::string::npos ? url : url.substr(start + 3);
  const auto colon = rest.rfind(':');
  Target t;
  t.host = rest.substr(0, colon);
  t.port = std::stoi(rest.substr(colon + 1));
  return t;
}

std::vector<std::string> read_lines(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  if (lines.empty()) throw std::runtime_error(path + ": no lines");
  return lines;
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t at = std::min(values.size() - 1, static_cast<size_t>(p * values.size()));
  return values[at];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"closed-loop load for TEI-style /predict servers"};
  std::vector<std::string> urls;
  std::string texts_file, pairs_file, label;
  size_t clients = 16, requests = 2000, batch = 1, tasks_wanted = 0;
  bool truncate = true;
  app.add_option("--url", urls, "server address; several: one task per server")->required();
  app.add_option("--texts", texts_file, "one input text per line (single-text tasks)")->required();
  app.add_option("--pairs", pairs_file, "TAB-separated text pairs per line (pair tasks)");
  app.add_option("--clients", clients, "concurrent connections")->capture_default_str();
  app.add_option("--requests", requests, "requests answered in total")->capture_default_str();
  app.add_option("--batch", batch, "inputs per request")->capture_default_str();
  app.add_option("--tasks", tasks_wanted, "use the first N tasks of GET /tasks (0: all)");
  app.add_option("--label", label, "name of this run in the output");
  CLI11_PARSE(app, argc, argv);

  std::vector<Target> targets;
  if (urls.size() == 1) {
    Target server = parse_url(urls[0]);
    httplib::Client client(server.host, server.port);
    auto listed = client.Get("/tasks");
    if (!listed || listed->status != 200) {
      std::cerr << "serve_load: GET /tasks failed\n";
      return 1;
    }
    for (const auto& t : json::parse(listed->body)) {
      Target target = server;
      target.task = t["name"];
      target.is_pair = t.value("is_pair", false);
      targets.push_back(target);
    }
    if (tasks_wanted > 0 && tasks_wanted < targets.size()) targets.resize(tasks_wanted);
    if (targets.empty()) targets.push_back(server);  // a server of one task that lists none
  } else {
    for (const auto& url : urls) targets.push_back(parse_url(url));
  }
  if (targets.empty()) {
    std::cerr << "serve_load: no tasks\n";
    return 1;
  }
  const auto texts = read_lines(texts_file);
  std::vector<std::pair<std::string, std::string>> pairs;
  if (!pairs_file.empty())
    for (const auto& line : read_lines(pairs_file)) {
      const auto tab = line.find('\t');
      pairs.emplace_back(line.substr(0, tab), tab == std::string::npos ? "" : line.substr(tab + 1));
    }

  auto body_of = [&](size_t index) {
    const Target& t = targets[index % targets.size()];
    json inputs = json::array();
    for (size_t k = 0; k < batch; ++k) {
      const size_t at = (index * batch + k);
      if (t.is_pair && !pairs.empty()) {
        const auto& p = pairs[at % pairs.size()];
        inputs.push_back({p.first, p.second});
      } else {
        inputs.push_back(json::array({texts[at % texts.size()]}));
      }
    }
    json body = {{"inputs", batch == 1 ? inputs[0] : inputs}, {"truncate", truncate}};
    if (batch == 1 && !t.is_pair) body["inputs"] = inputs[0][0];
    if (!t.task.empty()) body["task"] = t.task;
    return body.dump();
  };

  std::atomic<size_t> next{0}, failed{0};
  std::vector<std::vector<double>> latencies(clients);
  const size_t warmup = std::min<size_t>(2 * clients, requests);
  auto run = [&](size_t total, bool record) {
    next = 0;
    std::vector<std::thread> threads;
    for (size_t c = 0; c < clients; ++c)
      threads.emplace_back([&, c] {
        // One keep-alive connection per distinct server.
        std::vector<std::unique_ptr<httplib::Client>> connections;
        std::vector<size_t> connection_of(targets.size());
        for (size_t k = 0; k < targets.size(); ++k) {
          size_t found = k;
          for (size_t j = 0; j < k; ++j)
            if (targets[j].host == targets[k].host && targets[j].port == targets[k].port) found = j;
          if (found == k) {
            connection_of[k] = connections.size();
            connections.push_back(
                std::make_unique<httplib::Client>(targets[k].host, targets[k].port));
            connections.back()->set_keep_alive(true);
            connections.back()->set_read_timeout(120, 0);
          } else {
            connection_of[k] = connection_of[found];
          }
        }
        for (size_t i; (i = next++) < total;) {
          httplib::Client* connection = connections[connection_of[i % targets.size()]].get();
          const std::string body = body_of(i);
          const auto start = Clock::now();
          auto r = connection->Post("/predict", body, "application/json");
          const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
          if (!r || r->status != 200) {
            if (failed++ < 5)
              std::cerr << "serve_load: request " << i << ": "
                        << (r ? "HTTP " + std::to_string(r->status) + " " + r->body
                              : "transport error " + httplib::to_string(r.error()))
                        << "\n";
            continue;
          }
          if (record) latencies[c].push_back(ms);
        }
      });
    for (auto& t : threads) t.join();
  };
  run(warmup, false);
  failed = 0;
  const auto start = Clock::now();
  run(requests, true);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  json out = {{"label", label},
              {"servers", urls.size()},
              {"tasks", targets.size()},
              {"clients", clients},
              {"batch", batch},
              {"requests", requests},
              {"failed", failed.load()},
              {"seconds", seconds},
              {"requests_per_s", static_cast<double>(all.size()) / seconds},
              {"inputs_per_s", static_cast<double>(all.size() * batch) / seconds},
              {"p50_ms", percentile(all, 0.50)},
              {"p99_ms", percentile(all, 0.99)}};
  std::cout << out.dump() << std::endl;
  return failed > 0 ? 2 : 0;
}
