// safetensors reader: valid files built in memory, and every kind of malformed header.
#include "formats/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/half.h"

namespace detinfer {
namespace {

using nlohmann::json;

// 8-byte little-endian length + header text + data.
std::string raw_file(uint64_t header_len, const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header_len >> (8 * i)) & 0xff);
  return out + header + data;
}
std::string raw_file(const std::string& header, const std::string& data) {
  return raw_file(header.size(), header, data);
}

// Builds a well-formed file tensor by tensor; tests then break one thing.
struct Builder {
  json header = json::object();
  std::string data;

  Builder& add(const std::string& name, const std::string& dtype, std::vector<int64_t> shape,
               const std::string& bytes) {
    header[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {data.size(), data.size() + bytes.size()}}};
    data += bytes;
    return *this;
  }
  std::string build() const { return raw_file(header.dump(), data); }
};

template <typename T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

SafetensorsFile parse(const std::string& file, const char* source = "test.safetensors") {
  return SafetensorsFile(reinterpret_cast<const uint8_t*>(file.data()), file.size(), source);
}

// Parsing must throw Error whose message holds the source name and every given fragment.
void expect_error(const std::string& file, std::initializer_list<const char*> fragments) {
  try {
    parse(file, "bad.safetensors");
    ADD_FAILURE() << "no error; expected one mentioning " << *fragments.begin();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
    for (const char* f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "missing '" << f << "' in: " << msg;
  }
}

// A one-tensor file whose entry is `entry` and whose data section has `data_bytes` bytes.
std::string one_entry(const json& entry, size_t data_bytes = 16) {
  json h = {{"w", entry}};
  return raw_file(h.dump(), std::string(data_bytes, '\0'));
}

TEST(Safetensors, ParsesTensorsAndMetadata) {
  std::vector<float> f32 = {1.0f, -2.5f, 3.25f, 0.0f, 7.0f, -1e-3f};
  std::vector<uint16_t> f16 = {f32_to_f16(0.5f), f32_to_f16(-4.0f), f32_to_f16(65504.0f)};
  std::vector<uint16_t> bf16 = {f32_to_bf16(1.5f), f32_to_bf16(-3.0f)};
  Builder b;
  b.add("layer.weight", "F32", {2, 3}, bytes_of(f32)).add("half", "F16", {3}, bytes_of(f16));
  b.add("brain", "BF16", {1, 2}, bytes_of(bf16));
  b.header["__metadata__"] = {{"format", "pt"}, {"note", "hello"}};
  std::string file = b.build();
  SafetensorsFile st = parse(file);

  ASSERT_EQ(st.tensors().size(), 3u);
  EXPECT_EQ(st.tensors()[0].name, "brain");  // sorted by name
  EXPECT_EQ(st.tensors()[1].name, "half");
  EXPECT_EQ(st.tensors()[2].name, "layer.weight");
  EXPECT_EQ(st.metadata().size(), 2u);
  EXPECT_EQ(st.metadata().at("format"), "pt");
  EXPECT_EQ(st.metadata().at("note"), "hello");
  EXPECT_EQ(st.source(), "test.safetensors");

  const TensorView* w = st.find_tensor("layer.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::F32);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(w->nbytes, 24);
  std::vector<float> got(6);
  std::memcpy(got.data(), w->data, 24);
  EXPECT_EQ(got, f32);

  const TensorView* h = st.find_tensor("half");
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->dtype, DType::F16);
  EXPECT_EQ(h->nbytes, 6);
  uint16_t h2;
  std::memcpy(&h2, h->data + 4, 2);
  EXPECT_EQ(f16_to_f32(h2), 65504.0f);

  const TensorView* bf = st.find_tensor("brain");
  ASSERT_NE(bf, nullptr);
  EXPECT_EQ(bf->dtype, DType::BF16);
  EXPECT_EQ(bf->shape, (std::vector<int64_t>{1, 2}));
  uint16_t b1;
  std::memcpy(&b1, bf->data + 2, 2);
  EXPECT_EQ(bf16_to_f32(b1), -3.0f);

  // Views point into the buffer, at the data section plus the tensor's begin offset.
  const uint8_t* section = reinterpret_cast<const uint8_t*>(file.data()) + file.size() - b.data.size();
  EXPECT_EQ(w->data, section + 0);
  EXPECT_EQ(h->data, section + 24);
  EXPECT_EQ(bf->data, section + 30);

  EXPECT_EQ(st.find_tensor("missing"), nullptr);
  EXPECT_EQ(st.find_tensor("__metadata__"), nullptr);
}

TEST(Safetensors, ScalarsEmptyTensorsAndPadding) {
  Builder b;
  b.add("scalar", "F32", {}, bytes_of(std::vector<float>{42.0f}));
  b.add("empty", "F16", {0, 5}, "");
  b.add("after", "F32", {1}, bytes_of(std::vector<float>{-1.0f}));
  // Writers pad the header with spaces to an 8-byte multiple; that is valid JSON whitespace.
  std::string header = b.header.dump() + "       ";
  SafetensorsFile st = parse(raw_file(header, b.data));
  ASSERT_EQ(st.tensors().size(), 3u);
  const TensorView* s = st.find_tensor("scalar");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(s->nbytes, 4);
  const TensorView* e = st.find_tensor("empty");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->nbytes, 0);
  EXPECT_EQ(e->shape, (std::vector<int64_t>{0, 5}));
  EXPECT_TRUE(st.metadata().empty());

  // A file with no tensors at all is valid too.
  SafetensorsFile none = parse(raw_file("{}", ""));
  EXPECT_TRUE(none.tensors().empty());
}

