// GGUF reader: files are built in memory by a small writer below, parsed, and checked; every
// malformed-input case must throw Error whose message names the source and the problem.
#include <gtest/gtest.h>

#include "support/default_model.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/paths.h"
#include "formats/gguf.h"

using namespace detinfer;
using gguf::ValueType;

namespace {

// ---- a minimal GGUF writer ----

struct Bytes {
  std::vector<uint8_t> b;
  template <typename T>
  Bytes& put(T v) {
    uint8_t raw[sizeof(T)];
    std::memcpy(raw, &v, sizeof v);
    b.insert(b.end(), raw, raw + sizeof v);
    return *this;
  }
  Bytes& str(std::string_view s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& type(ValueType t) { return put<uint32_t>(static_cast<uint32_t>(t)); }
  Bytes& array_header(ValueType elem, uint64_t n) {
    type(ValueType::Array);
    type(elem);
    return put<uint64_t>(n);
  }
};

struct TensorSpec {
  std::string name;
  uint32_t type = 0;           // ggml type number
  std::vector<int64_t> ne;     // GGUF order: fastest dimension first
  std::vector<uint8_t> data;   // written at the tensor's offset in the data section
  std::optional<uint64_t> offset;  // default: after the previous tensor, aligned
};

struct GGUFBuilder {
  uint32_t version = 3;
  uint64_t alignment = 32;  // how the builder lays out data (general.alignment is a separate kv)
  std::optional<uint64_t> tensor_count, kv_count;  // override the header counts
  // Each kv: key, then a function writing the value type and the value.
  std::vector<std::pair<std::string, std::function<void(Bytes&)>>> kvs;
  std::vector<TensorSpec> tensors;

  template <typename T>
  GGUFBuilder& kv(std::string key, ValueType t, T v) {
    kvs.emplace_back(std::move(key), [t, v](Bytes& w) { w.type(t).put(v); });
    return *this;
  }
  GGUFBuilder& kv_str(std::string key, std::string v) {
    kvs.emplace_back(std::move(key), [v](Bytes& w) { w.type(ValueType::String).str(v); });
    return *this;
  }
  GGUFBuilder& kv_raw(std::string key, std::function<void(Bytes&)> f) {
    kvs.emplace_back(std::move(key), std::move(f));
    return *this;
  }
  GGUFBuilder& tensor(std::string name, uint32_t type, std::vector<int64_t> ne, std::vector<uint8_t> data,
                      std::optional<uint64_t> offset = std::nullopt) {
    tensors.push_back({std::move(name), type, std::move(ne), std::move(data), offset});
    return *this;
  }

