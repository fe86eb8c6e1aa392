// TokenizerSpec from files: HF tokenizer.json + tokenizer_config.json, and the JSON dump of GGUF
// tokenizer fields the golden script writes (the same fields GGUF glue reads).
#pragma once
#include <string>

#include "tokenizer/tokenizer.h"

namespace detinfer {

// Reads a byte-level BPE tokenizer.json (model.vocab, model.merges in "a b" or [a, b] form,
// model.ignore_merges, model.unk_token, added_tokens, the pre-tokenizer, the post-processor's BOS)
// and, if tokenizer_config_json_path is not empty, tokenizer_config.json (chat_template,
// bos_token / eos_token as a string or {content: ...}, add_bos_token). Error naming the file for
// missing/bad JSON, a non-BPE model or a pre-tokenizer we do not implement (named in the message).
// A normalizer other than none/NFC is refused; NFC is accepted but not applied (as llama.cpp).
TokenizerSpec spec_from_hf_files(const std::string& tokenizer_json_path,
                                 const std::string& tokenizer_config_json_path);

// Reads {"pre", "tokens", "token_type", "merges", "bos_id", "eos_ids", "add_bos",
// "chat_template"} (GGUF tokenizer.ggml.* names and meaning; `pre` as llama.cpp names it) and
// builds the spec exactly as GGUF glue should.
TokenizerSpec spec_from_gguf_dump_json(const std::string& path);

}  // namespace detinfer
