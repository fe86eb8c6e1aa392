// Tensor dtypes and dequantization. The reference decodes every format independently in double
// precision. Each quantized formula's exact result is representable in double (f16 scales have
// 11-bit significands, the quants at most 8 bits, every bit lies between 2^-24 and 2^24), so
// rounding the reference once to float gives exactly the fp32 contract's value: the comparisons
// are bitwise. (In Q4_1 the product d*q is exact in fp32, so its two roundings are one rounding of
// d*q + m, and an fma would give the same bits too.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/error.h"
#include "common/half.h"
#include "model/tensor.h"

using namespace detinfer;

namespace {

double f16_ref(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? std::ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}

double bf16_ref(uint16_t h) {
  const int e = (h >> 7) & 255, m = h & 127;
  double v = e == 0 ? std::ldexp(m, -133) : e == 255 ? (m ? NAN : INFINITY) : std::ldexp(128 + m, e - 134);
  return (h & 0x8000) ? -v : v;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Bitwise equality, except that any NaN matches any NaN.
::testing::AssertionResult same_float(float got, double want) {
  if (std::isnan(got) && std::isnan(want)) return ::testing::AssertionSuccess();
  const float w = static_cast<float>(want);
  if (bits(got) == bits(w)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << got << " (0x" << std::hex << bits(got) << "), want " << w
                                       << " (0x" << bits(w) << ")";
}

void put_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
uint16_t get_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Random finite f16 scales, a third of them subnormal, half negative, some zero.
uint16_t random_scale(std::mt19937_64& rng) {
  const uint16_t sign = (rng() & 1) ? 0x8000 : 0;
  switch (rng() % 6) {
    case 0: return static_cast<uint16_t>(sign | (rng() % 0x400));              // subnormal or zero
    case 1: return static_cast<uint16_t>(sign | (1 + rng() % 0x3ff));          // subnormal
    case 2: return static_cast<uint16_t>(sign | 0x7bff);                       // largest finite
    default: return static_cast<uint16_t>(sign | (0x400 + rng() % 0x7400));    // normal
  }
}

std::vector<uint8_t> random_bytes(std::mt19937_64& rng, size_t n) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST(DType, NamesAndBlocks) {
  struct Row {
    DType t;
    const char* name;
    int64_t elems, bytes;
  };
  for (const Row& r : {Row{DType::F32, "F32", 1, 4}, Row{DType::F16, "F16", 1, 2}, Row{DType::BF16, "BF16", 1, 2},
                       Row{DType::Q8_0, "Q8_0", 32, 34}, Row{DType::Q4_0, "Q4_0", 32, 18},
                       Row{DType::Q4_1, "Q4_1", 32, 20}}) {
    EXPECT_STREQ(dtype_name(r.t), r.name);
    EXPECT_EQ(dtype_block_elems(r.t), r.elems) << r.name;
    EXPECT_EQ(dtype_block_bytes(r.t), r.bytes) << r.name;
  }
}

TEST(DType, RowBytes) {
  EXPECT_EQ(dtype_row_bytes(DType::F32, 576), 2304);
  EXPECT_EQ(dtype_row_bytes(DType::F16, 3), 6);
  EXPECT_EQ(dtype_row_bytes(DType::BF16, 0), 0);
  EXPECT_EQ(dtype_row_bytes(DType::Q8_0, 576), 18 * 34);
  EXPECT_EQ(dtype_row_bytes(DType::Q4_0, 64), 36);
  EXPECT_EQ(dtype_row_bytes(DType::Q4_1, 1536), 48 * 20);
  try {
    dtype_row_bytes(DType::Q4_1, 48);
    FAIL() << "48 Q4_1 elements accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("48"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Q4_1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(dtype_row_bytes(DType::Q8_0, 33), Error);
  EXPECT_THROW(dtype_row_bytes(DType::F32, -1), Error);
  EXPECT_THROW(dtype_row_bytes(DType::F32, INT64_MAX), Error);  // byte count overflows
}

TEST(DType, TensorViewShape) {
  TensorView t;
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(t.numel(), 0);
  t.shape = {4, 3, 32};
  EXPECT_EQ(t.numel(), 384);
  EXPECT_EQ(t.rows(), 12);
  EXPECT_EQ(t.cols(), 32);
  EXPECT_EQ(t.shape_str(), "[4, 3, 32]");
  t.shape = {7};
  EXPECT_EQ(t.rows(), 1);
  EXPECT_EQ(t.cols(), 7);
  EXPECT_EQ(t.shape_str(), "[7]");
  uint8_t byte = 0;
  t.data = &byte;
  EXPECT_FALSE(t.empty());
}

TEST(Dequantize, F32IsACopy) {
  const std::vector<float> src = {1.5f, -0.0f, 3e-40f, INFINITY};
  std::vector<float> dst(4);
  dequantize_row(DType::F32, reinterpret_cast<const uint8_t*>(src.data()), dst.data(), 4);
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), 16), 0);
}

TEST(Dequantize, F16EveryValue) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> out(65536);
  dequantize_row(DType::F16, reinterpret_cast<const uint8_t*>(all.data()), out.data(), 65536);
  for (uint32_t i = 0; i < 65536; ++i) ASSERT_TRUE(same_float(out[i], f16_ref(static_cast<uint16_t>(i)))) << "f16 0x" << std::hex << i;
}

