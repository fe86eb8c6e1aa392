// The GPU sampler: the CPU sampler's pipeline (runtime/sampler.h, steps 1-8) and
// cpu::log_softmax, with the same bits. Two kernels per launch.
//
// row_kernel: one cluster of 8 blocks x 512 threads per row; block `rank` holds the tokens
//   k = 4096·j + 512·rank + i (i < 512) in shared memory (one read of the row). It computes
//   - the log-softmax statistics in kernels/cpu/softmax.cpp's order: lane l = 512·rank + i sums
//     det_expf(x[k] - mx) over its tokens in increasing k; lanes are added by the balanced tree
//     over adjacent lanes (warp butterfly with xor offsets 1, 2, 4, 8, 16, then the 16 warps
//     likewise, then the 8 blocks ((0+1)+(2+3))+((4+5)+(6+7))); lse = det_logf(sum). The max
//     (+0, so that -0 counts as +0), the argmax (lowest id of the max) and the error flags are
//     exact in any order;
//   - for a sampled row: the history's tokens and counts (penalties), z, the top z, and the
//     level-0 histograms below over the row, plus one code per token (its bucket);
//   - for a row with a top-N list: the level-0 histogram of the raw logprobs;
//   - for a greedy row with penalties: the argmax of the penalised logits.
// sample_kernel: one block of 1024 threads per row: errors, the walks, the result.
//
// Every sum over candidates is a sum of integers (counts, or the fixed-point masses
// q = trunc(w·2^40)), done with 32-bit shared-memory atomics (a 64-bit sum as two words with the
// carry propagated) and added across blocks in integers, so its order does not matter. "The
// first candidate in (value desc, id asc) order whose cumulative weight exceeds t" (top-k, top-p,
// the draw, the top-N logprobs) is found by a walk:
//   level 0: 512 buckets by the distance to the top value (16 per unit over [0, 32), the rest
//            in the last bucket) — monotone in the sort key, so each bucket is an interval of
//            keys — pick the bucket where the running weight crosses t;
//   then, while that bucket holds more than 1024 candidates, histograms over 10-bit digits of
//            the sort key restricted to it narrow the key interval (the tokens of the bucket are
//            found through their codes, not by recomputing every token);
//   then its candidates are gathered, sorted by key (bitonic) and scanned.
// A refinement bucket holding a single candidate ends the walk at once. The result is the CPU's
// select() (which the CPU tests compare with a full sort), so the token is the CPU's.
// det_expf is not monotone (one-ulp steps back in ~2900 places on [-104, 0]), so nothing here
// assumes that the survivors of min-p or of q > 0 are a prefix of the sort order.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "common/error.h"
#include "kernels/cuda/det_math.cuh"
#include "kernels/cuda/sampler.h"
#include "runtime/philox.h"

namespace cg = cooperative_groups;

namespace detinfer::cuda {
namespace {

void ck(cudaError_t err, const char* what) {
  if (err != cudaSuccess) fail("CUDA error in ", what, ": ", cudaGetErrorString(err));
}

constexpr int kLanes = 4096;  // = kLanes of kernels/cpu/softmax.cpp
constexpr int kStatThreads = 512;
constexpr int kStatBlocks = kLanes / kStatThreads;  // blocks per cluster (one cluster per row)
static_assert(kStatBlocks == 8, "the block tree below adds exactly 8 partials");
constexpr int kMaxChunks = kSampleMaxVocab / kLanes;

constexpr int kThreads = 1024;  // sample_kernel: 32 warps
constexpr int kL0Buckets = 512;   // level-0 histogram
constexpr float kPerUnit = 16.0f, kWindow = 32.0f;  // level-0 buckets: 16 per unit over [0, 32)
constexpr int kBuckets = 1024;     // refinement histogram
constexpr int kDigitBits = 10;     // log2(kBuckets)
constexpr int kGather = kThreads;  // the walk gathers a bucket of <= this many
constexpr int kBucketsPerBlock = kL0Buckets / kStatBlocks;
static_assert(2 * kBucketsPerBlock <= kStatThreads, "the cross-block sum uses one thread per bucket");
constexpr float kInf = __builtin_huge_valf();
constexpr uint16_t kNoCode = 0xffff, kSurvivorBit = 0x8000;

struct RowStats {
  float mx;            // max + 0 (the log-softmax shift)
  float lse;           // det_logf(sum)
  int32_t argmax;      // lowest id of the maximum (-1 if none)
  int32_t bad;         // lowest id of a NaN/+inf logit, INT32_MAX if none
  int32_t any_finite;
  float zmax;          // sampled rows: the top z
  int32_t argmax_pen;  // greedy rows with penalties: argmax of the penalised logits
  int32_t pad;
};
static_assert(sizeof(RowStats) == 32, "workspace layout");

// The level-0 histograms of a row, as row_kernel leaves them in the workspace.
struct Level0Sampling {
  uint32_t cnt_all[kL0Buckets], cnt_surv[kL0Buckets];  // unmasked tokens; survivors
  uint64_t mass[kL0Buckets];                           // survivors' masses
};
struct Level0Logprob {
  uint32_t cnt[kL0Buckets];
};

__host__ __device__ int64_t codes_per_row(int32_t V) { return (static_cast<int64_t>(V) + 7) & ~int64_t{7}; }
__host__ __device__ int64_t bitmap_words(int32_t V) {
  return static_cast<int64_t>((V + kLanes - 1) / kLanes) * (kLanes / 32);
}

// The workspace, carved into per-row arrays.
struct Work {
  RowStats* stats;
  uint32_t* counts;    // [rows][V]: generated-token counts of the history tokens
  uint16_t* codes_s;   // [rows][codes_per_row]: 0xffff or level-0 bucket | 0x8000 for a survivor
  uint16_t* codes_lp;  // [rows][codes_per_row]: level-0 bucket of the raw logprob
  uint32_t* bitmap;    // [rows][bitmap_words]: history tokens
  Level0Sampling* l0s;
  Level0Logprob* l0lp;
};
size_t align256(size_t n) { return (n + 255) & ~size_t{255}; }
size_t carve(Work* w, void* base, int64_t rows, int32_t V) {
  const size_t R = static_cast<size_t>(rows);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t at = off;
    off += align256(bytes);
    return static_cast<unsigned char*>(base) + at;
  };
  unsigned char* stats = take(R * sizeof(RowStats));
  unsigned char* counts = take(R * V * sizeof(uint32_t));
  unsigned char* codes_s = take(R * codes_per_row(V) * sizeof(uint16_t));
  unsigned char* codes_lp = take(R * codes_per_row(V) * sizeof(uint16_t));
  unsigned char* bitmap = take(R * bitmap_words(V) * sizeof(uint32_t));
  unsigned char* l0s = take(R * sizeof(Level0Sampling));
  unsigned char* l0lp = take(R * sizeof(Level0Logprob));
  if (w) {
    w->stats = reinterpret_cast<RowStats*>(stats);
    w->counts = reinterpret_cast<uint32_t*>(counts);
    w->codes_s = reinterpret_cast<uint16_t*>(codes_s);
    w->codes_lp = reinterpret_cast<uint16_t*>(codes_lp);
    w->bitmap = reinterpret_cast<uint32_t*>(bitmap);
    w->l0s = reinterpret_cast<Level0Sampling*>(l0s);
    w->l0lp = reinterpret_cast<Level0Logprob*>(l0lp);
  }
  return off;
}

// ---- device functions both kernels use ---------------------------------------------------------

// Sort key: ascending key = value descending, then id ascending (runtime/sampler.cpp's
// candidate_key). v has no NaN and no -0.
__device__ __forceinline__ uint64_t sort_key(float v, int32_t id) {
  const uint32_t b = __float_as_uint(v);
  const uint32_t ascending = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<uint64_t>(~ascending) << 32) | static_cast<uint32_t>(id);
}

