// y = x·Wᵀ for every weight dtype, and embedding rows.
//
// Each y[m, n] is one canonical dot product (simd.h) of x[m] with the dequantized row W[n],
// computed start to finish by one thread; only the scheduling below varies with M:
//   M <= kDirectMaxM (decode): weights are dequantized in registers, tiles of M rows × 4 (or 2)
//   columns, weight rows prefetched ahead (decode is a stream over the weights).
//   larger M (prefill): a thread dequantizes a block of kColBlock weight rows once into an fp32
//   panel, then runs tiles of 4 rows × 2 columns over it. F32 weights are read in place.
// Both feed the FMAs the same dequantized values in the same order, so a row's result is the
// same bits for any M (test T1), any thread count, and on the portable path. Tasks are
// (column block × row chunk) pairs, split statically over the pool.
#include <algorithm>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/half.h"
#include "common/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd.h"

namespace detinfer::cpu {

namespace {

constexpr int64_t kDirectMaxM = 3;  // up to this many rows: no panel
constexpr int64_t kColBlock = 16;   // weight rows per task (and per panel) when M > kDirectMaxM
constexpr int64_t kColBlockDirect = 4;
constexpr int64_t kRowChunk = 128;  // x rows per task
// Weight rows are prefetched this many rows ahead (two 4-column tiles) at the offset being
// read: the hardware prefetcher alone leaves the short interleaved row streams latency-bound.
constexpr int64_t kPrefetchRows = 8;

struct Problem {
  const float* x;
  int64_t M, K, N;
  DType dtype;
  const uint8_t* w;
  int64_t row_bytes;
  float* y;
  const float* bias;
};

// Portable path: one weight row at a time through dequantize_row, then the emulated lanes.
void task_portable(const Problem& p, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                   std::vector<float>& buf) {
  buf.resize(static_cast<size_t>(p.K));
  for (int64_t n = c0; n < c1; ++n) {
    dequantize_row(p.dtype, p.w + n * p.row_bytes, buf.data(), p.K);
    for (int64_t m = r0; m < r1; ++m) {
      float r = detail::dot_portable(p.x + m * p.K, buf.data(), p.K);
      if (p.bias) r = r + p.bias[n];
      p.y[m * p.N + n] = r;
    }
  }
}

#ifdef DETINFER_X86
// ---- AVX2 weight loaders --------------------------------------------------------------------
// group(row, g) prepares group g (kGroup elements: 8, or one 32-element block); sub(ctx, j)
// returns its elements 8j..8j+7 as fp32, exactly dequantize_row's values. scalar(row, k) is
// element k (plain types only: their K need not be a multiple of 8).

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

DETINFER_AVX2 DETINFER_INLINE __m256 broadcast_f16(const uint8_t* p) {
  return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(load_u16(p))));
}

struct LoadF32 {
  static constexpr int kGroupBytes = 32;
  static constexpr int kGroup = 8;
  struct Ctx {
    const uint8_t* p;
  };
  DETINFER_AVX2 static DETINFER_INLINE Ctx group(const uint8_t* row, int64_t g) {
    return {row + 32 * g};
  }
  DETINFER_AVX2 static DETINFER_INLINE __m256 sub(const Ctx& c, int) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(c.p));
  }
  static float scalar(const uint8_t* row, int64_t k) {
    float v;
    std::memcpy(&v, row + 4 * k, 4);
    return v;
  }
};

struct LoadF16 {
  static constexpr int kGroupBytes = 16;
  static constexpr int kGroup = 8;
  struct Ctx {
    const uint8_t* p;
  };
  DETINFER_AVX2 static DETINFER_INLINE Ctx group(const uint8_t* row, int64_t g) {
    return {row + 16 * g};
  }
  DETINFER_AVX2 static DETINFER_INLINE __m256 sub(const Ctx& c, int) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c.p)));
  }
  static float scalar(const uint8_t* row, int64_t k) { return f16_to_f32(load_u16(row + 2 * k)); }
};

struct LoadBF16 {
  static constexpr int kGroupBytes = 16;
  static constexpr int kGroup = 8;
  struct Ctx {
    const uint8_t* p;
  };
  DETINFER_AVX2 static DETINFER_INLINE Ctx group(const uint8_t* row, int64_t g) {
    return {row + 16 * g};
  }
  DETINFER_AVX2 static DETINFER_INLINE __m256 sub(const Ctx& c, int) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c.p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  }
  static float scalar(const uint8_t* row, int64_t k) { return bf16_to_f32(load_u16(row + 2 * k)); }
};

