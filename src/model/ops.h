// The operations a forward pass needs, implemented once per backend (kernels/cpu, kernels/cuda).
// The model code (model/llama.cpp) calls only these, so it does not know which backend runs it.
// Pointers are backend memory (host memory on the CPU, device memory on a GPU); weights are
// passed as the loader's TensorView and each backend maps them to its own copy. No CUDA types.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "common/error.h"
#include "model/config.h"

namespace detinfer {

// One step of a ragged batch, host side. Token t belongs to sequence seq[t], sits at position
// pos[t], and that sequence's KV blocks are block_tables[seq[t]] (block b holds positions
// [b*block_size, (b+1)*block_size)). Logits are computed only for the tokens in logit_tokens.
struct StepBatch {
  std::vector<int32_t> tokens;
  std::vector<int32_t> pos;
  std::vector<int32_t> seq;
  std::vector<std::vector<int32_t>> block_tables;
  std::vector<int32_t> logit_tokens;
  int64_t n_tokens() const { return static_cast<int64_t>(tokens.size()); }
};

struct KvCacheShape {
  int n_layers = 0;
  int64_t num_blocks = 0;
  int block_size = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int value_bytes = 4;  // per cached value: 4 (fp32, CPU) or 2 (bf16, CUDA): Ops::kv_value_bytes()
  int64_t bytes() const {
    return int64_t{2} * n_layers * num_blocks * block_size * n_kv_heads * head_dim * value_bytes;
  }
};

// One logits row for Ops::sample_rows: a request's next token (want_token < 0) or a prompt
// position whose logprob is wanted (want_token >= 0: nothing is drawn). The fields mean what
// runtime/sampler.h's SamplingParams and Sampler::sample arguments mean.
struct SampleRow {
  float temperature = 0.0f, top_p = 1.0f, min_p = 0.0f;
  float repetition_penalty = 1.0f, frequency_penalty = 0.0f, presence_penalty = 0.0f;
  int32_t top_k = 0, n_logprobs = 0, want_token = -1;
  uint64_t seed = 0;
  int64_t token_index = 0;
  const int32_t* history = nullptr;  // prompt then generated tokens (host memory)
  int64_t history_len = 0, n_prompt = 0;
};
struct SampleRowResult {
  int32_t token = -1;
  float logprob = 0.0f;  // raw log-softmax of token
  std::vector<std::pair<int32_t, float>> top;  // n_logprobs best, logprob desc, ties → lower id
};

class Ops {
 public:
  virtual ~Ops() = default;
  virtual const char* name() const = 0;

  // Set once per model: RoPE tables and the KV cache.
  virtual void init(const ModelConfig& config, const KvCacheShape& kv) = 0;
  // Scratch buffer `slot` of at least n floats, valid until the next call with that slot.
  virtual float* scratch(int slot, int64_t n) = 0;
  // Makes the batch's tokens, positions and block tables available to the ops below.
  virtual void begin_step(const StepBatch& batch) = 0;

  virtual void embed(const TensorView& table, float* x) = 0;  // x[T, d_model] for the step's tokens
  virtual void matmul(const float* x, int64_t M, const TensorView& w, const TensorView* bias,
                      float* y) = 0;
  // ys[i] = x · ws[i]ᵀ (+ *biases[i] where not null) for n weights of one input (q/k/v,
  // gate/up): the bits of n matmul() calls; a backend may run them as one GEMM.
  virtual void matmul_n(const float* x, int64_t M, int n, const TensorView* const* ws,
                        const TensorView* const* biases, float* const* ys) {
    for (int i = 0; i < n; ++i) matmul(x, M, *ws[i], biases[i], ys[i]);
  }
  virtual void rmsnorm(const float* x, int64_t rows, int64_t D, const TensorView& w, float eps,
                       float* y) = 0;
  virtual void rope(float* x, int n_heads) = 0;  // x[T, n_heads, head_dim] at the step's positions
  // Writes k, v of the step into layer's cache, then attends q against it (causal, paged).
  virtual void attention(int layer, const float* q, const float* k, const float* v,
                         float* out) = 0;
  virtual void swiglu(const float* gate, const float* up, int64_t n, float* out) = 0;
  // out[M, F] = swiglu(x · w_gateᵀ, x · w_upᵀ) (both [F, K], no bias), with gate and up as
  // scratch of M·F floats each (out may be gate): the bits of matmul_n() then swiglu(); a backend
  // may compute SwiGLU in the GEMM's epilogue.
  virtual void matmul_swiglu(const float* x, int64_t M, const TensorView& w_gate,
                             const TensorView& w_up, float* gate, float* up, float* out) {
    const TensorView* ws[2] = {&w_gate, &w_up};
    const TensorView* bs[2] = {nullptr, nullptr};
    float* ys[2] = {gate, up};
    matmul_n(x, M, 2, ws, bs, ys);
    swiglu(gate, up, M * w_gate.rows(), out);
  }
  virtual void add(float* y, const float* x, int64_t n) = 0;
  // x += r, then y = rmsnorm(x) (rows of D): the bits of add() then rmsnorm(); a backend may fuse
  // them into one pass.
  virtual void add_rmsnorm(float* x, const float* r, int64_t rows, int64_t D, const TensorView& w,
                           float eps, float* y) {
    add(x, r, rows * D);
    rmsnorm(x, rows, D, w, eps, y);
  }
  // out[i] = x[logit_tokens[i]] for rows of D floats.
  virtual void gather_logit_rows(const float* x, int64_t D, float* out) = 0;
  // Copies n floats to host memory (a no-op copy on the CPU).
  virtual void to_host(const float* src, int64_t n, float* dst) = 0;

  // Host memory for what the caller copies back (logits): n floats, valid until the next call.
  // A backend whose copies are faster into special memory (pinned, on CUDA) overrides it.
  virtual float* host_buffer(int64_t n) {
    if (static_cast<int64_t>(host_.size()) < n) host_.resize(static_cast<size_t>(n));
    return host_.data();
  }

  // Step replay (CUDA graphs). Called right after begin_step(): true when the backend has
  // already issued the whole forward pass of this step (a recording of an earlier step of the
  // same shape, over the same buffers), so the caller goes straight to reading the outputs.
  // Otherwise the caller issues the ops as usual and calls end_forward() after the last one
  // (before to_host). The same bits either way (promise I7).
  virtual bool replay_forward() { return false; }
  virtual void end_forward() {}

  // Bytes per value of this backend's KV cache (the engine sizes the cache with it).
  virtual int kv_value_bytes() const { return 4; }

  // Sampling where the logits are. A backend that returns true from samples_on_device() gets
  // logits_host == nullptr from llama_forward (the logits stay in its memory) and sample_rows()
  // with them: out[r] for rows[r], bitwise what Sampler::sample (or cpu::log_softmax, for a
  // want_token row) gives on the CPU for the same logits; throws Error where it would.
  virtual bool samples_on_device() const { return false; }
  virtual void sample_rows(const float* /*logits*/, int64_t /*n_rows*/, int32_t /*vocab*/,
                           const SampleRow* /*rows*/, SampleRowResult* /*out*/) {
    fail("the ", name(), " backend does not sample on the device");
  }

 private:
  std::vector<float> host_;
};

}  // namespace detinfer
