#include "deltatune/train/interrupt.h"

#include <signal.h>

#include <atomic>

namespace deltatune::train {
namespace {

std::atomic<int> requested{0};

extern "C" void request_stop(int signal) { requested.store(signal); }

constexpr int kSignals[] = {SIGINT, SIGTERM};

}  // namespace

struct StopOnSignals::Previous {
  struct sigaction actions[2];
};

StopOnSignals::StopOnSignals() : previous_(std::make_unique<Previous>()) {
  struct sigaction action {};
  action.sa_handler = request_stop;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND;  // a second signal takes the default action
  for (int i = 0; i < 2; ++i) ::sigaction(kSignals[i], &action, &previous_->actions[i]);
}

StopOnSignals::~StopOnSignals() {
  for (int i = 0; i < 2; ++i) ::sigaction(kSignals[i], &previous_->actions[i], nullptr);
}

int stop_requested() { return requested.load(); }

void clear_stop_request() { requested.store(0); }

}  // namespace deltatune::train
