// Do mma.sync and wgmma give the same bits? Computes the same 256 x 256 dot products (256 tokens
// of x times 256 rows of W, K = 16 and K = 4096, bf16 inputs, fp32 accumulators, one MMA per 16
// values of K in increasing order) with
//   (a) mma.sync.m16n8k16 (x as A, W as B: what gemm_bf16 does),
//   (b) wgmma m64nNk16 with W as A and x as B ("swap AB"), N = 8, 64, 256,
//   (c) wgmma m64nNk16 with x as A and W as B, N = 8, 256,
// on adversarial data, and prints per pair of variants how many of the 65536 elements differ in
// their bits, plus each variant's max error against fp64 relative to sum |x*w|.
// Then the latency of one step of a dependent MMA chain for each instruction (clock64).
// Exit status 0 whatever the answer (it is an experiment, not a test).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/wgmma.cuh"

namespace {

using namespace detinfer::cuda::sm90;
constexpr int R = 256, T = 256;  // W rows, tokens

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(2);
  }
}

// (a) one warp per 16 tokens x 8 W rows; fragments straight from global memory.
__global__ void mma_sync_kernel(const uint16_t* x, const uint16_t* w, int K, float* out) {
  const int lane = threadIdx.x, g = lane >> 2, tq = lane & 3;
  const int r0 = blockIdx.x * 8, t0 = blockIdx.y * 16;
  float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  auto pair = [](const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); };
  for (int k = 0; k < K; k += 16) {
    const uint16_t* xa = x + (size_t)(t0 + g) * K + k + 2 * tq;
    const uint16_t* wb = w + (size_t)(r0 + g) * K + k + 2 * tq;
    uint32_t a[4] = {pair(xa), pair(xa + 8 * K), pair(xa + 8), pair(xa + 8 * K + 8)};
    uint32_t b[2] = {pair(wb), pair(wb + 8)};
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  for (int i = 0; i < 4; ++i) {
    const int t = t0 + g + 8 * (i >> 1), r = r0 + 2 * tq + (i & 1);
    out[t * R + r] = d[i];
  }
}

// Writes rows [row0, row0 + rows) x K columns [k0, k0 + 64) of src (zeros past K) into a
// 128B-swizzled tile.
__device__ void stage(uint8_t* tile, const uint16_t* src, int K, int row0, int rows, int k0) {
  for (int e = threadIdx.x; e < rows * 64; e += blockDim.x) {
    const int r = e >> 6, k = e & 63;
    const uint16_t v = k0 + k < K ? src[(size_t)(row0 + r) * K + k0 + k] : 0;
    *reinterpret_cast<uint16_t*>(tile + r * 128 + (((k >> 3) ^ (r & 7)) << 4) + (k & 7) * 2) = v;
  }
}

// (b)/(c): one warpgroup per 64 x N tile of A·Bᵀ; A = W (w_is_a) or x, B the other.
template <int N, bool w_is_a>
__global__ void wgmma_kernel(const uint16_t* x, const uint16_t* w, int K, float* out) {
  __shared__ __align__(1024) uint8_t a_tile[64 * 128];
  __shared__ __align__(1024) uint8_t b_tile[N * 128];
  if ((smem_addr(a_tile) | smem_addr(b_tile)) & 1023) __trap();  // the swizzle needs 1024-byte tiles
  const uint16_t* a_src = w_is_a ? w : x;
  const uint16_t* b_src = w_is_a ? x : w;
  const int a0 = blockIdx.x * 64, b0 = blockIdx.y * N;
  float d[N / 2];
  for (int i = 0; i < N / 2; ++i) d[i] = 0.0f;
  for (int k0 = 0; k0 < K; k0 += 64) {
    stage(a_tile, a_src, K, a0, 64, k0);
    stage(b_tile, b_src, K, b0, N, k0);
    fence_proxy_async_smem();
    __syncthreads();
    wgmma_fence();
    const int steps = K - k0 < 64 ? (K - k0) / 16 : 4;
    for (int s = 0; s < steps; ++s)
      wgmma_bf16<N>(d, desc_sw128(a_tile) + 2 * s, desc_sw128(b_tile) + 2 * s);
    wgmma_commit();
    wgmma_wait<0>();
    __syncthreads();
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int i = 0; i < N / 2; ++i) {
    const int ar = a0 + 16 * warp + (lane >> 2) + 8 * ((i & 3) >> 1);
    const int bc = b0 + 8 * (i >> 2) + 2 * (lane & 3) + (i & 1);
    out[w_is_a ? bc * R + ar : ar * R + bc] = d[i];
  }
}

