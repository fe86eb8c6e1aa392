// CPU kernel throughput: matmul (GB/s of weight traffic, GFLOP/s) against the machine's
// streaming-read bandwidth, attention, rmsnorm, and the thread pool's cost per call.
//
//   bench_kernels [--threads N] [--quick]
//
// Weights are "cold": the benchmark cycles through copies of a weight totalling many times the
// last-level cache, so every call streams its weights from memory as a forward pass does.
// Times are the best of several repetitions (the least disturbed by other processes).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/half.h"
#include "common/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "model/tensor.h"

using namespace detinfer;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool g_quick = false;

// Best time per call of f(i) (i counts calls), over repetitions lasting about `budget` seconds.
double best_time(const std::function<void(int64_t)>& f, double budget = 0.4) {
  if (g_quick) budget /= 4;
  int64_t i = 0;
  f(i++);  // warm-up
  double best = 1e30;
  const double end = now_s() + budget;
  int reps = 0;
  do {
    const double t0 = now_s();
    f(i++);
    best = std::min(best, now_s() - t0);
    ++reps;
  } while (now_s() < end || reps < 3);
  return best;
}

uint64_t g_rng = 0x9e3779b97f4a7c15ull;
uint64_t next_rand() {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return g_rng;
}
float rand_float() { return static_cast<float>(next_rand() >> 40) / 16777216.0f * 2.0f - 1.0f; }

void fill_weight(DType t, uint8_t* p, int64_t bytes) {
  const int64_t bb = dtype_block_bytes(t);
  for (int64_t off = 0; off + bb <= bytes; off += bb) {
    uint8_t* b = p + off;
    switch (t) {
      case DType::F32: {
        const float v = rand_float();
        std::memcpy(b, &v, 4);
        break;
      }
      case DType::F16: {
        const uint16_t v = f32_to_f16(rand_float());
        std::memcpy(b, &v, 2);
        break;
      }
      case DType::BF16: {
        const uint16_t v = f32_to_bf16(rand_float());
        std::memcpy(b, &v, 2);
        break;
      }
      default: {  // quantized: a sane f16 scale (and min), random codes
        for (int64_t i = 0; i < bb; ++i) b[i] = static_cast<uint8_t>(next_rand());
        const uint16_t d = f32_to_f16(0.01f + 0.01f * rand_float());
        std::memcpy(b, &d, 2);
        if (t == DType::Q4_1) {
          const uint16_t m = f32_to_f16(-0.08f + 0.01f * rand_float());
          std::memcpy(b + 2, &m, 2);
        }
      }
    }
  }
}

// Sums n floats as four interleaved streams (the four quarters of the range, as a decode matmul
// reads four weight rows at once) with software prefetch: as close to the memory's read rate as
// a simple loop gets (AVX2 loads where the CPU has them).
#if defined(__x86_64__)
__attribute__((target("avx2"))) float stream_sum_avx2(const float* p, int64_t n) {
  const int64_t q = (n / 4) & ~int64_t{7};
  const float* s[4] = {p, p + q, p + 2 * q, p + 3 * q};
  __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                 _mm256_setzero_ps()};
  for (int64_t i = 0; i + 16 <= q; i += 16)
    for (int j = 0; j < 4; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(s[j] + i) + 2048, _MM_HINT_T0);
      a[j] = _mm256_add_ps(a[j],
                           _mm256_add_ps(_mm256_loadu_ps(s[j] + i), _mm256_loadu_ps(s[j] + i + 8)));
    }
  float out[8];
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
  return out[0] + out[7];
}
#endif
float stream_sum(const float* p, int64_t n) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2")) return stream_sum_avx2(p, n);
#endif
  float a[4] = {0, 0, 0, 0};
  for (int64_t i = 0; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) a[j] += p[i + j];
  return a[0] + a[3];
}

// Streaming read of a buffer much larger than the caches, split over `threads` threads of the
// pool.
double memory_bandwidth(ThreadPool& pool, int threads) {
  const int64_t n = (g_quick ? 64 : 512) * (int64_t{1} << 20) / 4;
  std::vector<float> buf(n);
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(i & 1023);
  std::vector<float> sink(threads * 16);
  const double t = best_time(
      [&](int64_t) {
        pool.parallel_for(threads, [&](int64_t b, int64_t e) {
          for (int64_t part = b; part < e; ++part) {
            const auto [lo, hi] = ThreadPool::range(n, static_cast<int>(part), threads);
            sink[part * 16] = stream_sum(buf.data() + lo, hi - lo);
          }
        });
      },
      1.0);
  return static_cast<double>(n) * 4 / t / 1e9;
}

