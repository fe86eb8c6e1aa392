// Host side of the deterministic all-reduce: creating communicators (one process driving all
// GPUs, or one process per GPU bootstrapped over TCP), testing peer access for real, choosing
// the algorithm, validating every call before anything is launched, and the NCCL paths.
#include <cuda.h>
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>

#ifdef DETINFER_HAVE_NCCL
#include <nccl.h>
#endif

#include "comm/allreduce.h"
#include "comm/cuda/kernels.h"
#include "comm/store.h"
#include "common/error.h"

namespace detinfer::comm {
using cuda::ErrorInfo;
using cuda::KernelArgs;
using cuda::Layout;

namespace {

// Defaults from the sweeps on 2 and 4 x H200 (docs/ALLREDUCE.md): bigger slots amortise the one
// fence per ring step; 40 blocks per role keep NVLink busy while three roles still fit on 132
// SMs (at 3+ ranks, 64 blocks of 64 KiB slots, 8 deep, move the most: two-shot's all-gather
// reads from more peers at once). The low-latency protocol's 16-byte lines carry 8 payload bytes, so it loses on bandwidth
// above a size that shrinks with the number of peers each rank reads: 256 KiB at 2 ranks, 64 KiB
// at 4. Two-shot overtakes one-shot from 64 MiB at 2 ranks and from 1 MiB at 4.
constexpr int kDefaultBlocks = 40, kDefaultBlocksManyRanks = 64;
constexpr int64_t kDefaultSlotBytes = 128 << 10, kDefaultSlotBytesManyRanks = 64 << 10;
constexpr int kDefaultRing = 4, kDefaultRingManyRanks = 8;
constexpr int64_t kDefaultNcclScratch = 64ll << 20;
constexpr int64_t kDefaultLLBytesTwoRanks = 256 << 10;
constexpr int64_t kDefaultLLBytesManyRanks = 64 << 10;
constexpr int64_t kTwoShotBytesTwoRanks = 64ll << 20;
constexpr int64_t kTwoShotBytesManyRanks = 1 << 20;

int64_t ll_bytes_of(const Options& o, int N) {
  return o.ll_bytes >= 0 ? o.ll_bytes : (N <= 2 ? kDefaultLLBytesTwoRanks : kDefaultLLBytesManyRanks);
}
// The low-latency kernel has one role, so it may use the residency of all three ring roles.
int ll_blocks(int G) { return std::min(3 * G, 128); }

void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("all-reduce: ", what, " failed: ", cudaGetErrorString(e));
}
#define AR_CUDA(x) cuda_ok((x), #x)

#ifdef DETINFER_HAVE_NCCL
void nccl_ok_or_throw(ncclResult_t r, const char* what) {
  if (r != ncclSuccess && r != ncclInProgress)
    fail("all-reduce: ", what, " failed: ", ncclGetErrorString(r), " (", ncclGetLastError(nullptr), ")");
}
#define AR_NCCL(x) nccl_ok_or_throw((x), #x)
ncclDataType_t nccl_type(DataType t) {
  return t == DataType::F32 ? ncclFloat32 : t == DataType::BF16 ? ncclBfloat16 : ncclFloat16;
}
#endif

struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int d) {
    cudaGetDevice(&prev);
    if (prev != d) cudaSetDevice(d);
  }
  ~DeviceGuard() {
    int cur = -1;
    cudaGetDevice(&cur);
    if (prev >= 0 && cur != prev) cudaSetDevice(prev);
  }
};

std::string bytes_str(int64_t b) {
  if (b >= (1ll << 20) && b % (1ll << 20) == 0) return cat(b >> 20, " MiB");
  if (b >= 1024 && b % 1024 == 0) return cat(b >> 10, " KiB");
  return cat(b, " B");
}

const char* role_name(int r) { return r == cuda::kRolePush ? "push" : r == cuda::kRoleReduce ? "reduce" : "gather"; }

std::string meta_str(uint64_t m) {
  return cat("count=", m >> 8, " dtype=", dtype_name(static_cast<DataType>((m >> 4) & 15)),
             " algo=", algo_name(static_cast<Algo>((m >> 1) & 7)), " order=", order_name(static_cast<Order>(m & 1)));
}

// The identity of a host: NCCL_HOSTID when set (as NCCL does), else host name + boot id.
uint64_t host_hash() {
  std::string id;
  if (const char* h = std::getenv("NCCL_HOSTID"); h && *h) id = h;
  else {
    char name[256] = {};
    gethostname(name, sizeof(name) - 1);
    id = name;
    std::ifstream boot("/proc/sys/kernel/random/boot_id");
    std::string b;
    if (boot >> b) id += b;
  }
  return std::hash<std::string>{}(id);
}

struct DeviceFacts {
  int sms = 0;
  int blocks_per_sm = 0;
  char bus_id[32] = {};
};

DeviceFacts device_facts(int dev) {
  DeviceGuard g(dev);
  DeviceFacts f;
  AR_CUDA(cudaDeviceGetAttribute(&f.sms, cudaDevAttrMultiProcessorCount, dev));
  f.blocks_per_sm = cuda::preload_kernels();
  DETINFER_CHECK(f.blocks_per_sm > 0, "all-reduce: cannot load the kernels on GPU ", dev, ": ",
                 cudaGetErrorString(cudaGetLastError()));
  AR_CUDA(cudaDeviceGetPCIBusId(f.bus_id, sizeof(f.bus_id) - 1, dev));
  return f;
}

