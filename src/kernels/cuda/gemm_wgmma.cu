// The Hopper GEMM: y[M, N] = x[M, K] · Wᵀ (+ bias) with wgmma (sm_90a), bf16 inputs, fp32
// accumulators, for every M, decode and prefill alike.
//
// "Swap AB": W is wgmma's A operand (64 rows of W per consumer warpgroup) and the tokens are its
// B operand (TN = 8 ... 256 tokens on wgmma's N side). A 64-row slice of W is the smallest unit of
// work, so decode (M = 1..8) runs the same instruction with n8 that prefill runs with n256.
//
// Why a row's bits do not depend on M: each output element y[m, n] has one fp32 accumulator that
// starts at +0 and goes through one wgmma k16 step per 16 values of K, k = 0, 16, 32, ... in
// increasing order, up to the weight's padded K (zeros past K): no split-K, no stream-K, no order
// that depends on the grid or on M. The result of a wgmma for one element depends only on its row
// of A, its column of B and its accumulator, whatever N is (bench_mma_bits checks this on the
// hardware; bench_gemm checks whole rows at several M). Then + bias[n] in one fp32 add.
//
// Pipeline: one producer warpgroup (one thread issues TMA loads of a 64·WG × 64 W tile and a
// TN × 64 token tile per stage, 128-byte swizzle) and WG consumer warpgroups, ST stages, a "full"
// mbarrier (TMA transaction bytes) and an "empty" mbarrier (consumers done) per stage. Persistent
// grid, tiles in order with the token tile fastest, so the CTAs that run together share a W tile
// and W streams from memory about once.
//
// For M <= 32 the same chain runs on mma.sync (gemm_small_kernel below): bit for bit the same
// result per element, shorter latency per K step.
//
// Programmatic dependent launch: both kernels may start while the kernel before them runs (a
// norm, attention, the gate/up GEMM: latency-bound at decode, the memory idle). The producer
// loads the weight tiles of its first stages, which nothing before it writes, then waits for that
// kernel (pdl_wait) before it loads any activation; nothing is written before the activations
// arrive. Only the time of the loads moves, not a value.
//
// The small-M kernel lets the next kernel launch as soon as it starts (griddepcontrol.
// launch_dependents first): the norm or RoPE after it launches and waits, launches the GEMM after
// it in turn, and that GEMM's CTAs take each SM the moment this one's CTA leaves it and load
// their first weight tiles while the rest of this grid, the norm and the kernel boundaries run.
// Triggering after the K loop instead left each SM idle from its CTA's exit until the whole grid
// had finished (H200, batch 1: 231.4 -> 238.8 tok/s; the GEMMs alone, the other kernels left out,
// 3.94 -> 3.71 ms a step). DETINFER_GEMM_EARLY=0 triggers after the K loop, for timing.
//
// Outputs in parts (GemmParts): the stacked q/k/v or gate/up weights run as one GEMM whose
// columns go straight to each part's buffer, so no split pass follows. Addresses only.
// SwiGLU in the epilogue (GemmSwiglu): gate and up interleaved in blocks of 8 rows, so the
// thread that holds gate row f of a token also holds its up row and writes swiglu(g, u) and its
// bf16 rounding (the down projection's input); the GEMM's bits, then cuda::swiglu's.
#include <cuda.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "common/error.h"
#include "kernels/cuda/det_math.cuh"
#include "kernels/cuda/gemm_wgmma.h"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace detinfer::cuda {

