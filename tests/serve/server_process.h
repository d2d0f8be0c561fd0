// The real `deltatune serve` binary on an ephemeral loopback port, for the
// HTTP tests: started with fork/exec, its port read from its first stdout line.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "test_paths.h"

namespace deltatune::test {

class ServerProcess {
 public:
  explicit ServerProcess(std::vector<std::string> arguments) {
    std::vector<std::string> argv = {DELTATUNE_CLI, "serve", "--model",   minilm_dir().string(),
                                     "--port",      "0",     "--threads", "1"};
    argv.insert(argv.end(), arguments.begin(), arguments.end());
    int out[2];
    if (pipe(out) != 0) throw std::runtime_error("pipe failed");
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      close(out[1]);
      std::vector<char*> raw;
      for (auto& a : argv) raw.push_back(a.data());
      raw.push_back(nullptr);
      execv(raw[0], raw.data());
      _exit(127);
    }
    close(out[1]);
    stdout_ = out[0];
    // The first line names the address; anything else before a deadline is a failure.
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    char c;
    while (std::chrono::steady_clock::now() < deadline && read(stdout_, &c, 1) == 1 && c != '\n')
      line += c;
    std::smatch m;
    if (!std::regex_search(line, m, std::regex(R"(http://[^:]+:(\d+))")))
      throw std::runtime_error("deltatune serve did not start: '" + line + "'");
    port_ = std::stoi(m[1]);
  }
  ~ServerProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (stdout_ >= 0) close(stdout_);
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(60, 0);
    return c;
  }
  void signal(int number) const { kill(pid_, number); }
  // The exit status after a signal, waiting at most `seconds` (-1: still running).
  int wait_exit(int seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int stdout_ = -1;
  int port_ = 0;
  bool exited_ = false;
};

}  // namespace deltatune::test
