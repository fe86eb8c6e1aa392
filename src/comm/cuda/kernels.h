// Internal interface between the all-reduce host code and its CUDA kernels. Plain structs only:
// compiled by both nvcc and the host compiler.
#pragma once
#include <cstdint>

#include "comm/plan.h"
#include "comm/types.h"

namespace detinfer::comm::cuda {

constexpr int kThreads = 512;  // threads per block of the all-reduce kernel

// Byte offsets inside one rank's registered region (one cudaMalloc, shared with the peers).
// Counters are 64-bit and never reset: each channel's count only grows, call after call, so
// no flag needs clearing and a replayed CUDA graph simply continues the sequence.
struct Layout {
  int G = 0, N = 0, R = 0;  // blocks per role, ranks, slots per ring
  int64_t slot_bytes = 0;
  uint64_t d_ready = 0;   // [G][8] data ring: steps rank q has written into my slots
  uint64_t d_credit = 0;  // [G][8] steps rank p has finished reading from its slots I wrote
  uint64_t a_ready = 0;   // [G][8] gather ring (two-shot): reduced chunks rank s wrote to me
  uint64_t a_credit = 0;  // [G][8] gather chunks rank p has copied out of its slots
  uint64_t d_meta = 0;    // [G][8][R] each data slot's call metadata
  uint64_t counters = 0;  // [4][G] my own step counts: push, reduce (data), reduce (gather), gather
  int ll_G = 0;           // low-latency protocol: blocks (line i belongs to block i mod ll_G)
  int64_t ll_lines = 0;   // low-latency protocol: 8-byte payload lines per (parity, source rank)
  uint64_t ll_count = 0;  // [ll_G] low-latency calls made by each block
  uint64_t err = 0;       // uint32: first error of this rank (0 = none)
  uint64_t probe = 0;     // [8] tokens peers wrote at start-up (peer access tested for real)
  uint64_t d_data = 0;    // [G][N][R][slot_bytes]
  uint64_t a_data = 0;    // [G][N][R][slot_bytes]
  uint64_t ll = 0;        // [2][N][ll_G + ll_lines] 16-byte lines {payload, epoch, payload, epoch}
  uint64_t total = 0;
};

// ll_bytes: the largest message the low-latency protocol carries (0: none); ll_G its blocks.
inline Layout make_layout(int G, int N, int R, int64_t slot_bytes, int64_t ll_bytes, int ll_G) {
  Layout l;
  l.G = G;
  l.N = N;
  l.R = R;
  l.slot_bytes = slot_bytes;
  uint64_t off = 0;
  auto take = [&](uint64_t bytes) {
    uint64_t at = off;
    off += (bytes + 255) / 256 * 256;
    return at;
  };
  const uint64_t row = static_cast<uint64_t>(G) * kMaxRanks * 8;
  l.d_ready = take(row);
  l.d_credit = take(row);
  l.a_ready = take(row);
  l.a_credit = take(row);
  l.d_meta = take(row * R);
  l.counters = take(4ull * G * 8);
  l.ll_G = ll_G;
  l.ll_count = take(static_cast<uint64_t>(ll_G) * 8);
  l.err = take(8);
  l.probe = take(kMaxRanks * 8);
  const uint64_t ring = static_cast<uint64_t>(G) * N * R * slot_bytes;
  l.d_data = take(ring);
  l.a_data = take(ring);
  l.ll_lines = (ll_bytes + 7) / 8;
  l.ll = take(2ull * N * (ll_G + l.ll_lines) * 16);
  l.total = off;
  return l;
}

enum ErrorCode : uint32_t { kErrNone = 0, kErrTimeout = 1, kErrMismatch = 2 };
enum Role : int { kRolePush = 0, kRoleReduce = 1, kRoleGather = 2 };

// Written by the first failing kernel thread into pinned host memory, read by check().
struct ErrorInfo {
  uint32_t code;
  int32_t rank, role, block, peer, pad;
  uint64_t step, expected, got;
};

struct KernelArgs {
  uint8_t* base[kMaxRanks];  // every rank's region as mapped in this process (base[me]: mine)
  const void* in;
  void* out;
  Plan plan;
  Layout lay;
  uint64_t meta;
  uint64_t timeout_ns;
  ErrorInfo* host_err;
  int me, nranks;
};

// Launchers (kernels.cu). Return the launch's cudaError_t as int so this header needs no CUDA.
int launch_allreduce(const KernelArgs& a, DataType dtype, Order order, bool vec, void* stream);
// One-shot through the low-latency protocol (messages up to lay.ll_lines * 8 bytes): each 8-byte
// payload travels with the call's epoch in the same 16-byte store, so there is no fence, no flag
// and no credit; two parities of lines make reuse safe (see kernels.cu).
int launch_allreduce_ll(const KernelArgs& a, DataType dtype, Order order, bool vec8, void* stream);
// Local sum for the NCCL-based path: dst[i] = sum over q (q == me ? own[i] : scratch[q*stride+i]).
int launch_local_reduce(const void* own, const void* scratch, int64_t stride, int me, int nranks, int64_t count,
                        void* dst, DataType dtype, Order order, void* stream);
// Writes token into every peer's probe slot [me] (release, system scope).
int launch_probe(const KernelArgs& a, uint64_t token, void* stream);
// Loads every kernel on the current device now (lazy loading inside a spinning kernel's
// lifetime could deadlock virtual ranks) and returns the fewest resident blocks per SM of any
// all-reduce kernel variant (0 on error).
int preload_kernels();

}  // namespace detinfer::comm::cuda
