// CudaOps kernels one by one: the GEMM against fp64 references for every stored dtype and the
// T1 M-sweep (bitwise), rmsnorm against fp64 and across row counts (bitwise), and the ops whose
// recipe is the CPU's (exp, rope, swiglu, add, embed, gather) bitwise against CpuOps.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "common/error.h"
#include "cuda_ops_test_util.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/attention.h"

using namespace detinfer;
using namespace cuda_ops_test;

namespace {

// ---- exp -----------------------------------------------------------------------------------------

TEST(CudaOpsExp, BitwiseEqualToCpuDetExpf) {
  CUDA_OPS_REQUIRE_GPU();
  CudaOps ops(0);
  std::vector<float> x = {0.0f, -0.0f, 1.0f, -1.0f, 88.72f, 89.0f, 89.5f, 1000.0f, -87.3f, -103.9f,
                          -104.0f, -150.0f, 1e-30f, -1e-30f, 0.5f, -0.5f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::denorm_min()};
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> wide(-110.0f, 95.0f), narrow(-1.0f, 1.0f);
  for (int i = 0; i < 200000; ++i) x.push_back(i % 2 ? wide(rng) : narrow(rng));
  const int64_t n = static_cast<int64_t>(x.size());
  DeviceArray dx(ops, 0, n), dy(ops, 1, n);
  dx.upload(x);
  dy.poison();
  ops.det_expf_n(dx.ptr, n, dy.ptr);
  const std::vector<float> y = dy.download();
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float want = cpu::det_expf(x[i]);
    const bool same = std::isnan(want) ? std::isnan(y[i]) : std::memcmp(&want, &y[i], 4) == 0;
    if (!same && bad++ < 5) ADD_FAILURE() << "exp(" << x[i] << "): GPU " << y[i] << ", CPU " << want;
  }
  EXPECT_EQ(bad, 0);
}

// ---- GEMM against fp64 ---------------------------------------------------------------------------

struct GemmCase {
  DType dtype;
  int64_t M, N, K;
};

class CudaOpsGemmAccuracy : public ::testing::TestWithParam<GemmCase> {};

TEST_P(CudaOpsGemmAccuracy, MatchesFp64Reference) {
  CUDA_OPS_REQUIRE_GPU();
  const GemmCase c = GetParam();
  CudaOps ops(0);
  auto w = make_tensor(c.dtype, c.N, c.K, 11 + c.K);
  auto bias = make_vector(random_normal(c.N, 5, 0.1f), "bias");
  const std::vector<float> x = random_normal(c.M * c.K, 3);
  const std::vector<float> wf = to_f32(w->view);
  std::vector<float> bias_f(c.N);
  std::memcpy(bias_f.data(), bias->bytes.data(), c.N * 4);

  DeviceArray dx(ops, 0, c.M * c.K), dy(ops, 1, c.M * c.N);
  dx.upload(x);
  dy.poison();
  ops.matmul(dx.ptr, c.M, w->view, &bias->view, dy.ptr);
  const std::vector<float> y = dy.download();

  // (1) the exact product of the bf16-rounded operands: only accumulation rounding is allowed
  //     (fp32 accumulators, one tensor-core step per 16 K): (K/16 + 2) · 2^-20 · Σ|x·w|.
  // (2) the unrounded fp32 operands: bf16 rounds each operand by at most 2^-9 relative, so
  //     |error| <= 2^-7 · Σ|x·w| (+ the bias add); and ‖y − ref‖ / ‖ref‖ well under 1e-2.
  double err2 = 0, ref2 = 0, worst1 = 0, worst2 = 0;
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t n = 0; n < c.N; ++n) {
      double exact = 0, full = 0, mag = 0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double xv = x[m * c.K + k], wv = wf[n * c.K + k];
        exact += static_cast<double>(round_bf16(x[m * c.K + k])) * round_bf16(wf[n * c.K + k]);
        full += xv * wv;
        mag += std::fabs(xv * wv);
      }
      exact += bias_f[n];
      full += bias_f[n];
      const double got = y[m * c.N + n];
      ASSERT_TRUE(std::isfinite(got)) << "y[" << m << ", " << n << "] not written";
      const double tol1 = (c.K / 16.0 + 2.0) * std::ldexp(mag, -20) + std::ldexp(std::fabs(exact), -23);
      const double tol2 = std::ldexp(mag, -7) + std::ldexp(std::fabs(full), -23);
      ASSERT_LE(std::fabs(got - exact), tol1) << "y[" << m << ", " << n << "] vs bf16-exact " << exact;
      ASSERT_LE(std::fabs(got - full), tol2) << "y[" << m << ", " << n << "] vs fp64 " << full;
      worst1 = std::max(worst1, std::fabs(got - exact) / std::max(mag, 1e-30));
      worst2 = std::max(worst2, std::fabs(got - full) / std::max(mag, 1e-30));
      err2 += (got - full) * (got - full);
      ref2 += full * full;
    }
  EXPECT_LT(std::sqrt(err2 / ref2), 1e-2);
  std::printf("[gemm %s M=%lld N=%lld K=%lld] max |y-exact|/Σ|xw| = %.3g, max |y-fp64|/Σ|xw| = %.3g, "
              "rel L2 vs fp64 = %.3g\n",
              dtype_name(c.dtype), static_cast<long long>(c.M), static_cast<long long>(c.N),
              static_cast<long long>(c.K), worst1, worst2, std::sqrt(err2 / ref2));
}

