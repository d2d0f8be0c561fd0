#include "deltatune/model/config.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <caffe2/serialize/inline_container.h>

#include <fstream>

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"
#include "deltatune/io/safetensors.h"
#include "deltatune/io/torch_pickle.h"
#include "deltatune/model/pretrained.h"
#include "test_paths.h"

namespace deltatune::model {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

using test::error_of;

TEST(EncoderConfig, ReadsMiniLm) {
  auto c = EncoderConfig::from_file(test::minilm_dir() / "config.json");
  EXPECT_EQ(c.architecture, Architecture::kBert);
  EXPECT_EQ(c.hidden_size, 384);
  EXPECT_EQ(c.num_hidden_layers, 6);
  EXPECT_EQ(c.num_attention_heads, 12);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.vocab_size, 30522);
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-12);
  EXPECT_EQ(c.embedding_size, 384);
  EXPECT_FALSE(c.positions_from_padding());
}

TEST(EncoderConfig, ReadsRobertaAndElectraSpecifics) {
  auto r = EncoderConfig::from_file(test::fixtures() / "model" / "tiny_roberta" / "config.json");
  EXPECT_EQ(r.architecture, Architecture::kRoberta);
  EXPECT_EQ(r.pad_token_id, 1);
  EXPECT_TRUE(r.positions_from_padding());
  auto e = EncoderConfig::from_file(test::fixtures() / "model" / "tiny_electra" / "config.json");
  EXPECT_EQ(e.architecture, Architecture::kElectra);
  EXPECT_NE(e.embedding_size, e.hidden_size);
}

TEST(EncoderConfig, MissingFieldIsNamed) {
  json j = json::parse(io::read_text_file(test::minilm_dir() / "config.json"));
  j.erase("num_attention_heads");
  EXPECT_EQ(error_of([&] { EncoderConfig::from_json(j, "cfg.json"); }),
            "cfg.json: missing field 'num_attention_heads'");
  j = json::parse(io::read_text_file(test::minilm_dir() / "config.json"));
  j["hidden_size"] = "wide";
  EXPECT_EQ(error_of([&] { EncoderConfig::from_json(j, "cfg.json"); }),
            "cfg.json: field 'hidden_size' must be a positive integer");
  j = json::parse(io::read_text_file(test::minilm_dir() / "config.json"));
  j["model_type"] = "gpt2";
  EXPECT_NE(
      error_of([&] { EncoderConfig::from_json(j, "cfg.json"); }).find("'gpt2' is not supported"),
      std::string::npos);
}

TEST(EncoderConfig, NotJsonIsReportedWithPath) {
  test::ScratchDir tmp;
  io::write_text_atomically(tmp.path() / "config.json", "{ nope");
  EXPECT_NE(error_of([&] {
              EncoderConfig::from_file(tmp.path() / "config.json");
            }).find("config.json: not valid JSON"),
            std::string::npos);
}

// A directory holding the tiny BERT with one tensor dropped or reshaped.
fs::path damaged_copy(const fs::path& tmp, const std::string& drop, const std::string& reshape) {
  const fs::path source = test::fixtures() / "model" / "tiny_bert";
  fs::copy_file(source / "config.json", tmp / "config.json");
  io::NamedTensors kept;
  for (auto& [name, tensor] : read_checkpoint(source)) {
    if (name == drop) continue;
    kept.emplace_back(name, name == reshape ? tensor.flatten() : tensor);
  }
  io::save_safetensors(tmp / "model.safetensors", kept);
  return tmp;
}

TEST(Loading, MissingEncoderTensorIsAnError) {
  test::ScratchDir tmp;
  auto dir = damaged_copy(tmp.path(), "bert.encoder.layer.1.attention.self.key.weight", "");
  EXPECT_NE(error_of([&] {
              load_classifier(dir);
            }).find("missing tensor bert.encoder.layer.1.attention.self.key.weight"),
            std::string::npos);
}

