#include "tokenizer/hf_json.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "common/error.h"

namespace detinfer {

namespace {

using json = nlohmann::json;

constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr int32_t kMaxVocab = 1 << 24;  // refuse ids that would make us allocate absurdly

json read_json(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DETINFER_CHECK(f.good(), path, ": cannot open file");
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
}

std::string type_of(const json& j) {
  if (j.is_object() && j.contains("type") && j["type"].is_string()) return j["type"].get<std::string>();
  return j.is_null() ? "null" : j.dump().substr(0, 60);
}

bool byte_level_without_regex(const json& j) {
  return type_of(j) == "ByteLevel" && !j.value("use_regex", true) && !j.value("add_prefix_space", false);
}

PreTokenizer parse_pre_tokenizer(const json& pt, const std::string& path) {
  const std::string type = type_of(pt);
  if (type == "ByteLevel") {
    DETINFER_CHECK(!pt.value("add_prefix_space", false), path,
                   ": pre_tokenizer ByteLevel with add_prefix_space=true is not supported");
    if (pt.value("use_regex", true)) return PreTokenizer::Gpt2;
  }
  if (type == "Sequence" && pt.contains("pretokenizers") && pt["pretokenizers"].is_array() &&
      pt["pretokenizers"].size() == 2) {
    const json& a = pt["pretokenizers"][0];
    const json& b = pt["pretokenizers"][1];
    if (type_of(a) == "Split" && byte_level_without_regex(b) && a.contains("pattern") &&
        a["pattern"].contains("Regex") && a.value("behavior", "") == "Isolated" && !a.value("invert", false)) {
      const std::string pattern = a["pattern"]["Regex"].get<std::string>();
      if (pattern == kLlama3Pattern) return PreTokenizer::Llama3;
      if (pattern == kQwen2Pattern) return PreTokenizer::Qwen2;
      if (pattern == kGpt2Pattern) return PreTokenizer::Gpt2;
      fail(path, ": pre_tokenizer Split regex not supported: ", pattern);
    }
    if (type_of(a) == "Digits" && a.value("individual_digits", false) && type_of(b) == "ByteLevel" &&
        b.value("use_regex", true) && !b.value("add_prefix_space", false))
      return PreTokenizer::SmolLM;
  }
  fail(path, ": pre_tokenizer not supported: ", pt.dump().substr(0, 300));
}

// The token a TemplateProcessing post-processor puts before $A, or -1.
int32_t post_processor_bos(const json& pp) {
  const std::string type = type_of(pp);
  if (type == "Sequence" && pp.contains("processors")) {
    for (const json& p : pp["processors"])
      if (int32_t id = post_processor_bos(p); id >= 0) return id;
    return -1;
  }
  if (type != "TemplateProcessing" || !pp.contains("single") || !pp["single"].is_array() || pp["single"].empty())
    return -1;
  const json& first = pp["single"][0];
  if (!first.contains("SpecialToken")) return -1;
  const std::string name = first["SpecialToken"]["id"].get<std::string>();
  const json& st = pp["special_tokens"][name];
  return st["ids"].at(0).get<int32_t>();
}

std::string token_content(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content")) return j["content"].get<std::string>();
  return {};
}

}  // namespace

TokenizerSpec spec_from_hf_files(const std::string& tokenizer_json_path, const std::string& config_path) {
  TokenizerSpec spec;
  spec.source = tokenizer_json_path;
  const std::string& path = tokenizer_json_path;
  const json doc = read_json(path);
  std::unordered_map<std::string, int32_t> id_of;  // token string / added content -> id
  try {
    DETINFER_CHECK(doc.is_object() && doc.contains("model"), path, ": no \"model\"");
    const json& model = doc["model"];
    DETINFER_CHECK(type_of(model) == "BPE" || (!model.contains("type") && model.contains("merges")), path,
                   ": model type ", type_of(model), " is not supported (byte-level BPE only)");
    DETINFER_CHECK(!model.value("byte_fallback", false), path, ": BPE with byte_fallback (SentencePiece-style) is not supported");
    DETINFER_CHECK(model.contains("vocab") && model["vocab"].is_object(), path, ": model.vocab missing");
    const json& norm = doc.contains("normalizer") ? doc["normalizer"] : json();
    DETINFER_CHECK(norm.is_null() || type_of(norm) == "NFC", path, ": normalizer not supported: ", type_of(norm));
    spec.pre = parse_pre_tokenizer(doc.contains("pre_tokenizer") ? doc["pre_tokenizer"] : json(), path);

    int32_t max_id = -1;
    for (const auto& [tok, id] : model["vocab"].items()) {
      const int32_t i = id.get<int32_t>();
      DETINFER_CHECK(i >= 0 && i < kMaxVocab, path, ": vocab id ", i, " for '", tok, "' out of range");
      max_id = std::max(max_id, i);
    }
    const json added = doc.contains("added_tokens") && doc["added_tokens"].is_array() ? doc["added_tokens"] : json::array();
    for (const json& a : added) {
      const int32_t i = a.at("id").get<int32_t>();
      DETINFER_CHECK(i >= 0 && i < kMaxVocab, path, ": added token id ", i, " out of range");
      max_id = std::max(max_id, i);
    }
    DETINFER_CHECK(max_id >= 0, path, ": empty vocabulary");
    spec.tokens.assign(static_cast<size_t>(max_id) + 1, std::string());
    spec.token_types.assign(spec.tokens.size(), kTokenUnused);
    for (const auto& [tok, id] : model["vocab"].items()) {
      spec.tokens[id.get<int32_t>()] = tok;
      spec.token_types[id.get<int32_t>()] = kTokenNormal;
      id_of.emplace(tok, id.get<int32_t>());
    }
    for (const json& a : added) {
      SpecialToken t{a.at("content").get<std::string>(), a.at("id").get<int32_t>(), a.value("special", false)};
      if (spec.token_types[t.id] != kTokenNormal) spec.tokens[t.id] = t.content;
      spec.token_types[t.id] = t.special ? kTokenControl : kTokenUserDefined;
      id_of[t.content] = t.id;
      spec.added.push_back(std::move(t));
    }
    if (model.contains("merges") && model["merges"].is_array()) {
      spec.merges.reserve(model["merges"].size());
      for (const json& m : model["merges"]) {
        if (m.is_string()) {
          spec.merges.push_back(m.get<std::string>());
        } else {
          DETINFER_CHECK(m.is_array() && m.size() == 2, path, ": merge entry ", m.dump(), " is not \"a b\" or [a, b]");
          spec.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
        }
      }
    }
    spec.ignore_merges = model.value("ignore_merges", false);
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      auto it = id_of.find(model["unk_token"].get<std::string>());
      if (it != id_of.end()) spec.unk_id = it->second;
    }
    const int32_t pp_bos = doc.contains("post_processor") ? post_processor_bos(doc["post_processor"]) : -1;
    if (pp_bos >= 0) {
      spec.bos_id = pp_bos;
      spec.add_bos = true;
    }
  } catch (const json::exception& e) {
    fail(path, ": unexpected structure: ", e.what());
  }