// Q8_0 block: f16 d, int8 q[32]; x = d·q (exact in fp32).
struct LoadQ8_0 {
  static constexpr int kGroupBytes = 34;
  static constexpr int kGroup = 32;
  struct Ctx {
    __m256 d;
    const uint8_t* qs;
  };
  DETINFER_AVX2 static DETINFER_INLINE Ctx group(const uint8_t* row, int64_t g) {
    const uint8_t* b = row + 34 * g;
    return {broadcast_f16(b), b + 2};
  }
  DETINFER_AVX2 static DETINFER_INLINE __m256 sub(const Ctx& c, int j) {
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(c.qs + 8 * j));
    return _mm256_mul_ps(c.d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
  }
  static float scalar(const uint8_t*, int64_t) { return 0.0f; }  // K is whole blocks
};

// 4-bit blocks: byte i holds element i (low nibble) and element i+16 (high nibble).
DETINFER_AVX2 DETINFER_INLINE __m256i nibbles8(const uint8_t* qs, int j) {
  const __m256i v =
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 8 * (j & 1))));
  return j < 2 ? _mm256_and_si256(v, _mm256_set1_epi32(15)) : _mm256_srli_epi32(v, 4);
}

// Q4_0 block: f16 d, uint8 qs[16]; x = d·(nibble - 8) (exact).
struct LoadQ4_0 {
  static constexpr int kGroupBytes = 18;
  static constexpr int kGroup = 32;
  struct Ctx {
    __m256 d;
    const uint8_t* qs;
  };
  DETINFER_AVX2 static DETINFER_INLINE Ctx group(const uint8_t* row, int64_t g) {
    const uint8_t* b = row + 18 * g;
    return {broadcast_f16(b), b + 2};
  }
  DETINFER_AVX2 static DETINFER_INLINE __m256 sub(const Ctx& c, int j) {
    const __m256i q = _mm256_sub_epi32(nibbles8(c.qs, j), _mm256_set1_epi32(8));
    return _mm256_mul_ps(c.d, _mm256_cvtepi32_ps(q));
  }
  static float scalar(const uint8_t*, int64_t) { return 0.0f; }
};

// Q4_1 block: f16 d, f16 m, uint8 qs[16]; x = d·nibble (rounded) + m (rounded). d·nibble is
// exact in fp32 (11 × 4 significant bits), so one fma gives those same bits.
struct LoadQ4_1 {
  static constexpr int kGroupBytes = 20;
  static constexpr int kGroup = 32;
  struct Ctx {
    __m256 d, m;
    const uint8_t* qs;
  };
  DETINFER_AVX2 static DETINFER_INLINE Ctx group(const uint8_t* row, int64_t g) {
    const uint8_t* b = row + 20 * g;
    return {broadcast_f16(b), broadcast_f16(b + 2), b + 4};
  }
  DETINFER_AVX2 static DETINFER_INLINE __m256 sub(const Ctx& c, int j) {
    return _mm256_fmadd_ps(c.d, _mm256_cvtepi32_ps(nibbles8(c.qs, j)), c.m);
  }
  static float scalar(const uint8_t*, int64_t) { return 0.0f; }
};

// ---- Tiles ----------------------------------------------------------------------------------

