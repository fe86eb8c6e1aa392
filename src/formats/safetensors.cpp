#include "formats/safetensors.h"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <tuple>
#include <utility>

#include "common/error.h"

namespace detinfer {

namespace {

using nlohmann::json;

// Reads a non-negative JSON integer; floats, strings and negative numbers are refused.
uint64_t json_u64(const json& v, const std::string& source, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) fail(source, ": ", what, " is negative (", v.get<int64_t>(), ")");
  fail(source, ": ", what, " is not an integer (it is ", v.type_name(), ")");
}

const json& field(const json& entry, const char* key, const std::string& source, const std::string& tensor) {
  auto it = entry.find(key);
  if (it == entry.end()) fail(source, ": tensor '", tensor, "' has no \"", key, "\" field");
  return *it;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const uint8_t* data, size_t size, std::string source)
    : source_(std::move(source)) {
  parse(data, size);
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path), source_(path) {
  parse(file_.data(), file_.size());
}

const TensorView* SafetensorsFile::find_tensor(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsFile::parse(const uint8_t* data, size_t size) {
  const std::string& src = source_;
  DETINFER_CHECK(size >= 8, src, ": file is ", size, " bytes, shorter than the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  DETINFER_CHECK(header_len <= kMaxHeaderBytes, src, ": header length ", header_len,
                 " bytes is absurd (limit ", kMaxHeaderBytes, "); not a safetensors file?");
  DETINFER_CHECK(header_len <= size - 8, src, ": header length ", header_len, " bytes runs past the end of the file (",
                 size - 8, " bytes follow the length field)");

  const uint8_t* header = data + 8;
  const uint8_t* section = header + header_len;
  const uint64_t section_size = size - 8 - header_len;

  // The format nests 3 deep; a limit stops "[[[[..." from building a huge tree out of a small file.
  constexpr int kMaxDepth = 16;
  auto limit_depth = [&](int depth, json::parse_event_t, json&) {
    DETINFER_CHECK(depth <= kMaxDepth, src, ": header JSON nests deeper than ", kMaxDepth, " levels");
    return true;
  };
  json root;
  try {
    root = json::parse(header, section, limit_depth);
  } catch (const json::parse_error& e) {
    fail(src, ": header is not valid JSON (near byte ", e.byte, " of the ", header_len, "-byte header): ", e.what());
  } catch (const json::exception& e) {  // e.g. a number too large for a double
    fail(src, ": header is not valid JSON: ", e.what());
  }
  DETINFER_CHECK(root.is_object(), src, ": header is a JSON ", root.type_name(), ", expected an object");

  struct Extent {
    uint64_t begin, end;
    size_t tensor;
  };
  std::vector<Extent> extents;
  tensors_.reserve(root.size());

  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    const json& entry = it.value();
    if (name == "__metadata__") {
      DETINFER_CHECK(entry.is_object(), src, ": \"__metadata__\" is a JSON ", entry.type_name(), ", expected an object");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        DETINFER_CHECK(m.value().is_string(), src, ": \"__metadata__\" value of '", m.key(), "' is a ",
                       m.value().type_name(), ", expected a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    DETINFER_CHECK(entry.is_object(), src, ": tensor '", name, "' is described by a JSON ", entry.type_name(),
                   ", expected an object");

    const json& jdtype = field(entry, "dtype", src, name);
    DETINFER_CHECK(jdtype.is_string(), src, ": tensor '", name, "': \"dtype\" is a ", jdtype.type_name(),
                   ", expected a string");
    const std::string& dt = jdtype.get_ref<const std::string&>();
    TensorView t;
    t.name = name;
    int64_t elem_bytes = 0;
    if (dt == "F32") {
      t.dtype = DType::F32, elem_bytes = 4;
    } else if (dt == "F16") {
      t.dtype = DType::F16, elem_bytes = 2;
    } else if (dt == "BF16") {
      t.dtype = DType::BF16, elem_bytes = 2;
    } else {
      fail(src, ": tensor '", name, "' has dtype ", dt, "; only F32, F16 and BF16 are supported");
    }

    const json& jshape = field(entry, "shape", src, name);
    DETINFER_CHECK(jshape.is_array(), src, ": tensor '", name, "': \"shape\" is a ", jshape.type_name(),
                   ", expected an array");
    DETINFER_CHECK(jshape.size() <= kMaxRank, src, ": tensor '", name, "' has ", jshape.size(),
                   " dimensions (at most ", kMaxRank, " supported)");
    int64_t numel = 1;
    for (size_t d = 0; d < jshape.size(); ++d) {
      uint64_t dim = json_u64(jshape[d], src, cat("tensor '", name, "' shape dimension ", d));
      DETINFER_CHECK(dim <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) &&
                         !__builtin_mul_overflow(numel, static_cast<int64_t>(dim), &numel),
                     src, ": tensor '", name, "' shape ", jshape.dump(), " has too many elements (overflow)");
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    int64_t nbytes = 0;
    DETINFER_CHECK(!__builtin_mul_overflow(numel, elem_bytes, &nbytes), src, ": tensor '", name, "' shape ",
                   jshape.dump(), " is too large (byte count overflows)");

    const json& joff = field(entry, "data_offsets", src, name);
    DETINFER_CHECK(joff.is_array() && joff.size() == 2, src, ": tensor '", name,
                   "': \"data_offsets\" must be an array [begin, end], got ", joff.type_name(),
                   joff.is_array() ? cat(" of ", joff.size(), " elements") : std::string());
    uint64_t begin = json_u64(joff[0], src, cat("tensor '", name, "' data_offsets begin"));
    uint64_t end = json_u64(joff[1], src, cat("tensor '", name, "' data_offsets end"));
    DETINFER_CHECK(begin <= end, src, ": tensor '", name, "' data_offsets [", begin, ", ", end, "] has begin > end");
    DETINFER_CHECK(end <= section_size, src, ": tensor '", name, "' data_offsets end ", end,
                   " is past the data section (", section_size, " bytes)");
    DETINFER_CHECK(end - begin == static_cast<uint64_t>(nbytes), src, ": tensor '", name, "' has ", end - begin,
                   " bytes but shape ", jshape.dump(), " of ", dt, " needs ", nbytes);

    t.data = section + begin;
    t.nbytes = nbytes;
    if (end > begin) extents.push_back({begin, end, tensors_.size()});
    index_.emplace(name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // Two tensors sharing bytes would alias silently; the format forbids it.
  std::sort(extents.begin(), extents.end(),
            [](const Extent& a, const Extent& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  for (size_t i = 1; i < extents.size(); ++i) {
    const Extent& a = extents[i - 1];
    const Extent& b = extents[i];
    DETINFER_CHECK(b.begin >= a.end, src, ": tensors '", tensors_[a.tensor].name, "' [", a.begin, ", ", a.end,
                   ") and '", tensors_[b.tensor].name, "' [", b.begin, ", ", b.end, ") overlap");
  }
}

}  // namespace detinfer