namespace {

using namespace sm90;
constexpr int kBK = 64;  // K per stage: one 128-byte swizzle row of bf16

template <int TN, int WG, int ST>
struct Cfg {
  static constexpr int kRows = 64 * WG;  // W rows per CTA
  static constexpr int kWBytes = kRows * kBK * 2, kXBytes = TN * kBK * 2;
  static constexpr int kStageBytes = kWBytes + kXBytes;
  static constexpr int kThreads = 128 * (WG + 1);
  static constexpr size_t kSmem = size_t{ST} * kStageBytes + 1024 + 2 * ST * sizeof(uint64_t);
  static_assert(kXBytes % 1024 == 0 && kWBytes % 1024 == 0, "tiles must stay 1024-byte aligned");
  static_assert(kSmem <= 227 * 1024, "shared memory");
};

// Where output column n goes: its part's buffer, that part's first column and row width.
struct PartOut {
  float* y;
  int64_t c0, width;
};
__device__ __forceinline__ PartOut part_of(const GemmParts& p, int64_t n) {
  PartOut o{p.y[0], 0, p.col0[1]};
#pragma unroll
  for (int j = 1; j < kMaxSplit; ++j)
    if (j < p.n && n >= p.col0[j]) o = PartOut{p.y[j], p.col0[j], p.col0[j + 1] - p.col0[j]};
  return o;
}

// SwiGLU epilogue (GemmSwiglu): g and u are the accumulators of stacked rows n_gate and
// n_gate + 8 (n_gate % 16 < 8) for token m; cuda::swiglu's formula, exp and rounding.
__device__ __forceinline__ void store_swiglu(const GemmSwiglu& a, int64_t M, int64_t n_gate,
                                             int64_t m, float g, float u) {
  const int64_t f = (n_gate >> 4) * 8 + (n_gate & 7);
  if (f >= a.F || m >= M) return;
  const float v = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, det_expf(-g))), u);
  __stcs(&a.y[m * a.F + f], v);
  if (a.y_bf16) a.y_bf16[m * a.ld_bf16 + f] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

// Persistent: CTA b computes tiles b, b + gridDim.x, ... (token tile fastest), so the producer
// already loads the next tile's first stages while the consumers store the last one. Which CTA
// computes a tile never changes how it is computed.
template <int TN, int WG, int ST>
__global__ void __launch_bounds__(Cfg<TN, WG, ST>::kThreads, 1)
    gemm_wgmma_kernel(const __grid_constant__ CUtensorMap tm_w,
                      const __grid_constant__ CUtensorMap tm_x, int64_t M, int64_t N, int k_tiles,
                      int tok_tiles, int tiles, const float* __restrict__ bias,
                      const GemmParts out) {
  using C = Cfg<TN, WG, ST>;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  uint64_t* full = reinterpret_cast<uint64_t*>(base + ST * C::kStageBytes);
  uint64_t* empty = full + ST;
  const int wg = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < ST; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], WG * 128);
    }
    mbar_fence_init();
  }
  __syncthreads();

  if (wg == 0) {  // producer
    if (threadIdx.x == 0) {
      tma_prefetch_map(&tm_w);
      tma_prefetch_map(&tm_x);
      // The activations are read again by every W tile: keep them in L2 over the streamed W and y.
      const uint64_t keep = l2_evict_last();
      // Stage `it` (over all tiles of this CTA): tile blockIdx.x + (it / k_tiles)·gridDim.x.
      const int total = (tiles - static_cast<int>(blockIdx.x) + static_cast<int>(gridDim.x) - 1) /
                        static_cast<int>(gridDim.x) * k_tiles;
      const int pre = total < ST ? total : ST;
      auto w_load = [&](int it) {
        const int t = blockIdx.x + (it / k_tiles) * gridDim.x, kt = it % k_tiles, s = it % ST;
        if (it >= ST) mbar_wait(&empty[s], ((it / ST) - 1) & 1);
        mbar_arrive_expect_tx(&full[s], C::kStageBytes);
        tma_load_2d(base + s * C::kStageBytes, &tm_w, kt * kBK, (t / tok_tiles) * C::kRows, &full[s]);
      };
      auto x_load = [&](int it) {
        const int t = blockIdx.x + (it / k_tiles) * gridDim.x, kt = it % k_tiles, s = it % ST;
        tma_load_2d_hint(base + s * C::kStageBytes + C::kWBytes, &tm_x, kt * kBK, (t % tok_tiles) * TN,
                         &full[s], keep);
      };
      for (int it = 0; it < pre; ++it) w_load(it);  // weights: written by no earlier kernel
      pdl_wait();
      for (int it = 0; it < pre; ++it) x_load(it);
      for (int it = pre; it < total; ++it) w_load(it), x_load(it);
    }
    return;
  }

  const int c = wg - 1;  // consumer: W rows row0 + 64c ... + 63
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  int it = 0;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int tok0 = (t % tok_tiles) * TN, row0 = (t / tok_tiles) * C::kRows;
    float acc[TN / 2];
