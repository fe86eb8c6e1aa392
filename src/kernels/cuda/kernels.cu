// The CUDA backend's non-GEMM kernels. Each output element is computed by one thread (or one
// block / warp for reductions) in a fixed order that depends only on the reduced length:
// never on the number of rows, the batch, the grid size or timing. No floating-point atomics.
// Every floating-point operation is an explicit correctly rounded intrinsic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "common/error.h"
#include "kernels/cuda/det_math.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/pdl.cuh"

namespace detinfer::cuda {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) fail("CUDA error in ", what, ": ", cudaGetErrorString(err));
}

void set_pdl(bool enabled) { pdl_enabled().store(enabled); }

namespace {

constexpr int kThreads = 256;

// Grid for an element-wise kernel with a grid-stride loop (the split of elements among threads
// changes no result: each element is computed alone).
unsigned elementwise_blocks(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

// ---- rmsnorm -------------------------------------------------------------------------------------
// One block of 256 threads per row, whatever D and the number of rows:
//   thread j: s_j = fma(x_i, x_i, s_j) for i = j, j+256, j+512, ... < D, from +0;
//   each warp: butterfly sum of its 32 s_j (warp_sum); then the 8 warp sums w_0..w_7:
//   ss = ((w0 + w1) + (w2 + w3)) + ((w4 + w5) + (w6 + w7));
//   r = 1 / sqrt(ss / D + eps);  y_i = (x_i · r) · weight_i   (each op rounded, CPU formula).
constexpr int kNormThreads = 256;
constexpr int kNormBatch = 8;
// Fused forms, the same bits as the separate kernels: with `residual`, x_i = x_i + residual_i is
// stored first and the norm reads the stored sum (the add kernel's rounding, then this order);
// with `twin`, y is also written as bf16 (round to nearest even) rows of twin_ld, the GEMM input
// that round_rows_to_bf16 would make from y.

// The block's sum of the threads' partials s (warp butterflies, then the 8 warp sums as
// ((w0 + w1) + (w2 + w3)) + ((w4 + w5) + (w6 + w7))), and r = 1 / sqrt(ss / D + eps).
__device__ __forceinline__ float norm_scale(float s, int64_t D, float eps, float* warp_sums) {
  s = warp_sum(s);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
  __syncthreads();
  const float* ws = warp_sums;
  const float ss = __fadd_rn(__fadd_rn(__fadd_rn(ws[0], ws[1]), __fadd_rn(ws[2], ws[3])),
                             __fadd_rn(__fadd_rn(ws[4], ws[5]), __fadd_rn(ws[6], ws[7])));
  return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, static_cast<float>(D)), eps)));
}

