// The GPU sampler (kernels/cuda/sampler.h) against the CPU Sampler, bit for bit: many random rows
// (ties, -inf, huge and tiny values, signed zeros) x parameter sets (greedy, temperature, top-k,
// top-p, min-p, penalties with histories, logprobs, prompt-logprob rows) in one launch per
// vocabulary size, each row compared with Sampler::sample (token, logprob and top list by
// memcmp); the error cases' status codes; batch invariance (a row's result does not depend on
// the other rows or its slot); the GPU's det_logf / det_expf against the CPU's.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/sampler.h"
#include "runtime/sampler.h"

namespace {

using namespace detinfer;
using cuda::SampleRowParams;
using cuda::SampleRowResult;

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
#define REQUIRE_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device"

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(what, ": ", cudaGetErrorString(e));
}

template <typename T>
struct DeviceBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DeviceBuf(size_t count) : n(count) {
    if (count) ck(cudaMalloc(reinterpret_cast<void**>(&p), count * sizeof(T)), "cudaMalloc");
  }
  DeviceBuf(const DeviceBuf&) = delete;
  ~DeviceBuf() { cudaFree(p); }
  void upload(const T* h, size_t count) {
    if (count) ck(cudaMemcpy(p, h, count * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
};

struct Case {
  std::vector<float> logits;
  SampleRowParams p;
  std::vector<int32_t> history;
  std::string what;
};

// All rows of `cases` (same V) in one launch, rows ld >= V floats apart; results in order.
std::vector<SampleRowResult> run_gpu(const std::vector<const Case*>& cases, int32_t V,
                                     int64_t ld = 0) {
  if (ld == 0) ld = V;
  const size_t R = cases.size();
  std::vector<float> logits(R * ld, NAN);  // the gaps are NaN: read, they would show
  std::vector<SampleRowParams> params(R);
  std::vector<int32_t> history;
  for (size_t r = 0; r < R; ++r) {
    std::copy(cases[r]->logits.begin(), cases[r]->logits.end(), logits.begin() + r * ld);
    params[r] = cases[r]->p;
    params[r].history_offset = static_cast<int64_t>(history.size());
    params[r].history_len = static_cast<int64_t>(cases[r]->history.size());
    history.insert(history.end(), cases[r]->history.begin(), cases[r]->history.end());
  }
  DeviceBuf<float> d_logits(logits.size());
  DeviceBuf<SampleRowParams> d_params(R);
  DeviceBuf<int32_t> d_hist(std::max<size_t>(history.size(), 1));
  DeviceBuf<SampleRowResult> d_out(R);
  const size_t ws = cuda::sample_workspace_bytes(static_cast<int64_t>(R), V);
  DeviceBuf<unsigned char> d_ws(ws);
  d_logits.upload(logits.data(), logits.size());
  d_params.upload(params.data(), R);
  d_hist.upload(history.data(), history.size());
  ck(cudaMemset(d_out.p, 0xcd, R * sizeof(SampleRowResult)), "memset");
  cuda::sample_rows(d_logits.p, ld, static_cast<int64_t>(R), V, d_params.p, d_hist.p, d_ws.p, ws,
                    d_out.p, nullptr);
  ck(cudaDeviceSynchronize(), "sample_rows");
  std::vector<SampleRowResult> out(R);
  ck(cudaMemcpy(out.data(), d_out.p, R * sizeof(SampleRowResult), cudaMemcpyDeviceToHost),
     "download");
  return out;
}

SamplingParams cpu_params(const SampleRowParams& g) {
  SamplingParams p;
  p.temperature = g.temperature;
  p.top_k = g.top_k;
  p.top_p = g.top_p;
  p.min_p = g.min_p;
  p.repetition_penalty = g.repetition_penalty;
  p.frequency_penalty = g.frequency_penalty;
  p.presence_penalty = g.presence_penalty;
  p.logprobs = g.n_logprobs;
  return p;
}

// The CPU's answer for a case: Sampler::sample, or for a prompt-logprob row cpu::log_softmax
// and the top list by a full sort. ok = false if the CPU throws.
struct CpuAnswer {
  bool ok = true;
  SampleResult r;
};
CpuAnswer cpu_answer(Sampler& s, const Case& c) {
  CpuAnswer a;
  const int32_t V = static_cast<int32_t>(c.logits.size());
  if (c.p.want_token >= 0) {
    std::vector<float> lp(V);
    cpu::log_softmax(c.logits.data(), V, lp.data());
    a.r.token = c.p.want_token;
    a.r.logprob = lp[c.p.want_token];
    std::vector<int32_t> ids(V);
    std::iota(ids.begin(), ids.end(), 0);
    std::stable_sort(ids.begin(), ids.end(), [&](int32_t x, int32_t y) { return lp[x] > lp[y]; });
    for (int i = 0; i < std::min(c.p.n_logprobs, V); ++i) a.r.top.push_back({ids[i], lp[ids[i]]});
    return a;
  }
  try {
    a.r = s.sample(c.logits.data(), V, cpu_params(c.p), c.p.seed, c.p.token_index, c.history,
                   static_cast<size_t>(c.p.n_prompt));
  } catch (const Error&) {
    a.ok = false;
  }
  return a;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// memcmp-equal token, logprob and top list; returns a description of the first difference.
std::string compare(const CpuAnswer& cpu, const SampleRowResult& g) {
  if (!cpu.ok) return g.status != cuda::kSampleOk ? "" : "CPU throws, GPU status ok";
  if (g.status != cuda::kSampleOk) return "GPU status " + std::to_string(g.status);
  if (g.token != cpu.r.token)
    return "token " + std::to_string(g.token) + " vs CPU " + std::to_string(cpu.r.token);
  if (!same_bits(g.logprob, cpu.r.logprob))
    return "logprob bits " + std::to_string(g.logprob) + " vs " + std::to_string(cpu.r.logprob);
  if (g.n_top != static_cast<int32_t>(cpu.r.top.size()))
    return "n_top " + std::to_string(g.n_top) + " vs " + std::to_string(cpu.r.top.size());
  for (int i = 0; i < g.n_top; ++i) {
    if (g.top_token[i] != cpu.r.top[i].token || !same_bits(g.top_logprob[i], cpu.r.top[i].logprob))
      return "top[" + std::to_string(i) + "] (" + std::to_string(g.top_token[i]) + ", " +
             std::to_string(g.top_logprob[i]) + ") vs (" + std::to_string(cpu.r.top[i].token) +
             ", " + std::to_string(cpu.r.top[i].logprob) + ")";
  }
  return "";
}

// ---- rows ---------------------------------------------------------------------------------------

enum class Shape { Normal, Peaked, Ties, Masked, Extreme, Flat, Zeros };
const char* shape_name(Shape s) {
  switch (s) {
    case Shape::Normal: return "normal";
    case Shape::Peaked: return "peaked";
    case Shape::Ties: return "ties";
    case Shape::Masked: return "masked";
    case Shape::Extreme: return "extreme";
    case Shape::Flat: return "flat";
    case Shape::Zeros: return "zeros";
  }
  return "?";
}

std::vector<float> make_row(Shape shape, int32_t V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(V);
  switch (shape) {
    case Shape::Normal:
      for (float& v : x) v = 2.0f * nd(rng);
      break;
    case Shape::Peaked:  // a few tokens far above the rest, as a confident model
      for (float& v : x) v = 3.0f * nd(rng) - 5.0f;
      for (int i = 0; i < 5; ++i) x[rng() % V] = 12.0f + static_cast<float>(i);
      break;
    case Shape::Ties:  // values on a coarse grid: many exact ties, at the top too
      for (float& v : x) v = std::round(nd(rng) * 4.0f) / 4.0f;
      for (int32_t i = 0; i < V; i += 97) x[i] = 3.0f;
      break;
    case Shape::Masked:
      for (float& v : x) v = 1.5f * nd(rng);
      for (float& v : x)
        if (rng() % 10 < 3) v = -INFINITY;
      x[rng() % V] = 2.0f;  // at least one finite
      break;
    case Shape::Extreme:  // huge and tiny magnitudes
      for (float& v : x) {
        const uint64_t u = rng() % 6;
        v = u == 0 ? 3.0e38f : u == 1 ? -3.0e38f : u == 2 ? 1e-30f : u == 3 ? -1e-38f
          : u == 4 ? 80.0f * nd(rng) : nd(rng);
      }
      break;
    case Shape::Flat:  // every logit equal: the worst case for the histograms
      for (float& v : x) v = 0.25f;
      break;
    case Shape::Zeros:  // signed zeros and a few small values
      for (float& v : x) v = rng() % 2 ? 0.0f : -0.0f;
      for (int i = 0; i < 3; ++i) x[rng() % V] = -1e-3f;
      break;
  }
  return x;
}

std::vector<SampleRowParams> param_sets() {
  std::vector<SampleRowParams> out;
  auto add = [&](auto set) {
    SampleRowParams p;
    set(p);
    out.push_back(p);
  };
  add([](SampleRowParams& p) {});  // greedy
  add([](SampleRowParams& p) { p.n_logprobs = 5; });
  add([](SampleRowParams& p) { p.temperature = 0.7f; });
  add([](SampleRowParams& p) { p.temperature = 1.0f, p.n_logprobs = 20; });
  add([](SampleRowParams& p) { p.temperature = 1.0f, p.top_k = 1; });
  add([](SampleRowParams& p) { p.temperature = 0.7f, p.top_k = 40; });
  add([](SampleRowParams& p) { p.temperature = 1.0f, p.top_p = 0.9f; });
  add([](SampleRowParams& p) { p.temperature = 1.0f, p.min_p = 0.05f; });
  add([](SampleRowParams& p) {
    p.temperature = 0.7f, p.top_k = 40, p.top_p = 0.9f, p.min_p = 0.05f, p.n_logprobs = 5;
  });
  add([](SampleRowParams& p) { p.temperature = 1.6f, p.top_p = 0.3f, p.top_k = 5000; });
  add([](SampleRowParams& p) {
    p.temperature = 1.0f, p.repetition_penalty = 1.3f, p.frequency_penalty = 0.5f;
    p.presence_penalty = -0.7f, p.n_logprobs = 3;
  });
  add([](SampleRowParams& p) { p.repetition_penalty = 1.5f, p.frequency_penalty = 1.0f; });
  add([](SampleRowParams& p) { p.want_token = 0, p.n_logprobs = 20; });  // want set per row
  add([](SampleRowParams& p) { p.temperature = 1.0f, p.min_p = 1e-9f, p.top_k = 2; });
  return out;
}

// Cases for one V: every shape x every parameter set, with per-row seeds, token indices,
// histories and wanted tokens.
std::vector<Case> make_cases(int32_t V, uint64_t salt, int max_shapes = 7) {
  std::vector<Case> cases;
  const Shape shapes[] = {Shape::Normal, Shape::Peaked, Shape::Ties, Shape::Masked,
                          Shape::Extreme, Shape::Flat, Shape::Zeros};
  const std::vector<SampleRowParams> ps = param_sets();
  std::mt19937_64 rng(salt * 1000003 + V);
  for (int si = 0; si < max_shapes; ++si) {
    const std::vector<float> x = make_row(shapes[si], V, salt + 31 * si + V);
    for (size_t pi = 0; pi < ps.size(); ++pi) {
      Case c;
      c.logits = x;
      c.p = ps[pi];
      c.p.seed = rng();
      c.p.token_index = static_cast<int64_t>(rng() % 100000);
      if (c.p.want_token >= 0) c.p.want_token = static_cast<int32_t>(rng() % V);
      const int H = static_cast<int>(rng() % 300);
      for (int i = 0; i < H; ++i)  // repeats, so counts > 1 occur
        c.history.push_back(static_cast<int32_t>(rng() % std::min<int32_t>(V, 64 + V / 50)));
      c.p.n_prompt = H > 0 ? static_cast<int32_t>(rng() % (H + 1)) : 0;
      c.what = std::string(shape_name(shapes[si])) + " V=" + std::to_string(V) + " params#" +
               std::to_string(pi);
      cases.push_back(std::move(c));
    }
  }
  return cases;
}

void check_against_cpu(int32_t V, uint64_t salt, int max_shapes = 7, int64_t ld = 0) {
  const std::vector<Case> cases = make_cases(V, salt, max_shapes);
  std::vector<const Case*> ptrs;
  for (const Case& c : cases) ptrs.push_back(&c);
  const std::vector<SampleRowResult> got = run_gpu(ptrs, V, ld);
  Sampler s;
  int failures = 0, sampled = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const CpuAnswer want = cpu_answer(s, cases[i]);
    ASSERT_TRUE(want.ok) << cases[i].what;
    const std::string diff = compare(want, got[i]);
    if (!diff.empty() && ++failures <= 10) ADD_FAILURE() << cases[i].what << ": " << diff;
    sampled += cases[i].p.temperature > 0.0f && cases[i].p.want_token < 0;
  }
  EXPECT_EQ(failures, 0) << "of " << cases.size() << " rows";
  EXPECT_GT(sampled, 0);
}

TEST(SamplerGpu, MatchesCpuV1) {
  REQUIRE_GPU();
  check_against_cpu(1, 1);
}
TEST(SamplerGpu, MatchesCpuV10) {
  REQUIRE_GPU();
  check_against_cpu(10, 2);
}
TEST(SamplerGpu, MatchesCpuV1000) {
  REQUIRE_GPU();
  for (uint64_t salt = 3; salt < 6; ++salt) check_against_cpu(1000, salt);
}
TEST(SamplerGpu, MatchesCpuV128256) {
  REQUIRE_GPU();
  check_against_cpu(128256, 7);
}
TEST(SamplerGpu, MatchesCpuV151936) {
  REQUIRE_GPU();
  check_against_cpu(151936, 8);
}
// A vocabulary with a partial last block of 4096 lanes and odd sizes.
TEST(SamplerGpu, MatchesCpuOddSizes) {
  REQUIRE_GPU();
  for (int32_t V : {3, 33, 4095, 4097, 50257}) check_against_cpu(V, 9, 4);
}

// Rows further apart than V (unaligned ones too): the stride is honoured, the gaps never read.
TEST(SamplerGpu, MatchesCpuWithRowStride) {
  REQUIRE_GPU();
  check_against_cpu(1000, 10, 3, 1003);
  check_against_cpu(128256, 11, 2, 128256 + 64);
}

// Every case sampled on the GPU in one batch, each against the CPU sampler: the same answer.
void expect_gpu_equals_cpu(const std::vector<Case>& cases, int32_t V) {
  std::vector<const Case*> ptrs;
  for (const Case& c : cases) ptrs.push_back(&c);
  const std::vector<SampleRowResult> got = run_gpu(ptrs, V);
  Sampler s;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string diff = compare(cpu_answer(s, cases[i]), got[i]);
    EXPECT_TRUE(diff.empty()) << cases[i].what << ": " << diff;
  }
}

// Many seeds on one row: the draws (not only a few) agree, through every walk path.
TEST(SamplerGpu, ManyDrawsMatchCpu) {
  REQUIRE_GPU();
  const int32_t V = 32000;
  std::vector<Case> cases;
  for (Shape sh : {Shape::Normal, Shape::Ties, Shape::Flat}) {
    const std::vector<float> x = make_row(sh, V, 77);
    for (int i = 0; i < 64; ++i) {
      Case c;
      c.logits = x;
      c.p.temperature = i % 2 ? 1.0f : 3.0f;
      c.p.top_p = i % 3 == 0 ? 0.95f : 1.0f;
      c.p.top_k = i % 4 == 0 ? 2000 : 0;
      c.p.seed = 1234 + i;
      c.p.token_index = i;
      c.what = std::string(shape_name(sh)) + " draw " + std::to_string(i);
      cases.push_back(std::move(c));
    }
  }
  expect_gpu_equals_cpu(cases, V);
}

// Long histories (penalties over thousands of prompt and generated tokens).
TEST(SamplerGpu, LongHistoryMatchesCpu) {
  REQUIRE_GPU();
  const int32_t V = 32000;
  std::vector<Case> cases;
  std::mt19937_64 rng(99);
  for (int i = 0; i < 12; ++i) {
    Case c;
    c.logits = make_row(i % 2 ? Shape::Normal : Shape::Ties, V, 500 + i);
    c.p.temperature = i % 3 == 0 ? 0.0f : 0.9f;
    c.p.top_p = 0.9f;
    c.p.repetition_penalty = 1.2f;
    c.p.frequency_penalty = i % 2 ? 0.4f : -0.3f;
    c.p.presence_penalty = 0.5f;
    c.p.n_logprobs = i % 4;
    c.p.seed = rng();
    c.p.token_index = i;
    const int H = 5000 + 3000 * i;
    for (int k = 0; k < H; ++k) c.history.push_back(static_cast<int32_t>(rng() % (k % 3 ? 500 : V)));
    c.p.n_prompt = H / 2;
    c.what = "long history #" + std::to_string(i);
    cases.push_back(std::move(c));
  }
  expect_gpu_equals_cpu(cases, V);
}

TEST(SamplerGpu, ErrorCasesGiveStatusCodes) {
  REQUIRE_GPU();
  const int32_t V = 1000;
  std::vector<Case> cases;
  auto add = [&](std::vector<float> x, SampleRowParams p, std::vector<int32_t> h, const char* w) {
    cases.push_back(Case{std::move(x), p, std::move(h), w});
  };
  const std::vector<float> good = make_row(Shape::Normal, V, 5);
  SampleRowParams t1;
  t1.temperature = 1.0f;
  std::vector<float> nan_row = good, inf_row = good, ninf_row(V, -INFINITY);
  nan_row[700] = NAN;
  nan_row[900] = NAN;
  inf_row[12] = INFINITY;
  add(nan_row, t1, {}, "nan");
  add(inf_row, SampleRowParams{}, {}, "inf");
  add(ninf_row, t1, {}, "all -inf");
  add(good, t1, {1, 2, 1000, 3, -1}, "history out of range");
  SampleRowParams np = t1;
  np.n_prompt = 3;
  add(good, np, {1, 2}, "n_prompt > history");
  SampleRowParams bad = t1;
  bad.top_p = 0.0f;
  add(good, bad, {}, "top_p 0");
  SampleRowParams neg = t1;
  neg.token_index = -1;
  add(good, neg, {}, "negative token index");
  SampleRowParams want;
  want.want_token = V;
  add(good, want, {}, "want_token >= V");
  add(good, t1, {1, 2}, "fine");
  std::vector<const Case*> ptrs;
  for (const Case& c : cases) ptrs.push_back(&c);
  const std::vector<SampleRowResult> got = run_gpu(ptrs, V);
  const int32_t want_status[] = {cuda::kSampleNonFiniteLogit, cuda::kSampleNonFiniteLogit,
                                 cuda::kSampleNoFiniteLogit,  cuda::kSampleBadHistory,
                                 cuda::kSampleBadHistory,     cuda::kSampleBadParams,
                                 cuda::kSampleBadParams,      cuda::kSampleBadWantToken,
                                 cuda::kSampleOk};
  const int32_t want_detail[] = {700, 12, 0, 2, -1, 0, 0, V, 0};
  Sampler s;
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(got[i].status, want_status[i]) << cases[i].what;
    EXPECT_EQ(got[i].detail, want_detail[i]) << cases[i].what;
    if (cases[i].p.want_token < 0) {  // the CPU sampler throws exactly where the GPU reports
      const CpuAnswer a = cpu_answer(s, cases[i]);
      EXPECT_EQ(a.ok, want_status[i] == cuda::kSampleOk) << cases[i].what;
    }
  }
  // Bad sizes are the host's errors.
  DeviceBuf<unsigned char> ws(64);
  EXPECT_THROW(cuda::sample_rows(nullptr, 10, 1, 0, nullptr, nullptr, ws.p, 64, nullptr, nullptr),
               Error);
  EXPECT_THROW(cuda::sample_rows(nullptr, 5, 1, 10, nullptr, nullptr, ws.p, 64, nullptr, nullptr),
               Error);
  EXPECT_THROW(cuda::sample_rows(nullptr, 1000, 4, 1000, nullptr, nullptr, ws.p, 64, nullptr,
                                 nullptr),
               Error);
}

