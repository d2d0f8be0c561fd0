#include "deltatune/io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "deltatune/error.h"

namespace deltatune::io {
namespace fs = std::filesystem;

namespace {

fs::path temporary_sibling(const fs::path& path) {
  std::random_device entropy;
  std::ostringstream name;
  name << "." << path.filename().string() << ".tmp." << ::getpid() << "." << std::hex << entropy();
  return path.parent_path() / name.str();
}

void fsync_file(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

void write_file_atomically(const fs::path& path,
                           const std::function<void(std::ostream&)>& writer) {
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
    fsync_file(temporary);
    std::error_code ec;
    fs::rename(temporary, path, ec);
    if (ec) throw Error("cannot rename into " + path.string() + ": " + ec.message());
  } catch (...) {
    std::error_code ignored;
    fs::remove(temporary, ignored);
    throw;
  }
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
