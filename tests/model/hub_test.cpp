// The Hub client against a real HTTP server on loopback that speaks the
// Hub's resolve protocol: small files served directly, LFS files through a
// redirect whose first response carries X-Linked-Etag, as huggingface.co does.
#include "deltatune/model/hub.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <fstream>
#include <thread>

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/io/sha256.h"
#include "deltatune/model/pretrained.h"
#include "test_paths.h"

namespace deltatune::model {
namespace {
namespace fs = std::filesystem;

std::string sha256_of(const std::string& bytes) {
  io::Sha256 hash;
  hash.update(bytes);
  return hash.hex_digest();
}

// Serves `source` as repository "org/tiny" at revision main on 127.0.0.1.
class FakeHub {
 public:
  explicit FakeHub(fs::path source) : source_(std::move(source)) {
    server_.Get(R"(/org/tiny/resolve/main/(.+))", [this](const httplib::Request& request,
                                                        httplib::Response& response) {
      const std::string file = request.matches[1];
      requests_.push_back(file);
      if (!fs::exists(source_ / file)) {
        response.status = 404;
        return;
      }
      const std::string bytes = io::read_text_file(source_ / file);
      if (file.find(".safetensors") != std::string::npos || file.find(".bin") != std::string::npos) {
        response.status = 302;
        response.set_header("X-Linked-Etag", "\"" + (lie_about_sha_ ? std::string(64, 'a')
                                                                     : sha256_of(bytes)) + "\"");
        response.set_header("Location", "/cdn/" + file);
        return;
      }
      response.set_header("ETag", "\"0123456789abcdef0123456789abcdef01234567\"");
      response.set_content(bytes, "application/octet-stream");
    });
    server_.Get(R"(/cdn/(.+))", [this](const httplib::Request& request, httplib::Response& response) {
      response.set_content(io::read_text_file(source_ / std::string(request.matches[1])),
                           "application/octet-stream");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::yield();
  }
  ~FakeHub() {
    server_.stop();
    thread_.join();
  }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  void lie_about_sha() { lie_about_sha_ = true; }

 private:
  fs::path source_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::vector<std::string> requests_;
  bool lie_about_sha_ = false;
};

HubOptions local(const FakeHub& hub) {
  HubOptions options;
  options.endpoint = hub.endpoint();
  options.progress = false;
  options.timeout_seconds = 10;
  return options;
}

TEST(Hub, DownloadsAModelDirectoryThatLoads) {
  const fs::path source = test::fixtures() / "model" / "tiny_roberta";
  FakeHub hub(source);
  test::ScratchDir tmp;
  const fs::path dest = tmp.path() / "models" / "tiny";
  HubDownload got = download_from_hub("org/tiny", dest, local(hub));
  EXPECT_FALSE(got.already_present);
  for (const char* file : {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json"}) {
    EXPECT_EQ(io::read_text_file(dest / file), io::read_text_file(source / file)) << file;
  }
  EXPECT_FALSE(fs::exists(dest / "vocab.txt"));  // absent upstream: not created
  auto loaded = load_classifier(dest);
  EXPECT_TRUE(loaded.report.initialized.empty());
  // A second call keeps what is there and fetches nothing.
  EXPECT_TRUE(download_from_hub("org/tiny", dest, local(hub)).already_present);
}

TEST(Hub, ChecksumMismatchLeavesNothingBehind) {
  FakeHub hub(test::fixtures() / "model" / "tiny_bert");
  hub.lie_about_sha();
  test::ScratchDir tmp;
  const fs::path dest = tmp.path() / "tiny";
  try {
    download_from_hub("org/tiny", dest, local(hub));
    FAIL() << "expected a checksum error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("org/tiny/model.safetensors: sha256"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dest));
  EXPECT_TRUE(fs::is_empty(tmp.path()));
}

TEST(Hub, MissingRepositoryAndUnreachableServerAreClearErrors) {
  FakeHub hub(test::fixtures() / "model" / "tiny_bert");
  test::ScratchDir tmp;
  try {
    download_from_hub("org/absent", tmp.path() / "x", local(hub));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("org/absent: no config.json"), std::string::npos) << e.what();
  }
  HubOptions closed = local(hub);
  closed.endpoint = "http://127.0.0.1:1";  // nothing listens on port 1
  try {
    download_from_hub("org/tiny", tmp.path() / "y", closed);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("request to http://127.0.0.1:1 failed"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(download_from_hub("../etc", tmp.path() / "z", local(hub)), Error);
}

}  // namespace
}  // namespace deltatune::model
