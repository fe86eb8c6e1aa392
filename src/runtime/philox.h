// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a
// counter-based generator. The output is a pure function of (counter, key), so a sample drawn for
// token t of a request depends on nothing but the request's seed and t: not on what ran before,
// on the batch, or on the thread. Header-only and constexpr so a CUDA port can share the
// constants and be checked against the same known-answer vectors (Random123's kat_vectors).
#pragma once
#include <array>
#include <cstdint>

namespace detinfer {

using PhiloxCounter = std::array<uint32_t, 4>;
using PhiloxKey = std::array<uint32_t, 2>;

namespace philox_detail {
inline constexpr uint32_t kMul0 = 0xD2511F53u;  // round multipliers
inline constexpr uint32_t kMul1 = 0xCD9E8D57u;
inline constexpr uint32_t kWeyl0 = 0x9E3779B9u;  // key schedule: golden ratio
inline constexpr uint32_t kWeyl1 = 0xBB67AE85u;  // sqrt(3) - 1

constexpr PhiloxCounter round(const PhiloxCounter& c, const PhiloxKey& k) {
  const uint64_t p0 = uint64_t{kMul0} * c[0];
  const uint64_t p1 = uint64_t{kMul1} * c[2];
  return {static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<uint32_t>(p1),
          static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k[1], static_cast<uint32_t>(p0)};
}
}  // namespace philox_detail

// Ten rounds; the key is bumped by the Weyl constants before rounds 2..10.
constexpr PhiloxCounter philox4x32_10(PhiloxCounter ctr, PhiloxKey key) {
  ctr = philox_detail::round(ctr, key);
  for (int r = 1; r < 10; ++r) {
    key[0] += philox_detail::kWeyl0;
    key[1] += philox_detail::kWeyl1;
    ctr = philox_detail::round(ctr, key);
  }
  return ctr;
}

// The sampler's stream: key = the 64-bit seed (low word first), counter = the 64-bit token
// index in words 0-1, words 2-3 zero (free for future draws per token, e.g. speculative decoding).
constexpr PhiloxCounter philox_block(uint64_t seed, uint64_t token_index) {
  return philox4x32_10(
      {static_cast<uint32_t>(token_index), static_cast<uint32_t>(token_index >> 32), 0u, 0u},
      {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
}

// The sampler's uniform is u24 = word >> 8, used as the exact fraction u24 / 2^24 in [0, 1) in
// integer arithmetic. The same number as a float (exact: every k < 2^24 is an fp32 value, so it
// never rounds up to 1), for tests and for callers that want one:
constexpr float uniform24(uint32_t word) {
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
}

}  // namespace detinfer
