#include "deltatune/io/safetensors.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "deltatune/error.h"
#include "deltatune/io/sha256.h"
#include "test_paths.h"

namespace deltatune::io {
namespace {
namespace fs = std::filesystem;

// Writes a raw safetensors file from a header and a buffer, for malformed cases.
void write_raw(const fs::path& path, const std::string& header, const std::string& buffer) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << buffer;
}

std::string error_of(const fs::path& path) {
  try {
    SafetensorsFile::open(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, RoundTripsDtypesShapesAndMetadata) {
  test::ScratchDir tmp;
  const fs::path path = tmp.path() / "t.safetensors";
  at::Tensor f32 = at::randn({3, 5});
  at::Tensor bf16 = at::randn({7}).to(at::kBFloat16);
  at::Tensor f16 = at::randn({2, 2}).to(at::kHalf);
  at::Tensor i64 = at::arange(6, at::kLong).view({2, 3});
  at::Tensor empty = at::empty({0, 4});
  save_safetensors(path, {{"a.f32", f32}, {"b.bf16", bf16}, {"c.f16", f16}, {"d.i64", i64},
                          {"e.empty", empty}},
                   {{"format", "pt"}});
  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.entry("b.bf16").dtype, "BF16");
  EXPECT_TRUE(at::equal(file.tensor("a.f32"), f32));
  EXPECT_TRUE(at::equal(file.tensor("b.bf16"), bf16));
  EXPECT_TRUE(at::equal(file.tensor("c.f16"), f16));
  EXPECT_TRUE(at::equal(file.tensor("d.i64"), i64));
  EXPECT_EQ(file.tensor("e.empty").sizes(), empty.sizes());
  // Writing into a loaded tensor must not change the file (private mapping).
  file.tensor("a.f32").fill_(0);
  EXPECT_TRUE(at::equal(SafetensorsFile::open(path).tensor("a.f32"), f32));
}

TEST(Safetensors, ReadsTheRealMiniLmCheckpoint) {
  const fs::path model = test::minilm_dir() / "model.safetensors";
  auto file = SafetensorsFile::open(model);
  EXPECT_EQ(file.entry("embeddings.word_embeddings.weight").shape,
            (std::vector<int64_t>{30522, 384}));
  EXPECT_EQ(file.entry("embeddings.position_ids").dtype, "I64");
  at::Tensor bias = file.tensor("encoder.layer.0.attention.self.query.bias");
  EXPECT_EQ(bias.numel(), 384);
  EXPECT_GT(bias.abs().sum().item<float>(), 0.f);
}

TEST(Safetensors, RejectsTruncatedFile) {
  test::ScratchDir tmp;
  const fs::path good = tmp.path() / "good.safetensors";
  save_safetensors(good, {{"w", at::randn({16, 16})}});
  std::string bytes;
  {
    std::ifstream in(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const fs::path cut = tmp.path() / "cut.safetensors";
  std::ofstream(cut, std::ios::binary).write(bytes.data(), bytes.size() - 100);
  EXPECT_NE(error_of(cut).find("past the end"), std::string::npos) << error_of(cut);
  EXPECT_NE(error_of(cut).find("cut.safetensors"), std::string::npos);

  const fs::path tiny = tmp.path() / "tiny.safetensors";
  std::ofstream(tiny, std::ios::binary).write(bytes.data(), 5);
  EXPECT_NE(error_of(tiny).find("8-byte"), std::string::npos) << error_of(tiny);

  const fs::path header_cut = tmp.path() / "header_cut.safetensors";
  std::ofstream(header_cut, std::ios::binary).write(bytes.data(), 20);
  EXPECT_NE(error_of(header_cut).find("truncated"), std::string::npos) << error_of(header_cut);
}

TEST(Safetensors, RejectsHeaderPointingPastTheEnd) {
  test::ScratchDir tmp;
  const fs::path path = tmp.path() / "past.safetensors";
  write_raw(path, R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0'));
  EXPECT_NE(error_of(path).find("tensor 'w' points past the end"), std::string::npos)
      << error_of(path);
}

TEST(Safetensors, RejectsOverlappingTensors) {
  test::ScratchDir tmp;
  const fs::path path = tmp.path() / "overlap.safetensors";
  write_raw(path,
            R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
            R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
            std::string(24, '\0'));
  EXPECT_NE(error_of(path).find("overlap"), std::string::npos) << error_of(path);
}

TEST(Safetensors, RejectsHolesAndTrailingBytes) {
  test::ScratchDir tmp;
  const fs::path hole = tmp.path() / "hole.safetensors";
  write_raw(hole,
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[40,48]}})",
            std::string(48, '\0'));
  EXPECT_NE(error_of(hole).find("unused bytes"), std::string::npos) << error_of(hole);
  const fs::path trailing = tmp.path() / "trailing.safetensors";
  write_raw(trailing, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
            std::string(64, '\0'));
  EXPECT_NE(error_of(trailing).find("trailing bytes"), std::string::npos) << error_of(trailing);
}

TEST(Safetensors, RejectsWrongDtypeAndByteCount) {
  test::ScratchDir tmp;
  const fs::path unknown = tmp.path() / "dtype.safetensors";
  write_raw(unknown, R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'));
  EXPECT_NE(error_of(unknown).find("unsupported dtype F33"), std::string::npos) << error_of(unknown);
  const fs::path size = tmp.path() / "size.safetensors";
  write_raw(size, R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'));
  EXPECT_NE(error_of(size).find("holds 8 bytes but F64 shape needs 16"), std::string::npos)
      << error_of(size);
}

TEST(Safetensors, RejectsMalformedHeaders) {
  test::ScratchDir tmp;
  const fs::path not_json = tmp.path() / "notjson.safetensors";
  write_raw(not_json, "{not json", "");
  EXPECT_NE(error_of(not_json).find("not valid JSON"), std::string::npos);
  const fs::path no_offsets = tmp.path() / "nooffsets.safetensors";
  write_raw(no_offsets, R"({"a":{"dtype":"F32","shape":[2]}})", std::string(8, '\0'));
  EXPECT_NE(error_of(no_offsets).find("'a' has no data_offsets"), std::string::npos);
  const fs::path negative = tmp.path() / "negative.safetensors";
  write_raw(negative, R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, '\0'));
  EXPECT_NE(error_of(negative).find("negative dimension"), std::string::npos);
}

TEST(Safetensors, MissingTensorIsNamed) {
  test::ScratchDir tmp;
  const fs::path path = tmp.path() / "one.safetensors";
  save_safetensors(path, {{"present", at::ones({1})}});
  auto file = SafetensorsFile::open(path);
  try {
    file.tensor("absent");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor named 'absent'"), std::string::npos);
  }
}

TEST(Safetensors, SaveRejectsDuplicateNamesAndLeavesNoFile) {
  test::ScratchDir tmp;
  const fs::path path = tmp.path() / "dup.safetensors";
  EXPECT_THROW(save_safetensors(path, {{"x", at::ones({1})}, {"x", at::ones({1})}}), Error);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator{}), 0);
}

TEST(Sha256, MatchesKnownDigests) {
  Sha256 empty;
  EXPECT_EQ(empty.hex_digest(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  Sha256 abc;
  abc.update("abc");
  EXPECT_EQ(abc.hex_digest(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  Sha256 chunked;  // 1,000,000 x 'a' fed in uneven pieces
  std::string piece(977, 'a');
  size_t fed = 0;
  while (fed < 1000000) {
    size_t n = std::min(piece.size(), 1000000 - fed);
    chunked.update(piece.data(), n);
    fed += n;
  }
  EXPECT_EQ(chunked.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

}  // namespace
}  // namespace deltatune::io

#include "deltatune/io/progress.h"

namespace deltatune::io {
namespace {

TEST(ProgressBar, FormatsDurations) {
  EXPECT_EQ(ProgressBar::format_duration(0), "0:00");
  EXPECT_EQ(ProgressBar::format_duration(65.4), "1:05");
  EXPECT_EQ(ProgressBar::format_duration(3 * 3600 + 62), "3:01:02");
}

}  // namespace
}  // namespace deltatune::io