#pragma unroll
    for (int i = 0; i < TN / 2; ++i) acc[i] = 0.0f;
    for (int kt = 0; kt < k_tiles; ++kt, ++it) {
      const int s = it % ST;
      mbar_wait(&full[s], (it / ST) & 1);
      const uint8_t* st = base + s * C::kStageBytes;
      const uint64_t da = desc_sw128(st + c * 64 * kBK * 2), db = desc_sw128(st + C::kWBytes);
      wgmma_fence();
#pragma unroll
      for (int k = 0; k < kBK / 16; ++k) wgmma_bf16<TN>(acc, da + 2 * k, db + 2 * k);  // +32 B
      wgmma_commit();
      wgmma_wait<1>();  // the previous stage's MMAs are done: hand its buffers back
      // (every consumer thread arrives: a lane-0 branch here makes ptxas serialize the wgmmas)
      if (kt > 0) mbar_arrive(&empty[(it - 1) % ST]);
    }
    wgmma_wait<0>();
    mbar_arrive(&empty[(it - 1) % ST]);

    // Register i holds W row 16·warp + lane/4 + 8·((i>>1)&1), token 8·(i>>2) + 2·(lane%4) + (i&1).
    const int64_t n_lo = row0 + 64 * c + 16 * warp + (lane >> 2);
    const int64_t m_lo = tok0 + 2 * (lane & 3);
    if (out.swiglu.y) {  // registers 4q + e and 4q + 2 + e: gate and up of one element
#pragma unroll
      for (int q = 0; q < TN / 8; ++q)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          store_swiglu(out.swiglu, M, n_lo, m_lo + 8 * q + e, acc[4 * q + e], acc[4 * q + 2 + e]);
      continue;
    }
    float bias_v[2] = {0.0f, 0.0f};
    if (bias) {
      if (n_lo < N) bias_v[0] = bias[n_lo];
      if (n_lo + 8 < N) bias_v[1] = bias[n_lo + 8];
    }
    const PartOut po[2] = {part_of(out, n_lo), part_of(out, n_lo + 8)};
#pragma unroll
    for (int i = 0; i < TN / 2; ++i) {
      const int h = (i >> 1) & 1;
      const int64_t n = n_lo + 8 * h, m = m_lo + 8 * (i >> 2) + (i & 1);
      // Streaming stores: y is written once and must not push the activations out of L2.
      if (n < N && m < M)
        __stcs(&po[h].y[m * po[h].width + (n - po[h].c0)], bias ? __fadd_rn(acc[i], bias_v[h]) : acc[i]);
    }
  }
}

