#include "deltatune/io/torch_pickle.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "deltatune/error.h"

namespace deltatune::io {
namespace {

struct Value;
using ValuePtr = std::shared_ptr<Value>;

// The pickle values torch.save produces for a state dict. Reference semantics
// (shared_ptr) because the memo and SETITEMS mutate objects already pushed.
struct Value {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kTuple, kList, kDict, kGlobal, kTensor };
  Kind kind = Kind::kNone;
  int64_t integer = 0;
  double real = 0;
  std::string text;  // kString; kGlobal as "module.name"
  std::vector<ValuePtr> items;
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;
  at::Tensor tensor;  // kTensor, also flat storages
};

ValuePtr make(Value::Kind kind) {
  auto v = std::make_shared<Value>();
  v->kind = kind;
  return v;
}

at::ScalarType storage_scalar_type(const std::string& global, const std::string& where) {
  static const std::pair<const char*, at::ScalarType> kTypes[] = {
      {"torch.FloatStorage", at::kFloat}, {"torch.DoubleStorage", at::kDouble},
      {"torch.HalfStorage", at::kHalf},   {"torch.BFloat16Storage", at::kBFloat16},
      {"torch.LongStorage", at::kLong},   {"torch.IntStorage", at::kInt},
      {"torch.ShortStorage", at::kShort}, {"torch.CharStorage", at::kChar},
      {"torch.ByteStorage", at::kByte},   {"torch.BoolStorage", at::kBool}};
  for (const auto& [name, type] : kTypes)
    if (global == name) return type;
  throw Error(where + ": unsupported storage type " + global);
}

class Unpickler {
 public:
  Unpickler(const uint8_t* data, size_t size, caffe2::serialize::PyTorchStreamReader& archive,
            std::string where)
      : data_(data), size_(size), archive_(archive), where_(std::move(where)) {}

  ValuePtr run() {
    while (true) {
      const uint8_t op = byte();
      switch (op) {
        case 0x80:
          byte();
          break;  // PROTO
        case 0x95:
          bytes(8);
          break;  // FRAME
        case '.':
          return pop();  // STOP
        case 'c': {      // GLOBAL
          std::string module = line();
          push_global(module + "." + line());
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          ValuePtr name = pop(), module = pop();
          push_global(module->text + "." + name->text);
          break;
        }
        case 'N':
          push(make(Value::Kind::kNone));
          break;
        case 0x88:
        case 0x89: {  // NEWTRUE / NEWFALSE
          auto v = make(Value::Kind::kBool);
          v->integer = op == 0x88;
          push(v);
          break;
        }
        case ')':
          push(make(Value::Kind::kTuple));
          break;
        case ']':
          push(make(Value::Kind::kList));
          break;
        case '}':
          push(make(Value::Kind::kDict));
          break;
        case '(':
          marks_.push_back(stack_.size());
          break;
        case 't':
        case 'l': {  // TUPLE / LIST
          auto v = make(op == 't' ? Value::Kind::kTuple : Value::Kind::kList);
          v->items = pop_to_mark();
          push(v);
          break;
        }
        case 0x85:
        case 0x86:
        case 0x87: {  // TUPLE1..3
          auto v = make(Value::Kind::kTuple);
          v->items.resize(op - 0x84);
          for (size_t i = v->items.size(); i-- > 0;) v->items[i] = pop();
          push(v);
          break;
        }
        case 'a': {
          ValuePtr item = pop();
          top()->items.push_back(item);
          break;
        }            // APPEND
        case 'e': {  // APPENDS
          auto items = pop_to_mark();
          auto& list = top()->items;
          list.insert(list.end(), items.begin(), items.end());
          break;
        }
        case 'd': {  // DICT
          auto v = make(Value::Kind::kDict);
          add_pairs(*v, pop_to_mark());
          push(v);
          break;
        }
        case 's': {  // SETITEM
          ValuePtr value = pop(), key = pop();
          top()->entries.emplace_back(key, value);
          break;
        }
        case 'u': {
          auto items = pop_to_mark();
          add_pairs(*top(), items);
          break;
        }  // SETITEMS
        case 'X':
          push_string(bytes(u32()));
          break;  // BINUNICODE
        case 0x8c:
          push_string(bytes(byte()));
          break;  // SHORT_BINUNICODE
        case 0x8d:
          push_string(bytes(u64()));
          break;  // BINUNICODE8
        case 'U':
        case 'C':
          push_string(bytes(byte()));
          break;  // SHORT_BINSTRING / BYTES
        case 'T':
        case 'B':
          push_string(bytes(u32()));
          break;  // BINSTRING / BINBYTES
        case 'J':
          push_int(static_cast<int32_t>(u32()));
          break;  // BININT
        case 'K':
          push_int(byte());
          break;  // BININT1
        case 'M':
          push_int(byte() | (byte() << 8));
          break;      // BININT2
        case 0x8a: {  // LONG1
          const size_t n = byte();
          const std::string raw = bytes(n);
          int64_t value = 0;
          for (size_t i = 0; i < n && i < 8; ++i) value |= int64_t(uint8_t(raw[i])) << (8 * i);
          if (n > 0 && n < 8 && (uint8_t(raw[n - 1]) & 0x80)) value -= int64_t(1) << (8 * n);
          push_int(value);
          break;
        }
        case 'G': {  // BINFLOAT (big-endian)
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | byte();
          auto v = make(Value::Kind::kFloat);
          std::memcpy(&v->real, &bits, 8);
          push(v);
          break;
        }
        case 'q':
          memo_put(byte());
          break;  // BINPUT
        case 'r':
          memo_put(u32());
          break;  // LONG_BINPUT
        case 0x94:
          memo_put(memo_.size());
          break;  // MEMOIZE
        case 'h':
          push(memo_get(byte()));
          break;  // BINGET
        case 'j':
          push(memo_get(u32()));
          break;  // LONG_BINGET
        case 'Q':
          push(persistent_load(pop()));
          break;  // BINPERSID
        case 'R': {
          ValuePtr args = pop(), callable = pop();
          push(reduce(*callable, *args));
          break;
        }
        case 'b':
          pop();
          break;  // BUILD: only the state dict's _metadata, which is not needed
        default: {
          char hex[8];
          std::snprintf(hex, sizeof hex, "0x%02x", op);
          throw Error(where_ + ": unsupported pickle opcode " + hex + " at byte " +
                      std::to_string(pos_ - 1));
        }
      }
    }
  }

