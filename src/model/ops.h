// The operations a forward pass needs, implemented once per backend (kernels/cpu, kernels/cuda).
// The model code (model/llama.cpp) calls only these, so it does not know which backend runs it.
// Pointers are backend memory (host memory on the CPU, device memory on a GPU); weights are
// passed as the loader's TensorView and each backend maps them to its own copy. No CUDA types.
#pragma once
#include <cstdint>
#include <vector>

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
  int64_t bytes() const {
    return int64_t{2} * n_layers * num_blocks * block_size * n_kv_heads * head_dim * 4;
  }
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
  virtual void rmsnorm(const float* x, int64_t rows, int64_t D, const TensorView& w, float eps,
                       float* y) = 0;
  virtual void rope(float* x, int n_heads) = 0;  // x[T, n_heads, head_dim] at the step's positions
  // Writes k, v of the step into layer's cache, then attends q against it (causal, paged).
  virtual void attention(int layer, const float* q, const float* k, const float* v,
                         float* out) = 0;
  virtual void swiglu(const float* gate, const float* up, int64_t n, float* out) = 0;
  virtual void add(float* y, const float* x, int64_t n) = 0;
  // out[i] = x[logit_tokens[i]] for rows of D floats.
  virtual void gather_logit_rows(const float* x, int64_t D, float* out) = 0;
  // Copies n floats to host memory (a no-op copy on the CPU).
  virtual void to_host(const float* src, int64_t n, float* dst) = 0;
};

}  // namespace detinfer
