// detinfer verify: the end-to-end part of the determinism contract (T2–T7, T10 of
// DETERMINISM.md) on any loaded model. Each case runs a request in some setting and compares its
// tokens and logprobs bit for bit with the same request run alone.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"
#include "runtime/engine.h"

namespace detinfer {

class Tokenizer;
class Ops;

struct VerifyOptions {
  std::vector<std::vector<int32_t>> prompts;  // token ids
  int max_tokens = 12;
  int trials = 3;                 // T10: runs of the same prompt in the batch setting
  std::vector<int> batch_others = {1, 7, 31};
  std::vector<int64_t> chunks = {1, 7, 64, 100, 512};
  std::vector<int64_t> prefix_lengths = {1, 15, 16, 17, 511, 2048, 4097};
  std::vector<int> thread_counts = {1, 2};
  bool sampling = true;           // T6: repeat with sampling configurations
  int block_size = 16;
  int64_t kv_bytes = int64_t{1} << 30;
};

struct VerifyCase {
  std::string test;     // "T2", "T3", ...
  std::string setting;  // e.g. "among 7 others", "chunk 64", "greedy"
  std::string sampling; // "greedy", "t=0.7 top-k 40", ...
  int prompt = 0;
  bool identical = false;
  std::string detail;   // where the first difference is, and by how much
};

// make_ops(threads) creates a backend's Ops with that many CPU threads.
using OpsFactory = std::function<std::unique_ptr<Ops>(int threads)>;

std::vector<VerifyCase> run_verify(const ModelConfig& config, const ModelWeights& weights,
                                   const Tokenizer* tokenizer, const OpsFactory& make_ops,
                                   int threads, const VerifyOptions& options,
                                   const std::function<void(const VerifyCase&)>& on_case = {});

// "identical", or the first difference between two completions (token or logprob, in ulps).
std::string compare_completions(const Completion& a, const Completion& b, bool* identical);

// A digest of every token and logprob bit of the results (for run-to-run checks across processes).
std::string digest(const std::vector<RequestResult>& results);

}  // namespace detinfer
