// `deltatune serve` as users run it: the real binary on a loopback port,
// every route and error in TEI's shapes, concurrent clients, hot loading
// under load, clients that hang up, and shutdown on SIGTERM / SIGINT.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "deltatune/model/device.h"
#include "served_deltas.h"
#include "server_process.h"

namespace deltatune::test {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

std::string task_arg(const std::string& name, const std::string& delta) {
  return name + "=" + (served_deltas_dir() / delta).string();
}

httplib::Result post(httplib::Client& client, const std::string& path, const json& body) {
  return client.Post(path.c_str(), body.dump(), "application/json");
}

void expect_error(const httplib::Result& r, int status, const std::string& type,
                  const std::string& fragment = {}) {
  ASSERT_TRUE(r) << "no response";
  EXPECT_EQ(r->status, status) << r->body;
  const json body = json::parse(r->body);
  EXPECT_EQ(body.value("error_type", ""), type) << r->body;
  EXPECT_NE(body.value("error", "").find(fragment), std::string::npos) << r->body;
}

TEST(ServeHttp, EveryRouteAnswersInTeisShapes) {
  ServerProcess server({"--task", task_arg("sst2", "bitfit-sst2"), "--task",
                        task_arg("rte", "lora-rte"), "--task", task_arg("stsb", "fish-stsb")});
  auto client = server.client();
  auto health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);

  auto info = json::parse(client.Get("/info")->body);
  EXPECT_EQ(info["model_id"], "all-MiniLM-L6-v2");
  EXPECT_EQ(info["model_dtype"], "float32");
  EXPECT_EQ(info["tasks"].size(), 3u);
  EXPECT_GT(info["max_batch_tokens"].get<int64_t>(), 0);

  auto tasks = json::parse(client.Get("/tasks")->body);
  ASSERT_EQ(tasks.size(), 3u);
  EXPECT_EQ(tasks[1]["name"], "sst2");
  EXPECT_EQ(tasks[1]["method"], "bitfit");

  auto single = post(client, "/predict", {{"inputs", "a warm, funny film"}, {"task", "sst2"}});
  ASSERT_EQ(single->status, 200) << single->body;
  auto scores = json::parse(single->body);
  ASSERT_EQ(scores.size(), 2u);
  EXPECT_GE(scores[0]["score"].get<double>(), scores[1]["score"].get<double>());
  EXPECT_TRUE(scores[0]["label"] == "positive" || scores[0]["label"] == "negative");

  // A pair, with LoRAX's adapter_id naming the task.
  auto pair = post(client, "/predict",
                   {{"inputs", {"A dog runs.", "An animal moves."}}, {"adapter_id", "rte"}});
  ASSERT_EQ(pair->status, 200) << pair->body;
  EXPECT_EQ(json::parse(pair->body).size(), 2u);

  // A batch of three tasks, one named per input; regression gives its value.
  auto batch = post(
      client, "/predict",
      {{"inputs",
        {{"so dull"}, {"A dog runs.", "A cat sleeps."}, {"A man sings.", "A man is singing."}}},
       {"task", {"sst2", "rte", "stsb"}}});
  ASSERT_EQ(batch->status, 200) << batch->body;
  auto lists = json::parse(batch->body);
  ASSERT_EQ(lists.size(), 3u);
  EXPECT_EQ(lists[0].size(), 2u);
  EXPECT_EQ(lists[1].size(), 2u);
  EXPECT_EQ(lists[2].size(), 1u);

  // Raw scores are logits: softmax of them gives the probabilities.
  auto raw = post(client, "/predict",
                  {{"inputs", "a warm, funny film"}, {"task", "sst2"}, {"raw_scores", true}});
  auto logits = json::parse(raw->body);
  const double a = logits[0]["score"], b = logits[1]["score"];
  EXPECT_NEAR(1 / (1 + std::exp(b - a)), scores[0]["score"].get<double>(), 1e-9);