// Blocks per role such that every rank's grid (3 roles) on a GPU fits at once: ranks on one GPU
// wait for each other inside their kernels, so they must all be resident together.
int blocks_for(const Options& o, const DeviceFacts& f, int ranks_on_device, int N) {
  int want = o.blocks > 0 ? o.blocks : (N <= 2 ? kDefaultBlocks : kDefaultBlocksManyRanks);
  int fit = f.sms * f.blocks_per_sm / (3 * ranks_on_device);
  DETINFER_CHECK(fit >= 1, "all-reduce: ", ranks_on_device, " ranks on one GPU cannot all be resident (",
                 f.sms * f.blocks_per_sm, " blocks fit); use fewer virtual ranks per GPU");
  return std::min(want, fit);
}

// Shared by the communicators of one create_local() call: the regions live until the last one
// goes, so a rank destroyed early never leaves a peer writing into freed memory.
struct LocalGroup {
  std::vector<int> devices;
  std::vector<uint8_t*> regions;
  ~LocalGroup() {
    for (size_t r = 0; r < regions.size(); ++r)
      if (regions[r]) {
        DeviceGuard g(devices[r]);
        cudaFree(regions[r]);
      }
  }
};

}  // namespace

struct Communicator::Impl {
  int rank = 0, N = 1, device = 0;
  Options opts;
  Layout lay;
  int G = 1;
  uint8_t* region = nullptr;  // mine (owned here in multi-process mode, by the group otherwise)
  uint8_t* peer[kMaxRanks] = {};
  ErrorInfo* host_err = nullptr;
  bool p2p_ok = false, nccl_ok = false;
  std::string p2p_why = "not set up", nccl_why = "not set up";
  int ranks_on_device = 1;
  std::shared_ptr<LocalGroup> group;
  std::shared_ptr<StoreServer> server;
  std::shared_ptr<StoreClient> store;
  std::string key;  // store key prefix of this communicator
  std::vector<void*> ipc_opened;
  uint8_t* scratch = nullptr;
  int64_t scratch_bytes = 0;
#ifdef DETINFER_HAVE_NCCL
  ncclComm_t nccl = nullptr;
#endif
  mutable std::mutex ptr_mu;
  mutable std::vector<std::pair<uintptr_t, uintptr_t>> ptr_cache;  // known device allocations
  mutable bool env_fallback_warned = false;

  ~Impl() {
    DeviceGuard g(device);
#ifdef DETINFER_HAVE_NCCL
    if (nccl) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(nccl, &async);
      if (async != ncclSuccess || (host_err && host_err->code)) ncclCommAbort(nccl);
      else ncclCommDestroy(nccl);
    }
#endif
    if (scratch) cudaFree(scratch);
    if (store) {
      // Peers may still be reading our region: close mappings and free only after all are done.
      try {
        store->barrier(key + "fini1", N, 10000);
      } catch (const Error&) {
      }
      for (void* p : ipc_opened) cudaIpcCloseMemHandle(p);
      try {
        store->barrier(key + "fini2", N, 10000);
        if (server) {
          store->add(key + "fini3", 1);
          for (int i = 0; i < 500 && store->add(key + "fini3", 0) < N; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        } else {
          store->add(key + "fini3", 1);
        }
      } catch (const Error&) {
      }
      if (region) cudaFree(region);
    }
    if (host_err) cudaFreeHost(host_err);
  }