// ---- small M: the same chain on mma.sync ----
// For M <= 32 the critical path is the chain of K/16 MMA steps of each element, and a wgmma
// step has a long latency. mma.sync.m16n8k16 computes the same bits per element as wgmma
// (bench_mma_bits: equal on adversarial data, K = 16 and 4096; bench_gemm's T1 compares these rows
// with the M = 4096 wgmma run) with a much shorter latency, and 16-row warps give N/16
// independent chains instead of N/64. Same TMA pipeline and swizzled tiles; each consumer warp
// owns 16 W rows (mma's A, via ldmatrix) × TN tokens (TN/8 n8 tiles as B), one producer warp.
// Decode streams W once: a CTA takes W·16 rows, W the fewest warps that make the grid one wave
// of the GPU's SMs (a second, partly filled wave costs as much as a full one), with as many
// stages (up to 16) as fit beside a decode attention CTA. Neither choice touches an element's
// chain. (H200, 8B model, batch-1 decode: 186.5 -> 195 tok/s against 32-row CTAs in waves.)
//
// With few warps per SM (the 4096- and 6144-row weights: 2-3) each warp's loop sets the pace:
// such a GEMM took as long for 6144 rows as for 4096, and in proportion to K. So a stage holds
// KS = 4 K tiles where four such stages fit: one TMA box per operand and one barrier wait per 4
// tiles instead of per tile, and tile j + 1's fragments load while tile j's MMAs run (H200,
// M = 1: 4096 × 4096 12.0 -> 8.3 µs, 4096 × 14336 37.2 -> 30.8 µs). The MMAs and their order
// are those of KS = 1. DETINFER_GEMM_KS=1 keeps one tile per stage, for timing.
constexpr int kSmallRows = 16;                   // W rows per consumer warp
constexpr size_t kSmallSmemBudget = 144 * 1024;  // stage buffers per CTA
// KS: K tiles per stage (one TMA box per operand and one barrier wait for all of them).
template <int TN, int W, int KS>
struct SmallCfg {
  static constexpr int kWBytes = W * kSmallRows * kBK * 2, kXBytes = TN * kBK * 2;  // per K tile
  static constexpr int kStageBytes = KS * (kWBytes + kXBytes);
  static constexpr int kStages = kSmallSmemBudget / kStageBytes < 4    ? 4
                                 : kSmallSmemBudget / kStageBytes > 16 ? 16
                                                                       : int(kSmallSmemBudget / kStageBytes);
  static constexpr int kThreads = 32 * (W + 1);
  static constexpr size_t kSmem = size_t{kStages} * kStageBytes + 1024 + 2 * kStages * sizeof(uint64_t);
  static_assert(kXBytes % 1024 == 0 && kWBytes % 1024 == 0, "tiles must stay 1024-byte aligned");
  static_assert(kSmem <= 227 * 1024, "shared memory");
};
// 4 K tiles per stage where 4 such stages fit the budget (TN = 8: up to 4 warps, the 4096- and
// 6144-row weights at decode; TN = 32: up to 2), else 1.
template <int TN, int W>
constexpr int small_ks() { return 4 * 4 * (SmallCfg<TN, W, 1>::kStageBytes) <= kSmallSmemBudget ? 4 : 1; }

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// d += a · b for one m16n8k16 tile (row-major A = W rows, column-major B = tokens).
__device__ __forceinline__ void mma_bf16(float* d, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <int TN, int W, int KS>
__global__ void __launch_bounds__(SmallCfg<TN, W, KS>::kThreads)
    gemm_small_kernel(const __grid_constant__ CUtensorMap tm_w,
                      const __grid_constant__ CUtensorMap tm_x, int64_t M, int64_t N, int k_tiles,
                      const float* __restrict__ bias, const GemmParts out, int early_launch) {
  using C = SmallCfg<TN, W, KS>;
  constexpr int ST = C::kStages;
  if (early_launch) pdl_launch_dependents();
  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  uint64_t* full = reinterpret_cast<uint64_t*>(base + ST * C::kStageBytes);
  uint64_t* empty = full + ST;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int tok0 = blockIdx.x * TN;
  const int row0 = blockIdx.y * W * kSmallRows;
  const int n_stages = k_tiles / KS;  // the launcher picks KS > 1 only where it divides

  if (threadIdx.x == 0) {
    for (int s = 0; s < ST; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], W);
    }
    mbar_fence_init();
  }
  __syncthreads();

  // A stage: KS W tiles, then KS token tiles, each as make_map's box would land. KS > 1 loads
  // each operand's KS tiles as one box of make_map's [K tile][row][64] view.
  if (warp == W) {  // producer
    if (lane == 0) {
      tma_prefetch_map(&tm_w);
      tma_prefetch_map(&tm_x);
      auto w_load = [&](int st) {
        const int s = st % ST;
        if (st >= ST) mbar_wait(&empty[s], ((st / ST) - 1) & 1);
        mbar_arrive_expect_tx(&full[s], C::kStageBytes);
        if constexpr (KS == 1) tma_load_2d(base + s * C::kStageBytes, &tm_w, st * kBK, row0, &full[s]);
        else tma_load_3d(base + s * C::kStageBytes, &tm_w, 0, row0, st * KS, &full[s]);
      };
      auto x_load = [&](int st) {
        const int s = st % ST;
        uint8_t* dst = base + s * C::kStageBytes + KS * C::kWBytes;
        if constexpr (KS == 1) tma_load_2d(dst, &tm_x, st * kBK, tok0, &full[s]);
        else tma_load_3d(dst, &tm_x, 0, tok0, st * KS, &full[s]);
      };
      const int pre = n_stages < ST ? n_stages : ST;
      for (int st = 0; st < pre; ++st) w_load(st);  // weights: written by no earlier kernel
      pdl_wait();
      for (int st = 0; st < pre; ++st) x_load(st);
      for (int st = pre; st < n_stages; ++st) w_load(st), x_load(st);
    }
    return;
  }

  float acc[TN / 8][4];
