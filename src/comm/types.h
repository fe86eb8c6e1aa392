// Types shared by the all-reduce library's host code, its CUDA kernels and its CPU emulation.
// Kept free of CUDA and of the rest of detinfer so the kernels can include it.
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define DETINFER_HD __host__ __device__ __forceinline__
#else
#define DETINFER_HD inline
#endif
#if defined(__CUDA_ARCH__)
#define DETINFER_UNROLL _Pragma("unroll")
#else
#define DETINFER_UNROLL
#endif

namespace detinfer::comm {

// World sizes up to 8 (virtual ranks included): the kernels keep one value per rank in registers.
constexpr int kMaxRanks = 8;

enum class DataType : int { F32 = 0, BF16 = 1, F16 = 2 };

// OneShot: every rank sums all N inputs. TwoShot: reduce-scatter (slice owner sums in rank
// order) + all-gather. NcclDet: the two-shot order built from NCCL send/recv + all-gather.
// Nccl: plain ncclAllReduce, fast and NOT deterministic across sizes (the baseline).
enum class Algo : int { Auto = 0, OneShot = 1, TwoShot = 2, NcclDet = 3, Nccl = 4 };

// RankOrder: ((x0 + x1) + x2) + ... + x(N-1) in fp32, rounded once (the `batch` mode).
// Tree: a fixed binary tree over ranks, pairs (0,1),(2,3),... then up, in fp32 (the `tp` mode).
enum class Order : int { RankOrder = 0, Tree = 1 };

DETINFER_HD int dtype_bytes(DataType t) { return t == DataType::F32 ? 4 : 2; }

}  // namespace detinfer::comm
