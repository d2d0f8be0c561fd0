// deltatune launch --nproc N -- train ...: the ranks of a data-parallel job on
// this machine, in torchrun's environment, without Python. The launcher only
// starts, watches and stops processes; every rank runs the ordinary command.
#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "commands.h"
#include "deltatune/error.h"
#include "deltatune/io/cpus.h"

namespace deltatune::cli {
namespace {

struct LaunchOptions {
  int nproc = 2;
  int master_port = 0;  // 0: a free one
  double grace_s = 30;  // after a rank fails, how long the others get before SIGKILL
  bool all_output = false;
  std::vector<std::string> command;
};

std::atomic<int> forwarded_signal{0};
extern "C" void remember_signal(int signal) { forwarded_signal.store(signal); }

// A loopback port nothing listens on now (the kernel's choice), as torchrun
// picks one for --standalone.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error(std::string("launch: socket: ") + std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    throw Error("launch: no free loopback port: " + why);
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

std::string describe(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("was killed by signal {}", WTERMSIG(status));
  return "stopped";
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

int run_launch(const LaunchOptions& o) {
  if (o.command.empty())
    throw Error("launch: no command after --, e.g. launch --nproc 2 -- train ...");
  const int port = o.master_port > 0 ? o.master_port : free_port();
  // One intra-op thread share per rank unless the user chose (torchrun sets
  // OMP_NUM_THREADS=1); ranks oversubscribing the cores slow each other.
  const std::string threads = std::getenv("OMP_NUM_THREADS")
                                  ? std::string(std::getenv("OMP_NUM_THREADS"))
                                  : std::to_string(std::max<size_t>(
                                        1, io::available_cpus() / static_cast<size_t>(o.nproc)));

  struct sigaction action {};
  action.sa_handler = remember_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  std::vector<pid_t> ranks;
  for (int rank = 0; rank < o.nproc; ++rank) {
    const pid_t pid = ::fork();
    if (pid < 0) throw Error(std::string("launch: fork: ") + std::strerror(errno));
    if (pid == 0) {
      // A rank never outlives its launcher.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      std::signal(SIGINT, SIG_DFL);
      std::signal(SIGTERM, SIG_DFL);
      const std::string r = std::to_string(rank), world = std::to_string(o.nproc);
      ::setenv("RANK", r.c_str(), 1);
      ::setenv("LOCAL_RANK", r.c_str(), 1);
      ::setenv("GROUP_RANK", "0", 1);
      ::setenv("WORLD_SIZE", world.c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", world.c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("OMP_NUM_THREADS", threads.c_str(), 1);
      ::unsetenv("TORCHELASTIC_USE_AGENT_STORE");
      if (rank > 0 && !o.all_output) {
        // Rank 0 prints the results; the others' stdout would repeat them.
        const int null = ::open("/dev/null", O_WRONLY);
        if (null >= 0) ::dup2(null, STDOUT_FILENO);
      }
      std::vector<std::string> args{"deltatune"};
      args.insert(args.end(), o.command.begin(), o.command.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "deltatune launch: rank %d: exec failed: %s\n", rank,
                   std::strerror(errno));
      std::_Exit(127);
    }
    ranks.push_back(pid);
  }
  fmt::print(stderr, "deltatune launch: {} ranks on 127.0.0.1:{}, OMP_NUM_THREADS={}\n", o.nproc,
             port, threads);

  std::vector<bool> running(ranks.size(), true);
  int left = o.nproc, result = 0, signalled = 0;
  bool failed = false;
  auto kill_running = [&](int signal) {
    for (size_t i = 0; i < ranks.size(); ++i)
      if (running[i]) ::kill(ranks[i], signal);
  };
  std::chrono::steady_clock::time_point kill_at{};
  while (left > 0) {
    if (const int s = forwarded_signal.exchange(0); s != 0) {
      signalled = s;
      kill_running(s);  // each rank checkpoints at the step the signal reached any of them
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (size_t i = 0; i < ranks.size(); ++i) {
        if (ranks[i] != pid || !running[i]) continue;
        running[i] = false;
        --left;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && !failed && signalled == 0) {
          failed = true;
          result = exit_code(status);
          fmt::print(stderr, "deltatune launch: rank {} (pid {}) {}; stopping the other ranks\n", i,
                     pid, describe(status));
          kill_running(SIGTERM);
          kill_at = std::chrono::steady_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(o.grace_s * 1000));
        } else if (i == 0 && !failed) {
          result = exit_code(status);
        }
      }
      continue;
    }
    if (pid < 0 && errno != EINTR) break;
    if (failed && std::chrono::steady_clock::now() >= kill_at) {
      kill_running(SIGKILL);
      kill_at = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return result;
}

}  // namespace

void register_launch_verb(CLI::App& app, Action& action) {
  auto o = std::make_shared<LaunchOptions>();
  auto* launch = app.add_subcommand(
      "launch",
      "run a data-parallel job on this machine: N ranks of a command in torchrun's environment "
      "(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), e.g. launch --nproc 2 -- train "
      "--task SST-2");
  launch->add_option("--nproc,--nproc-per-node", o->nproc, "ranks to start")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  launch->add_option("--master-port", o->master_port, "rendezvous port (default: a free one)");
  launch
      ->add_option("--grace", o->grace_s,
                   "seconds the other ranks get to stop after one fails, then SIGKILL")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  launch->add_flag("--all-output", o->all_output, "keep every rank's stdout (default: rank 0's)");
  launch->add_option("command", o->command, "the deltatune command every rank runs, after --")
      ->required();
  launch->footer("Give the ranks' command after --: launch --nproc 2 -- train --task SST-2 ...");
  launch->callback([&action, o] { action = [o] { return run_launch(*o); }; });
}

}  // namespace deltatune::cli
