// Paged KV write and causal GQA attention. One (token, head) is one task. Its keys are visited
// in tiles of kTile positions aligned to absolute positions ([0,16), [16,32), ..., the last one
// cut at the query's position), each merged into an online softmax in increasing order, so the
// order, and so the bits, depend only on the sequence's contents up to that position: never on
// chunking, caching, paging or the rest of the batch.
//
// Per tile of n keys (j in increasing position):
//   s_j = dot(q, k_j) · scale (canonical dot)
//   mt = max_j s_j (sequential, a > b ? a : b);  m' = m > mt ? m : mt
//   c = det_expf(m - m')  (0 for the first tile, where m = -inf);  p_j = det_expf(s_j - m')
//   l = l·c + (((p_0 + p_1) + p_2) + ...);  acc_i = acc_i·c (skipped when m' == m), then
//   acc_i = fma(p_j, v_j,i, acc_i) for each j in order;  m = m'
// and at the end out_i = acc_i / l.
#include <algorithm>
#include <cassert>
#include <cstring>
#include <limits>

#include "common/error.h"
#include "common/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd.h"

namespace detinfer::cpu {

namespace {

constexpr int kMaxHeadDim = 512;
constexpr int kTile = 16;

struct Head {
  const float* q;
  const int32_t* table;
  int32_t last_pos;
  int kv_head;
};

// Offsets (in floats) of the k/v vectors of positions t0 .. t0+n-1 in the paged cache.
inline void slot_offsets(const PagedKV& kv, const Head& h, int32_t t0, int n, int64_t* off) {
  const int64_t row = static_cast<int64_t>(kv.n_kv_heads) * kv.head_dim;
  int32_t b = t0 / kv.block_size, o = t0 % kv.block_size;
  for (int j = 0; j < n; ++j) {
    off[j] = (static_cast<int64_t>(h.table[b]) * kv.block_size + o) * row +
             static_cast<int64_t>(h.kv_head) * kv.head_dim;
    if (++o == kv.block_size) {
      o = 0;
      ++b;
    }
  }
}

inline float max_of(float a, float b) { return a > b ? a : b; }

void attend_portable(const PagedKV& kv, const Head& h, float scale, float* out) {
  const int hd = kv.head_dim;
  float acc[kMaxHeadDim];
  for (int i = 0; i < hd; ++i) acc[i] = 0.0f;
  float m = -std::numeric_limits<float>::infinity(), l = 0.0f;
  int64_t off[kTile];
  float s[kTile], p[kTile];
  for (int32_t t0 = 0; t0 <= h.last_pos; t0 += kTile) {
    const int n = std::min(kTile, h.last_pos + 1 - t0);
    slot_offsets(kv, h, t0, n, off);
    float mt = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < n; ++j) {
      s[j] = detail::dot_portable(h.q, kv.k + off[j], hd) * scale;
      mt = max_of(mt, s[j]);
    }
    const float m_new = max_of(m, mt);
    const float c = detail::expf_portable(m - m_new);
    float psum = 0.0f;
    for (int j = 0; j < n; ++j) {
      p[j] = detail::expf_portable(s[j] - m_new);
      psum = psum + p[j];
    }
    l = l * c + psum;
    if (m_new != m)
      for (int i = 0; i < hd; ++i) acc[i] = acc[i] * c;
    for (int j = 0; j < n; ++j) {
      const float* v = kv.v + off[j];
      for (int i = 0; i < hd; ++i) acc[i] = std::fma(p[j], v[i], acc[i]);
    }
    m = m_new;
  }
  for (int i = 0; i < hd; ++i) out[i] = acc[i] / l;
}

#ifdef DETINFER_X86
// s[j] = dot(q, k_j)·scale, four keys at a time for parallel FMA chains; each key's dot is the
// canonical one (dot_avx2's order exactly).
DETINFER_AVX2 DETINFER_INLINE void scores_avx2(const float* q, const float* k, const int64_t* off,
                                               int n, int hd, float scale, float* s) {
  const int hd8 = hd & ~7;
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    const float* k0 = k + off[j];
    const float* k1 = k + off[j + 1];
    const float* k2 = k + off[j + 2];
    const float* k3 = k + off[j + 3];
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < hd8; i += 8) {
      const __m256 qv = _mm256_loadu_ps(q + i);
      a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), a0);
      a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + i), a1);
      a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + i), a2);
      a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + i), a3);
    }
    float r0 = detail::hsum8(a0), r1 = detail::hsum8(a1), r2 = detail::hsum8(a2),
          r3 = detail::hsum8(a3);
    for (int i = hd8; i < hd; ++i) {
      r0 = __builtin_fmaf(q[i], k0[i], r0);
      r1 = __builtin_fmaf(q[i], k1[i], r1);
      r2 = __builtin_fmaf(q[i], k2[i], r2);
      r3 = __builtin_fmaf(q[i], k3[i], r3);
    }
    s[j] = r0 * scale;
    s[j + 1] = r1 * scale;
    s[j + 2] = r2 * scale;
    s[j + 3] = r3 * scale;
  }
  for (; j < n; ++j) s[j] = detail::dot_avx2(q, k + off[j], hd) * scale;
}

// acc[0 .. 8·V) = fma(p_j, v_j[...], acc) for j = 0..n-1 in order.
template <int V>
DETINFER_AVX2 DETINFER_INLINE void accumulate_avx2(float* acc, const float* v, const int64_t* off,
                                                   const float* p, int n) {
  __m256 a[V];
  for (int u = 0; u < V; ++u) a[u] = _mm256_load_ps(acc + 8 * u);
  for (int j = 0; j < n; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    const float* vj = v + off[j];
    for (int u = 0; u < V; ++u) a[u] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * u), a[u]);
  }
  for (int u = 0; u < V; ++u) _mm256_store_ps(acc + 8 * u, a[u]);
}