TEST(Dequantize, BF16EveryValue) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> out(65536);
  dequantize_row(DType::BF16, reinterpret_cast<const uint8_t*>(all.data()), out.data(), 65536);
  for (uint32_t i = 0; i < 65536; ++i) ASSERT_TRUE(same_float(out[i], bf16_ref(static_cast<uint16_t>(i)))) << "bf16 0x" << std::hex << i;
}

TEST(Dequantize, Q8_0RandomBlocks) {
  std::mt19937_64 rng(801);
  const int nblocks = 4000;
  auto src = random_bytes(rng, nblocks * 34);
  for (int b = 0; b < nblocks; ++b) put_u16(&src[b * 34], random_scale(rng));
  std::vector<float> out(nblocks * 32);
  dequantize_row(DType::Q8_0, src.data(), out.data(), nblocks * 32);
  for (int b = 0; b < nblocks; ++b) {
    const uint8_t* blk = &src[b * 34];
    const double d = f16_ref(get_u16(blk));
    for (int j = 0; j < 32; ++j) {
      const double want = d * static_cast<int8_t>(blk[2 + j]);
      ASSERT_TRUE(same_float(out[b * 32 + j], want)) << "block " << b << " j " << j;
    }
  }
}

TEST(Dequantize, Q4_0RandomBlocks) {
  std::mt19937_64 rng(400);
  const int nblocks = 4000;
  auto src = random_bytes(rng, nblocks * 18);
  for (int b = 0; b < nblocks; ++b) put_u16(&src[b * 18], random_scale(rng));
  std::vector<float> out(nblocks * 32);
  dequantize_row(DType::Q4_0, src.data(), out.data(), nblocks * 32);
  for (int b = 0; b < nblocks; ++b) {
    const uint8_t* blk = &src[b * 18];
    const double d = f16_ref(get_u16(blk));
    for (int j = 0; j < 16; ++j) {
      ASSERT_TRUE(same_float(out[b * 32 + j], d * ((blk[2 + j] & 15) - 8))) << "block " << b << " j " << j;
      ASSERT_TRUE(same_float(out[b * 32 + j + 16], d * ((blk[2 + j] >> 4) - 8))) << "block " << b << " j " << j + 16;
    }
  }
}

TEST(Dequantize, Q4_1RandomBlocks) {
  std::mt19937_64 rng(401);
  const int nblocks = 4000;
  auto src = random_bytes(rng, nblocks * 20);
  for (int b = 0; b < nblocks; ++b) {
    put_u16(&src[b * 20], random_scale(rng));
    put_u16(&src[b * 20 + 2], random_scale(rng));
  }
  std::vector<float> out(nblocks * 32);
  dequantize_row(DType::Q4_1, src.data(), out.data(), nblocks * 32);
  for (int b = 0; b < nblocks; ++b) {
    const uint8_t* blk = &src[b * 20];
    const double d = f16_ref(get_u16(blk)), m = f16_ref(get_u16(blk + 2));
    for (int j = 0; j < 16; ++j) {
      ASSERT_TRUE(same_float(out[b * 32 + j], d * (blk[4 + j] & 15) + m)) << "block " << b << " j " << j;
      ASSERT_TRUE(same_float(out[b * 32 + j + 16], d * (blk[4 + j] >> 4) + m)) << "block " << b << " j " << j + 16;
    }
  }
}

