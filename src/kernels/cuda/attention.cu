// Tensor-core paged attention over a bf16 KV cache (interface and contract: attention.h).
//
// Rows and CTAs. A row is one (token, query head). A CTA takes up to 64 rows (16 per warp, the M
// of mma.sync m16n8k16) of ONE run of consecutive tokens of a sequence that share one kv head:
// the group's query heads × one or more tokens. Items of up to 16 rows (decode) run in CTAs of
// four warps that share those rows (SH below): S is split over the warps by keys, P·V by head_dim
// columns, and the softmax's row trees are completed through shared memory in the same shape.
// Every element of an mma depends only on its own row of A and column of B, so which rows share
// a CTA (decode: the heads of one token; prefill: several tokens) never changes a row's bits.
// Decode items of head_dim 128 on a grid of at most one CTA per SM run attn_wide_kernel, which
// reduces four tiles at a time and replays the order below (see there).
//
// The order of the arithmetic for one row at position `pos` (keys 0..pos of its sequence):
//   q, k, v are bf16 (q rounded to nearest even as it is loaded; the cache holds bf16 bits);
//   head_dim is zero-padded to a multiple of 16.
//   The keys are cut into splits of `split` keys ([0, split), [split, 2·split), ...) and each
//   split into tiles of kAttnKeyTile = 64 keys aligned to absolute positions. Per split, from
//   m = -inf, l = 0, acc = 0, per tile in increasing order:
//     S = q·kᵀ: one fp32 accumulator per (row, key), +0 first, one mma per 16 values of head_dim
//       in increasing order;  s = S · scale (one rounding);  keys > pos: s = -inf (a select)
//     mt = max of the row's s over the tile;  m' = m > mt ? m : mt
//     c = det_expf(m − m');  p = key <= pos ? det_expf(s − m') : 0
//     l = l·c + psum, psum = the row's 64 p summed by a fixed tree: each lane its 16 fragment
//       columns pairwise (row_tree), then the quad by xor 1, xor 2 (the max uses the same tree)
//     o = bf16(p)·v: one fp32 accumulator per (row, dim), +0 first, one mma per 16 keys in
//       increasing order;  acc = acc·f + o, f = c where m' != m, else 1 (x·1 = x: no rescale)
//   (An SH warp runs the first levels of those trees for its own keys; shared memory carries the
//   per-lane subtrees to every warp, which runs the rest of the same tree.)
//   A tile with no key <= pos (the row's tokens share a CTA with later ones) leaves the row's
//   state untouched (a select, not arithmetic that happens to be exact).
//   Splits are merged in increasing order from the empty state by merge_coef/merge_elem below
//   (a split without a key <= pos is skipped exactly); out = acc / l.
// The merge runs either in the CTA that computed the splits (registers, or its own rows of `out`
// for head_dim > 96) or in the merge kernel from per-split partials (m, l, acc) in the
// workspace: the same functions on the same values, so the same bits. (Where out holds the
// merge, decode CTAs with four buffers divide right after the last split's merge, the others in
// a pass after the loop over what they stored: the same division of the same values.)
// Keys past the CTA's last valid position are loaded as zeros (a stale slot may hold NaN, and
// 0·NaN would poison the row's o); padding columns of q/k/v are zeros.
//
// head_dim > 256: one warp per row (attn_simple_kernel), its own fixed order (documented there).
// Optional bf16 copy of out (args.out_bf16): each final store (the CTA's, the merge kernel's, the
// warp kernel's) also writes the round-to-nearest-even bf16 of the fp32 value it stores.
// Every kernel here starts with griddepcontrol.launch_dependents (pdl.cuh): a dependent launched
// with programmatic serialization may start its prologue early; its griddepcontrol.wait still
// returns only after this grid has finished and its writes are visible, so no bit changes. The
// decode CTAs read their item, positions and block table (step metadata, which no kernel writes)
// before their own wait, and q and the cache after it.
#include "kernels/cuda/attention.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>

#include "common/error.h"
#include "kernels/cuda/det_math.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/pdl.cuh"

namespace detinfer::cuda {

namespace {

std::atomic<int> g_split{kAttnDefaultSplit};
std::atomic<bool> g_wide{true};
std::atomic<bool> g_rope_fusion{true};
std::atomic<int64_t> g_rope_launches{0};
std::atomic<int64_t> g_wide_launches{0};

constexpr int KT = kAttnKeyTile;
constexpr float kNegInf = -INFINITY;

struct Params {
  const float* q;
  float* out;
  const uint16_t* kc;
  const uint16_t* vc;
  const int32_t* pos;
  const int32_t* table_off;
  const int32_t* tables;
  float* ws;
  uint16_t* obf;   // optional bf16 copy of out (null: none), row stride obf_ld per token
  int64_t obf_ld;
  int block_size;
  float scale;
  int n_heads, n_kv_heads, head_dim, group;
  int split_tiles;
  int vec16;  // head_dim % 8 == 0 and 16-byte aligned caches: 16-byte copies, else 4-byte
  // log2 of block_size and of group where they are powers of two, else -1: decode CTAs take a
  // shift and a mask instead of an integer division (about twenty instructions) in the slot
  // and row lookups.
  int bs_shift, group_shift;
  RopeInAttention rope;  // attn_wide_kernel<true> only
};

// ---- small device functions ----------------------------------------------------------------------
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo, each RNE
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ void ldsm_x4(uint32_t* r, const uint16_t* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t* r, const uint16_t* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

// d += a · b for one m16n8k16 tile (bf16 inputs, fp32 accumulators), as gemm.cu.
__device__ __forceinline__ void mma_bf16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// cp.async with zero fill: valid == false writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem),
               "r"(valid ? 4 : 0));
}
// The same copies to a shared-window address (set up once), zeros where `zero` (ignore-src:
// nothing is read, as with source size 0 above; one compare instead of four instructions).
template <int BYTES>
__device__ __forceinline__ void cp_async_s(uint32_t smem, const void* gmem, bool zero) {
  if constexpr (BYTES == 16)
    asm volatile("{\n .reg .pred z;\n setp.ne.b32 z, %2, 0;\n cp.async.cg.shared.global [%0], [%1], 16, z;\n}\n"
                 ::"r"(smem), "l"(gmem), "r"(static_cast<int>(zero)));
  else
    asm volatile("{\n .reg .pred z;\n setp.ne.b32 z, %2, 0;\n cp.async.ca.shared.global [%0], [%1], 4, z;\n}\n"
                 ::"r"(smem), "l"(gmem), "r"(static_cast<int>(zero)));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ float max_sel(float a, float b) { return a > b ? a : b; }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }

// One row's 16 values in a lane's S fragments (row g: h = 0, row g + 8: h = 1), in the order
// k = 2·(n-tile) + column, reduced by a fixed pairwise tree:
//   ((v0∘v1)∘(v2∘v3))∘((v4∘v5)∘(v6∘v7)) ∘ (the same over v8..v15).
// The same tree over N (a power of two) consecutive leaves: row_tree is tree<8> over the lane's
// eight n-tile pairs, and tree<8> = tree<NW>(tree<8/NW> of each warp's 8/NW pairs).
template <int N, typename Op>
__device__ __forceinline__ float tree(const float* a, Op op) {
  if constexpr (N == 1) return a[0];
  else return op(tree<N / 2>(a, op), tree<N / 2>(a + N / 2, op));
}
template <typename Op>
__device__ __forceinline__ float row_tree(const float (&s)[8][4], int h, Op op) {
  float a[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) a[j] = op(s[j][2 * h], s[j][2 * h + 1]);
  return op(op(op(a[0], a[1]), op(a[2], a[3])), op(op(a[4], a[5]), op(a[6], a[7])));
}

// ---- the merge of two split states (the one definition both merge paths use) ---------------------
//   b empty (m_b = -inf): a exactly;  a empty: b exactly;  else m = max(m_a, m_b),
//   α = det_expf(m_a − m), β = det_expf(m_b − m), l = l_a·α + l_b·β, acc = acc_a·α + acc_b·β.
struct MergeCoef {
  float m, l, a, b;
  int kind;  // 0: keep a, 1: take b, 2: blend
};
__device__ __forceinline__ MergeCoef merge_coef(float m_a, float l_a, float m_b, float l_b) {
  MergeCoef c;
  if (m_b == kNegInf) {
    c.kind = 0, c.m = m_a, c.l = l_a, c.a = 1.0f, c.b = 0.0f;
  } else if (m_a == kNegInf) {
    c.kind = 1, c.m = m_b, c.l = l_b, c.a = 0.0f, c.b = 1.0f;
  } else {
    c.kind = 2;
    c.m = max_sel(m_a, m_b);
    c.a = det_expf(__fsub_rn(m_a, c.m));
    c.b = det_expf(__fsub_rn(m_b, c.m));
    c.l = __fadd_rn(__fmul_rn(l_a, c.a), __fmul_rn(l_b, c.b));
  }
  return c;
}
__device__ __forceinline__ float merge_elem(const MergeCoef& c, float x_a, float x_b) {
  if (c.kind == 0) return x_a;
  if (c.kind == 1) return x_b;
  return __fadd_rn(__fmul_rn(x_a, c.a), __fmul_rn(x_b, c.b));
}

// Row rr of an item's run (rr = r0 + r): token tok0 + rr / G, head kvh·G + rr % G (a shift and
// a mask where shift >= 0: G a power of two); where row r's out values and bf16 copy go.
struct RunRows {
  int tok0, kvh, r0, G, shift, n_heads, hd;
  int64_t obf_ld;
  __device__ __forceinline__ int tok(int rr) const { return shift >= 0 ? rr >> shift : rr / G; }
  __device__ __forceinline__ int head(int rr) const { return kvh * G + (shift >= 0 ? rr & (G - 1) : rr % G); }
  __device__ __forceinline__ int64_t out(int r) const {
    const int rr = r0 + r;
    return (static_cast<int64_t>(tok0 + tok(rr)) * n_heads + head(rr)) * hd;
  }
  __device__ __forceinline__ int64_t out_bf16(int r) const {
    const int rr = r0 + r;
    return static_cast<int64_t>(tok0 + tok(rr)) * obf_ld + static_cast<int64_t>(head(rr)) * hd;
  }
};

// The end of a split for one of a lane's two rows (h: row g or g + 8), its accumulators in
// column tiles 2·dp0 + d (d < 2·PW), columns 8·(2·dp0 + d) + 2·tq and + 1 below hd:
// to the workspace entry w (m and l too where write_ml), or merged into the row's `out` in split
// order (read_kept: the row's `out` holds the merge even where this split adds nothing), then,
// where `divide`, out = merge / l and its bf16 copy to obf (if not null).
template <int PW>
__device__ __forceinline__ void split_to_workspace(float* w, float m, float l, bool write_ml, const float (&acc)[2 * PW][4],
                                                   int h, int dp0, int tq, int hd) {
  if (write_ml) w[0] = m, w[1] = l;
#pragma unroll
  for (int d = 0; d < 2 * PW; ++d) {
    const int c = 8 * (2 * dp0 + d) + 2 * tq;
    if (c < hd) *reinterpret_cast<float2*>(w + 2 + c) = make_float2(acc[d][2 * h], acc[d][2 * h + 1]);
  }
}
template <int PW>
__device__ __forceinline__ void merge_into_out(const MergeCoef& cf, float* o, uint16_t* obf, bool read_kept, bool divide,
                                               const float (&acc)[2 * PW][4], int h, int dp0, int tq, int hd) {
#pragma unroll
  for (int d = 0; d < 2 * PW; ++d) {
    const int c = 8 * (2 * dp0 + d) + 2 * tq;
    if (c >= hd) continue;
    const bool read = cf.kind == 2 || (read_kept && cf.kind == 0);
    const float2 prev = read ? *reinterpret_cast<const float2*>(o + c) : make_float2(0.0f, 0.0f);
    float2 v = make_float2(merge_elem(cf, prev.x, acc[d][2 * h]), merge_elem(cf, prev.y, acc[d][2 * h + 1]));
    if (divide) {
      v = make_float2(__fdiv_rn(v.x, cf.l), __fdiv_rn(v.y, cf.l));
      if (obf) *reinterpret_cast<uint32_t*>(obf + c) = pack_bf16(v.x, v.y);
    }
    *reinterpret_cast<float2*>(o + c) = v;
  }
}

// The end of a split for a lane's rows r[0] (g) and r[1] (g + 8), state m, l, acc, where the
// merge is not held in registers: to the workspace entries ws_row(r) (pbase >= 0), or merged into
// out (mR, lR: the running merge's m and l, updated; kept: out holds the merge even where a split
// adds nothing), divided after the CTA's last split where `divide`.
template <int PW, typename WsRow>
__device__ __forceinline__ void end_split_rows(bool to_ws, WsRow ws_row, float* out, uint16_t* obf, const RunRows& rows,
                                               int nrows, const int (&r)[2], const float (&m)[2], const float (&l)[2],
                                               float (&mR)[2], float (&lR)[2], bool write_ml, bool kept, bool last,
                                               bool divide, const float (&acc)[2 * PW][4], int dp0, int tq, int hd) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (to_ws) {
      if (r[h] < nrows) split_to_workspace<PW>(ws_row(r[h]), m[h], l[h], write_ml, acc, h, dp0, tq, hd);
      continue;
    }
    const MergeCoef cf = merge_coef(mR[h], lR[h], m[h], l[h]);
    if (r[h] < nrows && (cf.kind != 0 || (kept && last)))
      merge_into_out<PW>(cf, out + rows.out(r[h]), obf ? obf + rows.out_bf16(r[h]) : nullptr, kept, divide, acc, h, dp0,
                         tq, hd);
    mR[h] = cf.m, lR[h] = cf.l;
  }
}

