// A progress bar for long work, on stderr: redrawn in place on a terminal,
// a plain log line every `log_interval_seconds` otherwise (CI logs, pipes).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace deltatune::io {

class ProgressBar {
 public:
  enum class Unit { kCount, kBytes };
  ProgressBar(std::string label, int64_t total, Unit unit = Unit::kCount,
              double log_interval_seconds = 10.0);
  ~ProgressBar();  // finishes the line if finish() was not called

  void advance(int64_t amount);
  void set(int64_t done);
  void set_suffix(std::string suffix);  // e.g. "loss 0.412"
  void finish();
  void set_enabled(bool enabled) { enabled_ = enabled; }  // disabled: draws nothing

  // "1:02:03" / "2:03" for seconds.
  static std::string format_duration(double seconds);

 private:
  void draw(bool final_line);
  std::string label_, suffix_;
  int64_t total_, done_ = 0;
  Unit unit_;
  double log_interval_;
  bool tty_, finished_ = false, enabled_ = true;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace deltatune::io
