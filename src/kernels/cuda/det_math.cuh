// Device math with a fixed operation order: the one exp every GPU kernel uses, and the fixed
// reduction trees. Every operation is an explicit correctly rounded intrinsic (__fmaf_rn,
// __fmul_rn, ...), so neither --fmad nor --use_fast_math nor a library version can change a bit.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace detinfer::cuda {

// exp: the polynomial and op order of the CPU's det_expf (kernels/cpu/simd.h, expf_core), so
// the GPU's exp gives the CPU's bits (a test compares them). Not CUDA's expf or __expf: their
// implementation is the library's and the hardware's to change.
//   x clamped to [-104, 89]; n = round(x·log2 e) via fma with the 1.5·2^23 shifter;
//   r = x - n·ln2 in two fma steps (Cody-Waite); p = degree-7 Taylor polynomial in Horner form
//   with fma; result = (p·2^⌊n/2⌋)·2^(n-⌊n/2⌋) (subnormal results rounded once).
__device__ __forceinline__ float det_expf(float x) {
  constexpr float kLog2e = 0x1.715476p+0f;
  constexpr float kShifter = 0x1.8p23f;
  constexpr float kLn2Hi = 0x1.62e430p-1f;
  constexpr float kLn2Lo = -0x1.05c610p-29f;
  constexpr float kMax = 89.0f, kMin = -104.0f;
  constexpr float kC7 = 0x1.a01a02p-13f, kC6 = 0x1.6c16c2p-10f, kC5 = 0x1.111112p-7f,
                  kC4 = 0x1.555556p-5f, kC3 = 0x1.555556p-3f, kC2 = 0x1.0p-1f;
  if (x != x) return __fadd_rn(x, x);
  x = x < kMax ? x : kMax;
  x = x > kMin ? x : kMin;
  const float t = __fmaf_rn(x, kLog2e, kShifter);
  const float n = __fsub_rn(t, kShifter);
  float r = __fmaf_rn(n, -kLn2Hi, x);
  r = __fmaf_rn(n, -kLn2Lo, r);
  float p = kC7;
  p = __fmaf_rn(p, r, kC6);
  p = __fmaf_rn(p, r, kC5);
  p = __fmaf_rn(p, r, kC4);
  p = __fmaf_rn(p, r, kC3);
  p = __fmaf_rn(p, r, kC2);
  p = __fmaf_rn(p, r, 1.0f);
  p = __fmaf_rn(p, r, 1.0f);
  const int32_t ni = static_cast<int32_t>(n);  // exact: n is an integer in [-151, 129]
  const int32_t n1 = ni >> 1, n2 = ni - n1;
  const float s1 = __int_as_float((n1 + 127) << 23);
  const float s2 = __int_as_float((n2 + 127) << 23);
  return __fmul_rn(__fmul_rn(p, s1), s2);
}

// Sum over the 32 lanes of a warp by the xor butterfly (offsets 16, 8, 4, 2, 1). Every lane ends
// with the same bits: at each level lanes L and L^o add the same two values, and IEEE addition
// is commutative.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o >= 1; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace detinfer::cuda
