// Internals shared by the CPU kernels: the run-time dispatch flag, the canonical 8-lane reduction
// (portable and AVX2), and det_expf / det_logf written once per path. Not a public header.
//
// Every path below exists twice, as portable scalar code and as AVX2+FMA code, and the two
// must produce identical bits: each scalar line mirrors one vector instruction. The portable
// code calls fma explicitly (the build sets -ffp-contract=off, so nothing else fuses).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// DETINFER_NO_SIMD builds the portable path only (as on non-x86 CPUs).
#if (defined(__x86_64__) || defined(__i386__)) && !defined(DETINFER_NO_SIMD)
#define DETINFER_X86 1
#include <immintrin.h>
// F16C comes with every AVX2 CPU; the dispatch checks all three.
#define DETINFER_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

#define DETINFER_INLINE inline __attribute__((always_inline))

namespace detinfer::cpu::detail {

// True when the AVX2 path runs: the CPU has AVX2, FMA and F16C and set_simd_enabled(false)
// was not called.
bool simd_active();

inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t bits_from_f32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// ---- The canonical reduction ------------------------------------------------------------------
// sum over k < n of a[k]·b[k]: lane l (0..7) accumulates fma(a[k], b[k], acc_l) for k ≡ l (mod 8),
// k < n - n%8, in increasing k, from +0; then ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)); then
// the tail k ≥ n - n%8 in increasing k as r = fma(a[k], b[k], r).
DETINFER_INLINE float lane_tree(const float* l) {
  const float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
  return (s0 + s2) + (s1 + s3);
}

float dot_portable(const float* a, const float* b, int64_t n);
float dot(const float* a, const float* b, int64_t n);  // dispatches on simd_active()

// ---- det_expf / det_logf, scalar ----------------------------------------------------------------
// exp: x is clamped to [-104, 89] (beyond which exp is 0 or inf in fp32); n = round(x·log2 e)
// (fma with the 1.5·2^23 shifter); r = x - n·ln2 in two fma steps (Cody-Waite); p = Taylor
// polynomial of degree 7 in Horner form with fma; result = (p·2^⌊n/2⌋)·2^(n-⌊n/2⌋), so that
// results near overflow and in the subnormal range are rounded once. Max error below 1 ulp.
namespace expc {
constexpr float kLog2e = 0x1.715476p+0f;
constexpr float kShifter = 0x1.8p23f;
constexpr float kLn2Hi = 0x1.62e430p-1f;
constexpr float kLn2Lo = -0x1.05c610p-29f;
constexpr float kMax = 89.0f, kMin = -104.0f;
constexpr float kC7 = 0x1.a01a02p-13f, kC6 = 0x1.6c16c2p-10f, kC5 = 0x1.111112p-7f,
                kC4 = 0x1.555556p-5f, kC3 = 0x1.555556p-3f, kC2 = 0x1.0p-1f;
}  // namespace expc

// Uses __builtin_fmaf: a libm call in portable code, one instruction when inlined into an FMA
// function. Both are the correctly rounded fused multiply-add.
DETINFER_INLINE float expf_core(float x) {
  using namespace expc;
  if (x != x) return x + x;
  x = x < kMax ? x : kMax;  // mirrors minps(x, kMax)
  x = x > kMin ? x : kMin;  // mirrors maxps(x, kMin)
  const float t = __builtin_fmaf(x, kLog2e, kShifter);
  const float n = t - kShifter;
  float r = __builtin_fmaf(n, -kLn2Hi, x);
  r = __builtin_fmaf(n, -kLn2Lo, r);
  float p = kC7;
  p = __builtin_fmaf(p, r, kC6);
  p = __builtin_fmaf(p, r, kC5);
  p = __builtin_fmaf(p, r, kC4);
  p = __builtin_fmaf(p, r, kC3);
  p = __builtin_fmaf(p, r, kC2);
  p = __builtin_fmaf(p, r, 1.0f);
  p = __builtin_fmaf(p, r, 1.0f);
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni >> 1, n2 = ni - n1;
  const float s1 = f32_from_bits(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = f32_from_bits(static_cast<uint32_t>(n2 + 127) << 23);
  return (p * s1) * s2;
}

// log: x = 2^e·m with m in [√½, √2), f = m - 1 (exact), s = f/(2+f), z = s²,
// R = z·(2/3 + z·(2/5 + z·(2/7 + z·2/9))) (Horner with fma), hf = (0.5·f)·f,
// log x = e·ln2_hi - ((hf - (s·(hf + R) + e·ln2_lo)) - f), ln2_hi having 12 significant bits so
// that e·ln2_hi is exact. Subnormal x is scaled by 2^23 first. Max error about 1 ulp.
namespace logc {
constexpr uint32_t kSqrtHalfBits = 0x3f3504f3;
constexpr float kLn2Hi = 0x1.62e000p-1f;
constexpr float kLn2Lo = 0x1.0bfbe8p-15f;
constexpr float kC1 = 0x1.555556p-1f, kC2 = 0x1.99999ap-2f, kC3 = 0x1.24924ap-2f,
                kC4 = 0x1.c71c72p-3f;
}  // namespace logc

DETINFER_INLINE float logf_core(float x) {
  using namespace logc;
  if (x != x) return x + x;
  if (x < 0.0f) return std::numeric_limits<float>::quiet_NaN();
  if (x == 0.0f) return -std::numeric_limits<float>::infinity();
  if (x == std::numeric_limits<float>::infinity()) return x;
  int32_t e_adj = 0;
  if (x < 0x1.0p-126f) {
    x = x * 0x1.0p23f;
    e_adj = -23;
  }
  const uint32_t ix = bits_from_f32(x) - kSqrtHalfBits;
  const int32_t e = (static_cast<int32_t>(ix) >> 23) + e_adj;
  const float m = f32_from_bits((ix & 0x7fffffu) + kSqrtHalfBits);
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  float R = kC4;
  R = __builtin_fmaf(R, z, kC3);
  R = __builtin_fmaf(R, z, kC2);
  R = __builtin_fmaf(R, z, kC1);
  R = R * z;
  const float hf = (0.5f * f) * f;
  const float dk = static_cast<float>(e);
  return dk * kLn2Hi - ((hf - (s * (hf + R) + dk * kLn2Lo)) - f);
}

float expf_portable(float x);
float logf_portable(float x);

#ifdef DETINFER_X86
// ---- AVX2 versions ------------------------------------------------------------------------------

// The lane tree of one accumulator: ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)).
DETINFER_AVX2 DETINFER_INLINE float hsum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

DETINFER_AVX2 DETINFER_INLINE float dot_avx2(const float* a, const float* b, int64_t n) {
  const int64_t n8 = n & ~int64_t{7};
  __m256 acc = _mm256_setzero_ps();
  for (int64_t k = 0; k < n8; k += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
  float r = hsum8(acc);
  for (int64_t k = n8; k < n; ++k) r = __builtin_fmaf(a[k], b[k], r);
  return r;
}

DETINFER_AVX2 DETINFER_INLINE __m256 exp8(__m256 x) {
  using namespace expc;
  const __m256 nan_mask = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  const __m256 x_nan = _mm256_add_ps(x, x);
  x = _mm256_min_ps(x, _mm256_set1_ps(kMax));
  x = _mm256_max_ps(x, _mm256_set1_ps(kMin));
  const __m256 shifter = _mm256_set1_ps(kShifter);
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(kLog2e), shifter);
  const __m256 n = _mm256_sub_ps(t, shifter);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Hi), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kC7);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC5));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i ni = _mm256_cvtps_epi32(n);  // n is an integer: exact
  const __m256i n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  const __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  return _mm256_blendv_ps(y, x_nan, nan_mask);
}

