#include "model/config.h"

#include "common/error.h"

namespace detinfer {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "llama";
    case Arch::Qwen2: return "qwen2";
    case Arch::Qwen3: return "qwen3";
  }
  return "?";
}

namespace {

void expect(const TensorView& t, std::vector<int64_t> shape, const std::string& role,
            const std::string& source) {
  if (t.empty()) fail(source, ": missing tensor for ", role);
  if (t.shape != shape) {
    TensorView want;
    want.shape = shape;
    fail(source, ": tensor ", t.name, " (", role, ") has shape ", t.shape_str(), ", expected ",
         want.shape_str());
  }
}

void expect_absent(const TensorView& t, const std::string& role, const std::string& source) {
  if (!t.empty()) fail(source, ": unexpected tensor ", t.name, " (", role, ") for this architecture");
}

}  // namespace

void validate_weights(const ModelConfig& c, const ModelWeights& w, const std::string& source) {
  DETINFER_CHECK(c.n_layers > 0 && c.d_model > 0 && c.n_heads > 0 && c.n_kv_heads > 0 &&
                     c.head_dim > 0 && c.d_ff > 0 && c.vocab_size > 0,
                 source, ": model dimensions must be positive (layers ", c.n_layers, ", d_model ",
                 c.d_model, ", heads ", c.n_heads, ", kv heads ", c.n_kv_heads, ", head_dim ",
                 c.head_dim, ", d_ff ", c.d_ff, ", vocab ", c.vocab_size, ")");
  DETINFER_CHECK(c.n_heads % c.n_kv_heads == 0, source, ": ", c.n_heads,
                 " attention heads is not a multiple of ", c.n_kv_heads, " KV heads");
  DETINFER_CHECK(c.head_dim % 2 == 0, source, ": head_dim ", c.head_dim, " must be even for RoPE");
  DETINFER_CHECK(static_cast<int>(w.layers.size()) == c.n_layers, source, ": ", w.layers.size(),
                 " layers of weights, config says ", c.n_layers);
  const int64_t D = c.d_model, V = c.vocab_size, F = c.d_ff, Q = c.q_dim(), KV = c.kv_dim();
  expect(w.tok_embd, {V, D}, "token embedding", source);
  expect(w.out_norm, {D}, "final norm", source);
  expect(w.lm_head, {V, D}, "output projection", source);
  for (int i = 0; i < c.n_layers; ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string p = cat("layer ", i, " ");
    expect(l.attn_norm, {D}, p + "attention norm", source);
    expect(l.wq, {Q, D}, p + "q projection", source);
    expect(l.wk, {KV, D}, p + "k projection", source);
    expect(l.wv, {KV, D}, p + "v projection", source);
    expect(l.wo, {D, Q}, p + "output projection", source);
    expect(l.ffn_norm, {D}, p + "ffn norm", source);
    expect(l.w_gate, {F, D}, p + "ffn gate", source);
    expect(l.w_up, {F, D}, p + "ffn up", source);
    expect(l.w_down, {D, F}, p + "ffn down", source);
    if (c.qkv_bias) {
      expect(l.bq, {Q}, p + "q bias", source);
      expect(l.bk, {KV}, p + "k bias", source);
      expect(l.bv, {KV}, p + "v bias", source);
    } else {
      expect_absent(l.bq, p + "q bias", source);
    }
    if (c.qk_norm) {
      expect(l.q_norm, {c.head_dim}, p + "q norm", source);
      expect(l.k_norm, {c.head_dim}, p + "k norm", source);
    }
  }
}

int64_t parameter_count(const ModelWeights& w) {
  int64_t n = w.tok_embd.numel() + w.out_norm.numel();
  if (w.lm_head.data != w.tok_embd.data) n += w.lm_head.numel();
  for (const LayerWeights& l : w.layers)
    for (const TensorView* t : l.all())
      if (!t->empty()) n += t->numel();
  return n;
}

}  // namespace detinfer