// ---- one decode warp's share of a tile: keys 16w .. 16w + 15 (n-tiles j0 = 2w, 2w + 1) --------
// Shared by the SH CTAs and attn_wide_kernel. A lane holds rows g and g + 8 (h = 0, 1) of the 16.
// S = q·kᵀ: 16 q rows at qs, the tile's K rows at kt (row stride LD), head_dim in chunks of 16 in
// increasing order from +0; the next chunk's fragments load before this chunk's mmas.
template <int NC, int LD>
__device__ __forceinline__ void warp_s(float (&s)[2][4], const uint16_t* qs, const uint16_t* kt, int w, int lane,
                                       int hd) {
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[j][e] = 0.0f;
  uint32_t qa[2][4], kb[2][4];
  auto load_qk = [&](int c, int b) {
    ldsm_x4(qa[b], qs + (lane & 15) * LD + c * 16 + (lane >> 4) * 8);
    ldsm_x4(kb[b], kt + (w * 16 + (lane & 7) + (lane >> 4) * 8) * LD + c * 16 + ((lane >> 3) & 1) * 8);
  };
  load_qk(0, 0);
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    if (c * 16 >= hd) break;
    if (c + 1 < NC && (c + 1) * 16 < hd) load_qk(c + 1, (c + 1) & 1);
    mma_bf16(s[0], qa[c & 1], kb[c & 1][0], kb[c & 1][1]);
    mma_bf16(s[1], qa[c & 1], kb[c & 1][2], kb[c & 1][3]);
  }
}
// Key of fragment value (j, e) of a tile starting at p0: p0 + 8·(j0 + j) + 2·tq + (e & 1).
// s = S·scale, and −inf for keys past the row's position (kMasked).
template <bool kMasked>
__device__ __forceinline__ void scale_rows(float (&s)[2][4], int p0, int j0, int tq, int pos_lo, int pos_hi,
                                           float scale) {
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = p0 + 8 * (j0 + j) + 2 * tq + (e & 1);
      s[j][e] = !kMasked || key <= (e < 2 ? pos_lo : pos_hi) ? __fmul_rn(s[j][e], scale) : kNegInf;
    }
}
// p = exp(s − m') for the same keys (m' of the lane's row), 0 past the row's position.
template <bool kMasked>
__device__ __forceinline__ void exp_rows(float (&s)[2][4], int p0, int j0, int tq, int pos_lo, int pos_hi,
                                         float mn_lo, float mn_hi) {
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = p0 + 8 * (j0 + j) + 2 * tq + (e & 1);
      const float d = __fsub_rn(s[j][e], e < 2 ? mn_lo : mn_hi);
      s[j][e] = !kMasked || key <= (e < 2 ? pos_lo : pos_hi) ? det_expf(d) : 0.0f;
    }
}
// A row tree's first levels over the warp's n-tile pair: op(a[j0], a[j0 + 1]) (row_tree's leaves).
template <typename Op>
__device__ __forceinline__ float pair_subtree(const float (&s)[2][4], int h, Op op) {
  return op(op(s[0][2 * h], s[0][2 * h + 1]), op(s[1][2 * h], s[1][2 * h + 1]));
}
// The rest of the tree from the NW warps' subtrees (word(v, i): warp v's word i, rows g and
// g + 8 at i = lane and 32 + lane), then the quad (xor 1, xor 2).
template <int NW, typename Op, typename Word>
__device__ __forceinline__ void finish_rows(Op op, Word word, int lane, float& lo, float& hi) {
  float a[NW], b[NW];
#pragma unroll
  for (int v = 0; v < NW; ++v) a[v] = __uint_as_float(*word(v, lane)), b[v] = __uint_as_float(*word(v, 32 + lane));
  lo = tree<NW>(a, op), hi = tree<NW>(b, op);
#pragma unroll
  for (int o = 1; o <= 2; o <<= 1) {
    lo = op(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = op(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
}
// bf16(p) of the warp's n-tiles to the P words (word(i); n-tile j: 64j + (0: row g, 32: row
// g + 8) + lane), and back as P·V's A fragments: k-chunk kc is n-tiles 2kc, 2kc + 1.
template <typename Word>
__device__ __forceinline__ void store_p(const float (&s)[2][4], int j0, int lane, Word word) {
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    *word(64 * (j0 + j) + lane) = pack_bf16(s[j][0], s[j][1]);
    *word(64 * (j0 + j) + 32 + lane) = pack_bf16(s[j][2], s[j][3]);
  }
}
template <typename Word>
__device__ __forceinline__ void load_p(uint32_t (&pa)[4][4], int lane, Word word) {
#pragma unroll
  for (int kc = 0; kc < 4; ++kc)
#pragma unroll
    for (int i = 0; i < 4; ++i) pa[kc][i] = *word(128 * kc + 32 * i + lane);
}
// V fragments of 8-wide column pair dp of a tile at vt, and o = P·V for that pair: keys in
// chunks of 16 in increasing order, from +0.
template <int LD>
__device__ __forceinline__ void load_v_frags(uint32_t (&vb)[4][4], const uint16_t* vt, int dp, int lane) {
#pragma unroll
  for (int kc = 0; kc < 4; ++kc)
    ldsm_x4_trans(vb[kc], vt + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8);
}
__device__ __forceinline__ void pv_pair(float (&o)[2][4], const uint32_t (&pa)[4][4], const uint32_t (&vb)[4][4]) {
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[h][e] = 0.0f;
#pragma unroll
  for (int kc = 0; kc < 4; ++kc) {
    mma_bf16(o[0], pa[kc], vb[kc][0], vb[kc][1]);
    mma_bf16(o[1], pa[kc], vb[kc][2], vb[kc][3]);
  }
}

// ---- the tensor-core kernel ---------------------------------------------------------------------
// Item (kAttnRecordInts int32): first token of the run, kv head, first row r0 of the run's rows
// (row r = token (r / group) of the run, head kvh·group + r % group), rows, last valid position
// of those rows, splits [begin, end), partial base (-1: merge here and write out; else split s
// of row r goes to partial base + (s − begin)·rows + r).
// Shared memory: the CTA's q rows and NB tile buffers that K and V tiles rotate through (see
// the prologue), plus a ring of two tiles' cache slots, read from the block table a tile ahead.
// NB = 3: a tile's V loads while its K is used, K of the next tile while its V is used; with
// head_dim 128 three prefill CTAs fit an SM (twelve warps; __launch_bounds__ holds the registers
// to 168 for it; decode CTAs with NB = 3: 128, four CTAs per SM). NB = 4: K and V of the next
// tile both load during the whole tile (a double buffer), for grids too small to fill the GPU.
// Same math either way.
// SH (shared rows, decode): the CTA's NW warps all take the same 16 rows and issue each tile's
// copies together. A decode CTA is alone on its SM at small batch, so the tile's latency is the
// step's: the work of a tile is split, not repeated (it used to be: every warp computed all of S
// and the softmax). Warp w computes S only for n-tiles 2w, 2w + 1 (keys 16w..16w + 15 of the
// tile: the prefill warp's mma chains for those keys), and the row trees are cut where the warps
// meet: each lane's subtree op(a[2w], a[2w + 1]) goes through shared memory and every warp
// finishes the same tree (tree<8> = tree<4> of the warps' tree<2>), then the same quad shuffles:
// the prefill warp's max and sum, value for value. Each warp writes its n-tiles of bf16(p), which
// are exactly the A fragment of k-chunk w of P·V, and every warp reads all four back. m, l, c, f
// are then computed by every warp from the same values. Warp w computes P·V only for its share
// of the head_dim columns (pairs of 8-wide tiles [w·PW, (w + 1)·PW)), k-chunks 0..3 from +0 as
// before: an output element's mmas and fold into acc are the prefill warp's, whichever warp runs
// them. Two barriers per tile are added (one doubles as the NB = 3 "V landed" barrier). The
// exchange takes no shared memory of its own (phase_s_sh), so the NB = 3 CTAs still fit four per
// SM: with a 4 KiB region of their own they fitted three, and a 512-CTA grid (batch 64 at 512,
// batch 8 at 4096) took two waves and ran 15-20% slower than before.
constexpr bool kShSplitMany = true;  // NB = 3 SH CTAs split S too (H100: 10-13% faster than not)
template <int HDP, int NW, int NB, bool SH = false>
struct TcShape {
  static_assert(NB == 3 || NB == 4, "three or four tile buffers");
  static constexpr int LD = HDP + 8;  // bf16 row stride: ldmatrix rows fall in distinct banks
  static constexpr int QROWS = SH ? 16 : 16 * NW;
  static constexpr bool SPLIT = SH && (NB == 4 || kShSplitMany);  // S split over the warps
  static_assert(!SPLIT || NW == 4, "split S: two n-tiles (16 keys, 16 K rows) per warp");
  static_assert(!SPLIT || NB * KT * 4 >= 768, "split S: the exchange fits the row padding");
  // HDP = 32 (head_dim <= 32, possibly < 8): the max exchange gets its own 1 KiB (see phase_s_sh).
  static constexpr size_t smem_bytes = size_t(QROWS + NB * KT) * LD * sizeof(uint16_t) +
                                       2 * KT * sizeof(int32_t) + (SPLIT && HDP == 32 ? 1024 : 0);
};

template <int HDP, int NW, int NB, bool SH>
__global__ void __launch_bounds__(NW * 32, NW == 4 && HDP == 128 ? (SH && NB == 3 ? 4 : NB == 3 || SH ? 3 : 1) : 1)
    attn_tc_kernel(const Params p, const int32_t* __restrict__ items) {
  pdl_launch_dependents();
  if constexpr (!SH) pdl_wait();  // (SH: after the metadata loads, below)
  using Shape = TcShape<HDP, NW, NB, SH>;
  constexpr int LD = Shape::LD, NT = NW * 32, NC = HDP / 16, ND = HDP / 8;
  // P·V: pairs of 8-wide column tiles per warp (PW); SH: this warp's first pair dp0. The
  // non-SH expressions are kept as they were (dp0 = 0 folds away: the same code as before).
  constexpr int NP = ND / 2, PW = SH ? (NP + NW - 1) / NW : NP;
  constexpr int kSlotsPerThread = (KT + NT - 1) / NT;
  // The running merge of the splits: registers up to 96 columns; from 128 on (register pressure)
  // the CTA's own rows of out hold it (each thread rereads only what it wrote).
  constexpr bool kRegMerge = HDP < 128;
  // The division out = acc / l: in the last split's merge where out holds the merge (NB = 4 SH
  // CTAs: one round trip through global memory fewer), else in a pass after the loop (the
  // others: their registers are at the limit, and the division in the loop made them spill).
  constexpr bool kDivideAtEnd = !kRegMerge && SH && NB == 4;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* ks = qs + Shape::QROWS * LD;
  int32_t* slot_s = reinterpret_cast<int32_t*>(ks + NB * KT * LD);  // [2][KT] ring

  const int32_t* item = items + static_cast<int64_t>(blockIdx.x) * kAttnRecordInts;
  const int tok0 = item[0], kvh = item[1], r0 = item[2], nrows = item[3], max_pos = item[4];
  const int s_begin = item[5], s_end = item[6], pbase = item[7];
  const int tid = threadIdx.x, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const int warp = SH ? 0 : tid >> 5;       // whose 16 rows this warp computes
  const int dp0 = SH ? (tid >> 5) * PW : 0;  // its first pair of P·V column tiles
  const int hd = p.head_dim, G = p.group;
  const int32_t* table = p.tables + p.table_off[tok0];
  const int64_t kv_row = static_cast<int64_t>(p.n_kv_heads) * hd;
  const uint16_t* kbase = p.kc + static_cast<int64_t>(kvh) * hd;
  const uint16_t* vbase = p.vc + static_cast<int64_t>(kvh) * hd;
  const int t_begin = s_begin * p.split_tiles;
  const int t_end = min(s_end * p.split_tiles, max_pos / KT + 1);

  // Padding columns [hd, HDP) of every tile buffer row: zeros (the loads never write them).
  if (hd < HDP) {
    const int words = (HDP - hd) / 2;
    for (int i = tid; i < NB * KT * words; i += NT) {
      const int r = i / words;
      *reinterpret_cast<uint32_t*>(ks + r * LD + hd + 2 * (i - r * words)) = 0u;
    }
  }
  // Row rr of the run: token tok0 + rr / G, head kvh·G + rr % G.
  const RunRows rows{tok0, kvh, r0, G, SH ? p.group_shift : -1, p.n_heads, hd, p.obf_ld};
  auto run_tok = [&](int rr) { return rows.tok(rr); };
  auto run_head = [&](int rr) { return rows.head(rr); };
  // Cache slot of a key (-1 past max_pos: loaded as zeros).
  auto slot_of = [&](int key) -> int {
    if (key > max_pos) return -1;
    if (SH && p.bs_shift >= 0) return table[key >> p.bs_shift] * p.block_size + (key & (p.block_size - 1));
    return table[key / p.block_size] * p.block_size + key % p.block_size;
  };
  // SH: the prologue's global loads (the slots of the first two tiles, the rows' positions, q)
  // are all issued before the first shared store or shuffle that uses one (q: one pass of
  // loads, then one of stores). Issue is in order: with the stores between them the loads ran
  // in several rounds of memory latency one after another, a fixed cost of every decode step.
  // Prefill CTAs keep the old order: they amortize the prologue, and ptxas spilled
  // prefill<128> and prefill<256> (held at their register limits) with the new one.
  int first_slots[2][kSlotsPerThread];
  if constexpr (SH) {
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int j = 0; j < kSlotsPerThread; ++j) {
        const int r = tid + j * NT;
        first_slots[k][j] = r < KT && t_begin + k < t_end ? slot_of((t_begin + k) * KT + r) : -1;
      }
  }
  // This lane's two rows (g and g + 8 of the warp's 16) and their positions.
  const int r_lo = warp * 16 + g, r_hi = r_lo + 8;
  auto row_pos = [&](int r) { return r < nrows ? p.pos[tok0 + run_tok(r0 + r)] : -1; };
  int pos_lo = SH ? row_pos(r_lo) : 0, pos_hi = SH ? row_pos(r_hi) : 0;
  // SH: the loads so far read only the step's metadata (the item, positions, block tables),
  // uploaded by copies before the step's first kernel and written by no kernel; they overlap the
  // kernel before this one. q and the cache rows are read after the wait.
  if constexpr (SH) pdl_wait();
  // q rows, rounded to bf16; padding rows and columns zero.
  constexpr int QN = Shape::QROWS * (HDP / 2);  // float2 words
  auto q_word = [&](int i) {
    const int r = i / (HDP / 2), c = 2 * (i - r * (HDP / 2));
    float2 v = make_float2(0.0f, 0.0f);
    if (r < nrows && c < hd) {
      const int rr = r0 + r;
      const int64_t row = static_cast<int64_t>(tok0 + run_tok(rr)) * p.n_heads + run_head(rr);
      v = *reinterpret_cast<const float2*>(p.q + row * hd + c);
    }
    return v;
  };
  auto q_store = [&](int i, float2 v) {
    const int r = i / (HDP / 2), c = 2 * (i - r * (HDP / 2));
    *reinterpret_cast<uint32_t*>(qs + r * LD + c) = pack_bf16(v.x, v.y);
  };
  if constexpr (SH && QN % NT == 0) {
    float2 qv[QN / NT];
#pragma unroll
    for (int k = 0; k < QN / NT; ++k) qv[k] = q_word(tid + k * NT);
#pragma unroll
    for (int k = 0; k < QN / NT; ++k) q_store(tid + k * NT, qv[k]);
  } else {
    for (int i = tid; i < QN; i += NT) q_store(i, q_word(i));
    pos_lo = row_pos(r_lo), pos_hi = row_pos(r_hi);  // (prefill: the old order, see above)
  }
  int warp_last = max(pos_lo, pos_hi);
#pragma unroll
  for (int o = 16; o >= 1; o >>= 1) warp_last = max(warp_last, __shfl_xor_sync(0xffffffffu, warp_last, o));
  // Padding rows (zero q, never stored) act as rows at the warp's last position, so that the
  // real rows alone decide whether a tile needs masks.
  if (r_lo >= nrows) pos_lo = warp_last;
  if (r_hi >= nrows) pos_hi = warp_last;
  int warp_first = min(pos_lo, pos_hi);
#pragma unroll
  for (int o = 16; o >= 1; o >>= 1) warp_first = min(warp_first, __shfl_xor_sync(0xffffffffu, warp_first, o));
  auto out_row = [&](int r) { return rows.out(r); };
  auto out_bf16_row = [&](int r) { return rows.out_bf16(r); };

  // Copies of one tile: K into buffer bk (do_k) and V into buffer bv (do_v), slots from ring
  // entry rs. Copy i of a tile is row i / CPR, elements E·(i % CPR) + [0, E) (E = 8: 16-byte
  // copies, else 2: 4-byte). SH CTAs where NT is a multiple of CPR (HDP a power of two): a
  // thread's copies are one fixed column of rows cr, cr + NT/CPR, ...; their addresses are set
  // up once, and a row's slot and cache offset serve both its K and its V copy. A decode CTA is
  // latency-bound on one warp per scheduler, and the general loop (per copy: a division, a
  // branch, the shared and global address from scratch: about 40 instructions) was about half
  // of the instructions a tile issued. Prefill CTAs keep the general loop: the set-up
  // addresses stay live across the tile loop, and prefill<128> (held to 168 registers) spilled.
  const uint32_t ks_sh = static_cast<uint32_t>(__cvta_generic_to_shared(ks));
  const int kv_row_bytes = p.n_kv_heads * hd * 2;  // < 2^31: checked by the launcher
  auto issue = [&](auto elems, bool do_k, int bk, bool do_v, int bv, int rs) {
    constexpr int E = decltype(elems)::value, CPR = HDP / E;
    const int32_t* slots = slot_s + rs * KT;
    if constexpr (SH && NT % CPR == 0) {
      constexpr int RSTEP = NT / CPR;
      const int cc = E * (tid % CPR), cr = tid / CPR;
      if (cc >= hd) return;
      const char* ksrc = reinterpret_cast<const char*>(kbase + cc);
      const char* vsrc = reinterpret_cast<const char*>(vbase + cc);
      const uint32_t d0 = ks_sh + 2 * (cr * LD + cc);
      const uint32_t dk = d0 + 2 * bk * KT * LD, dv = d0 + 2 * bv * KT * LD;
#pragma unroll 8
      for (int k = 0; k < KT / RSTEP; ++k) {
        const int slot = slots[cr + k * RSTEP];
        const uint64_t off = uint64_t{static_cast<uint32_t>(max(slot, 0))} * static_cast<uint32_t>(kv_row_bytes);
        const uint32_t dr = 2 * k * RSTEP * LD;
        if (do_k) cp_async_s<2 * E>(dk + dr, ksrc + off, slot < 0);
        if (do_v) cp_async_s<2 * E>(dv + dr, vsrc + off, slot < 0);
      }
    } else {
      auto one = [&](const uint16_t* base, int b) {
        uint16_t* dst = ks + b * KT * LD;
        for (int i = tid; i < KT * CPR; i += NT) {
          const int r = i / CPR, c = E * (i - r * CPR);
          if (c >= hd) continue;
          const int slot = slots[r];
          if constexpr (E == 8) cp_async16(dst + r * LD + c, base + (slot >= 0 ? slot * kv_row + c : 0), slot >= 0);
          else cp_async4(dst + r * LD + c, base + (slot >= 0 ? slot * kv_row + c : 0), slot >= 0);
        }
      };
      if (do_k) one(kbase, bk);
      if (do_v) one(vbase, bv);
    }
  };
  auto issue_tile = [&](bool do_k, int bk, bool do_v, int bv, int rs) {
    if (p.vec16) issue(std::integral_constant<int, 8>(), do_k, bk, do_v, bv, rs);
    else issue(std::integral_constant<int, 2>(), do_k, bk, do_v, bv, rs);
  };

  // The split being reduced (m, l, acc) and, for fused items, the merge of the splits before it.
  float m_lo = kNegInf, m_hi = kNegInf, l_lo = 0.0f, l_hi = 0.0f;
  // acc[dl]: column tile 2·dp0 + dl (columns 8·(2·dp0 + dl) + 2·tq, + 1).
  float acc[2 * PW][4];
  float mR_lo = kNegInf, mR_hi = kNegInf, lR_lo = 0.0f, lR_hi = 0.0f;
  float accR[kRegMerge ? 2 * PW : 1][4];
#pragma unroll
  for (int d = 0; d < 2 * PW; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[d][e] = 0.0f;
#pragma unroll
  for (int d = 0; d < (kRegMerge ? 2 * PW : 1); ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) accR[d][e] = 0.0f;

  // Prologue: slots of tiles 0 and 1, loads of K and V of tile 0. Load n (K of tile i is
  // n = 2i, V is 2i + 1) goes to buffer n % NB, which held load n − NB: with NB = 3, V of tile
  // i − 2 for a K (consumed before the tile's first barrier) and K of tile i − 1 for a V (before
  // its second barrier); with NB = 4, the same kind of tile i − 1 (before the first barrier).
  // Commit groups: NB = 3: one per load; NB = 4: one per tile.
  if constexpr (SH) {
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int j = 0; j < kSlotsPerThread; ++j)
        if (tid + j * NT < KT) slot_s[k * KT + tid + j * NT] = first_slots[k][j];
  } else {
    for (int k = 0; k < 2; ++k)
      for (int r = tid; r < KT; r += NT) slot_s[k * KT + r] = t_begin + k < t_end ? slot_of((t_begin + k) * KT + r) : -1;
  }
  __syncthreads();
  if (NB == 3) {
    issue_tile(true, 0, false, 0, 0);
    cp_async_commit();
    issue_tile(false, 0, true, 1, 0);
  } else {
    issue_tile(true, 0, true, 1, 0);
  }
  cp_async_commit();
  auto next_buf = [](int b) { return NB == 3 ? (b == 0 ? 2 : b - 1) : (b + 2) & 3; };  // (b + 2) % NB

  // SH: sh_split and sh_left (tiles left in it) count the splits (no `%` and `/` per tile);
  // prefill keeps the division (two more live registers made prefill<128> spill).
  for (int t = t_begin, kbuf = 0, vbuf = 1, ring = 0, sh_split = s_begin, sh_left = p.split_tiles; t < t_end; ++t) {
    int pre[kSlotsPerThread];
#pragma unroll
    for (int k = 0; k < kSlotsPerThread; ++k) {
      const int r = tid + k * NT;
      pre[k] = r < KT && t + 2 < t_end ? slot_of((t + 2) * KT + r) : -1;
    }
    const bool more = t + 1 < t_end;
    const int p0 = t * KT;
    const bool active = p0 <= warp_last, dense = p0 + KT - 1 <= warp_first;
    cp_async_wait<NB == 3 ? 1 : 0>();
    __syncthreads();  // K (NB = 4: and V) of tile t landed; all are done with tile t − 1
    if (more) issue_tile(true, next_buf(kbuf), NB == 4, next_buf(vbuf), ring ^ 1);
    cp_async_commit();
    uint32_t pa[4][4];
    float f_lo = 1.0f, f_hi = 1.0f;
    bool act_lo = false, act_hi = false;
    auto phase_s = [&](auto masked_tag) {
      constexpr bool kMasked = decltype(masked_tag)::value;
      const uint16_t* kt = ks + kbuf * KT * LD;
      // S = q·kᵀ, 16 rows × 64 keys (8 n-tiles), head_dim chunks in increasing order; the
      // fragments of chunk c + 1 are loaded before the mmas of chunk c are issued.
      float s[8][4];
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = 0.0f;
      uint32_t qa[2][4], kb[2][4][4];
      auto load_qk = [&](int c, int b) {
        ldsm_x4(qa[b], qs + (warp * 16 + (lane & 15)) * LD + c * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int jp = 0; jp < 4; ++jp)
          ldsm_x4(kb[b][jp], kt + (jp * 16 + (lane & 7) + (lane >> 4) * 8) * LD + c * 16 + ((lane >> 3) & 1) * 8);
      };
      load_qk(0, 0);
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        if (c * 16 >= hd) break;
        if (c + 1 < NC && (c + 1) * 16 < hd) load_qk(c + 1, (c + 1) & 1);
#pragma unroll
        for (int jp = 0; jp < 4; ++jp) {
          mma_bf16(s[2 * jp], qa[c & 1], kb[c & 1][jp][0], kb[c & 1][jp][1]);
          mma_bf16(s[2 * jp + 1], qa[c & 1], kb[c & 1][jp][2], kb[c & 1][jp][3]);
        }
      }
      // Scale (and mask), then the row max over the tile: the lane's 16 values by a fixed
      // pairwise tree, then its quad (xor 1, xor 2).
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = p0 + 8 * j + 2 * tq + (e & 1);
          s[j][e] = !kMasked || key <= (e < 2 ? pos_lo : pos_hi) ? __fmul_rn(s[j][e], p.scale) : kNegInf;
        }
      float mt_lo = row_tree(s, 0, max_sel), mt_hi = row_tree(s, 1, max_sel);
#pragma unroll
      for (int o = 1; o <= 2; o <<= 1) {
        mt_lo = max_sel(mt_lo, __shfl_xor_sync(0xffffffffu, mt_lo, o));
        mt_hi = max_sel(mt_hi, __shfl_xor_sync(0xffffffffu, mt_hi, o));
      }
      act_lo = !kMasked || p0 <= pos_lo;
      act_hi = !kMasked || p0 <= pos_hi;
      const float mn_lo = max_sel(m_lo, mt_lo), mn_hi = max_sel(m_hi, mt_hi);
      const float c_lo = act_lo ? det_expf(__fsub_rn(m_lo, mn_lo)) : 1.0f;
      const float c_hi = act_hi ? det_expf(__fsub_rn(m_hi, mn_hi)) : 1.0f;
      // p, and its row sum: the same trees as the max.
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = p0 + 8 * j + 2 * tq + (e & 1);
          const float d = __fsub_rn(s[j][e], e < 2 ? mn_lo : mn_hi);
          s[j][e] = !kMasked || key <= (e < 2 ? pos_lo : pos_hi) ? det_expf(d) : 0.0f;
        }
      float ps_lo = row_tree(s, 0, add_rn), ps_hi = row_tree(s, 1, add_rn);
#pragma unroll
      for (int o = 1; o <= 2; o <<= 1) {
        ps_lo = __fadd_rn(ps_lo, __shfl_xor_sync(0xffffffffu, ps_lo, o));
        ps_hi = __fadd_rn(ps_hi, __shfl_xor_sync(0xffffffffu, ps_hi, o));
      }
      if (act_lo) l_lo = __fadd_rn(__fmul_rn(l_lo, c_lo), ps_lo);
      if (act_hi) l_hi = __fadd_rn(__fmul_rn(l_hi, c_hi), ps_hi);
      // acc = acc·f + o with f = c where the max moved, else 1 (x·1 = x: "skip the rescale").
      f_lo = act_lo && mn_lo != m_lo ? c_lo : 1.0f;
      f_hi = act_hi && mn_hi != m_hi ? c_hi : 1.0f;
      if (act_lo) m_lo = mn_lo;
      if (act_hi) m_hi = mn_hi;
      // P as the A operand (the accumulator layout of S is the A layout of P·V).
#pragma unroll
      for (int kc = 0; kc < 4; ++kc) {
        pa[kc][0] = pack_bf16(s[2 * kc][0], s[2 * kc][1]);
        pa[kc][1] = pack_bf16(s[2 * kc][2], s[2 * kc][3]);
        pa[kc][2] = pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]);
        pa[kc][3] = pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3]);
      }
    };
    // SH: S and the softmax split over the warps (see TcShape). Its two exchanges take two
    // barriers; the second is also the NB = 3 "V landed" barrier. The warps share rows, so
    // `active` and `dense` are the same in all of them (and `active` always holds: the rows' last
    // position is max_pos).
    auto phase_s_sh = [&](auto masked_tag) {
      constexpr bool kMasked = decltype(masked_tag)::value;
      const int w = tid >> 5, j0 = 2 * w;  // this warp's n-tiles j0, j0 + 1: keys 16w..16w + 15
      uint16_t* kt = ks + kbuf * KT * LD;
      // Exchange words (no shared memory of their own, so four NB = 3 CTAs still fit an SM):
      // the max subtrees in columns 0..7 of each warp's own 16 K rows of this tile (read by that
      // warp only, dead once its S is done; overwritten by the next loads only after the second
      // barrier; HDP = 32, where head_dim may be < 8 and columns past it must stay zero: a 1 KiB
      // region of their own); the sum subtrees (words [0, 256)) and P (words [256, 768)) in the
      // padding columns [HDP, LD) of the tile buffers, which no load or ldmatrix touches.
      // Lane-consecutive words fall in distinct banks (row strides are 4 or 20 words mod 32).
      auto own_word = [&](int v, int i) {
        if constexpr (HDP == 32) return reinterpret_cast<uint32_t*>(slot_s + 2 * KT) + v * 64 + i;
        else return reinterpret_cast<uint32_t*>(kt + (16 * v + (i >> 2)) * LD) + (i & 3);
      };
      auto pad_word = [&](int i) { return reinterpret_cast<uint32_t*>(ks + (i >> 2) * LD + HDP) + (i & 3); };
      float s[2][4];
      warp_s<NC, LD>(s, qs, kt, w, lane, hd);
      scale_rows<kMasked>(s, p0, j0, tq, pos_lo, pos_hi, p.scale);
      __syncwarp();  // this warp's ldmatrix reads of its K rows are done before they are overwritten
      *own_word(w, lane) = __float_as_uint(pair_subtree(s, 0, max_sel));
      *own_word(w, 32 + lane) = __float_as_uint(pair_subtree(s, 1, max_sel));
      __syncthreads();  // every warp's max subtrees written
      float mt_lo, mt_hi;
      finish_rows<NW>(max_sel, own_word, lane, mt_lo, mt_hi);
      act_lo = !kMasked || p0 <= pos_lo;
      act_hi = !kMasked || p0 <= pos_hi;
      const float mn_lo = max_sel(m_lo, mt_lo), mn_hi = max_sel(m_hi, mt_hi);
      const float c_lo = act_lo ? det_expf(__fsub_rn(m_lo, mn_lo)) : 1.0f;
      const float c_hi = act_hi ? det_expf(__fsub_rn(m_hi, mn_hi)) : 1.0f;
      exp_rows<kMasked>(s, p0, j0, tq, pos_lo, pos_hi, mn_lo, mn_hi);
      *pad_word(w * 64 + lane) = __float_as_uint(pair_subtree(s, 0, add_rn));
      *pad_word(w * 64 + 32 + lane) = __float_as_uint(pair_subtree(s, 1, add_rn));
      auto p_word = [&](int i) { return pad_word(256 + i); };  // bf16(p): words 256 ... 767
      store_p(s, j0, lane, p_word);
      f_lo = act_lo && mn_lo != m_lo ? c_lo : 1.0f;
      f_hi = act_hi && mn_hi != m_hi ? c_hi : 1.0f;
      if (act_lo) m_lo = mn_lo;
      if (act_hi) m_hi = mn_hi;
      if (NB == 3) cp_async_wait<1>();
      __syncthreads();  // sum subtrees and P written; NB = 3: V of tile t landed, all are done with K
      if (NB == 3) {
        if (more) issue_tile(false, 0, true, kbuf, ring ^ 1);  // kbuf == next_buf(vbuf)
        cp_async_commit();
      }
      float ps_lo, ps_hi;
      finish_rows<NW>(add_rn, [&](int v, int i) { return pad_word(v * 64 + i); }, lane, ps_lo, ps_hi);
      if (act_lo) l_lo = __fadd_rn(__fmul_rn(l_lo, c_lo), ps_lo);
      if (act_hi) l_hi = __fadd_rn(__fmul_rn(l_hi, c_hi), ps_hi);
      // P as the A operand (the prefill warp's pack order).
      load_p(pa, lane, p_word);
    };
    if constexpr (Shape::SPLIT) {
      if (dense) phase_s_sh(std::false_type());
      else phase_s_sh(std::true_type());
    } else if (active) {
      if (dense) phase_s(std::false_type());
      else phase_s(std::true_type());
    }
    if (NB == 3 && !Shape::SPLIT) {
      cp_async_wait<1>();
      __syncthreads();  // V of tile t landed; all are done with K of tile t
      if (more) issue_tile(false, 0, true, kbuf, ring ^ 1);  // kbuf == next_buf(vbuf)
      cp_async_commit();
    }
    auto phase_pv = [&](auto masked_tag) {
      constexpr bool kMasked = decltype(masked_tag)::value;
      const uint16_t* vt = ks + vbuf * KT * LD;
      // o = P·V per pair of 8-wide dim tiles, keys in chunks of 16 in increasing order, from +0;
      // then folded into acc (rows without a key <= pos in this tile keep their acc exactly).
      uint32_t vb[2][4][4];
      auto load_v = [&](int dp, int b) { load_v_frags<LD>(vb[b], vt, dp, lane); };
      if (dp0 < NP) load_v(dp0, 0);  // past hd: zero padding columns, unused
#pragma unroll
      for (int dl = 0; dl < PW; ++dl) {
        const int dp = SH ? dp0 + dl : dl;
        if (dp >= NP || dp * 16 >= hd) break;
        if (dl + 1 < PW && dp + 1 < NP && (dp + 1) * 16 < hd) load_v(dp + 1, (dl + 1) & 1);
        float o[2][4];
        pv_pair(o, pa, vb[dl & 1]);
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float& a = acc[2 * dl + h][e];
            const float na = __fadd_rn(__fmul_rn(a, e < 2 ? f_lo : f_hi), o[h][e]);
            if (!kMasked || (e < 2 ? act_lo : act_hi)) a = na;
          }
      }
    };
    if (active) {
      if (dense) phase_pv(std::false_type());
      else phase_pv(std::true_type());
    }

    // End of a split: hand its state to the merge (here or through the workspace), start afresh.
    if (!more || (SH ? --sh_left == 0 : (t + 1) % p.split_tiles == 0)) {
      const int split = SH ? sh_split : t / p.split_tiles;
      if (pbase >= 0 || !kRegMerge) {
        // kDivideAtEnd: after the CTA's last split, out = acc / l right here, the division
        // the pass after the loop makes of the merged state read back from out, without
        // that round trip through global memory at the end of every decode step.
        const int rr[2] = {r_lo, r_hi};
        const float mm[2] = {m_lo, m_hi}, ll[2] = {l_lo, l_hi};
        float mR[2] = {mR_lo, mR_hi}, lR[2] = {lR_lo, lR_hi};
        auto ws_row = [&](int r) { return p.ws + static_cast<int64_t>(pbase + (split - s_begin) * nrows + r) * (hd + 2); };
        end_split_rows<PW>(pbase >= 0, ws_row, p.out, p.obf, rows, nrows, rr, mm, ll, mR, lR, tq == 0 && (!SH || tid < 32),
                           kDivideAtEnd, !more, kDivideAtEnd && !more, acc, dp0, tq, hd);
        mR_lo = mR[0], mR_hi = mR[1], lR_lo = lR[0], lR_hi = lR[1];
      } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const MergeCoef cf = merge_coef(h ? mR_hi : mR_lo, h ? lR_hi : lR_lo, h ? m_hi : m_lo, h ? l_hi : l_lo);
#pragma unroll
          for (int d = 0; d < (kRegMerge ? 2 * PW : 1); ++d)
#pragma unroll
            for (int e = 0; e < 2; ++e) accR[d][2 * h + e] = merge_elem(cf, accR[d][2 * h + e], acc[d][2 * h + e]);
          if (h) mR_hi = cf.m, lR_hi = cf.l;
          else mR_lo = cf.m, lR_lo = cf.l;
        }
      }
      m_lo = m_hi = kNegInf;
      l_lo = l_hi = 0.0f;
