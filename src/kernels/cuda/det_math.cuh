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
  // NaN: x + x (a quiet NaN), chosen by a select at the end rather than an early return, so
  // the compiler emits no branch around every inlined exp (the same bits either way).
  const bool is_nan = x != x;
  const float nan_result = __fadd_rn(x, x);
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
  const float result = __fmul_rn(__fmul_rn(p, s1), s2);
  return is_nan ? nan_result : result;
}

// log: the CPU's det_logf (kernels/cpu/simd.h, logf_core) operation by operation, so the GPU's
// log gives the CPU's bits (a test compares them): x = 2^e·m with m in [√½, √2), f = m - 1,
// s = f/(2+f), z = s², R = z·(2/3 + z·(2/5 + z·(2/7 + z·2/9))), hf = (0.5·f)·f,
// log x = e·ln2_hi - ((hf - (s·(hf + R) + e·ln2_lo)) - f); subnormal x is scaled by 2^23 first.
__device__ __forceinline__ float det_logf(float x) {
  constexpr uint32_t kSqrtHalfBits = 0x3f3504f3u;
  constexpr float kLn2Hi = 0x1.62e000p-1f;
  constexpr float kLn2Lo = 0x1.0bfbe8p-15f;
  constexpr float kC1 = 0x1.555556p-1f, kC2 = 0x1.99999ap-2f, kC3 = 0x1.24924ap-2f,
                  kC4 = 0x1.c71c72p-3f;
  if (x != x) return __fadd_rn(x, x);
  if (x < 0.0f) return __int_as_float(0x7fc00000);
  if (x == 0.0f) return __int_as_float(static_cast<int>(0xff800000u));
  if (x == __int_as_float(0x7f800000)) return x;
  int32_t e_adj = 0;
  if (x < 0x1.0p-126f) {
    x = __fmul_rn(x, 0x1.0p23f);
    e_adj = -23;
  }
  const uint32_t ix = __float_as_uint(x) - kSqrtHalfBits;
  const int32_t e = (static_cast<int32_t>(ix) >> 23) + e_adj;
  const float m = __uint_as_float((ix & 0x7fffffu) + kSqrtHalfBits);
  const float f = __fsub_rn(m, 1.0f);
  const float s = __fdiv_rn(f, __fadd_rn(2.0f, f));
  const float z = __fmul_rn(s, s);
  float R = kC4;
  R = __fmaf_rn(R, z, kC3);
  R = __fmaf_rn(R, z, kC2);
  R = __fmaf_rn(R, z, kC1);
  R = __fmul_rn(R, z);
  const float hf = __fmul_rn(__fmul_rn(0.5f, f), f);
  const float dk = __int2float_rn(e);
  return __fsub_rn(
      __fmul_rn(dk, kLn2Hi),
      __fsub_rn(__fsub_rn(hf, __fadd_rn(__fmul_rn(s, __fadd_rn(hf, R)), __fmul_rn(dk, kLn2Lo))),
                f));
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
