// Internal interface between CudaOps (host code) and the CUDA kernels: one launcher per kernel,
// each enqueued on the given stream, throwing Error if the launch fails. Plain pointers to
// device memory; compiled by both nvcc and the host compiler. The reduction order of every
// kernel is documented at its definition and in docs/CUDA.md.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "model/tensor.h"

namespace detinfer::cuda {

// Throws Error naming `what` if err is not cudaSuccess.
void check(cudaError_t err, const char* what);

// Programmatic dependent launch (pdl.cuh) of the GEMMs and of the norm, RoPE and attention
// kernels between them: on by default, process-wide; off for timing comparisons. Results are
// the same either way.
void set_pdl(bool enabled);

// ---- GEMM ----------------------------------------------------------------------------------------
// Tile shape of the one GEMM kernel. Weights are stored padded to these multiples (zeros), so
// the kernel reads whole weight tiles without bounds checks.
constexpr int kGemmBM = 64;   // rows of x per block
constexpr int kGemmBN = 128;  // rows of W (output columns) per block
constexpr int kGemmBK = 32;   // K per shared-memory stage

struct GemmWeight {
  const uint16_t* w = nullptr;  // bf16 bits, [Np, Kp] row-major, zero beyond [N, K]
  int64_t N = 0, K = 0;         // logical shape
  int64_t Np = 0, Kp = 0;       // padded: multiples of kGemmBN and kGemmBK
};

constexpr int kGemmSmallM = 64;  // up to this M a streaming schedule (same bits) serves decode

// y[M, N] = bf16(x[M, K]) · Wᵀ, fp32 accumulation, then + bias[n] (bias may be null). Every M
// gives each row the same bits; M <= kGemmSmallM runs the small-M schedule.
void gemm_bf16(const float* x, int64_t M, const GemmWeight& w, const float* bias, float* y,
               cudaStream_t stream);

// Tests and benchmarks: false makes every M use the large-M schedule (default true).
void set_gemm_small_m_kernel(bool enabled);

// out[i][m, j] = y[m, offset[i] + j] for j < width[i]: a stacked GEMM's output split into the
// outputs of its parts (rows of width[i] floats).
constexpr int kMaxSplit = 4;
struct SplitColumns {
  int n = 0;
  float* out[kMaxSplit] = {};
  int64_t offset[kMaxSplit] = {}, width[kMaxSplit] = {};
};
void split_columns(const float* y, int64_t M, int64_t N, const SplitColumns& parts,
                   cudaStream_t stream);

// ---- row and element-wise kernels ------------------------------------------------------------------
// y = rmsnorm(x) row by row. residual != null: first x += residual (stored), then the norm of
// the sum (the same bits as add() then rmsnorm()). twin != null: y also as bf16 rows of twin_ld
// (what round_rows_to_bf16 makes of y), so the next GEMM skips its rounding pass.
void rmsnorm(float* x, const float* residual, int64_t rows, int64_t D, const float* w, float eps,
             float* y, uint16_t* twin, int64_t twin_ld, cudaStream_t stream);
// x[T, n_heads, head_dim] rotated in place; cos/sin tables [positions][head_dim/2].
void rope(float* x, int64_t T, int n_heads, int head_dim, const int32_t* pos, const float* cos_tab,
          const float* sin_tab, cudaStream_t stream);
// rope() of q [T, n_heads, head_dim] and of k [T, n_kv_heads, head_dim] in place, then the rows of
// the rotated k and of v into a bf16 cache (attention.h's kv_write_bf16: slots[t], round to
// nearest even): the bits of the three separate launches, in one.
void rope_kv_write(float* q, float* k, const float* v, int64_t T, int n_heads, int n_kv_heads,
                   int head_dim, const int32_t* pos, const float* cos_tab, const float* sin_tab,
                   uint16_t* k_cache, uint16_t* v_cache, const int32_t* slots, cudaStream_t stream);
// twin != null: out also as bf16, rows of `cols` values twin_ld apart.
void swiglu(const float* gate, const float* up, int64_t n, float* out, uint16_t* twin,
            int64_t cols, int64_t twin_ld, cudaStream_t stream);
void add(float* y, const float* x, int64_t n, cudaStream_t stream);
void exp_n(const float* x, int64_t n, float* y, cudaStream_t stream);
// `--determinism off` only (the cuBLAS path): y[r, n] += bias[n].
void add_bias(float* y, int64_t rows, int64_t N, const float* bias, cudaStream_t stream);
// x[t, :] = dequantized row tokens[t] of a table stored as `dtype` rows of row_bytes bytes.
void embed(const uint8_t* table, DType dtype, int64_t row_bytes, int64_t D, const int32_t* tokens,
           int64_t T, float* x, cudaStream_t stream);
// out[i, :] = x[rows[i], :], rows of D floats.
void gather_rows(const float* x, int64_t D, const int32_t* rows, int64_t L, float* out,
                 cudaStream_t stream);

// ---- paged KV cache and attention ----------------------------------------------------------------
// One layer's cache: k/v[num_blocks][block_size][n_kv_heads][head_dim], fp32.
// kv_write: row (n_kv_heads*head_dim floats) of token t goes to cache slot slots[t]
// (= block * block_size + pos % block_size).
void kv_write(float* k_cache, float* v_cache, const float* k, const float* v, int64_t T,
              int64_t row, const int32_t* slots, cudaStream_t stream);

constexpr int kAttnTile = 16;  // key positions per tile, aligned to absolute positions

struct AttentionArgs {
  const float* q = nullptr;        // [T, n_heads, head_dim]
  float* out = nullptr;            // [T, n_heads, head_dim]
  const float* k_cache = nullptr;  // the layer's cache
  const float* v_cache = nullptr;
  const int32_t* pos = nullptr;        // [T]
  const int32_t* table_off = nullptr;  // [T]: where token t's block table starts in `tables`
  const int32_t* tables = nullptr;     // flattened block tables
  int64_t T = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0, block_size = 0;
  float scale = 0;
};
constexpr int kAttnMaxHeadDim = 512;
void attention(const AttentionArgs& a, cudaStream_t stream);

}  // namespace detinfer::cuda
