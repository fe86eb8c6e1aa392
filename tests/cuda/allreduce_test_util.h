// Shared by the all-reduce GPU tests: inputs, references, device buffers.
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "comm/allreduce.h"
#include "comm/emulate.h"

namespace artest {

using namespace detinfer::comm;

#define AR_CUDA_OK(x)                                                                  \
  do {                                                                                 \
    cudaError_t e_ = (x);                                                              \
    ASSERT_EQ(e_, cudaSuccess) << #x << ": " << cudaGetErrorString(e_);                \
  } while (0)

inline void cuda_or_die(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::abort();
  }
}

// For code inside rank threads: run_threads() turns the exception into a test failure.
inline void cuda_throw(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

inline int gpu_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

inline std::vector<int> devices_for(int world) {
  std::vector<int> d;
  int n = std::max(1, gpu_count());
  for (int r = 0; r < world; ++r) d.push_back(r % n);
  return d;
}

inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Runs fn(lo, hi) over [0, n) on all cores.
inline void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  int t = static_cast<int>(std::min<int64_t>(std::max(1u, std::thread::hardware_concurrency()), 1 + n / 65536));
  if (t <= 1) return fn(0, n);
  std::vector<std::thread> th;
  for (int i = 0; i < t; ++i) th.emplace_back(fn, n * i / t, n * (i + 1) / t);
  for (auto& x : th) x.join();
}

// Values with spread exponents and both signs: summation order shows in the bits.
inline std::vector<uint8_t> make_input(DataType t, int64_t n, uint64_t seed) {
  std::vector<uint8_t> buf(static_cast<size_t>(n) * dtype_bytes(t));
  const int emin = t == DataType::F16 ? -8 : -20, span = t == DataType::F16 ? 13 : 33;
  parallel_for(n, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      uint64_t h = mix(seed * 0x100000001b3ull + static_cast<uint64_t>(i));
      float m = 1.0f + static_cast<float>((h >> 8) & 0xffffff) / 16777216.0f;
      float v = std::ldexp(m, emin + static_cast<int>(h % span)) * (((h >> 40) & 1) ? -1.0f : 1.0f);
      emu::store_elem(t, buf.data(), i, v);
    }
  });
  return buf;
}

inline std::vector<uint8_t> reference(Order o, DataType t, const std::vector<std::vector<uint8_t>>& in, int64_t n) {
  std::vector<uint8_t> out(static_cast<size_t>(n) * dtype_bytes(t));
  const int es = dtype_bytes(t);
  parallel_for(n, [&](int64_t lo, int64_t hi) {
    std::vector<const void*> p;
    for (auto& v : in) p.push_back(v.data() + lo * es);
    emu::reference(o, t, p, out.data() + lo * es, hi - lo);
  });
  return out;
}

// First element whose bits differ, or -1.
inline int64_t first_diff(const uint8_t* a, const uint8_t* b, int64_t n, int es) {
  if (std::memcmp(a, b, static_cast<size_t>(n) * es) == 0) return -1;
  for (int64_t i = 0; i < n; ++i)
    if (std::memcmp(a + i * es, b + i * es, es) != 0) return i;
  return -1;
}

// Largest |out - exact| / bound over the elements (<= 1 passes): fp32 rank-order sums of N
// values err by at most (N-1) u32 sum|x|, plus half an ulp of the output type for the rounding.
inline double worst_vs_fp64(DataType t, const std::vector<std::vector<uint8_t>>& in, const uint8_t* out, int64_t n) {
  const int N = static_cast<int>(in.size());
  const double u_out = t == DataType::F32 ? std::ldexp(1.0, -24) : t == DataType::BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
  double worst = 0;
  const int64_t step = std::max<int64_t>(1, n / 200000);  // sample very large messages
  for (int64_t i = 0; i < n; i += step) {
    double exact = 0, mag = 0;
    for (int r = 0; r < N; ++r) {
      double x = emu::load_elem(t, in[r].data(), i);
      exact += x;
      mag += std::fabs(x);
    }
    double got = emu::load_elem(t, out, i);
    if (!std::isfinite(got)) return 1e300;
    double bound = (N - 1) * std::ldexp(1.0, -24) * mag + u_out * std::fabs(exact) * 1.0001 +
                   (t == DataType::F16 ? std::ldexp(1.0, -25) : 1e-45);
    worst = std::max(worst, std::fabs(got - exact) / bound);
  }
  return worst;
}

inline void run_threads(int n, const std::function<void(int)>& fn) {
  std::vector<std::thread> th;
  std::vector<std::string> errors(n);
  for (int r = 0; r < n; ++r)
    th.emplace_back([&, r] {
      try {
        fn(r);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : th) t.join();
  for (int r = 0; r < n; ++r) EXPECT_TRUE(errors[r].empty()) << "rank " << r << ": " << errors[r];
}

}  // namespace artest
