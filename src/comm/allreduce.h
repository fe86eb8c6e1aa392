// detinfer's deterministic all-reduce (promise I8 of DETERMINISM.md; the tree order of I9).
//
// Every output element is the fp32 sum of the N ranks' inputs for that element, in rank order
// ((x0 + x1) + x2) + ... (or, with Order::Tree, a fixed binary tree over ranks), rounded once to
// the output type. Which algorithm runs (one-shot, two-shot, NCCL-based) and how the message is
// cut up decide only who does each addition, never its order, so an element's bits do not
// depend on the message size, its offset in the message, the algorithm or the rank.
//
// Usage (one process per GPU, as torchrun starts it):
//   auto comm = detinfer::comm::Communicator::create_from_env();
//   comm->all_reduce(d_in, d_out, count, DataType::BF16, stream);   // stream: a cudaStream_t
//
// Contract for all_reduce (violations throw detinfer::Error before anything is launched):
//   - in and out are device memory of this rank's GPU, holding at least count elements;
//   - in == out (in place) or the two ranges do not overlap;
//   - both aligned to the element size; 16-byte alignment takes the vectorised path (same bits);
//   - every rank calls with the same count, dtype, order and algorithm, in the same sequence
//     (a mismatch is caught on the GPU before any data is reduced and reported by check());
//   - calls on one communicator are ordered (one stream, or streams the caller orders).
// Calls may be captured in a CUDA graph: the kernels take no per-call host decision that could
// differ between capture and replay (their sequence numbers live on the device).
// A peer that does not arrive within Options::timeout_ms makes the waiting kernels stop and
// record a timeout; check() / synchronize() then throw. After any recorded error the
// communicator is unusable (its sequence numbers are out of step): destroy it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/types.h"

namespace detinfer::comm {

const char* dtype_name(DataType t);
const char* algo_name(Algo a);
const char* order_name(Order o);
// Accept the names above (case-insensitive; '-' and '_' ignored); throw Error otherwise.
DataType parse_dtype(const std::string& s);
Algo parse_algo(const std::string& s);
Order parse_order(const std::string& s);

struct Options {
  Algo algo = Algo::Auto;          // DETINFER_AR_ALGO: auto|oneshot|twoshot|nccl_det|nccl
  Order order = Order::RankOrder;  // DETINFER_AR_ORDER: rank|tree
  int64_t timeout_ms = 30000;      // DETINFER_AR_TIMEOUT_MS: how long a kernel waits for a peer
  int blocks = 0;                  // DETINFER_AR_BLOCKS: blocks per role; 0 = from occupancy
  int64_t slot_bytes = 0;          // DETINFER_AR_SLOT_KB: ring slot size; 0 = 128 KiB
  int ring_depth = 0;              // DETINFER_AR_RING: slots per ring; 0 = 4
  int64_t two_shot_bytes = -1;     // DETINFER_AR_TWOSHOT_BYTES: auto picks two-shot from this
                                   // message size up; -1 = by world size
  int64_t ll_bytes = -1;           // DETINFER_AR_LL_BYTES: one-shot uses the low-latency protocol
                                   // up to this size; -1 = 256 KiB, 0 = never
  int64_t nccl_scratch_bytes = 0;  // NCCL-based path: larger messages go in pieces; 0 = 64 MiB
  bool p2p = true;                 // DETINFER_AR_P2P=0: no NVLink/P2P kernels (NCCL paths only)
  bool nccl = true;                // DETINFER_AR_NCCL=0: no NCCL communicator
  bool check_pointers = true;      // ask the driver for each pointer's device and allocation size

  // The defaults above, overridden by the environment variables named beside them.
  static Options from_env(Options base);
  static Options from_env() { return from_env(Options{}); }
};

// What torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or Open MPI
// (OMPI_COMM_WORLD_RANK, ..._SIZE, ..._LOCAL_RANK) set. device = LOCAL_RANK modulo the number
// of visible GPUs unless DETINFER_AR_DEVICE says otherwise (more ranks than GPUs: virtual ranks).
struct Bootstrap {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  int device = -1;  // -1: from local_rank
};
// Throws Error naming the missing or malformed variable.
Bootstrap bootstrap_from_env();

class Communicator {
 public:
  // One process driving several GPUs: one communicator per entry of `devices`, rank i on
  // devices[i]. A device may repeat (virtual ranks: world sizes 3, 4, 8 on 2 GPUs). Calls for
  // different ranks may come from one host thread (P2P paths) or one thread per rank (all paths;
  // the NCCL paths need one thread per rank or group_start()/group_end()).
  static std::vector<std::unique_ptr<Communicator>> create_local(const std::vector<int>& devices,
                                                                 const Options& opts = Options::from_env());
  // One process per rank, bootstrapped over TCP through rank 0 at master_addr:master_port.
  static std::unique_ptr<Communicator> create(const Bootstrap& boot, const Options& opts = Options::from_env());
  static std::unique_ptr<Communicator> create_from_env(const Options& opts = Options::from_env());
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  // stream is a cudaStream_t (nullptr: the legacy default stream). count may be 0 (no-op).
  void all_reduce(const void* in, void* out, size_t count, DataType dtype, void* stream,
                  Algo algo = Algo::Auto);
  void all_reduce(const void* in, void* out, size_t count, DataType dtype, Order order, void* stream,
                  Algo algo = Algo::Auto);

  // What a call with Algo::Auto runs for this message (Options::algo / DETINFER_AR_ALGO first,
  // then by size and topology), and why; the debug log prints the same per call.
  Algo select(size_t count, DataType dtype, std::string* why = nullptr) const;
  // Whether an algorithm can run on this communicator; if not, why.
  bool available(Algo a, std::string* why = nullptr) const;
  // Throws the error a kernel recorded (peer timeout, mismatched calls), if any.
  void check() const;
  // Waits for the stream (giving up after the timeout plus a margin), then check().
  void synchronize(void* stream) const;

  int rank() const;
  int world_size() const;
  int device() const;
  // Bytes of device memory this rank registered with its peers (the staging rings).
  size_t registered_bytes() const;
  // One line: ranks, devices, peer access tested, blocks, ring, NCCL.
  std::string describe() const;

  // ncclGroupStart/End when NCCL is linked (no-ops otherwise): lets one thread issue the NCCL
  // paths for several local ranks.
  static void group_start();
  static void group_end();

  struct Impl;

 private:
  explicit Communicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Debug logging of the library: on when DETINFER_LOG=debug or DETINFER_AR_DEBUG=1.
bool debug_log_enabled();
void debug_log(const std::string& line);

}  // namespace detinfer::comm
