// CPU emulation of the all-reduce algorithms, threads as ranks. It runs the same protocol as the
// CUDA kernels (plan.h's chunks, rings of slots, ready/credit counters, the metadata check) with
// one thread per (rank, role, block), so CI checks the protocol and the summation order of every
// algorithm against the sequential reference without a GPU. It is also what the GPU tests use as
// their reference (reference()).
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/types.h"

namespace detinfer::comm::emu {

// One element as fp32 / one fp32 rounded (nearest even) into the type, as the GPU does it.
float load_elem(DataType t, const void* base, int64_t i);
void store_elem(DataType t, void* base, int64_t i, float v);

// The definition of the result: out[i] = round(reduce_values(order, in[0][i] .. in[N-1][i])).
void reference(Order order, DataType dtype, const std::vector<const void*>& in, void* out, int64_t count);

// A model of NCCL's ring all-reduce (reduce-scatter then all-gather over a ring, the message
// cut into N chunks, each chunk's sum starting at a different rank and rounded to the data type
// at every hop). Not used for results: it shows why NCCL's bits depend on the message size.
void ring_model(DataType dtype, const std::vector<const void*>& in, void* out, int64_t count);

struct Config {
  int blocks = 2;            // blocks per role
  int ring_depth = 2;        // slots per ring
  int64_t slot_bytes = 256;  // bytes per slot (a multiple of 16)
  int64_t timeout_ms = 20000;
  int64_t ll_bytes = 0;      // one-shot messages up to this size use the low-latency protocol
};

// One call of a sequence: every rank's input, output and count.
struct CallSpec {
  Algo algo = Algo::OneShot;
  Order order = Order::RankOrder;
  DataType dtype = DataType::F32;
  std::vector<const void*> in;
  std::vector<void*> out;
  std::vector<int64_t> counts;
};

// Error codes, as the kernels report them.
enum ErrorCode : int { kOk = 0, kTimeout = 1, kMismatch = 2 };

// An emulated world of N ranks. Its counters persist from call to call like the GPU
// communicator's, so a sequence of calls exercises ring wrap-around and reuse.
class World {
 public:
  World(int nranks, const Config& cfg);
  ~World();
  int nranks() const { return n_; }

  // Every rank r reduces in[r] into out[r] (in[r] == out[r]: in place). OneShot, TwoShot or
  // NcclDet. counts[r] may differ to test the mismatch check; returns each rank's error code.
  std::vector<int> all_reduce(Algo algo, Order order, DataType dtype, const std::vector<const void*>& in,
                              const std::vector<void*>& out, const std::vector<int64_t>& counts);
  // Same count on every rank; throws Error if any rank reports an error.
  void all_reduce(Algo algo, Order order, DataType dtype, const std::vector<const void*>& in,
                  const std::vector<void*>& out, int64_t count);
  // A sequence of one-shot / two-shot calls issued back to back, as a GPU stream runs them: a
  // rank's next call starts when all of its threads finished the previous one (the kernel
  // boundary), while other ranks may still be in earlier calls. Returns each rank's error code.
  std::vector<int> run(const std::vector<CallSpec>& calls);

  struct Rank;

 private:
  int n_;
  Config cfg_;
  std::vector<std::unique_ptr<Rank>> ranks_;
};

}  // namespace detinfer::comm::emu
