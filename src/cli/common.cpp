#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <thread>

#include "cli/cli.h"
#include "common/error.h"
#include "common/paths.h"
#include "kernels/cpu/cpu_ops.h"
#ifdef DETINFER_WITH_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

namespace detinfer::cli {

std::atomic<bool> g_interrupted{false};

void install_sigint_handler() {
  std::signal(SIGINT, [](int) {
    if (g_interrupted.exchange(true)) std::_Exit(130);  // a second Ctrl-C quits at once
  });
}

void ModelOptions::add(CLI::App* app) {
  app->add_option("-m,--model", model, "GGUF file or Hugging Face directory (default: the default model)");
  app->add_option("-t,--threads", threads, "CPU threads (default: all cores)")->check(CLI::Range(0, 1024));
  app->add_option("--device", device, "cpu, cuda or auto (cuda when a GPU is present)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  app->add_option("--determinism", determinism,
                  "on (batch-invariant kernels) or off (GPU: cuBLAS, the speed reference; not reproducible "
                  "across batches)")
      ->check(CLI::IsMember({"on", "off"}));
}

void SamplingOptions::add(CLI::App* app) {
  app->add_option("-n,--max-tokens", params.max_tokens, "tokens to generate");
  app->add_option("--temperature", params.temperature, "0 = greedy");
  app->add_option("--top-k", params.top_k, "0 = off");
  app->add_option("--top-p", params.top_p, "1 = off");
  app->add_option("--min-p", params.min_p, "0 = off");
  app->add_option("--repetition-penalty", params.repetition_penalty, "1 = off");
  app->add_option("--frequency-penalty", params.frequency_penalty, "0 = off");
  app->add_option("--presence-penalty", params.presence_penalty, "0 = off");
  app->add_option("--seed", seed, "random seed (default: drawn and printed, so the run can be replayed)");
  app->add_option("--stop", params.stop, "stop string (repeatable)");
  app->add_option("--logprobs", params.logprobs, "top-N logprobs to print per token (0..20)");
  app->add_flag("--ignore-eos", params.ignore_eos, "keep generating after the end-of-sequence token");
}

SamplingParams SamplingOptions::get() const {
  SamplingParams p = params;
  if (seed >= 0) p.seed = static_cast<uint64_t>(seed);
  validate(p);
  return p;
}

int resolve_threads(int threads) {
  if (threads > 0) return threads;
  unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
}

std::string resolve_device(const ModelOptions& o) {
  if (o.device == "cpu") return "cpu";
#ifdef DETINFER_WITH_CUDA
  if (CudaOps::device_count() > 0) return "cuda";
  if (o.device == "cuda") std::fprintf(stderr, "detinfer: no CUDA GPU found; running on the CPU\n");
#else
  if (o.device == "cuda")
    std::fprintf(stderr, "detinfer: this build has no CUDA backend (nvcc was not found when it was "
                         "configured); running on the CPU\n");
#endif
  return "cpu";
}

std::unique_ptr<Ops> make_ops(const std::string& device, int threads, bool deterministic) {
#ifdef DETINFER_WITH_CUDA
  if (device == "cuda") return std::make_unique<CudaOps>(0, deterministic);
#endif
  if (!deterministic) {
    static bool told = false;
    if (!told) std::fprintf(stderr, "detinfer: --determinism off has no effect on the CPU backend\n");
    told = true;
  }
  return std::make_unique<CpuOps>(threads);
}

LoadedModel load(const ModelOptions& o) {
  const std::string path = resolve_model_path(o.model);
  const bool tty = isatty(STDERR_FILENO);
  int last = -1;
  auto progress = [&](int64_t done, int64_t total) {
    if (!tty || total <= 0) return;
    int pct = static_cast<int>(100 * done / total);
    if (pct == last) return;
    last = pct;
    int bars = pct / 4;
    std::fprintf(stderr, "\rloading %-40.40s [%.*s%*s] %3d%%", path.c_str(), bars,
                 "#########################", 25 - bars, "", pct);
    if (done == total) std::fprintf(stderr, "\r\033[K");
  };
  return load_model(path, progress);
}

}  // namespace detinfer::cli
