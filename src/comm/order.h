// The canonical per-element reduction: the only place that decides the order of additions.
// Every algorithm (one-shot, two-shot, NCCL-based, the CPU emulation and the test references)
// calls reduce_values, so one element's bits depend on its N inputs alone.
#pragma once
#include "comm/types.h"

namespace detinfer::comm {

// Sums v[0..n) in fp32 in the order O; v is clobbered. n in [1, kMaxRanks]. Loops run to the
// compile-time bound with a guard, so an unrolled device loop keeps v in registers.
template <Order O>
DETINFER_HD float reduce_values(float (&v)[kMaxRanks], int n) {
  if constexpr (O == Order::RankOrder) {
    float acc = v[0];
    DETINFER_UNROLL
    for (int q = 1; q < kMaxRanks; ++q)
      if (q < n) acc = acc + v[q];
    return acc;
  } else {
    // Level by level: stride 1 adds pairs (0,1),(2,3)..; stride 2 adds (01,23),..; an element
    // without a partner at a level is carried up unchanged.
    DETINFER_UNROLL
    for (int s = 1; s < kMaxRanks; s *= 2) {
      DETINFER_UNROLL
      for (int i = 0; i < kMaxRanks; i += 2 * s)
        if (i + s < n) v[i] = v[i] + v[i + s];
    }
    return v[0];
  }
}

DETINFER_HD float reduce_values(Order o, float (&v)[kMaxRanks], int n) {
  return o == Order::RankOrder ? reduce_values<Order::RankOrder>(v, n)
                               : reduce_values<Order::Tree>(v, n);
}

}  // namespace detinfer::comm
