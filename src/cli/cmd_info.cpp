// detinfer info: the model description every backend consumes, and what the tokenizer is.
// detinfer tokenize: the token ids and pieces of a text.
#include <cstdio>
#include <map>

#include "cli/cli.h"
#include "common/error.h"

namespace detinfer::cli {

namespace {

void print_info(const LoadedModel& m, bool tensors) {
  const ModelConfig& c = m.config;
  std::map<std::string, int> dtypes;
  auto count = [&](const TensorView& t) {
    if (!t.empty()) ++dtypes[dtype_name(t.dtype)];
  };
  count(m.weights.tok_embd);
  count(m.weights.out_norm);
  if (!c.tied_embeddings) count(m.weights.lm_head);
  for (const LayerWeights& l : m.weights.layers)
    for (const TensorView* t : l.all())
      count(*t);
  std::string types;
  for (auto& [k, v] : dtypes) types += cat(types.empty() ? "" : ", ", k, " x", v);

  std::printf("model          %s\n", m.path.c_str());
  std::printf("format         %s\n", m.format == "gguf" ? "GGUF" : "Hugging Face directory (safetensors)");
  std::printf("name           %s\n", c.name.c_str());
  std::printf("architecture   %s\n", arch_name(c.arch));
  std::printf("parameters     %lld (%.1f M)\n", static_cast<long long>(parameter_count(m.weights)),
              parameter_count(m.weights) / 1e6);
  std::printf("weights        %.1f MiB as stored; tensor types: %s\n", m.weight_bytes() / 1048576.0, types.c_str());
  std::printf("layers         %d\n", c.n_layers);
  std::printf("d_model        %d\n", c.d_model);
  std::printf("heads          %d query, %d key/value (head dim %d)\n", c.n_heads, c.n_kv_heads, c.head_dim);
  std::printf("ffn            %d (SwiGLU)\n", c.d_ff);
  std::printf("vocabulary     %d\n", c.vocab_size);
  std::printf("context        %d\n", c.max_context);
  std::printf("norm eps       %g\n", c.norm_eps);
  std::printf("rope           theta %g", c.rope.theta);
  if (c.rope.llama3_factor > 0)
    std::printf(", llama3 scaling (factor %g, low %g, high %g, original %d)", c.rope.llama3_factor,
                c.rope.llama3_low_freq_factor, c.rope.llama3_high_freq_factor,
                c.rope.llama3_original_max_position);
  if (!c.rope.freq_factors.empty()) std::printf(", per-frequency factors (%zu)", c.rope.freq_factors.size());
  std::printf("\n");
  std::printf("embeddings     %s\n", c.tied_embeddings ? "tied (output = input embedding)" : "untied");
  std::printf("qkv bias       %s\n", c.qkv_bias ? "yes" : "no");
  std::printf("q/k norm       %s\n", c.qk_norm ? "yes" : "no");

  Tokenizer tok(m.tokenizer);
  std::printf("tokenizer      %s, %d tokens, %zu merges\n", m.tokenizer_kind.c_str(), tok.vocab_size(),
              m.tokenizer.merges.size());
  auto name = [&](int32_t id) { return id >= 0 ? cat(id, " ", tok.token_text(id)) : std::string("none"); };
  std::printf("bos            %s%s\n", name(m.tokenizer.bos_id).c_str(),
              m.tokenizer.add_bos ? " (added to prompts)" : " (not added)");
  std::string eos;
  for (int32_t id : m.tokenizer.eos_ids) eos += (eos.empty() ? "" : ", ") + name(id);
  std::printf("eos            %s\n", eos.empty() ? "none" : eos.c_str());
  std::string specials;
  int n_special = 0;
  for (int32_t id = 0; id < tok.vocab_size(); ++id)
    if (tok.is_special(id) && n_special++ < 12) specials += (specials.empty() ? "" : " ") + tok.token_text(id);
  std::printf("special tokens %d: %s%s\n", n_special, specials.c_str(), n_special > 12 ? " ..." : "");
  std::string tmpl_kind;
  try {
    tmpl_kind = chat_format_name(tok.chat_template().format());
  } catch (const Error& e) {
    tmpl_kind = cat("not recognised (", e.what(), ")");
  }
  std::printf("chat template  %s\n", m.tokenizer.chat_template.empty() ? "none" : tmpl_kind.c_str());
  if (tensors) {
    auto row = [](const char* role, const TensorView& t) {
      if (!t.empty())
        std::printf("  %-28s %-12s %-6s %s\n", t.name.c_str(), role, dtype_name(t.dtype), t.shape_str().c_str());
    };
    std::printf("tensors:\n");
    row("tok_embd", m.weights.tok_embd);
    for (const LayerWeights& l : m.weights.layers) {
      row("attn_norm", l.attn_norm), row("wq", l.wq), row("wk", l.wk), row("wv", l.wv), row("wo", l.wo);
      row("bq", l.bq), row("bk", l.bk), row("bv", l.bv), row("q_norm", l.q_norm), row("k_norm", l.k_norm);
      row("ffn_norm", l.ffn_norm), row("w_gate", l.w_gate), row("w_up", l.w_up), row("w_down", l.w_down);
    }
    row("out_norm", m.weights.out_norm);
    if (!c.tied_embeddings) row("lm_head", m.weights.lm_head);
  }
}

}  // namespace

void add_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "print the model description: architecture, sizes, tensors, tokenizer");
  auto mo = std::make_shared<ModelOptions>();
  auto tensors = std::make_shared<bool>(false);
  auto chat_sample = std::make_shared<bool>(false);
  mo->add(cmd);
  cmd->add_flag("--tensors", *tensors, "list every tensor with its role, type and shape");
  cmd->add_flag("--template", *chat_sample, "print the chat template text");
  cmd->callback([mo, tensors, chat_sample] {
    LoadedModel m = load(*mo);
    print_info(m, *tensors);
    if (*chat_sample) std::printf("chat template text:\n%s\n", m.tokenizer.chat_template.c_str());
  });
}

void add_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "print the token ids and pieces of a text");
  auto mo = std::make_shared<ModelOptions>();
  auto text = std::make_shared<std::string>();
  auto no_special = std::make_shared<bool>(false);
  auto bos = std::make_shared<bool>(false);
  mo->add(cmd);
  cmd->add_option("text", *text, "the text")->required();
  cmd->add_flag("--no-special", *no_special, "treat special-token strings as plain text");
  cmd->add_flag("--bos", *bos, "add BOS if the model wants it");
  cmd->callback([mo, text, no_special, bos] {
    LoadedModel m = load(*mo);
    Tokenizer tok(m.tokenizer);
    std::vector<int32_t> ids = tok.encode(*text, *bos, !*no_special);
    std::printf("%zu tokens\n", ids.size());
    for (int32_t id : ids) std::printf("%6d  %s\n", id, tok.token_text(id).c_str());
    std::printf("decoded: %s\n", tok.decode(ids).c_str());
  });
}

}  // namespace detinfer::cli
