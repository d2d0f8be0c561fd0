// Device-agnostic training and inference: each test runs on the CPU always
// and on CUDA when this LibTorch has it and a GPU is visible (elsewhere the
// CUDA instance is skipped, saying so). A device run is compared with the
// same run on the CPU: same initialisation (drawn on the CPU), no dropout,
// so the only differences are the devices' kernels (fp32, 1e-4).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "deltatune/model/device.h"
#include "deltatune/train/grad_scaler.h"
#include "deltatune/train/task_model.h"
#include "glue_sample.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {

const test::GlueSample& sample() { return test::sst2_sample(64, 48); }

// The device a parameterised test runs on, or a skip when it does not exist here.
std::optional<at::Device> device_or_skip(const std::string& name) {
  if (name == "cpu") return at::Device(at::kCPU);
  if (!model::cuda_available()) return std::nullopt;
  return at::Device(at::kCUDA, 0);
}

#define DEVICE_OR_SKIP(device)                                                 \
  const std::optional<at::Device> device##_found = device_or_skip(GetParam()); \
  if (!device##_found)                                                         \
    GTEST_SKIP() << "no CUDA device here (a LibTorch without CUDA, or no GPU " \
                    "visible): the CUDA instance of this test is skipped";     \
  const at::Device device = *device##_found

BaseModel base_without_dropout() {
  BaseModel base = load_base(test::minilm_dir());
  override_dropout(base, 0.0);
  return base;
}

// Every tensor that trained, by name, on the CPU.
std::map<std::string, at::Tensor> trained_values(model::SequenceClassifierImpl& model) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : model.named_parameters(true))
    if (item.value().requires_grad()) out[item.key()] = item.value().detach().to(at::kCPU);
  return out;
}

double max_difference(const std::map<std::string, at::Tensor>& a,
                      const std::map<std::string, at::Tensor>& b, std::string* where) {
  double worst = 0;
  for (const auto& [name, value] : a) {
    auto other = b.find(name);
    if (other == b.end()) {
      *where = name + " (missing on one side)";
      return 1e9;
    }
    const double d = (value - other->second).abs().max().item<double>();
    if (d > worst) {
      worst = d;
      *where = name;
    }
  }
  return worst;
}

TEST(Device, ThePrecisionProbeChoosesBf16ExactlyWhereItsProductsAreFaster) {
  const model::PrecisionProbe& probe = model::probe_cpu_precision();
  EXPECT_GT(probe.fp32_gflops, 1.0);  // a real product was timed
  EXPECT_GT(probe.bf16_gflops, 0.1);
  EXPECT_EQ(probe.choice == model::Precision::kBFloat16,
            probe.bf16_gflops >= 1.2 * probe.fp32_gflops)
      << probe.fp32_gflops << " fp32, " << probe.bf16_gflops << " bf16 GFLOP/s";
  EXPECT_EQ(&model::probe_cpu_precision(), &probe);  // measured once per process
}

TEST(Device, ParsesSpecsAndNamesWhatIsMissing) {
  EXPECT_EQ(model::parse_device("cpu"), at::Device(at::kCPU));
  EXPECT_NE(test::error_of([] { model::parse_device("gpu"); }).find("expected cpu, cuda"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { model::parse_device("cuda:x"); }).find("--device cuda:x"),
            std::string::npos);
  if (model::cuda_available()) {
    EXPECT_EQ(model::parse_device("auto"), at::Device(at::kCUDA, 0));
    EXPECT_EQ(model::parse_device("cuda"), at::Device(at::kCUDA, 0));
    EXPECT_NE(test::error_of([] { model::parse_device("cuda:64"); }).find("visible"),
              std::string::npos);
  } else {
    EXPECT_EQ(model::parse_device("auto"), at::Device(at::kCPU));
    const std::string error = test::error_of([] { model::parse_device("cuda"); });
    EXPECT_NE(error.find("--device cuda"), std::string::npos) << error;
    EXPECT_NE(error.find("--device cpu"), std::string::npos) << error;
  }
  EXPECT_NE(test::error_of([] {
              model::check_precision(model::Precision::kFloat16, at::Device(at::kCPU));
            }).find("--fp16 needs a CUDA device"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { model::parse_precision(true, true); }).find("--bf16 and --fp16"),
            std::string::npos);
}

