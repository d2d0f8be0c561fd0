// A whole run's figures, for a method of several stages as for one.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>

namespace deltatune::train {

// A run's figures from the closing records of its stages ({"steps",
// "seconds", "eval_seconds", "train_tokens_per_s"}, in stage order; a record
// without them, a transition's, adds nothing): steps and seconds summed,
// tokens/s as every stage's training tokens over every stage's training
// time (evaluations excluded).
struct RunFigures {
  int64_t steps = 0;
  double seconds = 0;
  double train_tokens_per_second = 0;
};
RunFigures whole_run_figures(const nlohmann::json& closing_records);

}  // namespace deltatune::train
