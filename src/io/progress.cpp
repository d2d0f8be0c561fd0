#include "deltatune/io/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fmt/core.h>

namespace deltatune::io {

namespace {

std::string amount(int64_t value, ProgressBar::Unit unit) {
  if (unit == ProgressBar::Unit::kCount) return std::to_string(value);
  return fmt::format("{:.1f} MB", static_cast<double>(value) / 1e6);
}

}  // namespace

ProgressBar::ProgressBar(std::string label, int64_t total, Unit unit, double log_interval_seconds)
    : label_(std::move(label)),
      total_(total),
      unit_(unit),
      log_interval_(log_interval_seconds),
      tty_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() {
  if (!finished_) finish();
}

void ProgressBar::advance(int64_t amount) { set(done_ + amount); }

void ProgressBar::set(int64_t done) {
  done_ = done;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if ((tty_ && since >= 0.1) || (!tty_ && since >= log_interval_)) {
    last_draw_ = now;
    draw(false);
  }
}

void ProgressBar::set_suffix(std::string suffix) { suffix_ = std::move(suffix); }

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

std::string ProgressBar::format_duration(double seconds) {
  const auto total = static_cast<int64_t>(seconds + 0.5);
  const int64_t h = total / 3600, m = (total / 60) % 60, s = total % 60;
  return h > 0 ? fmt::format("{}:{:02}:{:02}", h, m, s) : fmt::format("{}:{:02}", m, s);
}

void ProgressBar::draw(bool final_line) {
  if (!enabled_) return;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? done_ / elapsed : 0.0;
  std::string line = label_ + " ";
  if (total_ > 0) {
    const double fraction = std::min(1.0, static_cast<double>(done_) / total_);
    const int width = 24, filled = std::clamp(static_cast<int>(fraction * width), 0, width);
    line += "[" + std::string(filled, '#') + std::string(width - filled, '.') + "] ";
    line += fmt::format("{:3.0f}% {}/{}", fraction * 100, amount(done_, unit_), amount(total_, unit_));
    const double remaining = rate > 0 ? (total_ - done_) / rate : 0.0;
    line += final_line ? fmt::format(" in {}", format_duration(elapsed))
                       : fmt::format(" ETA {}", format_duration(remaining));
  } else {
    line += fmt::format("{} in {}", amount(done_, unit_), format_duration(elapsed));
  }
  line += unit_ == Unit::kBytes ? fmt::format(" {:.1f} MB/s", rate / 1e6)
                                : fmt::format(" {:.1f}/s", rate);
  if (!suffix_.empty()) line += " " + suffix_;
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final_line ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace deltatune::io
