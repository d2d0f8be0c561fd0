#include "deltatune/serve/http_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fmt/format.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <thread>

namespace deltatune::serve {
using json = nlohmann::json;

namespace {

std::atomic<int> g_signal{0};

extern "C" void on_stop_signal(int number) { g_signal = number; }

json error_body(const std::string& message, const std::string& type) {
  return {{"error", message}, {"error_type", type}};
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // Messages may quote what a client sent, invalid UTF-8 included: replaced, never thrown.
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, const ServeError& error) {
  send_json(res, error.http_status(), error_body(error.what(), error.type_name()));
}

ServeError invalid(const std::string& message) {
  return ServeError(ServeError::Kind::kValidation, message);
}

// A text or a [text] / [text_a, text_b] pair (TEI's Sequence).
PredictItem parse_sequence(const json& value, const std::string& where) {
  PredictItem item;
  if (value.is_string()) {
    item.text_a = value.get<std::string>();
    return item;
  }
  if (value.is_array() && (value.size() == 1 || value.size() == 2) && value[0].is_string() &&
      value.back().is_string()) {
    item.text_a = value[0].get<std::string>();
    if (value.size() == 2) item.text_b = value[1].get<std::string>();
    return item;
  }
  throw invalid(where + " must be a text or a [text_a, text_b] pair");
}

// A socket of this process by its local port and its peer's port (-1: a
// listening socket, with no peer), found through /proc/self/fd: cpp-httplib
// 0.11 hands neither the listening nor a connection's socket out. -1 when none.
int find_socket(int local_port, int peer_port) {
  DIR* fds = opendir("/proc/self/fd");
  if (fds == nullptr) return -1;
  auto port_of = [](const sockaddr_storage& a) {
    if (a.ss_family == AF_INET) return int{ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port)};
    if (a.ss_family == AF_INET6)
      return int{ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port)};
    return -2;
  };
  int found = -1;
  while (dirent* entry = readdir(fds)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0') continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_size = sizeof local, peer_size = sizeof peer;
    if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &local_size) != 0)
      continue;
    const bool connected =
        getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &peer_size) == 0;
    if (port_of(local) == local_port && (connected ? port_of(peer) : -1) == peer_port) {
      found = static_cast<int>(fd);
      break;
    }
  }
  closedir(fds);
  return found;
}

// True when the peer closed its side of `fd` (a read would return 0).
bool peer_closed(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, static_cast<short>(POLLIN | POLLRDHUP), 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return true;
  char byte;
  return recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

json prediction_json(const ItemPrediction& p) {
  json out = json::array();
  for (const LabelScore& s : p.scores) out.push_back({{"label", s.label}, {"score", s.score}});
  return out;
}

}  // namespace

PredictRequest parse_predict_request(const std::string& body, bool* batched) {
  json document;
  try {
    document = json::parse(body);
  } catch (const std::exception& e) {
    throw invalid(std::string("request body is not JSON: ") + e.what());
  }
  if (!document.is_object()) throw invalid("request body must be a JSON object");
  if (!document.contains("inputs")) throw invalid("missing field `inputs`");
  const json& inputs = document["inputs"];
  PredictRequest request;
  // TEI's PredictInput: a Sequence (a text, or exactly two texts: a pair), else a batch.
  const bool pair =
      inputs.is_array() && inputs.size() == 2 && inputs[0].is_string() && inputs[1].is_string();
  *batched = inputs.is_array() && !pair;
  if (!*batched) {
    request.items.push_back(parse_sequence(inputs, "`inputs`"));
  } else {
    for (size_t i = 0; i < inputs.size(); ++i)
      request.items.push_back(parse_sequence(inputs[i], fmt::format("`inputs[{}]`", i)));
  }
  const char* task_field = document.contains("task") ? "task" : "adapter_id";
  if (document.contains(task_field) && !document[task_field].is_null()) {
    const json& task = document[task_field];
    if (task.is_string()) {
      for (auto& item : request.items) item.task = task.get<std::string>();
    } else if (task.is_array() && task.size() == request.items.size()) {
      for (size_t i = 0; i < task.size(); ++i) {
        if (!task[i].is_string())
          throw invalid(fmt::format("`{}[{}]` must be a task name", task_field, i));
        request.items[i].task = task[i].get<std::string>();
      }
    } else {
      throw invalid(fmt::format("`{}` must be a task name or one name per input ({} inputs)",
                                task_field, request.items.size()));
    }
  }
  if (document.contains("raw_scores") && !document["raw_scores"].is_null()) {
    if (!document["raw_scores"].is_boolean()) throw invalid("`raw_scores` must be true or false");
    request.raw_scores = document["raw_scores"].get<bool>();
  }
  if (document.contains("truncate") && !document["truncate"].is_null()) {
    if (!document["truncate"].is_boolean()) throw invalid("`truncate` must be true or false");
    request.truncate = document["truncate"].get<bool>();
  }
  if (document.contains("truncation_direction") && document["truncation_direction"].is_string() &&
      document["truncation_direction"] != "Right" && document["truncation_direction"] != "right")
    throw invalid("`truncation_direction`: only Right is supported");
  return request;
}