TEST(Loading, ShapeMismatchIsAnError) {
  test::ScratchDir tmp;
  auto dir = damaged_copy(tmp.path(), "", "bert.encoder.layer.0.intermediate.dense.weight");
  EXPECT_NE(error_of([&] { load_classifier(dir); }).find("has shape [2048] but"), std::string::npos)
      << error_of([&] { load_classifier(dir); });
}

TEST(Loading, MissingWeightsFileIsNamed) {
  test::ScratchDir tmp;
  fs::copy_file(test::fixtures() / "model" / "tiny_bert" / "config.json",
                tmp.path() / "config.json");
  EXPECT_NE(error_of([&] { load_classifier(tmp.path()); }).find("no model.safetensors"),
            std::string::npos);
}

TEST(Loading, WeightsChecksumIdentifiesTheBase) {
  auto a = read_checkpoint(test::fixtures() / "model" / "tiny_bert");
  auto b = a;
  EXPECT_EQ(weights_checksum(a, Architecture::kBert), weights_checksum(b, Architecture::kBert));
  b["bert.embeddings.LayerNorm.bias"] = b["bert.embeddings.LayerNorm.bias"] + 1e-3;
  EXPECT_NE(weights_checksum(a, Architecture::kBert), weights_checksum(b, Architecture::kBert));
}

TEST(Loading, WeightsChecksumCoversExactlyWhatTheTaskModelReads) {
  const auto a = read_checkpoint(test::fixtures() / "model" / "tiny_bert");
  auto changed = [&](const std::string& key) {
    auto b = a;
    b[key] = b[key] + 1e-3;
    return b;
  };
  const auto pooler = changed("bert.pooler.dense.weight");
  // BERT's classifier reads the pooled output; RoBERTa's and ELECTRA's heads do not.
  EXPECT_NE(weights_checksum(a, Architecture::kBert),
            weights_checksum(pooler, Architecture::kBert));
  EXPECT_EQ(weights_checksum(a, Architecture::kRoberta),
            weights_checksum(pooler, Architecture::kRoberta));
  // The checkpoint's own classifier is replaced by a new task's head.
  const auto head = changed("classifier.weight");
  EXPECT_EQ(weights_checksum(a, Architecture::kBert), weights_checksum(head, Architecture::kBert));
  EXPECT_TRUE(task_model_reads(Architecture::kBert, "bert.pooler.dense.bias"));
  EXPECT_FALSE(task_model_reads(Architecture::kElectra, "electra.pooler.dense.bias"));
  EXPECT_FALSE(task_model_reads(Architecture::kBert, "bert.embeddings.position_ids"));
  EXPECT_FALSE(task_model_reads(Architecture::kBert, "cls.predictions.bias"));
  // The checksum deltas recorded before: blind to the pooler.
  EXPECT_EQ(legacy_weights_checksum(a), legacy_weights_checksum(pooler));
}

}  // namespace
}  // namespace deltatune::model

