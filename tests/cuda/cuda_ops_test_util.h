// Helpers for the CudaOps tests: GPU presence, device arrays through the Ops interface, random
// data, tensors of every stored dtype, and bitwise comparison.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/half.h"
#include "kernels/cuda/cuda_ops.h"
#include "model/tensor.h"

namespace cuda_ops_test {

using namespace detinfer;

#define CUDA_OPS_REQUIRE_GPU()                                           \
  if (::detinfer::CudaOps::device_count() == 0) {                        \
    GTEST_SKIP() << "no CUDA device";                                    \
  }

// A device array in one of a CudaOps's scratch slots (slots >= 100, so they never collide with
// the forward pass's).
struct DeviceArray {
  CudaOps* ops;
  float* ptr;
  int64_t n;
  DeviceArray(CudaOps& o, int slot, int64_t count) : ops(&o), ptr(o.scratch(100 + slot, count)), n(count) {}
  void upload(const std::vector<float>& h) { ops->from_host(h.data(), static_cast<int64_t>(h.size()), ptr); }
  std::vector<float> download(int64_t count = -1) const {
    std::vector<float> h(static_cast<size_t>(count < 0 ? n : count));
    ops->to_host(ptr, static_cast<int64_t>(h.size()), h.data());
    return h;
  }
  // Fills with a NaN pattern, so an element the kernel forgets to write shows.
  void poison() { upload(std::vector<float>(static_cast<size_t>(n), std::nanf("0x7ee"))); }
};

inline std::vector<float> random_normal(int64_t n, uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

// A weight tensor [rows, cols] stored as `dtype`, with its bytes; values roughly N(0, stddev).
struct HostTensor {
  std::vector<uint8_t> bytes;
  TensorView view;
};

inline std::unique_ptr<HostTensor> make_tensor(DType t, int64_t rows, int64_t cols, uint64_t seed,
                                               float stddev = 0.05f, const std::string& name = "w") {
  auto h = std::make_unique<HostTensor>();
  const std::vector<float> v = random_normal(rows * cols, seed, stddev);
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  const int64_t row_bytes = dtype_row_bytes(t, cols);
  h->bytes.assign(static_cast<size_t>(rows * row_bytes), 0);
  auto put16 = [](uint8_t* p, uint16_t u) { p[0] = u & 0xff, p[1] = u >> 8; };
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* dst = h->bytes.data() + r * row_bytes;
    const float* src = v.data() + r * cols;
    switch (t) {
      case DType::F32: std::memcpy(dst, src, cols * 4); break;
      case DType::F16:
        for (int64_t c = 0; c < cols; ++c) put16(dst + 2 * c, f32_to_f16(src[c]));
        break;
      case DType::BF16:
        for (int64_t c = 0; c < cols; ++c) put16(dst + 2 * c, f32_to_bf16(src[c]));
        break;
      case DType::Q8_0:
        for (int64_t b = 0; b < cols / 32; ++b) {
          uint8_t* blk = dst + 34 * b;
          put16(blk, f32_to_f16(stddev / 40.0f * (0.5f + static_cast<float>(rng() % 1000) / 1000.0f)));
          for (int j = 0; j < 32; ++j) blk[2 + j] = static_cast<uint8_t>(rng());
        }
        break;
      case DType::Q4_0:
        for (int64_t b = 0; b < cols / 32; ++b) {
          uint8_t* blk = dst + 18 * b;
          put16(blk, f32_to_f16(stddev / 4.0f * (0.5f + static_cast<float>(rng() % 1000) / 1000.0f)));
          for (int j = 0; j < 16; ++j) blk[2 + j] = static_cast<uint8_t>(rng());
        }
        break;
      case DType::Q4_1:
        for (int64_t b = 0; b < cols / 32; ++b) {
          uint8_t* blk = dst + 20 * b;
          put16(blk, f32_to_f16(stddev / 4.0f * (0.5f + static_cast<float>(rng() % 1000) / 1000.0f)));
          put16(blk + 2, f32_to_f16(-stddev * 2.0f * static_cast<float>(rng() % 1000) / 1000.0f));
          for (int j = 0; j < 16; ++j) blk[4 + j] = static_cast<uint8_t>(rng());
        }
        break;
    }
  }
  h->view.name = name;
  h->view.dtype = t;
  h->view.shape = {rows, cols};
  h->view.data = h->bytes.data();
  h->view.nbytes = static_cast<int64_t>(h->bytes.size());
  return h;
}

inline std::unique_ptr<HostTensor> make_vector(const std::vector<float>& v, const std::string& name = "v") {
  auto h = std::make_unique<HostTensor>();
  h->bytes.resize(v.size() * 4);
  std::memcpy(h->bytes.data(), v.data(), h->bytes.size());
  h->view.name = name;
  h->view.dtype = DType::F32;
  h->view.shape = {static_cast<int64_t>(v.size())};
  h->view.data = h->bytes.data();
  h->view.nbytes = static_cast<int64_t>(h->bytes.size());
  return h;
}

inline float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// Index of the first element whose bits differ, or -1.
inline int64_t first_bit_difference(const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (std::memcmp(a + i, b + i, 4) != 0) return i;
  return -1;
}

}  // namespace cuda_ops_test
