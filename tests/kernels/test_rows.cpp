// Row kernels: rmsnorm, rope, swiglu, add_inplace, log_softmax. Each against fp64, and the
// invariances (rows alone vs in a batch, thread counts, SIMD vs portable).
#include <numbers>

#include "common/thread_pool.h"
#include "kernel_test_util.h"

namespace detinfer::test {
namespace {

// ---- rmsnorm ------------------------------------------------------------------------------------

std::vector<float> run_rmsnorm(ThreadPool& pool, const std::vector<float>& x, int64_t M, int64_t D,
                               const std::vector<float>& w, float eps) {
  std::vector<float> y(x.size());
  cpu::rmsnorm(pool, x.data(), M, D, w.data(), eps, y.data());
  return y;
}

TEST(RmsNorm, MatchesFp64Reference) {
  ThreadPool pool(2);
  for (int64_t D : {1, 7, 64, 576, 2053}) {
    const int64_t M = 5;
    std::vector<float> x = random_floats(M * D, 100 + D, -3.0f, 3.0f);
    for (int64_t i = 0; i < D; ++i) x[i] *= 1e-3f;  // a small-norm row
    const std::vector<float> w = random_floats(D, 200 + D, 0.5f, 1.5f);
    const float eps = 1e-5f;
    const std::vector<float> y = run_rmsnorm(pool, x, M, D, w, eps);
    // ss has at most D/8 + 3 + D%8 roundings of positive terms; 1/sqrt halves its relative
    // error and adds 2 roundings; two multiplies follow.
    const double c = (D / 8 + 3 + D % 8) / 2.0 + 6;
    for (int64_t m = 0; m < M; ++m) {
      double ss = 0;
      for (int64_t i = 0; i < D; ++i) ss += static_cast<double>(x[m * D + i]) * x[m * D + i];
      const double inv = 1.0 / std::sqrt(ss / D + eps);
      for (int64_t i = 0; i < D; ++i) {
        const double ref = x[m * D + i] * inv * w[i];
        ASSERT_LE(std::fabs(y[m * D + i] - ref), c * kEps * std::fabs(ref) + 1e-30)
            << "D=" << D << " m=" << m << " i=" << i;
      }
    }
  }
}

TEST(RmsNorm, RowsAreIndependentOfBatchThreadsAndPath) {
  const int64_t D = 579, M = 33;
  const std::vector<float> x = random_floats(M * D, 1);
  const std::vector<float> w = random_floats(D, 2);
  ThreadPool p1(1), p3(3);
  const std::vector<float> ref = run_rmsnorm(p3, x, M, D, w, 1e-6f);
  EXPECT_EQ(first_diff(ref, run_rmsnorm(p1, x, M, D, w, 1e-6f)), -1);
  for (int64_t r : {0, 5, 32}) {
    std::vector<float> row(x.begin() + r * D, x.begin() + (r + 1) * D);
    const std::vector<float> y = run_rmsnorm(p1, row, 1, D, w, 1e-6f);
    EXPECT_TRUE(same_bits(y.data(), ref.data() + r * D, D)) << "row " << r;
  }
  std::vector<float> in_place = x;
  cpu::rmsnorm(p3, in_place.data(), M, D, w.data(), 1e-6f, in_place.data());
  EXPECT_EQ(first_diff(ref, in_place), -1);
  if (cpu::simd_supported()) {
    std::vector<float> portable;
    with_simd(false, [&] { portable = run_rmsnorm(p3, x, M, D, w, 1e-6f); });
    EXPECT_EQ(first_diff(ref, portable), -1);
  }
}

// ---- rope ---------------------------------------------------------------------------------------

TEST(RopeInvFreq, PlainMatchesFp64) {
  std::vector<float> f(64);
  cpu::rope_inv_freq(128, 10000.0f, 0.0f, 1.0f, 4.0f, 8192, f.data());
  for (int i = 0; i < 64; ++i)
    EXPECT_EQ(f[i], static_cast<float>(1.0 / std::pow(10000.0, i / 64.0))) << i;
}

// Llama 3.1 8B scaling (theta 500000, factor 8, low 1, high 4, original 8192, head_dim 128).
// Expected values: Hugging Face's _compute_llama3_parameters evaluated in fp64, rounded to fp32.
TEST(RopeInvFreq, Llama3ScalingMatchesHuggingFaceFormula) {
  std::vector<float> f(64), plain(64);
  cpu::rope_inv_freq(128, 500000.0f, 8.0f, 1.0f, 4.0f, 8192, f.data());
  cpu::rope_inv_freq(128, 500000.0f, 0.0f, 1.0f, 4.0f, 8192, plain.data());
  const std::pair<int, float> expected[] = {
      {0, 0x1p+0f},          {1, 0x1.a11582p-1f},   {10, 0x1.078d3ep-3f},  {20, 0x1.0f5386p-6f},
      {25, 0x1.8554eap-8f},  {30, 0x1.67a238p-10f}, {35, 0x1.90d10cp-14f}, {40, 0x1.1f91f0p-15f},
      {45, 0x1.9ca3eap-17f}, {50, 0x1.280d96p-18f}, {63, 0x1.4985fep-22f}};
  for (const auto& [i, v] : expected) EXPECT_EQ(f[i], v) << "i=" << i;
  // High frequencies are kept, low ones divided by the factor, the band between in between.
  for (int i = 0; i < 64; ++i) {
    const double wavelen = 2 * std::numbers::pi / plain[i];
    if (wavelen < 8192.0 / 4) {
      EXPECT_EQ(f[i], plain[i]) << i;
    } else if (wavelen > 8192.0) {
      EXPECT_NEAR(f[i], plain[i] / 8.0, plain[i] * 1e-6) << i;
    } else {
      EXPECT_LE(f[i], plain[i]) << i;
      EXPECT_GE(f[i], plain[i] / 8.0 * (1 - 1e-6)) << i;
    }
  }
}

TEST(Rope, MatchesFp64AndDependsOnlyOnPosition) {
  const int n_heads = 3, hd = 64, half = hd / 2;
  std::vector<float> inv(half);
  cpu::rope_inv_freq(hd, 10000.0f, 0.0f, 1.0f, 4.0f, 8192, inv.data());
  const std::vector<int32_t> pos = {0, 1, 17, 4095, 131071, 5};
  const int64_t M = static_cast<int64_t>(pos.size());
  const std::vector<float> x0 = random_floats(M * n_heads * hd, 9, -2.0f, 2.0f);
  std::vector<float> x = x0;
  ThreadPool pool(2);
  cpu::rope(pool, x.data(), M, n_heads, hd, pos.data(), inv.data());
  for (int64_t t = 0; t < M; ++t)
    for (int h = 0; h < n_heads; ++h)
      for (int i = 0; i < half; ++i) {
        const int64_t base = (t * n_heads + h) * hd;
        const double a = static_cast<double>(pos[t]) * inv[i];
        const double u = x0[base + i], v = x0[base + i + half];
        const double r0 = u * std::cos(a) - v * std::sin(a), r1 = v * std::cos(a) + u * std::sin(a);
        const double tol = 3 * kEps * (std::fabs(u) + std::fabs(v));
        ASSERT_NEAR(x[base + i], r0, tol) << t << " " << h << " " << i;
        ASSERT_NEAR(x[base + i + half], r1, tol) << t << " " << h << " " << i;
      }
  // Token 2 alone, on one thread: the same bits.
  std::vector<float> one(x0.begin() + 2 * n_heads * hd, x0.begin() + 3 * n_heads * hd);
  ThreadPool p1(1);
  cpu::rope(p1, one.data(), 1, n_heads, hd, &pos[2], inv.data());
  EXPECT_TRUE(same_bits(one.data(), x.data() + 2 * n_heads * hd, one.size()));
}

// ---- swiglu, add --------------------------------------------------------------------------------

TEST(SwiGLU, MatchesFp64AndPathsAgree) {
  const int64_t n = 40000 + 5;
  std::vector<float> g = random_floats(n, 1, -20.0f, 20.0f);
  g[0] = -100.0f;  // exp(100) overflows: silu = -0
  g[1] = 100.0f;
  g[2] = 0.0f;
  const std::vector<float> u = random_floats(n, 2, -3.0f, 3.0f);
  ThreadPool pool(3);
  std::vector<float> out(n);
  cpu::swiglu(pool, g.data(), u.data(), n, out.data());
  for (int64_t i = 0; i < n; ++i) {
    const double ref = g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i];
    ASSERT_LE(std::fabs(out[i] - ref), 6 * kEps * std::fabs(ref) + 1e-38) << i << " g=" << g[i];
  }
  std::vector<float> alias = g;  // out aliases gate, as the forward pass calls it
  cpu::swiglu(pool, alias.data(), u.data(), n, alias.data());
  EXPECT_EQ(first_diff(out, alias), -1);
  if (cpu::simd_supported()) {
    std::vector<float> portable(n);
    ThreadPool p1(1);
    with_simd(false, [&] { cpu::swiglu(p1, g.data(), u.data(), n, portable.data()); });
    EXPECT_EQ(first_diff(out, portable), -1);
  }
}

TEST(AddInplace, Adds) {
  std::vector<float> y = {1.0f, 2.0f, -3.0f}, x = {0.5f, -2.0f, 1e-8f};
  cpu::add_inplace(y.data(), x.data(), 3);
  EXPECT_EQ(y, (std::vector<float>{1.5f, 0.0f, -3.0f + 1e-8f}));
}

// ---- log_softmax --------------------------------------------------------------------------------

TEST(LogSoftmax, MatchesFp64AndPathsAgree) {
  for (int64_t V : {1, 5, 8, 49152, 151936 + 3}) {
    const std::vector<float> x = random_floats(V, 50 + V, -30.0f, 15.0f);
    std::vector<float> out(V);
    cpu::log_softmax(x.data(), V, out.data());
    double mx = -1e300;
    for (float v : x) mx = std::max<double>(mx, v);
    double sum = 0;
    for (float v : x) sum += std::exp(v - mx);
    const double lse = std::log(sum);
    // exp's ~1 ulp and the canonical sum's V/8 + 3 + V%8 roundings make sum's relative error,
    // which is lse's absolute error; the two subtractions round once each.
    const double sum_err = (V / 8 + 3 + V % 8 + 2) * kEps;
    for (int64_t v = 0; v < V; ++v) {
      const double ref = (x[v] - mx) - lse;
      ASSERT_LE(std::fabs(out[v] - ref),
                sum_err + 2 * kEps * (std::fabs(x[v] - mx) + std::fabs(lse)))
          << "V=" << V << " v=" << v;
    }
    std::vector<float> alias = x;
    cpu::log_softmax(alias.data(), V, alias.data());
    EXPECT_EQ(first_diff(out, alias), -1);
    if (cpu::simd_supported()) {
      std::vector<float> portable(V);
      with_simd(false, [&] { cpu::log_softmax(x.data(), V, portable.data()); });
      EXPECT_EQ(first_diff(out, portable), -1) << "V=" << V;
    }
  }
}

// The max's lane layout is emulated exactly, signed zeros included.
TEST(LogSoftmax, SignedZerosAndTiesAgreeAcrossPaths) {
  if (!cpu::simd_supported()) GTEST_SKIP();
  std::vector<float> x = {-0.0f, 0.0f, -0.0f, 0.0f, 0.0f, -0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f};
  std::vector<float> a(x.size()), b(x.size());
  with_simd(true, [&] { cpu::log_softmax(x.data(), 11, a.data()); });
  with_simd(false, [&] { cpu::log_softmax(x.data(), 11, b.data()); });
  EXPECT_EQ(first_diff(a, b), -1);
}

}  // namespace
}  // namespace detinfer::test