  const std::string metrics = client.Get("/metrics")->body;
  for (const char* expected :
       {"deltatune_requests_total{outcome=\"success\"} 4", "deltatune_items_total{task=\"rte\"} 2",
        "deltatune_items_total{task=\"sst2\"} 3",
        "# TYPE deltatune_inference_duration_seconds histogram",
        "# TYPE deltatune_tokenization_duration_seconds histogram", "deltatune_batch_size_bucket",
        "deltatune_batch_tokens_sum", "deltatune_tasks_loaded 3", "deltatune_resident_bytes ",
        "deltatune_task_resident_bytes{task=\"stsb\"}", "deltatune_queue_items 0"})
    EXPECT_NE(metrics.find(expected), std::string::npos) << expected;
}

TEST(ServeHttp, ErrorsAreTeiShapedWithTheirStatus) {
  ServerProcess server({"--task", task_arg("sst2", "bitfit-sst2"), "--task",
                        task_arg("rte", "lora-rte"), "--payload-limit", "4096",
                        "--max-client-batch-size", "4"});
  auto client = server.client();
  expect_error(client.Post("/predict", "{not json", "application/json"), 422, "Validation",
               "not JSON");
  // Found by the soak (bench/serve_soak.cpp): a body of invalid UTF-8 got a 500, because
  // the parse error quoting it could not be written as JSON.
  expect_error(client.Post("/predict", "\xF8\x8D\x27 {\xFF", "application/json"), 422, "Validation",
               "not JSON");
  expect_error(post(client, "/predict", {{"task", "sst2"}}), 422, "Validation", "inputs");
  expect_error(post(client, "/predict", {{"inputs", "x"}, {"task", "nope"}}), 404, "NotFound",
               "nope");
  expect_error(post(client, "/predict", {{"inputs", "x"}}), 422, "Validation", "loaded: rte, sst2");
  expect_error(
      post(client, "/predict", {{"inputs", {{"a"}, {"b"}, {"c"}, {"d"}, {"e"}}}, {"task", "sst2"}}),
      422, "Validation", "maximum allowed batch size 4");
  expect_error(post(client, "/predict", {{"inputs", "one text"}, {"task", "rte"}}), 422,
               "Validation", "pairs");
  expect_error(post(client, "/predict", {{"inputs", {{"a"}, {"b"}}}, {"task", {"sst2"}}}), 422,
               "Validation", "one name per input");
  expect_error(post(client, "/predict", {{"inputs", 5}, {"task", "sst2"}}), 422, "Validation",
               "`inputs`");
  expect_error(post(client, "/predict", {{"inputs", std::string(5000, 'a')}, {"task", "sst2"}}),
               413, "PayloadTooLarge", "4096");
  expect_error(client.Get("/nope"), 404, "NotFound", "/nope");
  expect_error(client.Delete("/tasks/nope"), 404, "NotFound", "nope");
  expect_error(post(client, "/tasks", {{"name", "x"}}), 422, "Validation", "path");
  // A delta made on another base is refused at load.
  ScratchDir dir;
  fs::copy(served_deltas_dir() / "bitfit-sst2", dir.path() / "foreign");
  auto meta = json::parse(std::ifstream(dir.path() / "foreign" / "delta.json"));
  meta["base_model"]["checksum"] = std::string(64, 'f');
  std::ofstream(dir.path() / "foreign" / "delta.json") << meta.dump();
  expect_error(
      post(client, "/tasks", {{"name", "foreign"}, {"path", (dir.path() / "foreign").string()}}),
      422, "Validation", "made on base");
  // Still serving after all of it.
  EXPECT_EQ(post(client, "/predict", {{"inputs", "fine"}, {"task", "sst2"}})->status, 200);
}