#pragma unroll
  for (int j = 0; j < TN / 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.0f;
  // ldmatrix row addresses in the swizzled tiles (16-byte chunk c of row r at c ^ (r % 8)):
  // A: lanes 0-15 rows 0-15 at K chunk 2k, lanes 16-31 the same rows at chunk 2k + 1;
  // B: lane l gives token row l % 8 at chunk 4p + l / 8, i.e. K steps 2p and 2p + 1.
  const int a_row = warp * 16 + (lane & 15), a_chunk = lane >> 4;
  const int b_row = lane & 7, b_chunk = lane >> 3;
  struct Frags {
    uint32_t a[kBK / 16][4];          // per K step
    uint32_t b[TN / 8][kBK / 32][4];  // per n8 tile, per pair of K steps
  };
  // The next stage to consume and the parity of its fill (kept as counters: no division in the
  // loop that bounds the stream).
  int s_next = 0;
  uint32_t parity = 0;
  const uint32_t stage0 = smem_addr(base);
  // This warp's fragments of K tile `sub` of the stage at `st_addr`.
  auto ldm = [&](Frags& f, uint32_t st_addr, int sub) {
    const uint32_t wt = st_addr + sub * C::kWBytes, xt = st_addr + KS * C::kWBytes + sub * C::kXBytes;
#pragma unroll
    for (int k = 0; k < kBK / 16; ++k)
      ldmatrix_x4(f.a[k], wt + a_row * 128 + (((2 * k + a_chunk) ^ (a_row & 7)) << 4));
#pragma unroll
    for (int j = 0; j < TN / 8; ++j)
#pragma unroll
      for (int p = 0; p < kBK / 32; ++p)
        ldmatrix_x4(f.b[j][p], xt + (8 * j + b_row) * 128 + (((4 * p + b_chunk) ^ b_row) << 4));
  };
  // Waits for the next stage; returns its address.
  auto wait_stage = [&]() {
    mbar_wait(&full[s_next], parity);
    return stage0 + s_next * C::kStageBytes;
  };
  // Hands the stage back once this warp's fragments of it are in registers.
  auto release = [&]() {
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s_next]);
    if (++s_next == ST) s_next = 0, parity ^= 1u;
  };
  // The K steps of one K tile, in increasing K for every accumulator.
  auto mma_tile = [&](const Frags& f) {
#pragma unroll
    for (int k = 0; k < kBK / 16; ++k)
#pragma unroll
      for (int j = 0; j < TN / 8; ++j) mma_bf16(acc[j], f.a[k], &f.b[j][k >> 1][2 * (k & 1)]);
  };
  // Software pipeline over K tiles: the next tile's fragments load while this one's MMAs run.
  Frags f[2];
  if constexpr (KS == 1) {
    ldm(f[0], wait_stage(), 0);
    release();
    for (int kt = 0; kt < k_tiles; kt += 2) {
      if (kt + 1 < k_tiles) ldm(f[1], wait_stage(), 0), release();
      mma_tile(f[0]);
      if (kt + 1 < k_tiles) {
        if (kt + 2 < k_tiles) ldm(f[0], wait_stage(), 0), release();
        mma_tile(f[1]);
      }
    }
  } else {  // one wait per stage; tile j + 1 of a stage loads during tile j's MMAs
    static_assert(KS % 2 == 0, "the fragment buffers alternate within a stage");
    uint32_t cur = wait_stage();
    ldm(f[0], cur, 0);
    for (int st = 0; st < n_stages; ++st) {
#pragma unroll
      for (int j = 0; j < KS; ++j) {
        if (j + 1 < KS) {
          ldm(f[(j + 1) & 1], cur, j + 1);
        } else {
          release();
          if (st + 1 < n_stages) cur = wait_stage(), ldm(f[0], cur, 0);
        }
        mma_tile(f[j & 1]);
      }
    }
  }

  if (!early_launch) pdl_launch_dependents();
  // acc[j][i]: W row 16·warp + lane/4 + 8·(i>>1), token 8j + 2·(lane%4) + (i&1).
  const int64_t n_lo = row0 + 16 * warp + (lane >> 2);
  const int64_t m_lo = tok0 + 2 * (lane & 3);
  if (out.swiglu.y) {  // acc[j][e] and acc[j][2 + e]: gate and up of one element
#pragma unroll
    for (int j = 0; j < TN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e)
        store_swiglu(out.swiglu, M, n_lo, m_lo + 8 * j + e, acc[j][e], acc[j][2 + e]);
    return;
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t n = n_lo + 8 * h;
    if (n >= N) continue;
    const float bv = bias ? bias[n] : 0.0f;
    const PartOut po = part_of(out, n);
    float* yn = po.y + (n - po.c0);
#pragma unroll
    for (int j = 0; j < TN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t m = m_lo + 8 * j + e;
        if (m < M) __stcs(&yn[m * po.width], bias ? __fadd_rn(acc[j][2 * h + e], bv) : acc[j][2 * h + e]);
      }
  }
}

