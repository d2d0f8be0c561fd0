#include "deltatune/io/gnuplot.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"

extern char** environ;

namespace deltatune::io {
namespace fs = std::filesystem;

namespace {

// A directory removed with everything in it when the scope ends.
class ScratchDirectory {
 public:
  ScratchDirectory() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = (fs::path(tmp && *tmp ? tmp : "/tmp") / "deltatune-plot-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr)
      throw Error(std::string("cannot make a scratch directory for gnuplot: ") +
                  std::strerror(errno));
    path_ = pattern;
  }
  ~ScratchDirectory() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  ScratchDirectory(const ScratchDirectory&) = delete;
  ScratchDirectory& operator=(const ScratchDirectory&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Runs `gnuplot script` with stdout and stderr in `log`; returns its exit
// status, or -1 when gnuplot could not be started (not installed).
int run_gnuplot(const fs::path& script, const fs::path& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::string program = "gnuplot", argument = script.string();
  char* argv[] = {program.data(), argument.data(), nullptr};
  pid_t pid = 0;
  const int spawned = ::posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// gnuplot's first complaint: the line after its echo of the offending input.
std::string first_error(const std::string& log) {
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);)
    if (line.find("line ") != std::string::npos && line.find(':') != std::string::npos) return line;
  const size_t end = log.find('\n');
  return log.substr(0, end);
}

}  // namespace

std::string gnuplot_quote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) {
    if (c == '\'')
      quoted += "''";
    else if (c != '\n' && c != '\r')
      quoted += c;
  }
  return quoted + "'";
}

std::string gnuplot_svg(const std::string& script, const std::vector<PlotData>& data, int width,
                        int height, const std::string& id_prefix) {
  ScratchDirectory scratch;
  for (const PlotData& file : data) {
    if (file.name.empty() || file.name.find('/') != std::string::npos)
      throw Error("gnuplot data file name '" + file.name + "' must be a plain file name");
    std::ofstream(scratch.path() / file.name) << file.text;
  }
  const fs::path svg = scratch.path() / "chart.svg";
  std::ofstream(scratch.path() / "chart.gp")
      << "set terminal svg size " << width << "," << height
      << " noenhanced font 'DejaVu Sans,12' background rgb 'white'\n"
      << "set output " << gnuplot_quote(svg.string()) << "\n"
      << "cd " << gnuplot_quote(scratch.path().string()) << "\n"
      << script << "\nunset output\n";
  const fs::path log = scratch.path() / "gnuplot.log";
  const int status = run_gnuplot(scratch.path() / "chart.gp", log);
  if (status < 0)
    throw Error(
        "gnuplot not found: the report draws its charts with it (Debian: apt-get install "
        "gnuplot-nox, or scripts/setup.sh)");
  if (status != 0)
    throw Error("gnuplot failed (exit " + std::to_string(status) +
                "): " + first_error(read_text_file(log)));
  std::string text = read_text_file(svg);
  const size_t start = text.find("<svg");
  if (start == std::string::npos) throw Error("gnuplot wrote no SVG");
  text.erase(0, start);
  // Ids made unique per chart: id='x' and every reference to it (#x).
  static const std::regex id_attribute("id=(['\"])");
  static const std::regex reference("(href=['\"]|url\\()#");
  text = std::regex_replace(text, id_attribute, "id=$1" + id_prefix);
  text = std::regex_replace(text, reference, "$1#" + id_prefix);
  return text;
}

}  // namespace deltatune::io
