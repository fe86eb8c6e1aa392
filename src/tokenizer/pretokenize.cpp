#include "tokenizer/pretokenize.h"

#include "tokenizer/unicode.h"

namespace detinfer {

namespace {

// A view of text[0, end) with character classification at byte offsets.
struct Scan {
  const unsigned char* s;
  size_t end;

  CharClass cls(size_t i, size_t& len) const {
    const unsigned b = s[i];
    if (b < 0x80) {
      len = 1;
      return unicode_detail::kAsciiClass.c[b];
    }
    uint32_t cp;
    len = decode_utf8(s + i, end - i, cp);
    return cp == kInvalidCodePoint ? CharClass::Other : char_class(cp);
  }
  // End of the run of characters of class c starting at i.
  size_t run(CharClass c, size_t i) const {
    while (i < end) {
      size_t len;
      if (cls(i, len) != c) break;
      i += len;
    }
    return i;
  }
  size_t run_newlines(size_t i) const {
    while (i < end && (s[i] == '\r' || s[i] == '\n')) ++i;
    return i;
  }
  // Whitespace at i (class Space, length len): the end of \s+(?!\S)|\s+ .
  size_t space_tail(size_t i, size_t len) const {
    size_t last = i, j = i + len;  // last: start of the last whitespace character of the run
    while (j < end) {
      size_t l;
      if (cls(j, l) != CharClass::Space) break;
      last = j;
      j += l;
    }
    if (j == end) return j;    // \s+(?!\S) takes the whole run at the end of the text
    if (last > i) return last;  // ... else all but the last character, which goes with what follows
    return j;                   // a single whitespace character: \s+
  }
};

inline unsigned lower_ascii(unsigned b) { return (b >= 'A' && b <= 'Z') ? b + 32 : b; }

// 's|'t|'re|'ve|'m|'ll|'d  at i (s[i] == '\''); returns the end, or 0 for no match. Case-insensitive
// as Oniguruma's (?i) is: it folds U+017F LATIN SMALL LETTER LONG S to 's' too.
size_t contraction(const Scan& t, size_t i, bool fold_case) {
  if (i + 1 >= t.end) return 0;
  const unsigned n = fold_case ? lower_ascii(t.s[i + 1]) : t.s[i + 1];
  if (n == 's' || n == 't' || n == 'm' || n == 'd') return i + 2;
  if (fold_case && t.s[i + 1] == 0xC5 && i + 2 < t.end && t.s[i + 2] == 0xBF) return i + 3;
  if (i + 2 >= t.end) return 0;
  const unsigned m = fold_case ? lower_ascii(t.s[i + 2]) : t.s[i + 2];
  if ((n == 'r' && m == 'e') || (n == 'v' && m == 'e') || (n == 'l' && m == 'l')) return i + 3;
  return 0;
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t gpt2_next(const Scan& t, size_t i) {
  const unsigned b = t.s[i];
  if (b == '\'') {
    if (size_t e = contraction(t, i, false)) return e;
  }
  if (b == ' ' && i + 1 < t.end) {
    size_t l;
    const CharClass n = t.cls(i + 1, l);
    if (n != CharClass::Space) return t.run(n, i + 1 + l);
  }
  size_t len;
  const CharClass c = t.cls(i, len);
  if (c != CharClass::Space) return t.run(c, i + len);
  return t.space_tail(i, len);
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*
// |\s*[\r\n]+|\s+(?!\S)|\s+
size_t llama3_next(const Scan& t, size_t i, int max_digits) {
  const unsigned b = t.s[i];
  if (b == '\'') {
    if (size_t e = contraction(t, i, true)) return e;
  }
  size_t len;
  const CharClass c = t.cls(i, len);
  if (c == CharClass::Letter) return t.run(CharClass::Letter, i + len);
  if (c != CharClass::Number && b != '\r' && b != '\n' && i + len < t.end) {  // one prefix char, letters
    size_t l;
    if (t.cls(i + len, l) == CharClass::Letter) return t.run(CharClass::Letter, i + len + l);
  }
  if (c == CharClass::Number) {
    size_t j = i + len;
    for (int k = 1; k < max_digits && j < t.end; ++k) {
      size_t l;
      if (t.cls(j, l) != CharClass::Number) break;
      j += l;
    }
    return j;
  }
  if (b == ' ' && i + 1 < t.end) {
    size_t l;
    if (t.cls(i + 1, l) == CharClass::Other) return t.run_newlines(t.run(CharClass::Other, i + 1 + l));
  }
  if (c == CharClass::Other) return t.run_newlines(t.run(CharClass::Other, i + len));
  // Whitespace. \s*[\r\n]+ : up to and including the run's last \r or \n, if it has one.
  size_t j = i, after_newline = 0;
  while (j < t.end) {
    size_t l;
    if (t.cls(j, l) != CharClass::Space) break;
    if (t.s[j] == '\r' || t.s[j] == '\n') after_newline = j + 1;
    j += l;
  }
  if (after_newline) return after_newline;
  return t.space_tail(i, len);
}

void gpt2_split(const Scan& t, size_t i, std::vector<size_t>& ends) {
  while (i < t.end) ends.push_back(i = gpt2_next(t, i));
}

}  // namespace

void pretokenize(PreTokenizer pre, std::string_view text, std::vector<size_t>& ends) {
  const Scan t{reinterpret_cast<const unsigned char*>(text.data()), text.size()};
  size_t i = 0;
  switch (pre) {
    case PreTokenizer::Gpt2:
      gpt2_split(t, 0, ends);
      return;
    case PreTokenizer::Llama3:
    case PreTokenizer::Qwen2: {
      const int max_digits = pre == PreTokenizer::Llama3 ? 3 : 1;
      while (i < t.end) ends.push_back(i = llama3_next(t, i, max_digits));
      return;
    }
    case PreTokenizer::SmolLM:
      // Digits(individual_digits): every \p{N} character alone; the GPT-2 regex runs on the text
      // between, each stretch on its own (its end is the end of text for the (?!\S) look-ahead).
      while (i < t.end) {
        size_t len;
        if (t.cls(i, len) == CharClass::Number) {
          ends.push_back(i += len);
          continue;
        }
        size_t j = i + len;
        while (j < t.end) {
          size_t l;
          if (t.cls(j, l) == CharClass::Number) break;
          j += l;
        }
        gpt2_split(Scan{t.s, j}, i, ends);
        i = j;
      }
      return;
  }
}

std::vector<std::string_view> pretokenize_pieces(PreTokenizer pre, std::string_view text) {
  std::vector<size_t> ends;
  pretokenize(pre, text, ends);
  std::vector<std::string_view> out;
  size_t b = 0;
  for (size_t e : ends) {
    out.push_back(text.substr(b, e - b));
    b = e;
  }
  return out;
}

}  // namespace detinfer