namespace deltatune::model {
namespace {

TEST(Loading, CorruptPytorchBinIsAClearError) {
  test::ScratchDir tmp;
  const auto bin = tmp.path() / "pytorch_model.bin";
  io::write_text_atomically(bin, "definitely not a zip archive");
  try {
    io::load_torch_state_dict(bin);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a zip-format PyTorch checkpoint"), std::string::npos);
  }
  // A real archive cut short.
  std::ifstream in(test::fixtures() / "model" / "tiny_bert" / "pytorch_model.bin",
                   std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  io::write_text_atomically(bin, bytes.substr(0, bytes.size() / 2));
  EXPECT_THROW(io::load_torch_state_dict(bin), Error);
}

// A zip-format checkpoint whose data.pkl is `pickle`, with one storage
// record data/0 of four floats.
fs::path crafted_checkpoint(const test::ScratchDir& tmp, const std::string& pickle) {
  const fs::path path = tmp.path() / "pytorch_model.bin";
  caffe2::serialize::PyTorchStreamWriter writer(path.string());
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  const float storage[4] = {1, 2, 3, 4};
  writer.writeRecord("data/0", storage, sizeof storage);
  writer.writeEndOfFile();
  return path;
}

// A pickle BINUNICODE string.
std::string unicode(const std::string& text) {
  std::string out = "X";
  const uint32_t n = static_cast<uint32_t>(text.size());
  for (int i = 0; i < 4; ++i) out += static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

// {"w": _rebuild_tensor_v2(storage, offset, (size,), (stride,), False, OrderedDict())}
std::string state_dict_pickle(uint8_t offset, uint16_t size, uint8_t stride) {
  std::string p = {'\x80', '\x02', '}', '('};  // PROTO 2, EMPTY_DICT, MARK
  p += unicode("w");
  p += "ctorch._utils\n_rebuild_tensor_v2\n(";  // GLOBAL, MARK (its arguments)
  p += "(" + unicode("storage") + "ctorch\nFloatStorage\n" + unicode("0") + unicode("cpu");
  p += {'K', '\x04', 't', 'Q'};  // numel 4, TUPLE, BINPERSID
  p += {'K', static_cast<char>(offset)};
  p += {'M', static_cast<char>(size & 0xff), static_cast<char>(size >> 8), '\x85'};
  p += {'K', static_cast<char>(stride), '\x85', '\x89'};  // (stride,), NEWFALSE
  p += "ccollections\nOrderedDict\n)RtRu.";  // OrderedDict(), TUPLE, REDUCE, SETITEMS, STOP
  return p;
}

TEST(Loading, CraftedPickleSizesAreBoundedByTheFile) {
  test::ScratchDir tmp;
  // Well-formed: four floats from the storage, read back exactly.
  auto good = io::load_torch_state_dict(crafted_checkpoint(tmp, state_dict_pickle(0, 4, 1)));
  ASSERT_EQ(good.count("w"), 1u);
  EXPECT_TRUE(at::equal(good.at("w"), at::tensor({1.0f, 2.0f, 3.0f, 4.0f})));
  // A memo index of 2^31 in a short pickle (once: a 32 GiB memo).
  std::string message = error_of([&] {
    io::load_torch_state_dict(crafted_checkpoint(
        tmp, std::string{'\x80', '\x02', '}', 'r', '\x00', '\x00', '\x00', '\x80', '.'}));
  });
  EXPECT_NE(message.find("memo index 2147483648"), std::string::npos) << message;
  // Sizes, strides and offsets that reach past the storage's four floats.
  for (const auto& pickle :
       {state_dict_pickle(0, 5, 1), state_dict_pickle(0, 1000, 1), state_dict_pickle(2, 3, 1),
        state_dict_pickle(0, 3, 2), state_dict_pickle(4, 1, 1)}) {
    message = error_of([&] { io::load_torch_state_dict(crafted_checkpoint(tmp, pickle)); });
    EXPECT_NE(message.find("reaches past its storage of 4 elements"), std::string::npos) << message;
  }
}

TEST(Loading, AConfigDescribingAFarLargerModelThanItsCheckpointIsRefused) {
  test::ScratchDir tmp;
  const fs::path source = test::fixtures() / "model" / "tiny_bert";
  tmp.copy_from(source, "model.safetensors");
  json config = json::parse(io::read_text_file(source / "config.json"));
  config["vocab_size"] = 4'000'000'000LL;  // 128 G embedding values, never allocated
  tmp.write("config.json", config.dump());
  const std::string message = error_of([&] { load_classifier(tmp.path(), 2); });
  EXPECT_NE(message.find("config.json describes an encoder of about"), std::string::npos)
      << message;
  EXPECT_NE(error_of([&] { load_encoder(tmp.path()); }), "");
}

}  // namespace
}  // namespace deltatune::model