 private:
  uint8_t byte() {
    if (pos_ >= size_) throw Error(where_ + ": pickle ends unexpectedly");
    return data_[pos_++];
  }
  std::string bytes(size_t n) {
    if (n > size_ - pos_) throw Error(where_ + ": pickle ends unexpectedly");
    std::string out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }
  uint32_t u32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t(byte()) << (8 * i);
    return v;
  }
  uint64_t u64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t(byte()) << (8 * i);
    return v;
  }
  std::string line() {
    std::string out;
    for (uint8_t c = byte(); c != '\n'; c = byte()) out.push_back(static_cast<char>(c));
    return out;
  }
  void push(ValuePtr v) { stack_.push_back(std::move(v)); }
  ValuePtr pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back()))
      throw Error(where_ + ": malformed pickle (stack underflow)");
    ValuePtr v = stack_.back();
    stack_.pop_back();
    return v;
  }
  ValuePtr top() {
    if (stack_.empty()) throw Error(where_ + ": malformed pickle (empty stack)");
    return stack_.back();
  }
  std::vector<ValuePtr> pop_to_mark() {
    if (marks_.empty()) throw Error(where_ + ": malformed pickle (no mark)");
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> out(stack_.begin() + mark, stack_.end());
    stack_.resize(mark);
    return out;
  }
  void add_pairs(Value& dict, const std::vector<ValuePtr>& flat) {
    if (flat.size() % 2) throw Error(where_ + ": malformed pickle (odd SETITEMS)");
    for (size_t i = 0; i < flat.size(); i += 2) dict.entries.emplace_back(flat[i], flat[i + 1]);
  }
  void push_string(std::string s) {
    auto v = make(Value::Kind::kString);
    v->text = std::move(s);
    push(v);
  }
  void push_int(int64_t i) {
    auto v = make(Value::Kind::kInt);
    v->integer = i;
    push(v);
  }
  void push_global(std::string name) {
    auto v = make(Value::Kind::kGlobal);
    v->text = std::move(name);
    push(v);
  }
  void memo_put(size_t index) {
    // Python numbers memo entries 0, 1, 2, ... as it writes them, each after
    // at least one opcode byte: an index beyond the pickle's own size is
    // crafted, and resizing to it could take up to 4G entries.
    if (index >= size_)
      throw Error(where_ + ": malformed pickle (memo index " + std::to_string(index) + " in a " +
                  std::to_string(size_) + "-byte pickle)");
    if (memo_.size() <= index) memo_.resize(index + 1);
    memo_[index] = top();
  }
  ValuePtr memo_get(size_t index) {
    if (index >= memo_.size() || !memo_[index])
      throw Error(where_ + ": malformed pickle (bad memo)");
    return memo_[index];
  }

  // ('storage', storage_type, key, location, numel) -> a flat typed tensor over data/<key>.
  ValuePtr persistent_load(const ValuePtr& pid) {
    if (pid->kind != Value::Kind::kTuple || pid->items.size() < 5 ||
        pid->items[0]->text != "storage" || pid->items[2]->kind != Value::Kind::kString)
      throw Error(where_ + ": unsupported persistent id");
    const std::string& key = pid->items[2]->text;
    if (auto it = storages_.find(key); it != storages_.end()) return it->second;
    const at::ScalarType type = storage_scalar_type(pid->items[1]->text, where_);
    auto record = archive_.getRecord("data/" + key);
    auto owner = std::make_shared<at::DataPtr>(std::move(std::get<0>(record)));
    const size_t nbytes = std::get<1>(record);
    const size_t element = c10::elementSize(type);
    auto v = make(Value::Kind::kTensor);
    v->tensor = at::from_blob(
        owner->get(), {static_cast<int64_t>(nbytes / element)}, [owner](void*) {},
        at::TensorOptions().dtype(type));
    storages_[key] = v;
    return v;
  }

  std::vector<int64_t> ints(const ValuePtr& tuple) {
    if (tuple->kind != Value::Kind::kTuple) throw Error(where_ + ": malformed tensor record");
    std::vector<int64_t> out;
    for (const auto& item : tuple->items) {
      if (item->kind != Value::Kind::kInt || item->integer < 0)
        throw Error(where_ + ": malformed tensor record (sizes and strides are counts)");
      out.push_back(item->integer);
    }
    return out;
  }

  // A view of `storage` that stays inside it: every size and stride comes
  // from the file, so the furthest element is checked against the storage's
  // own length before as_strided is given them.
  at::Tensor checked_view(const at::Tensor& storage, const std::vector<int64_t>& sizes,
                          const std::vector<int64_t>& strides, int64_t offset) {
    if (sizes.size() != strides.size() || offset < 0)
      throw Error(where_ + ": malformed tensor record (sizes, strides or offset)");
    const int64_t length = storage.numel();
    const std::string past = where_ + ": tensor record reaches past its storage of " +
                             std::to_string(length) + " elements";
    if (std::find(sizes.begin(), sizes.end(), 0) == sizes.end()) {
      if (offset >= length) throw Error(past);
      int64_t last = offset;  // stays below length, so nothing overflows
      for (size_t i = 0; i < sizes.size(); ++i) {
        const int64_t steps = sizes[i] - 1;
        if (steps > 0 && strides[i] > 0 && strides[i] > (length - 1 - last) / steps)
          throw Error(past);
        last += steps * strides[i];
      }
    }
    return storage.as_strided(sizes, strides, offset);
  }

  ValuePtr reduce(const Value& callable, const Value& args) {
    const std::string& name = callable.text;
    if (name == "collections.OrderedDict") return make(Value::Kind::kDict);
    if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") {
      if (args.items.size() < 4 || args.items[0]->kind != Value::Kind::kTensor ||
          args.items[1]->kind != Value::Kind::kInt)
        throw Error(where_ + ": malformed tensor record");
      auto v = make(Value::Kind::kTensor);
      v->tensor = checked_view(args.items[0]->tensor, ints(args.items[2]), ints(args.items[3]),
                               args.items[1]->integer);
      return v;
    }
    if (name == "torch._utils._rebuild_parameter") return args.items.at(0);
    throw Error(where_ + ": unsupported object " + name +
                " (only state dicts of tensors are read)");
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  caffe2::serialize::PyTorchStreamReader& archive_;
  std::string where_;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;
  std::vector<ValuePtr> memo_;
  std::map<std::string, ValuePtr> storages_;
};

}  // namespace

