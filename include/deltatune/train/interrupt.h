// Stopping a run cleanly on SIGINT or SIGTERM: the trainer checks for a
// request at every optimizer step, writes a checkpoint and throws
// Interrupted, which the command line turns into exit status 128 + signal
// (130 for SIGINT, 143 for SIGTERM), as shells report a process the signal killed.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>

namespace deltatune::train {

// While one lives, SIGINT and SIGTERM request a stop instead of killing the
// process; a second signal kills it as usual (the handler resets itself).
// The previous handlers come back when it is destroyed.
class StopOnSignals {
 public:
  StopOnSignals();
  ~StopOnSignals();
  StopOnSignals(const StopOnSignals&) = delete;
  StopOnSignals& operator=(const StopOnSignals&) = delete;

 private:
  struct Previous;  // the handlers replaced
  std::unique_ptr<Previous> previous_;
};

// The signal that requested a stop, 0 when none did.
int stop_requested();
// Forgets a request (a library user who handled it and goes on).
void clear_stop_request();

// Thrown by training after it checkpointed on a stop request.
class Interrupted : public std::runtime_error {
 public:
  Interrupted(int signal, const std::string& message)
      : std::runtime_error(message), signal_(signal) {}
  int signal() const { return signal_; }
  // 128 + the signal.
  int exit_status() const { return 128 + signal_; }

 private:
  int signal_;
};

}  // namespace deltatune::train
