// GPU sampler benchmark (kernels/cuda/sampler.h) at V = 128256 (Llama-3) and batch 1, 8, 64, 256:
// time per call (CUDA events, mean over repeated launches after warm-up), rows/s, and the
// logits read rate (R·V·4 bytes per call / time) for
//   greedy               temperature 0
//   greedy+logprobs      temperature 0, top-20 logprobs
//   sample               temperature 0.7, top-k 40, top-p 0.9
//   sample-topp          temperature 1.0, top-p 0.95 (no top-k)
//   sample+penalties     temperature 0.8, top-p 0.9, repetition 1.1, frequency 0.3, 256-token history
//   sample+pen H=8192    the same with an 8192-token history
// and, for comparison, the first half of the path it replaces: copying the logits to pinned host
// memory (the CPU sampler then takes ~0.3-1 ms per row on one thread). Logits are N(0, 2²) with a few confident tokens, made on the device.
//
//   bench_sampler [--reps N] [--vocab V] [--config PREFIX] [--batch R]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.cuh"
#include "common/error.h"
#include "kernels/cuda/sampler.h"

using namespace detinfer;
using namespace detinfer::cuda;
using namespace detinfer::bench;

namespace {

// Roughly N(0, 2²) (sum of four uniforms), plus 4 tokens per row at 10-13.
__global__ void fill_logits(float* x, int64_t rows, int32_t V) {
  const int64_t n = rows * V;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    float s = 0.0f;
    for (int j = 0; j < 4; ++j) s += static_cast<float>(mix(i * 4 + j) >> 8) * (1.0f / 16777216.0f);
    const int32_t col = static_cast<int32_t>(i % V);
    const uint32_t h = mix(i / V + 0x1234567ull);
    const bool hot = col == static_cast<int32_t>(h % V) || col == static_cast<int32_t>((h >> 7) % V) ||
                     col == static_cast<int32_t>((h >> 13) % V) || col == static_cast<int32_t>((h >> 19) % V);
    x[i] = hot ? 10.0f + static_cast<float>(h % 4) : (s - 2.0f) * 3.46f;
  }
}

struct Config {
  const char* name;
  SampleRowParams p;
  int history;
};

}  // namespace

