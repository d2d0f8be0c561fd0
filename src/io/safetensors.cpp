#include "deltatune/io/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "deltatune/error.h"
#include "deltatune/io/atomic_file.h"

namespace deltatune::io {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Headers beyond this are refused, as the reference implementation does.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr uint64_t kAlignment = 8;

struct DTypeInfo {
  const char* name;
  at::ScalarType scalar_type;
  size_t bytes;
};

const DTypeInfo kDTypes[] = {
    {"F64", at::kDouble, 8},    {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},
    {"BF16", at::kBFloat16, 2}, {"I64", at::kLong, 8},  {"I32", at::kInt, 4},
    {"I16", at::kShort, 2},     {"I8", at::kChar, 1},   {"U8", at::kByte, 1},
    {"BOOL", at::kBool, 1},
};

const DTypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DTypeInfo& dtype_of(at::ScalarType type) {
  for (const auto& d : kDTypes)
    if (d.scalar_type == type) return d;
  throw Error(std::string("safetensors cannot store dtype ") + c10::toString(type));
}

uint64_t checked_numel(const std::vector<int64_t>& shape, const std::string& where) {
  uint64_t numel = 1;
  for (int64_t dim : shape) {
    if (dim < 0) throw Error(where + ": negative dimension in shape");
    if (dim != 0 && numel > UINT64_MAX / static_cast<uint64_t>(dim))
      throw Error(where + ": shape overflows");
    numel *= static_cast<uint64_t>(dim);
  }
  return numel;
}

// The address ranges of the live mappings: begin -> end.
std::mutex& mappings_mutex() {
  static std::mutex m;
  return m;
}
std::map<uintptr_t, uintptr_t>& live_mappings() {
  static std::map<uintptr_t, uintptr_t> ranges;
  return ranges;
}

}  // namespace

struct SafetensorsFile::Mapping {
  void* data = nullptr;
  size_t size = 0;
  void map(void* address, size_t bytes) {
    data = address;
    size = bytes;
    std::lock_guard<std::mutex> lock(mappings_mutex());
    live_mappings()[reinterpret_cast<uintptr_t>(data)] = reinterpret_cast<uintptr_t>(data) + size;
  }
  ~Mapping() {
    if (data == nullptr || data == MAP_FAILED) return;
    {
      std::lock_guard<std::mutex> lock(mappings_mutex());
      live_mappings().erase(reinterpret_cast<uintptr_t>(data));
    }
    ::munmap(data, size);
  }
  const uint8_t* bytes() const { return static_cast<const uint8_t*>(data); }
};

int64_t release_mapped_pages(const void* data, size_t bytes) {
  const auto begin = reinterpret_cast<uintptr_t>(data), end = begin + bytes;
  {
    std::lock_guard<std::mutex> lock(mappings_mutex());
    auto it = live_mappings().upper_bound(begin);
    if (it == live_mappings().begin()) return 0;
    --it;
    if (begin < it->first || end > it->second) return 0;
  }
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (last <= first) return 0;
  if (::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED) != 0) return 0;
  return static_cast<int64_t>(last - first);
}