// y[m·ldy + n] for MR rows of x (stride K) and NR weight rows: MR·NR independent accumulators,
// each a canonical dot product. pf_ahead: how far past the weights being read to prefetch, in
// bytes (0: no prefetch).
template <class L, int MR, int NR>
DETINFER_AVX2 void tile(const float* x, int64_t K, const uint8_t* const* wrows, float* y,
                        int64_t ldy, const float* bias, int64_t pf_ahead) {
  __m256 acc[MR][NR];
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_setzero_ps();
  const int64_t groups = K / L::kGroup;
  for (int64_t g = 0; g < groups; ++g) {
    typename L::Ctx c[NR];
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) {
      if (pf_ahead)
        _mm_prefetch(reinterpret_cast<const char*>(wrows[n]) + g * L::kGroupBytes + pf_ahead,
                     _MM_HINT_T0);
      c[n] = L::group(wrows[n], g);
    }
#pragma GCC unroll 4
    for (int j = 0; j < L::kGroup / 8; ++j) {
      const int64_t k = g * L::kGroup + 8 * j;
      __m256 w[NR];
#pragma GCC unroll 4
      for (int n = 0; n < NR; ++n) w[n] = L::sub(c[n], j);
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m) {
        __m256 xv = _mm256_loadu_ps(x + m * K + k);
        if (NR > 1) asm("" : "+x"(xv));  // one load of x, reused by the NR columns
#pragma GCC unroll 4
        for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_fmadd_ps(xv, w[n], acc[m][n]);
      }
    }
  }
  const int64_t k_tail = groups * L::kGroup;
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) {
      float r = detail::hsum8(acc[m][n]);
      for (int64_t k = k_tail; k < K; ++k)
        r = __builtin_fmaf(x[m * K + k], L::scalar(wrows[n], k), r);
      if (bias) r = r + bias[n];
      y[m * ldy + n] = r;
    }
}

// Columns [n0, n1) of weight rows at w (stride wstride), MR rows of x; tiles of NR columns.
template <class L, int MR, int NR>
DETINFER_AVX2 void tile_cols(const float* x, int64_t K, const uint8_t* w, int64_t wstride,
                             int64_t n0, int64_t n1, float* y, int64_t ldy, const float* bias,
                             bool prefetch) {
  const int64_t pf = prefetch ? kPrefetchRows * wstride : 0;
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) {
    const uint8_t* rows[NR];
    for (int i = 0; i < NR; ++i) rows[i] = w + (n + i) * wstride;
    tile<L, MR, NR>(x, K, rows, y + n, ldy, bias ? bias + n : nullptr, pf);
  }
  for (; n < n1; ++n) {
    const uint8_t* rows[1] = {w + n * wstride};
    tile<L, MR, 1>(x, K, rows, y + n, ldy, bias ? bias + n : nullptr, pf);
  }
}

// Rows [r0, r1) × columns [n0, n1): groups of 4 rows, then the remainder. Weights are
// prefetched when they come from the model (not from a panel already in cache) on the first
// pass over them.
template <class L>
DETINFER_AVX2 void tile_rows(const float* x, int64_t K, int64_t r0, int64_t r1, const uint8_t* w,
                             int64_t wstride, int64_t n0, int64_t n1, float* y, int64_t ldy,
                             const float* bias, bool prefetch) {
  int64_t m = r0;
  for (; m + 4 <= r1; m += 4, prefetch = false)
    tile_cols<L, 4, 2>(x + m * K, K, w, wstride, n0, n1, y + m * ldy, ldy, bias, prefetch);
  const float* xm = x + m * K;
  float* ym = y + m * ldy;
  switch (r1 - m) {
    case 3: tile_cols<L, 3, 2>(xm, K, w, wstride, n0, n1, ym, ldy, bias, prefetch); break;
    case 2: tile_cols<L, 2, 4>(xm, K, w, wstride, n0, n1, ym, ldy, bias, prefetch); break;
    case 1: tile_cols<L, 1, 4>(xm, K, w, wstride, n0, n1, ym, ldy, bias, prefetch); break;
    default: break;
  }
}

// Dequantizes one weight row into out[K] with the loader's values.
template <class L>
DETINFER_AVX2 void unpack_row(const uint8_t* row, int64_t K, float* out) {
  const int64_t groups = K / L::kGroup;
  for (int64_t g = 0; g < groups; ++g) {
    const typename L::Ctx c = L::group(row, g);
#pragma GCC unroll 4
    for (int j = 0; j < L::kGroup / 8; ++j)
      _mm256_storeu_ps(out + g * L::kGroup + 8 * j, L::sub(c, j));
  }
  for (int64_t k = groups * L::kGroup; k < K; ++k) out[k] = L::scalar(row, k);
}

