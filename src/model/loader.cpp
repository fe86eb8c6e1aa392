#include "model/loader.h"

#include <cmath>
#include <cstring>
#include <filesystem>

#include "common/error.h"
#include "common/paths.h"
#include "formats/gguf.h"
#include "formats/hf_dir.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/hf_json.h"

namespace detinfer {

LoadedModel::LoadedModel() = default;
LoadedModel::~LoadedModel() = default;
LoadedModel::LoadedModel(LoadedModel&&) noexcept = default;
LoadedModel& LoadedModel::operator=(LoadedModel&&) noexcept = default;

int64_t LoadedModel::weight_bytes() const {
  int64_t n = weights.tok_embd.nbytes + weights.out_norm.nbytes;
  if (weights.lm_head.data != weights.tok_embd.data) n += weights.lm_head.nbytes;
  for (const LayerWeights& l : weights.layers)
    for (const TensorView* t : l.all())
      n += t->nbytes;
  return n;
}

namespace {

Arch parse_arch(const std::string& name, const std::string& source) {
  if (name == "llama") return Arch::Llama;
  if (name == "qwen2") return Arch::Qwen2;
  if (name == "qwen3") return Arch::Qwen3;
  fail(source, ": unsupported architecture '", name, "' (supported: llama, qwen2, qwen3)");
}

void set_family_flags(ModelConfig& c) {
  c.qkv_bias = c.arch == Arch::Qwen2;
  c.qk_norm = c.arch == Arch::Qwen3;
}

int to_int(int64_t v, const char* what, const std::string& source) {
  DETINFER_CHECK(v > 0 && v <= (int64_t{1} << 30), source, ": ", what, " = ", v, " is out of range");
  return static_cast<int>(v);
}

// Undoes the GGUF converter's Q/K row interleaving for Llama: its row h*hd + 2j + s holds the
// Hugging Face row h*hd + s*hd/2 + j. Quantized blocks run along a row, so whole rows move.
TensorView unpermute_rows(const TensorView& t, int n_heads, std::vector<uint8_t>& storage,
                          const std::string& source) {
  const int64_t rows = t.rows();
  DETINFER_CHECK(n_heads > 0 && rows % n_heads == 0 && (rows / n_heads) % 2 == 0, source,
                 ": tensor ", t.name, " has ", rows, " rows, not a multiple of 2 x ", n_heads, " heads");
  const int64_t hd = rows / n_heads, half = hd / 2;
  const int64_t row_bytes = dtype_row_bytes(t.dtype, t.cols());
  storage.resize(static_cast<size_t>(t.nbytes));
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t j = 0; j < half; ++j)
      for (int64_t s = 0; s < 2; ++s) {
        const int64_t from = h * hd + 2 * j + s, to = h * hd + s * half + j;
        std::memcpy(storage.data() + to * row_bytes, t.data + from * row_bytes, row_bytes);
      }
  TensorView out = t;
  out.data = storage.data();
  return out;
}

// The tensors of a decoder layer: the field, its name in GGUF (after "blk.N.") and in a Hugging
// Face checkpoint (after "model.layers.N."), and when the family has it.
enum class Need { Always, QkvBias, QkNorm };
struct LayerRole {
  TensorView LayerWeights::*field;
  const char* gguf;
  const char* hf;
  Need need;
};
constexpr LayerRole kLayerRoles[] = {
    {&LayerWeights::attn_norm, "attn_norm.weight", "input_layernorm.weight", Need::Always},
    {&LayerWeights::wq, "attn_q.weight", "self_attn.q_proj.weight", Need::Always},
    {&LayerWeights::wk, "attn_k.weight", "self_attn.k_proj.weight", Need::Always},
    {&LayerWeights::wv, "attn_v.weight", "self_attn.v_proj.weight", Need::Always},
    {&LayerWeights::wo, "attn_output.weight", "self_attn.o_proj.weight", Need::Always},
    {&LayerWeights::ffn_norm, "ffn_norm.weight", "post_attention_layernorm.weight", Need::Always},
    {&LayerWeights::w_gate, "ffn_gate.weight", "mlp.gate_proj.weight", Need::Always},
    {&LayerWeights::w_up, "ffn_up.weight", "mlp.up_proj.weight", Need::Always},
    {&LayerWeights::w_down, "ffn_down.weight", "mlp.down_proj.weight", Need::Always},
    {&LayerWeights::bq, "attn_q.bias", "self_attn.q_proj.bias", Need::QkvBias},
    {&LayerWeights::bk, "attn_k.bias", "self_attn.k_proj.bias", Need::QkvBias},
    {&LayerWeights::bv, "attn_v.bias", "self_attn.v_proj.bias", Need::QkvBias},
    {&LayerWeights::q_norm, "attn_q_norm.weight", "self_attn.q_norm.weight", Need::QkNorm},
    {&LayerWeights::k_norm, "attn_k_norm.weight", "self_attn.k_norm.weight", Need::QkNorm},
};

// Fills layer l's weights: get(full name) returns the tensor or throws naming it.
template <typename Get>
void load_layer(const ModelConfig& c, LayerWeights& l, const std::string& prefix, bool gguf, Get&& get) {
  for (const LayerRole& r : kLayerRoles) {
    if ((r.need == Need::QkvBias && !c.qkv_bias) || (r.need == Need::QkNorm && !c.qk_norm)) continue;
    l.*r.field = get(prefix + (gguf ? r.gguf : r.hf));
  }
}

void load_gguf(LoadedModel& m, const std::string& path) {
  m.gguf = std::make_unique<gguf::File>(path);
  const gguf::File& f = *m.gguf;
  const std::string& src = f.source();
  ModelConfig& c = m.config;
  const std::string arch = f.get_string("general.architecture");
  c.arch = parse_arch(arch, src);
  set_family_flags(c);
  c.name = f.opt_string("general.name").value_or(std::filesystem::path(path).stem().string());
  auto key = [&](const char* k) { return arch + "." + k; };
  c.n_layers = to_int(f.get_i64(key("block_count")), "block_count", src);
  c.d_model = to_int(f.get_i64(key("embedding_length")), "embedding_length", src);
  c.d_ff = to_int(f.get_i64(key("feed_forward_length")), "feed_forward_length", src);
  c.n_heads = to_int(f.get_i64(key("attention.head_count")), "head_count", src);
  c.n_kv_heads = to_int(f.opt_i64(key("attention.head_count_kv")).value_or(c.n_heads), "head_count_kv", src);
  c.head_dim = to_int(f.opt_i64(key("attention.key_length")).value_or(c.d_model / c.n_heads), "key_length", src);
  c.max_context = to_int(f.opt_i64(key("context_length")).value_or(2048), "context_length", src);
  c.norm_eps = static_cast<float>(f.opt_f64(key("attention.layer_norm_rms_epsilon")).value_or(1e-5));
  c.rope.theta = static_cast<float>(f.opt_f64(key("rope.freq_base")).value_or(10000.0));
  c.rope.rotary_dim = static_cast<int>(f.opt_i64(key("rope.dimension_count")).value_or(c.head_dim));
  DETINFER_CHECK(c.rope.rotary_dim == c.head_dim, src, ": partial rotary embedding (",
                 c.rope.rotary_dim, " of ", c.head_dim, " dims) is not supported");
  if (auto type = f.opt_string(key("rope.scaling.type")); type && *type != "none")
    fail(src, ": RoPE scaling type '", *type, "' is not supported");

  auto get = [&](const std::string& name, bool required = true) -> TensorView {
    const TensorView* t = f.find_tensor(name);
    if (!t) {
      if (required) fail(src, ": missing tensor ", name);
      return {};
    }
    return *t;
  };
  ModelWeights& w = m.weights;
  w.tok_embd = get("token_embd.weight");
  c.vocab_size = to_int(w.tok_embd.rows(), "vocabulary size", src);
  w.out_norm = get("output_norm.weight");
  w.lm_head = get("output.weight", false);
  c.tied_embeddings = w.lm_head.empty();
  if (c.tied_embeddings) w.lm_head = w.tok_embd;
  if (const TensorView* rf = f.find_tensor("rope_freqs.weight")) {
    DETINFER_CHECK(rf->numel() == c.head_dim / 2, src, ": rope_freqs.weight has ", rf->numel(),
                   " entries, expected ", c.head_dim / 2);
    c.rope.freq_factors = to_f32(*rf);
  }
  m.owned.reserve(2 * c.n_layers);
  w.layers.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[i];
    load_layer(c, l, p, true, get);
    if (c.arch == Arch::Llama) {
      m.owned.emplace_back();
      l.wq = unpermute_rows(l.wq, c.n_heads, m.owned.back(), src);
      m.owned.emplace_back();
      l.wk = unpermute_rows(l.wk, c.n_kv_heads, m.owned.back(), src);
    }
  }
  m.tokenizer = spec_from_gguf(f);
  m.tokenizer_kind = "byte-level BPE (gguf, pre-tokenizer '" +
                     f.opt_string("tokenizer.ggml.pre").value_or("default") + "')";
}