int serve_http(Engine& engine, const HttpOptions& options,
               const std::function<void(int port)>& on_listening) {
  httplib::Server server;
  const unsigned threads = std::max(1u, options.http_threads);
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server.set_payload_max_length(options.payload_limit);
  // Clients keep their connections (httplib closes one after 5 requests by default).
  server.set_keep_alive_max_count(1 << 20);
  server.set_keep_alive_timeout(5);

  server.Get("/health", [&](const httplib::Request&, httplib::Response& res) {
    if (!engine.accepting()) {
      send_json(res, 503, error_body("the server is shutting down", "Unhealthy"));
    } else {
      res.status = 200;
    }
  });
  server.Get("/info", [&](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, engine.info());
  });
  server.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(engine.metrics().render(), "text/plain; version=0.0.4");
  });
  server.Get("/tasks", [&](const httplib::Request&, httplib::Response& res) {
    json out = json::array();
    for (const auto& t : engine.tasks()) out.push_back(t->describe());
    send_json(res, 200, out);
  });
  server.Post("/tasks", [&](const httplib::Request& req, httplib::Response& res) {
    try {
      json body;
      try {
        body = json::parse(req.body);
      } catch (const std::exception& e) {
        throw invalid(std::string("request body is not JSON: ") + e.what());
      }
      if (!body.is_object() || !body.contains("name") || !body["name"].is_string() ||
          !body.contains("path") || !body["path"].is_string())
        throw invalid("POST /tasks takes {\"name\": NAME, \"path\": DELTA_DIR}");
      if (!engine.accepting())
        throw ServeError(ServeError::Kind::kUnhealthy, "the server is shutting down");
      send_json(res, 201,
                engine.load_task(body["name"].get<std::string>(), body["path"].get<std::string>()));
    } catch (const ServeError& e) {
      send_error(res, e);
    }
  });
  server.Delete(R"(/tasks/([^/]+))", [&](const httplib::Request& req, httplib::Response& res) {
    const std::string name = req.matches[1];
    if (engine.unload_task(name)) {
      send_json(res, 200, {{"unloaded", name}});
    } else {
      send_error(res, ServeError(ServeError::Kind::kNotFound, "task '" + name + "' is not loaded"));
    }
  });
  server.Post("/predict", [&](const httplib::Request& req, httplib::Response& res) {
    try {
      bool batched = false;
      PredictRequest request = parse_predict_request(req.body, &batched);
      auto cancelled = request.cancelled;
      auto future = engine.submit(std::move(request));
      int socket = -2;  // looked up once the answer is not immediate
      while (future.wait_for(std::chrono::milliseconds(5)) != std::future_status::ready) {
        if (socket == -2) socket = find_socket(req.local_port, req.remote_port);
        if (peer_closed(socket)) {
          *cancelled = true;  // the engine drops what has not run
          future.wait();
          return;
        }
      }
      std::vector<ItemPrediction> predictions = future.get();
      json out;
      if (batched) {
        out = json::array();
        for (const auto& p : predictions) out.push_back(prediction_json(p));
      } else {
        out = prediction_json(predictions.front());
      }
      send_json(res, 200, out);
    } catch (const ServeError& e) {
      send_error(res, e);
    } catch (const std::exception& e) {
      send_error(res, ServeError(ServeError::Kind::kBackend, e.what()));
    }
  });
  server.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr error) {
        std::string message = "internal error";
        try {
          std::rethrow_exception(error);
        } catch (const std::exception& e) {
          message = e.what();
        } catch (...) {
        }
        send_json(res, 500, error_body(message, "Backend"));
      });
  server.set_error_handler([&](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413) {
      send_json(res, 413,
                error_body(fmt::format("payload over the limit of {} bytes", options.payload_limit),
                           "PayloadTooLarge"));
    } else if (res.status == 404) {
      send_json(res, 404, error_body("no route " + req.method + " " + req.path, "NotFound"));
    } else {
      send_json(res, res.status, error_body(fmt::format("HTTP {}", res.status), "Validation"));
    }
  });

  const int port = options.port == 0
                       ? server.bind_to_any_port(options.host)
                       : (server.bind_to_port(options.host, options.port) ? options.port : -1);
  if (port < 0)
    throw Error(fmt::format("serve: cannot listen on {}:{}", options.host, options.port));
  // cpp-httplib 0.11 listens with a backlog of 5 (compiled into Debian's
  // library): a burst of clients overflows it and waits out SYN retries or
  // is reset. listen() again on the bound socket raises it.
  if (const int listening = find_socket(port, -1); listening >= 0) ::listen(listening, SOMAXCONN);

  g_signal = 0;
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  struct sigaction old_int {
  }, old_term{};
  sigaction(SIGINT, &action, &old_int);
  sigaction(SIGTERM, &action, &old_term);
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done && g_signal == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (done) return;
    fmt::print(stderr, "deltatune serve: signal {}: finishing accepted requests\n",
               g_signal.load());
    engine.shutdown();  // new requests get 503 from here on
    server.stop();
  });
  on_listening(port);
  server.listen_after_bind();
  done = true;
  watcher.join();
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  engine.shutdown();
  return 0;
}

}  // namespace deltatune::serve