#pragma unroll
      for (int d = 0; d < 2 * PW; ++d)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[d][e] = 0.0f;
      ++sh_split;
      sh_left = p.split_tiles;
    }

    {  // slots of tile t + 2 into tile t's ring entry (read two barriers ago)
      int32_t* dst = slot_s + ring * KT;
#pragma unroll
      for (int k = 0; k < kSlotsPerThread; ++k)
        if (tid + k * NT < KT) dst[tid + k * NT] = pre[k];
    }
    kbuf = next_buf(kbuf);
    vbuf = next_buf(vbuf);
    ring ^= 1;
  }

  if (!kDivideAtEnd && pbase < 0) {  // out = acc / l
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = h ? r_hi : r_lo;
      if (r >= nrows) continue;
      const float l = h ? lR_hi : lR_lo;
      float* o = p.out + out_row(r);
#pragma unroll
      for (int d = 0; d < 2 * PW; ++d) {
        const int c = 8 * (2 * dp0 + d) + 2 * tq;
        if (c >= hd) continue;
        float2 v;
        if (kRegMerge) v = make_float2(accR[kRegMerge ? d : 0][2 * h], accR[kRegMerge ? d : 0][2 * h + 1]);
        else v = *reinterpret_cast<const float2*>(o + c);
        v = make_float2(__fdiv_rn(v.x, l), __fdiv_rn(v.y, l));
        *reinterpret_cast<float2*>(o + c) = v;
        if (p.obf) *reinterpret_cast<uint32_t*>(p.obf + out_bf16_row(r) + c) = pack_bf16(v.x, v.y);
      }
    }
  }
}

