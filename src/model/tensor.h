// A tensor as a model file stores it: type, shape and bytes. Shapes are row-major with the
// fastest-varying dimension last (the PyTorch / Hugging Face order): a Linear weight is
// [out_features, in_features]. GGUF lists dimensions fastest-first; its reader reverses them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace detinfer {

enum class DType : uint8_t { F32, F16, BF16, Q8_0, Q4_0, Q4_1 };

const char* dtype_name(DType t);
// Elements per block and bytes per block (1 and the element size for the plain types).
int64_t dtype_block_elems(DType t);
int64_t dtype_block_bytes(DType t);
// Bytes of a row of n elements; throws Error if n is not a whole number of blocks.
int64_t dtype_row_bytes(DType t, int64_t n);

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // row-major, last dimension fastest
  const uint8_t* data = nullptr;
  int64_t nbytes = 0;

  int64_t numel() const;
  int64_t rows() const;  // product of all but the last dimension (1 for a vector)
  int64_t cols() const;  // last dimension
  bool empty() const { return data == nullptr; }
  std::string shape_str() const;
};

// Converts n elements of a row (n a whole number of blocks) to fp32; throws Error otherwise.
// These formulas are a CONTRACT: every kernel that reads weights (CPU SIMD, CUDA) reproduces them
// bit for bit. Each operation is one fp32 rounding, never fused (no fma):
//   F16, BF16: the exact conversion (f16_to_f32, bf16_to_f32 in common/half.h).
//   Q8_0 block (34 B: f16 d, int8 q[32]):          x[j] = d * (float)q[j]
//   Q4_0 block (18 B: f16 d, uint8 qs[16]), j < 16: x[j]    = d * (float)((qs[j] & 0xF) - 8)
//                                                   x[j+16] = d * (float)((qs[j] >> 4) - 8)
//   Q4_1 block (20 B: f16 d, f16 m, uint8 qs[16]):  x[j]    = d * (float)(qs[j] & 0xF) + m
//                                                   x[j+16] = d * (float)(qs[j] >> 4) + m
//     (Q4_1: the product is rounded to fp32, then m is added: two roundings.)
void dequantize_row(DType t, const uint8_t* src, float* dst, int64_t n);
// Whole tensor to fp32, row by row.
std::vector<float> to_f32(const TensorView& t);

}  // namespace detinfer
