// Byte-level BPE tokenizer (GPT-2 family: Llama 3, Qwen2, SmolLM, ...), built from a plain
// description (TokenizerSpec) so it depends on no file format: HF tokenizer.json (hf_json.h) and
// GGUF tokenizer.ggml.* both map onto the spec.
//
// encode = split out added/special tokens -> pre-tokenize (hand-written scanners for the models'
// split regexes) -> byte-level BPE by merge rank. Output ids equal HF `tokenizers` for the same
// files (tests/tokenizer compare with committed goldens).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/chat_template.h"

namespace detinfer {

// The pre-tokenizer split rule (the models' regexes, implemented as scanners).
enum class PreTokenizer {
  Gpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  Llama3,  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  Qwen2,   // as Llama3 with \p{N} (one digit per piece)
  SmolLM,  // every \p{N} character its own piece, then Gpt2 on the text between
};
const char* pre_tokenizer_name(PreTokenizer p);
// Maps llama.cpp's `tokenizer.ggml.pre` names ("llama-bpe", "qwen2", "smollm", "gpt-2", ...) to a
// PreTokenizer; Error naming the value for one we do not implement.
PreTokenizer pre_tokenizer_from_gguf(std::string_view pre);
// Whether llama.cpp tokenizes with ignore_merges for this GGUF `pre` (it does for Llama 3 only).
bool gguf_pre_ignores_merges(std::string_view pre);

// GGUF token types (tokenizer.ggml.token_type).
enum TokenType : int32_t {
  kTokenNormal = 1,
  kTokenUnknown = 2,
  kTokenControl = 3,      // special: matched in text only when parse_special, skipped by skip_special
  kTokenUserDefined = 4,  // added token: always matched in text, never skipped
  kTokenUnused = 5,
  kTokenByte = 6,
};

// A token matched in the text before pre-tokenization, never split.
struct SpecialToken {
  std::string content;  // raw text (not byte-level encoded)
  int32_t id = -1;
  bool special = true;  // true: a control token (see kTokenControl); false: user-defined
};

struct TokenizerSpec {
  PreTokenizer pre = PreTokenizer::Gpt2;
  // Vocabulary, id = index. Normal tokens are byte-level encoded (GPT-2 bytes_to_unicode: 'Ġ' is
  // a space); added/control tokens hold their raw content. Empty strings are allowed (holes).
  std::vector<std::string> tokens;
  // Optional (empty, or one per token). Ids typed kTokenControl / kTokenUserDefined that are not in
  // `added` are added automatically (content = tokens[id]), so GGUF glue need not fill `added`.
  std::vector<int32_t> token_types;
  std::vector<std::string> merges;  // "a b" (byte-level strings), rank = index
  std::vector<SpecialToken> added;
  bool ignore_merges = false;  // a pre-token that is itself in the vocabulary is that one token
  bool add_bos = false;        // encode(text, add_bos=true) prepends bos_id only if this is set
  int32_t bos_id = -1;
  std::vector<int32_t> eos_ids;
  // Emitted for a byte with no token (HF's unk_token). -1: the byte is dropped, as HF does without
  // an unk_token and llama.cpp does always; GGUF glue should leave it -1.
  int32_t unk_id = -1;
  std::string chat_template;  // the model's Jinja template text, may be empty
  std::string chat_format;    // "" = detect from chat_template; "chatml" | "llama3" = explicit
  std::string source;         // where the spec came from, for error messages
};

class Tokenizer {
 public:
  // Throws Error (naming spec.source) for an inconsistent spec: a merge whose parts or result is not
  // in the vocabulary, an id out of range, more than 2^31 tokens.
  explicit Tokenizer(TokenizerSpec spec);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Never fails: invalid UTF-8 bytes are characters of their own (no letter/number class) and
  // decode(encode(s)) == s whenever every byte has a token. add_bos prepends BOS only when the
  // spec says the model wants one. parse_special=false: control tokens in the text are plain text
  // (user-defined added tokens still match, as in HF).
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special = true) const;
  // The exact bytes of the tokens (may be invalid UTF-8 if the ids split a character; see
  // StreamDecoder for valid text). Error for an id out of range.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  std::string token_text(int32_t id) const;  // raw bytes of one token; Error if out of range
  int32_t token_id(std::string_view raw) const;  // exact raw bytes -> id, -1 if none
  int32_t vocab_size() const;
  int32_t bos_id() const;
  bool add_bos() const;
  const std::vector<int32_t>& eos_ids() const;
  bool is_eos(int32_t id) const;
  bool is_special(int32_t id) const;  // a control token
  PreTokenizer pre_tokenizer() const;
  const TokenizerSpec& spec() const;

  // The chat template from the spec (detected or explicit); Error if the spec has none or it is
  // not one we recognise (the message says how to choose one explicitly).
  const ChatTemplate& chat_template() const;
  void set_chat_template(ChatTemplate t);
  std::string render_chat(const std::vector<ChatMessage>& msgs, bool add_generation_prompt) const;

  // Incremental detokenizer: text out as soon as it is complete UTF-8. A token that ends inside a
  // character emits nothing until the character completes; ill-formed bytes become U+FFFD (when
  // provably ill-formed, or at flush). The concatenated output equals
  // sanitize_utf8(decode(all ids)). Holds a reference to the tokenizer.
  class StreamDecoder {
   public:
    explicit StreamDecoder(const Tokenizer& tok, bool skip_special = false);
    std::string push(int32_t id);
    std::string flush();  // emits (as U+FFFD) any incomplete tail and resets

   private:
    const Tokenizer* tok_;
    bool skip_special_;
    std::string pending_;  // at most 3 bytes of an incomplete character
  };

  // Testing knob: pieces with more symbols than this use the heap merge, others the array merge.
  // Both give the same ids; tests run the corpus through both.
  void set_bpe_heap_threshold(size_t n);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// GPT-2 bytes_to_unicode: the printable character standing for byte b in byte-level tokens.
uint32_t byte_to_unicode(uint8_t b);
// Byte-level token string -> raw bytes. A string with a character outside the mapping is returned
// unchanged (as HF's ByteLevel decoder does).
std::string byte_level_decode(std::string_view token);
std::string byte_level_encode(std::string_view raw);

}  // namespace detinfer
