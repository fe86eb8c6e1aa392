// The tensor-core paged attention (kernels/cuda/attention.h), called directly: the host planner,
// the bf16 cache write, accuracy against an fp64 reference, and bitwise invariance of a
// sequence's outputs under whole prefill, token-by-token decode (both split-merge paths),
// chunked prefill among other sequences, other block placements and block sizes, and the split
// schedules, across split boundaries; the optional bf16 copy of the output.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/half.h"
#include "kernels/cuda/attention.h"

using namespace detinfer;
using namespace detinfer::cuda;

namespace {

bool have_gpu() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();
  return ok;
}
#define ATTN_REQUIRE_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device"

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(std::max<size_t>(count, 1)) { ck(cudaMalloc(reinterpret_cast<void**>(&p), n * sizeof(T)), "cudaMalloc"); }
  explicit Dev(const std::vector<T>& h) : Dev(h.size()) { upload(h); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void upload(const std::vector<T>& h) {
    if (!h.empty()) ck(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  std::vector<T> download(size_t count) const {
    std::vector<T> h(count);
    if (count) ck(cudaMemcpy(h.data(), p, count * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return h;
  }
};

// Restores the default split when it goes out of scope.
struct SplitGuard {
  explicit SplitGuard(int keys) { set_attention_split(keys); }
  ~SplitGuard() { set_attention_split(kAttnDefaultSplit); }
};

struct Shape {
  int n_heads, n_kv, hd;
  int group() const { return n_heads / n_kv; }
  int64_t qd() const { return int64_t{n_heads} * hd; }
  int64_t kd() const { return int64_t{n_kv} * hd; }
  float scale() const { return 1.0f / std::sqrt(static_cast<float>(hd)); }
};
std::string shape_name(const Shape& s) {
  return "hd" + std::to_string(s.hd) + "_g" + std::to_string(s.group());
}

std::vector<float> random_normal(int64_t n, uint64_t seed, float stddev) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

// q, k, v of the token at `pos` of a sequence whose contents are numbered `content`: a function
// of (content, pos) only, so every scenario feeds a sequence the same vectors. q is wider than
// k, v so that scores spread over several units and the running max moves.
struct TokenQKV {
  std::vector<float> q, k, v;
};
TokenQKV token_qkv(const Shape& s, uint64_t content, int32_t pos) {
  const uint64_t seed = content * 1000003ull + static_cast<uint64_t>(pos) * 7919ull + 1;
  return {random_normal(s.qd(), seed, 1.5f), random_normal(s.kd(), seed + 1, 1.0f),
          random_normal(s.kd(), seed + 2, 1.0f)};
}

struct Span {
  int seq;
  int32_t from, to;  // positions [from, to)
};

struct Scenario {
  int block_size = 16;
  int64_t num_blocks = 0;
  std::vector<uint64_t> contents;            // per sequence
  std::vector<std::vector<int32_t>> tables;  // per sequence
  std::vector<std::vector<Span>> steps;      // the token order of each step
  AttentionSchedule schedule = AttentionSchedule::kAuto;
  bool bf16_copy = false;  // also ask for the bf16 copy of out and check it against out
};

// Distinct random blocks for each sequence.
std::vector<std::vector<int32_t>> random_tables(const std::vector<int32_t>& lengths, int block_size,
                                                int64_t& num_blocks, uint32_t seed) {
  int64_t need = 0;
  for (int32_t len : lengths) need += (len + block_size - 1) / block_size;
  num_blocks = need + 7;  // a few never used
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

// out[seq][pos] = the attention output (n_heads * hd floats) of that token.
using Outputs = std::vector<std::vector<std::vector<float>>>;

// Runs the scenario: a fresh cache full of NaN (stale slots must never leak in), then per step
// kv_write_bf16 + plan + attention_paged, as CudaOps will call them.
Outputs run_scenario(const Shape& sh, const Scenario& s) {
  const size_t cache_elems = static_cast<size_t>(s.num_blocks) * s.block_size * sh.kd();
  Dev<uint16_t> kc(cache_elems), vc(cache_elems);
  ck(cudaMemset(kc.p, 0xff, kc.n * sizeof(uint16_t)), "memset");
  ck(cudaMemset(vc.p, 0xff, vc.n * sizeof(uint16_t)), "memset");
  std::vector<int32_t> tables_flat, seq_off;
  for (const auto& t : s.tables) {
    seq_off.push_back(static_cast<int32_t>(tables_flat.size()));
    tables_flat.insert(tables_flat.end(), t.begin(), t.end());
  }
  Dev<int32_t> tables(tables_flat);
  Outputs out(s.contents.size());
  for (const auto& step : s.steps) {
    std::vector<int32_t> pos, seq, slots, toff;
    std::vector<float> q, k, v;
    for (const Span& sp : step)
      for (int32_t p = sp.from; p < sp.to; ++p) {
        pos.push_back(p);
        seq.push_back(sp.seq);
        const auto& tab = s.tables[sp.seq];
        slots.push_back(tab.at(p / s.block_size) * s.block_size + p % s.block_size);
        toff.push_back(seq_off[sp.seq]);
        const TokenQKV t = token_qkv(sh, s.contents[sp.seq], p);
        q.insert(q.end(), t.q.begin(), t.q.end());
        k.insert(k.end(), t.k.begin(), t.k.end());
        v.insert(v.end(), t.v.begin(), t.v.end());
      }
    const int64_t T = static_cast<int64_t>(pos.size());
    Dev<float> dq(q), dk(k), dv(v), dout(static_cast<size_t>(T * sh.qd()));
    Dev<int32_t> dpos(pos), dslots(slots), dtoff(toff);
    ck(cudaMemset(dout.p, 0xff, dout.n * sizeof(float)), "poison out");  // NaN: unwritten shows
    kv_write_bf16(kc.p, vc.p, dk.p, dv.p, T, sh.kd(), dslots.p, nullptr);
    const AttentionPlan plan = plan_attention(pos.data(), seq.data(), T, sh.n_heads, sh.n_kv, sh.hd, s.schedule);
    Dev<int32_t> work(plan.work);
    Dev<float> ws(static_cast<size_t>(plan.workspace_floats));
    PagedAttentionArgs a;
    a.q = dq.p, a.out = dout.p, a.k_cache = kc.p, a.v_cache = vc.p;
    a.pos = dpos.p, a.table_off = dtoff.p, a.tables = tables.p;
    a.block_size = s.block_size, a.scale = sh.scale();
    // The bf16 copy: rows wider than n_heads·head_dim, so that columns past it (which must stay
    // untouched) exist.
    const int64_t ld = (sh.qd() + 7) / 8 * 8 + 8;
    Dev<uint16_t> dob(static_cast<size_t>(s.bf16_copy ? T * ld : 0));
    if (s.bf16_copy) {
      ck(cudaMemset(dob.p, 0xab, dob.n * sizeof(uint16_t)), "poison bf16 out");
      a.out_bf16 = dob.p, a.out_bf16_ld = ld;
    }
    attention_paged(a, plan, work.p, ws.p, nullptr);
    ck(cudaDeviceSynchronize(), "attention");
    const std::vector<float> o = dout.download(static_cast<size_t>(T * sh.qd()));
    if (s.bf16_copy) {
      const std::vector<uint16_t> ob = dob.download(static_cast<size_t>(T * ld));
      int64_t bad = 0, first = -1;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < ld; ++i) {
          const uint16_t want = i < sh.qd() ? f32_to_bf16(o[t * sh.qd() + i]) : uint16_t{0xabab};
          if (ob[t * ld + i] != want && bad++ == 0) first = t * ld + i;
        }
      EXPECT_EQ(bad, 0) << "bf16 copy: " << bad << " elements differ from the rounding of out (or were "
                        << "written past n_heads*head_dim); first at token " << first / ld << " column "
                        << first % ld;
    }
    for (int64_t t = 0; t < T; ++t) {
      auto& rows = out[seq[t]];
      if (rows.size() <= static_cast<size_t>(pos[t])) rows.resize(pos[t] + 1);
      rows[pos[t]].assign(o.begin() + t * sh.qd(), o.begin() + (t + 1) * sh.qd());
    }
  }
  return out;
}

float bf16_round(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// Checks out[pos] of the sequence with `content` against an fp64 causal softmax of the
// bf16-rounded q, k, v (scores · the same fp32 scale). Returns the largest error / tolerance.
//
// Tolerance, per output element i: tol_i = 2·(2⁻⁸ + 2·ε + 2⁻¹⁸) · Σ_j w_j·|v_ji|, where w is the
// reference softmax. Why: (1) P·V uses bf16(p) (8-bit significand, round to nearest: relative
// error <= 2⁻⁸ per weight) while l sums the unrounded p: at most 2⁻⁸·Σ w|v| (this dominates); (2) a score error δ_j moves each
// weight by a relative e^{±2δ} (numerator and denominator): <= ~2ε·Σ w|v| with ε = max_j δ_j +
// the exp's error (2⁻²¹); δ_j <= scale·(head_dim/16 + 1)·2⁻²³·Σ_i|q_i k_ji| (fp32 accumulation,
// one rounding per 16-wide mma step) + 2⁻²³·|s_j|; (3) the fp32 sums of o, l and the rescales
// and merges: a few ulps per tile and split, < 2⁻¹⁸ relative for these lengths. Factor 2: margin.
// A wrong key, position, head or mask gives errors of the order of |v| ~ 1, far above this.
double check_reference(const Shape& sh, uint64_t content, const std::vector<std::vector<float>>& out,
                       const std::vector<int32_t>& positions, const std::string& what) {
  const int hd = sh.hd, G = sh.group();
  const double scale = sh.scale();
  int32_t top = 0;
  for (int32_t p : positions) top = std::max(top, p);
  std::vector<TokenQKV> toks;
  for (int32_t p = 0; p <= top; ++p) {
    TokenQKV t = token_qkv(sh, content, p);
    for (auto* vec : {&t.q, &t.k, &t.v})
      for (float& x : *vec) x = bf16_round(x);
    toks.push_back(std::move(t));
  }
  double worst = 0;
  for (int32_t p : positions) {
    EXPECT_LT(static_cast<size_t>(p), out.size()) << what;
    if (static_cast<size_t>(p) >= out.size()) return 1e9;
    for (int h = 0; h < sh.n_heads; ++h) {
      const int kvh = h / G;
      const float* q = toks[p].q.data() + h * hd;
      std::vector<double> w(p + 1);
      double mx = -1e300, eps = 0;
      for (int32_t j = 0; j <= p; ++j) {
        const float* kk = toks[j].k.data() + kvh * hd;
        double d = 0, a = 0;
        for (int i = 0; i < hd; ++i) d += double(q[i]) * kk[i], a += std::fabs(double(q[i]) * kk[i]);
        w[j] = d * scale;
        mx = std::max(mx, w[j]);
        eps = std::max(eps, scale * (hd / 16 + 1) * std::ldexp(a, -23) + std::ldexp(std::fabs(w[j]), -23));
      }
      eps += std::ldexp(1.0, -21);
      double l = 0;
      for (double& x : w) l += (x = std::exp(x - mx));
      for (double& x : w) x /= l;
      for (int i = 0; i < hd; ++i) {
        double ref = 0, mag = 0;
        for (int32_t j = 0; j <= p; ++j) {
          const double vv = toks[j].v[kvh * hd + i];
          ref += w[j] * vv;
          mag += w[j] * std::fabs(vv);
        }
        const double tol = 2 * (std::ldexp(1.0, -8) + 2 * eps + std::ldexp(1.0, -18)) * mag + 1e-30;
        const double got = out[p][h * hd + i];
        EXPECT_TRUE(std::isfinite(got)) << what << " pos " << p << " head " << h << " elem " << i;
        if (!std::isfinite(got)) return 1e9;
        const double err = std::fabs(got - ref);
        EXPECT_LE(err, tol) << what << " pos " << p << " head " << h << " elem " << i << ": got " << got
                            << ", fp64 " << ref;
        if (err > tol) return err / tol;
        worst = std::max(worst, err / tol);
      }
    }
  }
  return worst;
}

// First element (of the target's outputs by position) whose bits differ, or "" if none.
std::string bit_difference(const std::vector<std::vector<float>>& got,
                           const std::vector<std::vector<float>>& ref) {
  if (got.size() != ref.size())
    return "positions " + std::to_string(got.size()) + " vs " + std::to_string(ref.size());
  for (size_t p = 0; p < ref.size(); ++p) {
    if (got[p].size() != ref[p].size()) return "position " + std::to_string(p) + " missing";
    if (std::memcmp(got[p].data(), ref[p].data(), ref[p].size() * sizeof(float)) == 0) continue;
    for (size_t i = 0; i < ref[p].size(); ++i)
      if (std::memcmp(&got[p][i], &ref[p][i], sizeof(float)) != 0)
        return "position " + std::to_string(p) + " element " + std::to_string(i) + ": " +
               std::to_string(got[p][i]) + " vs " + std::to_string(ref[p][i]);
  }
  return "";
}

// ---- scenarios of a target sequence (sequence 0, content 42, P positions) ----------------------
Scenario whole(int32_t P, int block_size, uint32_t seed, AttentionSchedule sched) {
  Scenario s;
  s.block_size = block_size;
  s.contents = {42};
  s.tables = random_tables({P}, block_size, s.num_blocks, seed);
  s.steps = {{{0, 0, P}}};
  s.schedule = sched;
  return s;
}

Scenario decode(int32_t P, int block_size, uint32_t seed, AttentionSchedule sched) {
  Scenario s = whole(P, block_size, seed, sched);
  s.steps.clear();
  for (int32_t p = 0; p < P; ++p) s.steps.push_back({{0, p, p + 1}});
  return s;
}

// The target in chunks of `chunk` among three others (one prefilling in chunks of 13, two
// decoding), the target's slot in the step rotating through first, middle and last.
Scenario mixed(int32_t P, int32_t chunk, int block_size, uint32_t seed, AttentionSchedule sched) {
  Scenario s;
  s.block_size = block_size;
  s.contents = {42, 7, 8, 9};
  const std::vector<int32_t> lengths = {P, 301, 40, 5};
  s.tables = random_tables(lengths, block_size, s.num_blocks, seed);
  s.schedule = sched;
  int32_t a = 0, b = 0, c = 0, d = 0;
  for (int step = 0; a < P; ++step) {
    std::vector<Span> others;
    if (b < lengths[1]) others.push_back({1, b, std::min(lengths[1], b + 13)}), b = std::min(lengths[1], b + 13);
    if (c < lengths[2]) others.push_back({2, c, c + 1}), ++c;
    if (d < lengths[3]) others.push_back({3, d, d + 1}), ++d;
    const Span target{0, a, std::min(P, a + chunk)};
    a = target.to;
    others.insert(others.begin() + step % (others.size() + 1), target);
    s.steps.push_back(others);
  }
  return s;
}

// Runs every scenario and compares the target's outputs with one-shot prefill, bit for bit.
void expect_invariant(const Shape& sh, int32_t P) {
  using AS = AttentionSchedule;
  const Outputs ref_all = run_scenario(sh, whole(P, 16, 1, AS::kAuto));
  const auto& ref = ref_all[0];
  ASSERT_EQ(ref.size(), static_cast<size_t>(P));
  for (const auto& row : ref)
    for (float x : row) ASSERT_TRUE(std::isfinite(x)) << "one-shot prefill gave a non-finite output";
  struct Case {
    const char* what;
    Scenario s;
  };
  const Case cases[] = {
      {"decode (split partials + merge kernel)", decode(P, 16, 2, AS::kAuto)},
      {"decode, splits merged in registers", decode(P, 32, 3, AS::kFused)},
      {"one-shot prefill, every split through the workspace", whole(P, 16, 4, AS::kSplit)},
      {"chunks of 1 among others", mixed(P, 1, 16, 5, AS::kAuto)},
      {"chunks of 1 among others, block size 5", mixed(P, 1, 5, 10, AS::kAuto)},
      {"chunks of 7 among others, block size 32", mixed(P, 7, 32, 6, AS::kAuto)},
      {"chunks of 64 among others, block size 5", mixed(P, 64, 5, 7, AS::kAuto)},
      {"chunks of 100 among others, block size 32, split schedule", mixed(P, 100, 32, 8, AS::kSplit)},
      {"chunks of 100 among others, block size 1", mixed(P, 100, 1, 9, AS::kFused)},
  };
  for (const Case& c : cases) {
    const Outputs got = run_scenario(sh, c.s);
    const std::string diff = bit_difference(got[0], ref);
    EXPECT_EQ(diff, "") << shape_name(sh) << " P=" << P << " split=" << attention_split() << ": "
                        << c.what << " differs from one-shot prefill";
  }
}

// Decode CTAs of head_dim 128 reduce four tiles at a time: the same bits as one tile at a time,
// for single tokens and for items of 2-4 tokens (rows at different positions, so tiles where only
// some rows have keys), at the default split and at a split of four tiles (one round per split).
void expect_tiles_in_parallel_equal(const Shape& sh, int split, int32_t P, const std::vector<int>& chunks,
                                    bool decode_only = false) {
  using AS = AttentionSchedule;
  SplitGuard guard(split);
  struct Case {
    std::string what;
    Scenario s;
  };
  std::vector<Case> cases = {{"decode", decode(P, 16, 51, AS::kAuto)}};
  if (!decode_only) cases.push_back({"decode, splits merged in registers", decode(P, 32, 52, AS::kFused)});
  for (int chunk : chunks)
    cases.push_back({"chunks of " + std::to_string(chunk) + " among others", mixed(P, chunk, 16, 52 + chunk, AS::kAuto)});
  for (const Case& c : cases) {
    const int64_t before = attention_tiles_in_parallel_launches();
    const Outputs wide = run_scenario(sh, c.s);
    ASSERT_GT(attention_tiles_in_parallel_launches(), before) << c.what << ": the kernel did not run";
    set_attention_tiles_in_parallel(false);
    const Outputs one = run_scenario(sh, c.s);
    set_attention_tiles_in_parallel(true);
    EXPECT_EQ(bit_difference(wide[0], one[0]), "")
        << shape_name(sh) << " split " << split << ", " << c.what << ": four tiles at a time vs one";
  }
}
TEST(AttentionKernelWide, TilesInParallelGiveTheBitsOfOneAtATime) {
  ATTN_REQUIRE_GPU();
  for (const Shape sh : {Shape{32, 8, 128}, Shape{8, 2, 128}})
    for (int split : {kAttnDefaultSplit, 256}) expect_tiles_in_parallel_equal(sh, split, 1100, {2, 3, 4});
}
// A short case for the sanitizer runs (scripts/gpu_test.sh): decode to 260 keys at a split of
// 256, so the last steps take two rounds over two splits.
TEST(AttentionKernelWide, ShortDecode) {
  ATTN_REQUIRE_GPU();
  expect_tiles_in_parallel_equal(Shape{32, 8, 128}, 256, 260, {}, true);
}

// ---- host planner --------------------------------------------------------------------------------
TEST(AttentionPlan, CoversEveryRowOnce) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 60; ++trial) {
    const int n_kv = 1 + trial % 3, G = std::vector<int>{1, 2, 4, 7, 8, 20, 70}[trial % 7];
    const int n_heads = n_kv * G, hd = 64;
    const auto sched = static_cast<AttentionSchedule>(trial % 3);
    SplitGuard split(trial % 2 ? 128 : 512);
    // Runs of tokens of random sequences (a sequence may come back later in the step).
    std::vector<int32_t> pos, seq;
    const int runs = 1 + static_cast<int>(rng() % 6);
    for (int r = 0; r < runs; ++r) {
      const int32_t sq = static_cast<int32_t>(rng() % 4), start = static_cast<int32_t>(rng() % 1500);
      const int32_t n = rng() % 3 == 0 ? 1 : 1 + static_cast<int32_t>(rng() % 90);
      for (int32_t i = 0; i < n; ++i) pos.push_back(start + i), seq.push_back(sq);
    }
    const int64_t T = static_cast<int64_t>(pos.size());
    const AttentionPlan plan = plan_attention(pos.data(), seq.data(), T, n_heads, n_kv, hd, sched);
    ASSERT_EQ(plan.work.size(), static_cast<size_t>(plan.n_small + plan.n_large + plan.n_merge) * kAttnRecordInts);
    // fused[row] = times covered by a fused item; splits[(row, split)] = times covered by a partial.
    std::vector<int> fused(static_cast<size_t>(T * n_heads), 0);
    std::vector<std::vector<int>> split_cover(static_cast<size_t>(T * n_heads));
    std::vector<int> partial_written(static_cast<size_t>(plan.workspace_floats / (hd + 2)), 0);
    for (int32_t it = 0; it < plan.n_small + plan.n_large; ++it) {
      const int32_t* w = plan.work.data() + int64_t{it} * kAttnRecordInts;
      const int32_t tok0 = w[0], kvh = w[1], r0 = w[2], nrows = w[3], max_pos = w[4];
      ASSERT_TRUE(it < plan.n_small ? nrows >= 1 && nrows <= 16 : nrows > 16 && nrows <= 64);
      ASSERT_LT(w[5], w[6]);
      ASSERT_LE(int64_t{w[5]} * plan.split, max_pos);
      if (w[7] < 0) {
        ASSERT_GT(int64_t{w[6]} * plan.split, max_pos) << "the last split must reach max_pos";
      }
      int32_t top = -1;
      for (int32_t r = 0; r < nrows; ++r) {
        const int32_t rr = r0 + r, t = tok0 + rr / G, h = kvh * G + rr % G;
        ASSERT_LT(t, T);
        ASSERT_EQ(seq[t], seq[tok0]);
        top = std::max(top, pos[t]);
        const size_t row = static_cast<size_t>(t) * n_heads + h;
        if (w[7] < 0) {
          ASSERT_EQ(w[5], 0);
          ++fused[row];
        } else {
          ASSERT_EQ(w[6], w[5] + 1);
          split_cover[row].push_back(w[5]);
          ++partial_written.at(w[7] + r);
        }
      }
      ASSERT_EQ(top, max_pos);
    }
    for (int32_t m = 0; m < plan.n_merge; ++m) {
      const int32_t* w = plan.work.data() + int64_t{plan.n_small + plan.n_large + m} * kAttnRecordInts;
      const size_t row = static_cast<size_t>(w[0]) * n_heads + w[1];
      ASSERT_EQ(fused[row], 0);
      ASSERT_EQ(static_cast<int32_t>(split_cover[row].size()), w[4]);
      fused[row] = 1;  // merged rows count as covered once
      split_cover[row].clear();
      for (int32_t k = 0; k < w[4]; ++k) ASSERT_LT(w[2] + k * w[3], static_cast<int32_t>(partial_written.size()));
    }
    for (int64_t r = 0; r < T * n_heads; ++r) {
      ASSERT_EQ(fused[r], 1) << "row " << r << " trial " << trial;
      ASSERT_TRUE(split_cover[r].empty()) << "partials without a merge record";
    }
    for (int c : partial_written) ASSERT_EQ(c, 1);
  }
}

TEST(AttentionPlan, RejectsBadArguments) {
  const int32_t pos[2] = {0, 1}, seq[2] = {0, 0}, bad_pos[2] = {0, -1};
  EXPECT_THROW(plan_attention(pos, seq, 2, 6, 4, 64), Error);   // heads not a multiple
  EXPECT_THROW(plan_attention(pos, seq, 2, 8, 2, 63), Error);   // odd head_dim
  EXPECT_THROW(plan_attention(pos, seq, 2, 8, 2, 514), Error);  // too wide
  EXPECT_THROW(plan_attention(bad_pos, seq, 2, 8, 2, 64), Error);
  EXPECT_THROW(set_attention_split(100), Error);
  EXPECT_THROW(set_attention_split(0), Error);
  const AttentionPlan wide = plan_attention(pos, seq, 2, 8, 2, 320);
  EXPECT_EQ(wide.n_simple, 16);
  EXPECT_EQ(wide.n_small + wide.n_large + wide.n_merge, 0);
}

// A bad bf16 copy is refused before anything is launched (the pointers are never touched).
TEST(AttentionPlan, RejectsBadBf16Output) {
  const int32_t pos[2] = {0, 1}, seq[2] = {0, 0};
  for (int hd : {64, 320}) {
    const AttentionPlan plan = plan_attention(pos, seq, 2, 8, 2, hd);
    PagedAttentionArgs a;
    a.block_size = 16, a.scale = 0.125f;
    alignas(16) static uint16_t fake[16];
    const int32_t* work = reinterpret_cast<const int32_t*>(fake);
    const int64_t row = 8 * int64_t{hd};
    a.out_bf16 = fake;
    a.out_bf16_ld = row - 8;  // narrower than a row
    EXPECT_THROW(attention_paged(a, plan, work, nullptr, nullptr), Error) << hd;
    a.out_bf16_ld = row + 4;  // not a multiple of 8
    EXPECT_THROW(attention_paged(a, plan, work, nullptr, nullptr), Error) << hd;
    a.out_bf16_ld = 0;
    EXPECT_THROW(attention_paged(a, plan, work, nullptr, nullptr), Error) << hd;
    a.out_bf16_ld = row + 8;
    a.out_bf16 = fake + 1;  // 2-byte aligned only
    EXPECT_THROW(attention_paged(a, plan, work, nullptr, nullptr), Error) << hd;
  }
}

// ---- GPU -----------------------------------------------------------------------------------------
TEST(AttentionKernel, KvWriteRoundsToNearestEven) {
  ATTN_REQUIRE_GPU();
  const int64_t row = 40, T = 3;
  std::vector<float> k = random_normal(T * row, 5, 3.0f), v = random_normal(T * row, 6, 1e-3f);
  // Ties (exactly halfway between two bf16), subnormals, infinities, zeros of both signs.
  const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0xbf808000u, 0x00000001u, 0x80400000u,
                              0x7f800000u, 0xff800000u, 0x00000000u, 0x80000000u, 0x7f7fffffu};
  for (size_t i = 0; i < sizeof special / sizeof special[0]; ++i) k[i] = bits_to_f32(special[i]);
  const std::vector<int32_t> slots = {4, 0, 2};
  Dev<float> dk(k), dv(v);
  Dev<int32_t> ds(slots);
  Dev<uint16_t> kc(5 * row), vc(5 * row);
  ck(cudaMemset(kc.p, 0, kc.n * 2), "memset");
  ck(cudaMemset(vc.p, 0, vc.n * 2), "memset");
  kv_write_bf16(kc.p, vc.p, dk.p, dv.p, T, row, ds.p, nullptr);
  const auto hk = kc.download(5 * row), hv = vc.download(5 * row);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < row; ++e) {
      ASSERT_EQ(hk[slots[t] * row + e], f32_to_bf16(k[t * row + e])) << t << " " << e;
      ASSERT_EQ(hv[slots[t] * row + e], f32_to_bf16(v[t * row + e])) << t << " " << e;
    }
}

class AttentionKernel : public ::testing::TestWithParam<Shape> {};

// One step with several sequences (prefill runs of several lengths), then a step that continues
// two of them (a chunk and a decode token); split 128 so that rows cross splits.
TEST_P(AttentionKernel, MatchesFp64Reference) {
  ATTN_REQUIRE_GPU();
  const Shape sh = GetParam();
  SplitGuard split(128);
  Scenario s;
  s.contents = {1, 2, 3, 4, 5};
  const std::vector<int32_t> lengths = {1, 17, 100, 33, 300};
  s.tables = random_tables(lengths, 16, s.num_blocks, 3);
  s.steps = {{{4, 0, 150}, {0, 0, 1}, {1, 0, 17}, {2, 0, 100}},
             {{3, 0, 33}, {4, 150, 299}},
             {{4, 299, 300}}};
  const Outputs out = run_scenario(sh, s);
  double worst = 0;
  for (size_t q = 0; q < lengths.size(); ++q) {
    std::vector<int32_t> positions(lengths[q]);
    std::iota(positions.begin(), positions.end(), 0);
    worst = std::max(worst, check_reference(sh, s.contents[q], out[q], positions, "seq " + std::to_string(q)));
  }
  std::printf("[attention %s] max error / tolerance = %.3g\n", shape_name(sh).c_str(), worst);
}

TEST_P(AttentionKernel, BitwiseInvariantAcrossSplits) {
  ATTN_REQUIRE_GPU();
  SplitGuard split(128);  // 300 positions: three splits, the last partial
  expect_invariant(GetParam(), 300);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionKernel,
                         ::testing::Values(Shape{2, 2, 16}, Shape{8, 2, 16}, Shape{14, 2, 16},
                                           Shape{2, 2, 64}, Shape{8, 2, 64}, Shape{14, 2, 64},
                                           Shape{2, 2, 80}, Shape{8, 2, 80}, Shape{14, 2, 80},
                                           Shape{2, 2, 128}, Shape{8, 2, 128}, Shape{14, 2, 128},
                                           Shape{2, 2, 256}, Shape{8, 2, 256}, Shape{14, 2, 256},
                                           Shape{8, 2, 18}, Shape{16, 1, 96}, Shape{8, 2, 320},
                                           Shape{14, 2, 512}),
                         [](const auto& info) { return shape_name(info.param); });

// The bf16 copy of out equals the rounding of out, bit for bit, and asking for it changes no bit
// of out: a one-shot prefill (the in-CTA store), decode through the split partials and the merge
// kernel, decode with the splits merged in the CTA (the shared-rows kernel's store), chunks among
// other sequences; head_dim 320 runs the warp-per-row kernel.
class AttentionKernelBf16 : public ::testing::TestWithParam<Shape> {};
TEST_P(AttentionKernelBf16, CopyIsTheRoundingOfOut) {
  ATTN_REQUIRE_GPU();
  const Shape sh = GetParam();
  SplitGuard split(128);
  using AS = AttentionSchedule;
  constexpr int32_t P = 300;
  struct Case {
    const char* what;
    Scenario s;
  };
  const Case cases[] = {
      {"prefill", whole(P, 16, 1, AS::kAuto)},
      {"decode (split partials + merge kernel)", decode(P, 16, 2, AS::kAuto)},
      {"decode, splits merged in the CTA", decode(P, 32, 3, AS::kFused)},
      {"chunks of 7 among others", mixed(P, 7, 32, 6, AS::kAuto)},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Scenario with = c.s;
    with.bf16_copy = true;
    const Outputs a = run_scenario(sh, with), b = run_scenario(sh, c.s);
    for (size_t q = 0; q < a.size(); ++q)
      EXPECT_EQ(bit_difference(a[q], b[q]), "") << "sequence " << q << ": out changed by the bf16 copy";
  }
}
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionKernelBf16,
                         ::testing::Values(Shape{32, 8, 128}, Shape{14, 2, 64}, Shape{8, 2, 18},
                                           Shape{2, 2, 256}, Shape{8, 2, 320}),
                         [](const auto& info) { return shape_name(info.param); });

