// Run-time dispatch, the portable reduction, det_expf / det_logf.
#include <atomic>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd.h"

#ifdef DETINFER_X86
#include <cpuid.h>
#endif

namespace detinfer::cpu {

namespace {
bool cpu_has_avx2() {
#ifdef DETINFER_X86
  // __builtin_cpu_supports checks the OS saves the AVX state too; F16C (CPUID.1:ECX bit 29) is
  // read directly, as not every compiler knows its name.
  static const bool has = [] {
    unsigned eax, ebx, ecx, edx;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
    return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}
std::atomic<bool> g_simd_enabled{true};
}  // namespace

bool simd_supported() { return cpu_has_avx2(); }
void set_simd_enabled(bool on) { g_simd_enabled.store(on, std::memory_order_relaxed); }
bool simd_enabled() { return detail::simd_active(); }

namespace detail {

bool simd_active() { return cpu_has_avx2() && g_simd_enabled.load(std::memory_order_relaxed); }

float dot_portable(const float* a, const float* b, int64_t n) {
  const int64_t n8 = n & ~int64_t{7};
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t k = 0; k < n8; k += 8)
    for (int l = 0; l < 8; ++l) lanes[l] = std::fma(a[k + l], b[k + l], lanes[l]);
  float r = lane_tree(lanes);
  for (int64_t k = n8; k < n; ++k) r = std::fma(a[k], b[k], r);
  return r;
}

float expf_portable(float x) { return expf_core(x); }
float logf_portable(float x) { return logf_core(x); }

}  // namespace detail

#ifdef DETINFER_X86
namespace {
DETINFER_AVX2 float expf_avx2(float x) { return detail::expf_core(x); }
DETINFER_AVX2 float logf_avx2(float x) { return detail::logf_core(x); }

DETINFER_AVX2 float dot_avx2_fn(const float* a, const float* b, int64_t n) {
  return detail::dot_avx2(a, b, n);
}

DETINFER_AVX2 void expf_n_avx2(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, detail::exp8(_mm256_loadu_ps(x + i)));
  for (; i < n; ++i) y[i] = detail::expf_core(x[i]);
}
DETINFER_AVX2 void logf_n_avx2(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, detail::log8(_mm256_loadu_ps(x + i)));
  for (; i < n; ++i) y[i] = detail::logf_core(x[i]);
}
}  // namespace
#endif

float detail::dot(const float* a, const float* b, int64_t n) {
#ifdef DETINFER_X86
  if (detail::simd_active()) return dot_avx2_fn(a, b, n);
#endif
  return detail::dot_portable(a, b, n);
}

float det_expf(float x) {
#ifdef DETINFER_X86
  if (detail::simd_active()) return expf_avx2(x);
#endif
  return detail::expf_portable(x);
}

float det_logf(float x) {
#ifdef DETINFER_X86
  if (detail::simd_active()) return logf_avx2(x);
#endif
  return detail::logf_portable(x);
}

void det_expf_n(const float* x, float* y, int64_t n) {
#ifdef DETINFER_X86
  if (detail::simd_active()) return expf_n_avx2(x, y, n);
#endif
  for (int64_t i = 0; i < n; ++i) y[i] = detail::expf_portable(x[i]);
}

void det_logf_n(const float* x, float* y, int64_t n) {
#ifdef DETINFER_X86
  if (detail::simd_active()) return logf_n_avx2(x, y, n);
#endif
  for (int64_t i = 0; i < n; ++i) y[i] = detail::logf_portable(x[i]);
}

}  // namespace detinfer::cpu