void bench_matmul(ThreadPool& pool, double mem_gbs) {
  struct Shape {
    int64_t N, K;
    const char* what;
  };
  const Shape shapes[] = {{576, 1536, "w_down"}, {1536, 576, "w_gate/up"}, {49152, 576, "lm_head"}};
  const DType dtypes[] = {DType::Q4_1, DType::Q8_0, DType::BF16, DType::F32};
  const int64_t Ms[] = {1, 16, 128};
  std::printf("\nmatmul, cold weights (ceiling: %.1f GB/s streaming read)\n", mem_gbs);
  std::printf("%-10s %-13s %-5s %5s %10s %9s %9s %7s\n", "weight", "N x K", "dtype", "M", "us/call",
              "GB/s", "GFLOP/s", "%ceil");
  for (const Shape& s : shapes)
    for (DType t : dtypes) {
      const int64_t bytes = s.N * dtype_row_bytes(t, s.K);
      // At least 384 MiB of copies (12× a 32 MiB last-level cache), cycled through in order.
      const int64_t copies = std::max<int64_t>(1, ((g_quick ? 96 : 384) << 20) / bytes + 1);
      std::vector<uint8_t> store(static_cast<size_t>(bytes * copies));
      fill_weight(t, store.data(), bytes);
      for (int64_t c = 1; c < copies; ++c)
        std::memcpy(store.data() + c * bytes, store.data(), bytes);
      std::vector<TensorView> views(copies);
      for (int64_t c = 0; c < copies; ++c) {
        views[c].name = "bench";
        views[c].dtype = t;
        views[c].shape = {s.N, s.K};
        views[c].data = store.data() + c * bytes;
        views[c].nbytes = bytes;
      }
      for (int64_t M : Ms) {
        std::vector<float> x(M * s.K), y(M * s.N);
        for (float& v : x) v = rand_float();
        const double sec = best_time(
            [&](int64_t i) { cpu::matmul(pool, x.data(), M, s.K, views[i % copies], y.data()); });
        const double gbs = bytes / sec / 1e9;
        std::printf("%-10s %6lldx%-6lld %-5s %5lld %10.1f %9.2f %9.2f %6.0f%%\n", s.what,
                    static_cast<long long>(s.N), static_cast<long long>(s.K), dtype_name(t),
                    static_cast<long long>(M), sec * 1e6, gbs, 2.0 * M * s.N * s.K / sec / 1e9,
                    100 * gbs / mem_gbs);
      }
    }
}

// The portable path next to the AVX2 one, for one decode shape.
void bench_portable(ThreadPool& pool) {
  const int64_t N = 1536, K = 576;
  std::printf("\nmatmul portable vs AVX2 path (N x K = %lldx%lld, M = 1 and 16, hot weights)\n",
              static_cast<long long>(N), static_cast<long long>(K));
  for (DType t : {DType::Q4_1, DType::F32}) {
    const int64_t bytes = N * dtype_row_bytes(t, K);
    std::vector<uint8_t> store(bytes);
    fill_weight(t, store.data(), bytes);
    TensorView w;
    w.dtype = t;
    w.shape = {N, K};
    w.data = store.data();
    w.nbytes = bytes;
    for (int64_t M : {1, 16}) {
      std::vector<float> x(M * K, 0.5f), y(M * N);
      double sec[2];
      for (int simd = 0; simd < 2; ++simd) {
        cpu::set_simd_enabled(simd == 1);
        sec[simd] =
            best_time([&](int64_t) { cpu::matmul(pool, x.data(), M, K, w, y.data()); }, 0.2);
      }
      cpu::set_simd_enabled(true);
      std::printf("  %-5s M=%-3lld portable %9.1f us   avx2 %8.1f us   (x%.1f)\n", dtype_name(t),
                  static_cast<long long>(M), sec[0] * 1e6, sec[1] * 1e6, sec[0] / sec[1]);
    }
  }
}

void bench_attention(ThreadPool& pool) {
  // SmolLM2-135M: 9 query heads, 3 kv heads, head_dim 64; blocks of 16 positions.
  const int n_heads = 9, n_kv = 3, hd = 64, bs = 16;
  std::printf("\nattention (%d heads, %d kv heads, head_dim %d, block %d)\n", n_heads, n_kv, hd,
              bs);
  struct Case {
    int seqs, ctx, new_tokens;  // each sequence attends from positions ctx-new .. ctx-1
    const char* what;
  };
  const Case cases[] = {{8, 1024, 1, "decode, 8 seqs at 1024"},
                        {1, 4096, 1, "decode, 1 seq at 4096"},
                        {1, 512, 512, "prefill 512"}};
  for (const Case& c : cases) {
    const int blocks_per_seq = (c.ctx + bs - 1) / bs;
    cpu::PagedKV kv;
    kv.num_blocks = static_cast<int64_t>(blocks_per_seq) * c.seqs;
    kv.block_size = bs;
    kv.n_kv_heads = n_kv;
    kv.head_dim = hd;
    std::vector<float> kc(kv.num_blocks * bs * n_kv * hd), vc(kc.size());
    for (float& v : kc) v = rand_float();
    for (float& v : vc) v = rand_float();
    kv.k = kc.data();
    kv.v = vc.data();
    std::vector<std::vector<int32_t>> tables(c.seqs);
    for (int s = 0; s < c.seqs; ++s)
      for (int b = 0; b < blocks_per_seq; ++b) tables[s].push_back(b * c.seqs + s);  // interleaved
    std::vector<int32_t> pos;
    std::vector<const int32_t*> tabs;
    for (int s = 0; s < c.seqs; ++s)
      for (int p = c.ctx - c.new_tokens; p < c.ctx; ++p) {
        pos.push_back(p);
        tabs.push_back(tables[s].data());
      }
    const int64_t M = static_cast<int64_t>(pos.size());
    std::vector<float> q(M * n_heads * hd), out(q.size());
    for (float& v : q) v = rand_float();
    const double sec = best_time([&](int64_t) {
      cpu::attention(pool, q.data(), M, pos.data(), tabs.data(), kv, n_heads, 0.125f, out.data());
    });
    double keys = 0;  // (query head, key) pairs
    for (int32_t p : pos) keys += static_cast<double>(p + 1) * n_heads;
    std::printf("  %-24s %10.1f us   %7.1f Mkeys/s (query-head x key)   %6.0f tokens/s\n", c.what,
                sec * 1e6, keys / sec / 1e6, M / sec);
  }
}

