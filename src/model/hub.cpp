#include "deltatune/model/hub.h"

#include <httplib.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>

#include "deltatune/error.h"
#include "deltatune/io/progress.h"
#include "deltatune/io/sha256.h"

namespace deltatune::model {
namespace fs = std::filesystem;

namespace {

struct Url {
  std::string origin;  // scheme://host[:port]
  std::string path;    // starts with '/'
};

Url split_url(const std::string& url) {
  const size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos) throw Error("not an absolute URL: " + url);
  const size_t path_start = url.find('/', scheme_end + 3);
  if (path_start == std::string::npos) return {url, "/"};
  return {url.substr(0, path_start), url.substr(path_start)};
}

std::string unquote(std::string value) {
  if (value.rfind("W/", 0) == 0) value = value.substr(2);
  if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
    value = value.substr(1, value.size() - 2);
  return value;
}

bool is_sha256(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

// Outcome of fetching one file; nullopt status means "absent" (404).
struct Fetched {
  bool found = false;
  int64_t bytes = 0;
};

class HubClient {
 public:
  HubClient(std::string repo_id, HubOptions options)
      : repo_id_(std::move(repo_id)), options_(std::move(options)) {}

  // GET with manual redirects, so the sha256 the Hub puts on the first
  // (redirecting) response of an LFS file is not lost.
  Fetched fetch(const std::string& file, const fs::path& target) {
    std::string url =
        options_.endpoint + "/" + repo_id_ + "/resolve/" + options_.revision + "/" + file;
    std::string expected_sha256;
    for (int hop = 0; hop < 8; ++hop) {
      Url parts = split_url(url);
      httplib::Client client(parts.origin);
      client.set_connection_timeout(options_.timeout_seconds);
      client.set_read_timeout(options_.timeout_seconds);
      client.set_follow_location(false);
      httplib::Headers headers{{"User-Agent", "deltatune/0.1"}};
      if (!options_.token.empty() && hop == 0)
        headers.emplace("Authorization", "Bearer " + options_.token);

      std::ofstream out;
      io::Sha256 hash;
      int64_t received = 0, announced = -1;
      std::unique_ptr<io::ProgressBar> bar;
      int status = 0;
      auto result = client.Get(
          parts.path.c_str(), headers,
          [&](const httplib::Response& response) {
            status = response.status;
            if (response.has_header("X-Linked-Etag")) {
              std::string linked = unquote(response.get_header_value("X-Linked-Etag"));
              if (is_sha256(linked)) expected_sha256 = linked;
            }
            if (status != 200) return true;  // body of a redirect or error: not ours
            if (expected_sha256.empty() && response.has_header("ETag")) {
              std::string etag = unquote(response.get_header_value("ETag"));
              if (is_sha256(etag)) expected_sha256 = etag;
            }
            if (response.has_header("Content-Length"))
              announced = std::stoll(response.get_header_value("Content-Length"));
            out.open(target, std::ios::binary | std::ios::trunc);
            if (options_.progress && announced > (1 << 20))
              bar =
                  std::make_unique<io::ProgressBar>(file, announced, io::ProgressBar::Unit::kBytes);
            return static_cast<bool>(out);
          },
          [&](const char* data, size_t length) {
            if (status != 200) return true;
            out.write(data, length);
            hash.update(data, length);
            received += length;
            if (bar) bar->set(received);
            return static_cast<bool>(out);
          });
      if (!result)
        throw Error(repo_id_ + "/" + file + ": request to " + parts.origin + " failed (" +
                    httplib::to_string(result.error()) + ")");
      const auto& response = result.value();
      if (response.status >= 300 && response.status < 400 && response.has_header("Location")) {
        std::string location = response.get_header_value("Location");
        url = location.rfind("http", 0) == 0 ? location : parts.origin + location;
        continue;
      }
      if (response.status == 404) return {};
      if (response.status == 401 || response.status == 403)
        throw Error(repo_id_ + "/" + file + ": HTTP " + std::to_string(response.status) +
                    " (private or gated repository: set HF_TOKEN)");
      if (response.status != 200)
        throw Error(repo_id_ + "/" + file + ": HTTP " + std::to_string(response.status));
      out.close();
      if (bar) bar->finish();
      if (!out) throw Error("cannot write " + target.string());
      if (announced >= 0 && received != announced)
        throw Error(repo_id_ + "/" + file + ": received " + std::to_string(received) + " of " +
                    std::to_string(announced) + " bytes");
      if (!expected_sha256.empty()) {
        const std::string actual = hash.hex_digest();
        if (actual != expected_sha256)
          throw Error(repo_id_ + "/" + file + ": sha256 " + actual + " does not match the " +
                      expected_sha256 + " the server announced");
      }
      return {true, received};
    }
    throw Error(repo_id_ + "/" + file + ": too many redirects");
  }

 private:
  std::string repo_id_;
  HubOptions options_;
};

const char* kTokenizerFiles[] = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
    "merges.txt"};

}  // namespace

HubDownload download_from_hub(const std::string& repo_id, const fs::path& destination,
                              HubOptions options) {
  if (repo_id.empty() || repo_id.find("..") != std::string::npos || repo_id.front() == '/')
    throw Error("invalid repository id '" + repo_id + "' (expected owner/name)");
  if (options.endpoint.empty()) {
    const char* endpoint = std::getenv("HF_ENDPOINT");
    options.endpoint = endpoint && *endpoint ? endpoint : "https://huggingface.co";
  }
  while (!options.endpoint.empty() && options.endpoint.back() == '/') options.endpoint.pop_back();
  if (options.token.empty()) {
    if (const char* token = std::getenv("HF_TOKEN")) options.token = token;
  }

  HubDownload result;
  result.directory = destination;
  if (fs::exists(destination / "config.json") && (fs::exists(destination / "model.safetensors") ||
                                                  fs::exists(destination / "pytorch_model.bin"))) {
    result.already_present = true;
    return result;
  }
  if (fs::exists(destination) && !fs::is_empty(destination))
    throw Error(destination.string() + " exists and is not a complete model directory");

  fs::create_directories(destination.parent_path().empty() ? fs::path(".")
                                                           : destination.parent_path());
  const fs::path staging = destination.string() + ".partial-" + std::to_string(::getpid());
  fs::remove_all(staging);
  fs::create_directories(staging);
  try {
    HubClient client(repo_id, options);
    if (!client.fetch("config.json", staging / "config.json").found)
      throw Error(repo_id + ": no config.json at revision " + options.revision +
                  " (not a model repository, or a wrong name)");
    result.files.push_back("config.json");
    if (client.fetch("model.safetensors", staging / "model.safetensors").found) {
      result.files.push_back("model.safetensors");
    } else if (client.fetch("pytorch_model.bin", staging / "pytorch_model.bin").found) {
      result.files.push_back("pytorch_model.bin");
    } else {
      throw Error(repo_id + ": neither model.safetensors nor pytorch_model.bin at revision " +
                  options.revision);
    }
    for (const char* file : kTokenizerFiles) {
      if (client.fetch(file, staging / file).found) {
        result.files.push_back(file);
      } else {
        fs::remove(staging / file);
      }
    }
    if (fs::exists(destination)) fs::remove(destination);  // empty, checked above
    fs::rename(staging, destination);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    throw;
  }
  return result;
}

}  // namespace deltatune::model