template <typename T>
T json_get(const nlohmann::json& j, const char* k, T fallback) {
  auto it = j.find(k);
  if (it == j.end() || it->is_null()) return fallback;
  return it->get<T>();
}

void load_hf(LoadedModel& m, const std::string& dir) {
  m.hf = std::make_unique<HfDirectory>(dir);
  const HfDirectory& d = *m.hf;
  const std::string src = dir + "/config.json";
  const nlohmann::json& j = d.config();
  ModelConfig& c = m.config;
  try {
    c.arch = parse_arch(json_get<std::string>(j, "model_type", ""), src);
    set_family_flags(c);
    c.name = std::filesystem::path(dir).filename().string();
    c.n_layers = to_int(j.at("num_hidden_layers").get<int64_t>(), "num_hidden_layers", src);
    c.d_model = to_int(j.at("hidden_size").get<int64_t>(), "hidden_size", src);
    c.d_ff = to_int(j.at("intermediate_size").get<int64_t>(), "intermediate_size", src);
    c.n_heads = to_int(j.at("num_attention_heads").get<int64_t>(), "num_attention_heads", src);
    c.n_kv_heads = to_int(json_get<int64_t>(j, "num_key_value_heads", c.n_heads), "num_key_value_heads", src);
    c.head_dim = to_int(json_get<int64_t>(j, "head_dim", c.d_model / c.n_heads), "head_dim", src);
    c.vocab_size = to_int(j.at("vocab_size").get<int64_t>(), "vocab_size", src);
    c.max_context = to_int(json_get<int64_t>(j, "max_position_embeddings", 2048), "max_position_embeddings", src);
    c.norm_eps = json_get<float>(j, "rms_norm_eps", 1e-6f);
    c.tied_embeddings = json_get<bool>(j, "tie_word_embeddings", false);
    if (c.arch == Arch::Llama && json_get<bool>(j, "attention_bias", false))
      fail(src, ": attention_bias = true is not supported for llama");
    // transformers ≥ 5 writes rope_parameters; earlier versions rope_theta and rope_scaling.
    nlohmann::json rope = j.contains("rope_parameters") && j["rope_parameters"].is_object()
                              ? j["rope_parameters"]
                              : (j.contains("rope_scaling") && j["rope_scaling"].is_object()
                                     ? j["rope_scaling"] : nlohmann::json::object());
    c.rope.theta = json_get<float>(rope, "rope_theta", json_get<float>(j, "rope_theta", 10000.0f));
    c.rope.rotary_dim = c.head_dim;
    std::string type = json_get<std::string>(rope, "rope_type", json_get<std::string>(rope, "type", "default"));
    if (type == "llama3") {
      c.rope.llama3_factor = rope.at("factor").get<float>();
      c.rope.llama3_low_freq_factor = rope.at("low_freq_factor").get<float>();
      c.rope.llama3_high_freq_factor = rope.at("high_freq_factor").get<float>();
      c.rope.llama3_original_max_position = rope.at("original_max_position_embeddings").get<int>();
    } else if (type != "default") {
      fail(src, ": rope scaling type '", type, "' is not supported (supported: default, llama3)");
    }
  } catch (const nlohmann::json::exception& e) {
    fail(src, ": ", e.what());
  }

  auto get = [&](const std::string& name) -> TensorView { return d.tensor(name); };
  ModelWeights& w = m.weights;
  w.tok_embd = get("model.embed_tokens.weight");
  w.out_norm = get("model.norm.weight");
  const TensorView* head = d.find_tensor("lm_head.weight");
  DETINFER_CHECK(head || c.tied_embeddings, dir,
                 ": lm_head.weight is missing and tie_word_embeddings is false");
  w.lm_head = (head && !c.tied_embeddings) ? *head : w.tok_embd;
  w.layers.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    load_layer(c, w.layers[i], p, false, get);
  }
  DETINFER_CHECK(!d.tokenizer_json_path().empty(), dir, ": no tokenizer.json in the directory");
  m.tokenizer = spec_from_hf_files(d.tokenizer_json_path(), d.tokenizer_config_path());
  m.tokenizer_kind = "byte-level BPE (tokenizer.json)";
}

}  // namespace