  std::vector<uint8_t> build() const {
    Bytes w;
    w.b = {'G', 'G', 'U', 'F'};
    w.put<uint32_t>(version);
    w.put<uint64_t>(tensor_count.value_or(tensors.size()));
    w.put<uint64_t>(kv_count.value_or(kvs.size()));
    for (const auto& [key, write] : kvs) {
      w.str(key);
      write(w);
    }
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const TensorSpec& t : tensors) {
      uint64_t off = t.offset.value_or((next + alignment - 1) / alignment * alignment);
      offsets.push_back(off);
      next = off + t.data.size();
      w.str(t.name);
      w.put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
      for (int64_t d : t.ne) w.put<int64_t>(d);
      w.put<uint32_t>(t.type);
      w.put<uint64_t>(off);
    }
    if (!tensors.empty()) {
      size_t data_start = (w.b.size() + alignment - 1) / alignment * alignment;
      w.b.resize(data_start, 0);
      for (size_t i = 0; i < tensors.size(); ++i) {
        const auto& d = tensors[i].data;
        if (d.empty()) continue;
        if (w.b.size() < data_start + offsets[i] + d.size()) w.b.resize(data_start + offsets[i] + d.size(), 0);
        std::copy(d.begin(), d.end(), w.b.begin() + static_cast<ptrdiff_t>(data_start + offsets[i]));
      }
    }
    return w.b;
  }
};

std::vector<uint8_t> filled(size_t n, uint8_t seed = 1) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

// Parses bytes copied into an exactly-sized buffer (so any over-read is past the allocation).
gguf::File parse(const std::vector<uint8_t>& bytes, const std::string& source = "test.gguf") {
  return gguf::File(bytes.data(), bytes.size(), source);
}

// The Error's message, or "" if parsing succeeded.
std::string parse_error(const std::vector<uint8_t>& bytes) {
  try {
    parse(bytes, "bad.gguf");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_PARSE_ERROR(bytes, ...)                                              \
  do {                                                                              \
    const std::string msg_ = parse_error(bytes);                                    \
    ASSERT_FALSE(msg_.empty()) << "parsing succeeded";                              \
    EXPECT_NE(msg_.find("bad.gguf"), std::string::npos) << msg_;                    \
    for (const char* part_ : {__VA_ARGS__}) EXPECT_NE(msg_.find(part_), std::string::npos) << msg_; \
  } while (0)

// A small valid file: every metadata type and three tensors of different types.
GGUFBuilder rich_file() {
  GGUFBuilder g;
  g.kv("t.u8", ValueType::U8, uint8_t{200})
      .kv("t.i8", ValueType::I8, int8_t{-100})
      .kv("t.u16", ValueType::U16, uint16_t{60000})
      .kv("t.i16", ValueType::I16, int16_t{-30000})
      .kv("t.u32", ValueType::U32, uint32_t{4000000000u})
      .kv("t.i32", ValueType::I32, int32_t{-2000000000})
      .kv("t.f32", ValueType::F32, 1.25f)
      .kv("t.bool", ValueType::Bool, uint8_t{1})
      .kv_str("t.string", "h\xc3\xa9llo \"world\"\n")
      .kv("t.u64", ValueType::U64, uint64_t{(1ull << 63) + 5})
      .kv("t.i64", ValueType::I64, int64_t{-(1ll << 62)})
      .kv("t.f64", ValueType::F64, 3.141592653589793)
      .kv_raw("t.arr_u8", [](Bytes& w) { w.array_header(ValueType::U8, 3).put<uint8_t>(1).put<uint8_t>(2).put<uint8_t>(255); })
      .kv_raw("t.arr_i32", [](Bytes& w) { w.array_header(ValueType::I32, 2).put<int32_t>(-7).put<int32_t>(1 << 30); })
      .kv_raw("t.arr_f32", [](Bytes& w) { w.array_header(ValueType::F32, 2).put(0.5f).put(-1e-3f); })
      .kv_raw("t.arr_bool", [](Bytes& w) { w.array_header(ValueType::Bool, 2).put<uint8_t>(0).put<uint8_t>(1); })
      .kv_raw("t.arr_str", [](Bytes& w) { w.array_header(ValueType::String, 3).str("a").str("").str("ccc"); })
      .kv_raw("t.arr_empty", [](Bytes& w) { w.array_header(ValueType::U32, 0); })
      .kv_raw("t.arr_nested", [](Bytes& w) {
        w.array_header(ValueType::Array, 2);
        w.type(ValueType::I16).put<uint64_t>(2).put<int16_t>(-1).put<int16_t>(2);
        w.type(ValueType::String).put<uint64_t>(1).str("x");
      })
      .kv("general.alignment", ValueType::U32, uint32_t{32});
  g.tensor("tok", 8, {64, 3}, filled(3 * 2 * 34))    // Q8_0 [3, 64]
      .tensor("norm", 0, {5}, filled(5 * 4, 9))      // F32 [5]
      .tensor("w", 3, {32, 2, 2}, filled(4 * 20, 3))  // Q4_1 [2, 2, 32]
      .tensor("h", 1, {3}, filled(6))                 // F16
      .tensor("b", 30, {2, 1, 1, 2}, filled(8));      // BF16, 4 dims
  return g;
}

TEST(GGUF, MetadataRoundTrip) {
  const auto bytes = rich_file().build();
  const gguf::File f = parse(bytes);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.kv_count(), 20u);
  EXPECT_EQ(f.get_u64("t.u8"), 200u);
  EXPECT_EQ(f.get_i64("t.i8"), -100);
  EXPECT_EQ(f.get_u64("t.u16"), 60000u);
  EXPECT_EQ(f.get_i64("t.i16"), -30000);
  EXPECT_EQ(f.get_u64("t.u32"), 4000000000u);
  EXPECT_EQ(f.get_i64("t.u32"), 4000000000ll);
  EXPECT_EQ(f.get_i64("t.i32"), -2000000000);
  EXPECT_EQ(f.get_f64("t.f32"), 1.25);
  EXPECT_EQ(f.get_bool("t.bool"), true);
  EXPECT_EQ(f.get_string("t.string"), "h\xc3\xa9llo \"world\"\n");
  EXPECT_EQ(f.get_u64("t.u64"), (1ull << 63) + 5);
  EXPECT_EQ(f.get_i64("t.i64"), -(1ll << 62));
  EXPECT_EQ(f.get_f64("t.f64"), 3.141592653589793);
  EXPECT_EQ(f.get_f64("t.i32"), -2000000000.0);  // integers read as f64
  EXPECT_EQ(f.get_i64_array("t.arr_u8"), (std::vector<int64_t>{1, 2, 255}));
  EXPECT_EQ(f.get_i64_array("t.arr_i32"), (std::vector<int64_t>{-7, 1 << 30}));
  EXPECT_EQ(f.get_f64_array("t.arr_f32"), (std::vector<double>{0.5, static_cast<double>(-1e-3f)}));
  EXPECT_EQ(f.get_f64_array("t.arr_i32"), (std::vector<double>{-7.0, 1073741824.0}));
  EXPECT_EQ(f.get_string_array("t.arr_str"), (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_TRUE(f.get_i64_array("t.arr_empty").empty());

  const gguf::Value* b = f.find("t.arr_bool");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->size(), 2u);
  EXPECT_EQ(b->at(0).to_bool(), false);
  EXPECT_EQ(b->at(1).to_bool(), true);

  const gguf::Value* nested = f.find("t.arr_nested");
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->type_str(), "array[array]");
  ASSERT_EQ(nested->size(), 2u);
  std::vector<std::string> seen;
  for (gguf::Value inner : nested->items()) seen.push_back(inner.repr());
  EXPECT_EQ(seen, (std::vector<std::string>{"[-1, 2]", "[\"x\"]"}));
  EXPECT_EQ(nested->at(1).at(0).to_string(), "x");  // at() walks variable-size elements
  EXPECT_EQ(nested->at(0).at(1).to_i64(), 2);
  EXPECT_THROW(nested->at(2), Error);
  EXPECT_THROW(f.find("t.u8")->items(), Error);

  EXPECT_EQ(f.find("t.arr_u8")->repr(2), "[1, 2, ... (3 items)]");
  EXPECT_EQ(f.find("t.string")->repr(), "\"h\xc3\xa9llo \\\"world\\\"\\n\"");
  EXPECT_EQ(f.find("t.f32")->repr(), "1.25");
  EXPECT_EQ(f.find("t.bool")->repr(), "true");

  const auto kt = f.key_types();
  ASSERT_EQ(kt.size(), 20u);
  EXPECT_EQ(kt[0], (std::pair<std::string, std::string>{"t.u8", "u8"}));
  EXPECT_EQ(kt[8], (std::pair<std::string, std::string>{"t.string", "string"}));
  EXPECT_EQ(kt[16], (std::pair<std::string, std::string>{"t.arr_str", "array[string]"}));
  EXPECT_EQ(f.metadata()[9].key, "t.u64");
  EXPECT_EQ(f.metadata()[9].value.type(), ValueType::U64);
}

TEST(GGUF, GetterErrorsAndOptionals) {
  const auto bytes = rich_file().build();
  const gguf::File f = parse(bytes, "rich.gguf");
  auto error_of = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  std::string m = error_of([&] { f.get_string("nope"); });
  EXPECT_NE(m.find("rich.gguf"), std::string::npos) << m;
  EXPECT_NE(m.find("'nope' is missing"), std::string::npos) << m;
  m = error_of([&] { f.get_string("t.u32"); });
  EXPECT_NE(m.find("'t.u32' has type u32, expected string"), std::string::npos) << m;
  m = error_of([&] { f.get_u64("t.i8"); });
  EXPECT_NE(m.find("negative"), std::string::npos) << m;
  m = error_of([&] { f.get_i64("t.u64"); });
  EXPECT_NE(m.find("does not fit"), std::string::npos) << m;
  m = error_of([&] { f.get_i64("t.f32"); });
  EXPECT_NE(m.find("expected an integer"), std::string::npos) << m;
  m = error_of([&] { f.get_bool("t.u8"); });
  EXPECT_NE(m.find("expected bool"), std::string::npos) << m;
  m = error_of([&] { f.get_string_array("t.arr_i32"); });
  EXPECT_NE(m.find("has type array[i32], expected array[string]"), std::string::npos) << m;
  m = error_of([&] { f.get_i64_array("t.arr_f32"); });
  EXPECT_NE(m.find("expected an array of integers"), std::string::npos) << m;
  m = error_of([&] { f.get_f64_array("t.arr_str"); });
  EXPECT_NE(m.find("expected an array of numbers"), std::string::npos) << m;
  m = error_of([&] { f.get_f64("t.string"); });
  EXPECT_NE(m.find("expected a number"), std::string::npos) << m;
  m = error_of([&] { f.tensor("missing.weight"); });
  EXPECT_NE(m.find("tensor 'missing.weight' is missing"), std::string::npos) << m;

  EXPECT_FALSE(f.has("nope"));
  EXPECT_TRUE(f.has("t.u8"));
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_FALSE(f.opt_string("nope").has_value());
  EXPECT_FALSE(f.opt_u64("nope").has_value());
  EXPECT_FALSE(f.opt_i64("nope").has_value());
  EXPECT_FALSE(f.opt_f64("nope").has_value());
  EXPECT_FALSE(f.opt_bool("nope").has_value());
  EXPECT_FALSE(f.opt_string_array("nope").has_value());
  EXPECT_FALSE(f.opt_i64_array("nope").has_value());
  EXPECT_FALSE(f.opt_f64_array("nope").has_value());
  EXPECT_EQ(f.opt_string("t.string"), "h\xc3\xa9llo \"world\"\n");
  EXPECT_EQ(f.opt_u64("t.u16"), 60000u);
  EXPECT_EQ(f.opt_i64("t.i16"), -30000);
  EXPECT_EQ(f.opt_f64("t.f64"), 3.141592653589793);
  EXPECT_EQ(f.opt_bool("t.bool"), true);
  EXPECT_EQ(f.opt_string_array("t.arr_str")->size(), 3u);
  EXPECT_EQ(f.opt_i64_array("t.arr_u8")->back(), 255);
  EXPECT_EQ(f.opt_f64_array("t.arr_f32")->front(), 0.5);
  // Present with the wrong type is an error, not "absent".
  EXPECT_THROW(f.opt_string("t.u8"), Error);
  EXPECT_THROW(f.opt_u64("t.i8"), Error);
}

TEST(GGUF, TensorsShapesAndPointers) {
  const auto bytes = rich_file().build();
  gguf::File f = parse(bytes);
  ASSERT_EQ(f.tensor_count(), 5u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset() % 32, 0u);
  EXPECT_EQ(f.file_size(), bytes.size());
  EXPECT_EQ(f.data(), bytes.data());

  const TensorView* tok = f.find_tensor("tok");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->dtype, DType::Q8_0);
  EXPECT_EQ(tok->shape, (std::vector<int64_t>{3, 64}));  // ne reversed
  EXPECT_EQ(tok->nbytes, 3 * 2 * 34);
  EXPECT_EQ(tok->data, bytes.data() + f.data_offset());
  EXPECT_EQ(std::memcmp(tok->data, filled(204).data(), 204), 0);

  const TensorView& norm = f.tensor("norm");
  EXPECT_EQ(norm.dtype, DType::F32);
  EXPECT_EQ(norm.shape, (std::vector<int64_t>{5}));
  EXPECT_EQ(norm.data, bytes.data() + f.data_offset() + 224);  // 204 rounded up to 32
  EXPECT_EQ(std::memcmp(norm.data, filled(20, 9).data(), 20), 0);

  const TensorView* w = f.find_tensor("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::Q4_1);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2, 2, 32}));
  EXPECT_EQ(w->nbytes, 80);
  EXPECT_EQ(w->data, bytes.data() + f.data_offset() + 256);

  EXPECT_EQ(f.tensor("h").dtype, DType::F16);
  EXPECT_EQ(f.tensor("h").nbytes, 6);
  EXPECT_EQ(f.tensor("b").dtype, DType::BF16);
  EXPECT_EQ(f.tensor("b").shape, (std::vector<int64_t>{2, 1, 1, 2}));
  EXPECT_EQ(f.find_tensor("absent"), nullptr);
  EXPECT_EQ(f.tensors()[2].name, "w");  // file order

  // Views stay valid when the File moves.
  gguf::File moved = std::move(f);
  EXPECT_EQ(moved.find_tensor("w")->data, bytes.data() + moved.data_offset() + 256);
  EXPECT_EQ(moved.get_u64("t.u8"), 200u);
}

TEST(GGUF, Version2AndCustomAlignment) {
  GGUFBuilder g;
  g.version = 2;
  g.alignment = 64;
  g.kv("general.alignment", ValueType::U64, uint64_t{64});
  g.tensor("a", 0, {3}, filled(12)).tensor("b", 2, {32}, filled(18));
  const auto bytes = g.build();
  const gguf::File f = parse(bytes);
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  EXPECT_EQ(f.tensor("b").data, bytes.data() + f.data_offset() + 64);
  EXPECT_EQ(f.tensor("b").dtype, DType::Q4_0);
}

TEST(GGUF, NoTensorsNoDataSection) {
  GGUFBuilder g;
  g.kv_str("general.architecture", "llama");
  const auto bytes = g.build();
  const gguf::File f = parse(bytes);
  EXPECT_EQ(f.tensor_count(), 0u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
}

TEST(GGUF, MapsAFile) {
  const auto bytes = rich_file().build();
  const std::string path = (std::filesystem::temp_directory_path() / "detinfer_test_gguf_map.gguf").string();
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  {
    const gguf::File f(path);
    EXPECT_EQ(f.source(), path);
    EXPECT_EQ(f.get_string_array("t.arr_str")[2], "ccc");
    EXPECT_EQ(std::memcmp(f.tensor("norm").data, filled(20, 9).data(), 20), 0);
  }
  std::filesystem::remove(path);
  try {
    gguf::File missing(path);
    FAIL() << "opened a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

// ---- malformed input: one test per problem ----

TEST(GGUFErrors, EmptyAndTinyFiles) {
  EXPECT_PARSE_ERROR(std::vector<uint8_t>{}, "too small");
  EXPECT_PARSE_ERROR((std::vector<uint8_t>{'G', 'G'}), "too small");
}

TEST(GGUFErrors, WrongMagic) {
  auto bytes = rich_file().build();
  bytes[0] = 'g';
  EXPECT_PARSE_ERROR(bytes, "not a GGUF file", "67 47 55 46");
}

TEST(GGUFErrors, UnsupportedVersion) {
  for (uint32_t v : {0u, 1u, 4u, 1000u}) {
    GGUFBuilder g;
    g.version = v;
    const std::string num = std::to_string(v);
    EXPECT_PARSE_ERROR(g.build(), "version", num.c_str());
  }
  GGUFBuilder be;
  be.version = 0x03000000;  // a big-endian file's version read little-endian
  EXPECT_PARSE_ERROR(be.build(), "big-endian");
}

TEST(GGUFErrors, TruncatedAnywhere) {
  const auto full = rich_file().build();
  ASSERT_NO_THROW(parse(full));
  for (size_t n = 0; n < full.size(); ++n) {
    const std::vector<uint8_t> prefix(full.begin(), full.begin() + static_cast<ptrdiff_t>(n));
    const std::string msg = parse_error(prefix);
    ASSERT_FALSE(msg.empty()) << "a prefix of " << n << " bytes parsed";
    EXPECT_NE(msg.find("bad.gguf"), std::string::npos) << msg;
    const bool says_why = msg.find("truncated") != std::string::npos || msg.find("too small") != std::string::npos ||
                          msg.find("past the end") != std::string::npos || msg.find("cannot fit") != std::string::npos ||
                          msg.find("impossible counts") != std::string::npos;
    EXPECT_TRUE(says_why) << "prefix " << n << ": " << msg;
  }
}

TEST(GGUFErrors, StringLengthPastEnd) {
  GGUFBuilder g;
  g.kv_raw("k", [](Bytes& w) { w.type(ValueType::String).put<uint64_t>(1000).put<uint32_t>(0); });
  EXPECT_PARSE_ERROR(g.build(), "'k'", "length 1000", "past the end");
  GGUFBuilder huge;
  huge.kv_raw("k", [](Bytes& w) { w.type(ValueType::String).put<uint64_t>(~0ull); });
  EXPECT_PARSE_ERROR(huge.build(), "past the end");
  GGUFBuilder key;  // the key itself
  key.kv_raw("", [](Bytes& w) { w.type(ValueType::U8).put<uint8_t>(0); });
  auto bytes = key.build();
  bytes[24] = 0xff;  // key length, low byte
  EXPECT_PARSE_ERROR(bytes, "key", "past the end");
}

TEST(GGUFErrors, ArrayCountCannotFit) {
  GGUFBuilder g;
  g.kv_raw("arr", [](Bytes& w) { w.array_header(ValueType::U32, 1ull << 60).put<uint32_t>(1); });
  EXPECT_PARSE_ERROR(g.build(), "'arr'", "cannot fit");
  GGUFBuilder s;  // strings: each needs at least its 8-byte length
  s.kv_raw("arr", [](Bytes& w) { w.array_header(ValueType::String, 3).str("a").str("b"); });
  EXPECT_PARSE_ERROR(s.build(), "cannot fit");
  GGUFBuilder n;  // nested arrays
  n.kv_raw("arr", [](Bytes& w) { w.array_header(ValueType::Array, ~0ull / 2); });
  EXPECT_PARSE_ERROR(n.build(), "cannot fit");
}

TEST(GGUFErrors, ArraysNestedTooDeep) {
  GGUFBuilder g;
  g.kv_raw("deep", [](Bytes& w) {
    w.type(ValueType::Array);
    for (int i = 0; i < 20; ++i) w.type(ValueType::Array).put<uint64_t>(1);
    w.type(ValueType::U8).put<uint64_t>(0);
  });
  EXPECT_PARSE_ERROR(g.build(), "'deep'", "nested");
}

TEST(GGUFErrors, InvalidValueTypeAndBool) {
  GGUFBuilder g;
  g.kv_raw("k", [](Bytes& w) { w.put<uint32_t>(13).put<uint32_t>(0); });
  EXPECT_PARSE_ERROR(g.build(), "'k'", "invalid value type 13");
  GGUFBuilder a;
  a.kv_raw("k", [](Bytes& w) { w.type(ValueType::Array).put<uint32_t>(77).put<uint64_t>(0); });
  EXPECT_PARSE_ERROR(a.build(), "invalid array element type 77");
  GGUFBuilder b;
  b.kv("flag", ValueType::Bool, uint8_t{2});
  EXPECT_PARSE_ERROR(b.build(), "'flag'", "bool value 2");
}

TEST(GGUFErrors, DuplicateKeys) {
  GGUFBuilder g;
  g.kv("a.b", ValueType::U8, uint8_t{1}).kv("a.b", ValueType::U32, uint32_t{2});
  EXPECT_PARSE_ERROR(g.build(), "'a.b'", "duplicate metadata key");
}

TEST(GGUFErrors, AbsurdCounts) {
  GGUFBuilder t;
  t.tensor_count = 1ull << 40;
  EXPECT_PARSE_ERROR(t.build(), "impossible counts", "1099511627776 tensors");
  GGUFBuilder k;
  k.kv("x", ValueType::U8, uint8_t{1});
  k.kv_count = ~0ull;
  EXPECT_PARSE_ERROR(k.build(), "impossible counts", "18446744073709551615 metadata keys");
  GGUFBuilder both;  // each fits alone, not together
  both.kv("x", ValueType::U32, uint32_t{1});
  both.kv("y", ValueType::U32, uint32_t{1});
  both.tensor_count = 1;
  both.kv_count = 2;
  EXPECT_PARSE_ERROR(both.build(), "impossible counts");
}

TEST(GGUFErrors, BadAlignment) {
  for (uint32_t a : {0u, 3u, 48u}) {
    GGUFBuilder g;
    g.kv("general.alignment", ValueType::U32, a);
    EXPECT_PARSE_ERROR(g.build(), "general.alignment", "power of two");
  }
  GGUFBuilder s;
  s.kv_str("general.alignment", "32");
  EXPECT_PARSE_ERROR(s.build(), "general.alignment", "unsigned integer");
}

TEST(GGUFErrors, DimensionCount) {
  GGUFBuilder zero;
  zero.tensor("t0", 0, {}, filled(4));
  EXPECT_PARSE_ERROR(zero.build(), "'t0'", "0 dimensions");
  GGUFBuilder five;
  five.tensor("t5", 0, {1, 1, 1, 1, 1}, filled(4));
  EXPECT_PARSE_ERROR(five.build(), "'t5'", "5 dimensions");
}

TEST(GGUFErrors, DimensionNotPositive) {
  GGUFBuilder zero;
  zero.tensor("z", 0, {4, 0}, filled(16));
  EXPECT_PARSE_ERROR(zero.build(), "'z'", "ne[1] = 0", "not positive");
  GGUFBuilder neg;
  neg.tensor("n", 0, {-4}, filled(16));
  EXPECT_PARSE_ERROR(neg.build(), "'n'", "ne[0] = -4", "not positive");
}

TEST(GGUFErrors, ElementCountOverflow) {
  GGUFBuilder g;
  g.tensor("big", 0, {1ll << 32, 1ll << 32}, filled(4));
  EXPECT_PARSE_ERROR(g.build(), "'big'", "overflows");
  GGUFBuilder bytes;  // element count fits, byte count does not
  bytes.tensor("big", 0, {1ll << 31, 1ll << 31}, filled(4));
  EXPECT_PARSE_ERROR(bytes.build(), "'big'", "overflows");
}

TEST(GGUFErrors, RowNotWholeBlocks) {
  GGUFBuilder g;
  g.tensor("q", 2, {48, 2}, filled(64));
  EXPECT_PARSE_ERROR(g.build(), "'q'", "ne[0] = 48", "Q4_0 block size 32");
}

TEST(GGUFErrors, UnsupportedTensorType) {
  GGUFBuilder k;
  k.tensor("blk.0.ffn_down.weight", 12, {256}, filled(144));
  EXPECT_PARSE_ERROR(k.build(), "blk.0.ffn_down.weight", "Q4_K", "(12)", "not supported");
  GGUFBuilder u;
  u.tensor("odd", 99, {4}, filled(16));
  EXPECT_PARSE_ERROR(u.build(), "'odd'", "unknown (99)");
  EXPECT_STREQ(gguf::ggml_type_name(12), "Q4_K");
  EXPECT_STREQ(gguf::ggml_type_name(30), "BF16");
  EXPECT_EQ(gguf::ggml_type_name(1000), nullptr);
}

TEST(GGUFErrors, TensorOffsetNotAligned) {
  GGUFBuilder g;
  g.tensor("a", 0, {4}, filled(16), 8);
  EXPECT_PARSE_ERROR(g.build(), "'a'", "offset 8", "alignment 32");
}

TEST(GGUFErrors, TensorDataPastEnd) {
  GGUFBuilder g;
  g.tensor("a", 0, {4}, filled(16));
  auto bytes = g.build();
  bytes.pop_back();
  EXPECT_PARSE_ERROR(bytes, "'a'", "past the end");
  GGUFBuilder far;
  far.tensor("a", 0, {4}, {}, 1ull << 62);
  EXPECT_PARSE_ERROR(far.build(), "'a'", "past the end");
}

TEST(GGUFErrors, OverlappingTensors) {
  GGUFBuilder g;
  g.tensor("a", 0, {16}, filled(64), 0).tensor("b", 0, {16}, filled(64), 32);
  EXPECT_PARSE_ERROR(g.build(), "'a'", "'b'", "overlap");
  GGUFBuilder same;  // listed out of order, same offset
  same.tensor("c", 0, {4}, filled(16), 64).tensor("d", 0, {8}, filled(32), 0).tensor("e", 0, {1}, filled(4), 64);
  EXPECT_PARSE_ERROR(same.build(), "overlap");
}

TEST(GGUFErrors, DuplicateTensorNames) {
  GGUFBuilder g;
  g.tensor("w", 0, {4}, filled(16)).tensor("w", 0, {4}, filled(16));
  EXPECT_PARSE_ERROR(g.build(), "'w'", "duplicate tensor name");
}

// ---- the default model, when installed ----

TEST(GGUFModel, SmolLM2Facts) {
  DETINFER_DEFAULT_MODEL_OR_SKIP(path);
  const gguf::File f(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.tensor_count(), 272u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_u64("llama.block_count"), 30u);
  EXPECT_EQ(f.get_u64("llama.embedding_length"), 576u);
  EXPECT_EQ(f.get_u64("llama.attention.head_count"), 9u);
  EXPECT_EQ(f.get_u64("llama.attention.head_count_kv"), 3u);
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  EXPECT_EQ(f.get_i64_array("tokenizer.ggml.token_type").size(), 49152u);
  const TensorView* emb = f.find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->dtype, DType::Q8_0);
  EXPECT_EQ(emb->shape, (std::vector<int64_t>{49152, 576}));
  EXPECT_EQ(emb->nbytes, 49152 * 18 * 34);
  const TensorView& down = f.tensor("blk.0.ffn_down.weight");
  EXPECT_EQ(down.dtype, DType::Q4_1);
  EXPECT_EQ(down.shape, (std::vector<int64_t>{576, 1536}));
  EXPECT_EQ(f.tensor("blk.29.attn_norm.weight").dtype, DType::F32);
  // Every row of every tensor dequantizes to finite values.
  for (const TensorView& t : f.tensors()) {
    std::vector<float> row(static_cast<size_t>(t.cols()));
    dequantize_row(t.dtype, t.data, row.data(), t.cols());
    for (float x : row) ASSERT_TRUE(std::isfinite(x)) << t.name;
  }
}

}  // namespace