// Level-0 bucket of a candidate at distance d >= 0 below the top (monotone in d).
__device__ __forceinline__ int level0_bucket(float d) {
  return d < kWindow ? __float2int_rz(__fmul_rn(d, kPerUnit)) : kL0Buckets - 1;
}

// q = trunc(w·2^40): exact in double, as fixed_mass() on the CPU.
__device__ __forceinline__ uint64_t fixed_mass(float w) {
  return static_cast<uint64_t>(__double2ll_rz(__dmul_rn(static_cast<double>(w), 0x1p40)));
}

// A 64-bit sum in two 32-bit words: the add that wraps the low word carries into the high one.
__device__ __forceinline__ void atomic_add_u64(uint32_t* lo, uint32_t* hi, uint64_t q) {
  const uint32_t ql = static_cast<uint32_t>(q);
  uint32_t carry = 0;
  if (ql != 0) {
    const uint32_t old = atomicAdd(lo, ql);
    carry = old + ql < old ? 1u : 0u;
  }
  const uint32_t qh = static_cast<uint32_t>(q >> 32) + carry;
  if (qh != 0) atomicAdd(hi, qh);
}

__device__ __forceinline__ uint32_t philox_word0(uint64_t seed, uint64_t counter) {
  using namespace philox_detail;
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0,
           c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    if (r > 0) k0 += kWeyl0, k1 += kWeyl1;
    const uint32_t hi0 = __umulhi(kMul0, c0), lo0 = kMul0 * c0;
    const uint32_t hi1 = __umulhi(kMul1, c2), lo1 = kMul1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return c0;
}

// The smallest integer >= top_p·total (top_p in (0, 1)), as top_p_goal() on the CPU:
// top_p = mant·2^-k exactly with a 24-bit mant; the product has at most 88 bits.
__device__ uint64_t top_p_goal(uint64_t total, float top_p) {
  uint32_t b = __float_as_uint(top_p);
  int E = static_cast<int>(b >> 23);
  uint32_t m = b & 0x7fffffu;
  if (E == 0) {  // subnormal: normalise so that bit 23 is set
    const int sh = __clz(m) - 8;
    m <<= sh;
    E = 1 - sh;
  } else {
    m |= 0x800000u;
  }
  const int k = 24 - (E - 126);  // top_p = (m / 2^24)·2^(E-126)
  if (k >= 128) return 1;
  const uint64_t lo = total * m, hi = __umul64hi(total, static_cast<uint64_t>(m));
  uint64_t q;
  bool frac;
  if (k < 64) {
    q = (lo >> k) | (k > 0 ? hi << (64 - k) : 0);
    frac = (lo & ((uint64_t{1} << k) - 1)) != 0;
  } else if (k == 64) {
    q = hi;
    frac = lo != 0;
  } else {
    q = hi >> (k - 64);
    frac = lo != 0 || (hi & ((uint64_t{1} << (k - 64)) - 1)) != 0;
  }
  return q + (frac ? 1 : 0);
}

// Step 1 for a token that occurs in the history (runtime/sampler.cpp, apply_penalties); count =
// its occurrences among the generated tokens.
__device__ __forceinline__ float penalise(float x, uint32_t count, float rep, float freq,
                                          float pres) {
  float v = x;
  if (rep != 1.0f) v = v < 0.0f ? __fmul_rn(v, rep) : __fdiv_rn(v, rep);
  if (count != 0) {
    v = __fsub_rn(v, __fmul_rn(freq, __uint2float_rn(count)));
    v = __fsub_rn(v, pres);
  }
  if (isinf(v) && !isinf(x)) v = v < 0.0f ? -FLT_MAX : FLT_MAX;
  return v;
}

// Step 3: z = logit / T clamped to ±FLT_MAX, -inf kept, -0 → +0.
__device__ __forceinline__ float scale_value(float x, float temperature) {
  float s = __fdiv_rn(x, temperature);
  s = s < -FLT_MAX ? -FLT_MAX : s;
  s = FLT_MAX < s ? FLT_MAX : s;
  return __fadd_rn(x == -kInf ? x : s, 0.0f);
}

// A token as a candidate of a walk: its sort key, level-0 bucket, and mass (q for a survivor,
// else 0).
struct Cand {
  uint64_t key;
  int b0;
  uint64_t mass;
};

// Steps 4-6 for a token with scaled logit z: false if masked (z = -inf).
__device__ __forceinline__ bool sample_cand(float z, float zmax, float floor_w, int32_t k,
                                            Cand& c) {
  if (z == -kInf) return false;
  const float d = __fsub_rn(zmax, z);
  c.b0 = level0_bucket(d);
  c.key = sort_key(z, k);
  // z - zmax = -d <= -28: w < 2^-40 (exp(-28) < 0.77·2^-40, det_expf is within an ulp), q = 0.
  if (d >= 28.0f) {
    c.mass = 0;
    return true;
  }
  const float w = det_expf(__fsub_rn(z, zmax));
  const uint64_t q = fixed_mass(w);
  c.mass = !(w < floor_w) && q != 0 ? q : 0;
  return true;
}

// A token by its raw logprob lp ((x - mx) - lse); lp_top = the largest, +0 for -0.
__device__ __forceinline__ void logprob_cand(float lp, float lp_top, int32_t k, Cand& c) {
  lp = __fadd_rn(lp, 0.0f);  // -0 → +0 for the order
  c.b0 = level0_bucket(__fsub_rn(lp_top, lp));
  c.key = sort_key(lp, k);
  c.mass = 0;
}