// A short run: `steps` optimizer steps of batches of `batch` at rate `lr`, seed `seed`.
TrainConfig short_run(double lr, int64_t batch, int64_t steps, uint64_t seed = 0) {
  TrainConfig c;
  c.learning_rate = lr;
  c.batch_size = batch;
  c.max_steps = steps;
  c.seed = seed;
  c.progress = false;
  return c;
}

class OnDevice : public ::testing::TestWithParam<std::string> {};

TEST_P(OnDevice, ForwardMatchesTheCpu) {
  DEVICE_OR_SKIP(device);
  const BaseModel base = base_without_dropout();
  auto on_cpu = make_task_model(base, 2, 3);
  auto on_device = make_task_model(base, 2, 3, device);
  EXPECT_EQ(model::device_of(*on_device), device);
  const at::Tensor expected = predict_logits(*on_cpu, sample().dev, 16, false);
  const at::Tensor got = predict_logits(*on_device, sample().dev, 16, false);
  EXPECT_TRUE(got.device().is_cpu());
  EXPECT_LT((got - expected).abs().max().item<double>(), 1e-4);
}

// Two optimizer steps of `method` (both stages of a two-stage method) on `device`.
std::map<std::string, at::Tensor> two_steps(const BaseModel& base, const std::string& method_name,
                                            const nlohmann::json& options,
                                            const at::Device& device) {
  auto model = make_task_model(base, 2, 5, device);
  auto method = methods::make_method(method_name, options);
  method->attach(*model);
  // A small rate: AdamW's first steps move every entry by about lr whatever
  // its gradient's size, so rounding that flips a near-zero gradient's sign
  // moves it by 2 lr at most, well inside the tolerance.
  TrainConfig config = short_run(1e-5, 16, 2, 5);
  config.eval_batch_size = 48;
  run_method(model, *method, sample().task, config, sample().train, sample().dev);
  return trained_values(*model);
}

TEST_P(OnDevice, TrainingStepsOfEveryMethodMatchTheCpu) {
  DEVICE_OR_SKIP(device);
  const BaseModel base = base_without_dropout();
  const std::vector<std::pair<std::string, nlohmann::json>> methods = {
      {"bitfit", {}},
      {"full", {}},
      {"frozen", {}},
      {"lora", {}},
      {"adapters", {{"seed", 1}}},
      {"prefix-tuning", {{"length", 4}, {"seed", 1}}},
      {"prompt-tuning", {{"length", 4}, {"seed", 1}}},
      {"fish", {{"fisher_samples", 16}}},
      {"child-tuning-d", {}},
      {"child-tuning-f", {}},
      {"diff-pruning", {{"finetune_epochs", 1}}},
      {"far", {}},
  };
  for (const auto& [name, options] : methods) {
    SCOPED_TRACE(name);
    const auto expected = two_steps(base, name, options, at::Device(at::kCPU));
    const auto got = two_steps(base, name, options, device);
    std::string where;
    EXPECT_LT(max_difference(expected, got, &where), 1e-4) << "largest difference in " << where;
  }
}