// The rows [r0, r1) × columns [c0, c1) of one task. panel/panel_c0 keep the dequantized column
// block between a thread's consecutive tasks.
template <class L, bool kPlain>
DETINFER_AVX2 void task_avx2(const Problem& p, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                             std::vector<float>& panel, int64_t& panel_c0) {
  const float* bias = p.bias;
  if (kPlain || p.M <= kDirectMaxM) {
    tile_rows<L>(p.x, p.K, r0, r1, p.w, p.row_bytes, c0, c1, p.y, p.N, bias, true);
    return;
  }
  if (panel_c0 != c0) {
    panel.resize(static_cast<size_t>(kColBlock * p.K));
    for (int64_t n = c0; n < c1; ++n)
      unpack_row<L>(p.w + n * p.row_bytes, p.K, panel.data() + (n - c0) * p.K);
    panel_c0 = c0;
  }
  tile_rows<LoadF32>(p.x, p.K, r0, r1, reinterpret_cast<const uint8_t*>(panel.data()), p.K * 4, 0,
                     c1 - c0, p.y + c0, p.N, bias ? bias + c0 : nullptr, false);
}

using TaskFn = void (*)(const Problem&, int64_t, int64_t, int64_t, int64_t, std::vector<float>&,
                        int64_t&);

TaskFn avx2_task_for(DType t) {
  switch (t) {
    case DType::F32: return task_avx2<LoadF32, true>;
    case DType::F16: return task_avx2<LoadF16, false>;
    case DType::BF16: return task_avx2<LoadBF16, false>;
    case DType::Q8_0: return task_avx2<LoadQ8_0, false>;
    case DType::Q4_0: return task_avx2<LoadQ4_0, false>;
    case DType::Q4_1: return task_avx2<LoadQ4_1, false>;
  }
  return nullptr;
}
#endif

}  // namespace

void matmul(ThreadPool& pool, const float* x, int64_t M, int64_t K, const TensorView& w, float* y,
            const float* bias) {
  DETINFER_CHECK(w.data != nullptr, "matmul: weight '", w.name, "' has no data");
  DETINFER_CHECK(w.shape.size() == 2 && w.cols() == K && K >= 0, "matmul: weight '", w.name,
                 "' has shape ", w.shape_str(), ", expected [N, ", K, "]");
  DETINFER_CHECK(M >= 0, "matmul: negative row count ", M);
  const int64_t row_bytes = dtype_row_bytes(w.dtype, K);
  const int64_t N = w.rows();
  DETINFER_CHECK(row_bytes == 0 || N <= w.nbytes / row_bytes, "matmul: weight '", w.name,
                 "' of shape ", w.shape_str(), " (", dtype_name(w.dtype), ") needs ", N, " x ",
                 row_bytes, " bytes but has ", w.nbytes);
  if (M == 0 || N == 0) return;

  const Problem p{x, M, K, N, w.dtype, w.data, row_bytes, y, bias};
  const int64_t col_block = M <= kDirectMaxM ? kColBlockDirect : kColBlock;
  const int64_t n_col = (N + col_block - 1) / col_block;
  const int64_t n_row = (M + kRowChunk - 1) / kRowChunk;
  // Task t covers column block t / n_row and row chunk t % n_row: a thread's consecutive tasks
  // share a column block, so its panel is dequantized once per thread.
#ifdef DETINFER_X86
  const TaskFn avx2_task = detail::simd_active() ? avx2_task_for(w.dtype) : nullptr;
#endif
  pool.parallel_for(n_col * n_row, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> buf;
    [[maybe_unused]] int64_t panel_c0 = -1;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c0 = (t / n_row) * col_block, c1 = std::min(N, c0 + col_block);
      const int64_t r0 = (t % n_row) * kRowChunk, r1 = std::min(M, r0 + kRowChunk);
#ifdef DETINFER_X86
      if (avx2_task) {
        avx2_task(p, r0, r1, c0, c1, buf, panel_c0);
        continue;
      }
#endif
      task_portable(p, r0, r1, c0, c1, buf);
    }
  });
}

void embed_row(const TensorView& table, int64_t row, float* out) {
  DETINFER_CHECK(table.data != nullptr && table.shape.size() == 2, "embed_row: table '", table.name,
                 "' must be a 2-D tensor with data, has shape ", table.shape_str());
  DETINFER_CHECK(row >= 0 && row < table.rows(), "embed_row: row ", row, " is outside table '",
                 table.name, "' of ", table.rows(), " rows");
  const int64_t row_bytes = dtype_row_bytes(table.dtype, table.cols());
  DETINFER_CHECK(row < table.nbytes / std::max<int64_t>(row_bytes, 1), "embed_row: table '",
                 table.name, "' is too small for its shape ", table.shape_str());
  dequantize_row(table.dtype, table.data + row * row_bytes, out, table.cols());
}

}  // namespace detinfer::cpu