// ---- decode with tiles in parallel --------------------------------------------------------------
// A decode CTA above reduces its tiles one after another: at batch 1 only n_kv_heads CTAs run, and
// each tile's chain of dependent steps (S, the max and sum trees, P·V) is the step's latency,
// about 1.4 µs a tile. attn_wide_kernel gives each of P = 4 groups of four warps one tile of a
// round of P consecutive tiles and keeps the bits of the one-tile-at-a-time kernel:
//   - each group computes its tile's S and row max mt exactly as the SH warps do (same mmas,
//     same trees, through the group's own exchange words and a named barrier);
//   - the groups' mt go through shared memory; every thread then runs the sequential chain of
//     the running max over the round's tiles in order (m' = max(m, mt), c = det_expf(m − m'),
//     f = c where m' != m, rows with no key in the tile untouched): the m before its own tile is
//     the one the sequential kernel has there, so its p = det_expf(s − m'), row sum and P·V
//     (from +0) are the sequential kernel's values;
//   - group 0 then folds the round's tiles in order, l = l·c + psum and acc = acc·f + o, the
//     same operations on the same values; splits end on round boundaries (P divides the split's
//     tiles) and are merged by the SH code.
// Used for head_dim 128 where the grid is at most one CTA per SM (decode at small batch).
constexpr int kWideGroups = 4;
struct WideShape {
  static constexpr int HD = 128, LD = HD + 8, P = kWideGroups, NT = P * 128;
  static constexpr int PW = HD / 16 / 4;  // pairs of 8-wide P·V column tiles per warp
  static constexpr int OR = 2 * PW * 4;   // P·V output floats per lane
  static constexpr size_t q_off = 0;
  static constexpr size_t kv_off = q_off + 16 * LD * 2;
  static constexpr size_t slot_off = kv_off + size_t(P) * 2 * KT * LD * 2;
  static constexpr size_t xmax_off = slot_off + size_t(P) * KT * 4;
  static constexpr size_t xsum_off = xmax_off + size_t(P) * 256 * 4;
  static constexpr size_t xp_off = xsum_off + size_t(P) * 256 * 4;
  static constexpr size_t mt_off = xp_off + size_t(P) * 512 * 4;
  static constexpr size_t ps_off = mt_off + size_t(2) * P * 16 * 4;
  static constexpr size_t fold_off = ps_off + size_t(2) * P * 16 * 4;
  static constexpr size_t smem_bytes = fold_off + size_t(P) * 4 * OR * 32 * 4;
};