// A decode step of 200 sequences (more than two decode CTAs per SM, so the launcher picks its
// three-buffer schedule) against the same sequences computed alone (few CTAs: the four-buffer
// schedule) and by one-shot prefill (the 64-row kernel): bit for bit.
class AttentionKernelBatch : public ::testing::TestWithParam<Shape> {};
TEST_P(AttentionKernelBatch, LargeDecodeBatchMatchesAlone) {
  ATTN_REQUIRE_GPU();
  const Shape sh = GetParam();
  SplitGuard split(128);
  constexpr int kSeqs = 200;
  std::vector<int32_t> lengths;
  Scenario batch;
  for (int i = 0; i < kSeqs; ++i) {
    lengths.push_back(2 + (i * 37) % 299);
    batch.contents.push_back(1000 + i);
  }
  batch.tables = random_tables(lengths, 16, batch.num_blocks, 31);
  batch.steps.resize(2);
  for (int i = 0; i < kSeqs; ++i) {
    batch.steps[0].push_back({i, 0, lengths[i] - 1});
    batch.steps[1].push_back({i, lengths[i] - 1, lengths[i]});
  }
  const Outputs out = run_scenario(sh, batch);
  for (int i = 0; i < kSeqs; i += 23) {
    const int32_t L = lengths[i];
    Scenario alone;
    alone.contents = {batch.contents[i]};
    alone.tables = random_tables({L}, 32, alone.num_blocks, 40 + i);
    alone.block_size = 32;
    alone.steps = {{{0, 0, L - 1}}, {{0, L - 1, L}}};
    const Outputs a = run_scenario(sh, alone);
    Scenario one = alone;
    one.steps = {{{0, 0, L}}};
    const Outputs b = run_scenario(sh, one);
    EXPECT_EQ(bit_difference({out[i][L - 1]}, {a[0][L - 1]}), "") << "sequence " << i << ": batch vs alone";
    EXPECT_EQ(bit_difference({out[i][L - 1]}, {b[0][L - 1]}), "") << "sequence " << i << ": batch vs prefill";
  }
  const double worst = check_reference(sh, batch.contents[5], out[5], {lengths[5] - 1}, "batch decode");
  std::printf("[attention batch %s] max error / tolerance = %.3g\n", shape_name(sh).c_str(), worst);
}
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionKernelBatch,
                         ::testing::Values(Shape{8, 2, 128}, Shape{14, 2, 80}, Shape{2, 2, 256}),
                         [](const auto& info) { return shape_name(info.param); });

// The default split (512) with a sequence past 1100 positions: three splits; accuracy on sampled
// positions and the same invariance scenarios.
class AttentionKernelLong : public ::testing::TestWithParam<Shape> {};
TEST_P(AttentionKernelLong, DefaultSplitInvariantAndAccurate) {
  ATTN_REQUIRE_GPU();
  ASSERT_EQ(attention_split(), kAttnDefaultSplit);
  const Shape sh = GetParam();
  constexpr int32_t P = 1153;
  const Outputs out = run_scenario(sh, decode(P, 16, 21, AttentionSchedule::kAuto));
  std::vector<int32_t> positions;
  for (int32_t p = 0; p < P; p += 37) positions.push_back(p);
  for (int32_t p : {511, 512, 513, 1023, 1024, P - 1}) positions.push_back(p);
  const double worst = check_reference(sh, 42, out[0], positions, "long decode");
  std::printf("[attention long %s] max error / tolerance = %.3g\n", shape_name(sh).c_str(), worst);
  expect_invariant(sh, P);
}
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionKernelLong,
                         ::testing::Values(Shape{32, 8, 128}, Shape{14, 2, 64}, Shape{8, 2, 256}),
                         [](const auto& info) { return shape_name(info.param); });

}  // namespace