// kHeld > 0 (rows up to kNormThreads·kHeld values, d_model of the usual models): the row stays in
// registers between the sum and the scaling, and the weights are loaded before the block's
// reduction, so a decode row (latency-bound) waits on memory once. kHeld = 0: any D, in batches.
// The arithmetic, and so every bit, is the same in both forms.
template <int kHeld>
__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_kernel(float* x, const float* residual, int64_t D, const float* __restrict__ w,
                   float eps, float* y, uint16_t* twin, int64_t twin_ld) {
  pdl_launch_dependents();  // the next GEMM may start loading its weights
  pdl_wait();
  __shared__ float warp_sums[kNormThreads / 32];
  float* xr = x + static_cast<int64_t>(blockIdx.x) * D;
  float* yr = y + static_cast<int64_t>(blockIdx.x) * D;
  const float* rr = residual ? residual + static_cast<int64_t>(blockIdx.x) * D : nullptr;
  uint16_t* tr = twin ? twin + static_cast<int64_t>(blockIdx.x) * twin_ld : nullptr;
  float s = 0.0f;
  if constexpr (kHeld > 0) {
    float v[kHeld], wv[kHeld];
#pragma unroll
    for (int u = 0; u < kHeld; ++u) {
      const int64_t i = threadIdx.x + u * kNormThreads;
      v[u] = i < D ? xr[i] : 0.0f;
    }
    if (rr) {
#pragma unroll
      for (int u = 0; u < kHeld; ++u) {
        const int64_t i = threadIdx.x + u * kNormThreads;
        if (i < D) v[u] = __fadd_rn(v[u], rr[i]);
      }
#pragma unroll
      for (int u = 0; u < kHeld; ++u) {
        const int64_t i = threadIdx.x + u * kNormThreads;
        if (i < D) xr[i] = v[u];
      }
    }
#pragma unroll
    for (int u = 0; u < kHeld; ++u) {
      const int64_t i = threadIdx.x + u * kNormThreads;
      if (i < D) s = __fmaf_rn(v[u], v[u], s);
      wv[u] = i < D ? w[i] : 0.0f;
    }
    const float r = norm_scale(s, D, eps, warp_sums);
#pragma unroll
    for (int u = 0; u < kHeld; ++u) {
      const int64_t i = threadIdx.x + u * kNormThreads;
      if (i >= D) continue;
      const float o = __fmul_rn(__fmul_rn(v[u], r), wv[u]);
      yr[i] = o;
      if (tr) tr[i] = __bfloat16_as_ushort(__float2bfloat16_rn(o));
    }
    return;
  } else {
    // The loads of kNormBatch elements are issued before their sums; the fma order per thread
    // is unchanged: i = j, j+256, j+512, ...
    for (int64_t i0 = threadIdx.x; i0 < D; i0 += kNormThreads * kNormBatch) {
      float v[kNormBatch];
#pragma unroll
      for (int u = 0; u < kNormBatch; ++u) {
        const int64_t i = i0 + u * kNormThreads;
        v[u] = i < D ? xr[i] : 0.0f;
      }
      if (rr) {
#pragma unroll
        for (int u = 0; u < kNormBatch; ++u) {
          const int64_t i = i0 + u * kNormThreads;
          if (i < D) v[u] = __fadd_rn(v[u], rr[i]);
        }
#pragma unroll
        for (int u = 0; u < kNormBatch; ++u) {
          const int64_t i = i0 + u * kNormThreads;
          if (i < D) xr[i] = v[u];
        }
      }
#pragma unroll
      for (int u = 0; u < kNormBatch; ++u)
        if (i0 + u * kNormThreads < D) s = __fmaf_rn(v[u], v[u], s);
    }
    const float r = norm_scale(s, D, eps, warp_sums);
    // In place (y == x or y == residual) is safe: each thread writes only the elements it read.
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < D; i += kNormThreads) {
      const float o = __fmul_rn(__fmul_rn(xr[i], r), w[i]);
      yr[i] = o;
      if (tr) tr[i] = __bfloat16_as_ushort(__float2bfloat16_rn(o));
    }
  }
}
static_assert(kNormThreads == 256, "the final tree above sums exactly 8 warps");

// ---- rope ----------------------------------------------------------------------------------------
// One thread per (token, head, pair i). cos/sin come from tables the host filled with the CPU's
// recipe (angle pos · inv_freq in fp64, std::cos / std::sin, rounded once), so the rotation is
// the CPU's to the bit: x0' = x0·c - x1·s, x1' = x1·c + x0·s, each product rounded (no fma).
__global__ void rope_kernel(float* x, int64_t n, int n_heads, int head_dim,
                            const int32_t* __restrict__ pos, const float* __restrict__ cos_tab,
                            const float* __restrict__ sin_tab) {
  const int half = head_dim / 2;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const int64_t th = idx / half;  // token * n_heads + head
    const int64_t p = pos[th / n_heads];
    const float c = cos_tab[p * half + i], s = sin_tab[p * half + i];
    float* v = x + th * head_dim;
    const float x0 = v[i], x1 = v[i + half];
    v[i] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    v[i + half] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
  }
}