__device__ __forceinline__ void group_sync(int id) { asm volatile("bar.sync %0, 128;\n" ::"r"(id) : "memory"); }

// ROPE (decode steps of one token per sequence, each row in one CTA): the kernel also does what
// rope_kv_write would have done before it, with its arithmetic and roundings, so the same bits.
// The item's token is the only new one of its sequence, so its row (key max_pos) is the only key
// this step writes: the copies of every other key of the first round are issued before pdl_wait
// (written in earlier steps, and by no kernel of this one), and the new row, rotated from the
// q/k/v GEMM's output after the wait, goes into the tile buffer and the cache from registers.
// q is rotated as it goes into shared memory; the rotated q and k are also stored back (q of
// rows split over several CTAs by the merge kernel, which runs after all of them have read it).
constexpr int kSlotNew = -2;  // ROPE: the tile row of this step's key (no copy: written directly)
template <bool ROPE>
__global__ void __launch_bounds__(WideShape::NT, 1) attn_wide_kernel(const Params p, const int32_t* __restrict__ items) {
  pdl_launch_dependents();
  using W = WideShape;
  constexpr int LD = W::LD, P = W::P, PW = W::PW, HD = W::HD, NC = HD / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem_raw + W::q_off);
  uint16_t* kvs = reinterpret_cast<uint16_t*>(smem_raw + W::kv_off);
  int32_t* slots_all = reinterpret_cast<int32_t*>(smem_raw + W::slot_off);
  uint32_t* xmax_all = reinterpret_cast<uint32_t*>(smem_raw + W::xmax_off);
  uint32_t* xsum_all = reinterpret_cast<uint32_t*>(smem_raw + W::xsum_off);
  uint32_t* xp_all = reinterpret_cast<uint32_t*>(smem_raw + W::xp_off);
  float* mts = reinterpret_cast<float*>(smem_raw + W::mt_off);   // [2][P][16]
  float* pss = reinterpret_cast<float*>(smem_raw + W::ps_off);   // [2][P][16]
  float* fold = reinterpret_cast<float*>(smem_raw + W::fold_off);  // [P][4][OR][32]

  const int32_t* item = items + static_cast<int64_t>(blockIdx.x) * kAttnRecordInts;
  const int tok0 = item[0], kvh = item[1], r0 = item[2], nrows = item[3], max_pos = item[4];
  const int s_begin = item[5], s_end = item[6], pbase = item[7];
  const int tid = threadIdx.x, grp = tid >> 7, gt = tid & 127, w = gt >> 5, lane = tid & 31;
  const int g = lane >> 2, tq = lane & 3, j0 = 2 * w, dp0 = w * PW;
  constexpr int hd = HD;  // the launcher runs this kernel only where p.head_dim == HD
  const int G = p.group;
  const int32_t* table = p.tables + p.table_off[tok0];
  const uint16_t* kbase = p.kc + static_cast<int64_t>(kvh) * hd;
  const uint16_t* vbase = p.vc + static_cast<int64_t>(kvh) * hd;
  const int t_begin = s_begin * p.split_tiles;
  const int t_end = min(s_end * p.split_tiles, max_pos / KT + 1);
  uint16_t* kt = kvs + (2 * grp) * KT * LD;
  uint16_t* vt = kvs + (2 * grp + 1) * KT * LD;
  int32_t* slots = slots_all + grp * KT;
  uint32_t* xmax = xmax_all + grp * 256;  // the group's exchange words, as the SH CTA's
  uint32_t* xsum = xsum_all + grp * 256;
  uint32_t* xp = xp_all + grp * 512;
  auto xmax_word = [&](int v, int i) { return xmax + v * 64 + i; };
  auto xsum_word = [&](int v, int i) { return xsum + v * 64 + i; };
  auto xp_word = [&](int i) { return xp + i; };

  const RunRows rows{tok0, kvh, r0, G, p.group_shift, p.n_heads, hd, p.obf_ld};
  auto run_tok = [&](int rr) { return rows.tok(rr); };
  auto run_head = [&](int rr) { return rows.head(rr); };
  auto slot_of = [&](int key) -> int {
    if (key > max_pos) return -1;
    if (ROPE && key == max_pos) return kSlotNew;
    if (p.bs_shift >= 0) return table[key >> p.bs_shift] * p.block_size + (key & (p.block_size - 1));
    return table[key / p.block_size] * p.block_size + key % p.block_size;
  };
  // This lane's rows g and g + 8 (every warp holds all 16 rows, as the SH warps do).
  const int r_lo = g, r_hi = g + 8;
  auto row_pos = [&](int r) { return r < nrows ? p.pos[tok0 + run_tok(r0 + r)] : -1; };
  int pos_lo = row_pos(r_lo), pos_hi = row_pos(r_hi);
  // Slots of this group's first tile, then q (all loads before the stores that use them).
  const int slot0 = gt < KT && t_begin + grp < t_end ? slot_of((t_begin + grp) * KT + gt) : -1;
  // The copy issue of one tile into this group's buffers (16-byte copies, zeros for keys past
  // max_pos; ROPE: none for the new row).
  const uint32_t kv_sh = static_cast<uint32_t>(__cvta_generic_to_shared(kvs));
  const int kv_row_bytes = p.n_kv_heads * hd * 2;
  auto issue = [&]() {
    constexpr int CPR = HD / 8, RSTEP = 128 / CPR;
    const int cc = 8 * (gt % CPR), cr = gt / CPR;
    const char* ksrc = reinterpret_cast<const char*>(kbase + cc);
    const char* vsrc = reinterpret_cast<const char*>(vbase + cc);
    const uint32_t dk = kv_sh + 2 * ((2 * grp) * KT * LD + cr * LD + cc), dv = dk + 2 * KT * LD;
#pragma unroll
    for (int k = 0; k < KT / RSTEP; ++k) {
      const int slot = slots[cr + k * RSTEP];
      if (ROPE && slot == kSlotNew) continue;
      const uint64_t off = uint64_t{static_cast<uint32_t>(max(slot, 0))} * static_cast<uint32_t>(kv_row_bytes);
      const uint32_t dr = 2 * k * RSTEP * LD;
      cp_async_s<16>(dk + dr, ksrc + off, slot < 0);
      cp_async_s<16>(dv + dr, vsrc + off, slot < 0);
    }
    cp_async_commit();
  };
  // ROPE: this thread's q words (row qr, columns qc, qc + 1 and their partners qc + 64, qc + 65)
  // and their cos/sin; the owner of the new key's tile (the group that reduces it) takes the new
  // k/v row, one pair (gt, gt + 64) per thread gt < 64.
  constexpr int HALF = HD / 2;
  const int qr = tid >> 5, qc = 2 * (tid & 31);
  int64_t q_at = -1;
  float2 qcos = make_float2(1.0f, 1.0f), qsin = make_float2(0.0f, 0.0f);
  const int tile_new = max_pos / KT;
  const bool kv_thread = ROPE && t_begin <= tile_new && tile_new < t_end &&
                         grp == (tile_new - t_begin) % P && gt < HALF;
  float kcos = 1.0f, ksin = 0.0f;
  int64_t new_row = 0;
  if constexpr (ROPE) {
    if (qr < nrows) {
      const int rr = r0 + qr, t = tok0 + run_tok(rr);
      q_at = (static_cast<int64_t>(t) * p.n_heads + run_head(rr)) * hd + qc;
      const int64_t e = static_cast<int64_t>(p.pos[t]) * HALF + qc;
      qcos = *reinterpret_cast<const float2*>(p.rope.cos + e);
      qsin = *reinterpret_cast<const float2*>(p.rope.sin + e);
    }
    if (kv_thread) {
      kcos = p.rope.cos[static_cast<int64_t>(max_pos) * HALF + gt];
      ksin = p.rope.sin[static_cast<int64_t>(max_pos) * HALF + gt];
      new_row = static_cast<int64_t>(p.rope.slots[tok0]) * p.n_kv_heads * hd + static_cast<int64_t>(kvh) * hd;
    }
    if (gt < KT) slots[gt] = slot0;
    group_sync(1 + grp);
    if (t_begin + grp < t_end) issue();  // the first round's cached keys
  }
  // Everything above reads only the step's metadata (the item, positions, block tables), the
  // RoPE tables and (ROPE) cache rows of earlier steps: copies upload the first two before the
  // step's first kernel, and no kernel writes any of them, so they load while the kernel before
  // this one still runs. q, k, v and this step's cache rows are read after the wait.
  pdl_wait();
  uint16_t new_k[2] = {0, 0}, new_v[2] = {0, 0};  // ROPE, kv_thread: the new row's bf16 pairs
  if constexpr (ROPE) {
    float2 lo = make_float2(0.0f, 0.0f), hi = make_float2(0.0f, 0.0f);
    if (q_at >= 0) {
      const float2 x0 = *reinterpret_cast<const float2*>(p.rope.q + q_at);
      const float2 x1 = *reinterpret_cast<const float2*>(p.rope.q + q_at + HALF);
      lo.x = __fsub_rn(__fmul_rn(x0.x, qcos.x), __fmul_rn(x1.x, qsin.x));
      hi.x = __fadd_rn(__fmul_rn(x1.x, qcos.x), __fmul_rn(x0.x, qsin.x));
      lo.y = __fsub_rn(__fmul_rn(x0.y, qcos.y), __fmul_rn(x1.y, qsin.y));
      hi.y = __fadd_rn(__fmul_rn(x1.y, qcos.y), __fmul_rn(x0.y, qsin.y));
    }
    float k0 = 0.0f, k1 = 0.0f, v0 = 0.0f, v1 = 0.0f;
    float* krow = p.rope.k + static_cast<int64_t>(tok0) * p.n_kv_heads * hd + static_cast<int64_t>(kvh) * hd;
    const float* vrow = p.rope.v + static_cast<int64_t>(tok0) * p.n_kv_heads * hd + static_cast<int64_t>(kvh) * hd;
    if (kv_thread) k0 = krow[gt], k1 = krow[gt + HALF], v0 = vrow[gt], v1 = vrow[gt + HALF];
    *reinterpret_cast<uint32_t*>(qs + qr * LD + qc) = pack_bf16(lo.x, lo.y);
    *reinterpret_cast<uint32_t*>(qs + qr * LD + qc + HALF) = pack_bf16(hi.x, hi.y);
    // Stored back where this CTA is its rows' only one (else the merge kernel stores it, after
    // every CTA has read q).
    if (q_at >= 0 && pbase < 0) {
      *reinterpret_cast<float2*>(p.rope.q + q_at) = lo;
      *reinterpret_cast<float2*>(p.rope.q + q_at + HALF) = hi;
    }
    if (kv_thread) {
      const float y0 = __fsub_rn(__fmul_rn(k0, kcos), __fmul_rn(k1, ksin));
      const float y1 = __fadd_rn(__fmul_rn(k1, kcos), __fmul_rn(k0, ksin));
      new_k[0] = __bfloat16_as_ushort(__float2bfloat16_rn(y0));
      new_k[1] = __bfloat16_as_ushort(__float2bfloat16_rn(y1));
      new_v[0] = __bfloat16_as_ushort(__float2bfloat16_rn(v0));
      new_v[1] = __bfloat16_as_ushort(__float2bfloat16_rn(v1));
      krow[gt] = y0, krow[gt + HALF] = y1;
      p.rope.k_cache[new_row + gt] = new_k[0], p.rope.k_cache[new_row + gt + HALF] = new_k[1];
      p.rope.v_cache[new_row + gt] = new_v[0], p.rope.v_cache[new_row + gt + HALF] = new_v[1];
    }
  } else {
    constexpr int QN = 16 * (HD / 2);  // float2 words
    static_assert(QN % W::NT == 0, "q words per thread");
    float2 qv[QN / W::NT];
#pragma unroll
    for (int k = 0; k < QN / W::NT; ++k) {
      const int i = tid + k * W::NT, r = i / (HD / 2), c = 2 * (i - r * (HD / 2));
      qv[k] = make_float2(0.0f, 0.0f);
      if (r < nrows) {
        const int rr = r0 + r;
        const int64_t row = static_cast<int64_t>(tok0 + run_tok(rr)) * p.n_heads + run_head(rr);
        qv[k] = *reinterpret_cast<const float2*>(p.q + row * hd + c);
      }
    }
#pragma unroll
    for (int k = 0; k < QN / W::NT; ++k) {
      const int i = tid + k * W::NT, r = i / (HD / 2), c = 2 * (i - r * (HD / 2));
      *reinterpret_cast<uint32_t*>(qs + r * LD + c) = pack_bf16(qv[k].x, qv[k].y);
    }
  }
  int warp_last = max(pos_lo, pos_hi);
