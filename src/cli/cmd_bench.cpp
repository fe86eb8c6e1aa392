// detinfer bench: prefill and decode tokens/s for batch sizes 1..N on random prompts.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/cli.h"
#include "common/error.h"

namespace detinfer::cli {

namespace {

struct BenchCli {
  ModelOptions model;
  std::vector<int> batches = {1, 2, 4, 8, 16};
  int prompt_len = 128;
  int gen = 32;
  std::string json_path;
};

double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // kilobytes on Linux
}

void bench(const BenchCli& o) {
  LoadedModel m = load(o.model);
  const int threads = resolve_threads(o.model.threads);
  const std::string device = resolve_device(o.model);
  auto ops = make_ops(device, threads);
  std::printf("bench %s (%s) on %s, %d threads, prompt %d tokens, %d generated tokens per sequence\n",
              m.path.c_str(), arch_name(m.config.arch), device.c_str(), threads, o.prompt_len, o.gen);
  std::printf("%6s %14s %14s %10s %12s %12s\n", "batch", "prefill tok/s", "decode tok/s", "wall s",
              "peak MiB", "weights+KV");
  nlohmann::json rows = nlohmann::json::array();
  std::mt19937 rng(1);
  DETINFER_CHECK(o.prompt_len + o.gen < m.config.max_context, "prompt + generated tokens (",
                 o.prompt_len + o.gen, ") exceed the model's context (", m.config.max_context, ")");
  for (int b : o.batches) {
    DETINFER_CHECK(b >= 1 && b <= 4096, "batch size ", b, " out of range (1..4096)");
    EngineOptions e;
    // The cache holds exactly the batch, so peak memory can be compared with weights + KV.
    e.kv_blocks = int64_t{b} * ((o.prompt_len + o.gen + e.block_size - 1) / e.block_size);
    e.max_seqs = b;
    e.prefix_cache = false;
    e.max_step_tokens = std::max<int64_t>(512, b);
    Engine engine(m.config, m.weights, nullptr, *ops, e);
    std::vector<Request> reqs(b);
    std::uniform_int_distribution<int> tok(0, m.config.vocab_size - 1);
    for (Request& r : reqs) {
      for (int i = 0; i < o.prompt_len; ++i) r.prompt.push_back(tok(rng));
      r.params.max_tokens = o.gen;
      r.params.ignore_eos = true;
      r.params.seed = 1;
    }
    auto t0 = std::chrono::steady_clock::now();
    engine.generate(std::move(reqs));
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const Engine::Stats& s = engine.stats();
    double pf = s.prefill_seconds > 0 ? s.prefill_tokens / s.prefill_seconds : 0;
    double dc = s.decode_seconds > 0 ? s.decode_tokens / s.decode_seconds : 0;
    const double need_mib = (m.weight_bytes() + engine.kv_bytes()) / 1048576.0;
    std::printf("%6d %14.1f %14.1f %10.2f %12.1f %12.1f\n", b, pf, dc, wall, peak_rss_mib(), need_mib);
    std::fflush(stdout);
    rows.push_back({{"batch", b}, {"prefill_tok_s", pf}, {"decode_tok_s", dc}, {"wall_s", wall},
                    {"prefill_tokens", s.prefill_tokens}, {"decode_tokens", s.decode_tokens},
                    {"peak_rss_mib", peak_rss_mib()}, {"weights_plus_kv_mib", need_mib}});
    if (g_interrupted) break;
  }
  if (!o.json_path.empty()) {
    nlohmann::json j = {{"model", m.path}, {"threads", threads}, {"prompt_len", o.prompt_len},
                        {"gen", o.gen}, {"device", device}, {"results", rows}};
    std::ofstream(o.json_path) << j.dump(2) << "\n";
    DETINFER_CHECK(std::ifstream(o.json_path).good(), o.json_path, ": cannot write");
  }
}

}  // namespace

void add_bench(CLI::App& app) {
  auto o = std::make_shared<BenchCli>();
  auto* cmd = app.add_subcommand("bench", "prefill and decode tokens/s for several batch sizes");
  o->model.add(cmd);
  cmd->add_option("-b,--batch", o->batches, "batch sizes (default 1 2 4 8 16)");
  cmd->add_option("--prompt-len", o->prompt_len, "prompt tokens per sequence")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--gen", o->gen, "generated tokens per sequence")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--json", o->json_path, "also write the results as JSON to this file");
  cmd->callback([o] {
    install_sigint_handler();
    bench(*o);
  });
}

}  // namespace detinfer::cli