__global__ void round_rows_kernel(const float* __restrict__ x, int64_t M, int64_t K, int64_t ld,
                                  uint16_t* __restrict__ out) {
  pdl_launch_dependents();  // the GEMM that reads this may start loading its weights
  pdl_wait();
  const int64_t total = M * ld;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t m = i / ld, k = i - m * ld;
    out[i] = k < K ? __bfloat16_as_ushort(__float2bfloat16_rn(x[m * K + k])) : uint16_t{0};
  }
}

// A bf16 tensor map: `inner` columns (contiguous), `rows` rows `stride` elements apart, boxes of
// 64 columns × box_rows rows, 128-byte swizzle, zeros outside the tensor. ks > 1: the same rows
// viewed as [K tile][row][64 columns] (inner a multiple of 64, no edge at inner), boxes of
// box_rows rows × ks K tiles, which land as ks of the 2-D boxes one after another.
CUtensorMap make_map(const uint16_t* p, int64_t inner, int64_t rows, int64_t stride, int box_rows,
                     const char* what, int ks = 1) {
  CUtensorMap map;
  const cuuint32_t rank = ks == 1 ? 2 : 3;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(ks == 1 ? inner : kBK), static_cast<cuuint64_t>(rows),
                              static_cast<cuuint64_t>(inner / kBK)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(stride) * 2, kBK * 2};
  const cuuint32_t box[3] = {kBK, static_cast<cuuint32_t>(box_rows), static_cast<cuuint32_t>(ks)};
  const cuuint32_t elem[3] = {1, 1, 1};
  const CUresult r = cuTensorMapEncodeTiled(
      &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rank, const_cast<uint16_t*>(p), dims, strides, box,
      elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  DETINFER_CHECK(r == CUDA_SUCCESS, "gemm_wgmma: cannot describe ", what, " for TMA (CUresult ",
                 static_cast<int>(r), ", ", ks, " K tiles per box)");
  return map;
}

template <int TN, int WG, int ST>
void launch(const uint16_t* x, int64_t ld_x, int64_t M, const GemmWeight& w, const float* bias,
            const GemmParts& out, cudaStream_t stream) {
  using C = Cfg<TN, WG, ST>;
  const CUtensorMap tm_w = make_map(w.w, w.Kp, w.Np, w.Kp, C::kRows, "the weight");
  const CUtensorMap tm_x = make_map(x, w.K, M, ld_x, TN, "the activations");
  auto kernel = gemm_wgmma_kernel<TN, WG, ST>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(C::kSmem)),
        "gemm_wgmma shared memory");
  int dev = 0, sms = 0, per_sm = 0;
  check(cudaGetDevice(&dev), "gemm_wgmma device");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "gemm_wgmma SMs");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, C::kThreads, C::kSmem),
        "gemm_wgmma occupancy");
  const int64_t tok_tiles = (M + TN - 1) / TN, tiles = tok_tiles * (w.Np / C::kRows);
  DETINFER_CHECK(tiles < (int64_t{1} << 31), "gemm_wgmma: ", tiles, " tiles is too many");
  const int grid = static_cast<int>(std::min<int64_t>(tiles, int64_t{std::max(per_sm, 1)} * sms));
  const int k_tiles = static_cast<int>((w.Kp + kBK - 1) / kBK);
  launch_pdl(kernel, dim3(static_cast<unsigned>(grid)), dim3(C::kThreads), C::kSmem, stream, "gemm_wgmma launch",
             tm_w, tm_x, M, w.N, k_tiles, static_cast<int>(tok_tiles), static_cast<int>(tiles), bias, out);
}

