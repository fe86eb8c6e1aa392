// det_expf / det_logf: ulp error over sweeps of the float range, special values, and identical
// bits from the scalar, vector and portable implementations.
#include <limits>

#include "kernel_test_util.h"

namespace detinfer::test {
namespace {

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Error of y against the exact value ref, in units of the fp32 ulp at ref (2^-149 at the
// bottom of the subnormals).
double ulp_error(float y, double ref) {
  if (std::isinf(ref) || std::fabs(ref) > std::numeric_limits<float>::max()) {
    const bool same = std::isinf(y) && ((y > 0) == (ref > 0));
    return same ? 0.0 : 1e9;
  }
  int e;
  std::frexp(ref, &e);  // |ref| in [2^(e-1), 2^e)
  const double ulp = std::ldexp(1.0, std::max(e - 24, -149));
  return std::fabs(static_cast<double>(y) - ref) / ulp;
}

// Every stride-th float bit pattern in [lo_bits, hi_bits], plus the bounds.
std::vector<float> sweep(uint32_t lo_bits, uint32_t hi_bits, uint32_t stride) {
  std::vector<float> v;
  for (uint64_t b = lo_bits; b <= hi_bits; b += stride)
    v.push_back(from_bits(static_cast<uint32_t>(b)));
  v.push_back(from_bits(hi_bits));
  return v;
}

TEST(DetExpf, UlpErrorOverTheRange) {
  // Positive and negative x over the whole range where exp is neither 0 nor inf, and beyond.
  std::vector<float> xs = sweep(0x00000000u, 0x42b20000u, 97);         // 0 .. 89
  const std::vector<float> neg = sweep(0x80000000u, 0xc2d00000u, 97);  // -0 .. -104
  xs.insert(xs.end(), neg.begin(), neg.end());
  double worst = 0, worst_sub = 0;
  float worst_x = 0;
  for (float x : xs) {
    const double ref = std::exp(static_cast<double>(x));
    const double err = ulp_error(cpu::det_expf(x), ref);
    if (ref < 0x1.0p-126) {
      worst_sub = std::max(worst_sub, err);
    } else if (err > worst) {
      worst = err;
      worst_x = x;
    }
  }
  EXPECT_LE(worst, 1.0) << "at x = " << worst_x;
  EXPECT_LE(worst_sub, 1.0);
  RecordProperty("exp_max_ulp", std::to_string(worst));
}

TEST(DetExpf, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(cpu::det_expf(0.0f), 1.0f);
  EXPECT_EQ(cpu::det_expf(-0.0f), 1.0f);
  EXPECT_EQ(cpu::det_expf(inf), inf);
  EXPECT_EQ(cpu::det_expf(-inf), 0.0f);
  EXPECT_EQ(cpu::det_expf(88.73f), inf);
  EXPECT_EQ(cpu::det_expf(1000.0f), inf);
  EXPECT_EQ(cpu::det_expf(-104.0f), 0.0f);
  EXPECT_EQ(cpu::det_expf(-1000.0f), 0.0f);
  EXPECT_GT(cpu::det_expf(88.72f), 3.0e38f);
  EXPECT_GT(cpu::det_expf(-103.0f), 0.0f);  // deep subnormal, not flushed
  EXPECT_TRUE(std::isnan(cpu::det_expf(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(cpu::det_expf(1.0f), 2.71828182845904523536f);
}

TEST(DetLogf, UlpErrorOverTheRange) {
  const std::vector<float> xs = sweep(0x00000001u, 0x7f7fffffu, 211);  // subnormals .. FLT_MAX
  double worst = 0;
  float worst_x = 0;
  for (float x : xs) {
    const double err = ulp_error(cpu::det_logf(x), std::log(static_cast<double>(x)));
    if (err > worst) {
      worst = err;
      worst_x = x;
    }
  }
  // Dense around 1, where log is small and relative accuracy is hardest.
  for (uint32_t b = 0x3f700000u; b <= 0x3f880000u; b += 3) {
    const float x = from_bits(b);
    const double err = ulp_error(cpu::det_logf(x), std::log(static_cast<double>(x)));
    if (err > worst) {
      worst = err;
      worst_x = x;
    }
  }
  EXPECT_LE(worst, 1.0) << "at x = " << worst_x;
  RecordProperty("log_max_ulp", std::to_string(worst));
}

TEST(DetLogf, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(cpu::det_logf(1.0f), 0.0f);
  EXPECT_EQ(cpu::det_logf(0.0f), -inf);
  EXPECT_EQ(cpu::det_logf(-0.0f), -inf);
  EXPECT_EQ(cpu::det_logf(inf), inf);
  EXPECT_TRUE(std::isnan(cpu::det_logf(-1.0f)));
  EXPECT_TRUE(std::isnan(cpu::det_logf(-inf)));
  EXPECT_TRUE(std::isnan(cpu::det_logf(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(cpu::det_logf(2.0f), 0.693147180559945309f);
  EXPECT_NEAR(cpu::det_logf(std::numeric_limits<float>::denorm_min()), -103.27892990343184, 1e-5);
}

// The vector code, the scalar code compiled with FMA, and the portable code: same bits for every
// input of a sweep that includes the special values.
TEST(DetExpLog, AllImplementationsGiveIdenticalBits) {
  std::vector<float> xs = sweep(0x00000000u, 0xffffffffu, 4099);
  const float inf = std::numeric_limits<float>::infinity();
  for (float s : {0.0f, -0.0f, inf, -inf, 88.7f, 88.73f, -87.4f, -103.9f, -104.0f, 1.0f, 0.5f})
    xs.push_back(s);
  xs.push_back(std::numeric_limits<float>::denorm_min());
  const size_t n = xs.size();
  for (int which = 0; which < 2; ++which) {
    auto scalar = which == 0 ? cpu::det_expf : cpu::det_logf;
    auto vec = which == 0 ? cpu::det_expf_n : cpu::det_logf_n;
    std::vector<float> v_fast(n), v_port(n), s_fast(n), s_port(n);
    with_simd(true, [&] {
      vec(xs.data(), v_fast.data(), static_cast<int64_t>(n));
      for (size_t i = 0; i < n; ++i) s_fast[i] = scalar(xs[i]);
    });
    with_simd(false, [&] {
      vec(xs.data(), v_port.data(), static_cast<int64_t>(n));
      for (size_t i = 0; i < n; ++i) s_port[i] = scalar(xs[i]);
    });
    EXPECT_EQ(first_diff(v_fast, v_port), -1) << (which ? "log" : "exp");
    EXPECT_EQ(first_diff(s_fast, s_port), -1) << (which ? "log" : "exp");
    EXPECT_EQ(first_diff(v_fast, s_fast), -1) << (which ? "log" : "exp");
  }
}

}  // namespace
}  // namespace detinfer::test