INSTANTIATE_TEST_SUITE_P(
    Dtypes, CudaOpsGemmAccuracy,
    ::testing::Values(GemmCase{DType::F32, 37, 200, 96}, GemmCase{DType::F32, 5, 131, 45},
                      GemmCase{DType::F16, 37, 200, 96}, GemmCase{DType::BF16, 70, 129, 160},
                      GemmCase{DType::Q8_0, 37, 200, 96}, GemmCase{DType::Q4_0, 37, 200, 96},
                      GemmCase{DType::Q4_1, 37, 200, 96}, GemmCase{DType::F32, 1, 1, 1}),
    [](const auto& info) {
      return std::string(dtype_name(info.param.dtype)) + "_M" + std::to_string(info.param.M) + "_N" +
             std::to_string(info.param.N) + "_K" + std::to_string(info.param.K);
    });

// ---- GEMM T1: the M-sweep ------------------------------------------------------------------------

struct SweepShape {
  int64_t N, K;
};

class CudaOpsGemmT1 : public ::testing::TestWithParam<SweepShape> {};

// T1 of DETERMINISM.md: for M in {1..64, 100, 128, 255, 256, 1000}, every row of y equals the
// same row computed with M = 1000 and, for sampled rows, with M = 1, bit for bit; also with the
// rows shifted so they sit at other positions of a tile.
TEST_P(CudaOpsGemmT1, MSweepIsBitwiseInvariant) {
  CUDA_OPS_REQUIRE_GPU();
  const auto [N, K] = GetParam();
  constexpr int64_t kMaxM = 1000;
  CudaOps ops(0);
  auto w = make_tensor(DType::F32, N, K, 1234 + N);
  std::vector<float> x = random_normal(kMaxM * K, 99);
  DeviceArray dx(ops, 0, kMaxM * K), dfull(ops, 1, kMaxM * N), dy(ops, 2, kMaxM * N);
  dx.upload(x);
  dfull.poison();
  ops.matmul(dx.ptr, kMaxM, w->view, nullptr, dfull.ptr);
  const std::vector<float> full = dfull.download();
  for (float v : full) ASSERT_TRUE(std::isfinite(v));

  auto run = [&](int64_t first, int64_t M) {
    dy.poison();
    ops.matmul(dx.ptr + first * K, M, w->view, nullptr, dy.ptr);
    return dy.download(M * N);
  };
  auto expect_rows = [&](const std::vector<float>& y, int64_t first, int64_t M, const char* what) {
    const int64_t d = first_bit_difference(y.data(), full.data() + first * N, M * N);
    EXPECT_EQ(d, -1) << what << " first=" << first << " M=" << M << ": row " << first + d / N
                     << " col " << d % N << " is " << y[d] << ", with M=1000 "
                     << full[first * N + d];
  };

  std::vector<int64_t> sweep;
  for (int64_t m = 1; m <= 64; ++m) sweep.push_back(m);
  for (int64_t m : {100, 128, 255, 256, 1000}) sweep.push_back(m);
  for (int64_t M : sweep) expect_rows(run(0, M), 0, M, "prefix");
  // Rows alone (M = 1), at every position of the first tile and a few beyond.
  for (int64_t r = 0; r < 64; ++r) expect_rows(run(r, 1), r, 1, "alone");
  for (int64_t r : {99, 127, 128, 254, 255, 511, 998, 999}) expect_rows(run(r, 1), r, 1, "alone");
  // Shifted windows: the same rows at other tile positions and with other neighbours.
  for (int64_t s : {1, 17, 63})
    for (int64_t M : {2, 5, 64, 100, 255}) expect_rows(run(s, M), s, M, "shifted");
  // Run to run.
  expect_rows(run(0, kMaxM), 0, kMaxM, "repeat");
  std::printf("[T1 %lldx%lld] %zu M values + 72 single rows + 15 shifted windows compared bitwise\n",
              static_cast<long long>(N), static_cast<long long>(K), sweep.size());

  // Informational timing (not a benchmark): median of 20 calls.
  for (int64_t M : {int64_t{1}, int64_t{256}}) {
    std::vector<double> ms;
    for (int i = 0; i < 23; ++i) {
      ops.synchronize();
      const auto t0 = std::chrono::steady_clock::now();
      ops.matmul(dx.ptr, M, w->view, nullptr, dy.ptr);
      ops.synchronize();
      if (i >= 3)
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("[T1 %lldx%lld] M=%lld: %.3f ms per call (median, host-timed)\n",
                static_cast<long long>(N), static_cast<long long>(K), static_cast<long long>(M),
                ms[ms.size() / 2]);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaOpsGemmT1,
                         ::testing::Values(SweepShape{576, 1536}, SweepShape{1536, 576},
                                           SweepShape{49152, 576}, SweepShape{1024, 4096}),
                         [](const auto& info) {
                           return "N" + std::to_string(info.param.N) + "_K" + std::to_string(info.param.K);
                         });

// ---- the two GEMM implementations -----------------------------------------------------------------

// On Hopper the TMA/wgmma GEMM serves every M; DETINFER_GEMM=mma selects the portable mma.sync
// kernel that other GPUs run. They must give the same bits, so that a model's outputs do not
// depend on which one a GPU has (and H100/H200 runs compare with runs elsewhere).
TEST(CudaOpsGemmKernels, HopperAndPortableKernelsGiveTheSameBits) {
  CUDA_OPS_REQUIRE_GPU();
  CudaOps fast(0);
  setenv("DETINFER_GEMM", "mma", 1);
  CudaOps portable(0);
  unsetenv("DETINFER_GEMM");
  for (auto [N, K] : {std::pair<int64_t, int64_t>{576, 1536}, {1000, 1001}, {4096, 4096}, {1536, 576}}) {
    auto w = make_tensor(DType::BF16, N, K, 77 + N);
    constexpr int64_t kMaxM = 1000;
    const std::vector<float> x = random_normal(kMaxM * K, 5 + K);
    DeviceArray fx(fast, 0, kMaxM * K), fy(fast, 1, kMaxM * N);
    DeviceArray px(portable, 0, kMaxM * K), py(portable, 1, kMaxM * N);
    fx.upload(x), px.upload(x);
    for (int64_t M : {1, 3, 8, 17, 64, 65, 130, 256, 300, 1000}) {
      fy.poison(), py.poison();
      fast.matmul(fx.ptr, M, w->view, nullptr, fy.ptr);
      portable.matmul(px.ptr, M, w->view, nullptr, py.ptr);
      const std::vector<float> a = fy.download(M * N), b = py.download(M * N);
      const int64_t d = first_bit_difference(a.data(), b.data(), M * N);
      EXPECT_EQ(d, -1) << N << "x" << K << " M=" << M << ": element " << d << " is " << a[d < 0 ? 0 : d]
                       << " on this GPU's kernel, " << b[d < 0 ? 0 : d] << " on the portable one";
    }
  }
}

// ---- fused forms: the bits of the separate ops ---------------------------------------------------

// matmul_n (one GEMM over stacked weights, then a split) against one matmul per weight; with and
// without biases; on this GPU's kernel and on the portable one.
TEST(CudaOpsFusion, StackedMatmulEqualsSeparateMatmuls) {
  CUDA_OPS_REQUIRE_GPU();
  for (const char* kernel : {"", "mma"}) {
    if (*kernel) setenv("DETINFER_GEMM", kernel, 1);
    CudaOps ops(0);
    unsetenv("DETINFER_GEMM");
    const int64_t K = 576;
    const int64_t Ns[3] = {576, 192, 200};
    std::vector<std::unique_ptr<HostTensor>> w, b;
    for (int i = 0; i < 3; ++i) {
      w.push_back(make_tensor(i == 2 ? DType::Q8_0 : DType::BF16, Ns[i], K, 300 + i));
      b.push_back(make_vector(random_normal(Ns[i], 400 + i, 0.5f), "bias"));
    }
    constexpr int64_t kMaxM = 300;
    DeviceArray dx(ops, 0, kMaxM * K);
    dx.upload(random_normal(kMaxM * K, 9));
    std::vector<DeviceArray> stacked, separate;
    for (int i = 0; i < 3; ++i) {
      stacked.emplace_back(ops, 1 + i, kMaxM * Ns[i]);
      separate.emplace_back(ops, 4 + i, kMaxM * Ns[i]);
    }
    for (bool bias : {false, true}) {
      const TensorView* ws[3] = {&w[0]->view, &w[1]->view, &w[2]->view};
      const TensorView* bs[3] = {bias ? &b[0]->view : nullptr, bias ? &b[1]->view : nullptr,
                                 bias ? &b[2]->view : nullptr};
      for (int64_t M : {1, 5, 64, 100, 300}) {
        float* ys[3] = {stacked[0].ptr, stacked[1].ptr, stacked[2].ptr};
        for (int i = 0; i < 3; ++i) stacked[i].poison(), separate[i].poison();
        ops.matmul_n(dx.ptr, M, 3, ws, bs, ys);
        for (int i = 0; i < 3; ++i) ops.matmul(dx.ptr, M, *ws[i], bs[i], separate[i].ptr);
        for (int i = 0; i < 3; ++i) {
          const std::vector<float> a = stacked[i].download(M * Ns[i]), c = separate[i].download(M * Ns[i]);
          EXPECT_EQ(first_bit_difference(a.data(), c.data(), M * Ns[i]), -1)
              << "kernel '" << kernel << "' part " << i << " M=" << M << " bias " << bias;
        }
      }
    }
  }
}

// A one-layer model shape (d_model 576, d_ff as given) set on ops: the fused ops write their bf16
// copies only for the model's d_model and d_ff rows.
ModelConfig init_one_layer(CudaOps& ops, int64_t d_ff) {
  ModelConfig c;
  c.n_layers = 1, c.d_model = 576, c.n_heads = 9, c.n_kv_heads = 3, c.head_dim = 64, c.d_ff = d_ff;
  c.vocab_size = 100, c.max_context = 256;
  c.rope.rotary_dim = 64;
  KvCacheShape kv;
  kv.n_layers = 1, kv.num_blocks = 4, kv.block_size = 16, kv.n_kv_heads = 3, kv.head_dim = 64;
  ops.init(c, kv);
  return c;
}

// add_rmsnorm against add then rmsnorm; and a GEMM fed by the norm's bf16 copy against the same
// GEMM on a fresh copy of the norm's output (which rounds it itself).
TEST(CudaOpsFusion, AddRmsnormAndItsBf16CopyGiveTheSeparateBits) {
  CUDA_OPS_REQUIRE_GPU();
  CudaOps ops(0);
  const ModelConfig c = init_one_layer(ops, 1536);
  const int64_t D = c.d_model;
  auto norm = make_vector(random_normal(D, 3, 0.2f), "norm");
  auto w = make_tensor(DType::BF16, 700, D, 5);
  for (int64_t rows : {1, 7, 130}) {
    const std::vector<float> x = random_normal(rows * D, 10 + rows, 3.0f);
    const std::vector<float> r = random_normal(rows * D, 20 + rows, 1.0f);
    DeviceArray x1(ops, 0, rows * D), r1(ops, 1, rows * D), x2(ops, 2, rows * D), r2(ops, 3, rows * D);
    DeviceArray copy(ops, 4, rows * D), g1(ops, 5, rows * 700), g2(ops, 6, rows * 700);
    x1.upload(x), r1.upload(r), x2.upload(x), r2.upload(r);
    ops.add_rmsnorm(x1.ptr, r1.ptr, rows, D, norm->view, 1e-5f, r1.ptr);  // in place, as the model
    ops.matmul(r1.ptr, rows, w->view, nullptr, g1.ptr);                   // from the bf16 copy
    ops.add(x2.ptr, r2.ptr, rows * D);
    ops.rmsnorm(x2.ptr, rows, D, norm->view, 1e-5f, r2.ptr);
    copy.upload(r2.download(rows * D));
    ops.matmul(copy.ptr, rows, w->view, nullptr, g2.ptr);  // rounds its input itself
    const std::vector<float> a = x1.download(rows * D), b = x2.download(rows * D);
    EXPECT_EQ(first_bit_difference(a.data(), b.data(), rows * D), -1) << "residual, rows " << rows;
    const std::vector<float> na = r1.download(rows * D), nb = r2.download(rows * D);
    EXPECT_EQ(first_bit_difference(na.data(), nb.data(), rows * D), -1) << "norm, rows " << rows;
    const std::vector<float> ga = g1.download(rows * 700), gb = g2.download(rows * 700);
    EXPECT_EQ(first_bit_difference(ga.data(), gb.data(), rows * 700), -1) << "GEMM, rows " << rows;
  }
}

// matmul_swiglu (on Hopper: one GEMM over gate and up interleaved in blocks of 8 rows, SwiGLU in
// its epilogue, the down projection's bf16 input written beside it) against Ops' default, the
// stacked GEMM then the SwiGLU kernel; then the down projection on each. Every token tile (M up
// to 1100: the 256-token tiles), F a multiple of 8 and not, input from a norm's bf16 copy.
TEST(CudaOpsFusion, SwigluInTheGateUpEpilogueGivesTheSeparateBits) {
  CUDA_OPS_REQUIRE_GPU();
  for (int64_t F : {1536, 100}) {
    CudaOps ops(0);
    const ModelConfig c = init_one_layer(ops, F);
    const int64_t D = c.d_model;
    auto norm = make_vector(random_normal(D, 31, 0.2f), "norm");
    auto wg = make_tensor(DType::BF16, F, D, 32, 0.05f, "gate");
    auto wu = make_tensor(DType::Q8_0, F, D, 33, 0.05f, "up");
    auto wd = make_tensor(DType::BF16, D, F, 34, 0.05f, "down");
    constexpr int64_t kMaxM = 1100;
    DeviceArray x(ops, 0, kMaxM * D), h(ops, 1, kMaxM * D);
    DeviceArray g1(ops, 2, kMaxM * F), u1(ops, 3, kMaxM * F), g2(ops, 4, kMaxM * F), u2(ops, 5, kMaxM * F);
    DeviceArray d1(ops, 6, kMaxM * D), d2(ops, 7, kMaxM * D);
    x.upload(random_normal(kMaxM * D, 35, 2.0f));
    for (int64_t M : {1, 3, 8, 9, 32, 33, 64, 100, 130, 300, 1100}) {
      g1.poison(), g2.poison(), d1.poison(), d2.poison();
      ops.rmsnorm(x.ptr, M, D, norm->view, 1e-5f, h.ptr);  // the GEMM reads its bf16 copy
      ops.matmul_swiglu(h.ptr, M, wg->view, wu->view, g1.ptr, u1.ptr, g1.ptr);
      ops.matmul(g1.ptr, M, wd->view, nullptr, d1.ptr);  // reads the epilogue's bf16 copy
      ops.rmsnorm(x.ptr, M, D, norm->view, 1e-5f, h.ptr);
      ops.Ops::matmul_swiglu(h.ptr, M, wg->view, wu->view, g2.ptr, u2.ptr, g2.ptr);
      ops.matmul(g2.ptr, M, wd->view, nullptr, d2.ptr);  // reads the SwiGLU kernel's bf16 copy
      const std::vector<float> a = g1.download(M * F), b = g2.download(M * F);
      EXPECT_EQ(first_bit_difference(a.data(), b.data(), M * F), -1) << "SwiGLU, F " << F << " M " << M;
      const std::vector<float> da = d1.download(M * D), db = d2.download(M * D);
      EXPECT_EQ(first_bit_difference(da.data(), db.data(), M * D), -1) << "down, F " << F << " M " << M;
    }
  }
}

// ---- rmsnorm -------------------------------------------------------------------------------------

TEST(CudaOpsRmsnorm, MatchesFp64AndIsRowCountInvariant) {
  CUDA_OPS_REQUIRE_GPU();
  CudaOps ops(0);
  const int64_t rows = 37;
  const float eps = 1e-5f;
  std::vector<std::unique_ptr<HostTensor>> keep;  // uploads are keyed by the data pointer
  for (int64_t D : {16, 64, 100, 576, 4097}) {
    const std::vector<float> x = random_normal(rows * D, 21 + D, 2.0f);
    std::vector<float> wv = random_normal(D, 8, 0.1f);
    for (float& v : wv) v += 1.0f;
    keep.push_back(make_vector(wv, "norm"));
    const auto& w = keep.back();
    DeviceArray dx(ops, 0, rows * D), dy(ops, 1, rows * D), d1(ops, 2, D);
    dx.upload(x);
    dy.poison();
    ops.rmsnorm(dx.ptr, rows, D, w->view, eps, dy.ptr);
    const std::vector<float> y = dy.download(rows * D);
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < D; ++i) ss += static_cast<double>(x[r * D + i]) * x[r * D + i];
      const double inv = 1.0 / std::sqrt(ss / D + eps);
      for (int64_t i = 0; i < D; ++i) {
        const double ref = x[r * D + i] * inv * wv[i];
        const double tol = (D / 256.0 + 16.0) * std::ldexp(std::fabs(ref), -24) + 1e-37;
        ASSERT_LE(std::fabs(y[r * D + i] - ref), tol) << "D=" << D << " row " << r << " elem " << i;
      }
    }
    // The same row alone, and in place: the same bits.
    for (int64_t r : {0, 5, 36}) {
      d1.poison();
      ops.rmsnorm(dx.ptr + r * D, 1, D, w->view, eps, d1.ptr);
      const std::vector<float> one = d1.download(D);
      EXPECT_EQ(first_bit_difference(one.data(), y.data() + r * D, D), -1) << "D=" << D << " row " << r;
    }
    ops.rmsnorm(dx.ptr, rows, D, w->view, eps, dx.ptr);
    const std::vector<float> inplace = dx.download(rows * D);
    EXPECT_EQ(first_bit_difference(inplace.data(), y.data(), rows * D), -1) << "in place, D=" << D;
  }
}