void bench_rows(ThreadPool& pool) {
  std::printf("\nrow kernels\n");
  for (int64_t M : {1, 128}) {
    const int64_t D = 576;
    std::vector<float> x(M * D), w(D), y(M * D);
    for (float& v : x) v = rand_float();
    for (float& v : w) v = rand_float();
    const double sec = best_time(
        [&](int64_t) { cpu::rmsnorm(pool, x.data(), M, D, w.data(), 1e-5f, y.data()); }, 0.2);
    std::printf("  rmsnorm M=%-4lld D=%lld   %8.2f us   %6.2f GB/s (x in, y out)\n",
                static_cast<long long>(M), static_cast<long long>(D), sec * 1e6,
                8.0 * M * D / sec / 1e9);
  }
  {
    const int64_t n = 128 * 1536;
    std::vector<float> g(n), u(n);
    for (float& v : g) v = 4 * rand_float();
    for (float& v : u) v = rand_float();
    const double sec =
        best_time([&](int64_t) { cpu::swiglu(pool, g.data(), u.data(), n, g.data()); }, 0.2);
    std::printf("  swiglu n=%lld   %8.2f us   %6.2f Gelem/s\n", static_cast<long long>(n),
                sec * 1e6, n / sec / 1e9);
  }
  {
    const int64_t V = 49152;
    std::vector<float> l(V), o(V);
    for (float& v : l) v = 10 * rand_float();
    const double sec = best_time([&](int64_t) { cpu::log_softmax(l.data(), V, o.data()); }, 0.2);
    std::printf("  log_softmax V=%lld   %8.2f us   %6.2f Gelem/s\n", static_cast<long long>(V),
                sec * 1e6, V / sec / 1e9);
  }
}

// The cost of a parallel_for: with an empty body, and with 5 us of work in each range (ideally
// 5 us per call when every thread gets a core).
void bench_pool(ThreadPool& pool) {
  const int calls = 2000;
  std::vector<int64_t> sink(64 * 8);
  const double empty = best_time(
      [&](int64_t) {
        for (int i = 0; i < calls; ++i)
          pool.parallel_for(pool.n_threads(), [&](int64_t b, int64_t) { sink[b * 8] += 1; });
      },
      0.3);
  const double busy = best_time(
      [&](int64_t) {
        for (int i = 0; i < calls / 10; ++i)
          pool.parallel_for(pool.n_threads(), [&](int64_t b, int64_t e) {
            for (int64_t r = b; r < e; ++r) {
              const double end = now_s() + 5e-6;
              while (now_s() < end) ++sink[r * 8];
            }
          });
      },
      0.3);
  std::printf(
      "\nthread pool, %d threads: %.2f us per parallel_for with an empty body, %.2f us with 5 us "
      "of work per range\n",
      pool.n_threads(), empty / calls * 1e6, busy / (calls / 10) * 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = ThreadPool::default_threads();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--quick") {
      g_quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--threads N] [--quick]\n", argv[0]);
      return 2;
    }
  }
  ThreadPool pool(threads);
  std::printf("detinfer CPU kernels: %d threads, AVX2 path %s\n", threads,
              cpu::simd_enabled() ? "on" : "off (portable)");
  const double mem1 = memory_bandwidth(pool, 1),
               mem = std::max(mem1, memory_bandwidth(pool, threads));
  std::printf("memory bandwidth (streaming read): %.1f GB/s on 1 thread, %.1f GB/s best\n", mem1,
              mem);
  bench_pool(pool);
  bench_matmul(pool, mem);
  bench_portable(pool);
  bench_attention(pool);
  bench_rows(pool);
  return 0;
}
