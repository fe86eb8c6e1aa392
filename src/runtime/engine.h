// The batch runner: many requests at once, each prompt prefilled in chunks of any size while
// other sequences decode in the same step. Every request's tokens and logprobs are bitwise the
// same whatever else runs beside it (the determinism contract, I1–I7; docs/DETERMINISM.md): the kernels' orders do not
// depend on the batch, and the sampler's randomness is keyed by (seed, token index).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/ops.h"
#include "runtime/kv_cache.h"
#include "runtime/sampler.h"

namespace detinfer {

class Tokenizer;

struct Request {
  std::vector<int32_t> prompt;
  SamplingParams params;
  bool prompt_logprobs = false;  // also return log p(prompt[i] | prompt[..i]) for i ≥ 1
};

enum class FinishReason { None, Length, Eos, StopToken, StopString, ContextFull, Cancelled, Error };
const char* finish_reason_name(FinishReason r);

struct Completion {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;                         // of each chosen token
  std::vector<std::vector<TokenLogprob>> top_logprobs; // params.logprobs entries each
  std::string text;                                    // detokenized (stop string cut off)
  FinishReason finish = FinishReason::None;
};

struct RequestResult {
  uint64_t seed = 0;                  // the seed used: the request's, or one drawn for it
  std::vector<float> prompt_logprobs; // prompt.size() entries (NaN for the first) when asked
  std::vector<Completion> completions;
  std::string error;                  // set when the request could not run (finish = Error)
};

struct EngineOptions {
  int block_size = 16;
  int64_t kv_blocks = 0;         // 0: max_seqs full contexts, capped at kv_bytes_default
  int64_t kv_bytes_default = int64_t{1} << 30;
  int64_t max_step_tokens = 512; // tokens per forward step (decode tokens + prefill chunks)
  int64_t prefill_chunk = 0;     // largest prefill chunk per sequence and step; 0 = no limit
  int max_seqs = 64;             // sequences running at once
  bool prefix_cache = true;
  // For tests of batch invariance: reorder the sequences of every step by this seed (0 = off).
  uint64_t shuffle_seed = 0;
};

using RequestId = int64_t;
// Streaming: called for each generated token, with the text it completes (may be empty while a
// UTF-8 character is incomplete).
using TokenCallback = std::function<void(RequestId, int completion, int32_t token, const std::string& text)>;

class Engine {
 public:
  Engine(const ModelConfig& config, const ModelWeights& weights, const Tokenizer* tokenizer,
         Ops& ops, EngineOptions options);
  ~Engine();

  RequestId submit(Request request, TokenCallback on_token = {});
  // One forward step over the running sequences; false when nothing is left to run.
  bool step();
  void run();                                 // steps until every submitted request is done
  bool done(RequestId id) const;
  RequestResult take(RequestId id);           // the result of a finished request
  void cancel(RequestId id);
  // Convenience: submit all, run, return results in order.
  std::vector<RequestResult> generate(std::vector<Request> requests);

  const EngineOptions& options() const { return options_; }
  int64_t kv_bytes() const;
  struct Stats {
    int64_t steps = 0, prefill_tokens = 0, decode_tokens = 0;
    // Steps with / without prefill tokens: the forward pass, then sampling, logprobs and stop
    // checks. sample_seconds: from the forward call's return to the step's end (where the
    // backend samples on the device, that includes waiting for the forward pass to finish).
    double prefill_seconds = 0, decode_seconds = 0, sample_seconds = 0;
  };
  const Stats& stats() const { return stats_; }

 private:
  struct Seq;
  struct Req;
  bool admit(Seq& s);
  void finish(Seq& s, FinishReason why);
  void release_blocks(Seq& s);
  void on_logits(Seq& s, const float* logits);  // samples on the CPU, then on_sample
  void on_sample(Seq& s, SampleResult r);
  SampleRow sample_row(const Seq& s) const;

  ModelConfig config_;
  const ModelWeights& weights_;
  const Tokenizer* tokenizer_;
  Ops& ops_;
  EngineOptions options_;
  std::unique_ptr<KvBlockPool> pool_;
  Sampler sampler_;
  std::vector<std::unique_ptr<Req>> requests_;
  std::vector<Seq*> waiting_, running_;
  Stats stats_;
  std::vector<float> logprob_row_;
  std::vector<SampleRow> sample_rows_;         // a step's rows, when the backend samples
  std::vector<SampleRowResult> samples_;
  StepBatch batch_;
};

}  // namespace detinfer
