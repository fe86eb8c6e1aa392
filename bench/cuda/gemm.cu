// GEMM benchmark and checks on Llama-3-8B shapes: cuBLAS (bf16 in, fp32 out, compute 32F, default
// algorithm), the mma.sync gemm_bf16 and the wgmma gemm_wgmma side by side (median of CUDA-event
// timed runs after warm-up: ms, TFLOP/s, weight GB/s), then per shape
//   - accuracy: max |gemm_wgmma - fp64 of the bf16 operands| / sum|x*w| on sampled elements,
//     must be < (K/16 + 2)·2⁻²⁰;
//   - T1: rows of the M = Mbig run bitwise equal to the same rows computed with M = 1, 7, 64,
//     255 (several offsets) and with every timed M; bias added in one fp32 add;
//   - whether gemm_wgmma's bits equal gemm_bf16's (reported, not a failure).
// --sweep also times every kernel of the family (forced tile width) at each M.
// Times are CUDA-event medians; calls under 0.5 ms are timed as CUDA graphs of 10 calls (no host
// launch overhead, as in a captured decode step). Exit status 1 if a check fails.
//
// --m M (repeatable, 1..4096) times only those M (the checks still use M = 4096); --shape N K
// (repeatable) runs those weight shapes instead of the 8B list.
//
//   bench_gemm [--quick] [--sanitize] [--sweep] [--m M]... [--shape N K]... [--reps N]
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.cuh"
#include "common/error.h"
#include "kernels/cuda/gemm_wgmma.h"
#include "kernels/cuda/launch.h"

using namespace detinfer::cuda;
using namespace detinfer::bench;

namespace {

void ckb(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) detinfer::fail(what, ": cuBLAS status ", static_cast<int>(s));
}

__global__ void fill_x(float* x, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    x[i] = uni(seed, i);
}
__global__ void fill_w(uint16_t* w, int64_t N, int64_t K, int64_t Np, int64_t Kp, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < Np * Kp; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / Kp, c = i % Kp;
    w[i] = r < N && c < K ? __bfloat16_as_ushort(__float2bfloat16_rn(uni(seed, i))) : 0;
  }
}
// Counts rows of a and b (rows × N floats each, rows lda/ldb apart... both N) that differ in any bit.
__global__ void count_bad_rows(const uint32_t* a, const uint32_t* b, int64_t N, int* bad) {
  const int64_t r = blockIdx.x;
  int diff = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) diff |= a[r * N + i] != b[r * N + i];
  if (__syncthreads_or(diff) && threadIdx.x == 0) atomicAdd(bad, 1);
}
__global__ void count_bad_elems(const uint32_t* a, const uint32_t* b, int64_t n, unsigned long long* bad) {
  unsigned long long c = 0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    c += a[i] != b[i];
  if (c) atomicAdd(bad, c);
}

int rows_differing(const float* a, const float* b, int64_t rows, int64_t N) {
  int* d;
  ck(cudaMalloc(&d, sizeof(int)), "malloc");
  ck(cudaMemset(d, 0, sizeof(int)), "memset");
  count_bad_rows<<<static_cast<unsigned>(rows), 256>>>(reinterpret_cast<const uint32_t*>(a),
                                                        reinterpret_cast<const uint32_t*>(b), N, d);
  int h = 0;
  ck(cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost), "copy");
  cudaFree(d);
  return h;
}
unsigned long long elems_differing(const float* a, const float* b, int64_t n) {
  unsigned long long* d;
  ck(cudaMalloc(&d, sizeof(*d)), "malloc");
  ck(cudaMemset(d, 0, sizeof(*d)), "memset");
  count_bad_elems<<<1024, 256>>>(reinterpret_cast<const uint32_t*>(a), reinterpret_cast<const uint32_t*>(b), n, d);
  unsigned long long h = 0;
  ck(cudaMemcpy(&h, d, sizeof(h), cudaMemcpyDeviceToHost), "copy");
  cudaFree(d);
  return h;
}

// Median over `reps` timed runs (after warm-up) of fn(stream). Short calls are captured `inner`
// times into a CUDA graph and the graph is timed, so host launch overhead (tensor-map encoding,
// cuBLAS heuristics) is not counted: that is how a decode step runs. Milliseconds per call.
bool g_plain_timing = false;  // --sanitize: no graphs (fewer instrumented launches)

