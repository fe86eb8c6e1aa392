// The one GEMM of the CUDA backend: y[M, N] = bf16(x)[M, K] · Wᵀ on the tensor cores
// (mma.sync m16n8k16, bf16 inputs, fp32 accumulators), used for every M, prefill and decode alike.
//
// Why a row's bits do not depend on M: each output element y[m, n] has one fp32 accumulator,
// which starts at +0 and goes through one MMA per 16-wide K step, k = 0, 16, 32, ... in
// increasing order (no split-K, no stream-K, no K order that depends on the grid). An MMA's
// result for an element depends only on that element's row of A, column of B and accumulator;
// the other rows of the tile (other requests, or zero padding) never enter it. x is rounded to
// bf16 (round to nearest even) as each tile is staged, element by element, so the rounding does
// not depend on the tile either. Then + bias[n] in one fp32 add.
//
// Shape: blocks of kGemmBM × kGemmBN outputs, 8 warps of 32 × 32 (2 × 4 MMA tiles), K staged
// through shared memory kGemmBK at a time with the next stage prefetched into registers. This is
// the simple first kernel; a wgmma/TMA kernel may replace it only if it keeps the per-element
// order above and serves every M (tests/cuda/test_cuda_ops_kernels.cpp T1 checks the bits).
#include <cuda_bf16.h>

#include "common/error.h"
#include "kernels/cuda/launch.h"

namespace detinfer::cuda {

namespace {

constexpr int BM = kGemmBM, BN = kGemmBN, BK = kGemmBK;
constexpr int kThreads = 256;
constexpr int kLd = BK + 8;  // shared row stride in bf16: 80 bytes, so fragment loads hit 32 banks
static_assert(BM * BK == kThreads * 8, "x stage: 8 floats per thread");
static_assert(BN * BK == kThreads * 16, "W stage: two 16-byte vectors per thread");

__device__ __forceinline__ uint16_t to_bf16(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

__device__ __forceinline__ uint32_t ld_pair(const uint16_t* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// d += a · b for one m16n8k16 tile (row-major A, column-major B, fp32 accumulate).
__device__ __forceinline__ void mma_bf16(float* d, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__global__ void __launch_bounds__(kThreads)
    gemm_bf16_kernel(const float* __restrict__ x, int64_t M, int64_t K,
                     const uint16_t* __restrict__ w, int64_t N, int64_t Kp,
                     const float* __restrict__ bias, float* __restrict__ y) {
  __shared__ __align__(16) uint16_t xs[BM * kLd];
  __shared__ __align__(16) uint16_t ws[BN * kLd];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp & 1, wn = warp >> 1;  // warp's 32×32 sub-tile
  const int g = lane >> 2, tq = lane & 3;   // MMA fragment coordinates
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;

  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  // Stage registers: x row (tid/32 + 8j), column lane (coalesced along K; rows past M and
  // columns past K read as 0); W rows (e/4), 16-byte column chunks (e%4) of the padded copy.
  float xr[8];
  uint4 wr[2];
  auto fetch = [&](int64_t k0) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t r = m0 + (tid >> 5) + 8 * j, c = k0 + lane;
      xr[j] = (r < M && c < K) ? x[r * K + c] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int e = tid + kThreads * j;
      wr[j] = *reinterpret_cast<const uint4*>(w + (n0 + (e >> 2)) * Kp + k0 + (e & 3) * 8);
    }
  };

  fetch(0);
  for (int64_t k0 = 0; k0 < Kp; k0 += BK) {
#pragma unroll
    for (int j = 0; j < 8; ++j) xs[((tid >> 5) + 8 * j) * kLd + lane] = to_bf16(xr[j]);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int e = tid + kThreads * j;
      *reinterpret_cast<uint4*>(&ws[(e >> 2) * kLd + (e & 3) * 8]) = wr[j];
    }
    __syncthreads();
    if (k0 + BK < Kp) fetch(k0 + BK);
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {  // increasing K within the stage
      uint32_t a[2][4], b[4][2];
#pragma unroll
      for (int fm = 0; fm < 2; ++fm) {
        const uint16_t* p = xs + (wm * 32 + fm * 16 + g) * kLd + ks + tq * 2;
        a[fm][0] = ld_pair(p);
        a[fm][1] = ld_pair(p + 8 * kLd);
        a[fm][2] = ld_pair(p + 8);
        a[fm][3] = ld_pair(p + 8 * kLd + 8);
      }
#pragma unroll
      for (int fn = 0; fn < 4; ++fn) {
        const uint16_t* p = ws + (wn * 32 + fn * 8 + g) * kLd + ks + tq * 2;
        b[fn][0] = ld_pair(p);
        b[fn][1] = ld_pair(p + 8);
      }
#pragma unroll
      for (int fm = 0; fm < 2; ++fm)
#pragma unroll
        for (int fn = 0; fn < 4; ++fn) mma_bf16(acc[fm][fn], a[fm], b[fn]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int fm = 0; fm < 2; ++fm)
#pragma unroll
    for (int fn = 0; fn < 4; ++fn)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t r = m0 + wm * 32 + fm * 16 + g + 8 * h;
        if (r >= M) continue;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t c = n0 + wn * 32 + fn * 8 + tq * 2 + e;
          if (c >= N) continue;
          float v = acc[fm][fn][2 * h + e];
          if (bias) v = __fadd_rn(v, bias[c]);
          y[r * N + c] = v;
        }
      }
}

}  // namespace

void gemm_bf16(const float* x, int64_t M, const GemmWeight& w, const float* bias, float* y,
               cudaStream_t stream) {
  if (M <= 0 || w.N <= 0) return;
  DETINFER_CHECK(w.Np % BN == 0 && w.Kp % BK == 0 && w.Np >= w.N && w.Kp >= w.K,
                 "gemm: weight padding ", w.Np, "x", w.Kp, " does not fit the tile shape");
  const int64_t grid_m = (M + BM - 1) / BM;
  DETINFER_CHECK(grid_m <= 65535, "gemm: M = ", M, " rows is more than one launch takes");
  const dim3 grid(static_cast<unsigned>(w.Np / BN), static_cast<unsigned>(grid_m));
  gemm_bf16_kernel<<<grid, kThreads, 0, stream>>>(x, M, w.K, w.w, w.N, w.Kp, bias, y);
  check(cudaGetLastError(), "gemm launch");
}

}  // namespace detinfer::cuda