__device__ __forceinline__ bool penalties_on(const SampleRowParams& p) {
  return p.history_len > 0 && (p.repetition_penalty != 1.0f || p.frequency_penalty != 0.0f ||
                               p.presence_penalty != 0.0f);
}

__device__ bool params_ok(const SampleRowParams& p) {
  const bool lp_ok = p.n_logprobs >= 0 && p.n_logprobs <= kSampleMaxTop;
  if (p.want_token >= 0) return lp_ok;
  return lp_ok && p.temperature >= 0.0f && p.temperature < kInf && p.top_k >= 0 &&
         p.top_p > 0.0f && p.top_p <= 1.0f && p.min_p >= 0.0f && p.min_p <= 1.0f &&
         p.repetition_penalty > 0.0f && p.repetition_penalty < kInf &&
         fabsf(p.frequency_penalty) <= 2.0f && fabsf(p.presence_penalty) <= 2.0f &&
         p.token_index >= 0 && p.history_len >= 0 && p.history_offset >= 0;
}

__device__ __forceinline__ float min_p_floor(const SampleRowParams& p) {
  return p.min_p > 0.0f ? __fmul_rn(p.min_p, det_expf(0.0f)) : 0.0f;
}

__device__ __forceinline__ void better_of(float& v, int32_t& i, float v2, int32_t i2) {
  if (v2 > v || (v2 == v && static_cast<uint32_t>(i2) < static_cast<uint32_t>(i))) {
    v = v2;
    i = i2;
  }
}