// ---- the ops whose recipe is the CPU's: bitwise against CpuOps -------------------------------------

ModelConfig small_config(bool llama3, bool freq_factors) {
  ModelConfig c;
  c.n_layers = 1;
  c.d_model = 64;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.d_ff = 128;
  c.vocab_size = 300;
  c.max_context = 8192;
  c.rope.theta = 500000.0f;
  c.rope.rotary_dim = 64;
  if (llama3) {
    c.rope.llama3_factor = 8.0f;
    c.rope.llama3_original_max_position = 64;
  }
  if (freq_factors)
    for (int i = 0; i < 32; ++i) c.rope.freq_factors.push_back(1.0f + 0.25f * static_cast<float>(i % 7));
  return c;
}

KvCacheShape small_kv(const ModelConfig& c) {
  KvCacheShape kv;
  kv.n_layers = c.n_layers;
  kv.num_blocks = 600;
  kv.block_size = 16;
  kv.n_kv_heads = c.n_kv_heads;
  kv.head_dim = c.head_dim;
  return kv;
}

// A step of T tokens of one sequence at the given positions (table covering them all).
StepBatch step_at(const std::vector<int32_t>& pos, const std::vector<int32_t>& tokens) {
  StepBatch b;
  b.tokens = tokens;
  b.pos = pos;
  b.seq.assign(pos.size(), 0);
  std::vector<int32_t> table;
  for (int32_t i = 0; i < 600; ++i) table.push_back(599 - i);
  b.block_tables = {table};
  const int32_t last = static_cast<int32_t>(pos.size()) - 1;
  b.logit_tokens = {std::min(3, last), 0, std::min(7, last), std::min(7, last)};
  return b;
}

