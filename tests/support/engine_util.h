// Shared by the engine tests of every backend (tests/runtime, tests/cuda).
#pragma once
#include <gtest/gtest.h>

#include <cctype>
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

// The verify cases the engine tests run on a small model: two random prompts and a text one,
// T2/T10 among 1, 7 and 31 others, every chunk size of the contract, prefixes around a block.
inline VerifyOptions small_model_verify_options(const std::vector<int32_t>& text_prompt, int vocab,
                                                std::vector<int> thread_counts) {
  VerifyOptions o;
  o.prompts = {random_prompt(40, vocab, 1), random_prompt(3, vocab, 2), text_prompt};
  o.max_tokens = 10;
  o.trials = 3;
  o.batch_others = {1, 7, 31};
  o.chunks = {1, 7, 64, 100, 512};
  o.prefix_lengths = {1, 15, 16, 17, 33};
  o.thread_counts = std::move(thread_counts);
  o.sampling = true;
  return o;
}

// A GoogleTest parameter name from a string (file names have dots and dashes).
struct NameFromString {
  template <typename Info>
  std::string operator()(const Info& info) const {
    std::string s = info.param;
    for (char& ch : s)
      if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
    return s;
  }
};

}  // namespace detinfer::test
