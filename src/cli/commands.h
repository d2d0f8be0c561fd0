// The CLI's verbs, grouped by file; each registers its subcommand and sets
// `action` to what runs when that subcommand is chosen.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <optional>
#include <string>

#include "deltatune/model/device.h"

namespace deltatune::cli {

using Action = std::function<int()>;

// --device's help, the same on every verb that computes.
inline constexpr const char* kDeviceHelp =
    "cpu, cuda, cuda:N or auto (CUDA when this build has it and a GPU is visible)";

// --precision on the verbs that only run the model forward (eval, predict,
// serve): its help, and its meaning. "auto" times one product in each
// precision on the CPU (model::probe_cpu_precision) and takes bf16 where it
// is at least 1.2x fp32, saying so on stderr as "deltatune <verb>: ...";
// `probe` receives the measurement. "auto" on a GPU is an Error.
inline constexpr const char* kPrecisionHelp =
    "fp32, bf16 (autocast: faster where the CPU's bf16 products are, scores differ from fp32 in "
    "the second or third digit) or auto (bf16 when a start-up probe finds its products >= 1.2x "
    "fp32's)";
model::Precision forward_precision(const std::string& choice, const at::Device& device,
                                   const std::string& verb,
                                   std::optional<model::PrecisionProbe>* probe = nullptr);
// Adds --precision (fp32, bf16, auto; default fp32) to `verb`.
CLI::Option* add_precision_option(CLI::App* verb, std::string& choice);

// $DELTATUNE_HOME/models/all-MiniLM-L6-v2 (what scripts/setup.sh fetches).
std::string default_model_dir();

// Re-runs the process with OPENBLAS_CORETYPE set when OpenBLAS fell back to
// generic kernels on a CPU it did not recognise (blas_kernels.cpp).
void use_native_blas_kernels(char** argv);

// train, eval, predict, export, analyze; `threads` receives --threads.
void register_training_verbs(CLI::App& app, Action& action, int& threads);

// serve: many tasks on one base over HTTP (serve_verb.cpp).
void register_serve_verb(CLI::App& app, Action& action, int& threads);

// launch: the ranks of a data-parallel job on this machine (launch_verb.cpp).
void register_launch_verb(CLI::App& app, Action& action);

// sweep: every cell of methods x tasks x seeds x sizes, resumable (sweep_verb.cpp).
void register_sweep_verb(CLI::App& app, Action& action);

// report: one HTML page of runs and sweeps (report_verb.cpp).
void register_report_verb(CLI::App& app, Action& action);

}  // namespace deltatune::cli