  void alloc_host_err() {
    AR_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&host_err), sizeof(ErrorInfo),
                          cudaHostAllocMapped | cudaHostAllocPortable));
    std::memset(host_err, 0, sizeof(ErrorInfo));
  }

  void alloc_scratch() {
    scratch_bytes = opts.nccl_scratch_bytes > 0 ? opts.nccl_scratch_bytes : kDefaultNcclScratch;
    AR_CUDA(cudaMalloc(&scratch, scratch_bytes));
  }

  KernelArgs base_args() const {
    KernelArgs a{};
    for (int q = 0; q < N; ++q) a.base[q] = peer[q];
    a.lay = lay;
    a.me = rank;
    a.nranks = N;
    a.timeout_ns = static_cast<uint64_t>(opts.timeout_ms) * 1000000ull;
    a.host_err = host_err;  // mapped: the same address on the device (unified addressing)
    return a;
  }

  uint64_t probe_token(int r) const { return (0xD37ull << 48) | (static_cast<uint64_t>(lay.total & 0xffffff) << 8) | (r + 1); }

  // Reads my probe slots after every peer wrote its token: true if all arrived.
  bool probe_arrived(std::string* why) const {
    uint64_t got[kMaxRanks] = {};
    AR_CUDA(cudaMemcpy(got, region + lay.probe, sizeof(got), cudaMemcpyDeviceToHost));
    for (int q = 0; q < N; ++q)
      if (got[q] != probe_token(q)) {
        *why = cat("peer-access probe: rank ", q, "'s write into rank ", rank, "'s buffer did not arrive");
        return false;
      }
    return true;
  }

  void throw_if_error() const {
    if (!host_err) return;
    uint32_t code = *reinterpret_cast<volatile uint32_t*>(&host_err->code);
    if (code == cuda::kErrNone) return;
    const ErrorInfo& e = *host_err;
    if (code == cuda::kErrTimeout)
      fail("all-reduce on rank ", e.rank, " timed out: the ", role_name(e.role), " role (block ", e.block, ") waited more than ",
           opts.timeout_ms, " ms for rank ", e.peer, " (ring step ", e.step, ": needed its counter to reach ", e.expected,
           ", it was ", e.got, "). A rank did not arrive: it crashed, hangs, or made a different sequence of all-reduce "
           "calls. This communicator is unusable now; destroy it.");
    if (code == cuda::kErrMismatch)
      fail("all-reduce on rank ", e.rank, ": mismatched calls across ranks: rank ", e.peer, " called with ", meta_str(e.got),
           ", this rank with ", meta_str(e.expected), ". Nothing was reduced; the communicator is unusable now.");
    fail("all-reduce on rank ", e.rank, ": the kernel reported error code ", code);
  }

  void check_pointer(const void* p, size_t bytes, const char* name) const {
    const uintptr_t lo = reinterpret_cast<uintptr_t>(p), hi = lo + bytes;
    {
      std::lock_guard<std::mutex> lock(ptr_mu);
      for (auto& r : ptr_cache)
        if (lo >= r.first && hi <= r.second) return;
    }
    cudaPointerAttributes at{};
    if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
      cudaGetLastError();
      fail("all_reduce: ", name, " (", p, ") is not a pointer CUDA knows");
    }
    DETINFER_CHECK(at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged, "all_reduce: ", name, " (", p,
                   ") is host memory; pass device memory of GPU ", device);
    DETINFER_CHECK(at.type != cudaMemoryTypeDevice || at.device == device, "all_reduce: ", name, " (", p,
                   ") lives on GPU ", at.device, " but rank ", rank, " runs on GPU ", device);
    CUdeviceptr base = 0;
    size_t size = 0;
    if (cuMemGetAddressRange(&base, &size, static_cast<CUdeviceptr>(lo)) == CUDA_SUCCESS) {
      DETINFER_CHECK(hi <= base + size, "all_reduce: buffer too small: ", name, " has ", base + size - lo,
                     " bytes from ", p, " to the end of its allocation, the call needs ", bytes);
      std::lock_guard<std::mutex> lock(ptr_mu);
      if (ptr_cache.size() >= 16) ptr_cache.erase(ptr_cache.begin());
      ptr_cache.emplace_back(base, base + size);
    }
  }

  bool available(Algo a, std::string* why) const {
    std::string none;
    std::string& w = why ? *why : none;
    switch (a) {
      case Algo::Auto:
        if (p2p_ok || nccl_ok || N == 1) return true;
        w = cat("no deterministic path: P2P kernels: ", p2p_why, "; NCCL: ", nccl_why);
        return false;
      case Algo::OneShot:
      case Algo::TwoShot:
        if (p2p_ok || N == 1) return true;
        w = cat("P2P kernels unavailable: ", p2p_why);
        return false;
      case Algo::NcclDet:
      case Algo::Nccl:
        if (nccl_ok || N == 1) return true;
        w = cat("NCCL unavailable: ", nccl_why);
        return false;
    }
    w = "unknown algorithm";
    return false;
  }

  // why (may be null: building the string costs more than the rest of a small call)
  Algo select(size_t count, DataType dtype, std::string* why) const {
    const int64_t bytes = static_cast<int64_t>(count) * dtype_bytes(dtype);
    if (N == 1) {
      if (why) *why = "world size 1: a copy";
      return Algo::OneShot;
    }
    if (p2p_ok) {
      int64_t thr = opts.two_shot_bytes >= 0 ? opts.two_shot_bytes : (N <= 2 ? kTwoShotBytesTwoRanks : kTwoShotBytesManyRanks);
      if (bytes >= thr) {
        if (why) *why = cat(bytes_str(bytes), " >= two-shot threshold ", bytes_str(thr));
        return Algo::TwoShot;
      }
      if (why)
        *why = cat(bytes_str(bytes), " < two-shot threshold ", bytes_str(thr),
                   bytes <= static_cast<int64_t>(lay.ll_lines) * 8 ? ", low-latency protocol" : ", ring protocol");
      return Algo::OneShot;
    }
    if (nccl_ok) {
      if (why) *why = cat("P2P kernels unavailable (", p2p_why, ")");
      return Algo::NcclDet;
    }
    fail("all-reduce: no deterministic path: P2P kernels: ", p2p_why, "; NCCL: ", nccl_why);
  }

  Algo resolve(Algo requested, size_t count, DataType dtype, std::string* why) const {
    std::string reason;
    if (requested != Algo::Auto) {
      if (!available(requested, &reason))
        fail("all_reduce: algorithm ", algo_name(requested), " requested by the caller cannot run: ", reason);
      if (why) *why = "requested by the caller";
      return requested;
    }
    if (opts.algo != Algo::Auto) {
      if (available(opts.algo, &reason)) {
        if (why) *why = "forced by DETINFER_AR_ALGO / Options::algo";
        return opts.algo;
      }
      if (!env_fallback_warned) {
        env_fallback_warned = true;
        debug_log(cat("rank ", rank, ": DETINFER_AR_ALGO=", algo_name(opts.algo), " cannot run (", reason,
                      "); choosing automatically"));
      }
    }
    return select(count, dtype, why);
  }

  void run_p2p(const void* in, void* out, size_t count, DataType dtype, Order order, Algo algo, void* stream) {
    const int es = dtype_bytes(dtype);
    KernelArgs a = base_args();
    a.in = in;
    a.out = out;
    a.plan = make_plan(static_cast<int64_t>(count), N, algo == Algo::TwoShot, G, lay.slot_bytes / es, 16 / es);
    a.meta = call_meta(static_cast<int64_t>(count), dtype, algo, order);
    int rc;
    if (algo == Algo::OneShot && static_cast<int64_t>(count) * es <= lay.ll_lines * 8) {
      const bool vec8 = reinterpret_cast<uintptr_t>(in) % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0;
      rc = cuda::launch_allreduce_ll(a, dtype, order, vec8, stream);
    } else {
      const bool vec = reinterpret_cast<uintptr_t>(in) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
      rc = cuda::launch_allreduce(a, dtype, order, vec, stream);
    }
    cuda_ok(static_cast<cudaError_t>(rc), "launching the all-reduce kernel");
  }

