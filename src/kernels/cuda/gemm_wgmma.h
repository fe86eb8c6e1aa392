// Internal interface of the Hopper (sm_90a) GEMM: wgmma tensor-core MMAs fed by TMA through a
// multi-stage mbarrier pipeline. Plain device pointers, enqueued on `stream`, throws Error on a
// bad argument or a failed launch. See gemm_wgmma.cu for the order of the arithmetic.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/launch.h"

namespace detinfer::cuda {

// out[m, k] = bf16(x[m, k]) (round to nearest even) for k < K, 0 for K <= k < ld_out: rows of
// ld_out bf16 values, ready for gemm_wgmma's TMA loads (ld_out a multiple of 8, >= the weight's
// Kp).
void round_rows_to_bf16(const float* x, int64_t M, int64_t K, int64_t ld_out, uint16_t* out,
                        cudaStream_t stream);

// y[M, N] = x[M, K] · Wᵀ with x given as bf16 bits, rows ld_x apart (ld_x a multiple of 8 and
// >= w.K, x 16-byte aligned; columns past K are not read), fp32 accumulation, then + bias[n]
// (one fp32 add) when bias is not null. y is fp32 [M, N] row-major; nothing outside it is written.
// W: w.Np a multiple of 128, w.Kp a multiple of 32 (launch.h's padding), w.w 16-byte aligned.
// Every M gives each row the same bits (see gemm_wgmma.cu). tile_tokens picks the kernel by its
// tile width over tokens (8, 32: mma.sync; 64, 128, 256: wgmma) for benchmarks and tests; 0 (the
// default) lets M decide. Every choice gives the same bits (bench_gemm runs all five on one window).
void gemm_wgmma(const uint16_t* x, int64_t ld_x, int64_t M, const GemmWeight& w, const float* bias,
                float* y, cudaStream_t stream, int tile_tokens = 0);

// Output columns in parts: columns [col0[i], col0[i + 1]) go to y[i] as rows of
// col0[i + 1] − col0[i] floats (col0[0] = 0, col0[n] = N). The stacked q/k/v or gate/up GEMM
// writes its parts' buffers directly; each element's bits are gemm_wgmma's.
//
// SwiGLU in the epilogue (swiglu.y set, n = 1, no bias): W is gate and up interleaved in blocks
// of 8 rows (stacked rows 16j … 16j + 7 are gate rows 8j … 8j + 7, rows 16j + 8 … 16j + 15 the
// up rows of the same indices: an mma fragment's rows r and r + 8), so one thread holds gate
// and up of an element. It writes swiglu.y[m, f] = (g / (1 + exp(−g)))·u for f < swiglu.F, with the formula
// and exp of cuda::swiglu, and its bf16 rounding to swiglu.y_bf16 (rows ld_bf16 apart) when set:
// the bits of the GEMM, then cuda::swiglu.
struct GemmSwiglu {
  float* y = nullptr;
  uint16_t* y_bf16 = nullptr;
  int64_t F = 0, ld_bf16 = 0;
};
struct GemmParts {
  int n = 1;
  float* y[kMaxSplit] = {};
  int64_t col0[kMaxSplit + 1] = {};
  GemmSwiglu swiglu;
};

void gemm_wgmma_parts(const uint16_t* x, int64_t ld_x, int64_t M, const GemmWeight& w,
                      const float* bias, const GemmParts& out, cudaStream_t stream,
                      int tile_tokens = 0);

// The tile width over tokens that gemm_wgmma picks for M.
int gemm_wgmma_tile_tokens(int64_t M, const GemmWeight& w);

}  // namespace detinfer::cuda
