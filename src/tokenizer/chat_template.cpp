#include "tokenizer/chat_template.h"

#include "common/error.h"
#include "tokenizer/unicode.h"

namespace detinfer {

namespace {

constexpr std::string_view kImStart = "<|im_start|>";
constexpr std::string_view kImEnd = "<|im_end|>";

// Python's str.strip(), which Jinja's `trim` filter calls.
std::string_view python_strip(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t begin = 0, end = s.size();
  while (begin < end) {
    uint32_t cp;
    const size_t len = decode_utf8(p + begin, end - begin, cp);
    if (cp == kInvalidCodePoint || !is_python_space(cp)) break;
    begin += len;
  }
  // Scan forward so multi-byte characters are decoded from their first byte; remember where the
  // trailing run of spaces starts.
  size_t trail = end;
  for (size_t i = begin; i < end;) {
    uint32_t cp;
    const size_t len = decode_utf8(p + i, end - i, cp);
    const bool space = cp != kInvalidCodePoint && is_python_space(cp);
    if (!space) trail = end;
    else if (trail == end) trail = i;
    i += len;
  }
  return s.substr(begin, trail - begin);
}

// Decodes a Jinja string literal body (Python "unicode-escape" rules, as Jinja's lexer uses, after
// turning \r\n and \r into \n).
std::string unescape_jinja(std::string_view body) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (c == '\r') {
      out += '\n';
      if (i + 1 < body.size() && body[i + 1] == '\n') ++i;
      continue;
    }
    if (c != '\\' || i + 1 >= body.size()) {
      out += c;
      continue;
    }
    const char e = body[++i];
    auto hex = [&](size_t digits) {
      uint32_t v = 0;
      size_t k = 0;
      for (; k < digits && i + 1 < body.size(); ++k) {
        const char h = body[i + 1];
        const int d = (h >= '0' && h <= '9') ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
        if (d < 0) break;
        v = v * 16 + static_cast<uint32_t>(d);
        ++i;
      }
      if (k == digits && v <= 0x10FFFF) append_utf8(out, v);
    };
    switch (e) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case '0': out += '\0'; break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case '\n': break;  // line continuation
      case 'x': hex(2); break;
      case 'u': hex(4); break;
      case 'U': hex(8); break;
      default:  // Python keeps unknown escapes as written
        out += '\\';
        out += e;
    }
  }
  return out;
}

// Every piece of text the template can output literally: the raw text between blocks and the
// string literals inside {{ }} and {% %} blocks ({# #} comments skipped).
std::vector<std::string> template_literals(std::string_view t) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < t.size()) {
    const size_t open = t.find('{', i);
    if (open == std::string_view::npos || open + 1 >= t.size()) {
      out.emplace_back(t.substr(i));
      break;
    }
    const char kind = t[open + 1];
    if (kind != '{' && kind != '%' && kind != '#') {
      out.emplace_back(t.substr(i, open + 1 - i));
      i = open + 1;
      continue;
    }
    out.emplace_back(t.substr(i, open - i));
    const std::string_view close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t j = open + 2;
    while (j < t.size()) {
      if (kind != '#' && (t[j] == '\'' || t[j] == '"')) {
        const char q = t[j];
        size_t k = j + 1;
        while (k < t.size() && t[k] != q) k += t[k] == '\\' ? 2 : 1;
        if (k >= t.size()) return out;  // unterminated: not a template we can read further
        out.push_back(unescape_jinja(t.substr(j + 1, k - j - 1)));
        j = k + 1;
      } else if (t.compare(j, close.size(), close) == 0) {
        break;
      } else {
        ++j;
      }
    }
    i = j + close.size();
  }
  return out;
}

}  // namespace

const char* chat_format_name(ChatFormat f) { return f == ChatFormat::ChatML ? "chatml" : "llama3"; }

ChatFormat chat_format_from_name(std::string_view name) {
  if (name == "chatml") return ChatFormat::ChatML;
  if (name == "llama3") return ChatFormat::Llama3;
  fail("unknown chat template name '", name, "': expected chatml or llama3");
}

bool extract_chatml_default_system(std::string_view template_text, std::string& out) {
  const std::string head = std::string(kImStart) + "system\n";
  for (const std::string& lit : template_literals(template_text)) {
    for (size_t at = lit.find(head); at != std::string::npos; at = lit.find(head, at + 1)) {
      const size_t body = at + head.size();
      const size_t end = lit.find(kImEnd, body);
      if (end != std::string::npos && end > body) {
        out = lit.substr(body, end - body);
        return true;
      }
    }
  }
  return false;
}

ChatTemplate ChatTemplate::from_format(ChatFormat f, std::string_view template_text, std::string bos_token) {
  ChatTemplate t;
  t.format_ = f;
  t.bos_token_ = std::move(bos_token);
  if (f == ChatFormat::ChatML) t.has_default_system_ = extract_chatml_default_system(template_text, t.default_system_);
  return t;
}

ChatTemplate ChatTemplate::from_jinja(std::string_view text, std::string bos_token) {
  constexpr const char* kHint = "; choose one explicitly (chat format: chatml | llama3)";
  DETINFER_CHECK(!text.empty(), "the model has no chat template", kHint);
  if (text.find(kImStart) != std::string_view::npos) return from_format(ChatFormat::ChatML, text, std::move(bos_token));
  if (text.find("<|start_header_id|>") != std::string_view::npos) {
    DETINFER_CHECK(text.find("Cutting Knowledge Date") == std::string_view::npos &&
                       text.find("Environment: ipython") == std::string_view::npos,
                   "chat template: Llama 3.1-style template (date and tool preamble) is not supported", kHint);
    return from_format(ChatFormat::Llama3, text, std::move(bos_token));
  }
  fail("unrecognised chat template (neither ChatML nor Llama 3 markers found: ",
       text.substr(0, std::min<size_t>(text.size(), 80)), "...)", kHint);
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& msgs, bool add_generation_prompt) const {
  std::string out;
  if (format_ == ChatFormat::ChatML) {
    if (!msgs.empty() && msgs[0].role != "system" && has_default_system_)
      out.append(kImStart).append("system\n").append(default_system_).append(kImEnd).append("\n");
    for (const ChatMessage& m : msgs)
      out.append(kImStart).append(m.role).append("\n").append(m.content).append(kImEnd).append("\n");
    if (add_generation_prompt) out.append(kImStart).append("assistant\n");
    return out;
  }
  for (size_t i = 0; i < msgs.size(); ++i) {
    if (i == 0) out += bos_token_;
    out.append("<|start_header_id|>").append(msgs[i].role).append("<|end_header_id|>\n\n");
    out.append(python_strip(msgs[i].content)).append("<|eot_id|>");
  }
  if (add_generation_prompt) out.append("<|start_header_id|>assistant<|end_header_id|>\n\n");
  return out;
}

}  // namespace detinfer
