// The CLI's verbs, grouped by file; each registers its subcommand and sets
// `action` to what runs when that subcommand is chosen.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace deltatune::cli {

using Action = std::function<int()>;

// $DELTATUNE_HOME/models/all-MiniLM-L6-v2 (what scripts/setup.sh fetches).
std::string default_model_dir();

// train, eval, predict, export, analyze; `threads` receives --threads.
void register_training_verbs(CLI::App& app, Action& action, int& threads);

}  // namespace deltatune::cli