// Sum over a warp by the adjacent-lanes tree (xor 1, 2, 4, ...): every lane gets the bits of
// the tree's root (each level adds the same two values in both lanes; + is commutative).
__device__ __forceinline__ float warp_tree_sum(float v, int levels) {
  for (int o = 1; o < (1 << levels); o <<= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// ---- row_kernel ----------------------------------------------------------------------------------

struct StatPart {
  float best, sum, zmax, pen_best;
  int32_t arg, bad, any_finite, pen_arg;
};

// row_kernel's shared memory besides the staged row.
// Small, so that three blocks (with a 64 KiB slice of a 128256-token row) fit on an SM.
struct alignas(16) RowSmem {
  uint32_t cnt_all[kL0Buckets], cnt_surv[kL0Buckets], mass_lo[kL0Buckets], mass_hi[kL0Buckets];
  uint32_t lp_cnt[kL0Buckets];
  StatPart part;
  float w_f[kStatThreads / 32], w_f2[kStatThreads / 32];
  int32_t w_i[kStatThreads / 32], w_i2[kStatThreads / 32], w_i3[kStatThreads / 32];
  float mx, best, lse, zmax;
  int32_t arg, bad, fin, pen_arg;
  int32_t hist_bad;
};
static_assert(sizeof(RowSmem) % 16 == 0, "the staged row follows, 16-byte aligned");

// Block-wide (value, id) argmax and max/or reductions of row_kernel (512 threads); results in
// thread 0.
__device__ void row_block_reduce(RowSmem& sm, float& best, int32_t& arg, int32_t& bad,
                                 int32_t& fin) {
  const int wid = threadIdx.x >> 5, wl = threadIdx.x & 31;
  for (int o = 16; o >= 1; o >>= 1) {
    const float b2 = __shfl_xor_sync(0xffffffffu, best, o);
    const int32_t a2 = __shfl_xor_sync(0xffffffffu, arg, o);
    better_of(best, arg, b2, a2);
    bad = min(bad, __shfl_xor_sync(0xffffffffu, bad, o));
    fin |= __shfl_xor_sync(0xffffffffu, fin, o);
  }
  if (wl == 0) sm.w_f[wid] = best, sm.w_i[wid] = arg, sm.w_i2[wid] = bad, sm.w_i3[wid] = fin;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < kStatThreads / 32; ++w) {
      better_of(best, arg, sm.w_f[w], sm.w_i[w]);
      bad = min(bad, sm.w_i2[w]);
      fin |= sm.w_i3[w];
    }
  __syncthreads();
}

__global__ void __cluster_dims__(kStatBlocks, 1, 1) __launch_bounds__(kStatThreads, 3)
    row_kernel(const float* __restrict__ logits, int64_t ld, int32_t V,
               const SampleRowParams* __restrict__ params, const int32_t* __restrict__ history,
               Work w) {
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const int64_t row = blockIdx.x / kStatBlocks;
  const float* x = logits + row * ld;
  extern __shared__ float4 smem4[];
  RowSmem& sm = *reinterpret_cast<RowSmem*>(smem4);
  // This block's tokens, staged once: entry j·512 + i is token 4096·j + 512·rank + i.
  float4* stage4 = smem4 + sizeof(RowSmem) / sizeof(float4);
  float* stage = reinterpret_cast<float*>(stage4);
  const int chunks = (V + kLanes - 1) / kLanes;
  const int tid = threadIdx.x;
  auto token = [&](int j) { return j * kLanes + rank * kStatThreads + tid; };
  const SampleRowParams p = params[row];

  // Pass 1 (max, argmax, flags: exact in any order) while loading; each thread's k increase.
  float best = -kInf;
  int32_t arg = -1, bad = INT32_MAX, fin = 0;
  auto see = [&](float v, int32_t k) {
    if (!(v < kInf) && bad == INT32_MAX) bad = k;
    fin |= v > -kInf;
    if (v > best) best = v, arg = k;
  };
  if ((reinterpret_cast<uintptr_t>(x) & 15) == 0) {
#pragma unroll 4
    for (int f = tid; f < chunks * (kStatThreads / 4); f += kStatThreads) {
      const int j = f / (kStatThreads / 4), i = 4 * (f % (kStatThreads / 4));
      const int k = j * kLanes + rank * kStatThreads + i;
      float4 v;
      if (k + 3 < V) {
        v = __ldg(reinterpret_cast<const float4*>(x + k));
      } else {
        v.x = k < V ? __ldg(x + k) : 0.0f;
        v.y = k + 1 < V ? __ldg(x + k + 1) : 0.0f;
        v.z = k + 2 < V ? __ldg(x + k + 2) : 0.0f;
        v.w = 0.0f;
      }
      stage4[f] = v;
      if (k < V) see(v.x, k);
      if (k + 1 < V) see(v.y, k + 1);
      if (k + 2 < V) see(v.z, k + 2);
      if (k + 3 < V) see(v.w, k + 3);
    }
  } else {
#pragma unroll 4
    for (int f = tid; f < chunks * kStatThreads; f += kStatThreads) {
      const int k = (f / kStatThreads) * kLanes + rank * kStatThreads + f % kStatThreads;
      const float v = k < V ? __ldg(x + k) : 0.0f;
      stage[f] = v;
      if (k < V) see(v, k);
    }
  }
  row_block_reduce(sm, best, arg, bad, fin);
  if (tid == 0) sm.part.best = best, sm.part.arg = arg, sm.part.bad = bad, sm.part.any_finite = fin;
  cluster.sync();  // #1
  if (tid == 0) {
    for (int r = 0; r < kStatBlocks; ++r) {
      const StatPart* q = cluster.map_shared_rank(&sm.part, r);
      better_of(best, arg, q->best, q->arg);
      bad = min(bad, q->bad);
      fin |= q->any_finite;
    }
    sm.mx = __fadd_rn(best, 0.0f);  // -0 → +0: the shift does not depend on which zero came first
    sm.best = best, sm.arg = arg, sm.bad = bad, sm.fin = fin;
    sm.hist_bad = 0;
  }
  __syncthreads();
  const float mx = sm.mx;

  // What this row needs (the same in every block of the cluster).
  const bool ok = params_ok(p) && sm.bad == INT32_MAX && sm.fin;
  const bool want = p.want_token >= 0;
  const bool lp_row = ok && p.n_logprobs > 0 && (!want || p.want_token < V);
  const bool gen = ok && !want;
  const bool pen = gen && penalties_on(p);
  const int32_t* h = history + p.history_offset;
  const int64_t H = p.history_len;
  bool valid = gen;  // sample_kernel reports a bad history; here it only must not be indexed
  if (pen) {
    if (p.n_prompt < 0 || p.n_prompt > H) valid = false;
    for (int64_t i = tid; i < H && valid; i += kStatThreads)
      if (h[i] < 0 || h[i] >= V) sm.hist_bad = 1;
    __syncthreads();
    if (sm.hist_bad) valid = false;
  }
  const bool use_pen = pen && valid;
  const bool sampled = valid && p.temperature > 0.0f;
  const bool greedy_pen = use_pen && p.temperature == 0.0f;
  auto mine = [&](int32_t t) { return (t % kLanes) / kStatThreads == rank; };
  uint32_t* counts = w.counts + row * static_cast<int64_t>(V);
  uint32_t* bits = w.bitmap + row * bitmap_words(V);
  if (use_pen) {  // Step 1's inputs for this block's tokens: history bits, generated counts
    for (int i = tid; i < chunks * (kStatThreads / 32); i += kStatThreads)
      bits[(i / 16) * (kLanes / 32) + rank * 16 + i % 16] = 0;
    for (int64_t i = tid; i < H; i += kStatThreads)
      if (mine(h[i])) counts[h[i]] = 0;
    __syncthreads();
    for (int64_t i = tid; i < H; i += kStatThreads) {
      const int32_t t = h[i];
      if (!mine(t)) continue;
      atomicOr(&bits[t >> 5], 1u << (t & 31));
      if (i >= p.n_prompt) atomicAdd(&counts[t], 1u);
    }
    __syncthreads();  // (the atomics are in L2; they are read back with __ldcg)
  }

  // Pass 2: lane 512·rank + thread, its tokens in increasing k.
  float acc = 0.0f;
#pragma unroll 4
  for (int j = 0; j < chunks; ++j)
    if (token(j) < V) acc = __fadd_rn(acc, det_expf(__fsub_rn(stage[j * kStatThreads + tid], mx)));
  acc = warp_tree_sum(acc, 5);
  if ((tid & 31) == 0) sm.w_f2[tid >> 5] = acc;
  __syncthreads();
  if (tid < 32) {
    float v = tid < kStatThreads / 32 ? sm.w_f2[tid] : 0.0f;
    v = warp_tree_sum(v, 4);  // 16 warps; lanes 16-31 never mix with 0-15
    if (tid == 0) sm.part.sum = v;
  }
  cluster.sync();  // #2
  if (tid == 0) {
    float s[kStatBlocks];
    for (int r = 0; r < kStatBlocks; ++r) s[r] = cluster.map_shared_rank(&sm.part, r)->sum;
    const float sum = __fadd_rn(__fadd_rn(__fadd_rn(s[0], s[1]), __fadd_rn(s[2], s[3])),
                                __fadd_rn(__fadd_rn(s[4], s[5]), __fadd_rn(s[6], s[7])));
    sm.lse = det_logf(sum);
  }
  for (int b = tid; b < kL0Buckets; b += kStatThreads) {
    sm.lp_cnt[b] = 0;
    sm.cnt_all[b] = 0, sm.cnt_surv[b] = 0, sm.mass_lo[b] = 0, sm.mass_hi[b] = 0;
  }
  __syncthreads();
  const float lse = sm.lse;

  // The raw logprobs' level-0 histogram and codes. Each thread touches only its own entries
  // of the staged row, here and below.
  const int64_t ncodes = codes_per_row(V);
  if (lp_row) {
    uint16_t* codes = w.codes_lp + row * ncodes;
    const float lp_top = __fadd_rn(__fsub_rn(__fsub_rn(sm.best, mx), lse), 0.0f);
    for (int j = 0; j < chunks; ++j) {
      const int k = token(j);
      if (k >= ncodes) break;
      if (k >= V) {
        codes[k] = kNoCode;
        continue;
      }
      Cand c;
      logprob_cand(__fsub_rn(__fsub_rn(stage[j * kStatThreads + tid], mx), lse), lp_top, k, c);
      codes[k] = static_cast<uint16_t>(c.b0);
      atomicAdd(&sm.lp_cnt[c.b0], 1u);
    }
  }

  // Steps 1 and 3 (z in place of x), the top z; or the penalised argmax of a greedy row.
  float zmax = -kInf, pen_best = -kInf;
  int32_t pen_arg = -1;
  if (sampled || greedy_pen) {
    for (int j = 0; j < chunks; ++j) {
      const int k = token(j);
      if (k >= V) break;
      float v = stage[j * kStatThreads + tid];
      if (use_pen && (__ldcg(bits + (k >> 5)) & (1u << (k & 31))))
        v = penalise(v, __ldcg(counts + k), p.repetition_penalty, p.frequency_penalty,
                     p.presence_penalty);
      if (sampled) {
        const float z = scale_value(v, p.temperature);
        stage[j * kStatThreads + tid] = z;
        zmax = fmaxf(zmax, z);
      } else if (v > pen_best || pen_arg < 0) {
        pen_best = v, pen_arg = k;
      }
    }
  }
  {
    int32_t unused_bad = 0, unused_fin = 0;
    float zm = zmax;
    row_block_reduce(sm, pen_best, pen_arg, unused_bad, unused_fin);
    // the max of z: exact in any order (z has no NaN, no -0)
    for (int o = 16; o >= 1; o >>= 1) zm = fmaxf(zm, __shfl_xor_sync(0xffffffffu, zm, o));
    if ((tid & 31) == 0) sm.w_f2[tid >> 5] = zm;
    __syncthreads();
    if (tid == 0) {
      for (int i = 1; i < kStatThreads / 32; ++i) zm = fmaxf(zm, sm.w_f2[i]);
      sm.part.zmax = zm, sm.part.pen_best = pen_best, sm.part.pen_arg = pen_arg;
    }
  }
  cluster.sync();  // #3
  if (tid == 0) {
    float zm = -kInf;
    for (int r = 0; r < kStatBlocks; ++r) {
      const StatPart* q = cluster.map_shared_rank(&sm.part, r);
      zm = fmaxf(zm, q->zmax);
      better_of(pen_best, pen_arg, q->pen_best, q->pen_arg);
    }
    sm.zmax = zm, sm.pen_arg = pen_arg;
  }
  __syncthreads();

  // Steps 4-6 over this block's tokens: the level-0 histogram of the candidates and codes.
  if (sampled) {
    const float zm = sm.zmax, floor_w = min_p_floor(p);
    uint16_t* codes = w.codes_s + row * ncodes;
    for (int j = 0; j < chunks; ++j) {
      const int k = token(j);
      if (k >= ncodes) break;
      Cand c;
      if (k >= V || !sample_cand(stage[j * kStatThreads + tid], zm, floor_w, k, c)) {
        codes[k] = kNoCode;
        continue;
      }
      codes[k] = static_cast<uint16_t>(c.b0 | (c.mass != 0 ? kSurvivorBit : 0));
      atomicAdd(&sm.cnt_all[c.b0], 1u);
      if (c.mass != 0) {
        atomicAdd(&sm.cnt_surv[c.b0], 1u);
        atomic_add_u64(&sm.mass_lo[c.b0], &sm.mass_hi[c.b0], c.mass);
      }
    }
  }
  cluster.sync();  // #4

  // The row's histograms: block `rank` adds the 8 blocks' buckets [64·rank, 64·rank + 64).
  if (sampled && tid < kBucketsPerBlock) {
    const int b = rank * kBucketsPerBlock + tid;
    uint32_t ca = 0, cs = 0;
    uint64_t m = 0;
    for (int r = 0; r < kStatBlocks; ++r) {
      const RowSmem* q = cluster.map_shared_rank(&sm, r);
      ca += q->cnt_all[b], cs += q->cnt_surv[b];
      m += (static_cast<uint64_t>(q->mass_hi[b]) << 32) | q->mass_lo[b];
    }
    Level0Sampling& g = w.l0s[row];
    g.cnt_all[b] = ca, g.cnt_surv[b] = cs, g.mass[b] = m;
  }
  if (lp_row && tid >= kBucketsPerBlock && tid < 2 * kBucketsPerBlock) {
    const int b = rank * kBucketsPerBlock + tid - kBucketsPerBlock;
    uint32_t c = 0;
    for (int r = 0; r < kStatBlocks; ++r) c += cluster.map_shared_rank(&sm, r)->lp_cnt[b];
    w.l0lp[row].cnt[b] = c;
  }
  if (rank == 0 && tid == 0) {
    RowStats st;
    st.mx = mx, st.lse = lse, st.argmax = sm.arg, st.bad = sm.bad, st.any_finite = sm.fin;
    st.zmax = sm.zmax, st.argmax_pen = sm.pen_arg, st.pad = 0;
    w.stats[row] = st;
  }
  cluster.sync();  // #5: no block leaves while another may read its shared memory
}

// ---- sample_kernel -----------------------------------------------------------------------------

struct Level0 {  // one histogram for three views: all candidates, survivors, survivors' mass
  uint32_t cnt_all[kL0Buckets], cnt_surv[kL0Buckets], mass_lo[kL0Buckets], mass_hi[kL0Buckets];
};
struct Refine {
  uint32_t cnt[kBuckets], mass_lo[kBuckets], mass_hi[kBuckets];
  uint64_t key[kBuckets];
};
struct Smem {
  Level0 l0;
  Refine rf;
  uint64_t list_key[2][kGather], list_mass[2][kGather];  // the bitonic sort's two buffers
  uint32_t seen[kSampleMaxVocab / 32];  // history tokens (penalties)
  uint64_t red[32], scan_a[32], scan_b[32];
  uint64_t bcast;
  uint32_t list_n;
  int32_t bad_hist;
  int32_t top_n;
  uint64_t top_key[kSampleMaxTop];
  // a crossing: bucket, weights before it
  int32_t cross_b;
  uint64_t cross_run_p, cross_run_s;
  uint64_t found_key, found_p, found_s, found_before_p, found_before_s;
};

__device__ __forceinline__ uint64_t warp_sum_u64(uint64_t v) {
  for (int o = 16; o >= 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ uint64_t block_sum_u64(uint64_t v, Smem& sm) {
  const int wid = threadIdx.x >> 5, wl = threadIdx.x & 31;
  v = warp_sum_u64(v);
  if (wl == 0) sm.red[wid] = v;
  __syncthreads();
  if (wid == 0) {
    v = warp_sum_u64(sm.red[wl]);
    if (wl == 0) sm.bcast = v;
  }
  __syncthreads();
  return sm.bcast;
}

// Exclusive prefix sums over the threads (in thread order) of two values at once.
__device__ void block_exclusive_scan2(uint64_t a, uint64_t b, uint64_t& ea, uint64_t& eb, Smem& sm) {
  const int wid = threadIdx.x >> 5, wl = threadIdx.x & 31;
  uint64_t ia = a, ib = b;
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t ta = __shfl_up_sync(0xffffffffu, ia, o), tb = __shfl_up_sync(0xffffffffu, ib, o);
    if (wl >= o) ia += ta, ib += tb;
  }
  if (wl == 31) sm.scan_a[wid] = ia, sm.scan_b[wid] = ib;
  __syncthreads();
  if (wid == 0) {
    const uint64_t va = sm.scan_a[wl], vb = sm.scan_b[wl];
    uint64_t sa = va, sb = vb;
    for (int o = 1; o < 32; o <<= 1) {
      const uint64_t ta = __shfl_up_sync(0xffffffffu, sa, o), tb = __shfl_up_sync(0xffffffffu, sb, o);
      if (wl >= o) sa += ta, sb += tb;
    }
    sm.scan_a[wl] = sa - va;
    sm.scan_b[wl] = sb - vb;
  }
  __syncthreads();
  ea = sm.scan_a[wid] + ia - a;
  eb = sm.scan_b[wid] + ib - b;
  __syncthreads();
}

// A histogram seen by a walk: primary weight (count or mass) decides the crossing; secondary
// (mass or nothing) is summed alongside.
struct View {
  int n;  // buckets
  const uint32_t* cnt;
  const uint32_t* mass_lo;
  const uint32_t* mass_hi;
  const uint64_t* key;  // refinement levels: a member's key (exact when the count is 1)
  bool primary_mass, secondary_mass;
  __device__ uint64_t mass(int b) const {
    return (static_cast<uint64_t>(mass_hi[b]) << 32) | mass_lo[b];
  }
  __device__ uint64_t p(int b) const { return primary_mass ? mass(b) : cnt[b]; }
  __device__ uint64_t s(int b) const { return secondary_mass ? mass(b) : 0; }
};

// The bucket where the running primary weight first exceeds t (t < the total), the weights
// before it → sm.cross_*.
__device__ void find_crossing(const View& v, uint64_t t, Smem& sm) {
  const int b = 2 * threadIdx.x;
  const bool in = b < v.n;
  const uint64_t p0 = in ? v.p(b) : 0, p1 = in ? v.p(b + 1) : 0;
  const uint64_t s0 = in ? v.s(b) : 0, s1 = in ? v.s(b + 1) : 0;
  uint64_t ep, es;
  block_exclusive_scan2(p0 + p1, s0 + s1, ep, es, sm);
  if (in && ep <= t && t < ep + p0) {
    sm.cross_b = b, sm.cross_run_p = ep, sm.cross_run_s = es;
  } else if (in && ep + p0 <= t && t < ep + p0 + p1) {
    sm.cross_b = b + 1, sm.cross_run_p = ep + p0, sm.cross_run_s = es + s0;
  }
  __syncthreads();
}

enum class Mode { TopK, Mass, Logprob };

// One row's state.
struct Row {
  const float* x;
  const uint16_t* codes;  // the current walk's domain (codes_s or codes_lp)
  int32_t V;
  float temperature, repetition, frequency, presence;
  const uint32_t* counts;  // generated-token counts (for tokens flagged in sm.seen)
  bool penalties;
  float zmax, floor_w;  // sampling: the top z, the min-p floor
  float mx, lse, lp_top;
};

__device__ __forceinline__ float raw_logprob(const Row& r, int k) {
  return __fsub_rn(__fsub_rn(__ldg(r.x + k), r.mx), r.lse);
}

// Token k (whose code says it is in level-0 bucket b0) as a candidate of a walk; false if it is
// not one (for Mode::Mass: not a survivor).
__device__ __forceinline__ bool candidate(const Row& r, const Smem& sm, Mode mode, int k,
                                          Cand& c) {
  if (mode == Mode::Logprob) {
    logprob_cand(raw_logprob(r, k), r.lp_top, k, c);
    return true;
  }
  float v = __ldg(r.x + k);
  if (r.penalties && (sm.seen[k >> 5] & (1u << (k & 31))))
    v = penalise(v, __ldcg(r.counts + k), r.repetition, r.frequency, r.presence);
  if (!sample_cand(scale_value(v, r.temperature), r.zmax, r.floor_w, k, c)) return false;
  return mode != Mode::Mass || c.mass != 0;
}

// Calls f(k) for every token whose code has level-0 bucket b0 (and, in Mode::Mass, is a
// survivor); eight codes per load.
template <typename F>
__device__ __forceinline__ void for_bucket(const Row& r, Mode mode, int b0, F f) {
  const uint4* codes = reinterpret_cast<const uint4*>(r.codes);
  const int groups = (r.V + 7) / 8;
  for (int g = threadIdx.x; g < groups; g += kThreads) {
    const uint4 c4 = codes[g];
    const uint32_t w[4] = {c4.x, c4.y, c4.z, c4.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const uint32_t code = (w[e / 2] >> (16 * (e % 2))) & 0xffffu;
      if (code == kNoCode || static_cast<int>(code & 0x7fffu) != b0) continue;
      if (mode == Mode::Mass && !(code & kSurvivorBit)) continue;
      f(8 * g + e);
    }
  }
}

struct Crossing {
  int b0;  // its level-0 bucket
  uint64_t key;
  uint64_t before_p, before_s;  // primary / secondary weight of the candidates ranked before it
  uint64_t own_p, own_s;        // its own
};

// The first candidate in key order whose cumulative primary weight exceeds t (< the total).
// The level-0 histogram (sm.l0) must hold this mode's candidates, r.codes their codes.
__device__ Crossing walk(const Row& r, Smem& sm, Mode mode, uint64_t t) {
  const bool mass_primary = mode == Mode::Mass, mass_secondary = mode == Mode::TopK;
  const View v0{kL0Buckets, mode == Mode::Mass ? sm.l0.cnt_surv : sm.l0.cnt_all, sm.l0.mass_lo,
                sm.l0.mass_hi, nullptr, mass_primary, mass_secondary};
  const View vr{kBuckets, sm.rf.cnt, sm.rf.mass_lo, sm.rf.mass_hi, sm.rf.key, mass_primary,
                mass_secondary};
  find_crossing(v0, t, sm);
  const int b0 = sm.cross_b;
  Crossing c;
  c.b0 = b0;
  c.before_p = sm.cross_run_p;
  c.before_s = sm.cross_run_s;
  t -= c.before_p;
  uint32_t count = v0.cnt[b0];
  uint64_t lo = 0, hi = ~uint64_t{0};
  for (;;) {
    if (count <= static_cast<uint32_t>(kGather)) {
      // Gather the bucket's candidates, sort them by key, scan.
      if (threadIdx.x == 0) sm.list_n = 0;
      __syncthreads();
      for_bucket(r, mode, b0, [&](int k) {
        Cand cd;
        if (!candidate(r, sm, mode, k, cd) || cd.key < lo || cd.key > hi) return;
        const uint32_t at = atomicAdd(&sm.list_n, 1u);
        sm.list_key[0][at] = cd.key;
        sm.list_mass[0][at] = cd.mass;
      });
      __syncthreads();
      const int n = static_cast<int>(sm.list_n);
      int P = 1;
      while (P < n) P *= 2;
      // Bitonic sort, one element per thread: partners within a warp by shuffles, farther ones
      // through shared memory (two buffers, so one barrier per step).
      const int i = threadIdx.x;
      uint64_t key = i < n ? sm.list_key[0][i] : ~uint64_t{0};  // ~0 is no candidate's key
      uint64_t mass = i < n ? sm.list_mass[0][i] : 0;
      int buf = 1;
      for (int size = 2; size <= P; size *= 2) {
        for (int stride = size / 2; stride > 0; stride /= 2) {
          uint64_t pk, pm;
          if (stride >= 32) {
            sm.list_key[buf][i] = key, sm.list_mass[buf][i] = mass;
            __syncthreads();
            pk = sm.list_key[buf][i ^ stride], pm = sm.list_mass[buf][i ^ stride];
            buf ^= 1;
          } else {
            pk = __shfl_xor_sync(0xffffffffu, key, stride);
            pm = __shfl_xor_sync(0xffffffffu, mass, stride);
          }
          const bool up = (i & size) == 0, lower = (i & stride) == 0;
          if (lower == up ? pk < key : pk > key) key = pk, mass = pm;
        }
      }
      const uint64_t m = i < n ? mass : 0;
      const uint64_t p = i < n ? (mass_primary ? m : 1) : 0, s = mass_secondary ? m : 0;
      uint64_t ep, es;
      block_exclusive_scan2(p, s, ep, es, sm);
      if (i < n && ep <= t && t < ep + p) {
        sm.found_key = key;
        sm.found_before_p = ep, sm.found_before_s = es, sm.found_p = p, sm.found_s = s;
      }
      __syncthreads();
      c.key = sm.found_key;
      c.before_p += sm.found_before_p, c.before_s += sm.found_before_s;
      c.own_p = sm.found_p, c.own_s = sm.found_s;
      __syncthreads();
      return c;
    }
    // Too many: narrow [lo, hi] by the next 10 bits of the key.
    const uint64_t span = hi - lo;
    const int bits = 64 - __clzll(static_cast<long long>(span));
    const int shift = bits > kDigitBits ? bits - kDigitBits : 0;
    for (int b = threadIdx.x; b < kBuckets; b += kThreads)
      sm.rf.cnt[b] = 0, sm.rf.mass_lo[b] = 0, sm.rf.mass_hi[b] = 0;
    __syncthreads();
    for_bucket(r, mode, b0, [&](int k) {
      Cand cd;
      if (!candidate(r, sm, mode, k, cd) || cd.key < lo || cd.key > hi) return;
      const int d = static_cast<int>((cd.key - lo) >> shift);
      atomicAdd(&sm.rf.cnt[d], 1u);
      if (cd.mass != 0) atomic_add_u64(&sm.rf.mass_lo[d], &sm.rf.mass_hi[d], cd.mass);
      sm.rf.key[d] = cd.key;
    });
    __syncthreads();
    find_crossing(vr, t, sm);
    const int b = sm.cross_b;
    c.before_p += sm.cross_run_p;
    c.before_s += sm.cross_run_s;
    t -= sm.cross_run_p;
    count = vr.cnt[b];
    const uint64_t new_lo = lo + (static_cast<uint64_t>(b) << shift);
    const uint64_t room = hi - new_lo, width = (uint64_t{1} << shift) - 1;
    hi = new_lo + (room < width ? room : width);
    lo = new_lo;
    if (count == 1) {
      c.key = vr.key[b], c.own_p = vr.p(b), c.own_s = vr.s(b);
      __syncthreads();
      return c;
    }
    __syncthreads();
  }
}

// Steps 3-8: the drawn token. row_kernel left z's top, the level-0 histogram and the codes.
__device__ int32_t sample_scaled(Row& r, Smem& sm, const SampleRowParams& p,
                                 const Level0Sampling& g) {
  r.floor_w = min_p_floor(p);
  uint64_t n = 0, m = 0;
  for (int b = threadIdx.x; b < kL0Buckets; b += kThreads) {
    const uint64_t mass = g.mass[b];
    sm.l0.cnt_all[b] = g.cnt_all[b], sm.l0.cnt_surv[b] = g.cnt_surv[b];
    sm.l0.mass_lo[b] = static_cast<uint32_t>(mass), sm.l0.mass_hi[b] = static_cast<uint32_t>(mass >> 32);
    n += g.cnt_all[b];
    m += mass;
  }
  const uint64_t n_unmasked = block_sum_u64(n, sm);  // (its syncs publish sm.l0)
  uint64_t total = block_sum_u64(m, sm);
  if (p.top_k > 0 && static_cast<uint64_t>(p.top_k) < n_unmasked) {
    // Top-k: the survivors up to the k-th unmasked token; their mass is the new total.
    const Crossing c = walk(r, sm, Mode::TopK, static_cast<uint64_t>(p.top_k) - 1);
    total = c.before_s + c.own_s;
  }
  // Top-p and the draw walk over all survivors: every crossing lies at or before the k-th
  // token (its threshold is below the top-k total), where the cumulative masses are the same.
  uint64_t kept = total;
  if (p.top_p < 1.0f) {
    const Crossing c = walk(r, sm, Mode::Mass, top_p_goal(total, p.top_p) - 1);
    kept = c.before_p + c.own_p;
  }
  const uint64_t u24 = philox_word0(p.seed, static_cast<uint64_t>(p.token_index)) >> 8;
  const uint64_t target = ((kept * u24) >> 24) | (__umul64hi(kept, u24) << 40);
  const Crossing c = walk(r, sm, Mode::Mass, target);
  return static_cast<int32_t>(c.key & 0xffffffffu);
}

// The top-N raw logprobs, (logprob desc, id asc), into sm.top_key (keys) and sm.top_n.
__device__ void top_logprobs(Row& r, Smem& sm, int N, const Level0Logprob& g) {
  for (int b = threadIdx.x; b < kL0Buckets; b += kThreads) sm.l0.cnt_all[b] = g.cnt[b];
  __syncthreads();
  const Crossing cr = walk(r, sm, Mode::Logprob, static_cast<uint64_t>(N) - 1);
  if (threadIdx.x == 0) sm.list_n = 0;
  __syncthreads();
  // Exactly N tokens have keys <= the N-th: those of lower buckets and some of its bucket.
  for (int k = threadIdx.x; k < r.V; k += kThreads) {
    if (static_cast<int>(r.codes[k]) > cr.b0) continue;
    Cand c;
    logprob_cand(raw_logprob(r, k), r.lp_top, k, c);
    if (c.key <= cr.key) sm.top_key[atomicAdd(&sm.list_n, 1u)] = c.key;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 1; i < N; ++i)  // insertion sort of <= 20 keys
      for (int j = i; j > 0 && sm.top_key[j - 1] > sm.top_key[j]; --j) {
        const uint64_t t = sm.top_key[j];
        sm.top_key[j] = sm.top_key[j - 1];
        sm.top_key[j - 1] = t;
      }
    sm.top_n = N;
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads, 1)
    sample_kernel(const float* __restrict__ logits, int64_t ld, int32_t V,
                  const SampleRowParams* __restrict__ params, const int32_t* __restrict__ history,
                  Work w, SampleRowResult* __restrict__ results) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);
  const int64_t row = blockIdx.x;
  const SampleRowParams p = params[row];
  const RowStats st = w.stats[row];
  SampleRowResult* out = results + row;
  auto finish = [&](int32_t status, int32_t detail) {
    if (threadIdx.x == 0) {
      out->token = -1, out->logprob = 0.0f, out->status = status, out->detail = detail;
      out->n_top = 0;
    }
  };

  Row r;
  r.x = logits + row * ld;
  r.V = V;
  r.temperature = p.temperature;
  r.repetition = p.repetition_penalty;
  r.frequency = p.frequency_penalty;
  r.presence = p.presence_penalty;
  r.counts = w.counts + row * static_cast<int64_t>(V);
  r.penalties = false;
  r.mx = st.mx;
  r.lse = st.lse;
  r.zmax = st.zmax;

  // Errors, in the CPU sampler's order.
  if (!params_ok(p)) return finish(kSampleBadParams, 0);
  const bool want = p.want_token >= 0;
  if (want && p.want_token >= V) return finish(kSampleBadWantToken, p.want_token);
  if (st.bad != INT32_MAX) return finish(kSampleNonFiniteLogit, st.bad);
  if (!st.any_finite) return finish(kSampleNoFiniteLogit, 0);

  int32_t token = p.want_token;
  if (!want) {
    const int64_t H = p.history_len;
    if (p.n_prompt < 0 || p.n_prompt > H) return finish(kSampleBadHistory, -1);
    const int32_t* h = history + p.history_offset;
    if (threadIdx.x == 0) sm.bad_hist = INT32_MAX;
    __syncthreads();
    int32_t bad = INT32_MAX;
    for (int64_t i = threadIdx.x; i < H; i += kThreads) {
      const int32_t t = h[i];
      if (t < 0 || t >= V) {
        bad = static_cast<int32_t>(i < INT32_MAX ? i : INT32_MAX - 1);
        break;  // i increases: the first bad one of this thread
      }
    }
    if (bad != INT32_MAX) atomicMin(&sm.bad_hist, bad);
    __syncthreads();
    if (sm.bad_hist != INT32_MAX) return finish(kSampleBadHistory, sm.bad_hist);

    r.penalties = penalties_on(p);
    if (p.temperature == 0.0f) {  // Step 2: argmax of the penalised logits, ties → lower id
      token = r.penalties ? st.argmax_pen : st.argmax;
    } else {
      if (r.penalties) {
        const uint32_t* bits = w.bitmap + row * bitmap_words(V);
        for (int i = threadIdx.x; i < (V + 31) / 32; i += kThreads) sm.seen[i] = bits[i];
      }
      r.codes = w.codes_s + row * codes_per_row(V);
      token = sample_scaled(r, sm, p, w.l0s[row]);
    }
  }

  const int N = p.n_logprobs < V ? p.n_logprobs : V;
  if (N > 0) {
    r.lp_top = __fadd_rn(raw_logprob(r, st.argmax), 0.0f);
    r.codes = w.codes_lp + row * codes_per_row(V);
    top_logprobs(r, sm, N, w.l0lp[row]);
  }
  if (threadIdx.x == 0) {
    out->token = token;
    out->logprob = raw_logprob(r, token);
    out->status = kSampleOk;
    out->detail = 0;
    out->n_top = N;
    for (int i = 0; i < N; ++i) {
      const int32_t id = static_cast<int32_t>(sm.top_key[i] & 0xffffffffu);
      out->top_token[i] = id;
      out->top_logprob[i] = raw_logprob(r, id);
    }
  }
}