// A row's result does not depend on the other rows of the launch or on its slot.
TEST(SamplerGpu, BatchInvariant) {
  REQUIRE_GPU();
  const int32_t V = 50000;
  const std::vector<Case> cases = make_cases(V, 42, 5);
  std::vector<const Case*> all;
  for (const Case& c : cases) all.push_back(&c);
  const std::vector<SampleRowResult> together = run_gpu(all, V);
  // Reversed, with duplicates and others interleaved, and each row alone.
  std::vector<const Case*> mixed;
  std::mt19937 rng(3);
  for (size_t i = all.size(); i-- > 0;) {
    mixed.push_back(all[i]);
    mixed.push_back(all[rng() % all.size()]);
  }
  const std::vector<SampleRowResult> shuffled = run_gpu(mixed, V);
  for (size_t j = 0; j < mixed.size(); j += 2) {
    const size_t i = all.size() - 1 - j / 2;
    EXPECT_EQ(std::memcmp(&shuffled[j], &together[i], sizeof(SampleRowResult) -
                                                          sizeof(float) * cuda::kSampleMaxTop -
                                                          sizeof(int32_t) * cuda::kSampleMaxTop),
              0)
        << cases[i].what;
    for (int k = 0; k < together[i].n_top; ++k) {
      EXPECT_EQ(shuffled[j].top_token[k], together[i].top_token[k]) << cases[i].what;
      EXPECT_TRUE(same_bits(shuffled[j].top_logprob[k], together[i].top_logprob[k]))
          << cases[i].what;
    }
  }
  for (size_t i = 0; i < all.size(); i += 7) {
    const SampleRowResult alone = run_gpu({all[i]}, V)[0];
    EXPECT_EQ(alone.token, together[i].token) << cases[i].what;
    EXPECT_TRUE(same_bits(alone.logprob, together[i].logprob)) << cases[i].what;
  }
}

