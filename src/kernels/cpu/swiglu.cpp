#include <algorithm>

#include "common/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd.h"

namespace detinfer::cpu {

namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per task

// (g / (1 + det_expf(-g))) · u, element by element.
void swiglu_portable(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = (g / (1.0f + detail::expf_portable(-g))) * up[i];
  }
}

#ifdef DETINFER_X86
DETINFER_AVX2 void swiglu_avx2(const float* gate, const float* up, int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = detail::exp8(_mm256_xor_ps(g, sign));
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) {
    const float g = gate[i];
    out[i] = (g / (1.0f + detail::expf_fma(-g))) * up[i];
  }
}
#endif

}  // namespace

void swiglu(ThreadPool& pool, const float* gate, const float* up, int64_t n, float* out) {
  if (n <= 0) return;
  const bool simd = detail::simd_active();
  pool.parallel_for((n + kChunk - 1) / kChunk, [&](int64_t begin, int64_t end) {
    const int64_t i0 = begin * kChunk, i1 = std::min(n, end * kChunk);
#ifdef DETINFER_X86
    if (simd) return swiglu_avx2(gate + i0, up + i0, i1 - i0, out + i0);
#endif
    swiglu_portable(gate + i0, up + i0, i1 - i0, out + i0);
  });
  (void)simd;
}

void add_inplace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = y[i] + x[i];
}

}  // namespace detinfer::cpu
