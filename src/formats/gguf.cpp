#include "formats/gguf.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>

#include "common/error.h"

namespace detinfer::gguf {
namespace {

constexpr uint32_t kNumValueTypes = 13;
// Smallest possible encodings, used to reject counts the remaining bytes cannot hold before
// anything is reserved: a key/value pair (key length, type, one byte) and a tensor info (name
// length, n_dims, one dimension, type, offset).
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;
constexpr int kMaxDims = 4;

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Bytes of a fixed-size value; 0 for strings and arrays.
uint64_t fixed_size(ValueType t) {
  switch (t) {
    case ValueType::U8: case ValueType::I8: case ValueType::Bool: return 1;
    case ValueType::U16: case ValueType::I16: return 2;
    case ValueType::U32: case ValueType::I32: case ValueType::F32: return 4;
    case ValueType::U64: case ValueType::I64: case ValueType::F64: return 8;
    case ValueType::String: case ValueType::Array: return 0;
  }
  return 0;
}

uint64_t min_size(ValueType t) {
  if (t == ValueType::String) return 8;      // length
  if (t == ValueType::Array) return 4 + 8;  // element type, count
  return fixed_size(t);
}

// Encoded size of a value that parse() has already validated.
uint64_t encoded_size(ValueType t, const uint8_t* p) {
  if (uint64_t s = fixed_size(t)) return s;
  if (t == ValueType::String) return 8 + load<uint64_t>(p);
  const auto et = static_cast<ValueType>(load<uint32_t>(p));
  const uint64_t n = load<uint64_t>(p + 4);
  if (uint64_t s = fixed_size(et)) return 12 + n * s;
  uint64_t total = 12;
  for (uint64_t i = 0; i < n; ++i) total += encoded_size(et, p + total);
  return total;
}

// Bounds-checked reading of the file; errors name the source and what was being read.
class Cursor {
 public:
  Cursor(const uint8_t* base, uint64_t size, const std::string& source)
      : base_(base), size_(size), source_(source) {}

  uint64_t pos = 0;
  std::string ctx;  // what is being read, e.g. "metadata key #3 'general.name'"

  template <typename... Args>
  [[noreturn]] void fail(Args&&... args) const {
    if (ctx.empty()) detinfer::fail(source_, ": ", std::forward<Args>(args)...);
    detinfer::fail(source_, ": ", ctx, ": ", std::forward<Args>(args)...);
  }
  uint64_t left() const { return size_ - pos; }
  const uint8_t* here() const { return base_ + pos; }
  void need(uint64_t n, const char* what) const {
    if (n > left())
      fail("truncated file: ", what, " at offset ", pos, " needs ", n, " bytes but only ", left(),
           " remain");
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v = load<T>(here());
    pos += sizeof(T);
    return v;
  }
  std::string_view read_string(const char* what) {
    const uint64_t n = read<uint64_t>(what);
    if (n > left())
      fail("truncated file: ", what, " of length ", n, " at offset ", pos - 8,
           " runs past the end of the file (", left(), " bytes remain)");
    std::string_view s(reinterpret_cast<const char*>(here()), n);
    pos += n;
    return s;
  }
  ValueType read_value_type(const char* what) {
    const uint64_t at = pos;
    const uint32_t t = read<uint32_t>(what);
    if (t >= kNumValueTypes) {
      pos = at;
      fail("invalid ", what, " ", t, " at offset ", at, " (valid: 0 to ", kNumValueTypes - 1, ")");
    }
    return static_cast<ValueType>(t);
  }