TEST(CudaOpsCpuRecipes, RopeIsBitwiseEqualToCpuAndCloseToFp64) {
  CUDA_OPS_REQUIRE_GPU();
  for (int variant = 0; variant < 3; ++variant) {
    const ModelConfig c = small_config(variant >= 1, variant == 2);
    CudaOps gpu(0);
    CpuOps cpu(2);
    gpu.init(c, small_kv(c));
    cpu.init(c, small_kv(c));
    std::mt19937 rng(variant);
    std::vector<int32_t> pos, tokens;
    for (int i = 0; i < 64; ++i) pos.push_back(i);
    for (int i = 0; i < 64; ++i) pos.push_back(static_cast<int32_t>(rng() % 9000));  // table grows
    tokens.assign(pos.size(), 1);
    const StepBatch b = step_at(pos, tokens);
    const int64_t T = b.n_tokens();
    for (int n_heads : {c.n_heads, c.n_kv_heads}) {
      std::vector<float> x = random_normal(T * n_heads * c.head_dim, 40 + n_heads);
      DeviceArray dx(gpu, 0, static_cast<int64_t>(x.size()));
      dx.upload(x);
      gpu.begin_step(b);
      gpu.rope(dx.ptr, n_heads);
      const std::vector<float> got = dx.download();
      std::vector<float> want = x;
      cpu.begin_step(b);
      cpu.rope(want.data(), n_heads);
      EXPECT_EQ(first_bit_difference(got.data(), want.data(), static_cast<int64_t>(x.size())), -1)
          << "variant " << variant << " heads " << n_heads;
      // fp64: rotation by the angle pos · inv_freq (inv_freq as fp32, as both backends use it).
      std::vector<float> inv(c.head_dim / 2);
      const RopeConfig& r = c.rope;
      cpu::rope_inv_freq(c.head_dim, r.theta, r.llama3_factor, r.llama3_low_freq_factor,
                         r.llama3_high_freq_factor, r.llama3_original_max_position, inv.data());
      for (size_t i = 0; i < r.freq_factors.size(); ++i)
        inv[i] = static_cast<float>(static_cast<double>(inv[i]) / r.freq_factors[i]);
      const int half = c.head_dim / 2;
      for (int64_t t = 0; t < T; ++t)
        for (int h = 0; h < n_heads; ++h)
          for (int i = 0; i < half; ++i) {
            const int64_t o = (t * n_heads + h) * c.head_dim;
            const double a = static_cast<double>(pos[t]) * inv[i];
            const double x0 = x[o + i], x1 = x[o + i + half];
            const double r0 = x0 * std::cos(a) - x1 * std::sin(a), r1 = x1 * std::cos(a) + x0 * std::sin(a);
            const double tol = 4 * std::ldexp(std::fabs(x0) + std::fabs(x1), -24);
            ASSERT_NEAR(got[o + i], r0, tol);
            ASSERT_NEAR(got[o + i + half], r1, tol);
          }
    }
  }
}