std::map<std::string, at::Tensor> load_torch_state_dict(const std::filesystem::path& path) {
  const std::string where = path.string();
  if (!std::filesystem::exists(path)) throw Error(where + ": no such file");
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> archive;
  try {
    archive = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path.string());
  } catch (const std::exception&) {
    throw Error(where +
                ": not a zip-format PyTorch checkpoint (re-save it with torch.save from "
                "torch >= 1.6, or convert it to model.safetensors)");
  }
  try {
    auto record = archive->getRecord("data.pkl");
    const auto& pickle = std::get<0>(record);
    Unpickler unpickler(static_cast<const uint8_t*>(pickle.get()), std::get<1>(record), *archive,
                        where);
    ValuePtr root = unpickler.run();
    if (root->kind != Value::Kind::kDict) throw Error(where + ": the checkpoint is not a dict");
    std::map<std::string, at::Tensor> out;
    for (const auto& [key, value] : root->entries) {
      if (key->kind != Value::Kind::kString || value->kind != Value::Kind::kTensor)
        throw Error(where + ": state dict entry is not a named tensor");
      out[key->text] = value->tensor;
    }
    return out;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    std::string message = e.what();
    throw Error(where + ": corrupt checkpoint (" + message.substr(0, message.find('\n')) + ")");
  }
}

}  // namespace deltatune::io