  // Validates the value of type t at pos and moves past it.
  void skip_value(ValueType t, int depth) {
    if (uint64_t s = fixed_size(t)) {
      need(s, "metadata value");
      if (t == ValueType::Bool) check_bools(1);
      pos += s;
      return;
    }
    if (t == ValueType::String) {
      read_string("string");
      return;
    }
    if (depth + 1 > File::kMaxArrayDepth)
      fail("arrays nested more than ", File::kMaxArrayDepth, " deep at offset ", pos);
    const ValueType et = read_value_type("array element type");
    const uint64_t n = read<uint64_t>("array count");
    const uint64_t ms = min_size(et);
    if (n > left() / ms)
      fail("array of ", n, " ", value_type_name(et), " elements at offset ", pos - 12,
           " cannot fit in the ", left(), " bytes left in the file");
    if (uint64_t s = fixed_size(et)) {
      if (et == ValueType::Bool) check_bools(n);
      pos += n * s;
      return;
    }
    for (uint64_t i = 0; i < n; ++i) skip_value(et, depth + 1);
  }

 private:
  void check_bools(uint64_t n) const {
    for (uint64_t i = 0; i < n; ++i)
      if (here()[i] > 1) fail("bool value ", int(here()[i]), " at offset ", pos + i, " is not 0 or 1");
  }
  const uint8_t* base_;
  uint64_t size_;
  const std::string& source_;
};

std::optional<DType> dtype_from_ggml(uint32_t t) {
  switch (t) {
    case 0: return DType::F32;
    case 1: return DType::F16;
    case 2: return DType::Q4_0;
    case 3: return DType::Q4_1;
    case 8: return DType::Q8_0;
    case 30: return DType::BF16;
    default: return std::nullopt;
  }
}

std::string hex_bytes(const uint8_t* p, size_t n) {
  std::string s;
  char buf[4];
  for (size_t i = 0; i < n; ++i) {
    std::snprintf(buf, sizeof buf, i ? " %02x" : "%02x", p[i]);
    s += buf;
  }
  return s;
}

void append_quoted(std::string& out, std::string_view s, size_t max_bytes, char quote = '"') {
  size_t cut = s.size();
  if (cut > max_bytes) {
    cut = max_bytes;
    while (cut > 0 && (static_cast<uint8_t>(s[cut]) & 0xC0) == 0x80) --cut;  // whole UTF-8 chars
  }
  out += quote;
  for (size_t i = 0; i < cut; ++i) {
    const auto c = static_cast<uint8_t>(s[i]);
    if (c == static_cast<uint8_t>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += quote;
  if (cut < s.size()) out += cat("...(", s.size(), " bytes)");
}

// A name from the file, quoted and shortened for an error message.
std::string quoted(std::string_view s) {
  std::string out;
  append_quoted(out, s, 100, '\'');
  return out;
}

}  // namespace

const char* value_type_name(ValueType t) {
  switch (t) {
    case ValueType::U8: return "u8";
    case ValueType::I8: return "i8";
    case ValueType::U16: return "u16";
    case ValueType::I16: return "i16";
    case ValueType::U32: return "u32";
    case ValueType::I32: return "i32";
    case ValueType::F32: return "f32";
    case ValueType::Bool: return "bool";
    case ValueType::String: return "string";
    case ValueType::Array: return "array";
    case ValueType::U64: return "u64";
    case ValueType::I64: return "i64";
    case ValueType::F64: return "f64";
  }
  return "?";
}

const char* ggml_type_name(uint32_t type) {
  // The ggml type numbers, including retired ones, so errors can say what a file holds.
  static const char* const names[] = {
      "F32",     "F16",      "Q4_0",     "Q4_1",       "Q4_2",       "Q4_3",       "Q5_0",
      "Q5_1",    "Q8_0",     "Q8_1",     "Q2_K",       "Q3_K",       "Q4_K",       "Q5_K",
      "Q6_K",    "Q8_K",     "IQ2_XXS",  "IQ2_XS",     "IQ3_XXS",    "IQ1_S",      "IQ4_NL",
      "IQ3_S",   "IQ2_S",    "IQ4_XS",   "I8",         "I16",        "I32",        "I64",
      "F64",     "IQ1_M",    "BF16",     "Q4_0_4_4",   "Q4_0_4_8",   "Q4_0_8_8",   "TQ1_0",
      "TQ2_0",   "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",  "NVFP4",      "Q1_0"};
  return type < std::size(names) ? names[type] : nullptr;
}

// ---- Value ----

Value Value::decode(ValueType t, const uint8_t* p) {
  Value v;
  v.type_ = t;
  if (t == ValueType::String) {
    v.n_ = load<uint64_t>(p);
    v.p_ = p + 8;
  } else if (t == ValueType::Array) {
    v.elem_ = static_cast<ValueType>(load<uint32_t>(p));
    v.n_ = load<uint64_t>(p + 4);
    v.p_ = p + 12;
  } else {
    v.p_ = p;
  }
  return v;
}

bool Value::is_integer() const {
  switch (type_) {
    case ValueType::U8: case ValueType::I8: case ValueType::U16: case ValueType::I16:
    case ValueType::U32: case ValueType::I32: case ValueType::U64: case ValueType::I64:
      return true;
    default:
      return false;
  }
}

std::optional<int64_t> Value::to_i64() const {
  switch (type_) {
    case ValueType::U8: return load<uint8_t>(p_);
    case ValueType::I8: return load<int8_t>(p_);
    case ValueType::U16: return load<uint16_t>(p_);
    case ValueType::I16: return load<int16_t>(p_);
    case ValueType::U32: return load<uint32_t>(p_);
    case ValueType::I32: return load<int32_t>(p_);
    case ValueType::I64: return load<int64_t>(p_);
    case ValueType::U64: {
      const uint64_t u = load<uint64_t>(p_);
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
      return static_cast<int64_t>(u);
    }
    default: return std::nullopt;
  }
}

std::optional<uint64_t> Value::to_u64() const {
  if (type_ == ValueType::U64) return load<uint64_t>(p_);
  const auto i = to_i64();
  if (!i || *i < 0) return std::nullopt;
  return static_cast<uint64_t>(*i);
}

std::optional<double> Value::to_f64() const {
  if (type_ == ValueType::F32) return load<float>(p_);
  if (type_ == ValueType::F64) return load<double>(p_);
  if (type_ == ValueType::U64) return static_cast<double>(load<uint64_t>(p_));
  if (const auto i = to_i64()) return static_cast<double>(*i);
  return std::nullopt;
}

std::optional<bool> Value::to_bool() const {
  if (type_ != ValueType::Bool) return std::nullopt;
  return *p_ != 0;
}

std::optional<std::string_view> Value::to_string() const {
  if (type_ != ValueType::String) return std::nullopt;
  return std::string_view(reinterpret_cast<const char*>(p_), n_);
}

Value Value::at(uint64_t i) const {
  DETINFER_CHECK(is_array(), "Value::at: a ", type_str(), " value is not an array");
  DETINFER_CHECK(i < n_, "Value::at: index ", i, " is out of range for an array of ", n_, " elements");
  if (uint64_t s = fixed_size(elem_)) return decode(elem_, p_ + i * s);
  const uint8_t* p = p_;
  for (uint64_t k = 0; k < i; ++k) p += encoded_size(elem_, p);
  return decode(elem_, p);
}

ArrayRange Value::items() const {
  DETINFER_CHECK(is_array(), "Value::items: a ", type_str(), " value is not an array");
  return ArrayRange(elem_, p_, n_);
}

ArrayIterator& ArrayIterator::operator++() {
  p_ += encoded_size(elem_, p_);
  ++i_;
  return *this;
}

std::string Value::type_str() const {
  if (is_array()) return cat("array[", value_type_name(elem_), "]");
  return value_type_name(type_);
}

std::string Value::repr(size_t max_items) const {
  switch (type_) {
    case ValueType::Bool: return *to_bool() ? "true" : "false";
    case ValueType::F32: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.9g", load<float>(p_));
      return buf;
    }
    case ValueType::F64: {
      char buf[40];
      std::snprintf(buf, sizeof buf, "%.17g", load<double>(p_));
      return buf;
    }
    case ValueType::U64: return std::to_string(load<uint64_t>(p_));
    case ValueType::String: {
      std::string out;
      append_quoted(out, *to_string(), 80);
      return out;
    }
    case ValueType::Array: {
      std::string out = "[";
      uint64_t k = 0;
      for (Value v : items()) {
        if (k == max_items) {
          out += cat(", ... (", n_, " items)");
          break;
        }
        if (k++) out += ", ";
        out += v.repr(max_items);
      }
      return out + "]";
    }
    default: return std::to_string(*to_i64());
  }
}

// ---- File: parsing ----

File::File(const std::string& path) : map_(std::make_unique<MappedFile>(path)) {
  base_ = map_->data();
  size_ = map_->size();
  source_ = path;
  parse();
}

File::File(const uint8_t* data, size_t size, std::string source)
    : base_(data), size_(size), source_(std::move(source)) {
  parse();
}

void File::parse() {
  Cursor c(base_, size_, source_);

  // Header: magic, version, tensor count, key/value count.
  if (size_ < 4) c.fail("file is too small (", size_, " bytes) to be a GGUF file");
  if (std::memcmp(base_, "GGUF", 4) != 0)
    c.fail("not a GGUF file: the first 4 bytes are ", hex_bytes(base_, 4), ", expected 47 47 55 46 (\"GGUF\")");
  c.pos = 4;
  version_ = c.read<uint32_t>("GGUF version");
  if (version_ != 2 && version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(version_);
    if (swapped >= 1 && swapped <= 3)
      c.fail("big-endian GGUF files (version ", swapped, ") are not supported");
    c.fail("unsupported GGUF version ", version_, " (supported: 2 and 3)");
  }
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata key/value count");
  if (n_kv > c.left() / kMinKvBytes || n_tensors > c.left() / kMinTensorInfoBytes ||
      n_kv * kMinKvBytes + n_tensors * kMinTensorInfoBytes > c.left())
    c.fail("impossible counts in the header: ", n_tensors, " tensors and ", n_kv,
           " metadata keys cannot fit in the ", c.left(), " bytes after the header");

  // Metadata.
  entries_.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    c.ctx = cat("metadata key #", i);
    const std::string_view key = c.read_string("key");
    c.ctx = cat("metadata key #", i, " ", quoted(key));
    const ValueType t = c.read_value_type("value type");
    const uint8_t* start = c.here();
    c.skip_value(t, 0);
    if (key_index_.count(key)) c.fail("duplicate metadata key");
    key_index_.emplace(std::string(key), entries_.size());
    entries_.push_back({std::string(key), Value::decode(t, start)});
  }
  c.ctx.clear();

