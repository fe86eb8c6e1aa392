// CPU kernels. Every kernel keeps the determinism contract (DETERMINISM.md; the orders are
// summarised in docs/KERNELS_CPU.md): an output element's reduction runs in one fixed order
// that depends only on the reduced length, never on M (rows in the batch), on which rows are
// present, or on the thread count. Threads split over rows and output columns, never inside a
// reduction. The AVX2+FMA path and the portable path give identical bits (the portable path
// emulates the 8 lanes with fma).
//
// The canonical reduction of length n (dot products, sums of squares, sums of exps):
//   lane l = 0..7 accumulates k ≡ l (mod 8), k < n - n%8, in increasing k, from +0, with fma
//   (plain adds for sums); then ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)); then the tail
//   k = n - n%8 .. n-1 in increasing k, r = fma(a_k, b_k, r).
#pragma once
#include <cstdint>

#include "model/tensor.h"

namespace detinfer {
class ThreadPool;
}

namespace detinfer::cpu {

// Run-time dispatch: the AVX2 path runs when the CPU has AVX2+FMA+F16C and it is enabled (the
// default). Disabling it selects the portable path, which gives the same bits (tests compare).
bool simd_supported();
void set_simd_enabled(bool on);
bool simd_enabled();  // supported and enabled

// y[M, N] = x[M, K] · Wᵀ (+ bias). W is [N, K] in its stored dtype (F32, F16, BF16, Q8_0, Q4_0,
// Q4_1), dequantized on the fly to exactly the values dequantize_row() gives. bias may be null.
// y[m, n] = canonical dot of x[m] and W[n] (see above), then + bias[n] (one rounded add).
// Throws Error if W is not [N, K] or too small for its shape. x and y must not overlap.
void matmul(ThreadPool& pool, const float* x, int64_t M, int64_t K, const TensorView& w, float* y,
            const float* bias = nullptr);

// One row of the embedding table, as fp32 (exactly dequantize_row's values). Throws Error if
// row is out of range.
void embed_row(const TensorView& table, int64_t row, float* out);

// y[m] = x[m] / sqrt(mean(x[m]²) + eps) * weight, rows of length D. In place allowed.
// Exactly: ss = canonical sum of x², r = 1.0f / sqrtf(ss / (float)D + eps), y_i = (x_i · r) · w_i.
void rmsnorm(ThreadPool& pool, const float* x, int64_t M, int64_t D, const float* weight, float eps,
             float* y);

// Rotary embedding, rotate-half convention (pairs i, i + head_dim/2), in place on
// x[M, n_heads, head_dim] with positions pos[M]. inv_freq[head_dim/2] comes from
// rope_inv_freq(); cos/sin are computed in fp64 from pos * inv_freq then rounded, so the
// result depends only on (pos, i). Then x0' = x0·c - x1·s, x1' = x1·c + x0·s in fp32 (no fma).
// rope_inv_freq: inv_freq[i] = theta^(-2i/head_dim) in fp64, with the Llama-3 scaling of Hugging
// Face's _compute_llama3_parameters when llama3_factor > 0 (wavelengths above
// original_max_position/low_freq_factor are divided by factor, those below
// original_max_position/high_freq_factor kept, the band between blended), rounded to fp32 once.
void rope_inv_freq(int head_dim, float theta, float llama3_factor, float low_freq_factor,
                   float high_freq_factor, int original_max_position, float* inv_freq);
void rope(ThreadPool& pool, float* x, int64_t M, int n_heads, int head_dim, const int32_t* pos,
          const float* inv_freq);

// Paged KV cache of one layer: blocks of block_size positions,
// k/v[num_blocks][block_size][n_kv_heads][head_dim], fp32.
struct PagedKV {
  float* k = nullptr;
  float* v = nullptr;
  int64_t num_blocks = 0;
  int block_size = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
};

// Writes token t's k[t], v[t] ([n_kv_heads*head_dim] each) at position pos[t] of the sequence
// whose block table is block_tables[t] (block index for positions [b*block_size,
// (b+1)*block_size)). The caller guarantees the tables cover pos[t] with blocks < num_blocks
// (asserted in debug).
void kv_write(const PagedKV& kv, const float* k, const float* v, int64_t M, const int32_t* pos,
              const int32_t* const* block_tables);

// Causal grouped-query attention over the paged cache, after kv_write. Token t's query
// q[t, n_heads, head_dim] attends to positions 0..pos[t] of its sequence. Keys are visited in
// tiles of 16 aligned to absolute positions, in increasing order, with an online softmax, so
// the result for (sequence, position) does not depend on how the prompt was chunked, what was
// cached, where its blocks are, or what else is in the batch. out[t, n_heads, head_dim].
// scale = 1/sqrt(head_dim) normally. Query head h reads kv head h / (n_heads / n_kv_heads).
// The exact op order is in attention.cpp. head_dim <= 512; n_heads a multiple of n_kv_heads
// (throws Error otherwise).
void attention(ThreadPool& pool, const float* q, int64_t M, const int32_t* pos,
               const int32_t* const* block_tables, const PagedKV& kv, int n_heads, float scale,
               float* out);

// out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)) with det_expf; exactly
// (g / (1.0f + det_expf(-g))) · u. out may alias gate or up.
void swiglu(ThreadPool& pool, const float* gate, const float* up, int64_t n, float* out);

// y[i] += x[i]
void add_inplace(float* y, const float* x, int64_t n);

// out[v] = logits[v] - logsumexp(logits) for one row, in the fixed order that softmax.cpp's
// header gives (4096 lanes, then a balanced tree), which the GPU sampler reproduces bit for bit.
// out may alias logits.
void log_softmax(const float* logits, int64_t V, float* out);

// exp with a fixed polynomial and op order: identical on every x86-64 CPU and in every kernel
// (glibc's expf picks an implementation at run time from the CPU's features).
// Both about 1 ulp over the whole float range; exp overflows to inf above ~88.72, underflows
// through the subnormals to 0; log(0) = -inf, log(x<0) = NaN; NaN in, NaN out.
float det_expf(float x);
float det_logf(float x);
// y[i] = det_expf(x[i]) / det_logf(x[i]), vectorised (same bits as the scalar functions).
void det_expf_n(const float* x, float* y, int64_t n);
void det_logf_n(const float* x, float* y, int64_t n);

}  // namespace detinfer::cpu
