// The deterministic sampler. Candidates are ordered by (z desc, id asc), a total order; every
// random number comes from Philox keyed by (seed, token index); so the result is a function of
// (logits, params, seed, token index, history) alone: not of the batch, thread or history of
// calls.
//
// Sums without a sort. Each candidate's weight w = det_expf(z - z_max) (fp32, <= 1) becomes an
// exact fixed-point integer q = trunc(w·2^40); every sum of these (the total, top-p's cumulative
// sums, the inverse CDF's) is then exact, so it has the same value in any order, and "the
// cumulative sum in sorted order up to token j" is simply the mass of all candidates ranked at
// or before j. So an MSD radix walk over the sort key (bucket masses, descend into the bucket
// where the running mass crosses the threshold) finds the top-p cut and the drawn token in O(V)
// without sorting the vocabulary, with exactly the result of a full sort (the tests compare
// against one). A parallel (GPU) sampler may likewise reduce in any order and match bit for bit.
// Weights below 2^-40 of the top token's become 0 (never drawn), far below what the 24-bit
// uniform resolves.
#include "runtime/sampler.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <random>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "common/error.h"
#include "common/half.h"
#include "kernels/cpu/ops.h"
#include "runtime/philox.h"

namespace detinfer {
namespace {

constexpr double kMassScale = 0x1p40;   // fixed-point scale of the weights
constexpr int32_t kMaxVocab = 1 << 23;  // so that every sum, <= V·2^40·(1 + 2^-23), fits 64 bits
constexpr int kDigitBits = 12;          // radix of the selection walk
constexpr size_t kSortBelow = 64;       // the walk sorts what is left below this many

using u128 = unsigned __int128;

// w <= 1 (+ an ulp): the product is exact in double, fits int64 and truncates in one instruction.
uint64_t fixed_mass(float w) {
  return static_cast<uint64_t>(static_cast<int64_t>(static_cast<double>(w) * kMassScale));
}

// The smallest integer >= top_p·total, exactly (top_p = mant·2^-k with a 24-bit mant).
uint64_t top_p_goal(uint64_t total, float top_p) {
  int e = 0;
  const float f = std::frexp(top_p, &e);  // top_p = f·2^e, f in [0.5, 1), e <= 1
  const uint64_t mant = static_cast<uint64_t>(std::ldexp(f, 24));
  const int k = 24 - e;
  if (k >= 128) return 1;
  const u128 prod = static_cast<u128>(total) * mant;
  const bool frac = (prod & ((u128{1} << k) - 1)) != 0;
  return static_cast<uint64_t>(prod >> k) + (frac ? 1 : 0);
}

// Sort key: ascending keys = z descending, then id ascending. z is canonical (no NaN, no -0).
uint64_t candidate_key(float z, int32_t id) {
  const uint32_t b = f32_to_bits(z);
  const uint32_t ascending = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (uint64_t{~ascending} << 32) | static_cast<uint32_t>(id);
}
int32_t key_id(uint64_t key) { return static_cast<int32_t>(key & 0xffffffffu); }

// Maximum of z[0..n) (no NaN), in 8 independent lanes so it vectorises; max is exact in any order.
float max_of(const float* z, int32_t n) {
  float lane[8];
  std::fill(lane, lane + 8, -INFINITY);
  int32_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) lane[l] = std::max(lane[l], z[i + l]);
  for (; i < n; ++i) lane[0] = std::max(lane[0], z[i]);
  return *std::max_element(lane, lane + 8);
}

// First index of the maximum: ties (and -0 vs +0) go to the lower id.
int32_t argmax(const float* z, int32_t n) {
  const float m = max_of(z, n);
  int32_t i = 0;
  while (z[i] != m) ++i;
  return i;
}

}  // namespace