// RoPE of q and k (rope_kernel's arithmetic) and the bf16 cache rows of k and v (kv_write_bf16's
// rounding of the rotated k), in one pass: one launch per layer instead of three. Per token, items
// [0, n_heads·half) rotate a pair of q; the next n_kv_heads·(head_dim − half) items each take one
// kv head's pair (i, i + half) of k (rotated, stored back and cached) and of v (cached), or, for
// an odd head_dim, its last unrotated element.
__global__ void rope_kv_write_kernel(float* q, float* k, const float* __restrict__ v, int64_t T,
                                     int n_heads, int n_kv_heads, int head_dim,
                                     const int32_t* __restrict__ pos, const float* __restrict__ cos_tab,
                                     const float* __restrict__ sin_tab, uint16_t* k_cache,
                                     uint16_t* v_cache, const int32_t* __restrict__ slots) {
  pdl_launch_dependents();  // attention may start
  pdl_wait();
  const int half = head_dim / 2, rest = head_dim - half;
  const int64_t per_tok = static_cast<int64_t>(n_heads) * half + static_cast<int64_t>(n_kv_heads) * rest;
  const int64_t n = T * per_tok, row = static_cast<int64_t>(n_kv_heads) * head_dim;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / per_tok;
    int64_t j = idx - t * per_tok;
    const int64_t p = pos[t];
    if (j < static_cast<int64_t>(n_heads) * half) {
      const int h = static_cast<int>(j / half), i = static_cast<int>(j % half);
      const float c = cos_tab[p * half + i], sn = sin_tab[p * half + i];
      float* x = q + (t * n_heads + h) * head_dim;
      const float x0 = x[i], x1 = x[i + half];
      x[i] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, sn));
      x[i + half] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, sn));
      continue;
    }
    j -= static_cast<int64_t>(n_heads) * half;
    const int h = static_cast<int>(j / rest), i = static_cast<int>(j % rest);
    const int64_t src = t * row + static_cast<int64_t>(h) * head_dim;
    const int64_t dst = static_cast<int64_t>(slots[t]) * row + static_cast<int64_t>(h) * head_dim;
    if (i < half) {
      const float c = cos_tab[p * half + i], sn = sin_tab[p * half + i];
      const float x0 = k[src + i], x1 = k[src + i + half];
      const float y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, sn));
      const float y1 = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, sn));
      k[src + i] = y0, k[src + i + half] = y1;
      k_cache[dst + i] = __bfloat16_as_ushort(__float2bfloat16_rn(y0));
      k_cache[dst + i + half] = __bfloat16_as_ushort(__float2bfloat16_rn(y1));
      v_cache[dst + i] = __bfloat16_as_ushort(__float2bfloat16_rn(v[src + i]));
      v_cache[dst + i + half] = __bfloat16_as_ushort(__float2bfloat16_rn(v[src + i + half]));
    } else {  // odd head_dim: the last element is not rotated
      const int e = head_dim - 1;
      k_cache[dst + e] = __bfloat16_as_ushort(__float2bfloat16_rn(k[src + e]));
      v_cache[dst + e] = __bfloat16_as_ushort(__float2bfloat16_rn(v[src + e]));
    }
  }
}

// ---- element-wise --------------------------------------------------------------------------------
// swiglu: (g / (1 + det_expf(-g))) · u, the CPU's formula and exp.
// With `twin`, out is also written as bf16 rows of `cols` values, twin_ld apart (the GEMM input).
__global__ void swiglu_kernel(const float* gate, const float* up, int64_t n, float* out,
                              uint16_t* twin, int64_t cols, int64_t twin_ld) {
  pdl_launch_dependents();  // the down projection may start loading its weights
  pdl_wait();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    const float v = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, det_expf(-g))), up[i]);
    out[i] = v;
    if (twin) twin[(i / cols) * twin_ld + i % cols] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
}

__global__ void add_kernel(float* y, const float* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = __fadd_rn(y[i], x[i]);
}

__global__ void add_bias_kernel(float* y, int64_t rows, int64_t N, const float* __restrict__ bias) {
  const int64_t n = rows * N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = __fadd_rn(y[i], bias[i % N]);
}

__global__ void split_columns_kernel(const float* __restrict__ y, int64_t M, int64_t N,
                                     SplitColumns parts) {
  const int64_t n = M * N;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = idx / N, c = idx % N;
    int i = 0;
    while (i + 1 < parts.n && c >= parts.offset[i + 1]) ++i;
    parts.out[i][m * parts.width[i] + (c - parts.offset[i])] = y[idx];
  }
}

__global__ void exp_kernel(const float* __restrict__ x, int64_t n, float* __restrict__ y) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = det_expf(x[i]);
}

__device__ __forceinline__ float f16_bits_to_f32(const uint8_t* p) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(p[0] | (p[1] << 8))));
}

// Element j of a stored row, exactly as dequantize_row() (model/tensor.h) gives it.
__device__ __forceinline__ float dequant(const uint8_t* row, DType t, int64_t j) {
  switch (t) {
    case DType::F32: {
      const uint8_t* p = row + 4 * j;
      return __uint_as_float(p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24));
    }
    case DType::F16: return f16_bits_to_f32(row + 2 * j);
    case DType::BF16: {
      const uint8_t* p = row + 2 * j;
      return __uint_as_float(static_cast<uint32_t>(p[0] | (p[1] << 8)) << 16);
    }
    case DType::Q8_0: {
      const uint8_t* b = row + 34 * (j / 32);
      const int8_t q = static_cast<int8_t>(b[2 + j % 32]);
      return __fmul_rn(f16_bits_to_f32(b), static_cast<float>(q));
    }
    case DType::Q4_0: {
      const uint8_t* b = row + 18 * (j / 32);
      const int i = static_cast<int>(j % 32);
      const int q = i < 16 ? (b[2 + i] & 0xF) : (b[2 + i - 16] >> 4);
      return __fmul_rn(f16_bits_to_f32(b), static_cast<float>(q - 8));
    }
    case DType::Q4_1: {
      const uint8_t* b = row + 20 * (j / 32);
      const int i = static_cast<int>(j % 32);
      const int q = i < 16 ? (b[4 + i] & 0xF) : (b[4 + i - 16] >> 4);
      return __fadd_rn(__fmul_rn(f16_bits_to_f32(b), static_cast<float>(q)), f16_bits_to_f32(b + 2));
    }
  }
  return __int_as_float(0x7fc00000);
}

