#include "tokenizer/unicode.h"

#include <algorithm>

namespace detinfer {

namespace unicode_detail {
CharClass char_class_slow(uint32_t cp) {
  const ClassRange* end = kClassRanges + kClassRangeCount;
  const ClassRange* it =
      std::upper_bound(kClassRanges, end, cp, [](uint32_t c, const ClassRange& r) { return c < r.first; });
  if (it == kClassRanges) return CharClass::Other;
  --it;
  return cp <= it->last ? it->cls : CharClass::Other;
}
}  // namespace unicode_detail

bool is_python_space(uint32_t cp) {
  using namespace unicode_detail;
  for (size_t i = 0; i < kPythonSpaceRangeCount; ++i)
    if (cp >= kPythonSpaceRanges[i].first && cp <= kPythonSpaceRanges[i].last) return true;
  return false;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {
// The well-formed prefix of a sequence starting at s[0]: how many bytes (0 if s[0] cannot start
// one) and how many the whole sequence needs.
struct Prefix {
  size_t valid, needed;
};
Prefix utf8_prefix(const unsigned char* s, size_t n) {
  const unsigned b0 = s[0];
  size_t needed;
  unsigned lo = 0x80, hi = 0xBF;
  if (b0 < 0x80) return {1, 1};
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    needed = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    needed = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    needed = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {0, 1};
  }
  size_t i = 1;
  for (; i < needed && i < n; ++i) {
    const unsigned b = s[i];
    if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xBF)) break;
  }
  return {i, needed};
}
}  // namespace

std::string sanitize_utf8(std::string_view sv) {
  const auto* s = reinterpret_cast<const unsigned char*>(sv.data());
  const size_t n = sv.size();
  std::string out;
  out.reserve(n);
  size_t i = 0;
  while (i < n) {
    if (s[i] < 0x80) {
      out += static_cast<char>(s[i++]);
      continue;
    }
    const Prefix p = utf8_prefix(s + i, n - i);
    if (p.valid == p.needed) {
      out.append(sv.data() + i, p.valid);
      i += p.valid;
    } else {
      out += "\xEF\xBF\xBD";
      i += std::max<size_t>(p.valid, 1);
    }
  }
  return out;
}

size_t incomplete_utf8_tail(std::string_view sv) {
  const auto* s = reinterpret_cast<const unsigned char*>(sv.data());
  const size_t n = sv.size();
  for (size_t k = 1; k <= 3 && k <= n; ++k) {
    const unsigned b = s[n - k];
    if (b >= 0x80 && b < 0xC0) continue;  // continuation byte: the lead is further back
    const Prefix p = utf8_prefix(s + n - k, k);
    return (p.valid == k && p.needed > k) ? k : 0;
  }
  return 0;
}

}  // namespace detinfer