// got[0] and got[1]: the q, k and attention output of each step, in that order, from two ways of
// running the same calls; every one bitwise equal.
void expect_same_q_k_out(const std::vector<std::vector<float>>* got, int variant) {
  ASSERT_EQ(got[0].size(), got[1].size());
  const char* what[3] = {"q", "k", "attention output"};
  for (size_t i = 0; i < got[0].size(); ++i)
    EXPECT_EQ(first_bit_difference(got[0][i].data(), got[1][i].data(), static_cast<int64_t>(got[0][i].size())), -1)
        << "variant " << variant << " step " << i / 3 << " " << what[i % 3];
}

// rope(q), rope(k), attention(q, k, v): CudaOps runs the rotations and the cache writes in one
// kernel (rope_kv_write). Against the same calls with a copy to the host between them (which runs
// the rotations on their own, then the plain cache write): the same q, k, outputs and cache (the
// next step's attention reads it), for a prefill then a decode step, with and without llama3
// scaling.
TEST(CudaOpsFusion, RopeWithAttentionGivesTheSeparateBits) {
  CUDA_OPS_REQUIRE_GPU();
  for (int variant = 0; variant < 2; ++variant) {
    const ModelConfig c = small_config(variant == 1, false);
    const int64_t Q = int64_t{c.n_heads} * c.head_dim, KV = int64_t{c.n_kv_heads} * c.head_dim;
    std::vector<std::vector<float>> got[2];
    for (int separate = 0; separate < 2; ++separate) {
      CudaOps ops(0);
      ops.init(c, small_kv(c));
      std::vector<int32_t> pos(70);
      std::iota(pos.begin(), pos.end(), 0);
      for (const std::vector<int32_t>& step_pos : {pos, std::vector<int32_t>{70}}) {
        const int64_t T = static_cast<int64_t>(step_pos.size());
        const StepBatch b = step_at(step_pos, std::vector<int32_t>(step_pos.size(), 1));
        DeviceArray q(ops, 0, T * Q), k(ops, 1, T * KV), v(ops, 2, T * KV), out(ops, 3, T * Q);
        q.upload(random_normal(T * Q, 50 + T + variant));
        k.upload(random_normal(T * KV, 60 + T + variant));
        v.upload(random_normal(T * KV, 70 + T + variant));
        out.poison();
        ops.begin_step(b);
        ops.rope(q.ptr, c.n_heads);
        ops.rope(k.ptr, c.n_kv_heads);
        std::vector<float> sink(1);
        if (separate) ops.to_host(q.ptr, 1, sink.data());  // runs the pending rotations
        ops.attention(0, q.ptr, k.ptr, v.ptr, out.ptr);
        got[separate].push_back(q.download());
        got[separate].push_back(k.download());
        got[separate].push_back(out.download());
      }
    }
    expect_same_q_k_out(got, variant);
  }
}