#pragma unroll
  for (int o = 16; o >= 1; o >>= 1) warp_last = max(warp_last, __shfl_xor_sync(0xffffffffu, warp_last, o));
  if (r_lo >= nrows) pos_lo = warp_last;
  if (r_hi >= nrows) pos_hi = warp_last;
  if (!ROPE && gt < KT) slots[gt] = slot0;

  // The split's state (every thread: m; group 0: l and acc) and the merge of the splits before.
  float m_lo = kNegInf, m_hi = kNegInf, l_lo = 0.0f, l_hi = 0.0f;
  float acc[2 * PW][4];
#pragma unroll
  for (int d = 0; d < 2 * PW; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[d][e] = 0.0f;
  float mR_lo = kNegInf, mR_hi = kNegInf, lR_lo = 0.0f, lR_hi = 0.0f;

  __syncthreads();  // q and the first slots are in shared memory
  int sh_split = s_begin, sh_left = p.split_tiles, par = 0;
  for (int tb = t_begin; tb < t_end; tb += P, par ^= 1) {
    const int t = tb + grp;
    const bool valid = t < t_end;  // the valid tiles of a round are a prefix of its groups
    const int p0 = t * KT;
    float mt_lo = 0.0f, mt_hi = 0.0f, s[2][4];
    if (valid) {
      if (!ROPE || tb != t_begin) issue();  // (ROPE: the first round's went out before the wait)
      cp_async_wait<0>();
      if (ROPE && kv_thread && t == tile_new) {  // the new row, from registers
        uint16_t* kr = kt + (max_pos - p0) * LD;
        uint16_t* vr = vt + (max_pos - p0) * LD;
        kr[gt] = new_k[0], kr[gt + HALF] = new_k[1];
        vr[gt] = new_v[0], vr[gt + HALF] = new_v[1];
      }
      group_sync(1 + grp);  // this group's K and V landed
      // S for keys 16w..16w + 15 of the tile (the SH warp's n-tiles j0, j0 + 1).
      warp_s<NC, LD>(s, qs, kt, w, lane, hd);
      scale_rows<true>(s, p0, j0, tq, pos_lo, pos_hi, p.scale);
      xmax[w * 64 + lane] = __float_as_uint(pair_subtree(s, 0, max_sel));
      xmax[w * 64 + 32 + lane] = __float_as_uint(pair_subtree(s, 1, max_sel));
      group_sync(1 + grp);
      finish_rows<4>(max_sel, xmax_word, lane, mt_lo, mt_hi);
      if (w == 0 && tq == 0) mts[(par * P + grp) * 16 + g] = mt_lo, mts[(par * P + grp) * 16 + g + 8] = mt_hi;
    }
    __syncthreads();  // every group's row maxima
    // The running max over the round's tiles in order, as the sequential kernel updates it.
    struct Step {
      float mn, c, f;
      bool act;
    };
    auto step = [&](float m, float mt, int tile, int pos) {
      Step st;
      st.act = tile * KT <= pos;
      st.mn = max_sel(m, mt);
      st.c = st.act ? det_expf(__fsub_rn(m, st.mn)) : 1.0f;
      st.f = st.act && st.mn != m ? st.c : 1.0f;
      return st;
    };
    float ml = m_lo, mh = m_hi;
    float o_reg[2 * PW][4];
    if (valid) {
      for (int j = 0; j < grp; ++j) {  // the max before this group's tile
        const float a = mts[(par * P + j) * 16 + g], b = mts[(par * P + j) * 16 + g + 8];
        if ((tb + j) * KT <= pos_lo) ml = max_sel(ml, a);
        if ((tb + j) * KT <= pos_hi) mh = max_sel(mh, b);
      }
      const float mn_lo = max_sel(ml, mt_lo), mn_hi = max_sel(mh, mt_hi);
      // p and its row sum (the SH trees), bf16(p) as the A fragments of P·V.
      exp_rows<true>(s, p0, j0, tq, pos_lo, pos_hi, mn_lo, mn_hi);
      xsum[w * 64 + lane] = __float_as_uint(pair_subtree(s, 0, add_rn));
      xsum[w * 64 + 32 + lane] = __float_as_uint(pair_subtree(s, 1, add_rn));
      store_p(s, j0, lane, xp_word);
      group_sync(1 + grp);
      float ps_lo, ps_hi;
      finish_rows<4>(add_rn, xsum_word, lane, ps_lo, ps_hi);
      if (w == 0 && tq == 0) pss[(par * P + grp) * 16 + g] = ps_lo, pss[(par * P + grp) * 16 + g + 8] = ps_hi;
      uint32_t pa[4][4];
      load_p(pa, lane, xp_word);
      // o = P·V for this warp's column pairs (not folded yet).
#pragma unroll
      for (int dl = 0; dl < PW; ++dl) {
        uint32_t vb[4][4];
        load_v_frags<LD>(vb, vt, dp0 + dl, lane);
        float o[2][4];
        pv_pair(o, pa, vb);
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int e = 0; e < 4; ++e) o_reg[2 * dl + h][e] = o[h][e];
      }
      if (grp > 0) {
#pragma unroll
        for (int d = 0; d < 2 * PW; ++d)
#pragma unroll
          for (int e = 0; e < 4; ++e) fold[((grp * 4 + w) * W::OR + 4 * d + e) * 32 + lane] = o_reg[d][e];
      }
    }
    __syncthreads();  // every group's row sums and P·V
    // The round's tiles in order: the max (every thread), l and acc (group 0).
    for (int j = 0; j < P && tb + j < t_end; ++j) {
      const float a = mts[(par * P + j) * 16 + g], b = mts[(par * P + j) * 16 + g + 8];
      const Step lo = step(m_lo, a, tb + j, pos_lo), hi = step(m_hi, b, tb + j, pos_hi);
      if (grp == 0) {
        if (lo.act) l_lo = __fadd_rn(__fmul_rn(l_lo, lo.c), pss[(par * P + j) * 16 + g]);
        if (hi.act) l_hi = __fadd_rn(__fmul_rn(l_hi, hi.c), pss[(par * P + j) * 16 + g + 8]);
#pragma unroll
        for (int d = 0; d < 2 * PW; ++d)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float o = j == 0 ? o_reg[d][e] : fold[((j * 4 + w) * W::OR + 4 * d + e) * 32 + lane];
            const float na = __fadd_rn(__fmul_rn(acc[d][e], e < 2 ? lo.f : hi.f), o);
            if (e < 2 ? lo.act : hi.act) acc[d][e] = na;
          }
      }
      if (lo.act) m_lo = lo.mn;
      if (hi.act) m_hi = hi.mn;
    }
    // End of a split (P divides its tiles, so rounds never straddle one): as the SH CTA.
    const bool more = tb + P < t_end;
    sh_left -= P;
    if (!more || sh_left == 0) {
      if (grp == 0) {
        const int split = sh_split, rr[2] = {r_lo, r_hi};
        const float mm[2] = {m_lo, m_hi}, ll[2] = {l_lo, l_hi};
        float mR[2] = {mR_lo, mR_hi}, lR[2] = {lR_lo, lR_hi};
        auto ws_row = [&](int r) { return p.ws + static_cast<int64_t>(pbase + (split - s_begin) * nrows + r) * (hd + 2); };
        end_split_rows<PW>(pbase >= 0, ws_row, p.out, p.obf, rows, nrows, rr, mm, ll, mR, lR, tq == 0 && tid < 32, true,
                           !more, !more, acc, dp0, tq, hd);
        mR_lo = mR[0], mR_hi = mR[1], lR_lo = lR[0], lR_hi = lR[1];
        l_lo = l_hi = 0.0f;
#pragma unroll
        for (int d = 0; d < 2 * PW; ++d)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[d][e] = 0.0f;
      }
      m_lo = m_hi = kNegInf;
      ++sh_split;
      sh_left = p.split_tiles;
    }
    // The next round's slots (each group's next tile) into this group's ring entry.
    if (more) {
      const int tn = tb + P + grp;
      const int sl = gt < KT && tn < t_end ? slot_of(tn * KT + gt) : -1;
      if (gt < KT) slots[gt] = sl;  // (the round's copies read theirs before its first barrier)
      group_sync(1 + grp);
    }
  }
}

