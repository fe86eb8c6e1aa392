// TokenizerSpec from a GGUF file's tokenizer.ggml.* metadata (llama.cpp's conventions).
#pragma once
#include "tokenizer/tokenizer.h"

namespace detinfer {
namespace gguf {
class File;
}

// Error naming the file for a tokenizer model other than byte-level BPE ("gpt2"), or a
// pre-tokenizer we do not implement.
TokenizerSpec spec_from_gguf(const gguf::File& f);

}  // namespace detinfer
