// Tokenizer throughput: encode ~1 MB of mixed text (the golden corpus repeated) on one thread with
// SmolLM2's vocabulary, and decode it back. scripts/bench_tokenizer_hf.py does the same with HF
// tokenizers; compare under `taskset -c 0` (docs/TOKENIZER.md).
//
//   bench_tokenizer [vocab.json [corpus.json]]   (defaults: the repo's tests/data/tokenizers files)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/tokenizer.h"

namespace {

std::string data_dir() {
  const std::string here = __FILE__;  // <repo>/bench/tokenizer.cpp
  const size_t slash = here.find_last_of('/');
  return (slash == std::string::npos ? std::string(".") : here.substr(0, slash)) + "/../tests/data/tokenizers/";
}

// The corpus lines joined by '\n', repeated until at least min_bytes (the HF script builds the same).
std::string bench_text(const std::string& corpus_path, size_t min_bytes) {
  std::ifstream f(corpus_path, std::ios::binary);
  DETINFER_CHECK(f.good(), corpus_path, ": cannot open");
  std::stringstream ss;
  ss << f.rdbuf();
  std::string unit;
  for (const auto& line : nlohmann::json::parse(ss.str())) unit += line.get<std::string>() + "\n";
  const size_t reps = (min_bytes + unit.size() - 1) / unit.size();
  std::string text;
  text.reserve(unit.size() * reps);
  for (size_t i = 0; i < reps; ++i) text += unit;
  return text;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string vocab = argc > 1 ? argv[1] : data_dir() + "smollm2/vocab.json";
    const std::string corpus = argc > 2 ? argv[2] : data_dir() + "corpus.json";
    const auto t_load = std::chrono::steady_clock::now();
    const detinfer::Tokenizer tok(detinfer::spec_from_gguf_dump_json(vocab));
    const double load_s = seconds_since(t_load);
    const std::string text = bench_text(corpus, 1000000);

    // Per-line mode: the same text as many short requests (lines), as a server sees prompts.
    std::vector<std::string_view> lines;
    for (size_t b = 0, e; b < text.size(); b = e + 1) {
      e = text.find('\n', b);
      lines.push_back(std::string_view(text).substr(b, e - b + 1));
    }
    std::vector<int32_t> ids = tok.encode(text, false);  // warm-up
    const int runs = 7;
    std::vector<double> enc, dec;
    for (int r = 0; r < runs; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      ids = tok.encode(text, false);
      enc.push_back(seconds_since(t0));
      const auto t1 = std::chrono::steady_clock::now();
      const std::string back = tok.decode(ids);
      dec.push_back(seconds_since(t1));
      DETINFER_CHECK(back.size() <= text.size(), "decode produced more bytes than the input");
    }
    std::vector<double> per_line;
    size_t line_tokens = 0;
    for (int r = 0; r < runs; ++r) {
      line_tokens = 0;
      const auto t0 = std::chrono::steady_clock::now();
      for (std::string_view l : lines) line_tokens += tok.encode(l, false).size();
      per_line.push_back(seconds_since(t0));
    }
    std::sort(per_line.begin(), per_line.end());
    std::sort(enc.begin(), enc.end());
    uint64_t hash = 1469598103934665603ull;  // FNV-1a over the ids: the HF script prints the same
    for (int32_t id : ids) hash = (hash ^ static_cast<uint32_t>(id)) * 1099511628211ull;
    std::sort(dec.begin(), dec.end());
    const double n = static_cast<double>(ids.size());
    std::printf("tokenizer: smollm2 (%d tokens), loaded in %.3f s\n", tok.vocab_size(), load_s);
    std::printf("text: %zu bytes, %zu tokens, ids FNV-1a %016llx\n", text.size(), ids.size(),
                static_cast<unsigned long long>(hash));
    std::printf("encode: median %.4f s  best %.4f s  -> %.2f M tokens/s (median), %.1f MB/s\n", enc[runs / 2], enc[0],
                n / enc[runs / 2] / 1e6, text.size() / enc[runs / 2] / 1e6);
    std::printf("encode per line (%zu calls, %zu tokens): median %.4f s -> %.2f M tokens/s\n", lines.size(),
                line_tokens, per_line[runs / 2], line_tokens / per_line[runs / 2] / 1e6);
    std::printf("decode: median %.4f s -> %.1f M tokens/s\n", dec[runs / 2], n / dec[runs / 2] / 1e6);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
}
