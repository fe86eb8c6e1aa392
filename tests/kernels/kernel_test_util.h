// Helpers for the CPU kernel tests: seeded random data, weights of every dtype, bit comparison.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/half.h"
#include "kernels/cpu/ops.h"
#include "model/tensor.h"

namespace detinfer::test {

constexpr double kEps = 0x1.0p-24;  // fp32 unit roundoff

inline std::vector<float> random_floats(size_t n, uint64_t seed, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// A weight tensor [N, K] of dtype t with random contents: random scales and codes for the
// quantized types, random values for the plain ones.
struct Weight {
  std::vector<uint8_t> bytes;
  TensorView view;
  std::vector<float> f32;  // dequantize_row of every row: the values the kernels must use
};

inline void put_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

inline Weight random_weight(DType t, int64_t N, int64_t K, uint64_t seed) {
  Weight w;
  const int64_t row_bytes = dtype_row_bytes(t, K);
  w.bytes.resize(static_cast<size_t>(N * row_bytes));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> val(-1.0f, 1.0f), scale(0.001f, 0.05f);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int64_t n = 0; n < N; ++n) {
    uint8_t* row = w.bytes.data() + n * row_bytes;
    switch (t) {
      case DType::F32:
        for (int64_t k = 0; k < K; ++k) {
          const float v = val(rng);
          std::memcpy(row + 4 * k, &v, 4);
        }
        break;
      case DType::F16:
        for (int64_t k = 0; k < K; ++k) put_u16(row + 2 * k, f32_to_f16(val(rng)));
        break;
      case DType::BF16:
        for (int64_t k = 0; k < K; ++k) put_u16(row + 2 * k, f32_to_bf16(val(rng)));
        break;
      case DType::Q8_0:
      case DType::Q4_0:
      case DType::Q4_1: {
        const int64_t bb = dtype_block_bytes(t);
        for (int64_t b = 0; b < K / 32; ++b) {
          uint8_t* blk = row + b * bb;
          put_u16(blk, f32_to_f16(scale(rng)));
          int64_t first = 2;
          if (t == DType::Q4_1) {
            put_u16(blk + 2, f32_to_f16(-8.0f * scale(rng)));
            first = 4;
          }
          for (int64_t i = first; i < bb; ++i) blk[i] = static_cast<uint8_t>(byte(rng));
        }
        break;
      }
    }
  }
  w.view.name = std::string("test.") + dtype_name(t);
  w.view.dtype = t;
  w.view.shape = {N, K};
  w.view.data = w.bytes.data();
  w.view.nbytes = static_cast<int64_t>(w.bytes.size());
  w.f32 = to_f32(w.view);
  return w;
}

inline const std::vector<DType>& all_dtypes() {
  static const std::vector<DType> d = {DType::F32,  DType::F16,  DType::BF16,
                                       DType::Q8_0, DType::Q4_0, DType::Q4_1};
  return d;
}

inline bool same_bits(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

// Index of the first differing element, or -1.
inline int64_t first_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], 4) != 0) return static_cast<int64_t>(i);
  return -1;
}

// Runs f with the SIMD path on or off, restoring the default afterwards.
template <typename F>
void with_simd(bool on, F&& f) {
  cpu::set_simd_enabled(on);
  f();
  cpu::set_simd_enabled(true);
}

}  // namespace detinfer::test