void validate(const SamplingParams& p) {
  auto bad = [](const char* field, auto value, const char* want) {
    fail("sampling parameter ", field, " = ", value, " is out of range: ", want);
  };
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    bad("temperature", p.temperature, "must be a finite number >= 0 (0 = greedy)");
  if (p.top_k < 0) bad("top_k", p.top_k, "must be >= 0 (0 = off)");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) bad("top_p", p.top_p, "must be in (0, 1] (1 = off)");
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) bad("min_p", p.min_p, "must be in [0, 1] (0 = off)");
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty))
    bad("repetition_penalty", p.repetition_penalty, "must be a finite number > 0 (1 = off)");
  if (!(std::fabs(p.frequency_penalty) <= kMaxAbsPenalty))
    bad("frequency_penalty", p.frequency_penalty, "must be in [-2, 2] (0 = off)");
  if (!(std::fabs(p.presence_penalty) <= kMaxAbsPenalty))
    bad("presence_penalty", p.presence_penalty, "must be in [-2, 2] (0 = off)");
  if (p.max_tokens < 1) bad("max_tokens", p.max_tokens, "must be >= 1");
  if (p.logprobs < 0 || p.logprobs > kMaxLogprobs)
    bad("logprobs", p.logprobs, "must be in [0, 20]");
  if (p.n < 1 || p.n > kMaxCompletions) bad("n", p.n, "must be in [1, 128]");
  for (size_t i = 0; i < p.stop.size(); ++i)
    if (p.stop[i].empty()) fail("sampling parameter stop[", i, "] is an empty string");
  for (size_t i = 0; i < p.stop_token_ids.size(); ++i)
    if (p.stop_token_ids[i] < 0)
      fail("sampling parameter stop_token_ids[", i, "] = ", p.stop_token_ids[i], " is negative");
}

void Sampler::apply_penalties(float* x, int32_t V, const SamplingParams& p,
                              std::span<const int32_t> history, size_t n_prompt) {
  DETINFER_CHECK(n_prompt <= history.size(), "sampler: n_prompt = ", n_prompt,
                 " exceeds the history length ", history.size());
  for (size_t i = 0; i < history.size(); ++i)
    DETINFER_CHECK(history[i] >= 0 && history[i] < V, "sampler: history[", i, "] = ", history[i],
                   " is not a token id of this vocabulary (size ", V, ")");
  const float rep = p.repetition_penalty;
  const float freq = p.frequency_penalty, pres = p.presence_penalty;
  if (rep == 1.0f && freq == 0.0f && pres == 0.0f) return;

  // seen_/gen_count_ are all zero between calls; touched_ lists what to reset.
  if (seen_.size() < static_cast<size_t>(V)) {
    seen_.resize(V, 0);
    gen_count_.resize(V, 0);
  }
  for (size_t i = 0; i < history.size(); ++i) {
    const int32_t t = history[i];
    if (!seen_[t]) {
      seen_[t] = 1;
      touched_.push_back(t);
    }
    if (i >= n_prompt) ++gen_count_[t];
  }
  std::sort(touched_.begin(), touched_.end());
  for (int32_t t : touched_) {
    float v = x[t];
    if (rep != 1.0f) v = v < 0.0f ? v * rep : v / rep;
    if (const uint32_t c = gen_count_[t]) {
      v -= freq * static_cast<float>(c);  // exact count: c < 2^24 for any real context
      v -= pres;
    }
    // Overflow clamps (a finite logit stays finite, so z_max and z - z_max stay defined).
    if (std::isinf(v) && !std::isinf(x[t])) v = std::copysign(FLT_MAX, v);
    x[t] = v;
    seen_[t] = 0;
    gen_count_[t] = 0;
  }
  touched_.clear();
}