#ifdef DETINFER_HAVE_NCCL
  // Runs the NCCL paths once at creation so NCCL sets up its connections now: done lazily,
  // inside a CUDA graph capture, that setup fails ("operation not permitted when capturing").
  void warm_nccl() {
    DeviceGuard g(device);
    cudaStream_t s;
    AR_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    const size_t n = 1 << 20;  // 4 MiB of fp32: large enough to use every channel
    void* buf = nullptr;
    AR_CUDA(cudaMalloc(&buf, n * 4));
    AR_CUDA(cudaMemsetAsync(buf, 0, n * 4, s));
    run_nccl_det(buf, buf, n, DataType::F32, Order::RankOrder, s);
    AR_NCCL(ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, nccl, s));
    AR_CUDA(cudaStreamSynchronize(s));
    cudaFree(buf);
    cudaStreamDestroy(s);
  }

  // The two-shot order from NCCL primitives: each rank receives its slice from every peer
  // (send/recv), sums it in rank order locally, then all-gathers the sums. Same bits as the P2P
  // kernels; works across nodes. Messages beyond the scratch go through in pieces.
  void run_nccl_det(const void* in, void* out, size_t count, DataType dtype, Order order, void* stream) {
    const int es = dtype_bytes(dtype), V = 16 / es;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    const ncclDataType_t t = nccl_type(dtype);
    const int64_t max_slice = (scratch_bytes / (2 * N * es)) / V * V;
    DETINFER_CHECK(max_slice >= V, "all-reduce: NCCL scratch of ", scratch_bytes, " bytes is too small");
    uint8_t* recv = scratch;
    uint8_t* gath = scratch + static_cast<size_t>(N) * max_slice * es;
    const int64_t n = static_cast<int64_t>(count);
    for (int64_t off = 0; off < n;) {
      const int64_t m = std::min<int64_t>(n - off, static_cast<int64_t>(N) * max_slice);
      const int64_t L = ((m + N - 1) / N + V - 1) / V * V;
      auto len = [&](int p) { return std::clamp<int64_t>(m - p * L, 0, L); };
      const uint8_t* src = static_cast<const uint8_t*>(in) + off * es;
      uint8_t* dst = static_cast<uint8_t*>(out) + off * es;
      AR_NCCL(ncclGroupStart());
      for (int p = 0; p < N; ++p) {
        if (p == rank) continue;
        if (len(p) > 0) AR_NCCL(ncclSend(src + p * L * es, len(p), t, p, nccl, s));
        if (len(rank) > 0) AR_NCCL(ncclRecv(recv + p * L * es, len(rank), t, p, nccl, s));
      }
      AR_NCCL(ncclGroupEnd());
      // Sum straight into the output when the slices tile it exactly; else into scratch.
      const bool direct = L * N == m && reinterpret_cast<uintptr_t>(dst) % 16 == 0;
      uint8_t* sums = direct ? dst : gath;
      int rc = cuda::launch_local_reduce(src + rank * L * es, recv, L, rank, N, len(rank), sums + rank * L * es, dtype,
                                         order, stream);
      cuda_ok(static_cast<cudaError_t>(rc), "launching the NCCL-path local reduction");
      AR_NCCL(ncclAllGather(sums + rank * L * es, sums, L, t, nccl, s));
      if (!direct) AR_CUDA(cudaMemcpyAsync(dst, gath, m * es, cudaMemcpyDeviceToDevice, s));
      off += m;
    }
  }
#endif
};

Communicator::Communicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Communicator::~Communicator() = default;