__global__ void embed_kernel(const uint8_t* __restrict__ table, DType dtype, int64_t row_bytes,
                             int64_t D, const int32_t* __restrict__ tokens, int64_t n, float* x) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / D, j = idx % D;
    x[idx] = dequant(table + tokens[t] * row_bytes, dtype, j);
  }
}

__global__ void gather_kernel(const float* __restrict__ x, int64_t D,
                              const int32_t* __restrict__ rows, int64_t n, float* out) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[idx] = x[rows[idx / D] * D + idx % D];
}

__global__ void kv_write_kernel(float* k_cache, float* v_cache, const float* __restrict__ k,
                                const float* __restrict__ v, int64_t n, int64_t row,
                                const int32_t* __restrict__ slots) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / row, e = idx % row;
    const int64_t dst = static_cast<int64_t>(slots[t]) * row + e;
    k_cache[dst] = k[idx];
    v_cache[dst] = v[idx];
  }
}

// ---- attention -----------------------------------------------------------------------------------
// One warp per (token, query head). Lane l holds elements e = l + 32i of q and of the output
// accumulator. Keys 0..pos of the token's sequence are visited in tiles of kAttnTile positions
// aligned to absolute positions ([0,16), [16,32), ..., the last cut at pos), in increasing
// order; per tile of n keys:
//   s_j = warp_sum(Σ_i fma over the lane's elements in increasing i, from +0) · scale
//   mt = max_j s_j (sequential, a > b ? a : b);  m' = m > mt ? m : mt
//   c = det_expf(m - m') (0 in the first tile, m = -inf);  p_j = det_expf(s_j - m')
//   l = l·c + (((p_0 + p_1) + p_2) + ...);  acc_e = acc_e·c (skipped when m' == m), then
//   acc_e = fma(p_j, v_j,e, acc_e) for j in order;  m = m'
// and out_e = acc_e / l. The CPU's order (kernels/cpu/attention.cpp) except the dot product's
// lane layout. Nothing depends on the batch, the chunking, the block placement or the grid.
constexpr int kAttnWarps = 4;

__device__ __forceinline__ int64_t kv_offset(const int32_t* table, int32_t p, int block_size,
                                             int64_t row, int64_t head_off) {
  return (static_cast<int64_t>(table[p / block_size]) * block_size + p % block_size) * row +
         head_off;
}

