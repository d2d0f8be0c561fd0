// Fetching a model directory from the Hugging Face Hub (or any server that
// speaks its /<repo>/resolve/<revision>/<file> protocol, e.g. a mirror set
// with HF_ENDPOINT).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace deltatune::model {

struct HubOptions {
  std::string endpoint;     // default: $HF_ENDPOINT, else https://huggingface.co
  std::string revision = "main";
  std::string token;        // default: $HF_TOKEN; sent as a bearer token
  bool progress = true;     // progress bars on stderr
  int timeout_seconds = 60; // connect / read timeout
};

struct HubDownload {
  std::filesystem::path directory;
  std::vector<std::string> files;  // what was fetched
  bool already_present = false;
};

// Downloads config.json, the weights (model.safetensors, else
// pytorch_model.bin) and whichever tokenizer files the repository has into
// `destination`. LFS files are checked against the sha256 the Hub announces
// (X-Linked-Etag); others against Content-Length. Files land in a staging
// directory renamed into place at the end: `destination` either holds the
// whole model or is untouched. An existing complete `destination` is kept.
// Throws deltatune::Error naming the repository, file and HTTP status.
HubDownload download_from_hub(const std::string& repo_id, const std::filesystem::path& destination,
                              HubOptions options = {});

}  // namespace deltatune::model
