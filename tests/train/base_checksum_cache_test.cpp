// The base checkpoint's checksum is cached under the identity of its files:
// a hit is used as stored, and any write to the weights makes it computed
// again.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "deltatune/io/atomic_file.h"
#include "deltatune/io/value_cache.h"
#include "deltatune/model/pretrained.h"
#include "deltatune/train/task_model.h"
#include "test_paths.h"

namespace deltatune::train {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

// DELTATUNE_CACHE_DIR pointed at a scratch directory for the scope.
class ScratchCache {
 public:
  explicit ScratchCache(const fs::path& dir) {
    if (const char* old = std::getenv("DELTATUNE_CACHE_DIR")) previous_ = old;
    ::setenv("DELTATUNE_CACHE_DIR", dir.c_str(), 1);
  }
  ~ScratchCache() {
    if (previous_.empty())
      ::unsetenv("DELTATUNE_CACHE_DIR");
    else
      ::setenv("DELTATUNE_CACHE_DIR", previous_.c_str(), 1);
  }

 private:
  std::string previous_;
};

TEST(BaseChecksumCache, AHitIsUsedAndAWriteToTheWeightsComputesItAgain) {
  test::ScratchDir dir;
  const fs::path model = dir.path() / "model", cache = dir.path() / "cache";
  fs::create_directories(model);
  for (const char* name : {"config.json", "model.safetensors"})
    fs::copy_file(test::minilm_dir() / name, model / name);
  ScratchCache scoped(cache);

  const BaseModel first = load_base(model);
  EXPECT_EQ(first.checksum, model::weights_checksum(first.checkpoint, first.config.architecture));
  const fs::path table = cache / "base-checksums.json";
  ASSERT_TRUE(fs::exists(table));
  json stored = json::parse(io::read_text_file(table));
  ASSERT_EQ(stored["entries"].size(), 1u);

  // A hit is taken as stored (shown with a planted value).
  stored["entries"][0][1] = "planted";
  io::write_text_atomically(table, stored.dump());
  EXPECT_EQ(load_base(model).checksum, "planted");

  // The same bytes written again: the file's change time moves, the cache misses.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const std::string bytes = io::read_text_file(model / "model.safetensors");
  std::ofstream(model / "model.safetensors", std::ios::binary | std::ios::trunc) << bytes;
  EXPECT_EQ(load_base(model).checksum, first.checksum);

  // An unwritable cache is no error.
  ScratchCache nowhere(dir.path() / "model" / "config.json" / "not-a-directory");
  EXPECT_EQ(load_base(model).checksum, first.checksum);
}

}  // namespace
}  // namespace deltatune::train