TEST(Safetensors, MovingKeepsViewsValid) {
  std::string file = Builder().add("x", "F32", {2}, bytes_of(std::vector<float>{3.0f, 4.0f})).build();
  SafetensorsFile a = parse(file);
  const uint8_t* data = a.find_tensor("x")->data;
  SafetensorsFile b = std::move(a);
  ASSERT_NE(b.find_tensor("x"), nullptr);
  EXPECT_EQ(b.find_tensor("x")->data, data);
}

TEST(Safetensors, DuplicateNamesKeepTheLast) {
  std::string header =
      R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  std::string file = raw_file(header, std::string(8, '\0'));
  SafetensorsFile st = parse(file);
  ASSERT_EQ(st.tensors().size(), 1u);
  EXPECT_EQ(st.tensors()[0].data, reinterpret_cast<const uint8_t*>(file.data()) + file.size() - 4);
  EXPECT_EQ(st.tensors()[0].shape, std::vector<int64_t>{1});
}

TEST(Safetensors, TooShortFile) {
  expect_error("", {"0 bytes", "shorter than the 8-byte header"});
  expect_error(std::string(7, '\0'), {"7 bytes", "shorter"});
}

TEST(Safetensors, HeaderLengthPastEndOrAbsurd) {
  expect_error(raw_file(100, "{}", ""), {"header length 100", "past the end"});
  expect_error(raw_file(3, "{}", ""), {"header length 3", "past the end"});
  expect_error(raw_file(200ull << 20, "{}", ""), {"absurd"});
  expect_error(raw_file(~0ull, "{}", ""), {"absurd"});
}

TEST(Safetensors, InvalidJson) {
  expect_error(raw_file("{\"a\": [1, 2", ""), {"not valid JSON", "byte"});
  expect_error(raw_file("", ""), {"not valid JSON"});
  expect_error(raw_file("{} trailing", ""), {"not valid JSON"});
  // Tensor names must be UTF-8 (JSON strings are).
  expect_error(raw_file("{\"\xff\": 1}", ""), {"not valid JSON"});
  // A number beyond double range is a different nlohmann exception; still an Error.
  expect_error(raw_file(R"({"w": {"dtype": "F32", "shape": [1e999], "data_offsets": [0, 4]}})", "abcd"),
               {"not valid JSON"});
  expect_error(raw_file("[1, 2]", ""), {"array", "expected an object"});
  // Deep nesting is refused before it is built.
  expect_error(raw_file(std::string(100000, '['), ""), {"nests deeper"});
  expect_error(raw_file(R"({"__metadata__": {"a": [[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]}})", ""), {"nests deeper"});
  expect_error(raw_file("7", ""), {"expected an object"});
}

TEST(Safetensors, BadMetadata) {
  expect_error(raw_file(R"({"__metadata__": [1]})", ""), {"__metadata__", "expected an object"});
  expect_error(raw_file(R"({"__metadata__": {"k": 3}})", ""), {"__metadata__", "'k'", "expected a string"});
}

TEST(Safetensors, MissingOrIllTypedFields) {
  expect_error(raw_file(R"({"w": 5})", ""), {"'w'", "expected an object"});
  expect_error(one_entry({{"shape", {4}}, {"data_offsets", {0, 16}}}), {"'w'", "\"dtype\""});
  expect_error(one_entry({{"dtype", 1}, {"shape", {4}}, {"data_offsets", {0, 16}}}), {"'w'", "dtype", "string"});
  expect_error(one_entry({{"dtype", "F32"}, {"data_offsets", {0, 16}}}), {"'w'", "\"shape\""});
  expect_error(one_entry({{"dtype", "F32"}, {"shape", 4}, {"data_offsets", {0, 16}}}), {"'w'", "shape", "array"});
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {4.0}}, {"data_offsets", {0, 16}}}),
               {"'w'", "shape dimension 0", "not an integer"});
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {"4"}}, {"data_offsets", {0, 16}}}),
               {"'w'", "not an integer"});
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {4}}}), {"'w'", "\"data_offsets\""});
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 8, 16}}}),
               {"'w'", "[begin, end]", "3 elements"});
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", 16}}), {"'w'", "[begin, end]"});
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {-4, 16}}}),
               {"'w'", "data_offsets begin", "negative"});
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, nullptr}}}),
               {"'w'", "data_offsets end", "not an integer"});
}

