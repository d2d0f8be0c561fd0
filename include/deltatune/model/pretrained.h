// Loading Hugging Face model directories into the encoder modules, and
// writing them back.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "deltatune/io/safetensors.h"
#include "deltatune/model/encoder.h"

namespace deltatune::model {

struct LoadReport {
  std::vector<std::string> loaded;       // module parameter names filled from the checkpoint
  std::vector<std::string> initialized;  // head parameters absent from the checkpoint (fresh init)
  std::vector<std::string>
      unexpected;  // checkpoint keys nothing used (known-harmless ones excluded)
};

// The checkpoint's tensors: model.safetensors (or sharded
// model.safetensors.index.json) first, else pytorch_model.bin. Throws
// deltatune::Error naming the directory when none is readable.
std::map<std::string, at::Tensor> read_checkpoint(const std::filesystem::path& model_dir);

// The files read_checkpoint reads in `model_dir`: model.safetensors, or the
// shard index followed by its shards, or pytorch_model.bin; empty when it
// holds none of them. A malformed index is an Error naming it.
std::vector<std::filesystem::path> checkpoint_files(const std::filesystem::path& model_dir);

// Refuses a config.json that describes a far larger encoder than the
// checkpoint holds (Error naming the directory and both sizes), before a
// model of that size is allocated.
void check_config_matches(const EncoderConfig& config,
                          const std::map<std::string, at::Tensor>& checkpoint,
                          const std::string& model_dir);

// How load_state fills a parameter or buffer from its checkpoint tensor.
enum class LoadMode {
  kCopy,
  // The module takes the checkpoint tensor itself as its storage where dtype,
  // device and layout allow and no other loaded tensor overlaps its bytes
  // (else copies). Only for a checkpoint read for this module alone: its
  // tensors then are views of a private copy-on-write file mapping, so frozen
  // weights stay shared file pages (no second copy in memory) and a write to
  // a parameter copies just the pages it touches, never reaching the file or
  // any other reader of it.
  kAdopt,
};

// Fills `module` from checkpoint tensors by Hugging Face key. A task model
// whose encoder lives under `base_prefix` ("bert", ...) also accepts a bare
// encoder checkpoint (keys without the prefix), and the other way round.
// Every parameter must be found unless `may_initialize(name)` says it may be
// freshly initialised (task heads); shape mismatches are errors naming the key.
LoadReport load_state(torch::nn::Module& module,
                      const std::map<std::string, at::Tensor>& checkpoint,
                      const std::string& base_prefix, const std::string& source,
                      const std::function<bool(const std::string&)>& may_initialize,
                      LoadMode mode = LoadMode::kCopy);

// HF's _init_weights for the parameters of `module` named in `names` (what
// a checkpoint lacked: a new head, an omitted pooler), in the module's
// parameter order: normal(0, initializer_range) weights, zero biases. For a
// model built under SkipInitialisation, whose other parameters are loaded.
void initialise_missing(torch::nn::Module& module, const std::vector<std::string>& names,
                        double initializer_range);

// LoadMode::kAdopt for a fresh read of `model_dir`'s safetensors unless
// DELTATUNE_MAP_WEIGHTS=0 asks for copies; kCopy for a pytorch_model.bin.
LoadMode load_mode_for(const std::filesystem::path& model_dir);

// Whether read_checkpoint(model_dir) gives views of private file mappings
// (safetensors files, one or sharded), which LoadMode::kAdopt can keep as
// storage; a pytorch_model.bin is read into memory whose tensors may share
// storage (tied weights), so it is copied.
bool checkpoint_is_file_mapped(const std::filesystem::path& model_dir);

// The module's parameters and buffers by name, for save_safetensors.
io::NamedTensors named_state(const torch::nn::Module& module);

// A task model read from a HF directory (config.json + weights). num_labels
// 0 takes the config's id2label size (or 2 when absent).
struct LoadedClassifier {
  EncoderConfig config;
  SequenceClassifier model{nullptr};
  LoadReport report;
};
LoadedClassifier load_classifier(const std::filesystem::path& model_dir, int64_t num_labels = 0);

// A bare encoder (BertModel / RobertaModel / ElectraModel) from a HF directory.
struct LoadedEncoder {
  EncoderConfig config;
  EncoderModel model{nullptr};
  LoadReport report;
};
LoadedEncoder load_encoder(const std::filesystem::path& model_dir);

// Whether a task model of `architecture` reads checkpoint tensor `key`: the
// embeddings and every encoder layer always; the pooler for BERT only, whose
// classifier reads the pooled output (RoBERTa's and ELECTRA's heads read the
// first token's hidden state); never position_ids buffers, pre-training
// heads, nor a checkpoint's own classifier (a new task gets a new head).
bool task_model_reads(Architecture architecture, const std::string& key);

// sha256 over the checkpoint tensors a task model reads (names, dtypes,
// shapes and bytes in name order), independent of file layout: the
// base-model identity deltas record. Any changed byte a task model reads
// changes it; tensors it never reads do not.
std::string weights_checksum(const std::map<std::string, at::Tensor>& checkpoint,
                             Architecture architecture);

// The checksum deltas recorded before "checksum_scope" existed: every tensor
// but pre-training heads and the pooler (which BERT's classifier does read).
std::string legacy_weights_checksum(const std::map<std::string, at::Tensor>& checkpoint);

}  // namespace deltatune::model
