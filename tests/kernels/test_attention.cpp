// Paged attention: fp64 reference, and the result for a (sequence, position) bitwise the same
// however the sequence is fed (whole prompt, decode, chunks), whatever else is in the batch,
// wherever its blocks are, on any thread count and on either path.
#include <algorithm>
#include <limits>
#include <map>
#include <tuple>

#include "common/error.h"
#include "common/thread_pool.h"
#include "kernel_test_util.h"

namespace detinfer::test {
namespace {

struct Shape {
  int n_heads, n_kv_heads, head_dim, block_size;
  int64_t num_blocks = 64;
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
};

// The contents of sequence s at position p: a function of (s, p) only.
std::vector<float> token_vec(int s, int p, int which, int n) {
  return random_floats(
      n, (static_cast<uint64_t>(s) << 40) ^ (static_cast<uint64_t>(p) << 4) ^ which, -1.5f, 1.5f);
}

struct Chunk {
  int seq, first, count;  // positions first .. first+count-1 of seq
};
using Step = std::vector<Chunk>;
using Outputs = std::map<std::pair<int, int>, std::vector<float>>;

// Runs steps (each one kv_write + attention call over the step's tokens) on a fresh cache whose
// unwritten slots are NaN, so that reading one shows up in the output.
Outputs run(const Shape& sh, const std::vector<Step>& steps,
            const std::map<int, std::vector<int32_t>>& tables, ThreadPool& pool) {
  const int64_t cache = sh.num_blocks * sh.block_size * sh.kv_dim();
  std::vector<float> kc(cache, std::numeric_limits<float>::quiet_NaN()), vc = kc;
  cpu::PagedKV kv{kc.data(), vc.data(), sh.num_blocks, sh.block_size, sh.n_kv_heads, sh.head_dim};
  Outputs outs;
  for (const Step& step : steps) {
    std::vector<float> q, k, v;
    std::vector<int32_t> pos;
    std::vector<const int32_t*> tab;
    std::vector<std::pair<int, int>> ids;
    for (const Chunk& c : step)
      for (int p = c.first; p < c.first + c.count; ++p) {
        for (auto [dst, which, n] :
             {std::tuple{&q, 0, sh.q_dim()}, {&k, 1, sh.kv_dim()}, {&v, 2, sh.kv_dim()}}) {
          const std::vector<float> t = token_vec(c.seq, p, which, n);
          dst->insert(dst->end(), t.begin(), t.end());
        }
        pos.push_back(p);
        tab.push_back(tables.at(c.seq).data());
        ids.emplace_back(c.seq, p);
      }
    const int64_t M = static_cast<int64_t>(pos.size());
    std::vector<float> out(M * sh.q_dim());
    cpu::kv_write(kv, k.data(), v.data(), M, pos.data(), tab.data());
    cpu::attention(pool, q.data(), M, pos.data(), tab.data(), kv, sh.n_heads,
                   1.0f / std::sqrt(static_cast<float>(sh.head_dim)), out.data());
    for (int64_t t = 0; t < M; ++t)
      outs[ids[t]] =
          std::vector<float>(out.begin() + t * sh.q_dim(), out.begin() + (t + 1) * sh.q_dim());
  }
  return outs;
}

// Tables of scattered, non-monotonic blocks (16 per sequence, of 64); `variant` gives another
// placement.
std::map<int, std::vector<int32_t>> tables_for(int variant) {
  std::vector<int32_t> blocks(64);
  for (int i = 0; i < 64; ++i) blocks[i] = i;
  std::shuffle(blocks.begin(), blocks.end(), std::mt19937(variant + 1));
  std::map<int, std::vector<int32_t>> t;
  for (int s = 0; s < 3; ++s)
    t[s] = std::vector<int32_t>(blocks.begin() + 16 * s, blocks.begin() + 16 * (s + 1));
  return t;
}

std::vector<Step> whole(int seq, int len) { return {{{seq, 0, len}}}; }
std::vector<Step> decode(int seq, int len) {
  std::vector<Step> s;
  for (int p = 0; p < len; ++p) s.push_back({{seq, p, 1}});
  return s;
}
std::vector<Step> chunks(int seq, const std::vector<int>& sizes) {
  std::vector<Step> s;
  int p = 0;
  for (int n : sizes) {
    s.push_back({{seq, p, n}});
    p += n;
  }
  return s;
}

void expect_same(const Outputs& a, const Outputs& b, int seq, const std::string& what) {
  int compared = 0;
  for (const auto& [id, out] : a) {
    if (id.first != seq) continue;
    auto it = b.find(id);
    ASSERT_NE(it, b.end()) << what;
    ASSERT_TRUE(same_bits(out.data(), it->second.data(), out.size()))
        << what << ": seq " << id.first << " pos " << id.second;
    ++compared;
  }
  EXPECT_GT(compared, 0) << what;
}

class AttentionShape : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionShape, MatchesFp64Reference) {
  const Shape sh = GetParam();
  ThreadPool pool(2);
  const int len = 70;
  const Outputs outs = run(sh, whole(0, len), tables_for(0), pool);
  const int group = sh.n_heads / sh.n_kv_heads;
  const double scale = 1.0f / std::sqrt(static_cast<float>(sh.head_dim));
  std::vector<std::vector<float>> ks, vs;
  for (int p = 0; p < len; ++p) {
    ks.push_back(token_vec(0, p, 1, sh.kv_dim()));
    vs.push_back(token_vec(0, p, 2, sh.kv_dim()));
  }
  for (int p = 0; p < len; ++p) {
    const std::vector<float> q = token_vec(0, p, 0, sh.q_dim());
    const std::vector<float>& out = outs.at({0, p});
    for (int h = 0; h < sh.n_heads; ++h) {
      const int g = h / group;
      std::vector<double> s(p + 1);
      double mx = -1e300;
      for (int j = 0; j <= p; ++j) {
        double d = 0;
        for (int i = 0; i < sh.head_dim; ++i)
          d += static_cast<double>(q[h * sh.head_dim + i]) * ks[j][g * sh.head_dim + i];
        s[j] = d * scale;
        mx = std::max(mx, s[j]);
      }
      double l = 0;
      for (double& e : s) l += (e = std::exp(e - mx));
      for (int i = 0; i < sh.head_dim; ++i) {
        double ref = 0, vmax = 0;
        for (int j = 0; j <= p; ++j) {
          const double vj = vs[j][g * sh.head_dim + i];
          ref += s[j] / l * vj;
          vmax = std::max(vmax, std::fabs(vj));
        }
        // Per key: the score's rounding (dot of head_dim terms, |q|,|k| <= 1.5), exp's ulp,
        // the rescale and the fma: a few ulps each, over p + 1 keys.
        const double tol = 8 * kEps * vmax * (p + 1 + sh.head_dim);
        ASSERT_NEAR(out[h * sh.head_dim + i], ref, tol)
            << "pos " << p << " head " << h << " i " << i;
      }
    }
  }
}

TEST_P(AttentionShape, ChunkingDecodeAndBatchDoNotChangeBits) {
  const Shape sh = GetParam();
  ThreadPool pool(3);
  const int len = 70;  // several blocks, the last partly filled
  const Outputs ref = run(sh, whole(0, len), tables_for(0), pool);
  expect_same(ref, run(sh, decode(0, len), tables_for(0), pool), 0, "decode");
  expect_same(ref, run(sh, chunks(0, {7, 16, 1, 30, 16}), tables_for(0), pool), 0,
              "chunks 7,16,1,30,16");
  expect_same(ref, run(sh, chunks(0, {16, 16, 16, 16, 6}), tables_for(0), pool), 0, "chunks of 16");
  expect_same(ref, run(sh, chunks(0, {69, 1}), tables_for(0), pool), 0, "prefill then decode");
  expect_same(ref, run(sh, whole(0, len), tables_for(1), pool), 0, "other block placement");

  // Sequence 0 among others, its tokens at varying slots, prefill and decode mixed.
  const std::vector<Step> mixed = {
      {{1, 0, 20}, {0, 0, 10}},
      {{2, 0, 3}, {0, 10, 25}, {1, 20, 1}},
      {{0, 35, 1}, {2, 3, 40}, {1, 21, 1}},
      {{1, 22, 1}, {2, 43, 1}, {0, 36, 34}},
  };
  const Outputs m = run(sh, mixed, tables_for(0), pool);
  expect_same(ref, m, 0, "mixed batch");
  expect_same(run(sh, whole(2, 44), tables_for(1), pool), m, 2, "seq 2 alone vs mixed");
  expect_same(run(sh, decode(1, 23), tables_for(0), pool), m, 1, "seq 1 decode vs mixed");
}

TEST_P(AttentionShape, ThreadCountsAndPathsGiveIdenticalBits) {
  const Shape sh = GetParam();
  const std::vector<Step> steps = {{{0, 0, 30}, {1, 0, 50}}, {{0, 30, 1}, {1, 50, 13}}};
  ThreadPool p1(1), p2(2), p3(3);
  const Outputs ref = run(sh, steps, tables_for(0), p1);
  for (ThreadPool* p : {&p2, &p3})
    for (int seq : {0, 1}) expect_same(ref, run(sh, steps, tables_for(0), *p), seq, "threads");
  if (cpu::simd_supported()) {
    Outputs portable;
    with_simd(false, [&] { portable = run(sh, steps, tables_for(0), p2); });
    for (int seq : {0, 1}) expect_same(ref, portable, seq, "portable path");
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionShape,
                         ::testing::Values(Shape{6, 2, 64, 16}, Shape{4, 4, 20, 16},
                                           Shape{8, 1, 128, 16}, Shape{2, 1, 8, 5}),
                         [](const ::testing::TestParamInfo<Shape>& i) {
                           const Shape& s = i.param;
                           return "h" + std::to_string(s.n_heads) + "_kv" +
                                  std::to_string(s.n_kv_heads) + "_d" + std::to_string(s.head_dim) +
                                  "_b" + std::to_string(s.block_size);
                         });

TEST(Attention, RejectsBadShapes) {
  ThreadPool pool(1);
  std::vector<float> cache(16 * 3 * 8), q(5 * 8), out(5 * 8);
  cpu::PagedKV kv{cache.data(), cache.data(), 1, 16, 3, 8};
  const int32_t table[1] = {0};
  const int32_t* tabs[1] = {table};
  const int32_t pos[1] = {0};
  EXPECT_THROW(cpu::attention(pool, q.data(), 1, pos, tabs, kv, 5, 1.0f, out.data()), Error);
  kv.head_dim = 1000;
  EXPECT_THROW(cpu::attention(pool, q.data(), 1, pos, tabs, kv, 6, 1.0f, out.data()), Error);
}

}  // namespace
}  // namespace detinfer::test
