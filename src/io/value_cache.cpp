#include "deltatune/io/value_cache.h"

#include <sys/stat.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"

namespace deltatune::io {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// {"entries": [[key, value], ...]}, most recent last.
json read_table(const fs::path& path) {
  try {
    if (!fs::exists(path)) return json::object();
    json table = json::parse(read_text_file(path));
    if (table.is_object() && table.contains("entries") && table["entries"].is_array()) return table;
  } catch (const std::exception&) {  // a damaged cache is recomputed
  }
  return json::object();
}

}  // namespace

fs::path cache_directory() {
  if (const char* dir = std::getenv("DELTATUNE_CACHE_DIR"); dir && *dir) return dir;
  if (const char* home = std::getenv("DELTATUNE_HOME"); home && *home)
    return fs::path(home) / "cache";
  const char* user_home = std::getenv("HOME");
  return fs::path(user_home ? user_home : ".") / ".cache" / "deltatune" / "cache";
}

std::optional<std::string> cached_value(const std::string& table, const std::string& key) {
  const json entries = read_table(cache_directory() / (table + ".json")).value("entries", json());
  if (!entries.is_array()) return std::nullopt;
  for (const json& entry : entries)
    if (entry.is_array() && entry.size() == 2 && entry[0] == key && entry[1].is_string())
      return entry[1].get<std::string>();
  return std::nullopt;
}

void remember_value(const std::string& table, const std::string& key, const std::string& value,
                    size_t capacity) {
  const fs::path path = cache_directory() / (table + ".json");
  json kept = json::array();
  for (const json& entry : read_table(path).value("entries", json::array()))
    if (entry.is_array() && entry.size() == 2 && entry[0] != key) kept.push_back(entry);
  kept.push_back(json::array({key, value}));
  while (kept.size() > capacity) kept.erase(kept.begin());
  try {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    write_text_atomically(path, json{{"entries", kept}}.dump(1) + "\n");
  } catch (const Error&) {  // a read-only home: the value is computed next time too
  }
}

std::string file_identity(const fs::path& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) return {};
  return std::to_string(info.st_dev) + ":" + std::to_string(info.st_ino) + ":" +
         std::to_string(info.st_size) + ":" + std::to_string(info.st_mtim.tv_sec) + "." +
         std::to_string(info.st_mtim.tv_nsec) + ":" + std::to_string(info.st_ctim.tv_sec) + "." +
         std::to_string(info.st_ctim.tv_nsec);
}

}  // namespace deltatune::io
