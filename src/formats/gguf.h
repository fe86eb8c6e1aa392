// Reader for GGUF (versions 2 and 3, little-endian): a header, typed metadata key/value pairs,
// tensor infos, then the tensor data section aligned to general.alignment (default 32).
// Everything is a view into the buffer (no copy): metadata values are decoded on demand, tensors
// are TensorViews in row-major order (GGUF's ne[] reversed: ne = [576, 49152] -> shape
// {49152, 576}). The whole file is validated when it is opened; every malformed input throws
// Error naming the source and the problem, and nothing is read outside the buffer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <map>
#include <utility>
#include <vector>

#include "common/mapped_file.h"
#include "model/tensor.h"

namespace detinfer::gguf {

// Metadata value types, numbered as in the file.
enum class ValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7,
  String = 8, Array = 9, U64 = 10, I64 = 11, F64 = 12,
};
// "u8", "i32", "f32", "bool", "string", "array", ...; "?" for a number outside the enum.
const char* value_type_name(ValueType t);
// The ggml tensor type name for a GGUF tensor type number ("Q4_K" for 12), nullptr if unknown.
const char* ggml_type_name(uint32_t type);

class ArrayRange;

// One metadata value: a view into the file's bytes (valid while the buffer or mapping lives).
// Values come only from a File (metadata(), find()) or from an array's elements.
class Value {
 public:
  ValueType type() const { return type_; }
  ValueType elem_type() const { return elem_; }  // arrays: the element type
  uint64_t size() const { return n_; }           // arrays: element count; strings: byte length
  bool is_integer() const;                        // u8..i64 (not bool)
  bool is_float() const { return type_ == ValueType::F32 || type_ == ValueType::F64; }
  bool is_array() const { return type_ == ValueType::Array; }

  // Conversions; nullopt when the type does not match or the value does not fit.
  std::optional<uint64_t> to_u64() const;  // integer types, value >= 0
  std::optional<int64_t> to_i64() const;   // integer types, value <= INT64_MAX
  std::optional<double> to_f64() const;    // float and integer types
  std::optional<bool> to_bool() const;     // bool only
  std::optional<std::string_view> to_string() const;  // string only (a view into the file)

  // Array elements (Error if not an array or i out of range). at() is O(1) for fixed-size
  // elements and O(i) for strings and arrays; iterate items() to walk those.
  Value at(uint64_t i) const;
  ArrayRange items() const;

  // "u32", "string", "array[string]", "array[array]" (for printing).
  std::string type_str() const;
  // The value for printing: strings quoted and escaped, long strings and arrays shortened.
  std::string repr(size_t max_items = 8) const;

 private:
  friend class File;
  friend class ArrayIterator;
  Value() = default;
  static Value decode(ValueType t, const uint8_t* p);  // p: start of the encoded value
  ValueType type_ = ValueType::U8;
  ValueType elem_ = ValueType::U8;
  const uint8_t* p_ = nullptr;  // scalars: the value; strings: the bytes; arrays: element 0
  uint64_t n_ = 0;
};

class ArrayIterator {
 public:
  using value_type = Value;
  using difference_type = std::ptrdiff_t;
  Value operator*() const { return Value::decode(elem_, p_); }
  ArrayIterator& operator++();
  bool operator==(const ArrayIterator& o) const { return i_ == o.i_; }
  bool operator!=(const ArrayIterator& o) const { return i_ != o.i_; }

 private:
  friend class ArrayRange;
  ArrayIterator(ValueType elem, const uint8_t* p, uint64_t i) : elem_(elem), p_(p), i_(i) {}
  ValueType elem_;
  const uint8_t* p_;
  uint64_t i_;
};

class ArrayRange {
 public:
  ArrayIterator begin() const { return {elem_, p_, 0}; }
  ArrayIterator end() const { return {elem_, nullptr, n_}; }
  uint64_t size() const { return n_; }

 private:
  friend class Value;
  ArrayRange(ValueType elem, const uint8_t* p, uint64_t n) : elem_(elem), p_(p), n_(n) {}
  ValueType elem_;
  const uint8_t* p_;
  uint64_t n_;
};

struct Entry {
  std::string key;
  Value value;
};

class File {
 public:
  // Maps the file at `path` (MappedFile) and parses it; the File owns the mapping.
  explicit File(const std::string& path);
  // Parses a buffer that the caller keeps alive and unchanged as long as this File and the views
  // it hands out live. `source` names the buffer in error messages.
  File(const uint8_t* data, size_t size, std::string source);
  // Moving keeps every view valid: they point into the buffer or mapping, never into the File.
  File(File&&) noexcept = default;
  File& operator=(File&&) noexcept = default;

  const std::string& source() const { return source_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // start of the tensor data section
  uint64_t file_size() const { return size_; }
  const uint8_t* data() const { return base_; }

  // ---- metadata ----
  const std::vector<Entry>& metadata() const { return entries_; }  // in file order
  size_t kv_count() const { return entries_.size(); }
  bool has(std::string_view key) const { return find(key) != nullptr; }
  const Value* find(std::string_view key) const;  // nullptr if absent
  // Every key with its type_str(), in file order (for printing).
  std::vector<std::pair<std::string, std::string>> key_types() const;

  // Typed getters. get_*: Error if the key is absent, has another type, or does not fit.
  // opt_*: nullopt if absent; the same Error if present with another type or out of range.
  // Integers: any integer type whose value fits. f64: any float or integer type.
  // Arrays: i64 arrays accept any integer element type, f64 arrays any float or integer type.
  std::string get_string(std::string_view key) const;
  uint64_t get_u64(std::string_view key) const;
  int64_t get_i64(std::string_view key) const;
  double get_f64(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<int64_t> get_i64_array(std::string_view key) const;
  std::vector<double> get_f64_array(std::string_view key) const;

  std::optional<std::string> opt_string(std::string_view key) const;
  std::optional<uint64_t> opt_u64(std::string_view key) const;
  std::optional<int64_t> opt_i64(std::string_view key) const;
  std::optional<double> opt_f64(std::string_view key) const;
  std::optional<bool> opt_bool(std::string_view key) const;
  std::optional<std::vector<std::string>> opt_string_array(std::string_view key) const;
  std::optional<std::vector<int64_t>> opt_i64_array(std::string_view key) const;
  std::optional<std::vector<double>> opt_f64_array(std::string_view key) const;

  // ---- tensors ----
  const std::vector<TensorView>& tensors() const { return tensors_; }  // in file order
  size_t tensor_count() const { return tensors_.size(); }
  const TensorView* find_tensor(std::string_view name) const;  // nullptr if absent
  const TensorView& tensor(std::string_view name) const;       // Error if absent

  // Arrays may nest at most this deep (an array of arrays is depth 2).
  static constexpr int kMaxArrayDepth = 8;

 private:
  void parse();
  const Value& require(std::string_view key) const;

  std::unique_ptr<MappedFile> map_;  // null when parsing a caller's buffer
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  std::string source_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<Entry> entries_;
  std::map<std::string, size_t, std::less<>> key_index_;     // key -> position in entries_
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;  // name -> position in tensors_
};

}  // namespace detinfer::gguf

namespace detinfer {
using GGUFFile = gguf::File;
}
