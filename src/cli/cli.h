// Shared pieces of the subcommands: options every command takes, model loading with progress,
// Ctrl-C handling.
#pragma once
#include <CLI/CLI.hpp>
#include <atomic>
#include <memory>
#include <string>

#include "model/loader.h"
#include "model/ops.h"
#include "runtime/engine.h"
#include "tokenizer/tokenizer.h"

namespace detinfer::cli {

struct ModelOptions {
  std::string model;   // empty: the default model
  int threads = 0;     // 0: all cores
  std::string device = "auto";  // auto: cuda when built with it and a GPU is present, else cpu
  std::string determinism = "on";  // off: the GPU uses cuBLAS (faster, not batch-invariant)
  bool deterministic() const { return determinism != "off"; }
  void add(CLI::App* app);
};

// "cpu" or "cuda": the backend --device resolves to on this machine (notice on stderr when a
// requested GPU is not there).
std::string resolve_device(const ModelOptions& o);
// The backend's Ops; threads = CPU threads (the CPU backend's workers).
// deterministic = false (`--determinism off`) applies to the GPU only; the CPU backend has one mode.
std::unique_ptr<Ops> make_ops(const std::string& device, int threads, bool deterministic = true);

struct SamplingOptions {
  SamplingParams params;
  int64_t seed = -1;  // -1: draw one
  void add(CLI::App* app);
  SamplingParams get() const;
};

// Loads with a progress bar on stderr (when it is a terminal or the model is large).
LoadedModel load(const ModelOptions& o);
int resolve_threads(int threads);

extern std::atomic<bool> g_interrupted;
void install_sigint_handler();

void add_info(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_run(CLI::App& app);
void add_chat(CLI::App& app);
void add_verify(CLI::App& app);
void add_bench(CLI::App& app);

}  // namespace detinfer::cli