LoadedModel load_model(const std::string& path, const std::function<void(int64_t, int64_t)>& progress) {
  LoadedModel m;
  m.path = path;
  if (std::filesystem::is_directory(path)) {
    m.format = "hf";
    load_hf(m, path);
  } else {
    m.format = "gguf";
    load_gguf(m, path);
  }
  validate_weights(m.config, m.weights, path);
  check_fits_in_memory(m.weight_bytes(), cat("the model's weights (", path, ")"),
                       "use a smaller or more quantized model");
  DETINFER_CHECK(m.tokenizer.tokens.size() <= static_cast<size_t>(m.config.vocab_size) + 1024, path,
                 ": the tokenizer has ", m.tokenizer.tokens.size(), " tokens but the model's vocabulary is ",
                 m.config.vocab_size);
  if (progress) {
    // Touch one byte per page of every weight, so the first forward step does not stall on disk.
    const int64_t total = m.weight_bytes();
    int64_t done = 0;
    volatile uint8_t sink = 0;
    auto touch = [&](const TensorView& t) {
      for (int64_t i = 0; i < t.nbytes; i += 4096) sink = sink + t.data[i];
      done += t.nbytes;
      progress(done, total);
    };
    touch(m.weights.tok_embd);
    for (const LayerWeights& l : m.weights.layers)
      for (const TensorView* t : l.all())
        if (!t->empty()) touch(*t);
    if (m.weights.lm_head.data != m.weights.tok_embd.data) touch(m.weights.lm_head);
    touch(m.weights.out_norm);
  }
  return m;
}

}  // namespace detinfer
