// detinfer bench: prefill and decode tokens/s for batch sizes 1..N on random prompts, and the
// prefill speed of one long prompt. Times are the engine's steps (Engine::Stats: the forward pass
// and the sampling of its logits; scheduling is outside), after a warm-up that uploads the
// weights to a GPU and, before each batch, an untimed short run of that batch.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/cli.h"
#include "common/error.h"
#ifdef DETINFER_WITH_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

namespace detinfer::cli {

namespace {

struct BenchCli {
  ModelOptions model;
  std::vector<int> batches = {1, 2, 4, 8, 16};
  int prompt_len = 128;
  int gen = 32;
  int prefill_len = 0;  // > 0: also one prompt of this many tokens, prefilled in one step
  std::string json_path;
};

#ifdef DETINFER_WITH_CUDA
// GPU name and memory in use, when the backend is CUDA (empty otherwise).
std::string gpu_line(Ops& ops, double* used_mib) {
  auto* c = dynamic_cast<CudaOps*>(&ops);
  if (!c) return "";
  int64_t free_b = 0, total_b = 0;
  c->memory_info(&free_b, &total_b);
  if (used_mib) *used_mib = (total_b - free_b) / 1048576.0;
  return cat(CudaOps::device_name(c->device()), ", ", total_b >> 20, " MiB, determinism ",
             c->deterministic() ? "on" : "off (cuBLAS)");
}
// The batch-1 decode roofline: bytes read per token (the GEMM weights as stored on the GPU, bf16)
// over the GPU's measured copy bandwidth (bytes read + written per second). 0 on the CPU.
struct Roofline {
  double copy_gbs = 0, weight_gb = 0, tok_s = 0;
};
Roofline gpu_roofline(Ops& ops) {
  auto* c = dynamic_cast<CudaOps*>(&ops);
  if (!c) return {};
  Roofline r;
  r.copy_gbs = c->copy_bandwidth() / 1e9;
  r.weight_gb = static_cast<double>(c->weight_bytes()) / 1e9;
  r.tok_s = r.weight_gb > 0 ? r.copy_gbs / r.weight_gb : 0;
  return r;
}
#else
std::string gpu_line(Ops&, double*) { return ""; }
struct Roofline {
  double copy_gbs = 0, weight_gb = 0, tok_s = 0;
};
Roofline gpu_roofline(Ops&) { return {}; }
#endif

double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // kilobytes on Linux
}

std::vector<Request> random_requests(int n, int prompt_len, int gen, int vocab, std::mt19937& rng) {
  std::vector<Request> reqs(n);
  std::uniform_int_distribution<int> tok(0, vocab - 1);
  for (Request& r : reqs) {
    for (int i = 0; i < prompt_len; ++i) r.prompt.push_back(tok(rng));
    r.params.max_tokens = gen;
    r.params.ignore_eos = true;
    r.params.seed = 1;
  }
  return reqs;
}

void bench(const BenchCli& o) {
  LoadedModel m = load(o.model);
  const int threads = resolve_threads(o.model.threads);
  const std::string device = resolve_device(o.model);
  auto ops = make_ops(device, threads, o.model.deterministic());
  const std::string gpu = gpu_line(*ops, nullptr);
  std::printf("bench %s (%s) on %s%s%s, %d threads, prompt %d tokens, %d generated tokens per sequence\n",
              m.path.c_str(), arch_name(m.config.arch), device.c_str(), gpu.empty() ? "" : ": ", gpu.c_str(),
              threads, o.prompt_len, o.gen);
  DETINFER_CHECK(o.prompt_len + o.gen < m.config.max_context, "prompt + generated tokens (",
                 o.prompt_len + o.gen, ") exceed the model's context (", m.config.max_context, ")");
  DETINFER_CHECK(o.prefill_len < m.config.max_context, "--prefill-len ", o.prefill_len,
                 " exceeds the model's context (", m.config.max_context, ")");
  for (int b : o.batches) DETINFER_CHECK(b >= 1 && b <= 4096, "batch size ", b, " out of range (1..4096)");
  std::mt19937 rng(1);
  {  // Warm-up: weights uploaded, kernels loaded, allocations made before anything is timed.
    EngineOptions e;
    e.kv_blocks = 4, e.max_seqs = 1, e.prefix_cache = false;
    Engine engine(m.config, m.weights, nullptr, *ops, e);
    engine.generate(random_requests(1, 8, 2, m.config.vocab_size, rng));
  }
  const Roofline roof = gpu_roofline(*ops);
  if (roof.tok_s > 0)
    std::printf("roofline: %.2f GB of weights read per token at batch 1, copy bandwidth %.0f GB/s "
                "(read + write, measured now) -> at most %.1f tok/s\n",
                roof.weight_gb, roof.copy_gbs, roof.tok_s);
  std::printf("%6s %14s %14s %12s %10s %12s %12s\n", "batch", "prefill tok/s", "decode tok/s", "ms/step",
              "wall s", gpu.empty() ? "peak MiB" : "GPU MiB", "weights+KV");
  nlohmann::json rows = nlohmann::json::array();
  bool failed = false;
  auto run = [&](int b, int prompt_len, int gen, int64_t step_tokens) {
    try {
      EngineOptions e;
      // The cache holds exactly the batch, so memory can be compared with weights + KV.
      e.kv_blocks = int64_t{b} * ((prompt_len + gen + e.block_size - 1) / e.block_size);
      e.max_seqs = b;
      e.prefix_cache = false;
      e.max_step_tokens = step_tokens;
      if (gen > 1) {
        // An untimed short run of the same batch first: one-time costs at new shapes (cuBLAS
        // loading kernels in `off` mode, buffer growth) are not counted in the timed run. Its
        // own generator, so the timed prompts do not depend on it.
        std::mt19937 warm_rng(static_cast<uint32_t>(b));
        Engine warm(m.config, m.weights, nullptr, *ops, e);
        warm.generate(random_requests(b, prompt_len, std::min(gen, 3), m.config.vocab_size, warm_rng));
      }
      Engine engine(m.config, m.weights, nullptr, *ops, e);
      auto t0 = std::chrono::steady_clock::now();
      engine.generate(random_requests(b, prompt_len, gen, m.config.vocab_size, rng));
      double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const Engine::Stats& s = engine.stats();
      double pf = s.prefill_seconds > 0 ? s.prefill_tokens / s.prefill_seconds : 0;
      double dc = s.decode_seconds > 0 ? s.decode_tokens / s.decode_seconds : 0;
      double ms_step = s.decode_tokens > 0 ? 1e3 * s.decode_seconds / (static_cast<double>(s.decode_tokens) / b) : 0;
      double mem = peak_rss_mib();
      gpu_line(*ops, &mem);
      const double need_mib = (m.weight_bytes() + engine.kv_bytes()) / 1048576.0;
      std::string note = gen <= 1 ? "  (one prompt, one step)" : "";
      if (b == 1 && gen > 1 && roof.tok_s > 0)
        note = cat("  (", static_cast<int>(100.0 * dc / roof.tok_s + 0.5), "% of the roofline)");
      std::printf("%6d %14.1f %14.1f %12.3f %10.2f %12.1f %12.1f%s\n", b, pf, dc, ms_step, wall, mem,
                  need_mib, note.c_str());
      std::fflush(stdout);
      rows.push_back({{"batch", b}, {"prompt_len", prompt_len}, {"gen", gen}, {"prefill_tok_s", pf},
                      {"decode_tok_s", dc}, {"decode_ms_per_step", ms_step}, {"wall_s", wall},
                      {"prefill_tokens", s.prefill_tokens}, {"decode_tokens", s.decode_tokens},
                      {gpu.empty() ? "peak_rss_mib" : "gpu_used_mib", mem}, {"weights_plus_kv_mib", need_mib}});
    } catch (const Error& e) {  // e.g. out of GPU memory at a large batch: report it, go on
      std::printf("%6d  error: %s\n", b, e.what());
      std::fflush(stdout);
      rows.push_back({{"batch", b}, {"prompt_len", prompt_len}, {"error", e.what()}});
      failed = true;
    }
  };
  for (int b : o.batches) {
    run(b, o.prompt_len, o.gen, std::max<int64_t>(512, b));
    if (g_interrupted) break;
  }
  // The long prompt twice: the first run also grows the scratch buffers to its size.
  for (int i = 0; i < 2 && o.prefill_len > 0 && !g_interrupted; ++i) run(1, o.prefill_len, 1, o.prefill_len);
  if (!o.json_path.empty()) {
    nlohmann::json j = {{"model", m.path},   {"threads", threads}, {"prompt_len", o.prompt_len},
                        {"gen", o.gen},      {"device", device},   {"gpu", gpu},
                        {"determinism", o.model.determinism},      {"results", rows}};
    if (roof.tok_s > 0)
      j["roofline"] = {{"copy_gb_s", roof.copy_gbs}, {"weight_gb_per_token", roof.weight_gb},
                       {"batch1_tok_s", roof.tok_s}};
    std::ofstream(o.json_path) << j.dump(2) << "\n";
    DETINFER_CHECK(std::ifstream(o.json_path).good(), o.json_path, ": cannot write");
  }
  DETINFER_CHECK(!failed, "some runs failed (see above)");
}

}  // namespace

void add_bench(CLI::App& app) {
  auto o = std::make_shared<BenchCli>();
  auto* cmd = app.add_subcommand("bench", "prefill and decode tokens/s for several batch sizes");
  o->model.add(cmd);
  cmd->add_option("-b,--batch", o->batches, "batch sizes (default 1 2 4 8 16)");
  cmd->add_option("--prompt-len", o->prompt_len, "prompt tokens per sequence")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--gen", o->gen, "generated tokens per sequence")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--prefill-len", o->prefill_len, "also time one prompt of this many tokens in one step")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--json", o->json_path, "also write the results as JSON to this file");
  cmd->callback([o] {
    install_sigint_handler();
    bench(*o);
  });
}

}  // namespace detinfer::cli