SafetensorsFile SafetensorsFile::open(const fs::path& path) {
  const std::string where = path.string();
  SafetensorsFile file;
  file.path_ = path;
  file.mapping_ = std::make_shared<Mapping>();

  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error("cannot open " + where + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error("cannot stat " + where + ": " + std::strerror(errno));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw Error(where + ": not a safetensors file (" + std::to_string(file_size) +
                " bytes, shorter than the 8-byte header length)");
  }
  // Private mapping: tensors handed out may be written to without touching the file.
  void* data = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (data == MAP_FAILED) throw Error("cannot map " + where + ": " + std::strerror(errno));
  file.mapping_->map(data, file_size);
  const uint8_t* bytes = file.mapping_->bytes();

  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];
  if (header_size > kMaxHeaderBytes)
    throw Error(where + ": header length " + std::to_string(header_size) + " is implausible");
  if (8 + header_size > file_size)
    throw Error(where + ": truncated (header of " + std::to_string(header_size) +
                " bytes runs past the end of the " + std::to_string(file_size) + "-byte file)");
  file.buffer_offset_ = 8 + header_size;
  const uint64_t buffer_size = file_size - file.buffer_offset_;

  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + header_size);
  } catch (const json::exception& e) {
    throw Error(where + ": header is not valid JSON (" + e.what() + ")");
  }
  if (!header.is_object()) throw Error(where + ": header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      if (!it->is_object()) throw Error(where + ": __metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string())
          throw Error(where + ": __metadata__ field '" + m.key() + "' is not a string");
        file.metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const std::string at = where + ": tensor '" + name + "'";
    const json& info = *it;
    if (!info.is_object()) throw Error(at + " is not described by an object");
    if (!info.contains("dtype") || !info["dtype"].is_string())
      throw Error(at + " has no dtype string");
    if (!info.contains("shape") || !info["shape"].is_array())
      throw Error(at + " has no shape array");
    if (!info.contains("data_offsets") || !info["data_offsets"].is_array() ||
        info["data_offsets"].size() != 2)
      throw Error(at + " has no data_offsets [begin, end]");
    TensorEntry entry;
    entry.name = name;
    entry.dtype = info["dtype"].get<std::string>();
    const DTypeInfo* dtype = find_dtype(entry.dtype);
    if (dtype == nullptr) throw Error(at + " has unsupported dtype " + entry.dtype);
    for (const auto& dim : info["shape"]) {
      if (!dim.is_number_integer()) throw Error(at + " has a non-integer dimension");
      entry.shape.push_back(dim.get<int64_t>());
    }
    for (const auto& offset : info["data_offsets"])
      if (!offset.is_number_unsigned()) throw Error(at + " has a non-integer or negative offset");
    entry.begin = info["data_offsets"][0].get<uint64_t>();
    entry.end = info["data_offsets"][1].get<uint64_t>();
    if (entry.begin > entry.end) throw Error(at + " has data_offsets with begin > end");
    if (entry.end > buffer_size)
      throw Error(at + " points past the end of the file (ends at byte " +
                  std::to_string(file.buffer_offset_ + entry.end) + " of " +
                  std::to_string(file_size) + "); the file is truncated or corrupt");
    const uint64_t numel = checked_numel(entry.shape, at);
    if (numel > UINT64_MAX / dtype->bytes || numel * dtype->bytes != entry.end - entry.begin)
      throw Error(at + " holds " + std::to_string(entry.end - entry.begin) + " bytes but " +
                  entry.dtype + " shape needs " + std::to_string(numel * dtype->bytes));
    file.index_[name] = file.entries_.size();
    file.entries_.push_back(std::move(entry));
  }

  // The buffer must be covered without overlaps; gaps are tolerated only as
  // alignment padding (< 8 bytes), as some writers pad each tensor.
  std::vector<const TensorEntry*> by_offset;
  for (const auto& e : file.entries_) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  const TensorEntry* previous = nullptr;
  for (const TensorEntry* e : by_offset) {
    if (e->begin < covered && e->end > e->begin)
      throw Error(where + ": tensors '" + previous->name + "' and '" + e->name + "' overlap");
    if (e->begin > covered && e->begin - covered >= kAlignment)
      throw Error(where + ": " + std::to_string(e->begin - covered) +
                  " unused bytes in the buffer before tensor '" + e->name + "'");
    covered = std::max(covered, e->end);
    if (e->end > e->begin) previous = e;
  }
  if (buffer_size > covered && buffer_size - covered >= kAlignment)
    throw Error(where + ": " + std::to_string(buffer_size - covered) +
                " trailing bytes after the last tensor");
  return file;
}

bool SafetensorsFile::contains(const std::string& name) const { return index_.count(name) != 0; }

const TensorEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw Error(path_.string() + ": no tensor named '" + name + "'");
  return entries_[it->second];
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorEntry& e = entry(name);
  const DTypeInfo* dtype = find_dtype(e.dtype);
  auto options = at::TensorOptions().dtype(dtype->scalar_type).device(at::kCPU);
  if (e.end == e.begin) return at::empty(e.shape, options);
  uint8_t* data = static_cast<uint8_t*>(mapping_->data) + buffer_offset_ + e.begin;
  auto keep_alive = mapping_;
  at::Tensor view = at::from_blob(
      data, e.shape, [keep_alive](void*) {}, options);
  if (reinterpret_cast<uintptr_t>(data) % dtype->bytes != 0) return view.clone();
  return view;
}

std::map<std::string, at::Tensor> SafetensorsFile::load_all() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& e : entries_) out.emplace(e.name, tensor(e.name));
  return out;
}

std::string safetensors_dtype_name(const at::Tensor& tensor) {
  return dtype_of(tensor.scalar_type()).name;
}

void save_safetensors(const fs::path& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> contiguous;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name.empty() || name == "__metadata__")
      throw Error("cannot save tensor named '" + name + "' to " + path.string());
    if (!seen.insert(name).second)
      throw Error("duplicate tensor name '" + name + "' when saving " + path.string());
    at::Tensor cpu = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t bytes = cpu.numel() * cpu.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(cpu)},
                    {"shape", cpu.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(std::move(cpu));
  }
  std::string header_text = header.dump();
  // Pad with spaces so the buffer starts 8-byte aligned, as the reference writer does.
  header_text.append((kAlignment - (8 + header_text.size()) % kAlignment) % kAlignment, ' ');
  write_file_atomically(path, [&](std::ostream& out) {
    uint64_t size = header_text.size();
    char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((size >> (8 * i)) & 0xff);
    out.write(length, 8);
    out.write(header_text.data(), header_text.size());
    for (const auto& t : contiguous)
      out.write(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  });
}

}  // namespace deltatune::io
