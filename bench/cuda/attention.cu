// Attention benchmark: the tensor-core paged attention (kernels/cuda/attention.h, bf16 cache)
// beside the warp-per-row kernel it replaces (cuda::attention in kernels.cu, fp32 cache), on a
// Llama-3-8B layer's shape (32 query heads, 8 kv heads, head_dim 128), block size 16, blocks in
// shuffled order.
//   - anchor: a device-to-device copy of 1 GiB, counted as read + write bytes;
//   - prefill: one sequence of T tokens (causal), TFLOP/s counted as 4·(T²/2)·heads·head_dim
//     (QKᵀ and P·V, 2 flops per multiply-add, the causal half);
//   - decode: batch B (1 at ctx 160), one token per sequence at position ctx−1: GB/s of K and V
//     bytes that the step must read (B·ctx·kv_heads·head_dim·2 bytes·2) against the copy;
//   - a bits check: the prefill's last row equals the same row computed as a decode step;
//   - at the default split, each decode case again with decode CTAs reducing one tile at a time
//     (set_attention_tiles_in_parallel(false)): its time, and whether its output has the same
//     bits (a difference is a failure).
// Times are CUDA-event medians after warm-up; decode calls are timed as a CUDA graph of 20
// calls (no host launch overhead, as in a captured decode step).
//
// The SM clock under load is measured (clock64 over an event-timed spin) and printed, so that
// figures from machines at other clocks can be compared.
//
//   bench_attention [--quick] [--no-old] [--profile] [--dump PREFIX]
//     --profile: one prefill and three decode calls only (for a profiler)
//     --dump: write the T=4096 prefill output and the decode outputs (default split) to
//       PREFIX.prefill / PREFIX.decode_B<batch>_ctx<context>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench_util.cuh"
#include "common/error.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/launch.h"

using namespace detinfer::cuda;
using namespace detinfer::bench;

namespace {

__global__ void fill_f32(float* x, int64_t n, uint64_t seed, float amp) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    x[i] = amp * uni(seed, i);
}
// The same values into the bf16 cache and (optionally) the fp32 cache of the old kernel.
__global__ void fill_cache(uint16_t* b, float* f, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const __nv_bfloat16 h = __float2bfloat16_rn(uni(seed, i));
    b[i] = __bfloat16_as_ushort(h);
    if (f) f[i] = __bfloat162float(h);
  }
}

__global__ void spin(long long cycles, long long* took) {
  const long long t0 = clock64();
  long long t = t0;
  while (t - t0 < cycles) t = clock64();
  if (threadIdx.x == 0) *took = t - t0;
}

void dump(const std::string& path, const float* d, size_t n) {
  std::vector<float> h(n);
  ck(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost), "dump copy");
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) detinfer::fail("cannot write ", path);
  std::fwrite(h.data(), sizeof(float), n, f);
  std::fclose(f);
}

