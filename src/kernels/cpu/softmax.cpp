// log_softmax with a reduction order a GPU can run fast and reproduce bit for bit
// (kernels/cuda/sampler.cu computes the same bits):
//   mx  = max of the row (exact in any order), then mx + 0 so that -0 counts as +0;
//   sum: lane l (0..kLanes-1) accumulates det_expf(x[k] - mx) for k ≡ l (mod kLanes) in
//        increasing k from +0; then the lanes are added by a balanced binary tree over adjacent
//        lanes, S[a, b) = S[a, m) + S[m, b) with m the midpoint (lanes holding nothing are +0);
//   out[k] = (x[k] - mx) - det_logf(sum).
// kLanes = 4096 is one lane per thread of the GPU's 8 x 512-thread cluster per row.
#include <algorithm>
#include <limits>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd.h"

namespace detinfer::cpu {

namespace {

constexpr int64_t kLanes = 4096;

// maxps(a, b): a > b ? a : b (the second operand on NaN or equal values), emulated bit for bit.
inline float maxps(float a, float b) { return a > b ? a : b; }

// Lanes in use for a row of V: the smallest power of two >= min(V, kLanes). The others stay +0,
// and x + (+0) == x for the non-negative lane sums, so the tree over the lanes in use has the
// bits of the full one.
int64_t lanes_used(int64_t V) {
  int64_t w = 1;
  while (w < V && w < kLanes) w *= 2;
  return w;
}

// The balanced tree over lanes[0, w), w a power of two.
float lane_tree_sum(float* lanes, int64_t w) {
  for (; w > 1; w /= 2)
    for (int64_t i = 0; i < w / 2; ++i) lanes[i] = lanes[2 * i] + lanes[2 * i + 1];
  return lanes[0];
}

// The max in 8 lanes (k mod 8, then a fixed tree, then the tail): both paths emulate maxps, so
// they agree even on NaN; the +0 makes the result independent of the order for signed zeros.
float row_max_portable(const float* x, int64_t V) {
  const int64_t v8 = V & ~int64_t{7};
  float lanes[8];
  for (float& l : lanes) l = -std::numeric_limits<float>::infinity();
  for (int64_t k = 0; k < v8; k += 8)
    for (int l = 0; l < 8; ++l) lanes[l] = maxps(lanes[l], x[k + l]);
  float mx = maxps(maxps(maxps(lanes[0], lanes[4]), maxps(lanes[2], lanes[6])),
                   maxps(maxps(lanes[1], lanes[5]), maxps(lanes[3], lanes[7])));
  for (int64_t k = v8; k < V; ++k) mx = maxps(mx, x[k]);
  return mx + 0.0f;
}

void log_softmax_portable(const float* x, int64_t V, float* out) {
  const float mx = row_max_portable(x, V);
  float lanes[kLanes];
  const int64_t used = lanes_used(V);
  std::fill(lanes, lanes + used, 0.0f);
  for (int64_t k0 = 0; k0 < V; k0 += kLanes) {
    const int64_t n = std::min(kLanes, V - k0);
    for (int64_t l = 0; l < n; ++l) lanes[l] = lanes[l] + detail::expf_portable(x[k0 + l] - mx);
  }
  const float lse = detail::logf_portable(lane_tree_sum(lanes, used));
  for (int64_t k = 0; k < V; ++k) out[k] = (x[k] - mx) - lse;
}

#ifdef DETINFER_X86
DETINFER_AVX2 void log_softmax_avx2(const float* x, int64_t V, float* out) {
  const int64_t v8 = V & ~int64_t{7};
  __m256 mv = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t k = 0; k < v8; k += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + k));
  // The max tree has the shape of the portable one: (l0,l4),(l1,l5),.. then (.,+2), then (.,+1).
  const __m128 s = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
  const __m128 t = _mm_max_ps(s, _mm_movehl_ps(s, s));
  float mx = _mm_cvtss_f32(_mm_max_ss(t, _mm_movehdup_ps(t)));
  for (int64_t k = v8; k < V; ++k) mx = mx > x[k] ? mx : x[k];
  mx = mx + 0.0f;

  alignas(32) float lanes[kLanes];
  const int64_t used = lanes_used(V);
  std::fill(lanes, lanes + used, 0.0f);
  const __m256 mxv = _mm256_set1_ps(mx);
  for (int64_t k0 = 0; k0 < V; k0 += kLanes) {
    const int64_t n = std::min(kLanes, V - k0), n8 = n & ~int64_t{7};
    // Four independent vectors per step: the exps overlap.
    int64_t l = 0;
    for (; l + 32 <= n8; l += 32) {
      const __m256 e0 = detail::exp8(_mm256_sub_ps(_mm256_loadu_ps(x + k0 + l), mxv));
      const __m256 e1 = detail::exp8(_mm256_sub_ps(_mm256_loadu_ps(x + k0 + l + 8), mxv));
      const __m256 e2 = detail::exp8(_mm256_sub_ps(_mm256_loadu_ps(x + k0 + l + 16), mxv));
      const __m256 e3 = detail::exp8(_mm256_sub_ps(_mm256_loadu_ps(x + k0 + l + 24), mxv));
      _mm256_store_ps(lanes + l, _mm256_add_ps(_mm256_load_ps(lanes + l), e0));
      _mm256_store_ps(lanes + l + 8, _mm256_add_ps(_mm256_load_ps(lanes + l + 8), e1));
      _mm256_store_ps(lanes + l + 16, _mm256_add_ps(_mm256_load_ps(lanes + l + 16), e2));
      _mm256_store_ps(lanes + l + 24, _mm256_add_ps(_mm256_load_ps(lanes + l + 24), e3));
    }
    for (; l < n8; l += 8) {
      const __m256 e = detail::exp8(_mm256_sub_ps(_mm256_loadu_ps(x + k0 + l), mxv));
      _mm256_store_ps(lanes + l, _mm256_add_ps(_mm256_load_ps(lanes + l), e));
    }
    for (; l < n; ++l) lanes[l] = lanes[l] + detail::expf_fma(x[k0 + l] - mx);
  }
  const float lse = detail::logf_fma(lane_tree_sum(lanes, used));
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