TEST(Dequantize, HandCheckedBlocks) {
  // Q8_0: d = 2 (0x4000); q[0] = -128, q[1] = 127, q[31] = -1.
  uint8_t q8[34] = {};
  put_u16(q8, 0x4000);
  q8[2] = 0x80;
  q8[3] = 0x7f;
  q8[33] = 0xff;
  float out[32];
  dequantize_row(DType::Q8_0, q8, out, 32);
  EXPECT_EQ(out[0], -256.0f);
  EXPECT_EQ(out[1], 254.0f);
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_EQ(out[31], -2.0f);

  // Q4_0: d = 0.5 (0x3800); qs[0] = 0x1F: low nibble 15 -> x[0], high nibble 1 -> x[16].
  uint8_t q40[18] = {};
  put_u16(q40, 0x3800);
  q40[2] = 0x1F;
  q40[17] = 0x80;  // qs[15]: x[15] = 0.5 * (0 - 8), x[31] = 0.5 * (8 - 8)
  dequantize_row(DType::Q4_0, q40, out, 32);
  EXPECT_EQ(out[0], 3.5f);
  EXPECT_EQ(out[16], -3.5f);
  EXPECT_EQ(out[1], -4.0f);
  EXPECT_EQ(out[15], -4.0f);
  EXPECT_EQ(out[31], 0.0f);

  // Q4_1: d = 0.25 (0x3400), m = -1 (0xBC00); qs[0] = 0x3A: x[0] = 0.25*10 - 1, x[16] = 0.25*3 - 1.
  uint8_t q41[20] = {};
  put_u16(q41, 0x3400);
  put_u16(q41 + 2, 0xBC00);
  q41[4] = 0x3A;
  q41[19] = 0xF0;
  dequantize_row(DType::Q4_1, q41, out, 32);
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[16], -0.25f);
  EXPECT_EQ(out[1], -1.0f);
  EXPECT_EQ(out[15], -1.0f);
  EXPECT_EQ(out[31], 2.75f);

  // Q4_1 where the add must round: d = 1, m = 2^-24 (smallest subnormal f16), q = 15:
  // 15 + 2^-24 is not a float; round to nearest gives 15.
  put_u16(q41, 0x3C00);
  put_u16(q41 + 2, 0x0001);
  q41[4] = 0x0F;
  dequantize_row(DType::Q4_1, q41, out, 32);
  EXPECT_EQ(out[0], 15.0f);
  EXPECT_EQ(out[1], std::ldexp(1.0f, -24));

  // F16 / BF16 spot values.
  const uint16_t h[4] = {0x3C00, 0xC000, 0x0001, 0x7BFF};
  dequantize_row(DType::F16, reinterpret_cast<const uint8_t*>(h), out, 4);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], std::ldexp(1.0f, -24));
  EXPECT_EQ(out[3], 65504.0f);
  const uint16_t bf[2] = {0x3F80, 0xC0A0};
  dequantize_row(DType::BF16, reinterpret_cast<const uint8_t*>(bf), out, 2);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -5.0f);
}

TEST(Dequantize, RejectsPartialBlocks) {
  uint8_t buf[64] = {};
  float out[64];
  EXPECT_THROW(dequantize_row(DType::Q4_0, buf, out, 16), Error);
  EXPECT_THROW(dequantize_row(DType::Q8_0, buf, out, 31), Error);
  EXPECT_THROW(dequantize_row(DType::F32, buf, out, -1), Error);
  EXPECT_NO_THROW(dequantize_row(DType::Q8_0, buf, out, 0));
}

TEST(Dequantize, ToF32RowByRow) {
  std::mt19937_64 rng(7);
  const int rows = 3, cols = 64;
  auto src = random_bytes(rng, rows * 2 * 20);
  for (int b = 0; b < rows * 2; ++b) {
    put_u16(&src[b * 20], random_scale(rng));
    put_u16(&src[b * 20 + 2], random_scale(rng));
  }
  TensorView t;
  t.name = "w";
  t.dtype = DType::Q4_1;
  t.shape = {rows, cols};
  t.data = src.data();
  t.nbytes = static_cast<int64_t>(src.size());
  const std::vector<float> all = to_f32(t);
  ASSERT_EQ(all.size(), static_cast<size_t>(rows * cols));
  std::vector<float> row(cols);
  for (int r = 0; r < rows; ++r) {
    dequantize_row(DType::Q4_1, src.data() + r * 40, row.data(), cols);
    EXPECT_EQ(std::memcmp(row.data(), all.data() + r * cols, cols * 4), 0) << "row " << r;
  }
  t.nbytes -= 1;  // a view shorter than its shape says
  EXPECT_THROW(to_f32(t), Error);
  TensorView empty;
  EXPECT_THROW(to_f32(empty), Error);
}

}  // namespace
