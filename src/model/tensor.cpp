#include "model/tensor.h"

#include <cstring>

#include "common/error.h"
#include "common/half.h"

namespace detinfer {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::Q8_0: return "Q8_0";
    case DType::Q4_0: return "Q4_0";
    case DType::Q4_1: return "Q4_1";
  }
  return "unknown";
}

int64_t dtype_block_elems(DType t) {
  switch (t) {
    case DType::F32:
    case DType::F16:
    case DType::BF16: return 1;
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_1: return 32;
  }
  fail("dtype_block_elems: invalid dtype ", static_cast<int>(t));
}

int64_t dtype_block_bytes(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
    case DType::Q8_0: return 34;  // f16 d, int8 q[32]
    case DType::Q4_0: return 18;  // f16 d, uint8 qs[16]
    case DType::Q4_1: return 20;  // f16 d, f16 m, uint8 qs[16]
  }
  fail("dtype_block_bytes: invalid dtype ", static_cast<int>(t));
}

int64_t dtype_row_bytes(DType t, int64_t n) {
  int64_t be = dtype_block_elems(t), bb = dtype_block_bytes(t);
  DETINFER_CHECK(n >= 0, "a row of ", dtype_name(t), " cannot have ", n, " elements");
  DETINFER_CHECK(n % be == 0, "a row of ", n, " ", dtype_name(t), " elements is not a whole number of ",
                 be, "-element blocks");
  int64_t bytes;
  DETINFER_CHECK(!__builtin_mul_overflow(n / be, bb, &bytes), "a row of ", n, " ", dtype_name(t),
                 " elements is too large");
  return bytes;
}

int64_t TensorView::numel() const {
  if (shape.empty()) return 0;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t TensorView::rows() const {
  if (shape.empty()) return 0;
  int64_t n = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) n *= shape[i];
  return n;
}

int64_t TensorView::cols() const { return shape.empty() ? 0 : shape.back(); }

std::string TensorView::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

static inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Each product and sum below is a separate fp32 operation (the build sets -ffp-contract=off), so
// the values are exactly those the SIMD kernels reproduce.
void dequantize_row(DType t, const uint8_t* src, float* dst, int64_t n) {
  const int64_t nblocks = dtype_row_bytes(t, n) / dtype_block_bytes(t);
  switch (t) {
    case DType::F32:
      if (n) std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(load_u16(src + 2 * i));
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load_u16(src + 2 * i));
      return;
    case DType::Q8_0:
      for (int64_t b = 0; b < nblocks; ++b, src += 34, dst += 32) {
        const float d = f16_to_f32(load_u16(src));
        const int8_t* q = reinterpret_cast<const int8_t*>(src + 2);
        for (int j = 0; j < 32; ++j) dst[j] = d * static_cast<float>(q[j]);
      }
      return;
    case DType::Q4_0:
      for (int64_t b = 0; b < nblocks; ++b, src += 18, dst += 32) {
        const float d = f16_to_f32(load_u16(src));
        const uint8_t* qs = src + 2;
        for (int j = 0; j < 16; ++j) {
          dst[j] = d * static_cast<float>((qs[j] & 0xF) - 8);
          dst[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
        }
      }
      return;
    case DType::Q4_1:
      for (int64_t b = 0; b < nblocks; ++b, src += 20, dst += 32) {
        const float d = f16_to_f32(load_u16(src));
        const float m = f16_to_f32(load_u16(src + 2));
        const uint8_t* qs = src + 4;
        for (int j = 0; j < 16; ++j) {
          const float lo = d * static_cast<float>(qs[j] & 0xF);  // rounded to fp32 ...
          const float hi = d * static_cast<float>(qs[j] >> 4);
          dst[j] = lo + m;  // ... then the add: two roundings, never an fma
          dst[j + 16] = hi + m;
        }
      }
      return;
  }
  fail("dequantize_row: invalid dtype ", static_cast<int>(t));
}

std::vector<float> to_f32(const TensorView& t) {
  DETINFER_CHECK(!t.empty(), "to_f32: tensor '", t.name, "' has no data");
  const int64_t rows = t.rows(), cols = t.cols();
  const int64_t row_bytes = dtype_row_bytes(t.dtype, cols);
  int64_t need;
  DETINFER_CHECK(!__builtin_mul_overflow(rows, row_bytes, &need) && need <= t.nbytes, "to_f32: tensor '",
                 t.name, "' of shape ", t.shape_str(), " (", dtype_name(t.dtype), ") needs ", rows, " x ",
                 row_bytes, " bytes but has ", t.nbytes);
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) dequantize_row(t.dtype, t.data + r * row_bytes, out.data() + r * cols, cols);
  return out;
}

}  // namespace detinfer