// Decode steps of head_dim 128 at small batch: the attention kernel rotates q and k and writes
// the cache rows itself (cuda::attention_fuses_rope). Against the same calls with that fusion off
// (rope_kv_write, then the attention): the same q, k and outputs at every step, for a prefill and
// then decode steps whose new key falls in each group of a round of four tiles, at the first and
// last row of a tile, in a second round, and past one split (two CTAs per row: the merge kernel
// stores the rotated q). The cache rows written by one step are read by the next, so a wrong
// cache write shows there.
TEST(CudaOpsFusion, RopeInsideDecodeAttentionGivesTheSeparateBits) {
  CUDA_OPS_REQUIRE_GPU();
  for (int variant = 0; variant < 2; ++variant) {
    ModelConfig c = small_config(variant == 1, false);
    c.n_heads = 8, c.n_kv_heads = 2, c.head_dim = 128, c.rope.rotary_dim = 128;
    const int64_t Q = int64_t{c.n_heads} * c.head_dim, KV = int64_t{c.n_kv_heads} * c.head_dim;
    // Four sequences with their own blocks (in reverse order, so slots are not positions);
    // prompts of 61, 170, 250 and 505 tokens, then 24 decode steps of the first three and 10 of
    // all four. New keys: 61..94 (tiles 0, 1), 170..203 (tiles 2, 3), 250..283 (tiles 3, 4: the
    // second round), 505..514 (past 511 the row has two splits).
    const int32_t prompt[4] = {61, 170, 250, 505};
    auto table = [](int s) {
      std::vector<int32_t> t;
      for (int32_t i = 0; i < 150; ++i) t.push_back(599 - (150 * s + i));
      return t;
    };
    struct Step {
      std::vector<int32_t> seqs;
      std::vector<int32_t> pos;  // per token
    };
    std::vector<Step> steps;
    {
      Step pre;
      for (int s = 0; s < 4; ++s)
        for (int32_t p = 0; p < prompt[s]; ++p) pre.seqs.push_back(s), pre.pos.push_back(p);
      steps.push_back(pre);
    }
    for (int i = 0; i < 34; ++i) {
      Step d;
      for (int s = 0; s < (i < 24 ? 3 : 4); ++s) d.seqs.push_back(s), d.pos.push_back(prompt[s] + (s < 3 ? i : i - 24));
      steps.push_back(d);
    }
    {  // the last step: fused, and its last row split over two CTAs
      const Step& last = steps.back();
      const cuda::AttentionPlan plan =
          cuda::plan_attention(last.pos.data(), last.seqs.data(), static_cast<int64_t>(last.pos.size()),
                               c.n_heads, c.n_kv_heads, c.head_dim);
      EXPECT_TRUE(cuda::attention_fuses_rope(plan));
      EXPECT_GT(plan.n_merge, 0);
    }
    std::vector<std::vector<float>> got[2];
    int64_t rope_launches[2] = {0, 0};
    for (int fusion = 0; fusion < 2; ++fusion) {
      cuda::set_attention_rope_fusion(fusion == 1);
      const int64_t before = cuda::attention_rope_launches();
      CudaOps ops(0);
      ops.init(c, small_kv(c));
      for (size_t si = 0; si < steps.size(); ++si) {
        const Step& st = steps[si];
        const int64_t T = static_cast<int64_t>(st.pos.size());
        StepBatch b;
        b.tokens.assign(st.pos.size(), 1);
        b.pos = st.pos;
        b.seq = st.seqs;
        b.block_tables = {table(0), table(1), table(2), table(3)};
        b.logit_tokens = {0};
        DeviceArray q(ops, 0, T * Q), k(ops, 1, T * KV), v(ops, 2, T * KV), out(ops, 3, T * Q);
        q.upload(random_normal(T * Q, 500 + si + 1000 * variant));
        k.upload(random_normal(T * KV, 600 + si + 1000 * variant));
        v.upload(random_normal(T * KV, 700 + si + 1000 * variant));
        out.poison();
        ops.begin_step(b);
        ops.rope(q.ptr, c.n_heads);
        ops.rope(k.ptr, c.n_kv_heads);
        ops.attention(0, q.ptr, k.ptr, v.ptr, out.ptr);
        got[fusion].push_back(q.download());
        got[fusion].push_back(k.download());
        got[fusion].push_back(out.download());
      }
      rope_launches[fusion] = cuda::attention_rope_launches() - before;
    }
    cuda::set_attention_rope_fusion(true);
    EXPECT_EQ(rope_launches[0], 0) << "variant " << variant;
    EXPECT_EQ(rope_launches[1], 34) << "variant " << variant << ": every decode step";
    expect_same_q_k_out(got, variant);
  }
}

