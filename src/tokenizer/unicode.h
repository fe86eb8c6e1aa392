// UTF-8 decoding and the Unicode character classes the pre-tokenizer regexes need (\p{L}, \p{N},
// \s), from generated range tables (scripts/make_unicode_tables.py -> unicode_tables.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace detinfer {

enum class CharClass : uint8_t { Other = 0, Letter = 1, Number = 2, Space = 3 };

namespace unicode_detail {
struct ClassRange {
  uint32_t first, last;
  CharClass cls;
};
struct CodeRange {
  uint32_t first, last;
};
extern const ClassRange kClassRanges[];
extern const size_t kClassRangeCount;
extern const CodeRange kPythonSpaceRanges[];
extern const size_t kPythonSpaceRangeCount;
CharClass char_class_slow(uint32_t cp);

// ASCII classes, the hot path.
inline constexpr auto kAsciiClass = [] {
  struct T {
    CharClass c[128];
  } t{};
  for (int i = 0; i < 128; ++i) {
    CharClass c = CharClass::Other;
    if ((i >= 'a' && i <= 'z') || (i >= 'A' && i <= 'Z')) c = CharClass::Letter;
    else if (i >= '0' && i <= '9') c = CharClass::Number;
    else if (i == ' ' || (i >= 0x09 && i <= 0x0D)) c = CharClass::Space;
    t.c[i] = c;
  }
  return t;
}();
}  // namespace unicode_detail

// A code point's class; kInvalidCodePoint (an invalid UTF-8 byte) is Other.
inline CharClass char_class(uint32_t cp) {
  return cp < 128 ? unicode_detail::kAsciiClass.c[cp] : unicode_detail::char_class_slow(cp);
}

// What Python's str.isspace() accepts (Jinja's `trim` filter strips these).
bool is_python_space(uint32_t cp);

inline constexpr uint32_t kInvalidCodePoint = 0xFFFFFFFFu;

// Decodes one character at s[0..n), n >= 1. Returns its length in bytes (1..4). A byte that does not
// start a well-formed sequence (stray continuation, overlong form, surrogate, > U+10FFFF, truncated)
// is one character of its own: length 1, cp = kInvalidCodePoint.
inline size_t decode_utf8(const unsigned char* s, size_t n, uint32_t& cp) {
  const unsigned b0 = s[0];
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  // Well-formed sequences per the Unicode standard, table 3-7.
  auto cont = [&](size_t i, unsigned lo = 0x80, unsigned hi = 0xBF) {
    return i < n && s[i] >= lo && s[i] <= hi;
  };
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (cont(1)) {
      cp = ((b0 & 0x1Fu) << 6) | (s[1] & 0x3Fu);
      return 2;
    }
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    const unsigned lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
    if (cont(1, lo, hi) && cont(2)) {
      cp = ((b0 & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
      return 3;
    }
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    const unsigned lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
    if (cont(1, lo, hi) && cont(2) && cont(3)) {
      cp = ((b0 & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
      return 4;
    }
  }
  cp = kInvalidCodePoint;
  return 1;
}

// Appends cp as UTF-8.
void append_utf8(std::string& out, uint32_t cp);

// Replaces each maximal ill-formed subsequence with U+FFFD, as Rust's String::from_utf8_lossy and
// the WHATWG decoder do. Valid input comes back unchanged.
std::string sanitize_utf8(std::string_view s);

// How many bytes at the end of s form an incomplete but so far well-formed UTF-8 sequence (0..3):
// the bytes a streaming decoder must hold back until the next token.
size_t incomplete_utf8_tail(std::string_view s);

}  // namespace detinfer