DETINFER_AVX2 void attend_avx2(const PagedKV& kv, const Head& h, float scale, float* out) {
  const int hd = kv.head_dim, hd8 = hd & ~7;
  alignas(32) float acc[kMaxHeadDim];
  for (int i = 0; i < hd; ++i) acc[i] = 0.0f;
  float m = -std::numeric_limits<float>::infinity(), l = 0.0f;
  int64_t off[kTile];
  alignas(32) float s[kTile], p[kTile];
  for (int32_t t0 = 0; t0 <= h.last_pos; t0 += kTile) {
    const int n = std::min(kTile, h.last_pos + 1 - t0);
    slot_offsets(kv, h, t0, n, off);
    scores_avx2(h.q, kv.k, off, n, hd, scale, s);
    float mt = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < n; ++j) mt = mt > s[j] ? mt : s[j];
    const float m_new = m > mt ? m : mt;
    const float c = detail::expf_fma(m - m_new);
    const __m256 mv = _mm256_set1_ps(m_new);
    // Unused lanes of a short tile see s = m_new: finite, and never read.
    for (int j = n; j < kTile; ++j) s[j] = m_new;
    _mm256_store_ps(p, detail::exp8(_mm256_sub_ps(_mm256_load_ps(s), mv)));
    _mm256_store_ps(p + 8, detail::exp8(_mm256_sub_ps(_mm256_load_ps(s + 8), mv)));
    float psum = 0.0f;
    for (int j = 0; j < n; ++j) psum = psum + p[j];
    l = l * c + psum;
    if (m_new != m) {
      const __m256 cv = _mm256_set1_ps(c);
      for (int i = 0; i < hd8; i += 8)
        _mm256_store_ps(acc + i, _mm256_mul_ps(_mm256_load_ps(acc + i), cv));
      for (int i = hd8; i < hd; ++i) acc[i] = acc[i] * c;
    }
    int i = 0;
    // Up to eight vectors of acc stay in registers across the tile's keys.
    for (; i + 64 <= hd8; i += 64) accumulate_avx2<8>(acc + i, kv.v + i, off, p, n);
    for (; i + 32 <= hd8; i += 32) accumulate_avx2<4>(acc + i, kv.v + i, off, p, n);
    for (; i < hd8; i += 8) {
      __m256 a = _mm256_load_ps(acc + i);
      for (int j = 0; j < n; ++j)
        a = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(kv.v + off[j] + i), a);
      _mm256_store_ps(acc + i, a);
    }
    for (; i < hd; ++i)
      for (int j = 0; j < n; ++j) acc[i] = __builtin_fmaf(p[j], kv.v[off[j] + i], acc[i]);
    m = m_new;
  }
  const __m256 lv = _mm256_set1_ps(l);
  for (int i = 0; i < hd8; i += 8)
    _mm256_storeu_ps(out + i, _mm256_div_ps(_mm256_load_ps(acc + i), lv));
  for (int i = hd8; i < hd; ++i) out[i] = acc[i] / l;
}
#endif

}  // namespace

void kv_write(const PagedKV& kv, const float* k, const float* v, int64_t M, const int32_t* pos,
              const int32_t* const* block_tables) {
  const int64_t row = static_cast<int64_t>(kv.n_kv_heads) * kv.head_dim;
  for (int64_t t = 0; t < M; ++t) {
    const int32_t p = pos[t];
    assert(p >= 0);
    const int32_t block = block_tables[t][p / kv.block_size];
    assert(block >= 0 && block < kv.num_blocks);
    const int64_t slot = static_cast<int64_t>(block) * kv.block_size + p % kv.block_size;
    std::memcpy(kv.k + slot * row, k + t * row, static_cast<size_t>(row) * sizeof(float));
    std::memcpy(kv.v + slot * row, v + t * row, static_cast<size_t>(row) * sizeof(float));
  }
}

void attention(ThreadPool& pool, const float* q, int64_t M, const int32_t* pos,
               const int32_t* const* block_tables, const PagedKV& kv, int n_heads, float scale,
               float* out) {
  DETINFER_CHECK(kv.head_dim > 0 && kv.head_dim <= kMaxHeadDim, "attention: head_dim ", kv.head_dim,
                 " is outside 1..", kMaxHeadDim);
  DETINFER_CHECK(kv.n_kv_heads > 0 && n_heads > 0 && n_heads % kv.n_kv_heads == 0,
                 "attention: n_heads ", n_heads, " is not a multiple of n_kv_heads ",
                 kv.n_kv_heads);
  DETINFER_CHECK(kv.block_size > 0, "attention: block_size must be positive");
  const int group = n_heads / kv.n_kv_heads;
  const int64_t hd = kv.head_dim;
  const bool simd = detail::simd_active();
  // Tasks in (token, head) order: the heads of one kv group run next to each other and share
  // the keys in cache.
  pool.parallel_for(M * n_heads, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / n_heads;
      const int h = static_cast<int>(task % n_heads);
      const Head head{q + task * hd, block_tables[t], pos[t], h / group};
      float* o = out + task * hd;
#ifdef DETINFER_X86
      if (simd) {
        attend_avx2(kv, head, scale, o);
        continue;
      }
#endif
      attend_portable(kv, head, scale, o);
    }
  });
  (void)simd;
}

}  // namespace detinfer::cpu
