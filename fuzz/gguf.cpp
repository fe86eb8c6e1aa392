// Fuzzes the GGUF reader: parse the input, read every metadata value through every accessor, and
// dequantize the first row of every tensor. Malformed input must end in detinfer::Error, never in
// a crash, an over-read (ASan) or undefined behaviour (UBSan).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "formats/gguf.h"

using namespace detinfer;

namespace {

volatile uint64_t g_sink;

void touch(const gguf::Value& v) {
  uint64_t s = static_cast<uint64_t>(v.type()) + v.size();
  s += v.to_u64().value_or(0) + static_cast<uint64_t>(v.to_i64().value_or(0));
  if (auto f = v.to_f64()) {
    uint64_t bits;
    std::memcpy(&bits, &*f, 8);
    s += bits;
  }
  s += v.to_bool().value_or(false);
  if (auto str = v.to_string()) s += str->empty() ? 0 : static_cast<uint8_t>(str->back());
  s += v.type_str().size() + v.repr(4).size();
  if (v.is_array()) {
    for (gguf::Value e : v.items()) touch(e);
    if (v.size() > 0) touch(v.at(v.size() - 1));
  }
  g_sink = g_sink + s;
}

template <typename F>
void try_get(F&& f) {
  try {
    f();
  } catch (const Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const gguf::File f(data, size, "fuzz.gguf");
    for (const gguf::Entry& e : f.metadata()) {
      touch(e.value);
      const std::string& k = e.key;
      try_get([&] { g_sink = g_sink + f.get_string(k).size(); });
      try_get([&] { g_sink = g_sink + f.get_u64(k); });
      try_get([&] { g_sink = g_sink + static_cast<uint64_t>(f.get_i64(k)); });
      try_get([&] { g_sink = g_sink + static_cast<uint64_t>(f.get_f64(k) != 0); });
      try_get([&] { g_sink = g_sink + f.get_bool(k); });
      try_get([&] { g_sink = g_sink + f.get_string_array(k).size(); });
      try_get([&] { g_sink = g_sink + f.get_i64_array(k).size(); });
      try_get([&] { g_sink = g_sink + f.get_f64_array(k).size(); });
      try_get([&] { g_sink = g_sink + f.opt_u64(k).has_value(); });
    }
    g_sink = g_sink + f.key_types().size();
    for (const TensorView& t : f.tensors()) {
      if (f.find_tensor(t.name) != &t) __builtin_trap();  // lookup must find the same tensor
      std::vector<float> row(static_cast<size_t>(t.cols()));
      dequantize_row(t.dtype, t.data, row.data(), t.cols());
      for (float x : row) g_sink = g_sink + (x != 0);
    }
  } catch (const Error&) {
  }
  return 0;
}