TEST(CudaOpsCpuRecipes, SwigluAddEmbedGatherAreBitwiseEqualToCpu) {
  CUDA_OPS_REQUIRE_GPU();
  const ModelConfig c = small_config(false, false);
  CudaOps gpu(0);
  CpuOps cpu(2);
  gpu.init(c, small_kv(c));
  cpu.init(c, small_kv(c));

  // swiglu and add over a wide range of gate values (exp saturating both ways).
  const int64_t n = 100003;
  std::vector<float> g = random_normal(n, 1, 30.0f), u = random_normal(n, 2);
  g[0] = 0.0f, g[1] = -0.0f, g[2] = 200.0f, g[3] = -200.0f, g[4] = 88.5f, g[5] = -88.5f;
  DeviceArray dg(gpu, 0, n), du(gpu, 1, n), dout(gpu, 2, n);
  dg.upload(g);
  du.upload(u);
  dout.poison();
  gpu.swiglu(dg.ptr, du.ptr, n, dout.ptr);
  std::vector<float> got = dout.download(), want(n);
  cpu.swiglu(g.data(), u.data(), n, want.data());
  EXPECT_EQ(first_bit_difference(got.data(), want.data(), n), -1) << "swiglu";
  gpu.swiglu(dg.ptr, du.ptr, n, dg.ptr);  // out aliasing gate
  got = dg.download();
  EXPECT_EQ(first_bit_difference(got.data(), want.data(), n), -1) << "swiglu in place";
  gpu.add(du.ptr, dout.ptr, n);
  got = du.download();
  cpu.add(u.data(), want.data(), n);
  EXPECT_EQ(first_bit_difference(got.data(), u.data(), n), -1) << "add";

  // embed from every stored dtype, then gather rows.
  std::vector<int32_t> tokens, pos;
  std::mt19937 rng(3);
  for (int i = 0; i < 40; ++i) tokens.push_back(static_cast<int32_t>(rng() % c.vocab_size));
  tokens[0] = 0, tokens[1] = c.vocab_size - 1;
  for (int i = 0; i < 40; ++i) pos.push_back(i);
  const StepBatch b = step_at(pos, tokens);
  gpu.begin_step(b);
  cpu.begin_step(b);
  // The tables stay alive to the end: CudaOps keys its uploads by the data pointer.
  std::vector<std::unique_ptr<HostTensor>> tables;
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1}) {
    tables.push_back(make_tensor(t, c.vocab_size, c.d_model, 77 + static_cast<int>(t), 0.5f, "tok_embd"));
    const auto& table = tables.back();
    const int64_t D = c.d_model, T = b.n_tokens();
    DeviceArray dx(gpu, 3, T * D), drows(gpu, 4, 4 * D);
    dx.poison();
    gpu.embed(table->view, dx.ptr);
    const std::vector<float> ge = dx.download();
    std::vector<float> ce(T * D);
    cpu.embed(table->view, ce.data());
    EXPECT_EQ(first_bit_difference(ge.data(), ce.data(), T * D), -1) << "embed " << dtype_name(t);
    drows.poison();
    gpu.gather_logit_rows(dx.ptr, D, drows.ptr);
    const std::vector<float> gr = drows.download();
    std::vector<float> cr(4 * D);
    cpu.gather_logit_rows(ce.data(), D, cr.data());
    EXPECT_EQ(first_bit_difference(gr.data(), cr.data(), 4 * D), -1) << "gather " << dtype_name(t);
  }
}

