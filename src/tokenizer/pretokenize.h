// Pre-tokenizers: the models' split regexes as hand-written scanners (no regex engine at run time).
// Each reproduces the leftmost-first, backtracking semantics of the regex as HF tokenizers runs it
// (Oniguruma): \p{L}, \p{N} and \s (Unicode White_Space) come from unicode.h.
#pragma once
#include <cstddef>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace detinfer {

// Appends the end offset of each piece of `text` (pieces tile the text: piece k is
// [ends[k-1], ends[k]), the first starting at 0). Text is arbitrary bytes; an invalid UTF-8 byte is
// a character of class Other.
void pretokenize(PreTokenizer pre, std::string_view text, std::vector<size_t>& ends);

// Convenience for tests: the pieces themselves.
std::vector<std::string_view> pretokenize_pieces(PreTokenizer pre, std::string_view text);

}  // namespace detinfer
