// End-to-end logits against Hugging Face transformers (fp32, eager attention) on the same
// weights: the small random-weight models of each architecture, as HF directories and as GGUF
// (which exercises the Q/K un-permutation and Llama-3 RoPE factors), and the default model.
// Fixtures: scripts/make_reference_logits.py -> tests/data/reference/.
#include <gtest/gtest.h>

#include "support/default_model.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/paths.h"
#include "kernels/cpu/cpu_ops.h"
#include "model/llama.h"
#include "model/loader.h"
#include "runtime/engine.h"

using namespace detinfer;

namespace {

const std::string kRef = std::string(DETINFER_TEST_DATA) + "/reference/";

nlohmann::json reference() {
  std::ifstream in(kRef + "reference.json");
  EXPECT_TRUE(in.good());
  return nlohmann::json::parse(in);
}

std::vector<float> read_f32(const std::string& file, size_t n) {
  std::vector<float> v(n);
  std::ifstream in(kRef + file, std::ios::binary);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * 4));
  EXPECT_EQ(static_cast<size_t>(in.gcount()), n * 4) << file;
  return v;
}

// Logits of the given positions after prefilling `ids` in one step.
std::vector<float> forward_logits(const LoadedModel& m, const std::vector<int32_t>& ids,
                                  const std::vector<int32_t>& positions) {
  CpuOps ops(2);
  const int B = 16;
  KvCacheShape kv;
  kv.n_layers = m.config.n_layers;
  kv.num_blocks = (static_cast<int64_t>(ids.size()) + B - 1) / B;
  kv.block_size = B;
  kv.n_kv_heads = m.config.n_kv_heads;
  kv.head_dim = m.config.head_dim;
  ops.init(m.config, kv);
  StepBatch b;
  b.tokens = ids;
  b.block_tables.emplace_back();
  for (int64_t i = 0; i < kv.num_blocks; ++i) b.block_tables[0].push_back(static_cast<int32_t>(i));
  for (size_t i = 0; i < ids.size(); ++i) b.pos.push_back(static_cast<int32_t>(i)), b.seq.push_back(0);
  b.logit_tokens = positions;
  std::vector<float> logits(positions.size() * m.config.vocab_size);
  llama_forward(ops, m.config, m.weights, b, logits.data());
  return logits;
}

// Compares logits with the reference within tol · max(1, max|ref|) and checks the greedy
// continuation token by token while the reference's top-1/top-2 margin is clearly above the error.
void check_model(const LoadedModel& m, const nlohmann::json& ref, double rel_tol) {
  const int V = ref["vocab"];
  ASSERT_EQ(V, m.config.vocab_size);
  for (const auto& p : ref["prompts"]) {
    std::vector<int32_t> ids = p["ids"].get<std::vector<int32_t>>();
    std::vector<int32_t> positions = p["positions"].get<std::vector<int32_t>>();
    std::vector<float> want = read_f32(p["logits"], positions.size() * V);
    std::vector<float> got = forward_logits(m, ids, positions);
    double max_ref = 0, max_err = 0;
    for (float x : want) max_ref = std::max(max_ref, std::fabs(static_cast<double>(x)));
    for (size_t i = 0; i < want.size(); ++i)
      max_err = std::max(max_err, std::fabs(static_cast<double>(got[i]) - want[i]));
    const double tol = rel_tol * std::max(1.0, max_ref);
    EXPECT_LE(max_err, tol) << m.path << ": max |logit - HF| = " << max_err << " (max |HF| " << max_ref << ")";
    std::printf("[ reference ] %s, %zu tokens: max |logit - HF| = %.3g, max |HF| = %.3g\n", m.path.c_str(),
                ids.size(), max_err, max_ref);

    CpuOps ops(2);
    Engine engine(m.config, m.weights, nullptr, ops, EngineOptions{});
    Request r;
    r.prompt = ids;
    r.params.max_tokens = static_cast<int>(p["greedy"].size());
    r.params.ignore_eos = true;
    const std::vector<int32_t> ours = engine.generate({r})[0].completions[0].tokens;
    const auto theirs = p["greedy"].get<std::vector<int32_t>>();
    const auto margins = p["margins"].get<std::vector<double>>();
    // Compare until the reference's top-1/top-2 margin is within a few times the measured logit
    // error: past such a near tie either token is right, and the continuations may part.
    const double near_tie = 8 * max_err + 1e-6 * max_ref;
    size_t compared = 0;
    for (size_t i = 0; i < theirs.size(); ++i) {
      if (margins[i] < near_tie) break;
      ASSERT_EQ(ours[i], theirs[i]) << m.path << ": greedy token " << i << " (margin " << margins[i] << ")";
      ++compared;
    }
    std::printf("[ reference ] %s: greedy continuation matches for %zu of %zu tokens before a near tie\n",
                m.path.c_str(), compared, theirs.size());
    EXPECT_GE(compared, 1u);
  }
}

}  // namespace

struct Case {
  const char* ref;
  const char* path;
};

class ReferenceLogits : public ::testing::TestWithParam<Case> {};

TEST_P(ReferenceLogits, MatchTransformers) {
  nlohmann::json ref = reference();
  const Case c = GetParam();
  LoadedModel m = load_model(std::string(DETINFER_TEST_DATA) + "/models/" + c.path);
  check_model(m, ref["models"][c.ref], 2e-5);
}

INSTANTIATE_TEST_SUITE_P(
    TinyModels, ReferenceLogits,
    ::testing::Values(Case{"llama", "llama"}, Case{"llama", "llama.gguf"},
                      Case{"llama_tied_bf16", "llama_tied_bf16"}, Case{"llama_tied_bf16", "llama_tied_bf16.gguf"},
                      Case{"qwen2", "qwen2"}, Case{"qwen2", "qwen2.gguf"}, Case{"qwen3", "qwen3"},
                      Case{"qwen3", "qwen3.gguf"}),
    [](const auto& info) {
      std::string s = info.param.path;
      for (char& ch : s)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return s;
    });

TEST(ReferenceLogits, DefaultModelMatchesTransformers) {
  DETINFER_DEFAULT_MODEL_OR_SKIP(path);
  LoadedModel m = load_model(path);
  check_model(m, reference()["models"]["default"], 1e-3);
}