DETINFER_AVX2 DETINFER_INLINE __m256 log8(__m256 x) {
  using namespace logc;
  const __m256 zero = _mm256_setzero_ps();
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  const __m256 nan_mask = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  const __m256 neg_mask = _mm256_cmp_ps(x, zero, _CMP_LT_OQ);
  const __m256 zero_mask = _mm256_cmp_ps(x, zero, _CMP_EQ_OQ);
  const __m256 inf_mask = _mm256_cmp_ps(x, inf, _CMP_EQ_OQ);
  const __m256 x_nan = _mm256_add_ps(x, x);

  const __m256 sub_mask = _mm256_cmp_ps(x, _mm256_set1_ps(0x1.0p-126f), _CMP_LT_OQ);
  x = _mm256_blendv_ps(x, _mm256_mul_ps(x, _mm256_set1_ps(0x1.0p23f)), sub_mask);
  const __m256i e_adj = _mm256_and_si256(_mm256_castps_si256(sub_mask), _mm256_set1_epi32(-23));

  const __m256i sqrt_half = _mm256_set1_epi32(static_cast<int32_t>(kSqrtHalfBits));
  const __m256i ix = _mm256_sub_epi32(_mm256_castps_si256(x), sqrt_half);
  const __m256i e = _mm256_add_epi32(_mm256_srai_epi32(ix, 23), e_adj);
  const __m256 m = _mm256_castsi256_ps(
      _mm256_add_epi32(_mm256_and_si256(ix, _mm256_set1_epi32(0x7fffff)), sqrt_half));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 f = _mm256_sub_ps(m, one);
  const __m256 s = _mm256_div_ps(f, _mm256_add_ps(_mm256_set1_ps(2.0f), f));
  const __m256 z = _mm256_mul_ps(s, s);
  __m256 R = _mm256_set1_ps(kC4);
  R = _mm256_fmadd_ps(R, z, _mm256_set1_ps(kC3));
  R = _mm256_fmadd_ps(R, z, _mm256_set1_ps(kC2));
  R = _mm256_fmadd_ps(R, z, _mm256_set1_ps(kC1));
  R = _mm256_mul_ps(R, z);
  const __m256 hf = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), f), f);
  const __m256 dk = _mm256_cvtepi32_ps(e);
  const __m256 inner = _mm256_add_ps(_mm256_mul_ps(s, _mm256_add_ps(hf, R)),
                                     _mm256_mul_ps(dk, _mm256_set1_ps(kLn2Lo)));
  __m256 y = _mm256_sub_ps(_mm256_mul_ps(dk, _mm256_set1_ps(kLn2Hi)),
                           _mm256_sub_ps(_mm256_sub_ps(hf, inner), f));

  y = _mm256_blendv_ps(y, inf, inf_mask);
  y = _mm256_blendv_ps(y, _mm256_set1_ps(-std::numeric_limits<float>::infinity()), zero_mask);
  y = _mm256_blendv_ps(y, _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()), neg_mask);
  return _mm256_blendv_ps(y, x_nan, nan_mask);
}

// Scalar exp/log inside AVX2 functions (tails): the same core, compiled with FMA instructions.
DETINFER_AVX2 DETINFER_INLINE float expf_fma(float x) { return expf_core(x); }
DETINFER_AVX2 DETINFER_INLINE float logf_fma(float x) { return logf_core(x); }
#endif

}  // namespace detinfer::cpu::detail
