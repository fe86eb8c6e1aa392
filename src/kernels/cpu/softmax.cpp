#include <limits>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd.h"

namespace detinfer::cpu {

namespace {

// maxps(a, b): a > b ? a : b (the second operand on NaN or equal values), emulated bit for bit.
inline float maxps(float a, float b) { return a > b ? a : b; }

void log_softmax_portable(const float* x, int64_t V, float* out) {
  const int64_t v8 = V & ~int64_t{7};
  float lanes[8];
  for (float& l : lanes) l = -std::numeric_limits<float>::infinity();
  for (int64_t k = 0; k < v8; k += 8)
    for (int l = 0; l < 8; ++l) lanes[l] = maxps(lanes[l], x[k + l]);
  float mx = maxps(maxps(maxps(lanes[0], lanes[4]), maxps(lanes[2], lanes[6])),
                   maxps(maxps(lanes[1], lanes[5]), maxps(lanes[3], lanes[7])));
  for (int64_t k = v8; k < V; ++k) mx = maxps(mx, x[k]);

  for (float& l : lanes) l = 0.0f;
  for (int64_t k = 0; k < v8; k += 8)
    for (int l = 0; l < 8; ++l) lanes[l] = lanes[l] + detail::expf_portable(x[k + l] - mx);
  float sum = detail::lane_tree(lanes);
  for (int64_t k = v8; k < V; ++k) sum = sum + detail::expf_portable(x[k] - mx);

  const float lse = detail::logf_portable(sum);
  for (int64_t k = 0; k < V; ++k) out[k] = (x[k] - mx) - lse;
}

#ifdef DETINFER_X86
DETINFER_AVX2 void log_softmax_avx2(const float* x, int64_t V, float* out) {
  const int64_t v8 = V & ~int64_t{7};
  __m256 mv = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t k = 0; k < v8; k += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + k));
  // The max tree has the shape of the sum tree: (l0,l4),(l1,l5),.. then (.,+2), then (.,+1).
  const __m128 s = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
  const __m128 t = _mm_max_ps(s, _mm_movehl_ps(s, s));
  float mx = _mm_cvtss_f32(_mm_max_ss(t, _mm_movehdup_ps(t)));
  for (int64_t k = v8; k < V; ++k) mx = mx > x[k] ? mx : x[k];

  const __m256 mxv = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t k = 0; k < v8; k += 8)
    acc = _mm256_add_ps(acc, detail::exp8(_mm256_sub_ps(_mm256_loadu_ps(x + k), mxv)));
  float sum = detail::hsum8(acc);
  for (int64_t k = v8; k < V; ++k) sum = sum + detail::expf_fma(x[k] - mx);

  const float lse = detail::logf_fma(sum);
  const __m256 lsev = _mm256_set1_ps(lse);
  for (int64_t k = 0; k < v8; k += 8)
    _mm256_storeu_ps(out + k, _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + k), mxv), lsev));
  for (int64_t k = v8; k < V; ++k) out[k] = (x[k] - mx) - lse;
}
#endif

}  // namespace

void log_softmax(const float* logits, int64_t V, float* out) {
  if (V <= 0) return;
#ifdef DETINFER_X86
  if (detail::simd_active()) return log_softmax_avx2(logits, V, out);
#endif
  log_softmax_portable(logits, V, out);
}

}  // namespace detinfer::cpu
