// matmul: dequantized values, accuracy against fp64, and the invariances of the contract
// (T1 M-sweep, thread counts, SIMD vs portable).
#include <algorithm>

#include "common/error.h"
#include "common/thread_pool.h"
#include "kernel_test_util.h"

namespace detinfer::test {
namespace {

std::vector<float> run_matmul(ThreadPool& pool, const float* x, int64_t M, const Weight& w,
                              const float* bias = nullptr) {
  const int64_t N = w.view.shape[0], K = w.view.shape[1];
  std::vector<float> y(static_cast<size_t>(M * N), -12345.0f);
  cpu::matmul(pool, x, M, K, w.view, y.data(), bias);
  return y;
}

// K for a dtype: quantized rows are whole 32-blocks; plain ones get a tail (K % 8 != 0).
int64_t k_for(DType t, int64_t quant_k, int64_t plain_k) {
  return dtype_block_elems(t) == 32 ? quant_k : plain_k;
}

class MatmulDtype : public ::testing::TestWithParam<DType> {};

// x = unit vectors: y[k][n] is exactly W[n][k] as dequantize_row gives it, on the decode path
// (M = 1) and on the panel path (M = K).
TEST_P(MatmulDtype, UsesExactlyDequantizedWeights) {
  const DType t = GetParam();
  const int64_t N = 11, K = k_for(t, 64, 61);
  const Weight w = random_weight(t, N, K, 7);
  ThreadPool pool(2);
  std::vector<float> eye(static_cast<size_t>(K * K), 0.0f);
  for (int64_t k = 0; k < K; ++k) eye[k * K + k] = 1.0f;
  for (bool simd : {true, false}) {
    with_simd(simd, [&] {
      const std::vector<float> all = run_matmul(pool, eye.data(), K, w);
      for (int64_t k = 0; k < K; ++k) {
        const std::vector<float> one = run_matmul(pool, eye.data() + k * K, 1, w);
        for (int64_t n = 0; n < N; ++n) {
          const float want = w.f32[n * K + k];
          ASSERT_EQ(one[n], want) << dtype_name(t) << " simd=" << simd << " n=" << n << " k=" << k;
          ASSERT_EQ(all[k * N + n], want)
              << dtype_name(t) << " simd=" << simd << " n=" << n << " k=" << k;
        }
      }
    });
  }
}

// |y - ref| <= c·eps·Σ|x_k w_k|, c = the number of roundings on the longest path of the
// canonical order: K/8 fmas in a lane, 3 tree adds, K%8 tail fmas, the bias add.
TEST_P(MatmulDtype, MatchesFp64Reference) {
  const DType t = GetParam();
  const int64_t N = 37, K = k_for(t, 512, 517);
  const Weight w = random_weight(t, N, K, 11);
  const std::vector<float> bias = random_floats(N, 12);
  ThreadPool pool(2);
  for (int64_t M : {1, 2, 3, 5, 9}) {
    const std::vector<float> x = random_floats(M * K, 13 + M, -2.0f, 2.0f);
    const std::vector<float> y = run_matmul(pool, x.data(), M, w, bias.data());
    const double c = K / 8 + 3 + K % 8 + 1;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double ref = 0, mag = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double p = static_cast<double>(x[m * K + k]) * w.f32[n * K + k];
          ref += p;
          mag += std::fabs(p);
        }
        ref += bias[n];
        mag += std::fabs(bias[n]);
        ASSERT_LE(std::fabs(y[m * N + n] - ref), c * kEps * mag)
            << dtype_name(t) << " M=" << M << " m=" << m << " n=" << n;
      }
  }
}

// T1: every row of an M-row call equals, bit for bit, the same row computed alone (M = 1),
// whatever M and wherever the rows start.
TEST_P(MatmulDtype, MSweepRowsEqualSingleRow) {
  const DType t = GetParam();
  const int64_t N = 45, K = k_for(t, 128, 133);
  const Weight w = random_weight(t, N, K, 21);
  const std::vector<float> bias = random_floats(N, 22);
  const int64_t rows = 4099;  // the contract's sweep goes to M = 4096, from offsets up to 3
  const std::vector<float> x = random_floats(rows * K, 23, -3.0f, 3.0f);
  ThreadPool pool(2);
  std::vector<float> single(static_cast<size_t>(rows * N));
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> y = run_matmul(pool, x.data() + r * K, 1, w, bias.data());
    std::copy(y.begin(), y.end(), single.begin() + r * N);
  }
  std::vector<int64_t> sweep;
  for (int64_t m = 1; m <= 64; ++m) sweep.push_back(m);
  for (int64_t m : {100, 128, 255, 256, 1000, 4096}) sweep.push_back(m);
  for (int64_t start : {0, 1, 3}) {
    for (int64_t M : sweep) {
      const std::vector<float> y = run_matmul(pool, x.data() + start * K, M, w, bias.data());
      ASSERT_TRUE(same_bits(y.data(), single.data() + start * N, static_cast<size_t>(M * N)))
          << dtype_name(t) << " M=" << M << " start=" << start;
    }
  }
}