  if (const Value* a = find("general.alignment")) {
    c.ctx = "metadata key 'general.alignment'";
    const auto al = a->is_integer() ? a->to_u64() : std::nullopt;
    if (!al) c.fail("must be an unsigned integer, got ", a->type_str(), " ", a->repr());
    if (*al == 0 || (*al & (*al - 1)) != 0 || *al > (1u << 31))
      c.fail("alignment ", *al, " is not a power of two between 1 and 2^31");
    alignment_ = *al;
    c.ctx.clear();
  }

  // Tensor infos.
  struct Info {
    uint64_t offset, nbytes;
    size_t index;
  };
  std::vector<Info> infos;
  infos.reserve(n_tensors);
  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    c.ctx = cat("tensor #", i);
    const std::string_view name = c.read_string("tensor name");
    c.ctx = cat("tensor #", i, " ", quoted(name));
    if (tensor_index_.count(name)) c.fail("duplicate tensor name");
    const uint32_t n_dims = c.read<uint32_t>("dimension count");
    if (n_dims < 1 || n_dims > kMaxDims)
      c.fail("has ", n_dims, " dimensions (must be 1 to ", kMaxDims, ")");
    int64_t ne[kMaxDims];
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ne[d] = c.read<int64_t>("dimension");
      if (ne[d] <= 0) c.fail("dimension ne[", d, "] = ", ne[d], " is not positive");
      if (__builtin_mul_overflow(numel, ne[d], &numel))
        c.fail("the element count (product of the dimensions) overflows 64 bits");
    }
    const uint32_t ggml_type = c.read<uint32_t>("tensor type");
    const std::optional<DType> dtype = dtype_from_ggml(ggml_type);
    if (!dtype) {
      const char* tn = ggml_type_name(ggml_type);
      c.fail("tensor type ", tn ? tn : "unknown", " (", ggml_type,
             ") is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)");
    }
    const uint64_t offset = c.read<uint64_t>("tensor data offset");