template <typename T>
struct Dev {
  T* p = nullptr;
  explicit Dev(size_t n) { ck(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc"); }
  Dev(const std::vector<T>& h) : Dev(h.size()) {
    ck(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
};

template <typename F>
double median_ms(F&& fn, int reps, cudaStream_t st) {
  cudaEvent_t a, b;
  ck(cudaEventCreate(&a), "event");
  ck(cudaEventCreate(&b), "event");
  std::vector<float> t;
  for (int r = 0; r < reps; ++r) {
    ck(cudaEventRecord(a, st), "record");
    fn();
    ck(cudaEventRecord(b, st), "record");
    ck(cudaEventSynchronize(b), "sync");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, a, b), "elapsed");
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// ms per call of fn, timed as a CUDA graph of `calls` calls.
template <typename F>
double graph_ms(F&& fn, int calls, int reps, cudaStream_t st) {
  cudaGraph_t g;
  ck(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "capture");
  for (int i = 0; i < calls; ++i) fn();
  ck(cudaStreamEndCapture(st, &g), "capture end");
  cudaGraphExec_t exec;
  ck(cudaGraphInstantiate(&exec, g, 0), "graph instantiate");
  cudaGraphDestroy(g);
  ck(cudaGraphLaunch(exec, st), "graph launch");  // warm-up
  const double ms = median_ms([&] { ck(cudaGraphLaunch(exec, st), "graph launch"); }, reps, st);
  cudaGraphExecDestroy(exec);
  return ms / calls;
}

constexpr int kHeads = 32, kKv = 8, kHd = 128, kBlock = 16;
constexpr int64_t kRow = int64_t{kKv} * kHd;

// A batch of sequences with their blocks (shuffled), metadata on the device, caches filled.
struct Batch {
  std::vector<int32_t> pos, seq, toff, tables;
  int64_t blocks = 0;
  std::unique_ptr<Dev<uint16_t>> kc, vc;
  std::unique_ptr<Dev<float>> kf, vf;  // the old kernel's fp32 cache (same values)
  std::unique_ptr<Dev<int32_t>> dpos, dtoff, dtables;
  // n sequences of ctx positions; the step holds positions [ctx - tokens, ctx) of each.
  Batch(int n, int32_t ctx, int32_t tokens, bool fp32_too, uint64_t seed) {
    const int64_t per = (ctx + kBlock - 1) / kBlock;
    blocks = n * per;
    std::vector<int32_t> ids(static_cast<size_t>(blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), std::mt19937(static_cast<uint32_t>(seed)));
    for (int s = 0; s < n; ++s) {
      for (int32_t p = ctx - tokens; p < ctx; ++p) {
        pos.push_back(p);
        seq.push_back(s);
        toff.push_back(static_cast<int32_t>(s * per));
      }
      tables.insert(tables.end(), ids.begin() + s * per, ids.begin() + (s + 1) * per);
    }
    const int64_t elems = blocks * kBlock * kRow;
    kc = std::make_unique<Dev<uint16_t>>(elems), vc = std::make_unique<Dev<uint16_t>>(elems);
    if (fp32_too) kf = std::make_unique<Dev<float>>(elems), vf = std::make_unique<Dev<float>>(elems);
    fill_cache<<<4096, 256>>>(kc->p, kf ? kf->p : nullptr, elems, seed * 2 + 1);
    fill_cache<<<4096, 256>>>(vc->p, vf ? vf->p : nullptr, elems, seed * 2 + 2);
    ck(cudaGetLastError(), "fill");
    dpos = std::make_unique<Dev<int32_t>>(pos), dtoff = std::make_unique<Dev<int32_t>>(toff);
    dtables = std::make_unique<Dev<int32_t>>(tables);
  }
  int64_t T() const { return static_cast<int64_t>(pos.size()); }
  PagedAttentionArgs args(const float* q, float* out) const {
    PagedAttentionArgs a;
    a.q = q, a.out = out, a.k_cache = kc->p, a.v_cache = vc->p;
    a.pos = dpos->p, a.table_off = dtoff->p, a.tables = dtables->p;
    a.block_size = kBlock, a.scale = 1.0f / std::sqrt(static_cast<float>(kHd));
    return a;
  }
  AttentionArgs old_args(const float* q, float* out) const {
    AttentionArgs a;
    a.q = q, a.out = out, a.k_cache = kf->p, a.v_cache = vf->p;
    a.pos = dpos->p, a.table_off = dtoff->p, a.tables = dtables->p;
    a.T = T(), a.n_heads = kHeads, a.n_kv_heads = kKv, a.head_dim = kHd, a.block_size = kBlock;
    a.scale = 1.0f / std::sqrt(static_cast<float>(kHd));
    return a;
  }
};

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, old = true, profile = false;
  std::string dump_prefix;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--no-old")) old = false;
    else if (!std::strcmp(argv[i], "--profile")) profile = quick = true, old = false;
    else if (!std::strcmp(argv[i], "--dump") && i + 1 < argc) dump_prefix = argv[++i];
    else {
      std::fprintf(stderr, "usage: bench_attention [--quick] [--no-old] [--profile] [--dump PREFIX]\n");
      return 2;
    }
  }
  const int reps = profile ? 1 : quick ? 5 : 10;
  try {
    cudaStream_t st;
    ck(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "stream");
    cudaDeviceProp prop;
    ck(cudaGetDeviceProperties(&prop, 0), "props");
    std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    int failures = 0;

    // Anchor: device-to-device copy.
    double copy_gbs = 0;
    {
      const size_t bytes = size_t{1} << 30;
      Dev<uint8_t> a(bytes), b(bytes);
      ck(cudaMemset(a.p, 1, bytes), "memset");
      ck(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice, st), "copy");
      const double ms = median_ms([&] { ck(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice, st), "copy"); }, profile ? 1 : 10, st);
      copy_gbs = 2.0 * bytes / (ms * 1e-3) / 1e9;
      std::printf("copy 1 GiB d2d: %.3f ms, %.0f GB/s (read + write)\n", ms, copy_gbs);
    }

    // Prefill.
    for (int32_t T : quick ? std::vector<int32_t>{4096} : std::vector<int32_t>{1024, 4096, 8192}) {
      Batch b(1, T, T, old && T <= 4096, 7);
      Dev<float> q(static_cast<size_t>(T) * kHeads * kHd), out(static_cast<size_t>(T) * kHeads * kHd);
      fill_f32<<<4096, 256>>>(q.p, int64_t{T} * kHeads * kHd, 99, 2.0f);
      const AttentionPlan plan = plan_attention(b.pos.data(), b.seq.data(), b.T(), kHeads, kKv, kHd);
      Dev<int32_t> work(plan.work);
      Dev<float> ws(static_cast<size_t>(plan.workspace_floats));
      const PagedAttentionArgs a = b.args(q.p, out.p);
      auto run = [&] { attention_paged(a, plan, work.p, ws.p, st); };
      if (!profile) run();
      ck(cudaStreamSynchronize(st), "prefill");
      const double ms = median_ms(run, reps, st);
      if (!dump_prefix.empty() && T == 4096) dump(dump_prefix + ".prefill", out.p, size_t(T) * kHeads * kHd);
      const double flop = 4.0 * (double(T) * T / 2) * kHeads * kHd;
      std::printf("prefill T=%d: %.3f ms, %.1f TFLOP/s (4·T²/2·heads·hd = %.1f GFLOP; CTAs %d+%d)\n", T, ms,
                  flop / (ms * 1e-3) / 1e12, flop / 1e9, plan.n_small, plan.n_large);
      // Bits: the last row as a decode step (one token, splits through the merge kernel).
      {
        const std::vector<int32_t> p1 = {T - 1}, s1 = {0}, o1 = {0};
        Dev<int32_t> dp(p1), dt(o1);
        const AttentionPlan plan1 = plan_attention(p1.data(), s1.data(), 1, kHeads, kKv, kHd);
        Dev<int32_t> w1(plan1.work);
        Dev<float> ws1(static_cast<size_t>(plan1.workspace_floats)), out1(kHeads * kHd);
        PagedAttentionArgs a1 = a;
        a1.q = q.p + int64_t{T - 1} * kHeads * kHd, a1.out = out1.p, a1.pos = dp.p, a1.table_off = dt.p;
        attention_paged(a1, plan1, w1.p, ws1.p, st);
        std::vector<float> x(kHeads * kHd), y(kHeads * kHd);
        ck(cudaMemcpyAsync(x.data(), out.p + int64_t{T - 1} * kHeads * kHd, x.size() * 4, cudaMemcpyDeviceToHost, st), "dl");
        ck(cudaMemcpyAsync(y.data(), out1.p, y.size() * 4, cudaMemcpyDeviceToHost, st), "dl");
        ck(cudaStreamSynchronize(st), "dl");
        const bool same = std::memcmp(x.data(), y.data(), x.size() * 4) == 0;
        std::printf("  bits: last prefill row == the same row as a decode step (%d merge rows): %s\n",
                    plan1.n_merge, same ? "yes" : "NO");
        failures += !same;
      }
      if (old && T <= 4096) {
        const AttentionArgs oa = b.old_args(q.p, out.p);
        auto run_old = [&] { attention(oa, st); };
        run_old();
        const double oms = median_ms(run_old, 3, st);
        std::printf("  old kernel (fp32 cache, warp per row): %.3f ms, %.2f TFLOP/s, new is %.1fx faster\n", oms,
                    flop / (oms * 1e-3) / 1e12, oms / ms);
      }
    }

    // The SM clock under load (the GPU is warm from the prefill runs).
    {
      Dev<long long> took(1);
      const long long cycles = 200000000;
      const double ms = median_ms([&] { spin<<<1, 32, 0, st>>>(cycles, took.p); }, profile ? 1 : 3, st);
      long long c = 0;
      ck(cudaMemcpy(&c, took.p, sizeof c, cudaMemcpyDeviceToHost), "clock");
      std::printf("SM clock under load: %.0f MHz (clock64 over an event-timed spin)\n", c / (ms * 1e3));
    }

    // Decode.
    const std::vector<int> batches = profile ? std::vector<int>{1, 64} : quick ? std::vector<int>{1, 64} : std::vector<int>{1, 8, 64, 256};
    // ctx 160 at batch 1: the context of the engine's decode benchmark.
    for (int32_t ctx : {160, 512, 4096})
      for (int B : ctx == 160 ? std::vector<int>{1} : batches) {
        Batch b(B, ctx, 1, old, 11 + B);
        Dev<float> q(static_cast<size_t>(B) * kHeads * kHd), out(static_cast<size_t>(B) * kHeads * kHd);
        fill_f32<<<1024, 256>>>(q.p, int64_t{B} * kHeads * kHd, 5, 2.0f);
        const double kv_bytes = double(B) * ctx * kRow * 2 * 2;
        for (int split : profile ? std::vector<int>{kAttnDefaultSplit} : std::vector<int>{kAttnDefaultSplit, 128}) {
          set_attention_split(split);
          const AttentionPlan plan = plan_attention(b.pos.data(), b.seq.data(), b.T(), kHeads, kKv, kHd);
          set_attention_split(kAttnDefaultSplit);
          Dev<int32_t> work(plan.work);
          Dev<float> ws(static_cast<size_t>(plan.workspace_floats));
          const PagedAttentionArgs a = b.args(q.p, out.p);
          double ms = 0;
          if (profile) {
            ms = median_ms([&] { attention_paged(a, plan, work.p, ws.p, st); }, 1, st);
          } else {
            ms = graph_ms([&] { attention_paged(a, plan, work.p, ws.p, st); }, 20, 5, st);
          }
          if (!dump_prefix.empty() && split == kAttnDefaultSplit)
            dump(dump_prefix + ".decode_B" + std::to_string(B) + "_ctx" + std::to_string(ctx), out.p,
                 size_t(B) * kHeads * kHd);
          const double gbs = kv_bytes / (ms * 1e-3) / 1e9;
          std::printf("decode B=%d ctx=%d split=%d: %.1f us, %.0f GB/s of K/V (%.0f%% of copy; CTAs %d, merge rows %d)\n",
                      B, ctx, split, ms * 1e3, gbs, 100 * gbs / copy_gbs, plan.n_small + plan.n_large, plan.n_merge);
          if (!profile && split == kAttnDefaultSplit) {
            // The anchor: the same plan with decode CTAs reducing one tile at a time, and its bits.
            std::vector<float> wide_out(size_t(B) * kHeads * kHd), one_out(wide_out.size());
            ck(cudaStreamSynchronize(st), "sync");
            ck(cudaMemcpy(wide_out.data(), out.p, wide_out.size() * sizeof(float), cudaMemcpyDeviceToHost), "copy");
            set_attention_tiles_in_parallel(false);
            const double ms1 = graph_ms([&] { attention_paged(a, plan, work.p, ws.p, st); }, 20, 5, st);
            set_attention_tiles_in_parallel(true);
            ck(cudaStreamSynchronize(st), "sync");
            ck(cudaMemcpy(one_out.data(), out.p, one_out.size() * sizeof(float), cudaMemcpyDeviceToHost), "copy");
            const bool same = std::memcmp(wide_out.data(), one_out.data(), wide_out.size() * sizeof(float)) == 0;
            if (!same) ++failures;
            std::printf("  one tile at a time: %.1f us (x%.2f); bits %s\n", ms1 * 1e3, ms1 / ms,
                        same ? "equal" : "DIFFER");
          }
        }
        if (old) {
          const AttentionArgs oa = b.old_args(q.p, out.p);
          const double oms = graph_ms([&] { attention(oa, st); }, 20, 5, st);
          std::printf("  old kernel (fp32 cache): %.1f us, %.0f GB/s of its fp32 K/V\n", oms * 1e3,
                      2 * kv_bytes / (oms * 1e-3) / 1e9);
        }
      }
    ck(cudaStreamSynchronize(st), "end");
    std::printf(failures ? "FAILED: %d bits checks\n" : "bits checks passed\n", failures);
    return failures ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention: %s\n", e.what());
    return 1;
  }
}