Sampler::Crossing Sampler::select(const uint64_t* keys, const uint64_t* mass, size_t n, uint64_t t,
                                  const uint64_t* top_hist) {
  // Invariant: the answer is in keys[0..n); `before` is the mass ranked ahead of all of them.
  uint64_t before = 0;
  int shift = 64 - kDigitBits;
  for (int flip = 0;; flip ^= 1) {
    if (n <= kSortBelow || shift < 0) {  // shift < 0: every digit done (keys are unique)
      small_.clear();
      for (size_t j = 0; j < n; ++j) small_.emplace_back(keys[j], mass ? mass[j] : 1);
      std::sort(small_.begin(), small_.end());
      uint64_t cum = before;
      for (const auto& [key, m] : small_) {
        cum += m;
        if (cum - before > t) return {key, cum};
      }
      fail("sampler: internal error: selection ran past the total mass");
    }
    const uint64_t digit_mask = (uint64_t{1} << kDigitBits) - 1;
    const uint64_t* hist = top_hist;  // the caller's, for the first digit only
    top_hist = nullptr;
    if (!hist) {
      hist_.assign(size_t{1} << kDigitBits, 0);
      for (size_t j = 0; j < n; ++j) hist_[(keys[j] >> shift) & digit_mask] += mass ? mass[j] : 1;
      hist = hist_.data();
    }
    uint64_t bucket = 0, run = 0;
    while (run + hist[bucket] <= t) run += hist[bucket++];
    t -= run;
    before += run;
    std::vector<uint64_t>& next_keys = walk_keys_[flip];
    std::vector<uint64_t>& next_mass = walk_mass_[flip];
    next_keys.clear();
    next_mass.clear();
    for (size_t j = 0; j < n; ++j) {
      if (((keys[j] >> shift) & digit_mask) != bucket) continue;
      next_keys.push_back(keys[j]);
      if (mass) next_mass.push_back(mass[j]);
    }
    keys = next_keys.data();
    mass = mass ? next_mass.data() : nullptr;
    n = next_keys.size();
    // 52, 40, 28, 16, 4, 0: the last digit overlaps bits already equal in the bucket, harmless.
    shift = shift == 0 ? -1 : std::max(shift - kDigitBits, 0);
  }
}

SampleResult Sampler::sample(const float* logits, int32_t V, const SamplingParams& p, uint64_t seed,
                             int64_t token_index, std::span<const int32_t> history,
                             size_t n_prompt) {
  DETINFER_CHECK(logits != nullptr && V > 0, "sampler: empty logits (vocabulary size ", V, ")");
  DETINFER_CHECK(V <= kMaxVocab, "sampler: vocabulary of ", V, " tokens exceeds the limit ",
                 kMaxVocab);
  DETINFER_CHECK(token_index >= 0, "sampler: negative token index ", token_index);
  validate(p);
  bool bad = false, any_finite = false;
  z_.resize(V);
  for (int32_t i = 0; i < V; ++i) {
    const float x = logits[i];
    bad |= !(x < INFINITY);  // NaN or +inf
    any_finite |= x > -INFINITY;
    z_[i] = x;
  }
  if (bad) {
    for (int32_t i = 0; i < V; ++i)
      if (!(logits[i] < INFINITY))
        fail("sampler: logit of token ", i, " is ", logits[i],
             " (the model produced a non-finite value)");
  }
  DETINFER_CHECK(any_finite, "sampler: every logit is -inf; no token can be chosen");

  SampleResult r{};
  logprobs_.resize(V);
  cpu::log_softmax(logits, V, logprobs_.data());

  apply_penalties(z_.data(), V, p, history, n_prompt);
  r.token = p.temperature == 0.0f ? argmax(z_.data(), V) : sample_scaled(p, seed, token_index);
  r.logprob = logprobs_[r.token];

  // Top-N by (logprob desc, id asc): one pass with a small sorted list.
  const size_t top_n = std::min<size_t>(static_cast<size_t>(p.logprobs), static_cast<size_t>(V));
  r.top.clear();
  if (top_n > 0) {
    r.top.reserve(top_n + 1);
    float entry = -INFINITY;  // a value must beat this to enter once the list is full
    for (int32_t i = 0; i < V; ++i) {
      const float v = logprobs_[i];
      if (!(v > entry) && r.top.size() == top_n) continue;
      auto at = std::find_if(r.top.begin(), r.top.end(),
                             [v](const TokenLogprob& t) { return t.logprob < v; });
      r.top.insert(at, TokenLogprob{i, v});
      if (r.top.size() > top_n) r.top.pop_back();
      if (r.top.size() == top_n) entry = r.top.back().logprob;
    }
  }
  return r;
}

