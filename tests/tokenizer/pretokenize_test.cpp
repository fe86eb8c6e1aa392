// Pre-tokenizer scanners on hand-checked cases (HF's pre_tokenize_str output), Unicode tables,
// UTF-8 utilities and chat-template detection.
#include <gtest/gtest.h>

#include <random>

#include "common/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode.h"

namespace detinfer {
namespace {

using Pieces = std::vector<std::string_view>;

TEST(PreTokenize, Llama3) {
  auto p = [](std::string_view s) { return pretokenize_pieces(PreTokenizer::Llama3, s); };
  EXPECT_EQ(p("a  \r\n  \n  b"), (Pieces{"a", "  \r\n  \n", " ", " b"}));
  EXPECT_EQ(p("\t\thello"), (Pieces{"\t", "\thello"}));
  EXPECT_EQ(p("1234567"), (Pieces{"123", "456", "7"}));
  EXPECT_EQ(p("x'\xC5\xBFt"), (Pieces{"x", "'\xC5\xBF", "t"}));  // (?i) folds U+017F to s
  EXPECT_EQ(p("x'LL x'Re"), (Pieces{"x", "'LL", " x", "'Re"}));
  EXPECT_EQ(p(".hello ,world"), (Pieces{".hello", " ,", "world"}));
  EXPECT_EQ(p("x  \xE3\x80\x80\nab"), (Pieces{"x", "  \xE3\x80\x80\n", "ab"}));
  EXPECT_EQ(p(" 12 ?!\n\nx"), (Pieces{" ", "12", " ?!\n\n", "x"}));
  EXPECT_EQ(p("e\xCC\x81" "abc"), (Pieces{"e", "\xCC\x81" "abc"}));
  EXPECT_EQ(p("   "), (Pieces{"   "}));
  EXPECT_EQ(p(""), (Pieces{}));
}

TEST(PreTokenize, Qwen2DigitsOneByOne) {
  EXPECT_EQ(pretokenize_pieces(PreTokenizer::Qwen2, "ab 123"), (Pieces{"ab", " ", "1", "2", "3"}));
}

TEST(PreTokenize, Gpt2) {
  auto p = [](std::string_view s) { return pretokenize_pieces(PreTokenizer::Gpt2, s); };
  EXPECT_EQ(p("a\x1C\x1D" "b"), (Pieces{"a", "\x1C\x1D", "b"}));  // U+001C..1F are not \s
  EXPECT_EQ(p("a \xC2\x85" "b"), (Pieces{"a", " ", "\xC2\x85", "b"}));  // U+0085 is
  EXPECT_EQ(p("\xE1\xA0\x8E x"), (Pieces{"\xE1\xA0\x8E", " x"}));  // U+180E is not
  EXPECT_EQ(p("it's 'S  12ab"), (Pieces{"it", "'s", " '", "S", " ", " 12", "ab"}));
  EXPECT_EQ(p("a   "), (Pieces{"a", "   "}));
}

TEST(PreTokenize, SmolLmDigitsSplitFirst) {
  // The digit split ends the stretch before it, so "  " is taken whole by \s+(?!\S).
  EXPECT_EQ(pretokenize_pieces(PreTokenizer::SmolLM, "a  12x"), (Pieces{"a", "  ", "1", "2", "x"}));
}

TEST(PreTokenize, InvalidBytesAreOtherCharacters) {
  const std::string s = "ab\xFF\xC3 cd\xE4\xBD";
  for (PreTokenizer pre : {PreTokenizer::Gpt2, PreTokenizer::Llama3, PreTokenizer::Qwen2, PreTokenizer::SmolLM}) {
    std::string joined;
    for (auto piece : pretokenize_pieces(pre, s)) {
      EXPECT_FALSE(piece.empty());
      joined += piece;
    }
    EXPECT_EQ(joined, s);
  }
  EXPECT_EQ(pretokenize_pieces(PreTokenizer::Gpt2, s), (Pieces{"ab", "\xFF\xC3", " cd", "\xE4\xBD"}));
}

TEST(PreTokenize, RandomBytesTileTheText) {
  std::mt19937 rng(7);
  const char* alphabet[] = {"a", "Z", " ", "\t", "\n", "\r", "'", "s", "1", "\xC5\xBF", "\xE3\x80\x80", "\xE4\xBD\xA0",
                            "\xCC\x81", "!", "\xF0\x9F\x98\x80", "\xFF", "\xC3", "\x80"};
  for (int iter = 0; iter < 2000; ++iter) {
    std::string s;
    for (int k = rng() % 30; k > 0; --k) s += rng() % 5 == 0 ? std::string(1, static_cast<char>(rng())) : alphabet[rng() % 18];
    for (PreTokenizer pre : {PreTokenizer::Gpt2, PreTokenizer::Llama3, PreTokenizer::Qwen2, PreTokenizer::SmolLM}) {
      std::string joined;
      for (auto piece : pretokenize_pieces(pre, s)) {
        ASSERT_FALSE(piece.empty());
        joined += piece;
      }
      ASSERT_EQ(joined, s);
    }
  }
}

TEST(Unicode, Classes) {
  EXPECT_EQ(char_class('a'), CharClass::Letter);
  EXPECT_EQ(char_class(0x4F60), CharClass::Letter);   // 你
  EXPECT_EQ(char_class(0x0663), CharClass::Number);   // Arabic-Indic 3
  EXPECT_EQ(char_class(0x216B), CharClass::Number);   // Roman numeral XII (Nl)
  EXPECT_EQ(char_class(0x00BD), CharClass::Number);   // ½ (No)
  EXPECT_EQ(char_class(0x3000), CharClass::Space);
  EXPECT_EQ(char_class(0x2029), CharClass::Space);
  EXPECT_EQ(char_class(0x001C), CharClass::Other);
  EXPECT_EQ(char_class(0x0301), CharClass::Other);    // combining mark
  EXPECT_EQ(char_class(0x1F600), CharClass::Other);   // emoji
  EXPECT_EQ(char_class(kInvalidCodePoint), CharClass::Other);
  EXPECT_TRUE(is_python_space(0x1C));
  EXPECT_FALSE(is_python_space(0x200B));
}

TEST(Unicode, Utf8Utilities) {
  EXPECT_EQ(sanitize_utf8("ok \xE2\x82\xAC"), "ok \xE2\x82\xAC");
  EXPECT_EQ(sanitize_utf8("\xE2\x82" "a"), "\xEF\xBF\xBD" "a");       // one U+FFFD per maximal subpart
  EXPECT_EQ(sanitize_utf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");   // overlong: each byte
  EXPECT_EQ(sanitize_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(incomplete_utf8_tail("a\xF0\x9F\x98"), 3u);
  EXPECT_EQ(incomplete_utf8_tail("a\xF0\x9F\x98\x80"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("a\xE2"), 1u);
  EXPECT_EQ(incomplete_utf8_tail("a\x82"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("\xF0\x80"), 0u);  // F0 80 can never complete
  uint32_t cp;
  const auto* s = reinterpret_cast<const unsigned char*>("\xF0\x9F\x98\x80");
  EXPECT_EQ(decode_utf8(s, 4, cp), 4u);
  EXPECT_EQ(cp, 0x1F600u);
  EXPECT_EQ(decode_utf8(s, 3, cp), 1u);
  EXPECT_EQ(cp, kInvalidCodePoint);
}

TEST(ChatTemplate, DetectionOverrideAndErrors) {
  EXPECT_EQ(ChatTemplate::from_jinja("{{ '<|im_start|>' + m }}", "").format(), ChatFormat::ChatML);
  EXPECT_EQ(ChatTemplate::from_jinja("{{ '<|start_header_id|>' }}", "<s>").format(), ChatFormat::Llama3);
  EXPECT_THROW(ChatTemplate::from_jinja("{{ '[INST]' + m + '[/INST]' }}", ""), Error);
  EXPECT_THROW(ChatTemplate::from_jinja("", ""), Error);
  EXPECT_THROW(ChatTemplate::from_jinja("<|start_header_id|> Cutting Knowledge Date: December 2023", ""), Error);
  EXPECT_THROW(chat_format_from_name("vicuna"), Error);
  const ChatTemplate t = ChatTemplate::from_format(chat_format_from_name("llama3"), "", "<B>");
  EXPECT_EQ(t.render({{"user", " hi "}}, true),
            "<B><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  const ChatTemplate c = ChatTemplate::from_format(ChatFormat::ChatML, "", "");
  EXPECT_EQ(c.render({{"user", "x"}}, false), "<|im_start|>user\nx<|im_end|>\n");
}

TEST(ChatTemplate, DefaultSystemPromptFromTemplateText) {
  std::string out;
  // Jinja escapes decoded; raw text outside blocks and quotes in it do not confuse the scan.
  ASSERT_TRUE(extract_chatml_default_system(
      "don't {% if x %}{{ '<|im_start|>system\\nBe \\'brief\\'.<|im_end|>\\n' }}{% endif %}", out));
  EXPECT_EQ(out, "Be 'brief'.");
  ASSERT_TRUE(extract_chatml_default_system("{{ \"<|im_start|>system\nHi \\u00e9<|im_end|>\" }}", out));
  EXPECT_EQ(out, "Hi \xC3\xA9");
  EXPECT_FALSE(extract_chatml_default_system("{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>' }}", out));
  const ChatTemplate t = ChatTemplate::from_jinja("{{ '<|im_start|>system\\nDefault.<|im_end|>\\n' }}<|im_start|>", "");
  EXPECT_EQ(t.render({{"user", "q"}}, true),
            "<|im_start|>system\nDefault.<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.render({{"system", "S"}}, false), "<|im_start|>system\nS<|im_end|>\n");
}

}  // namespace
}  // namespace detinfer
