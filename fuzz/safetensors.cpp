// Fuzzes the safetensors parser: any input either parses, with every tensor inside the buffer,
// or throws Error. Touching each tensor's first and last byte lets ASan catch a bad view.
#include <cstddef>
#include <cstdint>

#include "common/error.h"
#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    detinfer::SafetensorsFile st(data, size, "fuzz.safetensors");
    volatile uint8_t sink = 0;
    for (const detinfer::TensorView& t : st.tensors()) {
      if (t.nbytes > 0) sink = sink + t.data[0] + t.data[t.nbytes - 1];
    }
    for (const auto& kv : st.metadata()) sink = sink + static_cast<uint8_t>(kv.first.size() + kv.second.size());
    for (const detinfer::TensorView& t : st.tensors()) {
      if (st.find_tensor(t.name) != &t) __builtin_trap();  // the index must agree with the list
    }
  } catch (const detinfer::Error&) {
  }
  return 0;
}
