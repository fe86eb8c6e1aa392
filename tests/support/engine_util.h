// Shared by the engine tests of every backend (tests/runtime, tests/cuda).
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/verify.h"

namespace detinfer::test {

inline std::string model_path(const std::string& name) {
  return std::string(DETINFER_TEST_DATA) + "/models/" + name;
}

// n token ids below vocab from a fixed xorshift stream.
inline std::vector<int32_t> random_prompt(int n, int vocab, uint32_t seed) {
  std::vector<int32_t> p;
  uint32_t x = seed * 2654435761u + 1;
  for (int i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    p.push_back(static_cast<int32_t>(x % vocab));
  }
  return p;
}

inline void expect_all_identical(const std::vector<VerifyCase>& cases) {
  ASSERT_FALSE(cases.empty());
  for (const VerifyCase& c : cases)
    EXPECT_TRUE(c.identical) << c.test << " " << c.setting << " [" << c.sampling << "] prompt "
                             << c.prompt << ": " << c.detail;
}

}  // namespace detinfer::test