int32_t Sampler::sample_scaled(const SamplingParams& p, uint64_t seed, int64_t token_index) {
  const int32_t V = static_cast<int32_t>(z_.size());
  const float temperature = p.temperature;
  // z = logit / T, kept finite as in apply_penalties; -inf (masked) stays -inf; -0 → +0 so that
  // equal z get equal sort keys. The SSE2 lanes do the scalar tail's IEEE operations (no NaN can
  // occur), and max is exact in any order.
  float* z = z_.data();
  float z_max = -INFINITY;
  int32_t i = 0;
#ifdef __SSE2__
  {
    const __m128 t = _mm_set1_ps(temperature), lo = _mm_set1_ps(-FLT_MAX),
                 hi = _mm_set1_ps(FLT_MAX), ninf = _mm_set1_ps(-INFINITY);
    __m128 mx = ninf;
    for (; i + 4 <= V; i += 4) {
      const __m128 x = _mm_loadu_ps(z + i);
      const __m128 s = _mm_min_ps(_mm_max_ps(_mm_div_ps(x, t), lo), hi);
      const __m128 masked = _mm_cmpeq_ps(x, ninf);
      const __m128 v = _mm_add_ps(_mm_or_ps(_mm_and_ps(masked, x), _mm_andnot_ps(masked, s)),
                                  _mm_setzero_ps());
      _mm_storeu_ps(z + i, v);
      mx = _mm_max_ps(mx, v);
    }
    float lanes[4];
    _mm_storeu_ps(lanes, mx);
    z_max = std::max(std::max(lanes[0], lanes[1]), std::max(lanes[2], lanes[3]));
  }
#endif
  for (; i < V; ++i) {
    const float x = z[i];
    const float s = std::min(std::max(x / temperature, -FLT_MAX), FLT_MAX);
    z[i] = (x == -INFINITY ? x : s) + 0.0f;
    z_max = std::max(z_max, z[i]);
  }
  shifted_.resize(V);
  weight_all_.resize(V);
  for (i = 0; i < V; ++i) shifted_[i] = z_[i] - z_max;
  cpu::det_expf_n(shifted_.data(), weight_all_.data(), V);  // the same bits as det_expf
  const float* w = weight_all_.data();
  const float w_top = cpu::det_expf(0.0f);  // the top token's: its z - z_max is +0
  const float floor = p.min_p > 0.0f ? p.min_p * w_top : 0.0f;  // min-p survivors: w >= floor

  // Candidates: sort keys and fixed-point masses, in id order (the walk does not need them
  // sorted). Top-k first (count selection over every unmasked token), then min-p; tokens of
  // mass 0 can neither be drawn nor end a top-p prefix, so they are dropped. The histogram of
  // the keys' first digit, weighted by mass, is built on the way for the first walk step.
  uint64_t kth = UINT64_MAX;  // key of the k-th candidate; later ones are cut by top-k
  if (p.top_k > 0) {
    keys_.clear();
    for (i = 0; i < V; ++i)
      if (z_[i] != -INFINITY) keys_.push_back(candidate_key(z_[i], i));
    if (static_cast<size_t>(p.top_k) < keys_.size())
      kth = select(keys_.data(), nullptr, keys_.size(), p.top_k - 1, nullptr).key;
  }
  keys_.resize(V);
  mass_.resize(V);
  top_hist_.assign(size_t{1} << kDigitBits, 0);
  size_t n = 0;
  uint64_t total = 0;
  for (i = 0; i < V; ++i) {
    if (z_[i] == -INFINITY || w[i] < floor) continue;
    const uint64_t q = fixed_mass(w[i]);
    const uint64_t key = candidate_key(z_[i], i);
    if (q == 0 || key > kth) continue;
    keys_[n] = key;
    mass_[n] = q;
    top_hist_[key >> (64 - kDigitBits)] += q;
    total += q;
    ++n;
  }
  // The top token always stays (mass 2^40): the walks below have something to find.
  DETINFER_CHECK(n > 0, "sampler: internal error: no candidate left");

  // Top-p: the shortest prefix whose mass reaches top_p of the survivors' (renormalised).
  uint64_t kept = total;
  if (p.top_p < 1.0f)
    kept =
        select(keys_.data(), mass_.data(), n, top_p_goal(total, p.top_p) - 1, top_hist_.data()).cum;
  // Inverse CDF: the first candidate whose cumulative mass exceeds u·kept, u = u24/2^24 < 1.
  const uint64_t u24 = philox_block(seed, static_cast<uint64_t>(token_index))[0] >> 8;
  const uint64_t target = static_cast<uint64_t>((static_cast<u128>(kept) * u24) >> 24);
  return key_id(select(keys_.data(), mass_.data(), n, target, top_hist_.data()).key);
}

uint64_t derive_seed(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t draw_seed() {
  std::random_device rd;
  const uint64_t hi = rd();
  return (hi << 32) ^ static_cast<uint64_t>(rd());
}

}  // namespace detinfer
