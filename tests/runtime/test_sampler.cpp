// The sampler: Philox known answers, filter semantics on hand-made logits, penalties and
// logprobs against fp64 references, the sampled distribution against the softmax, and the
// sorting-free selection against a literal full-sort reference (bit-exact picks).
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "common/error.h"
#include "kernels/cpu/ops.h"
#include "runtime/philox.h"
#include "runtime/sampler.h"

namespace detinfer {
namespace {

SampleResult draw(Sampler& s, const std::vector<float>& logits, const SamplingParams& p,
                  uint64_t seed, int64_t index, std::span<const int32_t> history = {},
                  size_t n_prompt = 0) {
  return s.sample(logits.data(), static_cast<int32_t>(logits.size()), p, seed, index, history,
                  n_prompt);
}

SamplingParams temp(float t) {
  SamplingParams p;
  p.temperature = t;
  return p;
}

std::vector<float> random_logits(int V, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> x(V);
  for (float& v : x) v = nd(rng);
  return x;
}

// ---- Philox, uniform, seeds ----

TEST(Philox, KnownAnswerVectors) {
  // Random123's tests/kat_vectors, the three "philox4x32 10" lines: counter, key → output.
  struct Kat {
    PhiloxCounter ctr;
    PhiloxKey key;
    PhiloxCounter out;
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) EXPECT_EQ(philox4x32_10(k.ctr, k.key), k.out);
  static_assert(philox4x32_10({0, 0, 0, 0}, {0, 0})[0] == 0x6627e8d5u);
}

TEST(Philox, BlockLayout) {
  // key = seed (low word first), counter = token index in words 0-1.
  const uint64_t seed = 0x299f31d0a4093822ull, index = 0x85a308d3243f6a88ull;
  EXPECT_EQ(philox_block(seed, index),
            philox4x32_10({0x243f6a88, 0x85a308d3, 0, 0}, {0xa4093822, 0x299f31d0}));
  EXPECT_NE(philox_block(seed, 1), philox_block(seed, 2));
  EXPECT_NE(philox_block(1, 7), philox_block(2, 7));
}

TEST(Philox, Uniform24) {
  EXPECT_EQ(uniform24(0), 0.0f);
  EXPECT_EQ(uniform24(0xffffffffu), 1.0f - 0x1p-24f);
  EXPECT_EQ(uniform24(0x80000000u), 0.5f);
  // Statistical sanity over the token-index stream: mean and a 16-bin histogram.
  const int N = 1 << 16;
  double sum = 0;
  std::vector<int> bins(16, 0);
  for (int i = 0; i < N; ++i) {
    const float u = uniform24(philox_block(12345, static_cast<uint64_t>(i))[0]);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    ++bins[static_cast<int>(u * 16)];
  }
  EXPECT_NEAR(sum / N, 0.5, 0.01);
  double chi2 = 0, expect = N / 16.0;
  for (int b : bins) chi2 += (b - expect) * (b - expect) / expect;
  EXPECT_LT(chi2, 60.0);  // 15 dof: p < 1e-6 above this
}

TEST(Seeds, DeriveSeed) {
  // splitmix64 seeded with 0: its first two outputs (the reference generator's known values).
  EXPECT_EQ(derive_seed(0, 0), 0xe220a8397b1dcdafull);
  EXPECT_EQ(derive_seed(0, 1), 0x6e789e6aa1b965f4ull);
  for (uint64_t seed : {0ull, 1ull, 42ull, 0xffffffffffffffffull}) {
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < 10000; ++i) seen.insert(derive_seed(seed, i));
    EXPECT_EQ(seen.size(), 10000u);
  }
  EXPECT_NE(derive_seed(1, 0), derive_seed(2, 0));
  // draw_seed is the one nondeterministic call; two draws colliding would mean a broken source.
  EXPECT_NE(draw_seed(), draw_seed());
}

// ---- validate() ----

TEST(Validate, AcceptsDefaultsAndTypicalValues) {
  EXPECT_NO_THROW(validate(SamplingParams{}));
  SamplingParams p;
  p.temperature = 0.7f;
  p.top_k = 40;
  p.top_p = 0.9f;
  p.min_p = 0.05f;
  p.repetition_penalty = 1.1f;
  p.frequency_penalty = -2.0f;
  p.presence_penalty = 2.0f;
  p.logprobs = 20;
  p.n = 4;
  p.stop = {"\n\n"};
  p.stop_token_ids = {0, 2};
  EXPECT_NO_THROW(validate(p));
}

TEST(Validate, RejectsEachOutOfRangeField) {
  auto expect_error = [](auto set, const char* field) {
    SamplingParams p;
    set(p);
    try {
      validate(p);
      ADD_FAILURE() << field << ": no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  expect_error([](SamplingParams& p) { p.temperature = -0.1f; }, "temperature");
  expect_error([](SamplingParams& p) { p.temperature = NAN; }, "temperature");
  expect_error([](SamplingParams& p) { p.temperature = INFINITY; }, "temperature");
  expect_error([](SamplingParams& p) { p.top_k = -1; }, "top_k");
  expect_error([](SamplingParams& p) { p.top_p = 0.0f; }, "top_p");
  expect_error([](SamplingParams& p) { p.top_p = 1.5f; }, "top_p");
  expect_error([](SamplingParams& p) { p.top_p = NAN; }, "top_p");
  expect_error([](SamplingParams& p) { p.min_p = -0.1f; }, "min_p");
  expect_error([](SamplingParams& p) { p.min_p = 1.01f; }, "min_p");
  expect_error([](SamplingParams& p) { p.min_p = NAN; }, "min_p");
  expect_error([](SamplingParams& p) { p.repetition_penalty = 0.0f; }, "repetition_penalty");
  expect_error([](SamplingParams& p) { p.repetition_penalty = -1.0f; }, "repetition_penalty");
  expect_error([](SamplingParams& p) { p.repetition_penalty = NAN; }, "repetition_penalty");
  expect_error([](SamplingParams& p) { p.frequency_penalty = 2.5f; }, "frequency_penalty");
  expect_error([](SamplingParams& p) { p.frequency_penalty = NAN; }, "frequency_penalty");
  expect_error([](SamplingParams& p) { p.presence_penalty = -3.0f; }, "presence_penalty");
  expect_error([](SamplingParams& p) { p.max_tokens = 0; }, "max_tokens");
  expect_error([](SamplingParams& p) { p.logprobs = -1; }, "logprobs");
  expect_error([](SamplingParams& p) { p.logprobs = 21; }, "logprobs");
  expect_error([](SamplingParams& p) { p.n = 0; }, "n =");
  expect_error([](SamplingParams& p) { p.n = kMaxCompletions + 1; }, "n =");
  expect_error([](SamplingParams& p) { p.stop = {"ok", ""}; }, "stop[1]");
  expect_error([](SamplingParams& p) { p.stop_token_ids = {3, -1}; }, "stop_token_ids[1]");
}

TEST(Sampler, RejectsBadInputs) {
  Sampler s;
  std::vector<float> x = {1, 2, 3};
  const SamplingParams p = temp(1.0f);
  EXPECT_THROW(draw(s, {1, NAN, 3}, p, 1, 0), Error);
  EXPECT_THROW(draw(s, {1, INFINITY, 3}, p, 1, 0), Error);
  EXPECT_THROW(draw(s, {-INFINITY, -INFINITY}, p, 1, 0), Error);
  EXPECT_THROW(draw(s, x, p, 1, -1), Error);
  const std::vector<int32_t> bad_history = {0, 3};
  EXPECT_THROW(draw(s, x, p, 1, 0, bad_history, 1), Error);
  const std::vector<int32_t> history = {0, 1};
  EXPECT_THROW(draw(s, x, p, 1, 0, history, 3), Error);
  EXPECT_THROW(s.sample(nullptr, 3, p, 1, 0, {}, 0), Error);
  SamplingParams bad = p;
  bad.top_p = 2.0f;
  EXPECT_THROW(draw(s, x, bad, 1, 0), Error);
  // After errors the workspace still works (penalty scratch left clean).
  SamplingParams rep = p;
  rep.repetition_penalty = 1.5f;
  EXPECT_NO_THROW(draw(s, x, rep, 1, 0, history, 1));
}

// ---- greedy and filters on hand-made logits ----

TEST(Sampler, GreedyIsArgmaxWithLowerIdOnTies) {
  Sampler s;
  EXPECT_EQ(draw(s, {0.5f, 3.0f, 1.0f, 3.0f}, temp(0), 1, 0).token, 1);
  EXPECT_EQ(draw(s, {-INFINITY, -2.0f, -1.0f, -1.0f}, temp(0), 1, 0).token, 2);
  EXPECT_EQ(draw(s, {-0.0f, 0.0f}, temp(0), 1, 0).token, 0);
  // Temperature 0 ignores the filters and the seed.
  SamplingParams p = temp(0);
  p.top_k = 3;
  p.top_p = 0.5f;
  p.min_p = 0.5f;
  for (uint64_t seed = 0; seed < 20; ++seed)
    EXPECT_EQ(draw(s, {1, 5, 5, 2}, p, seed, seed).token, 1);
}

TEST(Sampler, TopK1AndTinyTopPAndMinP1AreGreedy) {
  Sampler s;
  for (uint64_t trial = 0; trial < 20; ++trial) {
    const std::vector<float> x = random_logits(1000, trial, 2.0f);
    const int32_t greedy = draw(s, x, temp(0), 0, 0).token;
    for (int64_t i = 0; i < 50; ++i) {
      SamplingParams k1 = temp(1.5f), tiny_p = temp(1.5f), min1 = temp(1.5f);
      k1.top_k = 1;
      tiny_p.top_p = 1e-6f;
      min1.min_p = 1.0f;
      EXPECT_EQ(draw(s, x, k1, trial, i).token, greedy);
      EXPECT_EQ(draw(s, x, tiny_p, trial, i).token, greedy);
      EXPECT_EQ(draw(s, x, min1, trial, i).token, greedy);
    }
  }
}

TEST(Sampler, TiesBrokenByLowerId) {
  Sampler s;
  // Tokens 2, 5 and 7 share the top logit: top_k = 1 and tiny top_p keep only the lowest id.
  std::vector<float> x = {0, 1, 4, 0, 2, 4, 1, 4};
  for (int64_t i = 0; i < 100; ++i) {
    SamplingParams k1 = temp(1.0f), tiny_p = temp(1.0f);
    k1.top_k = 1;
    tiny_p.top_p = 1e-3f;
    EXPECT_EQ(draw(s, x, k1, 9, i).token, 2);
    EXPECT_EQ(draw(s, x, tiny_p, 9, i).token, 2);
  }
  // -0 and +0 are the same logit: the lower id wins.
  SamplingParams k1 = temp(1.0f);
  k1.top_k = 1;
  EXPECT_EQ(draw(s, {-1.0f, 0.0f, -0.0f, 0.0f}, k1, 9, 0).token, 1);
  EXPECT_EQ(draw(s, {-1.0f, -0.0f, 0.0f, -0.0f}, k1, 9, 0).token, 1);
  // top_k = 2 keeps ids 2 and 5 (not 7); min_p = 1 keeps all three tied tokens.
  std::set<int32_t> k2, min1;
  for (int64_t i = 0; i < 300; ++i) {
    SamplingParams p = temp(1.0f);
    p.top_k = 2;
    k2.insert(draw(s, x, p, 3, i).token);
    p = temp(1.0f);
    p.min_p = 1.0f;
    min1.insert(draw(s, x, p, 3, i).token);
  }
  EXPECT_EQ(k2, (std::set<int32_t>{2, 5}));
  EXPECT_EQ(min1, (std::set<int32_t>{2, 5, 7}));
}

std::set<int32_t> support(Sampler& s, const std::vector<float>& x, const SamplingParams& p,
                          int draws = 2000) {
  std::set<int32_t> seen;
  for (int64_t i = 0; i < draws; ++i) seen.insert(draw(s, x, p, 77, i).token);
  return seen;
}

TEST(Sampler, MinPAndTopPSemantics) {
  Sampler s;
  // Probabilities 0.5, 0.3, 0.15, 0.05 (token order shuffled: ids 3, 0, 2, 1).
  const std::vector<float> x = {std::log(0.3f), std::log(0.05f), std::log(0.15f), std::log(0.5f)};
  EXPECT_EQ(support(s, x, temp(1)), (std::set<int32_t>{0, 1, 2, 3}));
  SamplingParams p = temp(1);
  p.min_p = 0.2f;  // keeps p >= 0.1
  EXPECT_EQ(support(s, x, p), (std::set<int32_t>{0, 2, 3}));
  p.min_p = 0.5f;  // keeps p >= 0.25
  EXPECT_EQ(support(s, x, p), (std::set<int32_t>{0, 3}));
  p = temp(1);
  p.top_p = 0.75f;  // 0.5 < 0.75 <= 0.8
  EXPECT_EQ(support(s, x, p), (std::set<int32_t>{0, 3}));
  p.top_p = 0.85f;  // 0.8 < 0.85 <= 0.95
  EXPECT_EQ(support(s, x, p), (std::set<int32_t>{0, 2, 3}));
  p.top_k = 2;  // top-k before top-p: 0.5/0.8 = 0.625 < 0.85 → both kept
  EXPECT_EQ(support(s, x, p), (std::set<int32_t>{0, 3}));
  // top-p after min-p uses the renormalised survivors: min_p 0.2 leaves 0.5, 0.3, 0.15 (sum
  // 0.95); top_p 0.8 needs 0.76 of mass → 0.5 + 0.3 suffices.
  p = temp(1);
  p.min_p = 0.2f;
  p.top_p = 0.8f;
  EXPECT_EQ(support(s, x, p), (std::set<int32_t>{0, 3}));
  // The top-p boundary is exact: two equal tokens each hold exactly half, so top_p = 0.5 keeps
  // one (the lower id) and the next float above 0.5 keeps both.
  const std::vector<float> halves = {-60.0f, 2.0f, 2.0f};
  p = temp(1);
  p.top_p = 0.5f;
  EXPECT_EQ(support(s, halves, p), (std::set<int32_t>{1}));
  p.top_p = std::nextafter(0.5f, 1.0f);
  EXPECT_EQ(support(s, halves, p), (std::set<int32_t>{1, 2}));
  // Masked tokens are never drawn.
  std::vector<float> masked = x;
  masked[3] = -INFINITY;
  EXPECT_EQ(support(s, masked, temp(5)), (std::set<int32_t>{0, 1, 2}));
}

// ---- determinism and the distribution ----

TEST(Sampler, SameInputsSameToken) {
  const std::vector<float> x = random_logits(5000, 1, 3.0f);
  SamplingParams p = temp(0.8f);
  p.top_p = 0.95f;
  p.top_k = 200;
  Sampler a, b;
  std::set<int32_t> distinct;
  for (int64_t i = 0; i < 200; ++i) {
    const SampleResult ra = draw(a, x, p, 1234, i);
    const SampleResult rb = draw(b, x, p, 1234, i);
    EXPECT_EQ(ra.token, rb.token);
    EXPECT_EQ(std::memcmp(&ra.logprob, &rb.logprob, sizeof(float)), 0);
    EXPECT_EQ(draw(a, x, p, 1234, i).token, ra.token);  // reusing the workspace
    distinct.insert(ra.token);
  }
  EXPECT_GT(distinct.size(), 5u);  // different token indices draw differently
}

// Softmax of logits/temperature in fp64 (the temperature divide done in fp32 as the sampler does).
std::vector<double> softmax_ref(const std::vector<float>& x, float temperature) {
  std::vector<double> p(x.size());
  double m = -INFINITY;
  for (float v : x) m = std::max(m, static_cast<double>(v / temperature));
  double sum = 0;
  for (size_t i = 0; i < x.size(); ++i)
    sum += p[i] = std::exp(static_cast<double>(x[i] / temperature) - m);
  for (double& v : p) v /= sum;
  return p;
}

double chi_square(const std::vector<int>& counts, const std::vector<double>& prob, int n) {
  double chi2 = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = prob[i] * n;
    if (e == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0";
      continue;
    }
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi2;
}

TEST(Sampler, DistributionMatchesSoftmax) {
  Sampler s;
  const std::vector<float> x = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.5f, 0.0f, -0.5f};
  const int N = 200000;
  for (float t : {1.0f, 0.7f, 1.6f}) {
    const std::vector<double> prob = softmax_ref(x, t);
    std::vector<int> by_index(x.size(), 0), by_seed(x.size(), 0);
    for (int i = 0; i < N; ++i) {
      ++by_index[draw(s, x, temp(t), 2024, i).token];               // one seed, many indices
      ++by_seed[draw(s, x, temp(t), derive_seed(99, i), 5).token];  // many seeds, one index
    }
    // 7 degrees of freedom: chi² > 40 has p ≈ 1e-6; the draws are fixed, so this never flakes.
    EXPECT_LT(chi_square(by_index, prob, N), 40.0) << "temperature " << t;
    EXPECT_LT(chi_square(by_seed, prob, N), 40.0) << "temperature " << t;
  }
  // With top_k = 3: the renormalised top three only.
  SamplingParams p = temp(1.0f);
  p.top_k = 3;  // tokens 4 (3.0), 5 (2.5), 1 (2.0)
  std::vector<double> prob(x.size(), 0.0);
  const double z = std::exp(3.0) + std::exp(2.5) + std::exp(2.0);
  prob[4] = std::exp(3.0) / z;
  prob[5] = std::exp(2.5) / z;
  prob[1] = std::exp(2.0) / z;
  std::vector<int> counts(x.size(), 0);
  for (int i = 0; i < N; ++i) ++counts[draw(s, x, p, 7, i).token];
  EXPECT_LT(chi_square(counts, prob, N), 30.0);  // 2 dof
}

// ---- penalties ----

TEST(Sampler, PenaltiesMatchFp64Reference) {
  const int V = 300;
  std::vector<float> x = random_logits(V, 5, 4.0f);
  x[17] = 0.0f;
  x[18] = -INFINITY;
  std::mt19937 rng(8);
  std::vector<int32_t> history;
  for (int i = 0; i < 400; ++i) history.push_back(static_cast<int32_t>(rng() % 60) * 5 % V);
  history.push_back(17);
  history.push_back(18);
  const size_t n_prompt = 150;
  SamplingParams p;
  p.repetition_penalty = 1.3f;
  p.frequency_penalty = 0.45f;
  p.presence_penalty = -0.7f;

  std::vector<double> ref(x.begin(), x.end());
  std::vector<int> gen(V, 0);
  std::vector<bool> seen(V, false);
  for (size_t i = 0; i < history.size(); ++i) {
    seen[history[i]] = true;
    if (i >= n_prompt) ++gen[history[i]];
  }
  for (int t = 0; t < V; ++t) {
    if (seen[t])
      ref[t] = ref[t] < 0 ? ref[t] * p.repetition_penalty : ref[t] / p.repetition_penalty;
    if (gen[t] > 0)
      ref[t] -= gen[t] * static_cast<double>(p.frequency_penalty) + p.presence_penalty;
  }
  Sampler s;
  std::vector<float> got = x;
  s.apply_penalties(got.data(), V, p, history, n_prompt);
  int changed = 0;
  for (int t = 0; t < V; ++t) {
    if (!seen[t]) {
      EXPECT_EQ(std::memcmp(&got[t], &x[t], 4), 0) << "token " << t << " has no history";
      continue;
    }
    ++changed;
    if (std::isinf(ref[t])) {
      EXPECT_EQ(got[t], ref[t]);
      continue;
    }
    // Three fp32 roundings at most: a few ulp of the largest intermediate.
    const double scale = std::max({std::fabs(ref[t]), std::fabs(static_cast<double>(x[t])), 1.0});
    EXPECT_NEAR(got[t], ref[t], 4 * scale * FLT_EPSILON) << "token " << t;
  }
  EXPECT_GT(changed, 30);

  // The penalty changes the greedy choice exactly as the reference says.
  std::vector<float> y = {5.0f, 4.0f, 1.0f};
  const std::vector<int32_t> h = {0, 0, 0};
  SamplingParams g;
  g.frequency_penalty = 0.4f;  // 5 - 1.2 = 3.8 < 4
  EXPECT_EQ(draw(s, y, g, 0, 0, h, 0).token, 1);
  EXPECT_EQ(draw(s, y, g, 0, 0, h, 3).token, 0);  // all in the prompt: frequency does not apply
  g = SamplingParams{};
  g.repetition_penalty = 1.3f;  // 5 / 1.3 = 3.85 < 4, prompt tokens count
  EXPECT_EQ(draw(s, y, g, 0, 0, h, 3).token, 1);
  // Scratch is clean between calls: with no history the penalties do nothing.
  EXPECT_EQ(draw(s, y, g, 0, 0, {}, 0).token, 0);
}

TEST(Sampler, ExtremeScalesStayFiniteAndDeterministic) {
  Sampler s;
  const std::vector<float> x = {3.0e38f, -3.0e38f, 1.0f, 3.0e38f, -INFINITY};
  SamplingParams p = temp(1e-30f);  // x / T overflows: clamped, so tokens 0 and 3 tie
  EXPECT_EQ(support(s, x, p, 200), (std::set<int32_t>{0, 3}));
  p = temp(3.0e38f);  // everything ≈ 0: near-uniform over the finite tokens
  EXPECT_EQ(support(s, x, p, 400), (std::set<int32_t>{0, 1, 2, 3}));
  SamplingParams rep = temp(1.0f);
  rep.repetition_penalty = 1e-30f;  // 3e38 / 1e-30 overflows: clamped
  const std::vector<int32_t> h = {0, 2};
  EXPECT_EQ(draw(s, x, rep, 5, 0, h, 2).token, 0);
}

// ---- logprobs ----

TEST(Sampler, LogprobsAreRawLogSoftmax) {
  Sampler s;
  std::vector<float> x = random_logits(2000, 11, 5.0f);
  x[3] = x[10] = x[700] = 9.0f;  // a three-way tie at the top
  x[42] = -INFINITY;
  double m = -INFINITY, sum = 0;
  for (float v : x) m = std::max(m, static_cast<double>(v));
  for (float v : x) sum += std::exp(static_cast<double>(v) - m);
  const double lse = m + std::log(sum);

  SamplingParams p = temp(0.9f);
  p.logprobs = 20;
  p.repetition_penalty = 2.0f;  // penalties and temperature must not leak into logprobs
  p.top_k = 50;
  const std::vector<int32_t> history = {3, 10, 5, 6};
  for (int64_t i = 0; i < 30; ++i) {
    const SampleResult r = draw(s, x, p, 31, i, history, 2);
    const double want = static_cast<double>(x[r.token]) - lse;
    const double ulp =
        std::max(std::fabs(static_cast<double>(x[r.token])), std::fabs(lse)) * FLT_EPSILON;
    EXPECT_NEAR(r.logprob, want, 4 * ulp);
    ASSERT_EQ(r.top.size(), 20u);
    // The 20 best by (logprob desc, id asc), each within a few ulp of the reference.
    std::vector<int32_t> order(x.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
    for (size_t k = 0; k < 20; ++k) {
      EXPECT_EQ(r.top[k].token, order[k]) << "rank " << k;
      const double ref = static_cast<double>(x[r.top[k].token]) - lse;
      EXPECT_NEAR(r.top[k].logprob, ref,
                  4 * std::max(std::fabs(ref), std::fabs(lse)) * FLT_EPSILON);
      if (k > 0) {
        EXPECT_TRUE(
            r.top[k - 1].logprob > r.top[k].logprob ||
            (r.top[k - 1].logprob == r.top[k].logprob && r.top[k - 1].token < r.top[k].token));
      }
    }
  }
  EXPECT_EQ(draw(s, x, temp(0), 0, 0).top.size(), 0u);
  p.logprobs = 5;
  const std::vector<float> tiny = {0.0f, 1.0f, 1.0f};  // fewer tokens than asked
  const SampleResult r = draw(s, tiny, p, 0, 0);
  ASSERT_EQ(r.top.size(), 3u);
  EXPECT_EQ(r.top[0].token, 1);
  EXPECT_EQ(r.top[1].token, 2);
  EXPECT_EQ(r.top[2].token, 0);
}

// ---- the selection walk equals the literal algorithm, bit for bit ----

// The pipeline exactly as sampler.h states it, the slow way: every unmasked token a candidate,
// one full sort by (z desc, id asc), then top-k, weights, min-p, fixed-point masses, top-p by
// an exact rational comparison, inverse CDF by a running sum. No selection, no pre-filter.
int32_t literal_sample(std::vector<float> x, const SamplingParams& p, uint64_t seed, int64_t index,
                       std::span<const int32_t> history, size_t n_prompt) {
  using u128 = unsigned __int128;
  const int32_t V = static_cast<int32_t>(x.size());
  const std::vector<float> raw = x;
  Sampler pen;
  pen.apply_penalties(x.data(), V, p, history, n_prompt);
  std::vector<int32_t> ids;
  float m = -INFINITY;
  for (int32_t i = 0; i < V; ++i) {
    if (raw[i] == -INFINITY) continue;
    const float z = std::clamp(x[i] / p.temperature, -FLT_MAX, FLT_MAX);
    x[i] = z;
    m = std::max(m, z);
    ids.push_back(i);
  }
  std::sort(ids.begin(), ids.end(),
            [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < ids.size()) ids.resize(p.top_k);
  std::vector<float> w;
  for (int32_t id : ids) w.push_back(cpu::det_expf(x[id] - m));
  std::vector<int32_t> kept_ids;
  std::vector<uint64_t> q;
  for (size_t j = 0; j < ids.size(); ++j) {
    if (p.min_p > 0 && w[j] < p.min_p * w[0]) continue;
    kept_ids.push_back(ids[j]);
    q.push_back(static_cast<uint64_t>(std::ldexp(static_cast<double>(w[j]), 40)));
  }
  uint64_t total = 0;
  for (uint64_t v : q) total += v;
  uint64_t kept = total;
  if (p.top_p <
      1.0f) {  // top_p = mant / 2^k exactly; keep the first prefix with cum >= top_p·total
    int e = 0;
    const uint64_t mant = static_cast<uint64_t>(std::ldexp(std::frexp(p.top_p, &e), 24));
    const int k = 24 - e;
    EXPECT_LT(k, 60);
    uint64_t cum = 0;
    for (uint64_t v : q) {
      cum += v;
      if ((static_cast<u128>(cum) << k) >= static_cast<u128>(mant) * total) break;
    }
    kept = cum;
  }
  const uint64_t u24 = philox_block(seed, static_cast<uint64_t>(index))[0] >> 8;
  const uint64_t target = static_cast<uint64_t>((static_cast<u128>(kept) * u24) >> 24);
  uint64_t cum = 0;
  for (size_t j = 0; j < q.size(); ++j)
    if ((cum += q[j]) > target) return kept_ids[j];
  ADD_FAILURE() << "inverse CDF fell off the end";
  return -1;
}

TEST(Sampler, SelectionEqualsFullSort) {
  Sampler s;
  struct Shape {
    int V;
    float scale;  // logit spread: small = flat (every token matters), large = peaked
  };
  const Shape shapes[] = {{50, 1.0f},    {3000, 0.5f},   {3000, 6.0f},
                          {20000, 5.0f}, {151936, 1.5f}, {151936, 0.05f}};
  std::vector<SamplingParams> params;
  for (float t : {0.6f, 1.0f, 1.7f})
    for (int k : {0, 1, 40, 5000})
      for (float top_p : {1.0f, 0.9f, 0.3f})
        for (float min_p : {0.0f, 1e-9f, 0.05f}) {
          SamplingParams p = temp(t);
          p.top_k = k;
          p.top_p = top_p;
          p.min_p = min_p;
          params.push_back(p);
        }
  params[7].repetition_penalty = 1.4f;
  params[20].frequency_penalty = 1.0f;
  params[33].presence_penalty = -1.5f;
  int checked = 0, case_id = 0, shape_id = 0;
  for (const Shape& sh : shapes) {
    ++shape_id;
    std::vector<float> x = random_logits(sh.V, 1000 + sh.V, sh.scale);
    for (int i = 0; i < sh.V; i += 97) x[i] = x[0];  // many exact ties
    x[sh.V / 2] = -INFINITY;
    std::vector<int32_t> history;
    for (int i = 0; i < 64; ++i) history.push_back((i * 7919) % sh.V);
    for (size_t pi = 0; pi < params.size(); ++pi, ++case_id) {
      // Fewer cases on the large vocabularies: the literal reference sorts all of it each time.
      const bool large = sh.V > 10000;
      if (large && pi % 3 != static_cast<size_t>(shape_id) % 3) continue;
      const int draws = large ? 1 : 4;
      for (int d = 0; d < draws; ++d) {
        const uint64_t seed = derive_seed(case_id, d);
        const int64_t index = d * 13 + case_id;
        const int32_t want = literal_sample(x, params[pi], seed, index, history, 32);
        const int32_t got = draw(s, x, params[pi], seed, index, history, 32).token;
        ASSERT_EQ(got, want) << "V " << sh.V << " scale " << sh.scale << " params #" << pi;
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 3 * 108 * 4 + 3 * 36);
}

}  // namespace
}  // namespace detinfer