TEST(CudaOpsErrors, BadInputsThrowErrors) {
  CUDA_OPS_REQUIRE_GPU();
  EXPECT_THROW(CudaOps(CudaOps::device_count()), Error);
  const ModelConfig c = small_config(false, false);
  CudaOps gpu(0);
  gpu.init(c, small_kv(c));
  auto table = make_tensor(DType::F32, c.vocab_size, c.d_model, 1);
  float* x = gpu.scratch(0, 64 * c.d_model);
  gpu.begin_step(step_at({0, 1}, {1, c.vocab_size}));  // token out of the table
  EXPECT_THROW(gpu.embed(table->view, x), Error);
  auto vec = make_vector(std::vector<float>(8, 1.0f));
  EXPECT_THROW(gpu.matmul(x, 1, vec->view, nullptr, x), Error);  // 1-D weight
  StepBatch bad = step_at({0, 1}, {1, 2});
  bad.block_tables[0] = {7};  // position 1 is covered, but block 7 ...
  bad.pos = {0, 16};          // ... position 16 is not
  EXPECT_THROW(gpu.begin_step(bad), Error);
  bad = step_at({0}, {1});
  bad.block_tables[0] = {600};  // outside the cache
  EXPECT_THROW(gpu.begin_step(bad), Error);
}

}  // namespace
