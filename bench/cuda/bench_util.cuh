// Helpers shared by the CUDA benchmarks: a CUDA error check and the hash behind their
// deterministic random data (the same data on every run and GPU).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/error.h"

namespace detinfer::bench {

inline void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) detinfer::fail(what, ": ", cudaGetErrorString(e));
}

// A 64-bit mixer (murmur3's finaliser), its low 32 bits.
__host__ __device__ inline uint32_t mix(uint64_t v) {
  v ^= v >> 33;
  v *= 0xff51afd7ed558ccdull;
  v ^= v >> 33;
  v *= 0xc4ceb9fe1a85ec53ull;
  v ^= v >> 33;
  return static_cast<uint32_t>(v);
}

// Uniform in [-1, 1): element i of the stream `seed`.
__device__ inline float uni(uint64_t seed, uint64_t i) {
  return static_cast<float>(mix(seed * 0x9E3779B97F4A7C15ull + i) >> 8) * (2.0f / 16777216.0f) - 1.0f;
}

}  // namespace detinfer::bench
