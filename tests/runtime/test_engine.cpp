// The engine end to end on the small random-weight models of each architecture: the
// determinism contract's T2–T5, T7 (threads) and T10 through run_verify, plus the errors and
// stop conditions a user can hit.
#include <gtest/gtest.h>

#include "support/engine_util.h"

#include "support/default_model.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "common/error.h"
#include "common/paths.h"
#include "kernels/cpu/cpu_ops.h"
#include "model/loader.h"
#include "runtime/engine.h"
#include "runtime/verify.h"
#include "tokenizer/tokenizer.h"

using namespace detinfer;
using namespace detinfer::test;

namespace {

OpsFactory cpu_factory() {
  return [](int t) -> std::unique_ptr<Ops> { return std::make_unique<CpuOps>(t); };
}

}  // namespace

class EngineOnTinyModel : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineOnTinyModel, VerifyCasesAreBitwiseIdentical) {
  LoadedModel m = load_model(model_path(GetParam()));
  Tokenizer tok(m.tokenizer);
  VerifyOptions o = small_model_verify_options(
      tok.encode("Hello world, this is a test of determinism 12345.", true), m.config.vocab_size, {1, 2, 3});
  expect_all_identical(run_verify(m.config, m.weights, &tok, cpu_factory(), 2, o));
}

INSTANTIATE_TEST_SUITE_P(Models, EngineOnTinyModel,
                         ::testing::Values("llama", "llama_tied_bf16", "qwen2", "qwen3", "llama.gguf",
                                           "llama-q4_1.gguf", "qwen2.gguf", "qwen3.gguf"), NameFromString());

TEST(Engine, DefaultModelQuickVerify) {
  DETINFER_DEFAULT_MODEL_OR_SKIP(path);
  LoadedModel m = load_model(path);
  Tokenizer tok(m.tokenizer);
  VerifyOptions o;
  o.prompts = {tok.encode(tok.render_chat({{"user", "What is 2+2?"}}, true), false)};
  o.max_tokens = 6;
  o.trials = 2;
  o.batch_others = {3};
  o.chunks = {1, 7};
  o.prefix_lengths = {16, 17};
  o.thread_counts = {1};
  o.sampling = false;
  o.kv_bytes = int64_t{256} << 20;
  expect_all_identical(run_verify(m.config, m.weights, &tok, cpu_factory(), 2, o));
}

class EngineErrors : public ::testing::Test {
 protected:
  void SetUp() override { m = load_model(model_path("llama")); }
  LoadedModel m;
};

TEST_F(EngineErrors, BadRequestsAreRejectedWithClearMessages) {
  CpuOps ops(1);
  EngineOptions eo;
  eo.kv_blocks = 4;
  eo.block_size = 16;
  Engine engine(m.config, m.weights, nullptr, ops, eo);
  auto expect_error = [&](Request r, const char* needle) {
    try {
      engine.submit(r);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  Request empty;
  expect_error(empty, "empty");
  Request bad_id;
  bad_id.prompt = {1, m.config.vocab_size};
  expect_error(bad_id, "outside the vocabulary");
  Request too_long;
  too_long.prompt.assign(m.config.max_context, 1);
  expect_error(too_long, "context");
  Request too_big;  // 4 blocks of 16 = 64 tokens of cache
  too_big.prompt.assign(50, 1);
  too_big.params.max_tokens = 40;
  expect_error(too_big, "KV blocks");
  Request bad_temp;
  bad_temp.prompt = {1, 2};
  bad_temp.params.temperature = -1;
  expect_error(bad_temp, "temperature");
  // The engine still serves a good request after the bad ones.
  Request ok;
  ok.prompt = {1, 2, 3};
  ok.params.max_tokens = 5;
  ok.params.ignore_eos = true;
  auto r = engine.generate({ok});
  EXPECT_EQ(r[0].completions[0].tokens.size(), 5u);
  EXPECT_EQ(r[0].completions[0].finish, FinishReason::Length);
}

TEST_F(EngineErrors, RequestsBeyondTheCacheWaitTheirTurn) {
  CpuOps ops(2);
  EngineOptions eo;
  eo.kv_blocks = 3;  // one request at a time
  eo.block_size = 16;
  Engine engine(m.config, m.weights, nullptr, ops, eo);
  std::vector<Request> reqs(4);
  for (int i = 0; i < 4; ++i) {
    reqs[i].prompt = random_prompt(20, m.config.vocab_size, 10 + i);
    reqs[i].params.max_tokens = 20;
    reqs[i].params.ignore_eos = true;
  }
  auto results = engine.generate(reqs);
  ASSERT_EQ(results.size(), 4u);
  for (auto& r : results) EXPECT_EQ(r.completions[0].tokens.size(), 20u);
}

TEST_F(EngineErrors, StopTokensStopStringsAndSeeds) {
  CpuOps ops(1);
  Tokenizer tok(m.tokenizer);
  Engine engine(m.config, m.weights, &tok, ops, EngineOptions{});
  Request r;
  r.prompt = tok.encode("Once upon a time", true);
  r.params.max_tokens = 12;
  r.params.ignore_eos = true;
  r.params.temperature = 1.0f;  // no seed: one is drawn and reported
  RequestResult first = engine.generate({r})[0];
  const Completion& c = first.completions[0];
  ASSERT_EQ(c.tokens.size(), 12u);
  // Replaying with the reported seed gives the same tokens.
  Request replay = r;
  replay.params.seed = first.seed;
  EXPECT_EQ(engine.generate({replay})[0].completions[0].tokens, c.tokens);
  // A stop token ends generation at its first occurrence.
  Request stop_tok = replay;
  stop_tok.params.stop_token_ids = {c.tokens[4]};
  const Completion s = engine.generate({stop_tok})[0].completions[0];
  size_t first_at = std::find(c.tokens.begin(), c.tokens.end(), c.tokens[4]) - c.tokens.begin();
  EXPECT_EQ(s.tokens.size(), first_at + 1);
  EXPECT_EQ(s.finish, FinishReason::StopToken);
  // A stop string cuts the text where it begins.
  if (c.text.size() > 6) {
    Request stop_str = replay;
    const std::string needle = c.text.substr(3, 3);
    stop_str.params.stop = {needle};
    const Completion t = engine.generate({stop_str})[0].completions[0];
    EXPECT_EQ(t.finish, FinishReason::StopString);
    EXPECT_EQ(t.text, c.text.substr(0, c.text.find(needle)));
  }
  // n > 1: completions use derived seeds, so they differ from each other but replay exactly.
  Request many = replay;
  many.params.n = 3;
  auto a = engine.generate({many})[0], b = engine.generate({many})[0];
  ASSERT_EQ(a.completions.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(a.completions[i].tokens, b.completions[i].tokens);
  EXPECT_NE(a.completions[0].tokens, a.completions[1].tokens);
}

TEST_F(EngineErrors, StreamingDeliversTheSameTextAsTheResult) {
  CpuOps ops(1);
  Tokenizer tok(m.tokenizer);
  Engine engine(m.config, m.weights, &tok, ops, EngineOptions{});
  Request r;
  r.prompt = tok.encode("The answer is", true);
  r.params.max_tokens = 16;
  r.params.ignore_eos = true;
  r.params.seed = 5;
  r.params.temperature = 0.9f;
  r.params.stop = {"zz"};  // holds back one character at a time
  std::string streamed;
  RequestId id = engine.submit(r, [&](RequestId, int, int32_t, const std::string& t) { streamed += t; });
  engine.run();
  EXPECT_EQ(streamed, engine.take(id).completions[0].text);
}