template <int PER>  // elements per lane: head_dim <= 32 * PER
__global__ void __launch_bounds__(32 * kAttnWarps) attention_kernel(AttentionArgs a) {
  const int64_t task = static_cast<int64_t>(blockIdx.x) * kAttnWarps + (threadIdx.x >> 5);
  if (task >= a.T * a.n_heads) return;  // whole warps leave together
  const int lane = threadIdx.x & 31;
  const int64_t t = task / a.n_heads;
  const int h = static_cast<int>(task % a.n_heads);
  const int hd = a.head_dim;
  const int64_t row = static_cast<int64_t>(a.n_kv_heads) * hd;
  const int64_t head_off = static_cast<int64_t>(h / (a.n_heads / a.n_kv_heads)) * hd;
  const int32_t* table = a.tables + a.table_off[t];
  const int32_t last = a.pos[t];

  float qv[PER], acc[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const int e = lane + 32 * i;
    qv[i] = e < hd ? a.q[task * hd + e] : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int32_t t0 = 0; t0 <= last; t0 += kAttnTile) {
    const int n = min(kAttnTile, last + 1 - t0);
    float s[kAttnTile];
#pragma unroll
    for (int j = 0; j < kAttnTile; ++j) {
      float part = 0.0f;
      if (j < n) {
        const float* kp = a.k_cache + kv_offset(table, t0 + j, a.block_size, row, head_off);
#pragma unroll
        for (int i = 0; i < PER; ++i) {
          const int e = lane + 32 * i;
          if (e < hd) part = __fmaf_rn(qv[i], kp[e], part);
        }
      }
      s[j] = part;
    }
    float mt = -INFINITY;
#pragma unroll
    for (int j = 0; j < kAttnTile; ++j) {
      s[j] = __fmul_rn(warp_sum(s[j]), a.scale);
      if (j < n) mt = mt > s[j] ? mt : s[j];
    }
    const float m_new = m > mt ? m : mt;
    const float c = det_expf(__fsub_rn(m, m_new));
    float psum = 0.0f;
#pragma unroll
    for (int j = 0; j < kAttnTile; ++j) {
      s[j] = j < n ? det_expf(__fsub_rn(s[j], m_new)) : 0.0f;  // s[j] now holds p_j
      if (j < n) psum = __fadd_rn(psum, s[j]);
    }
    l = __fadd_rn(__fmul_rn(l, c), psum);
    if (m_new != m) {
#pragma unroll
      for (int i = 0; i < PER; ++i) acc[i] = __fmul_rn(acc[i], c);
    }
#pragma unroll
    for (int j = 0; j < kAttnTile; ++j) {
      if (j < n) {
        const float* vp = a.v_cache + kv_offset(table, t0 + j, a.block_size, row, head_off);
#pragma unroll
        for (int i = 0; i < PER; ++i) {
          const int e = lane + 32 * i;
          if (e < hd) acc[i] = __fmaf_rn(s[j], vp[e], acc[i]);
        }
      }
    }
    m = m_new;
  }
  float* out = a.out + task * hd;
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const int e = lane + 32 * i;
    if (e < hd) out[e] = __fdiv_rn(acc[i], l);
  }
}

}  // namespace

void rmsnorm(float* x, const float* residual, int64_t rows, int64_t D, const float* w, float eps,
             float* y, uint16_t* twin, int64_t twin_ld, cudaStream_t stream) {
  if (rows <= 0 || D <= 0) return;
  DETINFER_CHECK(rows <= 0x7fffffff, "rmsnorm: ", rows, " rows is more than one launch takes");
  DETINFER_CHECK(!twin || twin_ld >= D, "rmsnorm: bf16 copy rows of ", twin_ld, " < D ", D);
  const unsigned grid = static_cast<unsigned>(rows);
  if (D <= kNormThreads * 16)
    launch_pdl(rmsnorm_kernel<16>, dim3(grid), dim3(kNormThreads), 0, stream, "rmsnorm launch", x, residual,
               D, w, eps, y, twin, twin_ld);
  else if (D <= kNormThreads * 32)
    launch_pdl(rmsnorm_kernel<32>, dim3(grid), dim3(kNormThreads), 0, stream, "rmsnorm launch", x, residual,
               D, w, eps, y, twin, twin_ld);
  else
    launch_pdl(rmsnorm_kernel<0>, dim3(grid), dim3(kNormThreads), 0, stream, "rmsnorm launch", x, residual,
               D, w, eps, y, twin, twin_ld);
}

void rope(float* x, int64_t T, int n_heads, int head_dim, const int32_t* pos, const float* cos_tab,
          const float* sin_tab, cudaStream_t stream) {
  const int64_t n = T * n_heads * (head_dim / 2);
  if (n <= 0) return;
  rope_kernel<<<elementwise_blocks(n), kThreads, 0, stream>>>(x, n, n_heads, head_dim, pos,
                                                               cos_tab, sin_tab);
  check(cudaGetLastError(), "rope launch");
}

void rope_kv_write(float* q, float* k, const float* v, int64_t T, int n_heads, int n_kv_heads,
                   int head_dim, const int32_t* pos, const float* cos_tab, const float* sin_tab,
                   uint16_t* k_cache, uint16_t* v_cache, const int32_t* slots, cudaStream_t stream) {
  const int64_t n = T * (static_cast<int64_t>(n_heads) * (head_dim / 2) +
                         static_cast<int64_t>(n_kv_heads) * (head_dim - head_dim / 2));
  if (n <= 0) return;
  launch_pdl(rope_kv_write_kernel, dim3(elementwise_blocks(n)), dim3(kThreads), 0, stream,
             "rope_kv_write launch", q, k, v, T, n_heads, n_kv_heads, head_dim, pos, cos_tab, sin_tab,
             k_cache, v_cache, slots);
}

