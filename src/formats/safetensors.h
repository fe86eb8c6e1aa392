// Reader for the safetensors format: an 8-byte little-endian header length, a JSON header
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then
// the data section. Tensors are views into the buffer (no copy); F32, F16 and BF16 only.
// Every malformed input throws Error naming the source; nothing is read outside the buffer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/mapped_file.h"
#include "model/tensor.h"

namespace detinfer {

class SafetensorsFile {
 public:
  // Parses a buffer that the caller keeps alive (and unchanged) as long as this object and its
  // views live. `source` names the buffer in error messages.
  SafetensorsFile(const uint8_t* data, size_t size, std::string source);
  // Maps the file at `path` (MappedFile) and parses it; the object owns the mapping.
  explicit SafetensorsFile(const std::string& path);

  // Moving keeps the views valid: they point into the buffer or mapping, never into this object.
  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;

  const std::string& source() const { return source_; }
  // All tensors, sorted by name. Data pointers may be unaligned (the format does not align).
  const std::vector<TensorView>& tensors() const { return tensors_; }
  // nullptr if the file has no tensor of that name.
  const TensorView* find_tensor(std::string_view name) const;
  // The "__metadata__" object (empty if absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Limit on the JSON header; larger values are taken as corruption, not as a real header.
  static constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
  // Tensors of more dimensions are refused (model weights have at most 4 or 5).
  static constexpr size_t kMaxRank = 16;

 private:
  void parse(const uint8_t* data, size_t size);

  MappedFile file_;  // empty when parsing a caller's buffer
  std::string source_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

}  // namespace detinfer
