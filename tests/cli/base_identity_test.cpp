// A delta is applied only to the base it was made on, where "the base" is
// every tensor the task model reads: for BERT that includes the pooler its
// classifier uses. --allow-base-mismatch applies it anyway, with a warning.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/cli_run.h"
#include "deltatune/io/safetensors.h"
#include "deltatune/methods/delta.h"
#include "test_paths.h"

namespace deltatune {
namespace {
namespace fs = std::filesystem;

// A copy of the MiniLM base with one byte of `tensor` flipped in its file.
void copy_base_with_one_byte_changed(const fs::path& to, const std::string& tensor) {
  const fs::path from = test::minilm_dir();
  fs::create_directories(to);
  for (const auto& entry : fs::directory_iterator(from))
    fs::copy_file(entry.path(), to / entry.path().filename());
  const fs::path weights = to / "model.safetensors";
  uint64_t begin = 0, header = 0;
  {
    const io::SafetensorsFile file = io::SafetensorsFile::open(weights);
    begin = file.entry(tensor).begin;
  }
  std::fstream bytes(weights, std::ios::in | std::ios::out | std::ios::binary);
  bytes.read(reinterpret_cast<char*>(&header), sizeof header);  // little-endian length
  const std::streamoff at = static_cast<std::streamoff>(8 + header + begin + 1);
  bytes.seekg(at);
  char byte = 0;
  bytes.read(&byte, 1);
  byte = static_cast<char>(byte ^ 0x10);
  bytes.seekp(at);
  bytes.write(&byte, 1);
}

class BaseIdentity : public ::testing::Test {
 protected:
  void SetUp() override {
    delta_ = test::user_bitfit_delta(tmp_.path() / "delta");
    tmp_.write("dev.tsv", "sentence\tlabel\na fine film\tpos\ndull\tneg\n");
  }
  test::CliRun eval(const fs::path& base, const std::string& extra = {}) const {
    return test::deltatune("eval --json --delta '" + delta_.string() + "' --dev '" +
                               (tmp_.path() / "dev.tsv").string() + "' " + extra,
                           base.string());
  }
  test::ScratchDir tmp_;
  fs::path delta_;
};

TEST_F(BaseIdentity, AChangedPoolerByteIsRefusedWithTheFlagThatOverrides) {
  const fs::path other = tmp_.path() / "base-pooler-changed";
  copy_base_with_one_byte_changed(other, "pooler.dense.weight");
  test::CliRun refused = eval(other);
  EXPECT_NE(refused.status, 0) << refused.output;
  EXPECT_NE(refused.output.find("delta was made on base"), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("--allow-base-mismatch"), std::string::npos) << refused.output;

  test::CliRun allowed = eval(other, "--allow-base-mismatch");
  ASSERT_EQ(allowed.status, 0) << allowed.output;
  EXPECT_NE(allowed.output.find("warning: delta was made on base"), std::string::npos)
      << allowed.output;
  EXPECT_NO_THROW(nlohmann::json::parse(allowed.output.substr(allowed.output.find('{'))));
}

TEST_F(BaseIdentity, TheSameBaseIsAcceptedWithoutAWord) {
  test::CliRun same = eval(test::minilm_dir());
  ASSERT_EQ(same.status, 0) << same.output;
  EXPECT_EQ(same.output.find("warning"), std::string::npos) << same.output;
}

TEST_F(BaseIdentity, AnOlderDeltasChecksumIsCheckedAsItWasMadeWithANote) {
  // Deltas made before the pooler was covered record the pooler-less checksum.
  nlohmann::json meta =
      nlohmann::json::parse(std::ifstream(delta_ / "delta.json"), nullptr, true, true);
  train::BaseModel base = train::load_base(test::minilm_dir());
  meta["base_model"].erase("checksum_scope");
  meta["base_model"]["checksum"] = model::legacy_weights_checksum(base.checkpoint);
  std::ofstream(delta_ / "delta.json") << meta.dump(2);
  test::CliRun older = eval(test::minilm_dir());
  ASSERT_EQ(older.status, 0) << older.output;
  EXPECT_NE(older.output.find("its pooler is not verified"), std::string::npos) << older.output;
  // ... and still refused on a base whose encoder differs.
  const fs::path other = tmp_.path() / "base-layer-changed";
  copy_base_with_one_byte_changed(other, "encoder.layer.0.attention.self.query.weight");
  EXPECT_NE(eval(other).status, 0);
}

}  // namespace
}  // namespace deltatune