__global__ void logf_kernel(const float* x, int64_t n, float* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = det_logf(x[i]);
}
__global__ void expf_kernel(const float* x, int64_t n, float* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = det_expf(x[i]);
}

}  // namespace

size_t sample_workspace_bytes(int64_t rows, int32_t V) {
  if (rows <= 0 || V <= 0) return 0;
  return carve(nullptr, nullptr, rows, V);
}

void sample_rows(const float* logits, int64_t ld, int64_t rows, int32_t V,
                 const SampleRowParams* params, const int32_t* history, void* workspace,
                 size_t workspace_bytes, SampleRowResult* results, cudaStream_t stream) {
  DETINFER_CHECK(V >= 1 && V <= kSampleMaxVocab, "GPU sampler: vocabulary of ", V,
                 " tokens is outside [1, ", kSampleMaxVocab, "]");
  DETINFER_CHECK(ld >= V, "GPU sampler: row stride ", ld, " is smaller than the vocabulary ", V);
  DETINFER_CHECK(rows >= 0 && rows <= (int64_t{1} << 24), "GPU sampler: bad row count ", rows);
  if (rows == 0) return;
  DETINFER_CHECK(workspace_bytes >= sample_workspace_bytes(rows, V), "GPU sampler: workspace of ",
                 workspace_bytes, " bytes, ", sample_workspace_bytes(rows, V), " needed");
  Work w;
  carve(&w, workspace, rows, V);
  // Shared memory beyond 48 KiB is opted into once per device.
  constexpr int kMaxDevices = 64;
  static bool attributes_set[kMaxDevices] = {};
  int device = 0;
  ck(cudaGetDevice(&device), "cudaGetDevice");
  const size_t row_smem = sizeof(RowSmem) +
                          static_cast<size_t>((V + kLanes - 1) / kLanes) * kStatThreads * sizeof(float);
  if (device < 0 || device >= kMaxDevices || !attributes_set[device]) {
    ck(cudaFuncSetAttribute(row_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            static_cast<int>(sizeof(RowSmem) + kMaxChunks * kStatThreads * 4)),
       "sampler row kernel shared memory attribute");
    ck(cudaFuncSetAttribute(row_kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                            cudaSharedmemCarveoutMaxShared),
       "sampler row kernel carveout");
    ck(cudaFuncSetAttribute(sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            static_cast<int>(sizeof(Smem))),
       "sampler kernel shared memory attribute");
    if (device >= 0 && device < kMaxDevices) attributes_set[device] = true;
  }
  row_kernel<<<static_cast<unsigned>(rows * kStatBlocks), kStatThreads, row_smem, stream>>>(
      logits, ld, V, params, history, w);
  ck(cudaGetLastError(), "sampler row kernel launch");
  sample_kernel<<<static_cast<unsigned>(rows), kThreads, sizeof(Smem), stream>>>(
      logits, ld, V, params, history, w, results);
  ck(cudaGetLastError(), "sampler kernel launch");
}

void det_logf_n(const float* x, int64_t n, float* y, cudaStream_t stream) {
  if (n <= 0) return;
  logf_kernel<<<1024, 256, 0, stream>>>(x, n, y);
  ck(cudaGetLastError(), "det_logf_n launch");
}
void det_expf_n(const float* x, int64_t n, float* y, cudaStream_t stream) {
  if (n <= 0) return;
  expf_kernel<<<1024, 256, 0, stream>>>(x, n, y);
  ck(cudaGetLastError(), "det_expf_n launch");
}

}  // namespace detinfer::cuda
