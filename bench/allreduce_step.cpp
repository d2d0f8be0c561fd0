// The gradient all-reduce of one data-parallel step, timed on its own: for
// each method and model size, a flat fp32 buffer of exactly the values that
// method trains (counted on a real model of that architecture, random weights)
// all-reduced with Gloo's SUM, as train::Trainer does every step.
//
//   RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p (one per rank)
//   allreduce_step --config DIR/config.json [--methods bitfit,lora,full] [--repeats 20]
//   (bench/run_scaling.sh starts them).
//
// Prints one JSON line per case on rank 0: values, bytes per step, mean and
// median seconds per all-reduce.
#include <ATen/ATen.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>

#include "deltatune/methods/method.h"
#include "deltatune/model/config.h"
#include "deltatune/model/encoder.h"
#include "deltatune/train/distributed.h"

using namespace deltatune;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  CLI::App app{"a data-parallel step's gradient all-reduce, timed"};
  std::string config_file;
  std::string methods_list = "bitfit,lora,full";
  int repeats = 20;
  app.add_option("--config", config_file, "a model's config.json (the architecture counted)")
      ->required();
  app.add_option("--methods", methods_list, "comma-separated methods")->capture_default_str();
  app.add_option("--repeats", repeats, "all-reduces timed per case")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  train::JobOptions options;
  auto job = train::join_job_from_environment(options);
  if (!job) {
    std::cerr << "allreduce_step: run with WORLD_SIZE > 1 (torchrun's environment)\n";
    return 2;
  }
  const model::EncoderConfig config = model::EncoderConfig::from_file(config_file);
  std::stringstream names(methods_list);
  for (std::string method; std::getline(names, method, ',');) {
    model::SequenceClassifier model(config, 2);
    auto m = methods::make_method(method, nlohmann::json::object());
    m->attach(*model);
    int64_t values = 0;
    for (const auto& p : model->parameters(true))
      if (p.requires_grad()) values += p.numel();
    at::Tensor flat = at::randn({values}, at::kFloat);
    std::vector<double> seconds;
    for (int i = 0; i < repeats + 2; ++i) {
      job->barrier();
      const auto start = Clock::now();
      job->all_reduce_sum(flat);
      if (i >= 2) seconds.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    }
    std::sort(seconds.begin(), seconds.end());
    double mean = 0;
    for (double s : seconds) mean += s / static_cast<double>(seconds.size());
    if (job->rank() == 0)
      std::cout << nlohmann::json{{"method", method},
                                  {"hidden_size", config.hidden_size},
                                  {"layers", config.num_hidden_layers},
                                  {"world_size", job->world_size()},
                                  {"values", values},
                                  {"bytes_per_step", values * 4},
                                  {"mean_s", mean},
                                  {"median_s", seconds[seconds.size() / 2]}}
                       .dump()
                << std::endl;
  }
  return 0;
}
