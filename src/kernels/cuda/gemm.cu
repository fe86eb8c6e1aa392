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

#include <atomic>

#include "common/error.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/pdl.cuh"

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

// ---- the small-M kernel (decode) -----------------------------------------------------------------
// Same numbers as gemm_bf16_kernel, another schedule: for M <= 16·MT each block owns 32 weight
// rows (4 warps × one n8 tile) and all M rows (MT m16 tiles); W and x stream through a
// kSkStages-deep cp.async pipeline so that many weight bytes are in flight per SM (decode reads
// every weight once per step, so its speed is HBM bandwidth). Each element still has one
// accumulator, +0 first, one mma.sync.m16n8k16 per 16 values of K in increasing k over the same
// padded Kp, with the same bf16 operands (x rounded to nearest even element by element): the
// same bits as the large kernel, whichever kernel a given M picks (T1 checks it).
constexpr int kSkBN = 32, kSkBK = 64, kSkStages = 8, kSkThreads = 128;
constexpr int kSkLdW = kSkBK + 8;  // bf16; 144-byte rows: B-fragment loads hit 32 banks
constexpr int kSkLdX = kSkBK + 8;  // fp32; 288-byte rows: A-fragment float2 loads conflict-free

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;  // 0: fill the 16 bytes with zeros, read nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return static_cast<uint32_t>(to_bf16(lo)) | (static_cast<uint32_t>(to_bf16(hi)) << 16);
}

template <int MT>
__global__ void __launch_bounds__(kSkThreads)
    gemm_bf16_small_m_kernel(const float* __restrict__ x, int64_t M, int64_t K,
                             const uint16_t* __restrict__ w, int64_t N, int64_t Kp,
                             const float* __restrict__ bias, float* __restrict__ y) {
  constexpr int XR = 16 * MT;
  extern __shared__ __align__(16) unsigned char sk_smem[];
  uint16_t* ws = reinterpret_cast<uint16_t*>(sk_smem);                       // [stages][32][kSkLdW]
  float* xs = reinterpret_cast<float*>(ws + kSkStages * kSkBN * kSkLdW);      // [stages][XR][kSkLdX]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tq = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kSkBN;
  const int64_t n_k = (Kp + kSkBK - 1) / kSkBK;

  // One stage: 32 W rows × 64 k (256 16-byte chunks, 2 per thread) and XR x rows × 64 k
  // (16 chunks of 4 floats per row). Past Kp (W) and past M or K (x): zeros.
  auto load_stage = [&](int st, int64_t kt) {
    const int64_t k0 = kt * kSkBK;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int e = tid + kSkThreads * j, r = e >> 3, c = (e & 7) * 8;
      const bool ok = k0 + c < Kp;
      cp_async16(ws + (st * kSkBN + r) * kSkLdW + c, ok ? w + (n0 + r) * Kp + k0 + c : w, ok);
    }
    for (int e = tid; e < XR * 16; e += kSkThreads) {
      const int r = e >> 4, c = (e & 15) * 4;
      const bool ok = r < M && k0 + c < K;
      cp_async16(xs + (st * XR + r) * kSkLdX + c, ok ? x + r * K + k0 + c : x, ok);
    }
  };

  float acc[MT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[i][e] = 0.0f;

#pragma unroll
  for (int st = 0; st < kSkStages - 1; ++st) {
    if (st < n_k) load_stage(st, st);
    cp_async_commit();
  }
  for (int64_t kt = 0; kt < n_k; ++kt) {
    cp_async_wait<kSkStages - 2>();
    __syncthreads();  // stage kt landed for all; everyone is done with stage kt - 1
    if (kt + kSkStages - 1 < n_k) load_stage(static_cast<int>((kt + kSkStages - 1) % kSkStages), kt + kSkStages - 1);
    cp_async_commit();
    const int st = static_cast<int>(kt % kSkStages);
    const uint16_t* wst = ws + (st * kSkBN + warp * 8 + g) * kSkLdW + tq * 2;
    const float* xst = xs + st * XR * kSkLdX + tq * 2;
#pragma unroll
    for (int ks = 0; ks < kSkBK; ks += 16) {
      if (kt * kSkBK + ks >= Kp) break;  // the same K steps as the large kernel, no more
      uint32_t b[2] = {ld_pair(wst + ks), ld_pair(wst + ks + 8)};
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const float* p0 = xst + (mt * 16 + g) * kSkLdX + ks;
        const float* p1 = p0 + 8 * kSkLdX;
        const float2 v0 = *reinterpret_cast<const float2*>(p0);
        const float2 v1 = *reinterpret_cast<const float2*>(p1);
        const float2 v2 = *reinterpret_cast<const float2*>(p0 + 8);
        const float2 v3 = *reinterpret_cast<const float2*>(p1 + 8);
        uint32_t a[4] = {pack_bf16(v0.x, v0.y), pack_bf16(v1.x, v1.y), pack_bf16(v2.x, v2.y),
                         pack_bf16(v3.x, v3.y)};
        mma_bf16(acc[mt], a, b);
      }
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = mt * 16 + g + 8 * h;
      if (r >= M) continue;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t c = n0 + warp * 8 + tq * 2 + e;
        if (c >= N) continue;
        float v = acc[mt][2 * h + e];
        if (bias) v = __fadd_rn(v, bias[c]);
        y[r * N + c] = v;
      }
    }
}