    const int64_t block = dtype_block_elems(*dtype);
    if (ne[0] % block != 0)
      c.fail("row length ne[0] = ", ne[0], " is not a multiple of the ", dtype_name(*dtype),
             " block size ", block);
    int64_t nbytes;
    if (__builtin_mul_overflow(numel / block, dtype_block_bytes(*dtype), &nbytes))
      c.fail("the data size overflows 64 bits");
    if (offset % alignment_ != 0)
      c.fail("data offset ", offset, " is not a multiple of the alignment ", alignment_);

    TensorView tv;
    tv.name = std::string(name);
    tv.dtype = *dtype;
    for (int d = static_cast<int>(n_dims) - 1; d >= 0; --d) tv.shape.push_back(ne[d]);
    tv.nbytes = nbytes;
    tensor_index_.emplace(tv.name, tensors_.size());
    infos.push_back({offset, static_cast<uint64_t>(nbytes), tensors_.size()});
    tensors_.push_back(std::move(tv));
  }
  c.ctx.clear();

  // Data section: starts at the next multiple of the alignment; every tensor lies inside the
  // file and no two overlap.
  data_offset_ = (c.pos + alignment_ - 1) / alignment_ * alignment_;
  const uint64_t data_bytes = data_offset_ <= size_ ? size_ - data_offset_ : 0;
  for (const Info& in : infos) {
    if (in.offset > data_bytes || in.nbytes > data_bytes - in.offset)
      c.fail("tensor '", tensors_[in.index].name, "' data (", in.nbytes, " bytes at offset ", in.offset,
             " of the data section, which starts at byte ", data_offset_,
             ") runs past the end of the file (", size_, " bytes)");
    tensors_[in.index].data = base_ + data_offset_ + in.offset;
  }
  std::sort(infos.begin(), infos.end(),
            [](const Info& a, const Info& b) { return a.offset < b.offset; });
  for (size_t k = 1; k < infos.size(); ++k) {
    const Info& a = infos[k - 1];
    const Info& b = infos[k];
    if (a.offset + a.nbytes > b.offset)
      c.fail("tensors '", tensors_[a.index].name, "' (bytes ", a.offset, " to ", a.offset + a.nbytes,
             ") and '", tensors_[b.index].name, "' (bytes ", b.offset, " to ", b.offset + b.nbytes,
             ") overlap in the data section");
  }
}