template <class F>
double median_ms(F&& fn, int reps, cudaStream_t st) {
  cudaEvent_t a, b;
  ck(cudaEventCreate(&a), "event");
  ck(cudaEventCreate(&b), "event");
  auto time_once = [&](auto&& launch) {
    ck(cudaEventRecord(a, st), "record");
    launch();
    ck(cudaEventRecord(b, st), "record");
    ck(cudaEventSynchronize(b), "sync");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, a, b), "elapsed");
    return static_cast<double>(ms);
  };
  fn(st);
  const double first = time_once([&] { fn(st); });
  const int inner = first < 0.5 && !g_plain_timing ? 10 : 1;
  cudaGraphExec_t exec = nullptr;
  if (inner > 1) {
    cudaGraph_t g;
    ck(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "capture");
    for (int i = 0; i < inner; ++i) fn(st);
    ck(cudaStreamEndCapture(st, &g), "capture");
    ck(cudaGraphInstantiate(&exec, g, 0), "graph");
    cudaGraphDestroy(g);
  }
  auto run = [&] {
    if (exec) ck(cudaGraphLaunch(exec, st), "graph launch");
    else fn(st);
  };
  for (int i = 0; i < 2; ++i) run();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) t.push_back(time_once(run) / inner);
  ck(cudaGetLastError(), "timed runs");
  if (exec) cudaGraphExecDestroy(exec);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

