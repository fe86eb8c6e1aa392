// Chat templates without a Jinja engine: the formats we support are recognised from the model's
// template text (or named explicitly) and rendered by code that reproduces what transformers'
// Jinja rendering gives (tests compare with committed jinja2 renderings).
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace detinfer {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ... rendered verbatim
  std::string content;
};

enum class ChatFormat {
  ChatML,  // <|im_start|>role\ncontent<|im_end|>\n  (Qwen2.5, SmolLM2, ...)
  Llama3,  // <|start_header_id|>role<|end_header_id|>\n\ntrim(content)<|eot_id|>, BOS first
};
const char* chat_format_name(ChatFormat f);
// "chatml" | "llama3"; Error naming the value otherwise.
ChatFormat chat_format_from_name(std::string_view name);

class ChatTemplate {
 public:
  // Recognises the format by its markers. Error (saying how to choose one explicitly) for a
  // template we do not recognise, or one that looks like a format we would render wrongly
  // (Llama 3.1's date/tool preamble).
  static ChatTemplate from_jinja(std::string_view template_text, std::string bos_token);
  // Explicit choice; template_text (may be empty) still supplies the default system prompt.
  static ChatTemplate from_format(ChatFormat f, std::string_view template_text, std::string bos_token);

  // What the model's template renders for these messages. ChatML: when the first message is not
  // a system message and the template injects a default system prompt, that prompt comes first.
  std::string render(const std::vector<ChatMessage>& msgs, bool add_generation_prompt) const;

  ChatFormat format() const { return format_; }
  // The literal system prompt the template injects ("" if none), read from the template text.
  const std::string& default_system_prompt() const { return default_system_; }

 private:
  ChatFormat format_ = ChatFormat::ChatML;
  std::string default_system_;
  bool has_default_system_ = false;
  std::string bos_token_;
};

// The default system prompt a ChatML template injects: the text between "<|im_start|>system\n" and
// "<|im_end|>" inside one of its string literals (Jinja escapes decoded). Empty if there is none.
bool extract_chatml_default_system(std::string_view template_text, std::string& out);

}  // namespace detinfer