std::vector<std::unique_ptr<Communicator>> Communicator::create_local(const std::vector<int>& devices,
                                                                      const Options& opts) {
  const int N = static_cast<int>(devices.size());
  DETINFER_CHECK(N >= 1 && N <= kMaxRanks, "all-reduce: world size ", N, " outside [1, ", kMaxRanks, "]");
  DETINFER_CHECK(opts.timeout_ms >= 1, "all-reduce: timeout_ms must be positive");
  int ndev = 0;
  AR_CUDA(cudaGetDeviceCount(&ndev));
  for (int d : devices) DETINFER_CHECK(d >= 0 && d < ndev, "all-reduce: GPU ", d, " does not exist (", ndev, " visible)");

  auto group = std::make_shared<LocalGroup>();
  group->devices = devices;
  group->regions.assign(N, nullptr);
  int G = INT32_MAX;
  std::vector<int> rod(N, 0);
  for (int r = 0; r < N; ++r)
    for (int q = 0; q < N; ++q) rod[r] += devices[q] == devices[r];
  for (int r = 0; r < N; ++r) G = std::min(G, blocks_for(opts, device_facts(devices[r]), rod[r], N));
  const int R = opts.ring_depth > 0 ? opts.ring_depth : (N <= 2 ? kDefaultRing : kDefaultRingManyRanks);
  const int64_t slot = opts.slot_bytes > 0 ? (opts.slot_bytes + 15) / 16 * 16
                                           : (N <= 2 ? kDefaultSlotBytes : kDefaultSlotBytesManyRanks);
  const Layout lay = cuda::make_layout(G, N, R, slot, ll_bytes_of(opts, N), ll_blocks(G));

  std::vector<std::unique_ptr<Impl>> impls;
  for (int r = 0; r < N; ++r) {
    auto m = std::make_unique<Impl>();
    m->rank = r;
    m->N = N;
    m->device = devices[r];
    m->opts = opts;
    m->lay = lay;
    m->G = G;
    m->group = group;
    m->ranks_on_device = rod[r];
    DeviceGuard g(devices[r]);
    AR_CUDA(cudaMalloc(&group->regions[r], lay.total));
    AR_CUDA(cudaMemset(group->regions[r], 0, lay.total));
    m->region = group->regions[r];
    m->alloc_host_err();
    impls.push_back(std::move(m));
  }
  for (int r = 0; r < N; ++r) {
    DeviceGuard g(devices[r]);
    AR_CUDA(cudaDeviceSynchronize());  // zeroed counters before any peer writes
  }

  // Peer access between distinct GPUs: asked for, enabled, then tested by real stores.
  bool p2p = opts.p2p;
  std::string why = opts.p2p ? "" : "disabled (DETINFER_AR_P2P=0 / Options::p2p)";
  for (int i = 0; i < N && p2p; ++i)
    for (int j = 0; j < N && p2p; ++j) {
      if (devices[i] == devices[j]) continue;
      int can = 0;
      AR_CUDA(cudaDeviceCanAccessPeer(&can, devices[i], devices[j]));
      if (!can) {
        p2p = false;
        why = cat("GPU ", devices[i], " cannot access GPU ", devices[j], " (no NVLink/PCIe peer access)");
        break;
      }
      DeviceGuard g(devices[i]);
      cudaError_t e = cudaDeviceEnablePeerAccess(devices[j], 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
      else if (e != cudaSuccess) {
        cudaGetLastError();
        p2p = false;
        why = cat("enabling peer access GPU ", devices[i], " -> ", devices[j], " failed: ", cudaGetErrorString(e));
      }
    }
  for (int r = 0; r < N; ++r)
    for (int q = 0; q < N; ++q) impls[r]->peer[q] = group->regions[q];
  if (p2p) {
    for (int r = 0; r < N; ++r) {
      DeviceGuard g(devices[r]);
      KernelArgs a = impls[r]->base_args();
      cuda_ok(static_cast<cudaError_t>(cuda::launch_probe(a, impls[r]->probe_token(r), nullptr)), "peer-access probe");
    }
    for (int r = 0; r < N; ++r) {
      DeviceGuard g(devices[r]);
      AR_CUDA(cudaDeviceSynchronize());
    }
    for (int r = 0; r < N && p2p; ++r) {
      DeviceGuard g(devices[r]);
      p2p = impls[r]->probe_arrived(&why);
    }
  }
  if (p2p) why = cat("peer access tested on ", N, " ranks");
  for (auto& m : impls) {
    m->p2p_ok = p2p || N == 1;
    m->p2p_why = N == 1 ? "world size 1" : why;
  }

  // NCCL: one communicator per GPU (NCCL refuses two ranks of one communicator on one GPU).
  [[maybe_unused]] bool distinct = true;
  for (int r = 0; r < N; ++r)
    if (rod[r] > 1) distinct = false;
#ifdef DETINFER_HAVE_NCCL
  if (opts.nccl && distinct && N > 1) {
    std::vector<ncclComm_t> comms(N);
    ncclResult_t res = ncclCommInitAll(comms.data(), N, devices.data());
    if (res == ncclSuccess) {
      for (int r = 0; r < N; ++r) {
        impls[r]->nccl = comms[r];
        impls[r]->nccl_ok = true;
        impls[r]->nccl_why = "ncclCommInitAll";
        DeviceGuard g(devices[r]);
        impls[r]->alloc_scratch();
      }
      // One host thread per rank: NCCL calls of several ranks from one thread would need a group.
      std::vector<std::thread> warm;
      std::vector<std::string> errs(N);
      for (int r = 0; r < N; ++r)
        warm.emplace_back([&, r] {
          try {
            impls[r]->warm_nccl();
          } catch (const std::exception& e) {
            errs[r] = e.what();
          }
        });
      for (auto& t : warm) t.join();
      for (int r = 0; r < N; ++r) DETINFER_CHECK(errs[r].empty(), "all-reduce: NCCL warm-up on rank ", r, ": ", errs[r]);
    } else {
      for (auto& m : impls) m->nccl_why = cat("ncclCommInitAll failed: ", ncclGetErrorString(res));
    }
  } else {
    for (auto& m : impls)
      m->nccl_why = !opts.nccl ? "disabled (DETINFER_AR_NCCL=0 / Options::nccl)"
                    : N == 1   ? "world size 1"
                               : "two ranks share a GPU (NCCL allows one rank per GPU in a communicator)";
  }
#else
  for (auto& m : impls) m->nccl_why = "built without NCCL";
#endif

  std::vector<std::unique_ptr<Communicator>> out;
  for (auto& m : impls) out.emplace_back(new Communicator(std::move(m)));
  if (debug_log_enabled())
    for (auto& c : out) debug_log(c->describe());
  return out;
}

std::unique_ptr<Communicator> Communicator::create(const Bootstrap& boot, const Options& opts) {
  DETINFER_CHECK(boot.world_size >= 1 && boot.world_size <= kMaxRanks, "all-reduce: world size ", boot.world_size,
                 " outside [1, ", kMaxRanks, "]");
  DETINFER_CHECK(boot.rank >= 0 && boot.rank < boot.world_size, "all-reduce: rank ", boot.rank, " outside the world of ",
                 boot.world_size);
  static std::atomic<int> created{0};
  auto m = std::make_unique<Impl>();
  m->rank = boot.rank;
  m->N = boot.world_size;
  m->opts = opts;
  m->key = cat("ar", created++, "/");
  int ndev = 0;
  AR_CUDA(cudaGetDeviceCount(&ndev));
  DETINFER_CHECK(ndev > 0, "all-reduce: no GPU visible");
  m->device = boot.device >= 0 ? boot.device : boot.local_rank % ndev;
  DETINFER_CHECK(m->device < ndev, "all-reduce: GPU ", m->device, " does not exist (", ndev, " visible)");
  AR_CUDA(cudaSetDevice(m->device));
  const int64_t boot_timeout = std::max<int64_t>(opts.timeout_ms, 60000);
  // One store per process and address, kept for the process's life: communicators created one
  // after another reuse it (a fresh server on the same port could race with late clients).
  {
    static std::mutex mu;
    static std::map<std::string, std::pair<std::shared_ptr<StoreServer>, std::shared_ptr<StoreClient>>> stores;
    std::lock_guard<std::mutex> lock(mu);
    auto& entry = stores[cat(boot.master_addr, ":", boot.master_port)];
    if (m->rank == 0 && !entry.first) entry.first = std::make_shared<StoreServer>(boot.master_addr, boot.master_port);
    if (!entry.second) entry.second = std::make_shared<StoreClient>(boot.master_addr, boot.master_port, boot_timeout);
    m->server = entry.first;
    m->store = entry.second;
  }
  StoreClient& st = *m->store;
  const int N = m->N, me = m->rank;

  struct Info {
    uint64_t host;
    DeviceFacts facts;
    int device;
    int32_t p2p_wanted;
    int64_t knobs[5];  // options that must agree: they decide which kernels pair up
  } mine{host_hash(), device_facts(m->device), m->device, opts.p2p ? 1 : 0,
         {opts.blocks, opts.slot_bytes, opts.ring_depth, opts.two_shot_bytes, ll_bytes_of(opts, N)}};
  std::vector<uint8_t> blob(sizeof(Info));
  std::memcpy(blob.data(), &mine, sizeof(Info));
  auto all = store_all_gather(st, m->key + "info", me, N, blob, boot_timeout);
  std::vector<Info> infos(N);
  for (int r = 0; r < N; ++r) {
    DETINFER_CHECK(all[r].size() == sizeof(Info), "all-reduce bootstrap: rank ", r, " sent a malformed record");
    std::memcpy(&infos[r], all[r].data(), sizeof(Info));
  }
  bool same_host = true, wanted = true;
  for (int r = 0; r < N; ++r) {
    DETINFER_CHECK(std::memcmp(infos[r].knobs, mine.knobs, sizeof(mine.knobs)) == 0, "all-reduce bootstrap: rank ", r,
                   " has different DETINFER_AR_BLOCKS / _SLOT_KB / _RING / _TWOSHOT_BYTES / _LL_BYTES settings than rank ",
                   me, "; every rank must use the same ones");
    same_host = same_host && infos[r].host == mine.host;
    wanted = wanted && infos[r].p2p_wanted;
    if (r != me && infos[r].host == mine.host && std::strcmp(infos[r].facts.bus_id, mine.facts.bus_id) == 0)
      m->ranks_on_device++;
  }
  int G = INT32_MAX;
  for (int r = 0; r < N; ++r) {
    int rod = 0;
    for (int q = 0; q < N; ++q)
      rod += infos[q].host == infos[r].host && std::strcmp(infos[q].facts.bus_id, infos[r].facts.bus_id) == 0;
    G = std::min(G, blocks_for(opts, infos[r].facts, rod, N));
  }
  m->G = G;
  const int R = opts.ring_depth > 0 ? opts.ring_depth : (N <= 2 ? kDefaultRing : kDefaultRingManyRanks);
  const int64_t slot = opts.slot_bytes > 0 ? (opts.slot_bytes + 15) / 16 * 16
                                           : (N <= 2 ? kDefaultSlotBytes : kDefaultSlotBytesManyRanks);
  m->lay = cuda::make_layout(G, N, R, slot, ll_bytes_of(opts, N), ll_blocks(G));
  AR_CUDA(cudaMalloc(&m->region, m->lay.total));
  AR_CUDA(cudaMemset(m->region, 0, m->lay.total));
  AR_CUDA(cudaDeviceSynchronize());
  m->alloc_host_err();
  m->peer[me] = m->region;

  std::string why;
  bool p2p = false;
  bool shared_gpu = false;
  for (int r = 0; r < N; ++r)
    for (int q = 0; q < r; ++q)
      shared_gpu = shared_gpu || (infos[q].host == infos[r].host && std::strcmp(infos[q].facts.bus_id, infos[r].facts.bus_id) == 0);
  if (!wanted) why = "disabled (DETINFER_AR_P2P=0 / Options::p2p) on some rank";
  else if (!same_host) why = "ranks on different hosts";
  else if (shared_gpu)
    why = "ranks in different processes share a GPU (their kernels would only time-slice); run virtual ranks in one "
          "process (create_local)";
  else if (N > 1) {
    cudaIpcMemHandle_t h;
    AR_CUDA(cudaIpcGetMemHandle(&h, m->region));
    std::vector<uint8_t> hb(sizeof(h));
    std::memcpy(hb.data(), &h, sizeof(h));
    auto handles = store_all_gather(st, m->key + "ipc", me, N, hb, boot_timeout);
    bool ok = true;
    for (int q = 0; q < N && ok; ++q) {
      if (q == me) continue;
      cudaIpcMemHandle_t ph;
      std::memcpy(&ph, handles[q].data(), sizeof(ph));
      void* p = nullptr;
      cudaError_t e = cudaIpcOpenMemHandle(&p, ph, cudaIpcMemLazyEnablePeerAccess);
      if (e != cudaSuccess) {
        cudaGetLastError();
        ok = false;
        why = cat("opening rank ", q, "'s CUDA IPC handle failed: ", cudaGetErrorString(e));
      } else {
        m->ipc_opened.push_back(p);
        m->peer[q] = static_cast<uint8_t*>(p);
      }
    }
    auto oks = store_all_gather(st, m->key + "ipc_ok", me, N, {static_cast<uint8_t>(ok)}, boot_timeout);
    bool all_ok = true;
    for (auto& o : oks) all_ok = all_ok && o.size() == 1 && o[0] == 1;
    if (!all_ok && ok) why = "another rank could not map the CUDA IPC handles";
    if (all_ok) {
      KernelArgs a = m->base_args();
      cuda_ok(static_cast<cudaError_t>(cuda::launch_probe(a, m->probe_token(me), nullptr)), "peer-access probe");
      AR_CUDA(cudaDeviceSynchronize());
      st.barrier(m->key + "probe", N, boot_timeout);
      ok = m->probe_arrived(&why);
      auto probes = store_all_gather(st, m->key + "probe_ok", me, N, {static_cast<uint8_t>(ok)}, boot_timeout);
      p2p = true;
      for (auto& o : probes) p2p = p2p && o.size() == 1 && o[0] == 1;
      if (!p2p && ok) why = "another rank's peer-access probe failed";
      if (p2p) why = cat("CUDA IPC mapped and tested on ", N, " ranks");
    }
  }
  m->p2p_ok = p2p || N == 1;
  m->p2p_why = N == 1 ? "world size 1" : why;

#ifdef DETINFER_HAVE_NCCL
  if (opts.nccl && N > 1) {
    ncclUniqueId id;
    if (me == 0) {
      AR_NCCL(ncclGetUniqueId(&id));
      st.set(m->key + "nccl_id", std::vector<uint8_t>(reinterpret_cast<uint8_t*>(&id), reinterpret_cast<uint8_t*>(&id) + sizeof(id)));
    }
    auto idb = st.get(m->key + "nccl_id", boot_timeout);
    DETINFER_CHECK(idb.size() == sizeof(id), "all-reduce bootstrap: malformed NCCL id");
    std::memcpy(&id, idb.data(), sizeof(id));
    ncclResult_t res = ncclCommInitRank(&m->nccl, N, id, me);
    if (res == ncclSuccess) {
      m->nccl_ok = true;
      m->nccl_why = "ncclCommInitRank";
      m->alloc_scratch();
      m->warm_nccl();
    } else {
      m->nccl = nullptr;
      m->nccl_why = cat("ncclCommInitRank failed: ", ncclGetErrorString(res), " (", ncclGetLastError(nullptr), ")");
    }
  } else {
    m->nccl_why = !opts.nccl ? "disabled (DETINFER_AR_NCCL=0 / Options::nccl)" : "world size 1";
  }
#else
  m->nccl_why = "built without NCCL";
#endif
  st.barrier(m->key + "ready", N, boot_timeout);
  std::unique_ptr<Communicator> c(new Communicator(std::move(m)));
  if (debug_log_enabled()) debug_log(c->describe());
  return c;
}

std::unique_ptr<Communicator> Communicator::create_from_env(const Options& opts) {
  return create(bootstrap_from_env(), opts);
}

void Communicator::all_reduce(const void* in, void* out, size_t count, DataType dtype, void* stream, Algo algo) {
  all_reduce(in, out, count, dtype, impl_->opts.order, stream, algo);
}

void Communicator::all_reduce(const void* in, void* out, size_t count, DataType dtype, Order order, void* stream,
                              Algo algo) {
  Impl& m = *impl_;
  m.throw_if_error();
  const int d = static_cast<int>(dtype), o = static_cast<int>(order), al = static_cast<int>(algo);
  DETINFER_CHECK(d >= 0 && d <= 2, "all_reduce: unknown data type ", d);
  DETINFER_CHECK(o >= 0 && o <= 1, "all_reduce: unknown order ", o);
  DETINFER_CHECK(al >= 0 && al <= 4, "all_reduce: unknown algorithm ", al);
  if (count == 0) return;
  const int es = dtype_bytes(dtype);
  DETINFER_CHECK(count <= (size_t(1) << 48) / es, "all_reduce: count ", count, " is too large");
  const size_t bytes = count * es;
  DETINFER_CHECK(in != nullptr, "all_reduce: in is null (count ", count, ")");
  DETINFER_CHECK(out != nullptr, "all_reduce: out is null (count ", count, ")");
  const uintptr_t ia = reinterpret_cast<uintptr_t>(in), oa = reinterpret_cast<uintptr_t>(out);
  DETINFER_CHECK(ia % es == 0, "all_reduce: in (", in, ") is not aligned to its ", es, "-byte ", dtype_name(dtype),
                 " elements");
  DETINFER_CHECK(oa % es == 0, "all_reduce: out (", out, ") is not aligned to its ", es, "-byte ", dtype_name(dtype),
                 " elements");
  DETINFER_CHECK(ia == oa || ia + bytes <= oa || oa + bytes <= ia,
                 "all_reduce: in and out overlap without being equal (in place needs in == out)");
  DeviceGuard g(m.device);
  if (m.opts.check_pointers) {
    m.check_pointer(in, bytes, "in");
    if (out != in) m.check_pointer(out, bytes, "out");
  }
  std::string why;
  Algo a = m.resolve(algo, count, dtype, debug_log_enabled() ? &why : nullptr);
  DETINFER_CHECK(!(a == Algo::Nccl && order == Order::Tree),
                 "all_reduce: plain NCCL has no fixed summation order; the tree order needs oneshot, twoshot or nccl_det");
  if (debug_log_enabled())
    debug_log(cat("rank ", m.rank, " all_reduce ", count, " x ", dtype_name(dtype), " (", bytes_str(bytes), "), ",
                  order_name(order), " order, ", in == out ? "in place" : "out of place",
                  (ia % 16 == 0 && oa % 16 == 0) ? "" : ", unaligned (scalar path)", ": ", algo_name(a), " (", why, ")"));
  if (m.N == 1) {
    if (in != out)
      AR_CUDA(cudaMemcpyAsync(out, in, bytes, cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream)));
    return;
  }
  switch (a) {
    case Algo::OneShot:
    case Algo::TwoShot: m.run_p2p(in, out, count, dtype, order, a, stream); break;
#ifdef DETINFER_HAVE_NCCL
    case Algo::NcclDet: m.run_nccl_det(in, out, count, dtype, order, stream); break;
    case Algo::Nccl:
      AR_NCCL(ncclAllReduce(in, out, count, nccl_type(dtype), ncclSum, m.nccl, static_cast<cudaStream_t>(stream)));
      break;
#endif
    default: fail("all_reduce: algorithm ", algo_name(a), " is not built in");
  }
}

