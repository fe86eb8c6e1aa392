// The deterministic sampler (promise I6 of the determinism contract): the token drawn for a
// request depends only on its logits, its seed and the token's index in the request.
//
// Pipeline, in this fixed order (sampler.cpp says how it runs without sorting the vocabulary):
//   1. penalties on the raw logits, token ids in increasing order: repetition (HF/CTRL: a
//      logit < 0 is multiplied by r, otherwise divided; over prompt + generated tokens), then
//      frequency (minus f·count) and presence (minus p, once), over generated tokens only;
//      a finite logit that overflows is clamped to ±FLT_MAX;
//   2. temperature 0 → greedy: argmax of the penalised logits, ties → lower id; nothing else;
//   3. z = logit / temperature (clamped likewise); candidates in the order (z desc, id asc)
//      (-0 and +0 are equal z); top-k keeps the first k;
//   4. weights w = det_expf(z - z_max) (the softmax numerators), fp32;
//   5. min-p: drop w < min_p · w_top (fp32 product);
//   6. masses q = trunc(w · 2^40), exact integers, so every sum below is exact;
//   7. top-p: keep the shortest prefix, in candidate order, whose mass is >= top_p times the
//      survivors' total (the renormalised distribution; exact rational comparison);
//   8. u24 = (word 0 of Philox4x32-10(key = seed, counter = token_index)) >> 8; pick the first
//      candidate whose cumulative mass exceeds floor(kept mass · u24 / 2^24).
// Reported logprobs are the raw model's: cpu::log_softmax of the logits as given, before
// penalties and temperature, so they equal what the prefill path computes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace detinfer {

struct SamplingParams {
  float temperature = 0.0f;         // 0 → greedy (argmax, ties → lower token id)
  int top_k = 0;                    // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // 0 = off
  float repetition_penalty = 1.0f;  // HF/CTRL style over prompt + generated tokens
  float frequency_penalty = 0.0f;   // OpenAI style over generated tokens
  float presence_penalty = 0.0f;
  std::optional<uint64_t> seed;  // absent → the runtime draws one and reports it
  int max_tokens = 256;
  std::vector<std::string> stop;  // stop strings (handled by the runtime, not here)
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int logprobs = 0;  // top-N logprobs to return (0..kMaxLogprobs)
  int n = 1;         // completions per request; completion i uses derive_seed(seed, i)
};

inline constexpr int kMaxLogprobs = 20;
inline constexpr int kMaxCompletions = 128;    // n: bounds what one request may allocate
inline constexpr float kMaxAbsPenalty = 2.0f;  // frequency/presence, the OpenAI range

// Throws Error naming the first out-of-range field and its value.
void validate(const SamplingParams& p);

struct TokenLogprob {
  int32_t token;
  float logprob;
};
struct SampleResult {
  int32_t token;
  float logprob;                  // raw log-softmax of the chosen token
  std::vector<TokenLogprob> top;  // p.logprobs best, logprob desc, ties → lower id
};

// Reusable workspace (grows to the vocabulary size once); one per thread, not thread-safe.
class Sampler {
 public:
  // logits[V]: raw model output (finite or -inf; NaN/+inf or no finite logit → Error).
  // seed: the completion's effective seed (the runtime resolves p.seed / draw_seed() /
  // derive_seed(); p.seed itself is not read here). token_index: index of the token being
  // generated within the completion (0 = first). history: prompt then generated tokens;
  // history[n_prompt:] are the generated ones.
  SampleResult sample(const float* logits, int32_t V, const SamplingParams& p, uint64_t seed,
                      int64_t token_index, std::span<const int32_t> history, size_t n_prompt);

  // Step 1 alone, in place on logits[V] (exposed for tests and for device samplers that must
  // match it). Throws Error for a history token outside [0, V) or n_prompt > history.size().
  void apply_penalties(float* logits, int32_t V, const SamplingParams& p,
                       std::span<const int32_t> history, size_t n_prompt);

 private:
  struct Crossing {
    uint64_t key;  // sort key of the first candidate whose cumulative mass exceeds t
    uint64_t cum;  // the cumulative mass up to and including it
  };
  int32_t sample_scaled(const SamplingParams& p, uint64_t seed, int64_t token_index);
  // Cumulative-mass selection over candidates in sort-key order, without sorting them;
  // mass == nullptr counts each candidate as 1. t < the total mass. top_hist: the histogram
  // of the keys' first digit, if the caller has it.
  Crossing select(const uint64_t* keys, const uint64_t* mass, size_t n, uint64_t t,
                  const uint64_t* top_hist);

  std::vector<float> z_;             // penalised (then scaled) logits
  std::vector<float> shifted_;       // z - z_max
  std::vector<float> weight_all_;    // det_expf(z - z_max)
  std::vector<float> logprobs_;      // raw log-softmax
  std::vector<uint32_t> gen_count_;  // per token: occurrences among generated tokens
  std::vector<uint8_t> seen_;        // per token: occurs anywhere in history
  std::vector<int32_t> touched_;     // ids with seen_ set, to process and reset
  std::vector<uint64_t> keys_;       // candidates' sort keys: (z desc, id asc) as one integer
  std::vector<uint64_t> mass_;       // candidates' fixed-point weights
  std::vector<uint64_t> walk_keys_[2], walk_mass_[2], hist_, top_hist_;
  std::vector<std::pair<uint64_t, uint64_t>> small_;
};

// Seed of completion i of a request with seed `seed`: the (i+1)-th output of splitmix64 seeded
// with it. For a fixed seed, distinct i give distinct seeds (a bijection of i).
uint64_t derive_seed(uint64_t seed, uint64_t i);

// A fresh seed from std::random_device: the only nondeterminism, and the runtime reports it.
uint64_t draw_seed();

}  // namespace detinfer