int main(int argc, char** argv) {
  int reps = 50, only_batch = 0;
  int32_t V = 128256;
  std::string only_config;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--vocab") && i + 1 < argc) V = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--config") && i + 1 < argc) only_config = argv[++i];
    else if (!std::strcmp(argv[i], "--batch") && i + 1 < argc) only_batch = std::atoi(argv[++i]);
  }
  try {
    cudaDeviceProp prop{};
    ck(cudaGetDeviceProperties(&prop, 0), "device properties");
    std::printf("device: %s, V = %d, %d reps per point\n", prop.name, V, reps);
    const int batches[] = {1, 8, 64, 256};
    const int64_t max_rows = 256;
    float* logits = nullptr;
    ck(cudaMalloc(&logits, max_rows * V * sizeof(float)), "cudaMalloc logits");
    fill_logits<<<2048, 256>>>(logits, max_rows, V);
    ck(cudaGetLastError(), "fill");
    const int max_hist = 8192;
    std::vector<int32_t> hist(max_rows * max_hist);
    for (size_t i = 0; i < hist.size(); ++i) hist[i] = static_cast<int32_t>((i * 7919) % V);
    int32_t* d_hist = nullptr;
    ck(cudaMalloc(&d_hist, hist.size() * sizeof(int32_t)), "cudaMalloc history");
    ck(cudaMemcpy(d_hist, hist.data(), hist.size() * 4, cudaMemcpyHostToDevice), "upload history");
    SampleRowParams* d_params = nullptr;
    SampleRowResult* d_out = nullptr;
    ck(cudaMalloc(&d_params, max_rows * sizeof(SampleRowParams)), "cudaMalloc params");
    ck(cudaMalloc(&d_out, max_rows * sizeof(SampleRowResult)), "cudaMalloc results");
    const size_t ws_bytes = sample_workspace_bytes(max_rows, V);
    void* ws = nullptr;
    ck(cudaMalloc(&ws, ws_bytes), "cudaMalloc workspace");
    cudaEvent_t e0, e1;
    ck(cudaEventCreate(&e0), "event");
    ck(cudaEventCreate(&e1), "event");

    std::vector<Config> configs;
    {
      Config c{"greedy", SampleRowParams{}, 0};
      configs.push_back(c);
      c = Config{"greedy+logprobs20", SampleRowParams{}, 0};
      c.p.n_logprobs = 20;
      configs.push_back(c);
      c = Config{"sample t0.7 k40 p0.9", SampleRowParams{}, 0};
      c.p.temperature = 0.7f, c.p.top_k = 40, c.p.top_p = 0.9f;
      configs.push_back(c);
      c = Config{"sample t1.0 p0.95", SampleRowParams{}, 0};
      c.p.temperature = 1.0f, c.p.top_p = 0.95f;
      configs.push_back(c);
      c = Config{"sample+penalties", SampleRowParams{}, 256};
      c.p.temperature = 0.8f, c.p.top_p = 0.9f, c.p.repetition_penalty = 1.1f;
      c.p.frequency_penalty = 0.3f;
      configs.push_back(c);
      c.name = "sample+pen H=8192";
      c.history = max_hist;
      configs.push_back(c);
    }
    std::printf("%-22s %5s %10s %12s %10s\n", "config", "batch", "us/call", "rows/s", "GB/s");
    for (const Config& c : configs) {
      if (only_config.size() && std::string(c.name).rfind(only_config, 0) != 0) continue;
      for (int R : batches) {
        if (only_batch && R != only_batch) continue;
        std::vector<SampleRowParams> ps(R, c.p);
        for (int r = 0; r < R; ++r) {
          ps[r].seed = 1000 + r;
          ps[r].token_index = 7;
          ps[r].history_offset = static_cast<int64_t>(r) * max_hist;
          ps[r].history_len = c.history;
          ps[r].n_prompt = c.history / 2;
        }
        ck(cudaMemcpy(d_params, ps.data(), R * sizeof(SampleRowParams), cudaMemcpyHostToDevice),
           "upload params");
        for (int w = 0; w < 3; ++w)
          sample_rows(logits, V, R, V, d_params, d_hist, ws, ws_bytes, d_out, nullptr);
        ck(cudaEventRecord(e0), "record");
        for (int i = 0; i < reps; ++i)
          sample_rows(logits, V, R, V, d_params, d_hist, ws, ws_bytes, d_out, nullptr);
        ck(cudaEventRecord(e1), "record");
        ck(cudaEventSynchronize(e1), "sync");
        float ms = 0;
        ck(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
        const double us = 1000.0 * ms / reps;
        std::vector<SampleRowResult> out(R);
        ck(cudaMemcpy(out.data(), d_out, R * sizeof(SampleRowResult), cudaMemcpyDeviceToHost),
           "download");
        int bad = 0;
        for (const auto& o : out) bad += o.status != kSampleOk;
        std::printf("%-22s %5d %10.1f %12.0f %10.0f%s\n", c.name, R, us, R / (us * 1e-6),
                    R * double(V) * 4 / (us * 1e3), bad ? "  (errors!)" : "");
      }
    }

    // The path this replaces: logits to the host, then the CPU sampler row by row.
    float* host = nullptr;
    ck(cudaMallocHost(&host, max_rows * V * sizeof(float)), "cudaMallocHost");
    for (int R : batches) {
      if (only_config.size() || only_batch) break;
      ck(cudaEventRecord(e0), "record");
      for (int i = 0; i < 10; ++i)
        ck(cudaMemcpyAsync(host, logits, R * int64_t{V} * 4, cudaMemcpyDeviceToHost), "copy");
      ck(cudaEventRecord(e1), "record");
      ck(cudaEventSynchronize(e1), "sync");
      float ms = 0;
      ck(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
      std::printf("copy logits to host    %5d %10.1f us\n", R, 100.0 * ms);
    }
    cudaFreeHost(host);
    cudaFree(ws);
    cudaFree(d_out);
    cudaFree(d_params);
    cudaFree(d_hist);
    cudaFree(logits);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_sampler: %s\n", e.what());
    return 1;
  }
  return 0;
}