// ---- the merge kernel ------------------------------------------------------------------------------
// One warp per row: record {token, head, first partial, stride, count}; partials first,
// first + stride, ... merged in increasing split order from the empty state; out = acc / l.
constexpr int kMergeWarps = 4;
__global__ void __launch_bounds__(32 * kMergeWarps) attn_merge_kernel(const Params p, const int32_t* __restrict__ recs, int n) {
  pdl_launch_dependents();
  pdl_wait();
  const int w = blockIdx.x * kMergeWarps + (threadIdx.x >> 5);
  if (w >= n) return;
  const int lane = threadIdx.x & 31;
  const int32_t* rec = recs + static_cast<int64_t>(w) * kAttnRecordInts;
  const int tok = rec[0], head = rec[1], first = rec[2], stride = rec[3], count = rec[4];
  const int hd = p.head_dim;
  if (p.rope.q) {  // RoPE inside the attention: this row's rotated q (rope_kernel's arithmetic)
    float* qrow = p.rope.q + (static_cast<int64_t>(tok) * p.n_heads + head) * hd;
    const int half = hd / 2;
    const int64_t e = static_cast<int64_t>(p.pos[tok]) * half;
    for (int i = lane; i < half; i += 32) {
      const float x0 = qrow[i], x1 = qrow[i + half], c = p.rope.cos[e + i], sn = p.rope.sin[e + i];
      qrow[i] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, sn));
      qrow[i + half] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, sn));
    }
  }
  constexpr int kPer = kAttnTensorCoreMaxHeadDim / 64;  // float2 per lane
  float acc[kPer][2];
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i][0] = acc[i][1] = 0.0f;
  float m = kNegInf, l = 0.0f;
  for (int k = 0; k < count; ++k) {
    const float* src = p.ws + static_cast<int64_t>(first + k * stride) * (hd + 2);
    const MergeCoef cf = merge_coef(m, l, src[0], src[1]);
    if (cf.kind != 0) {
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int c = 2 * lane + 64 * i;
        if (c >= hd) continue;
        const float2 v = *reinterpret_cast<const float2*>(src + 2 + c);
        acc[i][0] = merge_elem(cf, acc[i][0], v.x);
        acc[i][1] = merge_elem(cf, acc[i][1], v.y);
      }
    }
    m = cf.m, l = cf.l;
  }
  float* o = p.out + (static_cast<int64_t>(tok) * p.n_heads + head) * hd;
  uint16_t* ob = p.obf ? p.obf + static_cast<int64_t>(tok) * p.obf_ld + static_cast<int64_t>(head) * hd : nullptr;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int c = 2 * lane + 64 * i;
    if (c >= hd) continue;
    const float2 v = make_float2(__fdiv_rn(acc[i][0], l), __fdiv_rn(acc[i][1], l));
    *reinterpret_cast<float2*>(o + c) = v;
    if (ob) *reinterpret_cast<uint32_t*>(ob + c) = pack_bf16(v.x, v.y);
  }
}

// ---- head_dim > 256: one warp per row ---------------------------------------------------------------
// Lane l holds elements e = l + 32i of q (rounded to bf16) and of acc. Keys 0..pos in tiles of
// 16 aligned to absolute positions, in increasing order; per tile of n keys:
//   s_j = warp_sum(fma chain over the lane's elements in increasing i, from +0) · scale
//   mt = max_j s_j;  m' = max(m, mt);  c = det_expf(m − m');  p_j = det_expf(s_j − m')
//   l = l·c + (((p_0 + p_1) + p_2) + ...);  acc = acc·c (skipped when m' == m), then
//   acc = fma(p_j, v_j, acc) for j in order;  out = acc / l.
// Nothing here depends on the batch, the chunking, the block placement or the grid.
constexpr int kSimpleWarps = 4;
constexpr int kSimpleTile = 16;
__device__ __forceinline__ float bf16_bits(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }

template <int PER>
__global__ void __launch_bounds__(32 * kSimpleWarps) attn_simple_kernel(const Params p, int64_t n_rows) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t task = static_cast<int64_t>(blockIdx.x) * kSimpleWarps + (threadIdx.x >> 5);
  if (task >= n_rows) return;
  const int lane = threadIdx.x & 31;
  const int64_t t = task / p.n_heads;
  const int h = static_cast<int>(task % p.n_heads);
  const int hd = p.head_dim;
  const int64_t row = static_cast<int64_t>(p.n_kv_heads) * hd;
  const int64_t head_off = static_cast<int64_t>(h / p.group) * hd;
  const int32_t* table = p.tables + p.table_off[t];
  const int32_t last = p.pos[t];
  float qv[PER], acc[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const int e = lane + 32 * i;
    qv[i] = e < hd ? __bfloat162float(__float2bfloat16_rn(p.q[task * hd + e])) : 0.0f;
    acc[i] = 0.0f;
  }
  float m = kNegInf, l = 0.0f;
  for (int32_t t0 = 0; t0 <= last; t0 += kSimpleTile) {
    const int n = min(kSimpleTile, last + 1 - t0);
    int64_t off[kSimpleTile];
    float s[kSimpleTile];
#pragma unroll
    for (int j = 0; j < kSimpleTile; ++j) {
      const int key = t0 + j;
      off[j] = j < n ? (static_cast<int64_t>(table[key / p.block_size]) * p.block_size + key % p.block_size) * row + head_off : 0;
      float part = 0.0f;
      if (j < n) {
#pragma unroll
        for (int i = 0; i < PER; ++i) {
          const int e = lane + 32 * i;
          if (e < hd) part = __fmaf_rn(qv[i], bf16_bits(p.kc[off[j] + e]), part);
        }
      }
      s[j] = part;
    }
    float mt = kNegInf;
#pragma unroll
    for (int j = 0; j < kSimpleTile; ++j) {
      s[j] = __fmul_rn(warp_sum(s[j]), p.scale);
      if (j < n) mt = max_sel(mt, s[j]);
    }
    const float m_new = max_sel(m, mt);
    const float c = det_expf(__fsub_rn(m, m_new));
    float psum = 0.0f;
#pragma unroll
    for (int j = 0; j < kSimpleTile; ++j) {
      s[j] = j < n ? det_expf(__fsub_rn(s[j], m_new)) : 0.0f;
      if (j < n) psum = __fadd_rn(psum, s[j]);
    }
    l = __fadd_rn(__fmul_rn(l, c), psum);
    if (m_new != m) {
#pragma unroll
      for (int i = 0; i < PER; ++i) acc[i] = __fmul_rn(acc[i], c);
    }
#pragma unroll
    for (int j = 0; j < kSimpleTile; ++j) {
      if (j >= n) continue;
#pragma unroll
      for (int i = 0; i < PER; ++i) {
        const int e = lane + 32 * i;
        if (e < hd) acc[i] = __fmaf_rn(s[j], bf16_bits(p.vc[off[j] + e]), acc[i]);
      }
    }
    m = m_new;
  }
  float* out = p.out + task * hd;
  uint16_t* ob = p.obf ? p.obf + t * p.obf_ld + static_cast<int64_t>(h) * hd : nullptr;
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const int e = lane + 32 * i;
    if (e >= hd) continue;
    const float v = __fdiv_rn(acc[i], l);
    out[e] = v;
    if (ob) ob[e] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
}

__global__ void kv_write_bf16_kernel(uint16_t* k_cache, uint16_t* v_cache, const float* __restrict__ k,
                                     const float* __restrict__ v, int64_t n, int64_t row,
                                     const int32_t* __restrict__ slots) {
  pdl_launch_dependents();
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / row, e = idx % row;
    const int64_t dst = static_cast<int64_t>(slots[t]) * row + e;
    k_cache[dst] = __bfloat16_as_ushort(__float2bfloat16_rn(k[idx]));
    v_cache[dst] = __bfloat16_as_ushort(__float2bfloat16_rn(v[idx]));
  }
}

// ---- launchers -------------------------------------------------------------------------------------
template <int HDP, int NW, int NB, bool SH = false>
void launch_tc(const Params& p, const int32_t* items, int n, cudaStream_t stream) {
  if (n <= 0) return;
  const size_t smem = TcShape<HDP, NW, NB, SH>::smem_bytes;
  opt_in_dynamic_smem<attn_tc_kernel<HDP, NW, NB, SH>>(smem, "attention smem opt-in");
  launch_pdl(attn_tc_kernel<HDP, NW, NB, SH>, dim3(static_cast<unsigned>(n)), dim3(NW * 32), smem, stream,
             "attention launch", p, items);
}

template <bool ROPE>
void launch_wide(const Params& p, const int32_t* items, int n, cudaStream_t stream) {
  constexpr size_t smem = WideShape::smem_bytes;
  opt_in_dynamic_smem<attn_wide_kernel<ROPE>>(smem, "attention smem opt-in");
  launch_pdl(attn_wide_kernel<ROPE>, dim3(static_cast<unsigned>(n)), dim3(WideShape::NT), smem, stream,
             ROPE ? "attention (tiles in parallel, RoPE) launch" : "attention (tiles in parallel) launch", p, items);
  ++g_wide_launches;
  if (ROPE) ++g_rope_launches;
}

int sm_count() {
  static std::atomic<int> counts[64] = {};
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  int n = counts[dev & 63].load();
  if (n == 0) {
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "SM count");
    counts[dev & 63] = n;
  }
  return n;
}

// Decode CTAs (items of <= 16 rows): four warps sharing the rows (SH); four tile buffers up to
// two CTAs per SM, three beyond. On H100 (32/8 heads, head_dim 128) this measured 1.7-1.9x faster
// than one-warp CTAs at batch 1-8 and 1.15-1.3x at batch 64-256 (one warp per CTA was slower at
// every batch measured, so it is not kept). Splitting S over the four warps then gave another
// 1.1-1.3x at batch 1-8 and 1.1x at batch 64-256; eight warps per decode CTA (one n-tile each)
// were slower at every batch (1.1x at batch 1, about 1.7x at batch >= 64). Fewer instructions
// per decode tile (copy addresses set up once, no integer division per tile or key) and a
// prologue that issues its loads together then took batch 1 from 13.8 to 9.1 us at 160 keys and
// from 27.9 to 16.0 us at 512 (batch 8 at 512: 28.3 to 16.3; batch 64 and 256: 1-5%). Prefill
// CTAs: three buffers, four for head_dim 256. A schedule only: the bits are the same.
// The four-tiles kernel takes the plan's small items.
bool wide_plan(const AttentionPlan& plan) {
  return plan.head_dim == WideShape::HD && (plan.split / kAttnKeyTile) % kWideGroups == 0 && plan.n_small > 0 &&
         plan.n_small <= sm_count() && g_wide.load();
}