template <int MT>
void launch_small_m(const float* x, int64_t M, const GemmWeight& w, const float* bias, float* y,
                    cudaStream_t stream) {
  const size_t smem = kSkStages * (kSkBN * kSkLdW * sizeof(uint16_t) + 16 * MT * kSkLdX * sizeof(float));
  opt_in_dynamic_smem<gemm_bf16_small_m_kernel<MT>>(smem, "gemm small-M smem");
  const dim3 grid(static_cast<unsigned>(w.Np / kSkBN));
  gemm_bf16_small_m_kernel<MT><<<grid, kSkThreads, smem, stream>>>(x, M, w.K, w.w, w.N, w.Kp, bias, y);
  check(cudaGetLastError(), "gemm small-M launch");
}

std::atomic<bool> gemm_small_m_enabled{true};

bool K_aligned_for_small_m(const float* x, int64_t K) {
  return K % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

}  // namespace

void set_gemm_small_m_kernel(bool enabled) { gemm_small_m_enabled = enabled; }

void gemm_bf16(const float* x, int64_t M, const GemmWeight& w, const float* bias, float* y,
               cudaStream_t stream) {
  if (M <= 0 || w.N <= 0) return;
  DETINFER_CHECK(w.Np % BN == 0 && w.Kp % BK == 0 && w.Np >= w.N && w.Kp >= w.K,
                 "gemm: weight padding ", w.Np, "x", w.Kp, " does not fit the tile shape");
  // Small M (decode): the streaming kernel, when x's rows can be copied in 16-byte pieces.
  // Which kernel runs changes only the schedule, never a row's bits (see above).
  const bool x_vectors = K_aligned_for_small_m(x, w.K);
  if (M <= kGemmSmallM && x_vectors && gemm_small_m_enabled) {
    if (M <= 16) return launch_small_m<1>(x, M, w, bias, y, stream);
    if (M <= 32) return launch_small_m<2>(x, M, w, bias, y, stream);
    return launch_small_m<4>(x, M, w, bias, y, stream);
  }
  const int64_t grid_m = (M + BM - 1) / BM;
  DETINFER_CHECK(grid_m <= 65535, "gemm: M = ", M, " rows is more than one launch takes");
  const dim3 grid(static_cast<unsigned>(w.Np / BN), static_cast<unsigned>(grid_m));
  gemm_bf16_kernel<<<grid, kThreads, 0, stream>>>(x, M, w.K, w.w, w.N, w.Kp, bias, y);
  check(cudaGetLastError(), "gemm launch");
}

}  // namespace detinfer::cuda