template <int TN, int W, int KS>
void launch_small_ks(const uint16_t* x, int64_t ld_x, int64_t M, const GemmWeight& w,
                     const float* bias, const GemmParts& out, cudaStream_t stream) {
  using C = SmallCfg<TN, W, KS>;
  const CUtensorMap tm_w = make_map(w.w, w.Kp, w.Np, w.Kp, W * kSmallRows, "the weight", KS);
  const CUtensorMap tm_x = make_map(x, w.K, M, ld_x, TN, "the activations", KS);
  auto kernel = gemm_small_kernel<TN, W, KS>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(C::kSmem)),
        "gemm_wgmma shared memory");
  const int64_t units = (w.N + kSmallRows - 1) / kSmallRows;
  const dim3 grid(static_cast<unsigned>((M + TN - 1) / TN), static_cast<unsigned>((units + W - 1) / W));
  const int k_tiles = static_cast<int>((w.Kp + kBK - 1) / kBK);
  static const int early_launch = [] {
    const char* e = std::getenv("DETINFER_GEMM_EARLY");
    return e && std::string(e) == "0" ? 0 : 1;
  }();
  launch_pdl(kernel, grid, dim3(C::kThreads), C::kSmem, stream, "gemm_wgmma launch", tm_w, tm_x, M, w.N,
             k_tiles, bias, out, early_launch);
}

// Several K tiles per stage need whole 64-column tiles with nothing past K (the [K tile][row][64]
// view has no edge at K): K = Kp, a multiple of 64·KS.
template <int TN, int W>
void launch_small(const uint16_t* x, int64_t ld_x, int64_t M, const GemmWeight& w,
                  const float* bias, const GemmParts& out, cudaStream_t stream) {
  constexpr int ks = small_ks<TN, W>();
  if constexpr (ks > 1) {
    static const bool enabled = [] {
      const char* e = std::getenv("DETINFER_GEMM_KS");
      return !(e && std::string(e) == "1");
    }();
    if (enabled && w.K == w.Kp && w.Kp % (kBK * ks) == 0)
      return launch_small_ks<TN, W, ks>(x, ld_x, M, w, bias, out, stream);
  }
  launch_small_ks<TN, W, 1>(x, ld_x, M, w, bias, out, stream);
}

// Warps per CTA of the small-M kernel for N rows of W on `sms` SMs: the fewest (of those built)
// that put every 16-row chain in one wave; past 16 (TN 8) or 8 (TN 32), several waves of the
// largest.
int small_warps(int64_t N, int tn, int sms) {
  const int64_t units = (N + kSmallRows - 1) / kSmallRows;
  const int64_t need = (units + sms - 1) / sms;
  for (int w : {1, 2, 3, 4, 6, 8, 12, 14, 16})
    if (w >= need || w == (tn <= 8 ? 16 : 8)) return w;
  return tn <= 8 ? 16 : 8;
}

int sm_count() {
  static const int sms = [] {
    int dev = 0, n = 0;
    check(cudaGetDevice(&dev), "gemm_wgmma device");
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "gemm_wgmma SMs");
    return n > 0 ? n : 1;
  }();
  return sms;
}

template <int TN>
void launch_small_any(const uint16_t* x, int64_t ld_x, int64_t M, const GemmWeight& w,
                      const float* bias, const GemmParts& out, cudaStream_t stream) {
  const int ws = small_warps(w.N, TN, sm_count());
  switch (ws) {
    case 1: return launch_small<TN, 1>(x, ld_x, M, w, bias, out, stream);
    case 2: return launch_small<TN, 2>(x, ld_x, M, w, bias, out, stream);
    case 3: return launch_small<TN, 3>(x, ld_x, M, w, bias, out, stream);
    case 4: return launch_small<TN, 4>(x, ld_x, M, w, bias, out, stream);
    case 6: return launch_small<TN, 6>(x, ld_x, M, w, bias, out, stream);
    case 8: return launch_small<TN, 8>(x, ld_x, M, w, bias, out, stream);
    default:
      if constexpr (TN <= 8) {
        if (ws == 12) return launch_small<TN, 12>(x, ld_x, M, w, bias, out, stream);
        if (ws == 14) return launch_small<TN, 14>(x, ld_x, M, w, bias, out, stream);
        return launch_small<TN, 16>(x, ld_x, M, w, bias, out, stream);
      } else {
        return launch_small<TN, 8>(x, ld_x, M, w, bias, out, stream);
      }
  }
}

// Large tiles (128 W rows × 256 tokens) once they fill about one wave of a 132-SM H100/H200.
bool big_tiles(int64_t M, const GemmWeight& w) { return (w.Np / 128) * ((M + 255) / 256) >= 100; }

}  // namespace

