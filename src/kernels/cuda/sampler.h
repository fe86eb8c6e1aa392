// Sampling on the GPU with the bits of the CPU sampler (runtime/sampler.h): for the same logits
// row, parameters, seed, token index and history, the token, its logprob and the top-N list are
// bitwise those of Sampler::sample, and the logprobs those of cpu::log_softmax. Every float
// reduction has a fixed order that depends only on V (sampler.cu says which); every sum over
// candidates is a sum of exact integers (the fixed-point masses), so its order does not matter.
// Each row is computed by its own blocks: its result does not depend on the other rows.
//
// Internal interface (plain device pointers, compiled by nvcc and the host compiler).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace detinfer::cuda {

constexpr int kSampleMaxTop = 20;            // kMaxLogprobs of runtime/sampler.h
constexpr int32_t kSampleMaxVocab = 1 << 18;  // the GPU sampler's limit (a bitmap per row in smem)

// One row's parameters (host fills, uploads an array of R of them). The fields mean what
// SamplingParams's do; the host is expected to have run validate() on the request.
struct SampleRowParams {
  float temperature = 0.0f;  // 0 → greedy
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  int32_t top_k = 0;
  int32_t n_logprobs = 0;  // 0..kSampleMaxTop: the top list's length (min with V)
  // >= 0: a prompt-logprob row: report the logprob of this token (and the top list if
  // n_logprobs > 0); nothing is sampled and the history is not read.
  int32_t want_token = -1;
  int32_t n_prompt = 0;        // history[0, n_prompt) is the prompt, the rest generated tokens
  int64_t history_offset = 0;  // into the flattened history array
  int64_t history_len = 0;
  uint64_t seed = 0;         // the completion's effective seed
  int64_t token_index = 0;   // index of the token being generated (Philox counter)
};

// The CPU sampler's error cases, as codes (the host turns them into Error messages).
enum SampleStatus : int32_t {
  kSampleOk = 0,
  kSampleNonFiniteLogit = 1,  // detail = the lowest token id whose logit is NaN or +inf
  kSampleNoFiniteLogit = 2,   // every logit is -inf
  kSampleBadHistory = 3,      // detail = the lowest history index outside [0, V), or -1 when
                              // n_prompt > history_len
  kSampleBadParams = 4,       // a parameter validate() rejects, or a negative token index
  kSampleBadWantToken = 5,    // want_token >= V
};

struct SampleRowResult {
  int32_t token;    // drawn (or greedy, or want_token); -1 on error
  float logprob;    // raw log-softmax of `token`
  int32_t status;   // SampleStatus
  int32_t detail;   // see SampleStatus
  int32_t n_top;    // entries of top[] in use: min(n_logprobs, V)
  int32_t top_token[kSampleMaxTop];
  float top_logprob[kSampleMaxTop];  // logprob desc, ties → lower id
};

// Bytes of device workspace sample_rows needs for `rows` rows of a V-token vocabulary
// (per row: a few statistics and a V-entry count table for the penalties).
size_t sample_workspace_bytes(int64_t rows, int32_t V);

// For r < rows: logits row r at logits + r·ld (fp32, device), parameters params[r] (device),
// history tokens at history + params[r].history_offset (device; may be null if no row has a
// history) → results[r] (device). Enqueued on `stream`; throws Error for bad sizes (V outside
// [1, kSampleMaxVocab], ld < V, workspace too small) or a failed launch.
void sample_rows(const float* logits, int64_t ld, int64_t rows, int32_t V,
                 const SampleRowParams* params, const int32_t* history, void* workspace,
                 size_t workspace_bytes, SampleRowResult* results, cudaStream_t stream);

// Tests: y[i] = the GPU's det_logf(x[i]) and det_expf(x[i]) (device arrays).
void det_logf_n(const float* x, int64_t n, float* y, cudaStream_t stream);
void det_expf_n(const float* x, int64_t n, float* y, cudaStream_t stream);

}  // namespace detinfer::cuda
