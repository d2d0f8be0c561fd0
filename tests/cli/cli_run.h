// Runs the command-line binary as a user does, with the test model.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <string>

#include "deltatune/data/glue.h"
#include "deltatune/data/task.h"
#include "deltatune/methods/method.h"
#include "deltatune/train/task_model.h"

#include "test_paths.h"

namespace deltatune::test {

struct CliRun {
  int status = -1;     // the exit status; -1 when killed by a signal
  std::string output;  // stdout and stderr
};

// A shell command's exit status and output (stdout and stderr together).
inline CliRun run_shell(const std::string& command_line) {
  const std::string command = command_line + " 2>&1";
  CliRun run;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return run;
  std::array<char, 4096> buffer;
  for (size_t n; (n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0;)
    run.output.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  run.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

// `deltatune ARGUMENTS --model <MiniLM> --threads 1`, unless `model_dir` names
// another base; `environment` ("NAME=value ...") is set for the command.
inline CliRun deltatune(const std::string& arguments, const std::string& model_dir = {},
                        const std::string& environment = {}) {
  return run_shell(environment + " " + std::string(DELTATUNE_CLI) + " " + arguments + " --model '" +
                   (model_dir.empty() ? minilm_dir().string() : model_dir) + "' --threads 1");
}

// The first `train_examples` then `dev_examples` sentences of GLUE SST-2
// ($GLUE_DIR) as a user's train.tsv and dev.tsv in `dir`, header included.
// False when GLUE's SST-2 is not there.
inline bool write_sst2_user_files(const std::filesystem::path& dir, int train_examples,
                                  int dev_examples) {
  std::ifstream glue(data::glue_dir_from_env() / "SST-2" / "train.tsv");
  if (!glue) return false;
  std::string header, line;
  std::getline(glue, header);
  std::ofstream train(dir / "train.tsv"), dev(dir / "dev.tsv");
  train << header << "\n";
  dev << header << "\n";
  for (int i = 0; i < train_examples + dev_examples && std::getline(glue, line); ++i)
    (i < train_examples ? train : dev) << line << "\n";
  return true;
}

// An untrained BitFit delta of a user task named like GLUE's SST-2, with its
// own labels "neg" and "pos", written to `dir`.
inline std::filesystem::path user_bitfit_delta(const std::filesystem::path& dir) {
  train::BaseModel base = train::load_base(minilm_dir());
  auto model = train::make_task_model(base, 2, 0);
  auto method = methods::make_method("bitfit");
  method->attach(*model);
  const data::TaskSpec task =
      data::custom_task("sst2", data::TaskType::kClassification, {"neg", "pos"}, false);
  train::build_delta(base, *model, *method, task, 64, train::TrainConfig{}, train::TrainResult{})
      .save(dir);
  return dir;
}

}  // namespace deltatune::test
