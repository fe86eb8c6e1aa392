#include "model/llama.h"

#include "common/error.h"

namespace detinfer {

namespace {
enum Slot { kX, kH, kQ, kK, kV, kAttn, kGate, kUp, kRows, kLogits };
}

const float* llama_forward(Ops& ops, const ModelConfig& c, const ModelWeights& w,
                           const StepBatch& batch, float* logits_host) {
  const int64_t T = batch.n_tokens();
  if (T == 0) return nullptr;
  const int64_t D = c.d_model, Q = c.q_dim(), KV = c.kv_dim(), F = c.d_ff;
  const int64_t L = static_cast<int64_t>(batch.logit_tokens.size());

  // Every buffer is fixed before the step begins, so a backend may replay a recorded step.
  float* x = ops.scratch(kX, T * D);        // residual stream
  float* h = ops.scratch(kH, T * D);        // normed input of a sub-layer, then its output
  float* q = ops.scratch(kQ, T * Q);
  float* k = ops.scratch(kK, T * KV);
  float* v = ops.scratch(kV, T * KV);
  float* attn = ops.scratch(kAttn, T * Q);
  float* gate = ops.scratch(kGate, T * F);
  float* up = ops.scratch(kUp, T * F);
  float* rows = L > 0 ? ops.scratch(kRows, L * D) : nullptr;
  float* logits = L > 0 ? ops.scratch(kLogits, L * c.vocab_size) : nullptr;

  ops.begin_step(batch);
  if (!ops.replay_forward()) {
    ops.embed(w.tok_embd, x);
    for (int i = 0; i < c.n_layers; ++i) {
      const LayerWeights& l = w.layers[i];
      // The previous layer's MLP output joins the residual stream in the same pass as this norm.
      if (i == 0) ops.rmsnorm(x, T, D, l.attn_norm, c.norm_eps, h);
      else ops.add_rmsnorm(x, h, T, D, l.attn_norm, c.norm_eps, h);
      {
        const TensorView* ws[3] = {&l.wq, &l.wk, &l.wv};
        const TensorView* bs[3] = {c.qkv_bias ? &l.bq : nullptr, c.qkv_bias ? &l.bk : nullptr,
                                   c.qkv_bias ? &l.bv : nullptr};
        float* ys[3] = {q, k, v};
        ops.matmul_n(h, T, 3, ws, bs, ys);
      }
      if (c.qk_norm) {  // Qwen3: RMSNorm over each head's vector before RoPE
        ops.rmsnorm(q, T * c.n_heads, c.head_dim, l.q_norm, c.norm_eps, q);
        ops.rmsnorm(k, T * c.n_kv_heads, c.head_dim, l.k_norm, c.norm_eps, k);
      }
      ops.rope(q, c.n_heads);
      ops.rope(k, c.n_kv_heads);
      ops.attention(i, q, k, v, attn);
      ops.matmul(attn, T, l.wo, nullptr, h);
      ops.add_rmsnorm(x, h, T, D, l.ffn_norm, c.norm_eps, h);
      ops.matmul_swiglu(h, T, l.w_gate, l.w_up, gate, up, gate);
      ops.matmul(gate, T, l.w_down, nullptr, h);
    }
    if (c.n_layers > 0) ops.add(x, h, T * D);
    if (L > 0) {
      // Only the rows whose logits are wanted go through the final norm and the vocabulary matmul.
      ops.gather_logit_rows(x, D, rows);
      ops.rmsnorm(rows, L, D, w.out_norm, c.norm_eps, rows);
      ops.matmul(rows, L, w.lm_head, nullptr, logits);
    }
    ops.end_forward();
  }
  if (L > 0 && logits_host) ops.to_host(logits, L * c.vocab_size, logits_host);
  return logits;
}

}  // namespace detinfer