// Latency of one step of a dependent chain (the same accumulator through `steps` MMAs), in SM
// clock cycles: the floor of a GEMM whose every element is one chain of K/16 steps.
__global__ void chain_mma_sync(int steps, float* sink, long long* cycles) {
  const uint32_t a[4] = {0x3F803F80u, 0x3F803F80u, 0x3F803F80u, 0x3F803F80u}, b[2] = {0, 0};
  float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const long long t0 = clock64();
  for (int i = 0; i < steps; ++i)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  const long long t1 = clock64();
  sink[threadIdx.x] = d[0] + d[1] + d[2] + d[3];
  if (threadIdx.x == 0) *cycles = t1 - t0;
}
template <int N>
__global__ void chain_wgmma(int steps, float* sink, long long* cycles) {
  __shared__ __align__(1024) uint8_t a_tile[64 * 128];
  __shared__ __align__(1024) uint8_t b_tile[N * 128];
  for (int i = threadIdx.x; i < 64 * 32; i += blockDim.x) reinterpret_cast<uint32_t*>(a_tile)[i] = 0;
  for (int i = threadIdx.x; i < N * 32; i += blockDim.x) reinterpret_cast<uint32_t*>(b_tile)[i] = 0;
  fence_proxy_async_smem();
  __syncthreads();
  float d[N / 2];
  for (int i = 0; i < N / 2; ++i) d[i] = 0.0f;
  const uint64_t da = desc_sw128(a_tile), db = desc_sw128(b_tile);
  wgmma_fence();
  const long long t0 = clock64();
  for (int i = 0; i < steps; ++i) wgmma_bf16<N>(d, da, db);
  wgmma_commit();
  wgmma_wait<0>();
  const long long t1 = clock64();
  float s = 0;
  for (int i = 0; i < N / 2; ++i) s += d[i];
  sink[threadIdx.x] = s;
  if (threadIdx.x == 0) *cycles = t1 - t0;
}

void chain_latencies() {
  float* sink;
  long long* cyc;
  ck(cudaMalloc(&sink, 1024 * 4), "malloc");
  ck(cudaMalloc(&cyc, 8), "malloc");
  const int steps = 4096;
  auto report = [&](const char* what) {
    ck(cudaGetLastError(), what);
    long long c = 0;
    ck(cudaMemcpy(&c, cyc, 8, cudaMemcpyDeviceToHost), "copy");
    std::printf("  %-20s %6.1f cycles per dependent step\n", what, double(c) / steps);
  };
  std::printf("\nchain latency (one warp / warpgroup alone on the GPU, %d dependent steps):\n", steps);
  for (int rep = 0; rep < 2; ++rep) {  // the first round warms up
    chain_mma_sync<<<1, 32>>>(steps, sink, cyc);
    if (rep) report("mma.sync m16n8k16");
    chain_wgmma<8><<<1, 128>>>(steps, sink, cyc);
    if (rep) report("wgmma m64n8k16");
    chain_wgmma<64><<<1, 128>>>(steps, sink, cyc);
    if (rep) report("wgmma m64n64k16");
    chain_wgmma<256><<<1, 128>>>(steps, sink, cyc);
    if (rep) report("wgmma m64n256k16");
  }
  int clk = 0;
  ck(cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, 0), "clock");
  std::printf("  (SM clock up to %.0f MHz)\n", clk / 1000.0);
  cudaFree(sink);
  cudaFree(cyc);
}

uint16_t bf16_bits(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}
double bf16_val(uint16_t b) {
  uint32_t u = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Data sets: "wide" random exponents in [-30, 30]; "normal" N(0,1); "cancel" the second half of
// each 16-block (and of the whole row) cancels the first half up to small perturbations; "tiny"
// products in the fp32 subnormal range.
void make(const std::string& kind, int K, std::mt19937_64& rng, std::vector<uint16_t>& x,
          std::vector<uint16_t>& w) {
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> ex(-30, 30), tiny(-75, -52), sg(0, 1);
  auto wide = [&](int e) { return std::ldexp(1.0f + std::abs(nd(rng)) / 4, e) * (sg(rng) ? -1.0f : 1.0f); };
  x.assign((size_t)T * K, 0);
  w.assign((size_t)R * K, 0);
  auto fill = [&](std::vector<uint16_t>& v, int rows) {
    for (int r = 0; r < rows; ++r)
      for (int k = 0; k < K; ++k) {
        float f;
        if (kind == "wide") f = wide(ex(rng));
        else if (kind == "tiny") f = wide(tiny(rng));  // products down to 2^-150
        else f = nd(rng);
        v[(size_t)r * K + k] = bf16_bits(f);
      }
  };
  if (kind == "cancel") {
    fill(x, T);
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < K; ++k) w[(size_t)r * K + k] = bf16_bits(wide(ex(rng) / 2));
    // x[k + 8] = x[k] and w[k + 8] = -w[k] in each 16-block except every 7th pair: big terms
    // cancel exactly, the few survivors decide the result.
    for (int r = 0; r < T; ++r)
      for (int k = 0; k < K; k += 16)
        for (int j = 0; j < 8; ++j) x[(size_t)r * K + k + j + 8] = x[(size_t)r * K + k + j];
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < K; k += 16)
        for (int j = 0; j < 8; ++j)
          if ((k / 16 + j + r) % 7 != 0)
            w[(size_t)r * K + k + j + 8] = w[(size_t)r * K + k + j] ^ 0x8000;
  } else {
    fill(x, T);
    fill(w, R);
  }
}

}  // namespace

