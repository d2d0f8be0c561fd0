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

// MiniLM's config and weights copied to `dir`: files of a new identity, whose
// checksum nothing has cached.
fs::path copy_of_minilm(const fs::path& dir) {
  fs::create_directories(dir);
  for (const char* name : {"config.json", "model.safetensors"})
    fs::copy_file(test::minilm_dir() / name, dir / name);
  return dir;
}

TEST(BaseChecksumCache, AHitIsUsedAndAWriteToTheWeightsComputesItAgain) {
  test::ScratchDir dir;
  const fs::path model = copy_of_minilm(dir.path() / "model"), cache = dir.path() / "cache";
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

// Computing the checksum reads every weight; it must not leave them resident
// in the base's mapping, where a training process would carry them (and its
// RSS count them a second time beside the task model's own mapping: 430 MB
// for a BERT-base-size base). A fresh copy of MiniLM (90 MB) is uncached.
TEST(BaseChecksumCache, ComputingItLeavesNoWeightPagesResident) {
  test::ScratchDir dir;
  const fs::path model = copy_of_minilm(dir.path() / "model"), cache = dir.path() / "cache";
  ScratchCache scoped(cache);
  const int64_t before = test::resident_file_kb();
  ASSERT_GE(before, 0) << "no RssFile in /proc/self/status";
  const BaseModel base = load_base(model);
  const int64_t grown = test::resident_file_kb() - before;
  ASSERT_TRUE(fs::exists(cache / "base-checksums.json")) << "the checksum was not computed";
  EXPECT_LT(grown, 20 * 1024) << "kB of the base's weights left resident by hashing";
  // The weights themselves are still there to read.
  EXPECT_EQ(base.checksum,
            model::weights_checksum(model::read_checkpoint(model), base.config.architecture));
}

}  // namespace
}  // namespace deltatune::train
