// Feeds arbitrary bytes to encode (every pre-tokenizer, special tokens on and off) and decodes the
// result: never a crash, and decode(encode(s)) == s whenever s is valid UTF-8 (every byte of the
// small test vocabulary has a token).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/error.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

#ifndef DETINFER_FUZZ_DATA
#define DETINFER_FUZZ_DATA "tests/data"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static detinfer::Tokenizer* toks[2] = {nullptr, nullptr};
  if (!toks[0]) {
    const std::string base = std::string(DETINFER_FUZZ_DATA) + "/tokenizers/";
    for (int i = 0; i < 2; ++i) {
      const std::string dir = base + (i == 0 ? "llama3/" : "qwen2/");
      toks[i] = new detinfer::Tokenizer(
          detinfer::spec_from_hf_files(dir + "tokenizer.json", dir + "tokenizer_config.json"));
    }
  }
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  detinfer::Tokenizer& tok = *toks[data[0] & 1];
  const bool special = data[0] & 2;
  std::vector<int32_t> ids = tok.encode(text, false, special);
  const std::string back = tok.decode(ids);
  if (detinfer::sanitize_utf8(text) == text && back != text) std::abort();
  return 0;
}