int gemm_wgmma_tile_tokens(int64_t M, const GemmWeight& w) {
  if (M <= 8) return 8;
  if (M <= 32) return 32;
  if (M <= 64) return 64;
  // 256-token tiles would be at least half empty up to M = 128 (H200, 28672 × 4096 at M = 128:
  // 0.132 ms against 0.076 with 128-token tiles).
  return M > 128 && big_tiles(M, w) ? 256 : 128;
}

void round_rows_to_bf16(const float* x, int64_t M, int64_t K, int64_t ld_out, uint16_t* out,
                        cudaStream_t stream) {
  if (M <= 0) return;
  DETINFER_CHECK(K >= 0 && ld_out >= K, "round_rows_to_bf16: ld_out ", ld_out, " < K ", K);
  const int64_t total = M * ld_out;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65536));
  launch_pdl(round_rows_kernel, dim3(blocks), dim3(256), 0, stream, "round_rows_to_bf16 launch", x, M, K,
             ld_out, out);
}

void gemm_wgmma(const uint16_t* x, int64_t ld_x, int64_t M, const GemmWeight& w, const float* bias,
                float* y, cudaStream_t stream, int tile_tokens) {
  GemmParts out;
  out.n = 1, out.y[0] = y, out.col0[1] = w.N;
  gemm_wgmma_parts(x, ld_x, M, w, bias, out, stream, tile_tokens);
}

void gemm_wgmma_parts(const uint16_t* x, int64_t ld_x, int64_t M, const GemmWeight& w,
                      const float* bias, const GemmParts& out, cudaStream_t stream, int tile_tokens) {
  if (M <= 0 || w.N <= 0) return;
  DETINFER_CHECK(w.Np % 128 == 0 && w.Kp % 32 == 0 && w.Np >= w.N && w.Kp >= w.K && w.K > 0,
                 "gemm_wgmma: weight padding ", w.Np, "x", w.Kp, " does not fit the tile shape");
  DETINFER_CHECK(ld_x % 8 == 0 && ld_x >= w.K, "gemm_wgmma: activation row stride ", ld_x,
                 " must be a multiple of 8 and >= K = ", w.K);
  DETINFER_CHECK(reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w.w) % 16 == 0,
                 "gemm_wgmma: operands must be 16-byte aligned");
  DETINFER_CHECK(M < (int64_t{1} << 31) - 256 && w.Np / 64 <= 65535,
                 "gemm_wgmma: M = ", M, ", Np = ", w.Np, " is more than one launch takes");
  DETINFER_CHECK(tile_tokens == 0 || tile_tokens == 8 || tile_tokens == 32 || tile_tokens == 64 ||
                     tile_tokens == 128 || tile_tokens == 256,
                 "gemm_wgmma: no kernel with a tile of ", tile_tokens, " tokens");
  if (const GemmSwiglu& a = out.swiglu; a.y) {
    DETINFER_CHECK(a.F > 0 && w.N == 16 * ((a.F + 7) / 8) && !bias && (!a.y_bf16 || a.ld_bf16 >= a.F),
                   "gemm_wgmma: SwiGLU of ", a.F, " columns needs an interleaved gate/up weight of ",
                   16 * ((a.F + 7) / 8), " rows (has ", w.N, "), no bias and a bf16 row stride >= F");
  } else {
    DETINFER_CHECK(out.n >= 1 && out.n <= kMaxSplit && out.col0[0] == 0 && out.col0[out.n] == w.N,
                   "gemm_wgmma: ", out.n, " output parts must cover the ", w.N, " columns");
    for (int i = 0; i < out.n; ++i)
      DETINFER_CHECK(out.y[i] && out.col0[i] < out.col0[i + 1], "gemm_wgmma: output part ", i,
                     " is empty or has no buffer");
  }
  switch (tile_tokens ? tile_tokens : gemm_wgmma_tile_tokens(M, w)) {
    case 8: return launch_small_any<8>(x, ld_x, M, w, bias, out, stream);
    case 32: return launch_small_any<32>(x, ld_x, M, w, bias, out, stream);
    case 64: return launch<64, 1, 10>(x, ld_x, M, w, bias, out, stream);
    case 128: return launch<128, 1, 4>(x, ld_x, M, w, bias, out, stream);
    default: return launch<256, 2, 4>(x, ld_x, M, w, bias, out, stream);
  }
}

}  // namespace detinfer::cuda