// ---- File: lookup ----

const Value* File::find(std::string_view key) const {
  auto it = key_index_.find(key);
  return it == key_index_.end() ? nullptr : &entries_[it->second].value;
}

const Value& File::require(std::string_view key) const {
  const Value* v = find(key);
  if (!v) fail(source_, ": metadata key '", key, "' is missing");
  return *v;
}

std::vector<std::pair<std::string, std::string>> File::key_types() const {
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(entries_.size());
  for (const Entry& e : entries_) out.emplace_back(e.key, e.value.type_str());
  return out;
}

const TensorView* File::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& File::tensor(std::string_view name) const {
  const TensorView* t = find_tensor(name);
  if (!t) fail(source_, ": tensor '", name, "' is missing");
  return *t;
}

namespace {

[[noreturn]] void type_error(const std::string& src, std::string_view key, const Value& v,
                             const char* expected) {
  fail(src, ": metadata key '", key, "' has type ", v.type_str(), ", expected ", expected);
}

std::string as_string(const std::string& src, std::string_view key, const Value& v) {
  const auto s = v.to_string();
  if (!s) type_error(src, key, v, "string");
  return std::string(*s);
}

uint64_t as_u64(const std::string& src, std::string_view key, const Value& v) {
  if (!v.is_integer()) type_error(src, key, v, "an integer");
  const auto u = v.to_u64();
  if (!u) fail(src, ": metadata key '", key, "' = ", v.repr(), " is negative, expected an unsigned integer");
  return *u;
}

int64_t as_i64(const std::string& src, std::string_view key, const Value& v) {
  if (!v.is_integer()) type_error(src, key, v, "an integer");
  const auto i = v.to_i64();
  if (!i) fail(src, ": metadata key '", key, "' = ", v.repr(), " does not fit in a signed 64-bit integer");
  return *i;
}

double as_f64(const std::string& src, std::string_view key, const Value& v) {
  const auto f = v.to_f64();
  if (!f) type_error(src, key, v, "a number");
  return *f;
}

bool as_bool(const std::string& src, std::string_view key, const Value& v) {
  const auto b = v.to_bool();
  if (!b) type_error(src, key, v, "bool");
  return *b;
}

std::vector<std::string> as_string_array(const std::string& src, std::string_view key, const Value& v) {
  if (!v.is_array() || v.elem_type() != ValueType::String) type_error(src, key, v, "array[string]");
  std::vector<std::string> out;
  out.reserve(v.size());  // bounded: each element took at least 8 bytes of the file
  for (Value e : v.items()) out.emplace_back(*e.to_string());
  return out;
}

bool integer_type(ValueType t) {
  return t != ValueType::F32 && t != ValueType::F64 && t != ValueType::Bool &&
         t != ValueType::String && t != ValueType::Array;
}

std::vector<int64_t> as_i64_array(const std::string& src, std::string_view key, const Value& v) {
  if (!v.is_array() || !integer_type(v.elem_type())) type_error(src, key, v, "an array of integers");
  std::vector<int64_t> out;
  out.reserve(v.size());
  for (Value e : v.items()) {
    const auto i = e.to_i64();
    if (!i)
      fail(src, ": metadata key '", key, "': element ", out.size(), " = ", e.repr(),
           " does not fit in a signed 64-bit integer");
    out.push_back(*i);
  }
  return out;
}

std::vector<double> as_f64_array(const std::string& src, std::string_view key, const Value& v) {
  const bool numeric = v.is_array() && (integer_type(v.elem_type()) || v.elem_type() == ValueType::F32 ||
                                        v.elem_type() == ValueType::F64);
  if (!numeric) type_error(src, key, v, "an array of numbers");
  std::vector<double> out;
  out.reserve(v.size());
  for (Value e : v.items()) out.push_back(*e.to_f64());
  return out;
}

}  // namespace

#define DETINFER_GGUF_GETTERS(T, name)                                              \
  T File::get_##name(std::string_view key) const {                                  \
    return as_##name(source_, key, require(key));                                   \
  }                                                                                 \
  std::optional<T> File::opt_##name(std::string_view key) const {                   \
    const Value* v = find(key);                                                     \
    if (!v) return std::nullopt;                                                    \
    return as_##name(source_, key, *v);                                             \
  }

DETINFER_GGUF_GETTERS(std::string, string)
DETINFER_GGUF_GETTERS(uint64_t, u64)
DETINFER_GGUF_GETTERS(int64_t, i64)
DETINFER_GGUF_GETTERS(double, f64)
DETINFER_GGUF_GETTERS(bool, bool)
DETINFER_GGUF_GETTERS(std::vector<std::string>, string_array)
DETINFER_GGUF_GETTERS(std::vector<int64_t>, i64_array)
DETINFER_GGUF_GETTERS(std::vector<double>, f64_array)

#undef DETINFER_GGUF_GETTERS

}  // namespace detinfer::gguf