int main() {
  cudaDeviceProp prop;
  ck(cudaGetDeviceProperties(&prop, 0), "device");
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  std::mt19937_64 rng(12345);
  const char* names[] = {"a mma.sync", "b swapAB n8", "b swapAB n64", "b swapAB n256", "c xA n8",
                         "c xA n256"};
  constexpr int V = 6;
  for (int K : {16, 4096}) {
    for (std::string kind : {"wide", "normal", "cancel", "tiny"}) {
      std::vector<uint16_t> x, w;
      make(kind, K, rng, x, w);
      uint16_t *dx, *dw;
      float* dout;
      ck(cudaMalloc(&dx, x.size() * 2), "malloc");
      ck(cudaMalloc(&dw, w.size() * 2), "malloc");
      ck(cudaMalloc(&dout, (size_t)V * T * R * 4), "malloc");
      ck(cudaMemcpy(dx, x.data(), x.size() * 2, cudaMemcpyHostToDevice), "copy");
      ck(cudaMemcpy(dw, w.data(), w.size() * 2, cudaMemcpyHostToDevice), "copy");
      ck(cudaMemset(dout, 0xFF, (size_t)V * T * R * 4), "memset");
      mma_sync_kernel<<<dim3(R / 8, T / 16), 32>>>(dx, dw, K, dout);
      wgmma_kernel<8, true><<<dim3(R / 64, T / 8), 128>>>(dx, dw, K, dout + 1 * T * R);
      wgmma_kernel<64, true><<<dim3(R / 64, T / 64), 128>>>(dx, dw, K, dout + 2 * T * R);
      wgmma_kernel<256, true><<<dim3(R / 64, T / 256), 128>>>(dx, dw, K, dout + 3 * T * R);
      wgmma_kernel<8, false><<<dim3(T / 64, R / 8), 128>>>(dx, dw, K, dout + 4 * T * R);
      wgmma_kernel<256, false><<<dim3(T / 64, R / 256), 128>>>(dx, dw, K, dout + 5 * T * R);
      ck(cudaGetLastError(), "launch");
      std::vector<float> out((size_t)V * T * R);
      ck(cudaMemcpy(out.data(), dout, out.size() * 4, cudaMemcpyDeviceToHost), "copy back");
      cudaFree(dx);
      cudaFree(dw);
      cudaFree(dout);
      // fp64 reference
      double maxerr[V] = {};
      std::vector<double> xd(x.size()), wd(w.size());
      for (size_t i = 0; i < x.size(); ++i) xd[i] = bf16_val(x[i]);
      for (size_t i = 0; i < w.size(); ++i) wd[i] = bf16_val(w[i]);
      for (int t = 0; t < T; ++t)
        for (int r = 0; r < R; ++r) {
          double s = 0, sa = 0;
          for (int k = 0; k < K; ++k) {
            const double p = xd[(size_t)t * K + k] * wd[(size_t)r * K + k];
            s += p;
            sa += std::fabs(p);
          }
          for (int v = 0; v < V; ++v) {
            const double e = sa > 0 ? std::fabs(out[(size_t)v * T * R + t * R + r] - s) / sa : 0;
            if (!(e <= maxerr[v])) maxerr[v] = std::isnan(e) ? INFINITY : e;
          }
        }
      std::printf("\nK = %d, data '%s': max |y - fp64| / sum|x*w|:", K, kind.c_str());
      for (int v = 0; v < V; ++v) std::printf(" %s %.2e;", names[v], maxerr[v]);
      std::printf("\n  elements (of %d) whose bits differ:\n", T * R);
      for (int u = 0; u < V; ++u)
        for (int v = u + 1; v < V; ++v) {
          int diff = 0;
          for (int i = 0; i < T * R; ++i)
            diff += std::memcmp(&out[(size_t)u * T * R + i], &out[(size_t)v * T * R + i], 4) != 0;
          std::printf("    %-14s vs %-14s: %6d %s\n", names[u], names[v], diff,
                      diff ? "DIFFER" : "equal");
        }
    }
  }
  chain_latencies();
  return 0;
}