void swiglu(const float* gate, const float* up, int64_t n, float* out, uint16_t* twin,
            int64_t cols, int64_t twin_ld, cudaStream_t stream) {
  if (n <= 0) return;
  DETINFER_CHECK(!twin || (cols > 0 && n % cols == 0 && twin_ld >= cols),
                 "swiglu: bf16 copy of rows of ", cols, " (", twin_ld, " apart) for ", n, " values");
  launch_pdl(swiglu_kernel, dim3(elementwise_blocks(n)), dim3(kThreads), 0, stream, "swiglu launch", gate,
             up, n, out, twin, cols, twin_ld);
}

void add(float* y, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  add_kernel<<<elementwise_blocks(n), kThreads, 0, stream>>>(y, x, n);
  check(cudaGetLastError(), "add launch");
}

void add_bias(float* y, int64_t rows, int64_t N, const float* bias, cudaStream_t stream) {
  if (rows <= 0 || N <= 0) return;
  add_bias_kernel<<<elementwise_blocks(rows * N), kThreads, 0, stream>>>(y, rows, N, bias);
  check(cudaGetLastError(), "add_bias launch");
}

void split_columns(const float* y, int64_t M, int64_t N, const SplitColumns& parts,
                   cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  DETINFER_CHECK(parts.n >= 1 && parts.n <= kMaxSplit, "split_columns: ", parts.n, " parts");
  split_columns_kernel<<<elementwise_blocks(M * N), kThreads, 0, stream>>>(y, M, N, parts);
  check(cudaGetLastError(), "split_columns launch");
}

void exp_n(const float* x, int64_t n, float* y, cudaStream_t stream) {
  if (n <= 0) return;
  exp_kernel<<<elementwise_blocks(n), kThreads, 0, stream>>>(x, n, y);
  check(cudaGetLastError(), "exp launch");
}

void embed(const uint8_t* table, DType dtype, int64_t row_bytes, int64_t D, const int32_t* tokens,
           int64_t T, float* x, cudaStream_t stream) {
  const int64_t n = T * D;
  if (n <= 0) return;
  embed_kernel<<<elementwise_blocks(n), kThreads, 0, stream>>>(table, dtype, row_bytes, D, tokens,
                                                                n, x);
  check(cudaGetLastError(), "embed launch");
}

void gather_rows(const float* x, int64_t D, const int32_t* rows, int64_t L, float* out,
                 cudaStream_t stream) {
  const int64_t n = L * D;
  if (n <= 0) return;
  gather_kernel<<<elementwise_blocks(n), kThreads, 0, stream>>>(x, D, rows, n, out);
  check(cudaGetLastError(), "gather launch");
}

void kv_write(float* k_cache, float* v_cache, const float* k, const float* v, int64_t T,
              int64_t row, const int32_t* slots, cudaStream_t stream) {
  const int64_t n = T * row;
  if (n <= 0) return;
  kv_write_kernel<<<elementwise_blocks(n), kThreads, 0, stream>>>(k_cache, v_cache, k, v, n, row,
                                                                   slots);
  check(cudaGetLastError(), "kv_write launch");
}

void attention(const AttentionArgs& a, cudaStream_t stream) {
  const int64_t tasks = a.T * a.n_heads;
  if (tasks <= 0) return;
  DETINFER_CHECK(a.head_dim > 0 && a.head_dim <= kAttnMaxHeadDim, "attention: head_dim ",
                 a.head_dim, " is outside 1..", kAttnMaxHeadDim);
  DETINFER_CHECK(a.n_kv_heads > 0 && a.n_heads % a.n_kv_heads == 0, "attention: n_heads ",
                 a.n_heads, " is not a multiple of n_kv_heads ", a.n_kv_heads);
  const unsigned blocks = static_cast<unsigned>((tasks + kAttnWarps - 1) / kAttnWarps);
  const unsigned threads = 32 * kAttnWarps;
  if (a.head_dim <= 32) attention_kernel<1><<<blocks, threads, 0, stream>>>(a);
  else if (a.head_dim <= 64) attention_kernel<2><<<blocks, threads, 0, stream>>>(a);
  else if (a.head_dim <= 128) attention_kernel<4><<<blocks, threads, 0, stream>>>(a);
  else if (a.head_dim <= 256) attention_kernel<8><<<blocks, threads, 0, stream>>>(a);
  else attention_kernel<16><<<blocks, threads, 0, stream>>>(a);
  check(cudaGetLastError(), "attention launch");
}

}  // namespace detinfer::cuda