TEST_P(MatmulDtype, ThreadCountsGiveIdenticalBits) {
  const DType t = GetParam();
  const int64_t N = 70, K = k_for(t, 256, 250);
  const Weight w = random_weight(t, N, K, 31);
  for (int64_t M : {1, 3, 7, 300}) {
    const std::vector<float> x = random_floats(M * K, 32 + M);
    std::vector<std::vector<float>> out;
    for (int threads : {1, 2, 3, 7}) {
      ThreadPool pool(threads);
      out.push_back(run_matmul(pool, x.data(), M, w));
    }
    for (size_t i = 1; i < out.size(); ++i)
      ASSERT_EQ(first_diff(out[0], out[i]), -1) << dtype_name(t) << " M=" << M << " pool #" << i;
  }
}

TEST_P(MatmulDtype, SimdAndPortableGiveIdenticalBits) {
  if (!cpu::simd_supported()) GTEST_SKIP() << "no AVX2/FMA/F16C on this CPU";
  const DType t = GetParam();
  const int64_t N = 53, K = k_for(t, 320, 317);
  const Weight w = random_weight(t, N, K, 41);
  const std::vector<float> bias = random_floats(N, 42);
  ThreadPool pool(2);
  for (int64_t M : {1, 2, 3, 4, 5, 6, 7, 17, 130}) {
    const std::vector<float> x = random_floats(M * K, 43 + M, -4.0f, 4.0f);
    std::vector<float> fast, portable;
    with_simd(true, [&] { fast = run_matmul(pool, x.data(), M, w, bias.data()); });
    with_simd(false, [&] { portable = run_matmul(pool, x.data(), M, w, bias.data()); });
    ASSERT_EQ(first_diff(fast, portable), -1) << dtype_name(t) << " M=" << M;
  }
}

// The portable path alone keeps T1 as well (a machine without AVX2 runs it).
TEST_P(MatmulDtype, PortableMSweep) {
  const DType t = GetParam();
  const int64_t N = 9, K = k_for(t, 64, 69);
  const Weight w = random_weight(t, N, K, 51);
  const int64_t rows = 130;
  const std::vector<float> x = random_floats(rows * K, 52);
  ThreadPool pool(3);
  with_simd(false, [&] {
    const std::vector<float> all = run_matmul(pool, x.data(), rows, w);
    for (int64_t M : {1, 2, 5, 64, 129}) {
      const std::vector<float> y = run_matmul(pool, x.data() + K, M, w);
      ASSERT_TRUE(same_bits(y.data(), all.data() + N, static_cast<size_t>(M * N))) << " M=" << M;
    }
  });
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, MatmulDtype, ::testing::ValuesIn(all_dtypes()),
                         [](const ::testing::TestParamInfo<DType>& i) {
                           return std::string(dtype_name(i.param));
                         });

TEST(Matmul, RejectsBadWeights) {
  ThreadPool pool(1);
  Weight w = random_weight(DType::Q8_0, 4, 64, 1);
  std::vector<float> x(64 * 2, 1.0f), y(8);
  EXPECT_THROW(cpu::matmul(pool, x.data(), 1, 63, w.view, y.data()), Error);  // K mismatch
  TensorView short_view = w.view;
  short_view.nbytes -= 1;
  EXPECT_THROW(cpu::matmul(pool, x.data(), 1, 64, short_view, y.data()), Error);
  TensorView odd = w.view;
  odd.shape = {4, 48};  // not whole 32-blocks
  EXPECT_THROW(cpu::matmul(pool, x.data(), 1, 48, odd, y.data()), Error);
  TensorView empty = w.view;
  empty.data = nullptr;
  EXPECT_THROW(cpu::matmul(pool, x.data(), 1, 64, empty, y.data()), Error);
  EXPECT_NO_THROW(cpu::matmul(pool, x.data(), 0, 64, w.view, y.data()));
}

TEST(EmbedRow, EqualsDequantizedRow) {
  for (DType t : all_dtypes()) {
    const Weight w = random_weight(t, 5, 96, 3);
    std::vector<float> out(96);
    for (int64_t r = 0; r < 5; ++r) {
      cpu::embed_row(w.view, r, out.data());
      ASSERT_TRUE(same_bits(out.data(), w.f32.data() + r * 96, 96))
          << dtype_name(t) << " row " << r;
    }
    EXPECT_THROW(cpu::embed_row(w.view, 5, out.data()), Error);
    EXPECT_THROW(cpu::embed_row(w.view, -1, out.data()), Error);
  }
}

}  // namespace
}  // namespace detinfer::test
