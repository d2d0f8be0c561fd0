// Reader and writer for the safetensors format
// (https://github.com/huggingface/safetensors: 8-byte little-endian header
// length N, N bytes of JSON header, then the byte buffer).
//
// The reader memory-maps the file and validates it before any tensor is
// handed out: header bounds, JSON shape, known dtypes, offsets inside the
// buffer, byte counts equal to numel * element size, and tensors neither
// overlapping nor leaving holes in the buffer beyond alignment padding.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace deltatune::io {

struct TensorEntry {
  std::string name;
  std::string dtype;  // as written in the header: "F32", "BF16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets relative to the start of the byte buffer
  uint64_t end = 0;
};

// Hands the resident pages of [data, data + bytes) back to the kernel where
// that range lies in a live mapping of a safetensors file (only the pages
// wholly inside it): a later read of them reads the file again. For a tensor
// of such a file that no one reads any more (replaced by a converted copy),
// whose values were never written (a write to a private mapping would be
// lost). Returns the bytes handed back; 0 for memory that is not a mapping.
int64_t release_mapped_pages(const void* data, size_t bytes);

class SafetensorsFile {
 public:
  // Maps and validates `path`; throws deltatune::Error naming the file and
  // the offending tensor or header field.
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const;
  const TensorEntry& entry(const std::string& name) const;

  // A CPU tensor over the mapped bytes (copy-on-write mapping, so writing to
  // it never touches the file); copied when the offset is misaligned for
  // its dtype. The tensor keeps the mapping alive.
  at::Tensor tensor(const std::string& name) const;

  // All tensors by name.
  std::map<std::string, at::Tensor> load_all() const;

 private:
  struct Mapping;
  std::filesystem::path path_;
  std::shared_ptr<Mapping> mapping_;
  std::vector<TensorEntry> entries_;  // in header order
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  uint64_t buffer_offset_ = 0;
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes tensors (any device; contiguous copies are taken on the CPU) in the
// given order, atomically. Names must be unique and non-empty.
void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// The header string for a tensor's scalar type ("F32", "BF16", ...).
std::string safetensors_dtype_name(const at::Tensor& tensor);

}  // namespace deltatune::io
