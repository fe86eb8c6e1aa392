// Byte-level BPE tokenizer against HF `tokenizers` goldens (scripts/make_tokenizer_goldens.py):
// exact ids, decode, streaming decode, special-token handling, chat templates.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace detinfer {
namespace {

using json = nlohmann::json;
const std::string kData = std::string(DETINFER_TEST_DATA) + "/tokenizers/";

json load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  std::stringstream ss;
  ss << f.rdbuf();
  return json::parse(ss.str());
}

TokenizerSpec spec_for(const std::string& name) {
  if (name == "smollm2") return spec_from_gguf_dump_json(kData + "smollm2/vocab.json");
  return spec_from_hf_files(kData + name + "/tokenizer.json", kData + name + "/tokenizer_config.json");
}

const Tokenizer& tokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto& t = cache[name];
  if (!t) t = std::make_unique<Tokenizer>(spec_for(name));
  return *t;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

bool valid_utf8(std::string_view s) { return sanitize_utf8(s) == s; }

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, EncodeMatchesHf) {
  const Tokenizer& tok = tokenizer(GetParam());
  const json g = load(kData + GetParam() + "/golden.json");
  ASSERT_GT(g["cases"].size(), 50u);
  for (const json& c : g["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE(text);
    EXPECT_EQ(tok.encode(text, false), ids_of(c["ids"]));
    EXPECT_EQ(tok.encode(text, true), ids_of(c["ids_with_bos"]));
    EXPECT_EQ(tok.encode(text, false, /*parse_special=*/false), ids_of(c["ids_special_as_text"]));
  }
}

TEST_P(Golden, HeapAndArrayMergesAgree) {
  // Force every piece through each merge algorithm in turn; both must reproduce the goldens.
  for (size_t threshold : {size_t{0}, size_t{64}}) {
    Tokenizer tok(spec_for(GetParam()));
    tok.set_bpe_heap_threshold(threshold);
    const json g = load(kData + GetParam() + "/golden.json");
    for (const json& c : g["cases"]) EXPECT_EQ(tok.encode(c["text"].get<std::string>(), false), ids_of(c["ids"])) << c["text"];
  }
}

TEST_P(Golden, DecodeMatchesHfAndRoundTrips) {
  const Tokenizer& tok = tokenizer(GetParam());
  const json g = load(kData + GetParam() + "/golden.json");
  for (const json& c : g["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE(text);
    const auto with_bos = ids_of(c["ids_with_bos"]);
    EXPECT_EQ(tok.decode(with_bos), c["decoded"].get<std::string>());
    EXPECT_EQ(tok.decode(with_bos, /*skip_special=*/true), c["decoded_skip_special"].get<std::string>());
    // Every byte of these two vocabularies has a token, so text comes back exactly. SmolLM2 lacks
    // a few bytes (dropped, as HF drops them): compare with HF's decode there.
    const std::string back = tok.decode(tok.encode(text, false));
    EXPECT_EQ(back, GetParam() != "smollm2" ? text : tok.decode(ids_of(c["ids"])));
  }
}

TEST_P(Golden, StreamingEqualsWholeDecode) {
  const Tokenizer& tok = tokenizer(GetParam());
  const json g = load(kData + GetParam() + "/golden.json");
  for (const json& c : g["cases"]) {
    const auto ids = ids_of(c["ids_with_bos"]);
    for (bool skip : {false, true}) {
      Tokenizer::StreamDecoder sd(tok, skip);
      std::string streamed;
      for (int32_t id : ids) {
        const std::string part = sd.push(id);
        EXPECT_TRUE(valid_utf8(part));
        streamed += part;
      }
      streamed += sd.flush();
      EXPECT_EQ(streamed, sanitize_utf8(tok.decode(ids, skip))) << c["text"];
      if (valid_utf8(tok.decode(ids, skip))) {
        EXPECT_EQ(streamed, tok.decode(ids, skip));
      }
    }
  }
}

TEST_P(Golden, ChatTemplateMatchesJinja) {
  const Tokenizer& tok = tokenizer(GetParam());
  const json cases = load(kData + GetParam() + "/chat.json");
  ASSERT_GE(cases.size(), 5u);
  for (const json& c : cases) {
    std::vector<ChatMessage> msgs;
    for (const json& m : c["messages"]) msgs.push_back({m["role"], m["content"]});
    const std::string rendered = tok.render_chat(msgs, c["add_generation_prompt"]);
    EXPECT_EQ(rendered, c["rendered"].get<std::string>());
    EXPECT_EQ(tok.encode(rendered, false), ids_of(c["ids"])) << rendered;
  }
}

TEST_P(Golden, InvalidUtf8NeverFailsAndRoundTrips) {
  const Tokenizer& tok = tokenizer(GetParam());
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 300; ++iter) {
    std::string s(rng() % 40, '\0');
    for (char& ch : s) ch = static_cast<char>(rng() % 4 == 0 ? rng() % 256 : "ab \n1\xC3\xA9\xE4\xBD\xA0\xF0"[rng() % 11]);
    const auto ids = tok.encode(s, false);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok.vocab_size());
    if (GetParam() != "smollm2") {
      EXPECT_EQ(tok.decode(ids), s);
    }
    Tokenizer::StreamDecoder sd(tok);
    std::string streamed;
    for (int32_t id : ids) streamed += sd.push(id);
    streamed += sd.flush();
    EXPECT_EQ(streamed, sanitize_utf8(tok.decode(ids)));
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Golden, ::testing::Values("llama3", "qwen2", "smollm2"));

TEST(Tokenizer, SpecMetadataFromFiles) {
  const Tokenizer& l3 = tokenizer("llama3");
  EXPECT_EQ(l3.pre_tokenizer(), PreTokenizer::Llama3);
  EXPECT_TRUE(l3.spec().ignore_merges);
  EXPECT_TRUE(l3.add_bos());
  EXPECT_EQ(l3.token_text(l3.bos_id()), "<|begin_of_text|>");
  ASSERT_EQ(l3.eos_ids().size(), 1u);
  EXPECT_EQ(l3.token_text(l3.eos_ids()[0]), "<|eot_id|>");
  EXPECT_TRUE(l3.is_eos(l3.token_id("<|eot_id|>")));
  EXPECT_EQ(l3.chat_template().format(), ChatFormat::Llama3);

  const Tokenizer& q2 = tokenizer("qwen2");
  EXPECT_EQ(q2.pre_tokenizer(), PreTokenizer::Qwen2);
  EXPECT_FALSE(q2.add_bos());
  EXPECT_EQ(q2.bos_id(), -1);
  EXPECT_TRUE(q2.is_eos(q2.token_id("<|im_end|>")));
  EXPECT_EQ(q2.chat_template().default_system_prompt(), "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");

  const Tokenizer& sm = tokenizer("smollm2");
  EXPECT_EQ(sm.pre_tokenizer(), PreTokenizer::SmolLM);
  EXPECT_EQ(sm.vocab_size(), 49152);
  EXPECT_EQ(sm.chat_template().default_system_prompt(), "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_TRUE(sm.is_special(0));
  EXPECT_FALSE(sm.is_special(100));
}

TEST(Tokenizer, ChatFormatOverrideAndMissingTemplate) {
  TokenizerSpec spec = spec_for("llama3");
  spec.chat_format = "chatml";
  const Tokenizer forced(std::move(spec));
  EXPECT_EQ(forced.chat_template().format(), ChatFormat::ChatML);
  EXPECT_EQ(forced.render_chat({{"user", "x"}}, false), "<|im_start|>user\nx<|im_end|>\n");

  TokenizerSpec bogus = spec_for("llama3");
  bogus.chat_format = "bogus";
  const Tokenizer b(std::move(bogus));
  EXPECT_THROW(b.render_chat({{"user", "x"}}, false), Error);
  EXPECT_EQ(b.encode("x", false).size(), 1u);  // a model without a usable template still encodes

  TokenizerSpec none = spec_for("qwen2");
  none.chat_template.clear();
  const Tokenizer n(std::move(none));
  try {
    n.chat_template();
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("chatml | llama3"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, SpecialTokensMatchedBeforeBpe) {
  const Tokenizer& q2 = tokenizer("qwen2");
  const int32_t im_start = q2.token_id("<|im_start|>"), im_end = q2.token_id("<|im_end|>");
  ASSERT_GE(im_start, 0);
  const auto ids = q2.encode("a<|im_start|>b<|im_end|><|im_end|>", false);
  ASSERT_EQ(ids.size(), 5u);
  EXPECT_EQ(ids[1], im_start);
  EXPECT_EQ(ids[3], im_end);
  EXPECT_EQ(ids[4], im_end);
  EXPECT_EQ(q2.decode(ids, /*skip_special=*/true), "ab");
  // As text: no special ids at all, and the text comes back.
  const auto plain = q2.encode("a<|im_start|>b", false, false);
  for (int32_t id : plain) EXPECT_FALSE(q2.is_special(id));
  EXPECT_EQ(q2.decode(plain), "a<|im_start|>b");
  // A partial marker is text.
  for (int32_t id : q2.encode("<|im_start|", false)) EXPECT_NE(id, im_start);
}

TEST(Tokenizer, UserDefinedTokensMatchEvenWhenSpecialIsText) {
  TokenizerSpec spec = spec_for("qwen2");
  const int32_t user = static_cast<int32_t>(spec.tokens.size());
  spec.tokens.push_back("<tool>");
  spec.token_types.push_back(kTokenUserDefined);
  Tokenizer tok(std::move(spec));
  EXPECT_EQ(tok.encode("x<tool>y", false, false)[1], user);
  EXPECT_FALSE(tok.is_special(user));
  EXPECT_EQ(tok.decode(tok.encode("x<tool>y", false), true), "x<tool>y");
}

TEST(Tokenizer, StreamDecoderHoldsIncompleteCharacters) {
  const Tokenizer& tok = tokenizer("llama3");
  const std::string euro = "\xE2\x82\xAC";
  const int32_t b0 = tok.token_id(euro.substr(0, 1)), b1 = tok.token_id(euro.substr(1, 1)),
                b2 = tok.token_id(euro.substr(2, 1)), a = tok.token_id("a");
  ASSERT_TRUE(b0 >= 0 && b1 >= 0 && b2 >= 0 && a >= 0);
  Tokenizer::StreamDecoder sd(tok);
  EXPECT_EQ(sd.push(a), "a");
  EXPECT_EQ(sd.push(b0), "");
  EXPECT_EQ(sd.push(b1), "");
  EXPECT_EQ(sd.push(b2), euro);
  // Provably invalid: the lead byte followed by ASCII.
  EXPECT_EQ(sd.push(b0), "");
  EXPECT_EQ(sd.push(a), "\xEF\xBF\xBD" "a");
  // Incomplete at the end: U+FFFD at flush.
  EXPECT_EQ(sd.push(b0), "");
  EXPECT_EQ(sd.push(b1), "");
  EXPECT_EQ(sd.flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(sd.flush(), "");
}

TEST(Tokenizer, EncodeIsThreadSafeAndDeterministic) {
  const Tokenizer& tok = tokenizer("smollm2");
  const json g = load(kData + "smollm2/golden.json");
  std::string all;
  for (const json& c : g["cases"]) all += c["text"].get<std::string>();
  const auto ref = tok.encode(all, false);
  std::vector<std::vector<int32_t>> got(4);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) ts.emplace_back([&, t] { got[t] = tok.encode(all, false); });
  for (auto& t : ts) t.join();
  for (const auto& g2 : got) EXPECT_EQ(g2, ref);
}

TEST(Tokenizer, BadIdsAndSpecsAreErrors) {
  const Tokenizer& tok = tokenizer("qwen2");
  const std::vector<int32_t> bad{5, tok.vocab_size()};
  EXPECT_THROW(tok.decode(bad), Error);
  EXPECT_THROW(tok.token_text(-1), Error);
  Tokenizer::StreamDecoder sd(tok);
  EXPECT_THROW(sd.push(-3), Error);

  TokenizerSpec spec = spec_for("qwen2");
  spec.merges.push_back("notatoken alsonot");
  try {
    Tokenizer t(std::move(spec));
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("notatoken"), std::string::npos) << e.what();
  }
  TokenizerSpec spec2 = spec_for("qwen2");
  spec2.bos_id = 1 << 30;
  EXPECT_THROW(Tokenizer{std::move(spec2)}, Error);
  EXPECT_THROW(pre_tokenizer_from_gguf("tekken"), Error);
}

std::string write_temp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

void expect_error_mentions(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected Error mentioning " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(HfJson, ErrorsNameTheFileAndTheProblem) {
  const std::string cfg = kData + "qwen2/tokenizer_config.json";
  expect_error_mentions([&] { spec_from_hf_files("/nonexistent/tokenizer.json", cfg); }, "/nonexistent/tokenizer.json");
  const std::string bad = write_temp("bad_tokenizer.json", "{\"model\": {\"vocab\": ");
  expect_error_mentions([&] { spec_from_hf_files(bad, ""); }, bad);
  const std::string badcfg = write_temp("bad_config.json", "[1, 2");
  expect_error_mentions([&] { spec_from_hf_files(kData + "qwen2/tokenizer.json", badcfg); }, badcfg);

  json doc = load(kData + "qwen2/tokenizer.json");
  doc["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "_"}};
  const std::string meta = write_temp("metaspace.json", doc.dump());
  expect_error_mentions([&] { spec_from_hf_files(meta, ""); }, "Metaspace");
  doc = load(kData + "qwen2/tokenizer.json");
  doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+";
  const std::string regex = write_temp("regex.json", doc.dump());
  expect_error_mentions([&] { spec_from_hf_files(regex, ""); }, "\\w+");
  doc = load(kData + "qwen2/tokenizer.json");
  doc["model"]["type"] = "Unigram";
  const std::string uni = write_temp("unigram.json", doc.dump());
  expect_error_mentions([&] { spec_from_hf_files(uni, ""); }, "Unigram");
}

TEST(HfJson, MergesInBothForms) {
  // llama3's file has "a b" merges, qwen2's [a, b] pairs; both load into the same form.
  const TokenizerSpec a = spec_for("llama3"), b = spec_for("qwen2");
  ASSERT_EQ(a.merges.size(), 744u);
  ASSERT_EQ(b.merges.size(), 744u);
  EXPECT_NE(a.merges[0].find(' '), std::string::npos);
  EXPECT_NE(b.merges[0].find(' '), std::string::npos);
}

TEST(HfJson, SmolLmPreTokenizerFromTokenizerJson) {
  json doc = load(kData + "qwen2/tokenizer.json");
  doc["pre_tokenizer"] = json::parse(R"({"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},
      {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}]})");
  EXPECT_EQ(spec_from_hf_files(write_temp("smol.json", doc.dump()), "").pre, PreTokenizer::SmolLM);
  doc["pre_tokenizer"] = json::parse(R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})");
  EXPECT_EQ(spec_from_hf_files(write_temp("gpt2.json", doc.dump()), "").pre, PreTokenizer::Gpt2);
}

}  // namespace
}  // namespace detinfer