  if (config_path.empty()) return spec;
  const json cfg = read_json(config_path);
  try {
    DETINFER_CHECK(cfg.is_object(), config_path, ": not a JSON object");
    auto lookup = [&](const json& j, const char* what) {
      const std::string content = token_content(j);
      if (content.empty()) return -1;
      auto it = id_of.find(content);
      DETINFER_CHECK(it != id_of.end(), config_path, ": ", what, " '", content, "' is not a token of ", path);
      return it->second;
    };
    if (cfg.contains("bos_token")) {
      const int32_t b = lookup(cfg["bos_token"], "bos_token");
      if (b >= 0 && spec.bos_id < 0) spec.bos_id = b;
    }
    if (cfg.contains("eos_token")) {
      const int32_t e = lookup(cfg["eos_token"], "eos_token");
      if (e >= 0) spec.eos_ids.push_back(e);
    }
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) {
      spec.add_bos = cfg["add_bos_token"].get<bool>() && spec.bos_id >= 0;
    }
    if (cfg.contains("chat_template")) {
      const json& ct = cfg["chat_template"];
      if (ct.is_string()) {
        spec.chat_template = ct.get<std::string>();
      } else if (ct.is_array()) {  // [{name, template}, ...]: the default one
        for (const json& t : ct)
          if (t.value("name", "") == "default") spec.chat_template = t.at("template").get<std::string>();
      }
    }
  } catch (const json::exception& e) {
    fail(config_path, ": unexpected structure: ", e.what());
  }
  return spec;
}

TokenizerSpec spec_from_gguf_dump_json(const std::string& path) {
  const json doc = read_json(path);
  TokenizerSpec spec;
  spec.source = path;
  try {
    const std::string pre = doc.at("pre").get<std::string>();
    spec.pre = pre_tokenizer_from_gguf(pre);
    spec.ignore_merges = gguf_pre_ignores_merges(pre);
    spec.tokens = doc.at("tokens").get<std::vector<std::string>>();
    spec.token_types = doc.at("token_type").get<std::vector<int32_t>>();
    spec.merges = doc.at("merges").get<std::vector<std::string>>();
    spec.bos_id = doc.value("bos_id", -1);
    spec.eos_ids = doc.value("eos_ids", std::vector<int32_t>{});
    spec.add_bos = doc.value("add_bos", false);
    spec.chat_template = doc.value("chat_template", std::string());
  } catch (const json::exception& e) {
    fail(path, ": unexpected structure: ", e.what());
  }
  return spec;
}

}  // namespace detinfer
