#include "deltatune/io/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "deltatune/error.h"
#include "deltatune/io/crash_point.h"

namespace deltatune::io {
namespace fs = std::filesystem;

namespace {

fs::path temporary_sibling(const fs::path& path) {
  std::random_device entropy;
  std::ostringstream name;
  name << "." << path.filename().string() << ".tmp." << ::getpid() << "." << std::hex << entropy();
  return path.parent_path() / name.str();
}

// Flushes a file's or a directory's contents (a directory: its entries) to
// the disk; a failure (a full disk reported late) names `what`.
void fsync_path(const fs::path& path, const fs::path& what) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  const int failed = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (failed != 0 && error != EINVAL)
    throw Error("write to " + what.string() + " failed: " + std::strerror(error));
}

// ".<name>.partial-<pid>-<random>" beside `dir`: where a directory is built
// before it replaces `dir`.
std::string partial_marker(const fs::path& dir) {
  return "." + dir.filename().string() + ".partial-";
}

}  // namespace

void remove_abandoned_partials(const fs::path& dir) {
  const std::string marker = partial_marker(dir);
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir.parent_path(), ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(marker, 0) != 0) continue;
    const long pid = std::strtol(name.c_str() + marker.size(), nullptr, 10);
    if (pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH)) continue;
    std::error_code ignored;
    fs::remove_all(entry.path(), ignored);
  }
}

void write_file_atomically(const fs::path& path, const std::function<void(std::ostream&)>& writer) {
  const fs::path temporary = temporary_sibling(path);
  try {
    {
      std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
      if (!out) {
        throw Error("cannot write " + path.string() + ": " + std::strerror(errno));
      }
      writer(out);
      out.flush();
      if (!out) throw Error("write to " + path.string() + " failed: " + std::strerror(errno));
    }
    fsync_path(temporary, path);
    std::error_code ec;
    fs::rename(temporary, path, ec);
    if (ec) throw Error("cannot rename into " + path.string() + ": " + ec.message());
  } catch (...) {
    std::error_code ignored;
    fs::remove(temporary, ignored);
    throw;
  }
}

void write_directory_atomically(const fs::path& dir,
                                const std::function<void(const fs::path&)>& writer) {
  const fs::path parent = dir.parent_path().empty() ? fs::path(".") : dir.parent_path();
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) throw Error("cannot create " + parent.string() + ": " + ec.message());
  const fs::path target = parent / dir.filename();
  remove_abandoned_partials(target);
  std::string pattern =
      (parent / (partial_marker(target) + std::to_string(::getpid()) + "-XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr)
    throw Error("cannot write " + target.string() + ": " + std::strerror(errno));
  const fs::path staging = pattern;
  try {
    writer(staging);
    fsync_path(staging, target);
    crash_point("write:" + target.filename().string());
    if (fs::is_directory(target)) {
      // One atomic swap: `target` is the old directory or the new one, never a mix.
      if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) != 0)
        throw Error("cannot replace " + target.string() + ": " + std::strerror(errno));
    } else if (::rename(staging.c_str(), target.c_str()) != 0) {
      throw Error("cannot write " + target.string() + ": " + std::strerror(errno));
    }
    fsync_path(parent, target);
    crash_point("swapped:" + target.filename().string());
  } catch (const Error& e) {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    // Errors name the directory the user asked for, not the staging one.
    std::string message = e.what();
    for (size_t at; (at = message.find(staging.string())) != std::string::npos;)
      message.replace(at, staging.string().size(), target.string());
    throw Error(message);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    throw;
  }
  std::error_code ignored;
  fs::remove_all(staging, ignored);  // after the swap: the old directory
}

void write_text_atomically(const fs::path& path, std::string_view text) {
  write_file_atomically(path, [&](std::ostream& out) { out.write(text.data(), text.size()); });
}

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path.string() + ": " + std::strerror(errno));
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) throw Error("read error in " + path.string());
  return content.str();
}

}  // namespace deltatune::io