Algo Communicator::select(size_t count, DataType dtype, std::string* why) const {
  std::string w;
  Algo a = impl_->resolve(Algo::Auto, count, dtype, &w);
  if (why) *why = w;
  return a;
}
bool Communicator::available(Algo a, std::string* why) const { return impl_->available(a, why); }
void Communicator::check() const { impl_->throw_if_error(); }

void Communicator::synchronize(void* stream) const {
  const Impl& m = *impl_;
  DeviceGuard g(m.device);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(m.opts.timeout_ms + 10000);
  for (;;) {
    cudaError_t e = cudaStreamQuery(s);
    if (e == cudaSuccess) break;
    if (e != cudaErrorNotReady) cuda_ok(e, "waiting for the all-reduce stream");
#ifdef DETINFER_HAVE_NCCL
    if (m.nccl) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(m.nccl, &async);
      if (async != ncclSuccess && async != ncclInProgress)
        fail("all-reduce on rank ", m.rank, ": NCCL reported ", ncclGetErrorString(async));
    }
#endif
    if (std::chrono::steady_clock::now() > deadline) {
      m.throw_if_error();
      fail("all-reduce on rank ", m.rank, ": the stream did not finish within ", m.opts.timeout_ms + 10000,
           " ms (a peer never arrived at an NCCL call?)");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  m.throw_if_error();
}

int Communicator::rank() const { return impl_->rank; }
int Communicator::world_size() const { return impl_->N; }
int Communicator::device() const { return impl_->device; }
size_t Communicator::registered_bytes() const { return impl_->lay.total; }

std::string Communicator::describe() const {
  const Impl& m = *impl_;
  return cat("rank ", m.rank, "/", m.N, " on GPU ", m.device, " (", m.ranks_on_device, " rank(s) on it): P2P kernels ",
             m.p2p_ok ? "on" : "off", " (", m.p2p_why, "), ", m.G, " blocks/role, ring ", m.lay.R, " x ",
             bytes_str(m.lay.slot_bytes), ", registered ", bytes_str(static_cast<int64_t>(m.lay.total)), "; NCCL ",
             m.nccl_ok ? "on" : "off", " (", m.nccl_why, ")");
}

void Communicator::group_start() {
#ifdef DETINFER_HAVE_NCCL
  AR_NCCL(ncclGroupStart());
#endif
}
void Communicator::group_end() {
#ifdef DETINFER_HAVE_NCCL
  AR_NCCL(ncclGroupEnd());
#endif
}

}  // namespace detinfer::comm