TEST_P(OnDevice, ADeltaTrainedThereEvaluatesIdenticallyOnTheCpu) {
  DEVICE_OR_SKIP(device);
  const BaseModel base = base_without_dropout();
  for (const char* name : {"bitfit", "lora"}) {
    SCOPED_TRACE(name);
    auto model = make_task_model(base, 2, 7, device);
    auto method = methods::make_method(name);
    method->attach(*model);
    const TrainConfig config = short_run(1e-3, 16, 3);
    const MethodRun run =
        run_method(model, *method, sample().task, config, sample().train, sample().dev);
    const at::Tensor on_device = predict_logits(*model, sample().dev, 16, false);
    test::ScratchDir dir;
    build_delta(base, *model, *method, sample().task, 48, config, run.result).save(dir.path());

    auto on_cpu = model_from_delta(base, methods::Delta::load(dir.path()));
    EXPECT_TRUE(model::device_of(*on_cpu).is_cpu());
    const at::Tensor logits = predict_logits(*on_cpu, sample().dev, 16, false);
    EXPECT_LT((logits - on_device).abs().max().item<double>(), 1e-4);
    const Evaluation evaluated = evaluate_logits(sample().task, logits, sample().dev);
    EXPECT_EQ(evaluated.metrics.main, run.result.best.metrics.main);
  }
}

TEST_P(OnDevice, ACheckpointResumesOnTheCpu) {
  DEVICE_OR_SKIP(device);
  const BaseModel base = base_without_dropout();
  auto config_for = [](const std::filesystem::path& dir, int64_t steps) {
    TrainConfig c = short_run(1e-5, 8, steps);
    c.eval_every = 2;
    c.checkpoint_every = 2;
    c.keep_best = false;
    c.run_dir = dir;
    return c;
  };
  // Trainer::fit directly: its periodic checkpoint at step 2 is a stop
  // mid-run (run_method would mark a run's last checkpoint finished).
  auto train = [&](const at::Device& on, const std::filesystem::path& dir, int64_t steps,
                   bool resume) {
    auto model = make_task_model(base, 2, 9, on);
    auto method = methods::make_method("bitfit");
    method->attach(*model);
    Trainer(model, *method, sample().task, config_for(dir, steps))
        .fit(sample().train, sample().dev, resume);
    return model;
  };
  test::ScratchDir interrupted, whole;
  train(device, interrupted.path(), 2, false);
  auto resumed = train(at::Device(at::kCPU), interrupted.path(), 4, true);
  auto straight = train(at::Device(at::kCPU), whole.path(), 4, false);
  std::string where;
  EXPECT_LT(max_difference(trained_values(*straight), trained_values(*resumed), &where), 1e-4)
      << where;
  // And the other way: a CPU checkpoint resumes on the device (its dropout
  // stream is the CPU's, so the device starts a fresh one of its own: dropout
  // is off here, so the runs still agree).
  test::ScratchDir from_cpu;
  train(at::Device(at::kCPU), from_cpu.path(), 2, false);
  auto resumed_there = train(device, from_cpu.path(), 4, true);
  EXPECT_LT(max_difference(trained_values(*straight), trained_values(*resumed_there), &where), 1e-4)
      << where;
}

TEST_P(OnDevice, Fp16TrainsWithLossScalingWhereItExists) {
  DEVICE_OR_SKIP(device);
  if (device.is_cpu()) {
    // fp16 autocast is CUDA's: the CPU refuses it before any work.
    EXPECT_NE(test::error_of([&] {
                model::check_precision(model::Precision::kFloat16, device);
              }).find("--fp16"),
              std::string::npos);
    return;
  }
  const BaseModel base = base_without_dropout();
  auto model = make_task_model(base, 2, 11, device);
  auto method = methods::make_method("bitfit");
  method->attach(*model);
  const auto before = trained_values(*model);
  TrainConfig config = short_run(1e-3, 16, 3);
  config.fp16 = true;
  const MethodRun run =
      run_method(model, *method, sample().task, config, sample().train, sample().dev);
  EXPECT_EQ(run.result.steps, 3);
  std::string where;
  EXPECT_GT(max_difference(before, trained_values(*model), &where), 0.0);
  EXPECT_TRUE(std::isfinite(run.result.best.loss));
}

INSTANTIATE_TEST_SUITE_P(Devices, OnDevice, ::testing::Values("cpu", "cuda"),
                         [](const auto& info) { return info.param; });