double bf16_val(uint16_t b) {
  uint32_t u = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Shape {
  int64_t N, K;
};

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, sanitize = false, sweep = false;
  std::vector<int64_t> only_m;
  std::vector<std::pair<int64_t, int64_t>> only_shapes;
  int reps = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--sanitize") sanitize = true;
    else if (a == "--sweep") sweep = true;
    else if (a == "--m" && i + 1 < argc) only_m.push_back(std::atoll(argv[++i]));
    else if (a == "--shape" && i + 2 < argc) {
      const int64_t n = std::atoll(argv[i + 1]), k = std::atoll(argv[i + 2]);
      only_shapes.push_back({n, k});
      i += 2;
    }
    else if (a == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: bench_gemm [--quick] [--sanitize] [--sweep] [--m M]... [--shape N K]... [--reps N]\n");
      return 2;
    }
  }
  try {
    cudaDeviceProp prop;
    ck(cudaGetDeviceProperties(&prop, 0), "device");
    std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    std::vector<Shape> shapes = {{4096, 4096}, {1024, 4096}, {14336, 4096}, {4096, 14336}, {128256, 4096}, {1000, 4000}};
    std::vector<int64_t> Ms = {1, 8, 64, 256, 4096};
    int64_t Mbig = 4096;
    if (quick) shapes = {{4096, 4096}, {1024, 4096}, {1000, 4000}};
    if (!only_m.empty()) Ms = only_m;
    for (int64_t m : Ms)
      if (m < 1 || m > Mbig) detinfer::fail("bench_gemm: --m ", m, " is outside 1..", Mbig);
    if (!only_shapes.empty()) {
      shapes.clear();
      for (auto [n, k] : only_shapes) {
        if (n < 1 || k < 1) detinfer::fail("bench_gemm: --shape ", n, " ", k, " is empty");
        shapes.push_back({n, k});
      }
    }
    if (sanitize) {
      // {8000, 544} runs the 128 x 256 tiles; {512, 4096} the small-M kernel's 4-K-tile stages
      // through its ring of stages more than once.
      shapes = {{1000, 4000}, {8000, 544}, {512, 4096}};
      Ms = {1, 8, 64, 300};
      Mbig = 300;
      reps = 1;
      g_plain_timing = true;
    }
    cudaStream_t st;
    ck(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "stream");
    cublasHandle_t h;
    ckb(cublasCreate(&h), "cublasCreate");
    ckb(cublasSetStream(h, st), "cublasSetStream");
    void* ws = nullptr;
    const size_t ws_bytes = size_t{64} << 20;  // explicit workspace: cuBLAS inside graph capture
    ck(cudaMalloc(&ws, ws_bytes), "malloc workspace");
    ckb(cublasSetWorkspace(h, ws, ws_bytes), "cublasSetWorkspace");
    bool ok = true;
    std::printf("\n%-13s %5s | %-26s | %-26s | %-26s | %6s | %4s %s\n", "N x K", "M",
                "cuBLAS ms TFLOP/s GB/s", "gemm_bf16 ms TFLOP/s GB/s", "gemm_wgmma ms TFLOP/s GB/s",
                "w/cuBL", "tile", "round ms");
    for (const Shape& s : shapes) {
      const int64_t N = s.N, K = s.K, Np = (N + 127) / 128 * 128, Kp = (K + 31) / 32 * 32;
      uint16_t *w, *xb;
      float *x, *y_ref, *y, *y_bf, *bias;
      ck(cudaMalloc(&w, Np * Kp * 2), "malloc w");
      ck(cudaMalloc(&x, Mbig * K * 4), "malloc x");
      ck(cudaMalloc(&xb, Mbig * Kp * 2), "malloc xb");
      ck(cudaMalloc(&y_ref, Mbig * N * 4), "malloc y");
      ck(cudaMalloc(&y, Mbig * N * 4), "malloc y");
      ck(cudaMalloc(&y_bf, Mbig * N * 4), "malloc y");
      ck(cudaMalloc(&bias, N * 4), "malloc bias");
      fill_w<<<4096, 256>>>(w, N, K, Np, Kp, 1000 + N + K);
      fill_x<<<4096, 256>>>(x, Mbig * K, 7 + N + K);
      fill_x<<<64, 256>>>(bias, N, 99);
      GemmWeight gw;
      gw.w = w, gw.N = N, gw.K = K, gw.Np = Np, gw.Kp = Kp;
      round_rows_to_bf16(x, Mbig, K, Kp, xb, nullptr);
      gemm_wgmma(xb, Kp, Mbig, gw, nullptr, y_ref, nullptr);
      ck(cudaDeviceSynchronize(), "reference run");

      // Timings.
      for (int64_t M : Ms) {
        const float one = 1.0f, zero = 0.0f;
        const double flop = 2.0 * M * N * K, wbytes = 2.0 * N * K;
        // (cuBLAS is left out under --sanitize: racecheck reports hazards inside its kernels)
        const double t_cb = sanitize ? 1.0 : median_ms([&](cudaStream_t) {
          ckb(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &one, w,
                           CUDA_R_16BF, static_cast<int>(Kp), xb, CUDA_R_16BF, static_cast<int>(Kp), &zero, y,
                           CUDA_R_32F, static_cast<int>(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx");
        }, reps, st);
        const double t_bf = median_ms([&](cudaStream_t s) { gemm_bf16(x, M, gw, nullptr, y_bf, s); }, reps, st);
        const double t_wg = median_ms([&](cudaStream_t s) { gemm_wgmma(xb, Kp, M, gw, nullptr, y, s); }, reps, st);
        const double t_rd = median_ms([&](cudaStream_t s) { round_rows_to_bf16(x, M, K, Kp, xb, s); }, reps, st);
        const int bad = rows_differing(y, y_ref, M, N);
        if (bad) ok = false;
        char name[32];
        std::snprintf(name, sizeof name, "%lldx%lld", (long long)N, (long long)K);
        auto cols = [&](double t) {
          static char b[3][64];
          static int k = 0;
          k = (k + 1) % 3;
          std::snprintf(b[k], 64, "%8.4f %7.1f %8.0f", t, flop / t * 1e-9, wbytes / t * 1e-6);
          return b[k];
        };
        std::printf("%-13s %5lld | %-26s | %-26s | %-26s | %6.3f | %4d %.4f%s\n", name, (long long)M,
                    cols(t_cb), cols(t_bf), cols(t_wg), t_cb / t_wg, gemm_wgmma_tile_tokens(M, gw), t_rd,
                    bad ? "  ROWS DIFFER FROM M=Mbig" : "");
        if (sweep) {  // every kernel of the family at this M
          std::printf("    tiles:");
          for (int tile : {8, 32, 64, 128, 256}) {
            const double t = median_ms([&](cudaStream_t s) { gemm_wgmma(xb, Kp, M, gw, nullptr, y, s, tile); },
                                       std::min(reps, 10), st);
            std::printf("  %d: %.4f ms %.1f TF/s %.0f GB/s%s", tile, t, flop / t * 1e-9, wbytes / t * 1e-6,
                        rows_differing(y, y_ref, M, N) ? " ROWS DIFFER" : "");
          }
          std::printf("\n");
        }
        if (M == Mbig || M == 1) {
          const unsigned long long d = elems_differing(y, y_bf, M * N);
          std::printf("    bits vs gemm_bf16 at M = %lld: %llu of %lld elements differ\n", (long long)M, d,
                      (long long)(M * N));
        }
      }

      // Accuracy on sampled elements of the M = Mbig result.
      {
        std::vector<int64_t> rows = {0, Mbig - 1}, cols = {0, N - 1};
        for (int i = 0; i < 14; ++i) rows.push_back(mix(i * 7 + 1) % Mbig);
        for (int i = 0; i < 62; ++i) cols.push_back(mix(i * 13 + 5) % N);
        std::vector<uint16_t> xr(Kp), wr(cols.size() * Kp);
        for (size_t j = 0; j < cols.size(); ++j)
          ck(cudaMemcpy(wr.data() + j * Kp, w + cols[j] * Kp, Kp * 2, cudaMemcpyDeviceToHost), "copy");
        std::vector<float> yr(N);
        double worst = 0;
        const double bound = (K / 16.0 + 2) * std::ldexp(1.0, -20);
        for (int64_t m : rows) {
          ck(cudaMemcpy(xr.data(), xb + m * Kp, Kp * 2, cudaMemcpyDeviceToHost), "copy");
          ck(cudaMemcpy(yr.data(), y_ref + m * N, N * 4, cudaMemcpyDeviceToHost), "copy");
          for (size_t j = 0; j < cols.size(); ++j) {
            double sum = 0, sabs = 0;
            for (int64_t k = 0; k < Kp; ++k) {
              const double p = bf16_val(xr[k]) * bf16_val(wr[j * Kp + k]);
              sum += p;
              sabs += std::fabs(p);
            }
            const double e = std::fabs(yr[cols[j]] - sum) / std::max(sabs, 1e-300);
            worst = std::isnan(e) ? INFINITY : std::max(worst, e);
          }
        }
        const bool acc_ok = worst < bound;
        ok = ok && acc_ok;
        std::printf("  %lldx%lld accuracy: max |y - fp64| / sum|x*w| = %.3e on %zu elements (bound %.3e) %s\n",
                    (long long)N, (long long)K, worst, rows.size() * cols.size(), bound, acc_ok ? "PASS" : "FAIL");
      }

      // T1: windows of rows at several M and offsets against the M = Mbig run.
      {
        struct Win {
          int64_t M, off;
        };
        std::vector<Win> wins = {{1, 0}, {1, 1}, {1, 777 % Mbig}, {1, Mbig - 1}, {7, 0}, {7, 100 % (Mbig - 7)},
                                 {7, Mbig - 7}, {64, 0}, {64, Mbig - 64}, {255, 0}, {255, 3}, {255, Mbig - 255}};
        if (Mbig >= 1064) wins.push_back({64, 1000});
        int rows_total = 0, rows_bad = 0;
        for (const Win& v : wins) {
          gemm_wgmma(xb + v.off * Kp, Kp, v.M, gw, nullptr, y, nullptr);
          const int bad = rows_differing(y, y_ref + v.off * N, v.M, N);
          rows_total += static_cast<int>(v.M);
          rows_bad += bad;
        }
        // Every kernel of the family (forced tile width) on the same window: the same bits.
        for (int tile : {8, 32, 64, 128, 256}) {
          const int64_t m = std::min<int64_t>(255, Mbig - 3);
          gemm_wgmma(xb + 3 * Kp, Kp, m, gw, nullptr, y, nullptr, tile);
          rows_total += static_cast<int>(m);
          rows_bad += rows_differing(y, y_ref + 3 * N, m, N);
        }
        // With bias: one add per element after the chain.
        gemm_wgmma(xb + 5 * Kp, Kp, 7, gw, bias, y, nullptr);
        std::vector<float> got(7 * N), ref(7 * N), hb(N);
        ck(cudaMemcpy(got.data(), y, 7 * N * 4, cudaMemcpyDeviceToHost), "copy");
        ck(cudaMemcpy(ref.data(), y_ref + 5 * N, 7 * N * 4, cudaMemcpyDeviceToHost), "copy");
        ck(cudaMemcpy(hb.data(), bias, N * 4, cudaMemcpyDeviceToHost), "copy");
        int bias_bad = 0;
        for (int64_t i = 0; i < 7 * N; ++i) {
          const float want = ref[i] + hb[i % N];
          bias_bad += std::memcmp(&want, &got[i], 4) != 0;
        }
        const bool t1 = rows_bad == 0 && bias_bad == 0;
        ok = ok && t1;
        std::printf("  %lldx%lld T1: %d of %d rows (M = 1, 7, 64, 255 at %zu offsets, and M = 255 on each of the 5 kernels) equal to M = %lld: %s; "
                    "bias: %d elements differ\n",
                    (long long)N, (long long)K, rows_total - rows_bad, rows_total, wins.size(), (long long)Mbig,
                    t1 ? "PASS" : "FAIL", bias_bad);
      }
      ck(cudaDeviceSynchronize(), "checks");
      for (void* p : {(void*)w, (void*)x, (void*)xb, (void*)y_ref, (void*)y, (void*)y_bf, (void*)bias}) cudaFree(p);
    }
    cublasDestroy(h);
    cudaFree(ws);
    cudaStreamDestroy(st);
    std::printf("\n%s\n", ok ? "ALL CHECKS PASS" : "SOME CHECK FAILED");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gemm: %s\n", e.what());
    return 1;
  }
}