template <int HDP>
void launch_both(const Params& p, const AttentionPlan& plan, const int32_t* work, cudaStream_t stream) {
  if (HDP == WideShape::HD && p.vec16 && wide_plan(plan)) {
    launch_wide<false>(p, work, plan.n_small, stream);
  } else if (plan.n_small <= 2 * sm_count()) launch_tc<HDP, 4, 4, true>(p, work, plan.n_small, stream);
  else launch_tc<HDP, 4, 3, true>(p, work, plan.n_small, stream);
  launch_tc<HDP, 4, HDP == 256 ? 4 : 3>(p, work + static_cast<int64_t>(plan.n_small) * kAttnRecordInts,
                                         plan.n_large, stream);
}

}  // namespace

void set_attention_split(int keys) {
  DETINFER_CHECK(keys > 0 && keys % kAttnKeyTile == 0, "attention split ", keys,
                 " is not a positive multiple of ", kAttnKeyTile);
  g_split = keys;
}
int attention_split() { return g_split.load(); }
void set_attention_tiles_in_parallel(bool enabled) { g_wide = enabled; }
void set_attention_rope_fusion(bool enabled) { g_rope_fusion = enabled; }
int64_t attention_rope_launches() { return g_rope_launches.load(); }
// Only items of the four-tiles kernel (no large items), and the item's token the only new key
// of its sequence.
bool attention_fuses_rope(const AttentionPlan& plan) {
  return g_rope_fusion.load() && plan.one_token_per_sequence && plan.n_large == 0 && plan.n_simple == 0 &&
         wide_plan(plan);
}
int64_t attention_tiles_in_parallel_launches() { return g_wide_launches.load(); }

void kv_write_bf16(uint16_t* k_cache, uint16_t* v_cache, const float* k, const float* v, int64_t T,
                   int64_t row, const int32_t* slots, cudaStream_t stream) {
  const int64_t n = T * row;
  if (n <= 0) return;
  const int64_t b = (n + 255) / 256;
  kv_write_bf16_kernel<<<static_cast<unsigned>(b < 65536 ? b : 65536), 256, 0, stream>>>(k_cache, v_cache, k, v, n, row, slots);
  check(cudaGetLastError(), "kv_write_bf16 launch");
}

AttentionPlan plan_attention(const int32_t* pos, const int32_t* seq, int64_t T, int n_heads,
                             int n_kv_heads, int head_dim, AttentionSchedule schedule) {
  DETINFER_CHECK(T >= 0, "attention plan: T = ", T);
  DETINFER_CHECK(n_kv_heads > 0 && n_heads > 0 && n_heads % n_kv_heads == 0, "attention plan: n_heads ",
                 n_heads, " is not a positive multiple of n_kv_heads ", n_kv_heads);
  DETINFER_CHECK(head_dim > 0 && head_dim % 2 == 0 && head_dim <= kAttnPagedMaxHeadDim,
                 "attention plan: head_dim ", head_dim, " is not even in 2..", kAttnPagedMaxHeadDim);
  DETINFER_CHECK(T == 0 || (pos && seq), "attention plan: null pos or seq");
  AttentionPlan plan;
  plan.split = attention_split();
  plan.T = T, plan.n_heads = n_heads, plan.n_kv_heads = n_kv_heads, plan.head_dim = head_dim;
  for (int64_t t = 0; t < T; ++t)
    DETINFER_CHECK(pos[t] >= 0, "attention plan: token ", t, " has position ", pos[t]);
  if (head_dim > kAttnTensorCoreMaxHeadDim) {
    plan.n_simple = T * n_heads;
    return plan;
  }
  DETINFER_CHECK(T * n_heads < (int64_t{1} << 31), "attention plan: ", T, " tokens × ", n_heads,
                 " heads is more than one launch takes");
  const int G = n_heads / n_kv_heads;
  // A CTA's rows: whole tokens' groups up to 64 rows (groups larger than 64: 64 rows of one token).
  const int piece = G <= 64 ? (64 / G) * G : 64;
  struct Rec {
    int32_t v[kAttnRecordInts];
    int64_t tiles;  // work, for ordering only
  };
  std::vector<Rec> small, large, merges;
  int64_t n_partials = 0;
  const int64_t split = plan.split;
  for (int64_t i = 0; i < T;) {
    int64_t j = i + 1;
    while (j < T && seq[j] == seq[i]) ++j;
    const int64_t ntok = j - i, R = ntok * G;
    for (int kvh = 0; kvh < n_kv_heads; ++kvh)
      for (int64_t r0 = 0; r0 < R; r0 += piece) {
        const int64_t nrows = std::min<int64_t>(piece, R - r0);
        int32_t max_pos = 0;
        for (int64_t t = i + r0 / G; t <= i + (r0 + nrows - 1) / G; ++t) max_pos = std::max(max_pos, pos[t]);
        const int64_t ntiles = max_pos / kAttnKeyTile + 1;
        const int32_t nsplits = static_cast<int32_t>(max_pos / split + 1);
        const bool partial = schedule == AttentionSchedule::kSplit ||
                             (schedule == AttentionSchedule::kAuto && ntok == 1 && nsplits > 1);
        std::vector<Rec>& list = nrows <= 16 ? small : large;
        const int32_t base[5] = {static_cast<int32_t>(i), kvh, static_cast<int32_t>(r0),
                                 static_cast<int32_t>(nrows), max_pos};
        if (!partial) {
          list.push_back({{base[0], base[1], base[2], base[3], base[4], 0, nsplits, -1}, ntiles});
          continue;
        }
        DETINFER_CHECK(n_partials + int64_t{nsplits} * nrows < (int64_t{1} << 31),
                       "attention plan: too many split partials");
        const int32_t pb = static_cast<int32_t>(n_partials);
        n_partials += int64_t{nsplits} * nrows;
        const int64_t tps = split / kAttnKeyTile;
        for (int32_t s = 0; s < nsplits; ++s)
          list.push_back({{base[0], base[1], base[2], base[3], base[4], s, s + 1, pb + s * static_cast<int32_t>(nrows)},
                          std::min(ntiles, (s + 1) * tps) - s * tps});
        for (int64_t r = 0; r < nrows; ++r) {
          const int64_t rr = r0 + r;
          merges.push_back({{static_cast<int32_t>(i + rr / G), static_cast<int32_t>(kvh * G + rr % G),
                             static_cast<int32_t>(pb + r), static_cast<int32_t>(nrows), nsplits, 0, 0, 0},
                            0});
        }
      }
    i = j;
  }
  {
    std::vector<int32_t> seqs(seq, seq + T);
    std::sort(seqs.begin(), seqs.end());
    plan.one_token_per_sequence = std::adjacent_find(seqs.begin(), seqs.end()) == seqs.end();
  }
  // Longest CTAs first (the grid runs roughly in order): a schedule, not a change of any sum.
  auto by_work = [](const Rec& a, const Rec& b) { return a.tiles > b.tiles; };
  std::stable_sort(small.begin(), small.end(), by_work);
  std::stable_sort(large.begin(), large.end(), by_work);
  plan.n_small = static_cast<int32_t>(small.size());
  plan.n_large = static_cast<int32_t>(large.size());
  plan.n_merge = static_cast<int32_t>(merges.size());
  plan.workspace_floats = n_partials * (head_dim + 2);
  plan.work.reserve((small.size() + large.size() + merges.size()) * kAttnRecordInts);
  for (const auto* list : {&small, &large, &merges})
    for (const Rec& r : *list) plan.work.insert(plan.work.end(), r.v, r.v + kAttnRecordInts);
  return plan;
}

void attention_paged(const PagedAttentionArgs& a, const AttentionPlan& plan, const int32_t* work,
                     float* workspace, cudaStream_t stream) {
  const int hd = plan.head_dim;
  if (plan.T <= 0 || plan.n_heads <= 0) return;
  DETINFER_CHECK(a.block_size > 0, "attention: block_size ", a.block_size);
  DETINFER_CHECK(plan.split > 0 && plan.split % kAttnKeyTile == 0, "attention: plan split ", plan.split);
  DETINFER_CHECK(plan.workspace_floats == 0 || workspace, "attention: the plan needs ",
                 plan.workspace_floats, " workspace floats, got none");
  DETINFER_CHECK(plan.n_small + plan.n_large + plan.n_merge == 0 || work, "attention: null work list");
  if (a.out_bf16) {
    DETINFER_CHECK(a.out_bf16_ld >= int64_t{plan.n_heads} * hd && a.out_bf16_ld % 8 == 0,
                   "attention: out_bf16_ld ", a.out_bf16_ld, " is not a multiple of 8 of at least n_heads*head_dim = ",
                   int64_t{plan.n_heads} * hd);
    DETINFER_CHECK(reinterpret_cast<uintptr_t>(a.out_bf16) % 4 == 0, "attention: out_bf16 is not 4-byte aligned");
  }
  Params p;
  p.q = a.q, p.out = a.out, p.kc = a.k_cache, p.vc = a.v_cache;
  p.obf = a.out_bf16, p.obf_ld = a.out_bf16_ld;
  p.pos = a.pos, p.table_off = a.table_off, p.tables = a.tables, p.ws = workspace;
  p.block_size = a.block_size, p.scale = a.scale;
  p.n_heads = plan.n_heads, p.n_kv_heads = plan.n_kv_heads, p.head_dim = hd;
  p.group = plan.n_heads / plan.n_kv_heads;
  p.split_tiles = plan.split / kAttnKeyTile;
  auto log2_or_none = [](int v) { return v > 0 && (v & (v - 1)) == 0 ? __builtin_ctz(static_cast<unsigned>(v)) : -1; };
  p.bs_shift = log2_or_none(a.block_size);
  p.group_shift = log2_or_none(p.group);
  DETINFER_CHECK(int64_t{plan.n_kv_heads} * hd * 2 < (int64_t{1} << 31), "attention: a cache row of ",
                 plan.n_kv_heads, " kv heads × head_dim ", hd, " is 2 GiB or more");
  p.vec16 = hd % 8 == 0 && reinterpret_cast<uintptr_t>(a.k_cache) % 16 == 0 &&
            reinterpret_cast<uintptr_t>(a.v_cache) % 16 == 0;
  if (a.rope.q) {
    const RopeInAttention& r = a.rope;
    DETINFER_CHECK(r.q == a.q && r.k && r.v && r.cos && r.sin && r.slots && r.k_cache == a.k_cache &&
                       r.v_cache == a.v_cache,
                   "attention: RoPE in attention needs q (the attention's), k, v, the tables, the slots and "
                   "the attention's caches");
    if (p.vec16 && attention_fuses_rope(plan)) p.rope = r;
    else rope_kv_write(r.q, r.k, r.v, plan.T, plan.n_heads, plan.n_kv_heads, hd, a.pos, r.cos, r.sin, r.k_cache,
                       r.v_cache, r.slots, stream);
  }
  if (plan.n_simple > 0) {
    const int64_t blocks = (plan.n_simple + kSimpleWarps - 1) / kSimpleWarps;
    DETINFER_CHECK(blocks < (int64_t{1} << 31), "attention: too many rows");
    const unsigned b = static_cast<unsigned>(blocks);
    launch_pdl(hd <= 384 ? attn_simple_kernel<12> : attn_simple_kernel<16>, dim3(b), dim3(32 * kSimpleWarps), 0,
               stream, "attention (warp kernel) launch", p, plan.n_simple);
    return;
  }
  if (p.rope.q) launch_wide<true>(p, work, plan.n_small, stream);  // (small items only: see there)
  else if (hd <= 32) launch_both<32>(p, plan, work, stream);
  else if (hd <= 64) launch_both<64>(p, plan, work, stream);
  else if (hd <= 96) launch_both<96>(p, plan, work, stream);
  else if (hd <= 128) launch_both<128>(p, plan, work, stream);
  else if (hd <= 192) launch_both<192>(p, plan, work, stream);
  else launch_both<256>(p, plan, work, stream);
  if (plan.n_merge > 0) {
    const unsigned b = static_cast<unsigned>((plan.n_merge + kMergeWarps - 1) / kMergeWarps);
    launch_pdl(attn_merge_kernel, dim3(b), dim3(32 * kMergeWarps), 0, stream, "attention merge launch", p,
               work + static_cast<int64_t>(plan.n_small + plan.n_large) * kAttnRecordInts, plan.n_merge);
  }
}

}  // namespace detinfer::cuda
