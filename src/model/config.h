// The typed model description every backend consumes. Loaders (GGUF, Hugging Face directory)
// fill it; nothing downstream reads file-format metadata.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "model/tensor.h"

namespace detinfer {

enum class Arch : uint8_t {
  Llama,  // Llama 2/3.x, SmolLM2: no biases, no q/k norm
  Qwen2,  // Qwen2 / Qwen2.5: bias on q, k, v
  Qwen3,  // Qwen3: per-head RMSNorm on q and k, no bias
};
const char* arch_name(Arch a);

struct RopeConfig {
  float theta = 10000.0f;
  int rotary_dim = 0;  // == head_dim for the supported families
  // Llama-3.x frequency scaling ("rope_scaling": {"rope_type": "llama3", ...}); factor 0 = off.
  float llama3_factor = 0.0f;
  float llama3_low_freq_factor = 1.0f;
  float llama3_high_freq_factor = 4.0f;
  int llama3_original_max_position = 8192;
  // Per-frequency divisors, as GGUF files store Llama-3 scaling (tensor rope_freqs.weight):
  // inv_freq[i] /= freq_factors[i]. Empty = none.
  std::vector<float> freq_factors;
};

struct ModelConfig {
  Arch arch = Arch::Llama;
  std::string name;
  int n_layers = 0;
  int d_model = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int d_ff = 0;
  int vocab_size = 0;
  int max_context = 0;
  float norm_eps = 1e-5f;
  RopeConfig rope;
  bool tied_embeddings = false;
  bool qkv_bias = false;  // Qwen2
  bool qk_norm = false;   // Qwen3

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
};

// Weights by role. Shapes (row-major, [out, in] for Linear):
//   tok_embd [vocab, d_model]; lm_head [vocab, d_model] (== tok_embd when tied)
//   wq [q_dim, d_model]; wk, wv [kv_dim, d_model]; wo [d_model, q_dim]
//   bq [q_dim]; bk, bv [kv_dim] (Qwen2); q_norm, k_norm [head_dim] (Qwen3)
//   w_gate, w_up [d_ff, d_model]; w_down [d_model, d_ff]
// Q and K rows follow the Hugging Face convention (rotate-half RoPE pairs i and i + head_dim/2);
// the GGUF loader undoes the converter's interleaving permutation.
struct LayerWeights {
  TensorView attn_norm, wq, wk, wv, wo, bq, bk, bv, q_norm, k_norm;
  TensorView ffn_norm, w_gate, w_up, w_down;

  // Every field, for code that walks all of a layer's tensors (absent ones are empty views).
  std::array<const TensorView*, 14> all() const {
    return {&attn_norm, &wq, &wk, &wv, &wo, &bq, &bk, &bv, &q_norm, &k_norm, &ffn_norm, &w_gate, &w_up, &w_down};
  }
};

struct ModelWeights {
  TensorView tok_embd, out_norm, lm_head;
  std::vector<LayerWeights> layers;
};

// Checks every tensor's presence and shape against the config; throws Error naming the first
// missing or mis-shaped tensor (and the file).
void validate_weights(const ModelConfig& c, const ModelWeights& w, const std::string& source);

int64_t parameter_count(const ModelWeights& w);

}  // namespace detinfer