// The GPU's det_logf and det_expf give the CPU's bits over a sweep of the float range.
TEST(SamplerGpu, ExpAndLogMatchCpuBits) {
  REQUIRE_GPU();
  std::vector<float> xs;
  for (uint64_t b = 0; b <= 0xffffffffull; b += 4099) {
    float f;
    const uint32_t u = static_cast<uint32_t>(b);
    std::memcpy(&f, &u, 4);
    xs.push_back(f);
  }
  for (uint32_t b = 0x3f700000u; b <= 0x3f880000u; b += 3) {  // log near 1
    float f;
    std::memcpy(&f, &b, 4);
    xs.push_back(f);
  }
  for (float f : {0.0f, -0.0f, 1.0f, INFINITY, -INFINITY, FLT_MIN, FLT_TRUE_MIN, FLT_MAX, -104.0f,
                  89.0f, 1e-45f, 4096.0f, 128256.0f})
    xs.push_back(f);
  const size_t n = xs.size();
  DeviceBuf<float> dx(n), dy(n);
  dx.upload(xs.data(), n);
  std::vector<float> gy(n);
  for (int which = 0; which < 2; ++which) {
    if (which == 0)
      cuda::det_logf_n(dx.p, static_cast<int64_t>(n), dy.p, nullptr);
    else
      cuda::det_expf_n(dx.p, static_cast<int64_t>(n), dy.p, nullptr);
    ck(cudaMemcpy(gy.data(), dy.p, n * sizeof(float), cudaMemcpyDeviceToHost), "download");
    int bad = 0;
    for (size_t i = 0; i < n; ++i) {
      const float want = which == 0 ? cpu::det_logf(xs[i]) : cpu::det_expf(xs[i]);
      const bool ok = std::isnan(want) ? std::isnan(gy[i]) : same_bits(want, gy[i]);
      if (!ok && ++bad <= 5)
        ADD_FAILURE() << (which == 0 ? "log(" : "exp(") << xs[i] << "): GPU " << gy[i] << " CPU "
                      << want;
    }
    EXPECT_EQ(bad, 0);
  }
}

}  // namespace