// --frozen-weights bf16: under bf16 autocast every product reads its weight in
// bf16 anyway, so storing the frozen ones in bf16 changes nothing but memory,
// for every method (those that train a Dense weight keep it fp32), which is
// why `train --bf16` stores them so unless told --frozen-weights fp32.
TEST(FrozenWeights, Bf16StorageTrainsExactlyAsBf16Autocast) {
  const BaseModel base = load_base(test::minilm_dir());  // dropout on: the same stream
  for (const std::string& name : methods::method_names()) {
    SCOPED_TRACE(name);
    auto run = [&](bool narrow, int64_t* saved) {
      auto model = make_task_model(base, 2, 13);
      auto method = methods::make_method(name);
      method->attach(*model);
      if (narrow) *saved = model::store_frozen_dense_weights(*model, at::kBFloat16);
      TrainConfig config = short_run(1e-3, 16, 3, 13);
      config.bf16 = true;
      run_method(model, *method, sample().task, config, sample().train, sample().dev);
      return std::make_pair(trained_values(*model),
                            model->encoder->layer(0)->attention->self->query->weight);
    };
    int64_t saved = 0;
    const auto [plain, plain_query] = run(false, &saved);
    const auto [narrow, narrow_query] = run(true, &saved);
    EXPECT_EQ(plain_query.scalar_type(), at::kFloat);
    // A frozen query weight is stored in bf16, a trained one stays fp32.
    EXPECT_EQ(narrow_query.scalar_type(), plain_query.requires_grad() ? at::kFloat : at::kBFloat16);
    if (name == "bitfit" || name == "lora") {  // every Dense weight, the pooler's included
      EXPECT_GT(saved, 2 * 10'000'000);
    }
    ASSERT_EQ(plain.size(), narrow.size());
    for (const auto& [parameter, value] : plain) {
      EXPECT_EQ(narrow.at(parameter).scalar_type(), at::kFloat) << parameter;
      EXPECT_TRUE(value.equal(narrow.at(parameter))) << parameter;
    }
  }
}

// GradScaler's rule, in the plain ops the CPU runs (CUDA runs ATen's kernels).
TEST(GradScaler, ScalesUnscalesSkipsOverflowsAndAdaptsItsScale) {
  GradScalerOptions options;
  options.init_scale = 1024;
  options.growth_interval = 2;
  GradScaler scaler(true, at::Device(at::kCPU), options);
  at::Tensor w = at::ones({3}).requires_grad_(true);
  const at::Tensor loss = (w * at::tensor({1.0f, 2.0f, 3.0f})).sum();
  EXPECT_FLOAT_EQ(scaler.scale(loss).item<float>(), 6.0f * 1024);
  scaler.scale(loss).backward();
  EXPECT_TRUE(scaler.unscale({w}));
  EXPECT_TRUE(at::allclose(w.grad(), at::tensor({1.0f, 2.0f, 3.0f})));
  scaler.update();
  EXPECT_EQ(scaler.current_scale(), 1024);  // one clean step of two
  w.mutable_grad().fill_(1.0f);
  EXPECT_TRUE(scaler.unscale({w}));
  scaler.update();
  EXPECT_EQ(scaler.current_scale(), 2048);  // the second: grows
  w.mutable_grad()[1] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(scaler.unscale({w}));
  scaler.update();
  EXPECT_EQ(scaler.current_scale(), 1024);  // an overflow: backs off

  GradScaler resumed(true, at::Device(at::kCPU), options);
  std::map<std::string, at::Tensor> saved;
  for (const auto& [name, value] : scaler.state()) saved[name] = value.clone();
  resumed.load_state(saved);
  EXPECT_EQ(resumed.current_scale(), 1024);

  GradScaler off(false, at::Device(at::kCPU));
  EXPECT_TRUE(off.scale(loss).equal(loss));
  EXPECT_TRUE(off.state().empty());
}

}  // namespace
}  // namespace deltatune::train
