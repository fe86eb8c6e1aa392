#include "tokenizer/gguf_vocab.h"

#include <algorithm>

#include "common/error.h"
#include "formats/gguf.h"

namespace detinfer {

TokenizerSpec spec_from_gguf(const gguf::File& f) {
  TokenizerSpec s;
  s.source = f.source();
  const std::string model = f.opt_string("tokenizer.ggml.model").value_or("");
  if (model != "gpt2")
    fail(f.source(), ": tokenizer model '", model,
         "' is not supported (detinfer implements byte-level BPE, tokenizer.ggml.model = gpt2)");
  const std::string pre = f.opt_string("tokenizer.ggml.pre").value_or("default");
  s.pre = pre_tokenizer_from_gguf(pre);
  s.ignore_merges = gguf_pre_ignores_merges(pre);
  s.tokens = f.get_string_array("tokenizer.ggml.tokens");
  if (auto types = f.opt_i64_array("tokenizer.ggml.token_type")) {
    DETINFER_CHECK(types->size() == s.tokens.size(), f.source(), ": tokenizer.ggml.token_type has ",
                   types->size(), " entries for ", s.tokens.size(), " tokens");
    s.token_types.assign(types->begin(), types->end());
  }
  s.merges = f.opt_string_array("tokenizer.ggml.merges").value_or(std::vector<std::string>{});
  const int64_t n = static_cast<int64_t>(s.tokens.size());
  auto token_id = [&](const char* key) -> int32_t {
    auto v = f.opt_i64(key);
    if (!v) return -1;
    DETINFER_CHECK(*v >= 0 && *v < n, f.source(), ": ", key, " = ", *v, " is not a token id (0..", n - 1, ")");
    return static_cast<int32_t>(*v);
  };
  s.bos_id = token_id("tokenizer.ggml.bos_token_id");
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"})
    if (int32_t id = token_id(key); id >= 0 && std::find(s.eos_ids.begin(), s.eos_ids.end(), id) == s.eos_ids.end())
      s.eos_ids.push_back(id);
  // When the key is absent llama.cpp adds BOS for Llama 3 (llama-bpe) and not for the others.
  s.add_bos = f.opt_bool("tokenizer.ggml.add_bos_token").value_or(pre == "llama-bpe") && s.bos_id >= 0;
  s.chat_template = f.opt_string("tokenizer.chat_template").value_or("");
  return s;
}

}  // namespace detinfer
