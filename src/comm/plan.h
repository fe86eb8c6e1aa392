// How one all-reduce call is cut into chunks, shared by the CUDA kernels and the CPU emulation
// so that both run the same protocol. The cut decides only WHO adds an element, never the ORDER
// of its additions (order.h does that), so any plan gives the same bits.
//
// The message of n elements is split into `slices` slices of L elements (1 slice for one-shot,
// one per rank for two-shot: rank s owns slice s). Each slice is cut into J chunks of C elements;
// chunk j of every slice belongs to block b = j mod G of each role, which handles its chunks in
// k = 0, 1, ... order: that is one ring step per chunk. A block with no chunk still takes one
// (empty) step, so every block synchronises with its peers at least once per call; that step
// also carries the call's metadata, so mismatched calls are caught before any data is reduced.
#pragma once
#include "comm/types.h"

namespace detinfer::comm {

struct Plan {
  int64_t n = 0;   // elements in the message
  int slices = 1;  // 1 (one-shot) or nranks (two-shot)
  int G = 1;       // blocks per role
  int V = 4;       // elements per 16-byte vector
  int64_t L = 0;   // elements per slice, a multiple of V
  int64_t C = 0;   // elements per chunk, a multiple of V, at most a ring slot
  int64_t J = 0;   // chunks per slice

  // Ring steps block b takes in this call (at least 1).
  DETINFER_HD int64_t steps(int b) const { return J > b ? (J - b + G - 1) / G : 1; }
  // Chunk index of block b's step k (>= J for the empty step).
  DETINFER_HD int64_t chunk(int b, int64_t k) const { return b + k * G; }
  // Elements [lo, hi) of chunk j of slice s; lo == hi when the chunk is empty. lo is always a
  // multiple of V, so a 16-byte aligned pointer stays aligned at every chunk start.
  DETINFER_HD void range(int s, int64_t j, int64_t* lo, int64_t* hi) const {
    int64_t slice_lo = static_cast<int64_t>(s) * L;
    int64_t slice_hi = slice_lo + L < n ? slice_lo + L : n;
    int64_t a = slice_lo + j * C;
    int64_t e = a + C < slice_hi ? a + C : slice_hi;
    if (j >= J || a >= e) a = e = 0;
    *lo = a;
    *hi = e;
  }
};

// What every ring step carries so the receiver can check that both ranks make the same call.
DETINFER_HD uint64_t call_meta(int64_t n, DataType dtype, Algo algo, Order order) {
  return (static_cast<uint64_t>(n) << 8) | (static_cast<uint64_t>(dtype) << 4) |
         (static_cast<uint64_t>(algo) << 1) | static_cast<uint64_t>(order);
}

// slot_elems: capacity of one ring slot in elements (a multiple of V).
inline Plan make_plan(int64_t n, int nranks, bool two_shot, int G, int64_t slot_elems, int V) {
  Plan p;
  p.n = n;
  p.slices = two_shot ? nranks : 1;
  p.G = G;
  p.V = V;
  int64_t per_slice = (n + p.slices - 1) / p.slices;
  p.L = (per_slice + V - 1) / V * V;
  if (p.L == 0) p.L = V;
  // Spread a slice over all G blocks, at least one vector and at most one slot per chunk.
  int64_t c = (p.L + G - 1) / G;
  c = (c + V - 1) / V * V;
  if (c > slot_elems) c = slot_elems;
  if (c < V) c = V;
  p.C = c;
  p.J = (p.L + c - 1) / c;
  return p;
}

}  // namespace detinfer::comm