TEST(Safetensors, UnsupportedDtypes) {
  for (const char* dt : {"I64", "F8_E4M3", "F64", "I8", "U8", "BOOL", "f32"}) {
    expect_error(one_entry({{"dtype", dt}, {"shape", {2}}, {"data_offsets", {0, 16}}}), {"'w'", dt, "F32, F16 and BF16"});
  }
}

TEST(Safetensors, BadOffsets) {
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {0}}, {"data_offsets", {8, 4}}}), {"'w'", "begin > end"});
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {4, 20}}}, 16),
               {"'w'", "end 20", "past the data section (16 bytes)"});
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {~0ull - 7, ~0ull}}}, 16),
               {"'w'", "past the data section"});
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 16}}}),
               {"'w'", "16 bytes", "needs 12"});
  expect_error(one_entry({{"dtype", "BF16"}, {"shape", {2, 2}}, {"data_offsets", {0, 16}}}),
               {"'w'", "needs 8"});
}

TEST(Safetensors, BadShapes) {
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {-4}}, {"data_offsets", {0, 16}}}), {"'w'", "negative"});
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {4, -1}}, {"data_offsets", {0, 16}}}),
               {"'w'", "shape dimension 1", "negative"});
  // 2^32 * 2^32 elements overflows int64.
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {1ll << 32, 1ll << 32}}, {"data_offsets", {0, 16}}}),
               {"'w'", "overflow"});
  // A dimension beyond int64.
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {~0ull}}, {"data_offsets", {0, 16}}}), {"'w'", "overflow"});
  // Elements fit int64, bytes do not.
  expect_error(one_entry({{"dtype", "F32"}, {"shape", {1ll << 62}}, {"data_offsets", {0, 16}}}),
               {"'w'", "overflow"});
  expect_error(one_entry({{"dtype", "F32"}, {"shape", std::vector<int>(17, 1)}, {"data_offsets", {0, 4}}}, 4),
               {"'w'", "17 dimensions"});
  // Zero anywhere makes an empty tensor, however large the other dimensions.
  SafetensorsFile st = parse(one_entry({{"dtype", "F32"}, {"shape", {0, 1ll << 62}}, {"data_offsets", {0, 0}}}));
  EXPECT_EQ(st.find_tensor("w")->nbytes, 0);
}

TEST(Safetensors, OverlappingTensors) {
  json h = {{"a", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}}},
            {"b", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {12, 20}}}}};
  expect_error(raw_file(h.dump(), std::string(32, '\0')), {"'a'", "'b'", "overlap"});
  // One tensor inside another, with a third between them in sorted order.
  json h2 = {{"big", {{"dtype", "F32"}, {"shape", {8}}, {"data_offsets", {0, 32}}}},
             {"inner", {{"dtype", "F16"}, {"shape", {2}}, {"data_offsets", {8, 12}}}},
             {"z", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {32, 36}}}}};
  expect_error(raw_file(h2.dump(), std::string(36, '\0')), {"'big'", "'inner'", "overlap"});
  // Identical extents overlap too.
  json h3 = {{"p", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}}},
             {"q", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}}}};
  expect_error(raw_file(h3.dump(), std::string(4, '\0')), {"overlap"});
  // Touching extents and empty tensors at a shared offset are fine.
  json ok = {{"p", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}}},
             {"e", {{"dtype", "F32"}, {"shape", {0}}, {"data_offsets", {4, 4}}}},
             {"q", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {4, 8}}}}};
  EXPECT_EQ(parse(raw_file(ok.dump(), std::string(8, '\0'))).tensors().size(), 3u);
}

TEST(Safetensors, MapsAFile) {
  namespace fs = std::filesystem;
  fs::path path = fs::temp_directory_path() / ("detinfer_st_" + std::to_string(::getpid()) + ".safetensors");
  std::vector<float> v = {0.25f, 0.5f, 0.75f, 1.0f};
  {
    std::ofstream f(path, std::ios::binary);
    f << Builder().add("t", "F32", {2, 2}, bytes_of(v)).build();
  }
  {
    SafetensorsFile st(path.string());
    EXPECT_EQ(st.source(), path.string());
    const TensorView* t = st.find_tensor("t");
    ASSERT_NE(t, nullptr);
    std::vector<float> got(4);
    std::memcpy(got.data(), t->data, 16);
    EXPECT_EQ(got, v);
  }
  // Errors from a mapped file name the path.
  {
    std::ofstream f(path, std::ios::binary);
    f << "abc";
  }
  try {
    SafetensorsFile st(path.string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
  fs::remove(path);
  EXPECT_THROW(SafetensorsFile((path.string() + ".absent")), Error);
}

}  // namespace
}  // namespace detinfer