TEST(ServeHttp, AFullQueueAnswers429) {
  ServerProcess server(
      {"--task", task_arg("sst2", "bitfit-sst2"), "--max-queue", "1", "--max-wait-ms", "1500"});
  std::thread held([&] {
    auto client = server.client();
    auto r = post(client, "/predict", {{"inputs", "waits for its batch"}, {"task", "sst2"}});
    EXPECT_EQ(r->status, 200);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  auto client = server.client();
  expect_error(post(client, "/predict", {{"inputs", "one too many"}, {"task", "sst2"}}), 429,
               "Overloaded", "queue is full");
  held.join();
}

TEST(ServeHttp, MixedBatchesOfEveryMethodEqualDeltatunePredict) {
  std::vector<std::string> arguments = {"--tasks-dir",
                                        served_deltas_dir().string(),
                                        "--max-client-batch-size",
                                        "256",
                                        "--max-wait-ms",
                                        "50"};
  ServerProcess server(arguments);
  json inputs = json::array(), tasks = json::array();
  std::vector<json> expected;  // deltatune predict's line per input
  ScratchDir dir;
  for (const auto& spec : served_delta_specs()) {
    const auto rows = dev_inputs(spec.glue_task, 2, 3);
    std::ofstream tsv(dir.path() / (spec.name + ".tsv"));
    tsv << (rows[0].second ? "a\tb\n" : "a\n");
    for (const auto& [a, b] : rows) {
      tsv << a << (b ? "\t" + *b : "") << "\n";
      inputs.push_back(b ? json{a, *b} : json{a});
      tasks.push_back(spec.name);
    }
    tsv.close();
    const std::string command = std::string(DELTATUNE_CLI) + " predict --threads 1 --model " +
                                minilm_dir().string() + " --delta " +
                                (served_deltas_dir() / spec.name).string() + " --input " +
                                (dir.path() / (spec.name + ".tsv")).string() + " --text-a a" +
                                (rows[0].second ? " --text-b b" : "") + " 2>&1";
    FILE* pipe = popen(command.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    char line[4096];
    size_t lines = 0;
    while (fgets(line, sizeof line, pipe)) {
      expected.push_back(json::parse(line));
      ++lines;
    }
    EXPECT_EQ(pclose(pipe), 0) << command;
    ASSERT_EQ(lines, rows.size()) << spec.name;
  }
  auto client = server.client();
  auto r = post(client, "/predict", {{"inputs", inputs}, {"task", tasks}, {"truncate", true}});
  ASSERT_EQ(r->status, 200) << r->body;
  const json served = json::parse(r->body);
  ASSERT_EQ(served.size(), expected.size());
  for (size_t i = 0; i < served.size(); ++i) {
    const json& top = served[i][0];
    if (expected[i].contains("label")) {
      EXPECT_EQ(top["label"], expected[i]["label"]) << tasks[i];
      const double probability = expected[i]["probability"].get<double>();
      EXPECT_NEAR(top["score"].get<double>(), probability, test::fp32_tolerance(probability))
          << tasks[i];
    } else {
      const double score = expected[i]["score"].get<double>();
      EXPECT_NEAR(top["score"].get<double>(), score, test::fp32_tolerance(score)) << tasks[i];
    }
  }
  // Concurrent clients, each sending one input of a task: batches of whatever
  // meets in the queue, the same answers.
  std::vector<std::thread> clients;
  std::atomic<int> mismatches{0}, failures{0};
  for (int c = 0; c < 8; ++c)
    clients.emplace_back([&, c] {
      auto own = server.client();
      for (size_t i = static_cast<size_t>(c); i < served.size(); i += 8) {
        // A batch of one input: the answer is a list holding its list.
        auto one =
            post(own, "/predict",
                 {{"inputs", json::array({inputs[i]})}, {"task", tasks[i]}, {"truncate", true}});
        if (!one || one->status != 200) {
          ++failures;
          continue;
        }
        const json got = json::parse(one->body).at(0);
        if (got[0]["label"] != served[i][0]["label"] ||
            std::fabs(got[0]["score"].get<double>() - served[i][0]["score"].get<double>()) >
                test::fp32_tolerance(served[i][0]["score"].get<double>()))
          ++mismatches;
      }
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(mismatches, 0);
}

// --precision: bf16 passes answer within bf16's precision of fp32 ones;
// auto takes what this CPU's probe chooses and says so in /info.
TEST(ServeHttp, PrecisionBf16AndAutoServeTheSameLabels) {
  const json request = {{"inputs", "a gripping, beautifully made film"}, {"task", "sst2"}};
  double fp32_score = 0;
  std::string fp32_label;
  for (const char* precision : {"fp32", "bf16", "auto"}) {
    ServerProcess server({"--task", task_arg("sst2", "bitfit-sst2"), "--precision", precision});
    auto client = server.client();
    const json info = json::parse(client.Get("/info")->body);
    const std::string dtype = info["model_dtype"];
    std::string chosen = precision;
    if (chosen == "auto") {
      // The server's own probe (another run here could choose otherwise under load).
      ASSERT_TRUE(info.contains("precision_probe")) << info.dump();
      EXPECT_GT(info["precision_probe"]["fp32_gflops"].get<double>(), 0);
      EXPECT_GT(info["precision_probe"]["bf16_gflops"].get<double>(), 0);
      chosen = info["precision_probe"]["choice"];
    } else {
      EXPECT_FALSE(info.contains("precision_probe")) << precision;
    }
    EXPECT_EQ(dtype, chosen == "bf16" ? "bfloat16" : "float32") << precision;
    auto answer = post(client, "/predict", request);
    ASSERT_EQ(answer->status, 200) << answer->body;
    const json scores = json::parse(answer->body);
    if (std::string(precision) == "fp32") {
      fp32_label = scores[0]["label"];
      fp32_score = scores[0]["score"];
    }
    EXPECT_EQ(scores[0]["label"], fp32_label) << precision;
    EXPECT_NEAR(scores[0]["score"].get<double>(), fp32_score, 0.02) << precision;
  }
}

TEST(ServeHttp, TasksLoadAndUnloadUnderLoadWithoutAFailedRequest) {
  ServerProcess server({"--task", task_arg("sst2", "bitfit-sst2"), "--max-wait-ms", "1"});
  std::atomic<bool> stop{false};
  std::atomic<int> answered{0}, failed{0};
  std::vector<std::thread> load;
  for (int c = 0; c < 4; ++c)
    load.emplace_back([&] {
      auto client = server.client();
      while (!stop) {
        auto r = post(client, "/predict", {{"inputs", "steady traffic"}, {"task", "sst2"}});
        (r && r->status == 200 ? answered : failed)++;
      }
    });
  auto client = server.client();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto loaded = post(client, "/tasks",
                     {{"name", "rte"}, {"path", (served_deltas_dir() / "lora-rte").string()}});
  ASSERT_EQ(loaded->status, 201) << loaded->body;
  EXPECT_EQ(json::parse(loaded->body)["method"], "lora");
  EXPECT_EQ(post(client, "/predict", {{"inputs", {"A", "B"}}, {"task", "rte"}})->status, 200);
  EXPECT_EQ(client.Delete("/tasks/rte")->status, 200);
  expect_error(post(client, "/predict", {{"inputs", {"A", "B"}}, {"task", "rte"}}), 404,
               "NotFound");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop = true;
  for (auto& t : load) t.join();
  EXPECT_GT(answered, 10);
  EXPECT_EQ(failed, 0);
}

TEST(ServeHttp, SigtermAnswersWhatWasAcceptedRefusesTheRestAndExitsZero) {
  ServerProcess server({"--task", task_arg("sst2", "bitfit-sst2"), "--max-wait-ms", "1500"});
  std::atomic<int> held_status{0};
  std::thread held([&] {
    auto client = server.client();
    auto r = post(client, "/predict", {{"inputs", "accepted before the signal"}, {"task", "sst2"}});
    held_status = r ? r->status : -1;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  server.signal(SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto client = server.client();
  expect_error(post(client, "/predict", {{"inputs", "too late"}, {"task", "sst2"}}), 503,
               "Unhealthy", "shutting down");
  held.join();
  EXPECT_EQ(held_status, 200);
  EXPECT_EQ(server.wait_exit(20), 0);

  ServerProcess interrupted({"--task", task_arg("sst2", "bitfit-sst2")});
  interrupted.signal(SIGINT);
  EXPECT_EQ(interrupted.wait_exit(20), 0);
}

TEST(ServeHttp, WorkOfAClientThatHungUpIsDropped) {
  ServerProcess server({"--task", task_arg("sst2", "bitfit-sst2"), "--max-wait-ms", "1000"});
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(server.port()));
  inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  const std::string body = json{{"inputs", "nobody waits for me"}, {"task", "sst2"}}.dump();
  const std::string request =
      "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Content-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  ASSERT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto client = server.client();
  const std::string metrics = client.Get("/metrics")->body;
  EXPECT_NE(metrics.find("deltatune_requests_total{outcome=\"Cancelled\"} 1"), std::string::npos)
      << metrics.substr(0, 600);
  EXPECT_EQ(metrics.find("deltatune_items_total{task=\"sst2\"}"), std::string::npos);
}

}  // namespace
}  // namespace deltatune::test
