// Internal interface of the tensor-core paged attention (attention.cu): a bf16 paged KV cache, a
// host planner that turns a step's tokens into a work list, and one launch call. Plain pointers to
// device memory, enqueued on the given stream, throwing Error on a bad argument or a failed launch.
//
// What a row's bits depend on: a row is one (token, query head). Its output depends only on its
// position and on the q/k/v contents of its sequence: never on the number of tokens in the step,
// the rest of the batch, how the prompt was chunked, where the blocks are, the block size, the
// grid, or which of the two split-merge paths (in registers or through the workspace) ran.
// attention.cu documents the order of the arithmetic.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

namespace detinfer::cuda {

// Keys are reduced in tiles of this many positions aligned to absolute positions ([0,64), ...).
constexpr int kAttnKeyTile = 64;
// The KV range of a row is cut into splits of a fixed number of keys (a multiple of the tile),
// reduced independently and merged in increasing order. Changing it changes bits (every path
// alike): it is part of the numerical contract, not a tuning knob chosen from the load.
constexpr int kAttnDefaultSplit = 512;
// head_dim (even) up to this runs on the tensor cores (zero-padded to a multiple of 16 inside the
// kernel); above it, up to kAttnPagedMaxHeadDim, a warp-per-row kernel with its own fixed order.
constexpr int kAttnTensorCoreMaxHeadDim = 256;
constexpr int kAttnPagedMaxHeadDim = 512;

// Tests and benchmarks: the split size the next plans use (a positive multiple of kAttnKeyTile;
// default kAttnDefaultSplit). A plan records the size it was made with.
void set_attention_split(int keys);
int attention_split();
// Decode CTAs of head_dim 128 reduce four tiles at a time (the same bits as one at a time) where
// the grid is at most one CTA per SM; false: always one at a time (tests and timing).
void set_attention_tiles_in_parallel(bool enabled);
int64_t attention_tiles_in_parallel_launches();  // launches so far (tests)

// One layer's cache as bf16 bits (round to nearest even from fp32):
// k/v[num_blocks][block_size][n_kv_heads][head_dim]. Row (n_kv_heads*head_dim values) of token t
// goes to cache slot slots[t] (= block * block_size + pos % block_size), as kv_write in launch.h.
void kv_write_bf16(uint16_t* k_cache, uint16_t* v_cache, const float* k, const float* v, int64_t T,
                   int64_t row, const int32_t* slots, cudaStream_t stream);

// How a row's splits are merged. Every choice gives the same bits; kAuto is the fast one.
enum class AttentionSchedule {
  kAuto,   // single-token rows (decode) with several splits: one CTA per split + merge kernel;
           // the rest: one CTA loops over its splits and merges in registers
  kFused,  // every CTA loops over its splits (no workspace)
  kSplit,  // every CTA does one split, partials merged by the merge kernel
};

// The work list of one step, made on the host from the same pos/seq arrays that are uploaded.
// `work` is uploaded as is; the counts size the grids (two steps whose plans have equal counts
// and head_dim launch the same grids, so a CUDA graph of one replays the other).
struct AttentionPlan {
  std::vector<int32_t> work;  // [n_small + n_large] items, then [n_merge] merge records
  int32_t n_small = 0;        // items of <= 16 rows (four warps sharing the rows per CTA)
  int32_t n_large = 0;        // items of 17..64 rows (four warps per CTA)
  int32_t n_merge = 0;        // rows merged from partials
  int64_t n_simple = 0;       // head_dim > 256: rows of the warp kernel (T * n_heads)
  int64_t workspace_floats = 0;  // partials * (head_dim + 2); the workspace holds at least this
  int32_t split = 0;          // keys per split
  bool one_token_per_sequence = false;  // no two of the step's tokens share a sequence (decode)
  int64_t T = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
};
constexpr int kAttnRecordInts = 8;  // int32 per item and per merge record

// pos[T], seq[T]: the step's tokens (a sequence's tokens are normally consecutive; runs of equal
// seq are planned separately, so any order works). Throws Error on bad shapes or positions.
AttentionPlan plan_attention(const int32_t* pos, const int32_t* seq, int64_t T, int n_heads,
                             int n_kv_heads, int head_dim,
                             AttentionSchedule schedule = AttentionSchedule::kAuto);

// RoPE of q and k and the cache write of this step's k/v rows, done by attention_paged itself
// (rope_kv_write's arithmetic and rounding, so the same bits): q and k arrive unrotated and leave
// rotated, as after rope_kv_write. `q` and `k_cache`/`v_cache` are PagedAttentionArgs's q and
// caches; k and v are the step's fp32 rows [T, n_kv_heads, head_dim]; cos/sin the tables
// [position][head_dim / 2]; slots[T] the cache slots of the step's rows. Decode steps at small
// batch run it inside the four-tiles kernel (attention_fuses_rope); any other step runs
// rope_kv_write first, then the attention.
struct RopeInAttention {
  float* q = nullptr;  // null: no RoPE here (q rotated and the rows written before the call)
  float* k = nullptr;
  const float* v = nullptr;
  const float* cos = nullptr;
  const float* sin = nullptr;
  const int32_t* slots = nullptr;
  uint16_t* k_cache = nullptr;
  uint16_t* v_cache = nullptr;
};
struct PagedAttentionArgs {
  const float* q = nullptr;           // [T, n_heads, head_dim], after RoPE; rounded to bf16 here
  float* out = nullptr;               // [T, n_heads, head_dim]
  const uint16_t* k_cache = nullptr;  // the layer's bf16 cache (kv_write_bf16 wrote this step's
  const uint16_t* v_cache = nullptr;  // rows before this call, or `rope` below writes them)
  const int32_t* pos = nullptr;        // [T] device copies of the arrays the plan was made from
  const int32_t* table_off = nullptr;  // [T]: where token t's block table starts in `tables`
  const int32_t* tables = nullptr;     // flattened block tables
  int block_size = 0;
  float scale = 0;  // scores are (q·k) * scale, one rounding
  // Optional bf16 copy of out (the next GEMM's input): when not null, output (t, h, d) is also
  // written as the bf16 bits of the final fp32 value (round to nearest even) at
  // out_bf16[t * out_bf16_ld + h * head_dim + d]; out_bf16_ld >= n_heads * head_dim, a multiple
  // of 8; out_bf16 4-byte aligned; columns past n_heads * head_dim are not written.
  uint16_t* out_bf16 = nullptr;
  int64_t out_bf16_ld = 0;
  RopeInAttention rope;  // optional (rope.q null: none)
};
// Whether attention_paged runs `rope` inside the attention kernels for this plan (one token per
// sequence, head_dim 128, all items in the four-tiles kernel; with 16-byte aligned caches).
bool attention_fuses_rope(const AttentionPlan& plan);
// Tests and timing: false makes attention_paged run rope_kv_write first for every plan.
void set_attention_rope_fusion(bool enabled);
int64_t attention_rope_launches();  // launches of the kernel with RoPE inside so far (tests)

// out = causal softmax(q·kᵀ·scale)·v for every token of the plan. work: the device copy of
// plan.work; workspace: at least plan.workspace_floats floats (may be null when that is 0).
// q, out 8-byte aligned; caches 16-byte aligned for the vector loads (else 4-byte loads).
void attention_paged(const PagedAttentionArgs& a, const AttentionPlan& plan, const int32_t* work,
                     float* workspace, cudaStream_t stream);

}  // namespace detinfer::cuda
