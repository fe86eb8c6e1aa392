// CudaOps attention: against an fp64 softmax reference over a ragged batch, and bitwise
// invariance of a sequence's outputs under one-shot prefill, token-by-token decode, chunked
// prefill among other sequences (before and after it in the step), other block placements and
// another block size.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/half.h"
#include "cuda_ops_test_util.h"

using namespace detinfer;
using namespace cuda_ops_test;

namespace {

ModelConfig attn_config(int head_dim) {
  ModelConfig c;
  c.n_layers = 2;
  c.d_model = 8 * head_dim;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.head_dim = head_dim;
  c.d_ff = 64;
  c.vocab_size = 10;
  c.max_context = 4096;
  c.rope.rotary_dim = head_dim;
  return c;
}

KvCacheShape attn_kv(const ModelConfig& c, int block_size, int64_t num_blocks) {
  KvCacheShape kv;
  kv.n_layers = c.n_layers;
  kv.num_blocks = num_blocks;
  kv.block_size = block_size;
  kv.n_kv_heads = c.n_kv_heads;
  kv.head_dim = c.head_dim;
  return kv;
}

// q, k, v of the token at `pos` of a sequence whose contents are numbered `content`: a function
// of (content, pos) only, so every scenario feeds a sequence the same vectors.
struct TokenQKV {
  std::vector<float> q, k, v;
};
TokenQKV token_qkv(const ModelConfig& c, uint64_t content, int32_t pos) {
  const uint64_t seed = content * 1000003ull + static_cast<uint64_t>(pos) * 7919ull + 1;
  TokenQKV t;
  t.q = random_normal(int64_t{c.n_heads} * c.head_dim, seed);
  t.k = random_normal(int64_t{c.n_kv_heads} * c.head_dim, seed + 1);
  t.v = random_normal(int64_t{c.n_kv_heads} * c.head_dim, seed + 2);
  return t;
}

struct Span {
  int seq;       // index into the scenario's sequences
  int32_t from;  // positions [from, to)
  int32_t to;
};

struct Scenario {
  int block_size = 16;
  int64_t num_blocks = 0;
  std::vector<uint64_t> contents;                 // per sequence
  std::vector<std::vector<int32_t>> tables;       // per sequence
  std::vector<std::vector<Span>> steps;           // token order of each step as listed
};

// Runs the scenario on a fresh CudaOps; returns the attention output of every token of
// sequence `target`, indexed by position: out[pos][n_heads * head_dim].
std::vector<std::vector<float>> run_scenario(const ModelConfig& c, const Scenario& s, int target,
                                             int layer) {
  CudaOps ops(0);
  ops.init(c, attn_kv(c, s.block_size, s.num_blocks));
  const int64_t qd = int64_t{c.n_heads} * c.head_dim, kd = int64_t{c.n_kv_heads} * c.head_dim;
  std::vector<std::vector<float>> out;
  for (const auto& step : s.steps) {
    StepBatch b;
    b.block_tables = s.tables;
    std::vector<float> q, k, v;
    for (const Span& sp : step)
      for (int32_t p = sp.from; p < sp.to; ++p) {
        b.tokens.push_back(0);
        b.pos.push_back(p);
        b.seq.push_back(sp.seq);
        const TokenQKV t = token_qkv(c, s.contents[sp.seq], p);
        q.insert(q.end(), t.q.begin(), t.q.end());
        k.insert(k.end(), t.k.begin(), t.k.end());
        v.insert(v.end(), t.v.begin(), t.v.end());
      }
    const int64_t T = b.n_tokens();
    DeviceArray dq(ops, 0, T * qd), dk(ops, 1, T * kd), dv(ops, 2, T * kd), dout(ops, 3, T * qd);
    dq.upload(q);
    dk.upload(k);
    dv.upload(v);
    dout.poison();
    ops.begin_step(b);
    ops.attention(layer, dq.ptr, dk.ptr, dv.ptr, dout.ptr);
    const std::vector<float> o = dout.download(T * qd);
    for (int64_t t = 0; t < T; ++t) {
      if (b.seq[t] != target) continue;
      const size_t p = static_cast<size_t>(b.pos[t]);
      if (out.size() <= p) out.resize(p + 1);
      out[p].assign(o.begin() + t * qd, o.begin() + (t + 1) * qd);
    }
  }
  return out;
}

// Distinct random blocks for each sequence.
std::vector<std::vector<int32_t>> random_tables(const std::vector<int32_t>& lengths, int block_size,
                                                int64_t num_blocks, uint32_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<std::vector<int32_t>> tables;
  size_t next = 0;
  for (int32_t len : lengths) {
    std::vector<int32_t> t;
    for (int32_t b = 0; b < (len + block_size - 1) / block_size; ++b) t.push_back(ids.at(next++));
    tables.push_back(t);
  }
  return tables;
}

class CudaOpsAttention : public ::testing::TestWithParam<int> {};

TEST_P(CudaOpsAttention, MatchesFp64Reference) {
  CUDA_OPS_REQUIRE_GPU();
  const ModelConfig c = attn_config(GetParam());
  Scenario s;
  s.num_blocks = 64;
  const std::vector<int32_t> lengths = {1, 17, 100, 33};
  s.contents = {1, 2, 3, 4};
  s.tables = random_tables(lengths, s.block_size, s.num_blocks, 5);
  // One step, tokens of the sequences interleaved.
  std::vector<Span> step;
  for (int32_t p = 0; p < 100; ++p)
    for (int q = 0; q < 4; ++q)
      if (p < lengths[q]) step.push_back({q, p, p + 1});
  s.steps = {step};
  const int hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  const double scale = 1.0f / std::sqrt(static_cast<float>(hd));
  double worst = 0;
  for (int q = 0; q < 4; ++q) {
    const auto out = run_scenario(c, s, q, 1);
    ASSERT_EQ(static_cast<int32_t>(out.size()), lengths[q]);
    // The GPU attends over bf16 q, k and v (the cache is bf16): the reference takes the same
    // rounded inputs and computes the rest in fp64.
    std::vector<TokenQKV> toks;
    auto round_bf16 = [](std::vector<float>& v) {
      for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
    };
    for (int32_t p = 0; p < lengths[q]; ++p) {
      toks.push_back(token_qkv(c, s.contents[q], p));
      round_bf16(toks.back().q), round_bf16(toks.back().k), round_bf16(toks.back().v);
    }
    for (int32_t p = 0; p < lengths[q]; ++p)
      for (int h = 0; h < c.n_heads; ++h) {
        const int kvh = h / group;
        std::vector<double> sc(p + 1);
        double mx = -1e300;
        for (int32_t j = 0; j <= p; ++j) {
          double d = 0;
          for (int i = 0; i < hd; ++i)
            d += static_cast<double>(toks[p].q[h * hd + i]) * toks[j].k[kvh * hd + i];
          sc[j] = d * scale;
          mx = std::max(mx, sc[j]);
        }
        double l = 0;
        for (double& x : sc) l += (x = std::exp(x - mx));
        for (int i = 0; i < hd; ++i) {
          double ref = 0, ref_abs = 0;
          for (int32_t j = 0; j <= p; ++j) {
            ref += sc[j] * toks[j].v[kvh * hd + i];
            ref_abs += sc[j] * std::fabs(toks[j].v[kvh * hd + i]);
          }
          ref /= l, ref_abs /= l;
          const double got = out[p][h * hd + i];
          ASSERT_TRUE(std::isfinite(got)) << "seq " << q << " pos " << p << " head " << h;
          // p is rounded to bf16 for the P·V product (half an ulp: 2^-9 relative) while l sums
          // the fp32 p: at most about 2·2^-9 of Σ p|v| / l, plus fp32 rounding of the sums.
          ASSERT_NEAR(got, ref, std::ldexp(ref_abs, -7) + 1e-5 * (1.0 + std::fabs(ref)))
              << "seq " << q << " pos " << p << " head " << h << " elem " << i;
          worst = std::max(worst, std::fabs(got - ref));
        }
      }
  }
  std::printf("[attention hd=%d] max |gpu - fp64| = %.3g\n", hd, worst);
}

TEST_P(CudaOpsAttention, SequenceOutputIsBitwiseInvariant) {
  CUDA_OPS_REQUIRE_GPU();
  const ModelConfig c = attn_config(GetParam());
  constexpr int32_t P = 150;  // the target sequence: 10 tiles, the last one partial
  const std::vector<uint64_t> contents = {42, 7, 8, 9};
  const std::vector<int32_t> lengths = {P, 301, 40, 5};

  // S1: the whole prompt in one step.
  Scenario one;
  one.num_blocks = 64;
  one.contents = {42};
  one.tables = random_tables({P}, 16, one.num_blocks, 1);
  one.steps = {{{0, 0, P}}};
  const auto ref = run_scenario(c, one, 0, 0);
  ASSERT_EQ(static_cast<int32_t>(ref.size()), P);

  auto expect_same = [&](const std::vector<std::vector<float>>& got, const char* what) {
    ASSERT_EQ(got.size(), ref.size()) << what;
    for (int32_t p = 0; p < P; ++p) {
      const int64_t d = first_bit_difference(got[p].data(), ref[p].data(), static_cast<int64_t>(ref[p].size()));
      ASSERT_EQ(d, -1) << what << ": position " << p << " element " << d << " is " << got[p][d]
                       << ", one-shot prefill gave " << ref[p][d];
    }
  };

  // S2: token by token (decode), alone.
  Scenario decode = one;
  decode.steps.clear();
  for (int32_t p = 0; p < P; ++p) decode.steps.push_back({{0, p, p + 1}});
  expect_same(run_scenario(c, decode, 0, 0), "decode");

  // S3: chunks of 7 among three other sequences (prefilling and decoding, before and after it
  // in the step), other block placement.
  Scenario mixed;
  mixed.num_blocks = 64;
  mixed.contents = contents;
  mixed.tables = random_tables(lengths, 16, mixed.num_blocks, 2);
  {
    int32_t a = 0, b = 0, cc = 0, d = 0;
    while (a < P) {
      std::vector<Span> step;
      if (b < lengths[1]) step.push_back({1, b, std::min(lengths[1], b + 13)}), b = std::min(lengths[1], b + 13);
      if (cc < lengths[2]) step.push_back({2, cc, cc + 1}), ++cc;
      step.push_back({0, a, std::min(P, a + 7)});
      a = std::min(P, a + 7);
      if (d < lengths[3]) step.push_back({3, d, d + 1}), ++d;
      mixed.steps.push_back(step);
    }
  }
  expect_same(run_scenario(c, mixed, 0, 1), "chunks of 7 among others");

  // S4: uneven chunks (1, 64, 16, 17, rest), the target in the first or last slot of the step.
  Scenario uneven = mixed;
  uneven.tables = random_tables(lengths, 16, uneven.num_blocks, 3);
  uneven.steps = {{{0, 0, 1}, {1, 0, 200}},
                  {{1, 200, 300}, {0, 1, 65}},
                  {{0, 65, 81}, {2, 0, 40}},
                  {{3, 0, 5}, {0, 81, 98}},
                  {{0, 98, P}, {1, 300, 301}}};
  expect_same(run_scenario(c, uneven, 0, 0), "uneven chunks");

  // S5: another block size (5: blocks do not line up with the 16-position tiles).
  Scenario small_blocks = mixed;
  small_blocks.block_size = 5;
  small_blocks.num_blocks = 200;
  small_blocks.tables = random_tables(lengths, 5, small_blocks.num_blocks, 4);
  expect_same(run_scenario(c, small_blocks, 0, 1), "block size 5");
}

INSTANTIATE_TEST_SUITE_P(HeadDims, CudaOpsAttention, ::testing::Values(16, 64, 80, 128, 256),
                         [](const auto& info) { return "hd" + std::to_string(info.param); });

}  // namespace
