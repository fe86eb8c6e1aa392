// Multi-process all-reduce tests: one process per rank, bootstrapped from RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR, MASTER_PORT (as torchrun sets them). They skip unless started that
// way; scripts/gpu_test.sh starts them (real ranks over CUDA IPC, and virtual ranks for NCCL with
// a distinct NCCL_HOSTID per process so NCCL accepts several ranks per GPU).
#include <cstdlib>

#include "allreduce_test_util.h"
#include "common/error.h"

using namespace artest;

namespace {

bool launched() { return std::getenv("RANK") && std::getenv("WORLD_SIZE"); }

// DETINFER_AR_TEST_MAX_ELEMS caps the message sizes (the sanitizer runs use small ones).
int64_t max_elems() {
  const char* v = std::getenv("DETINFER_AR_TEST_MAX_ELEMS");
  return v ? std::atoll(v) : INT64_MAX;
}

struct Proc {
  std::unique_ptr<Communicator> comm;
  cudaStream_t stream = nullptr;
  uint8_t *in = nullptr, *out = nullptr;
  size_t cap;
  explicit Proc(size_t cap_bytes) : cap(cap_bytes) {
    Options o = Options::from_env();
    o.timeout_ms = 60000;
    comm = Communicator::create_from_env(o);
    cuda_or_die(cudaSetDevice(comm->device()), "set device");
    cuda_or_die(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    cuda_or_die(cudaMalloc(&in, cap), "alloc");
    cuda_or_die(cudaMalloc(&out, cap), "alloc");
  }
  ~Proc() {
    cudaStreamSynchronize(stream);
    cudaFree(in);
    cudaFree(out);
    cudaStreamDestroy(stream);
  }
  std::vector<Algo> det_algos() const {
    std::vector<Algo> v;
    for (Algo a : {Algo::OneShot, Algo::TwoShot, Algo::NcclDet})
      if (comm->available(a)) v.push_back(a);
    return v;
  }
};

}  // namespace

TEST(AllreduceMultiProcess, T8BitsMatchReference) {
  if (!launched()) GTEST_SKIP() << "start with RANK/WORLD_SIZE/... (scripts/gpu_test.sh does)";
  Proc p(64ull << 20);
  const int N = p.comm->world_size(), me = p.comm->rank();
  if (me == 0) std::printf("[ mp       ] %s\n", p.comm->describe().c_str());
  const auto algos = p.det_algos();
  ASSERT_FALSE(algos.empty());
  const std::vector<int64_t> sizes = {1, 2, 3, 7, 8, 9, 17, 63, 65, 255, 257, 1000, 4097, 65537, 1048573, (16 << 20) + 3};
  int cases = 0;
  for (DataType t : {DataType::F32, DataType::BF16, DataType::F16})
    for (Algo a : algos)
      for (int64_t n : sizes) {
        if (static_cast<size_t>(n) * dtype_bytes(t) + 64 > p.cap || n > max_elems()) continue;
        const Order o = (cases % 4 == 3) ? Order::Tree : Order::RankOrder;
        const int64_t off = cases % 3 == 1 ? 1 : 0;
        const bool in_place = cases % 2 == 0;
        ++cases;
        const int es = dtype_bytes(t);
        std::vector<std::vector<uint8_t>> host(N);
        for (int r = 0; r < N; ++r) host[r] = make_input(t, n, 31 * n + 7 * cases + r);
        AR_CUDA_OK(cudaMemcpy(p.in + off * es, host[me].data(), n * es, cudaMemcpyHostToDevice));
        uint8_t* dst = (in_place ? p.in : p.out) + off * es;
        p.comm->all_reduce(p.in + off * es, dst, n, t, o, p.stream, a);
        p.comm->synchronize(p.stream);
        std::vector<uint8_t> got(n * es);
        AR_CUDA_OK(cudaMemcpy(got.data(), dst, n * es, cudaMemcpyDeviceToHost));
        auto ref = reference(o, t, host, n);
        int64_t bad = first_diff(got.data(), ref.data(), n, es);
        ASSERT_EQ(bad, -1) << "rank " << me << " world " << N << " " << dtype_name(t) << " " << algo_name(a) << " "
                           << order_name(o) << " n=" << n << " element " << bad;
      }
  if (me == 0) std::printf("[ mp       ] world %d: %d cases bitwise equal to the reference\n", N, cases);
}

// The problem, shown with real NCCL: the same N inputs for an element, placed at different
// offsets of messages of different sizes. ncclAllReduce's bits move (at 3+ ranks); every
// deterministic path keeps one set of bits, equal to the rank-order reference.
TEST(AllreduceMultiProcess, NcclBitsMoveWithSizeDeterministicPathsDoNot) {
  if (!launched()) GTEST_SKIP() << "start with RANK/WORLD_SIZE/... (scripts/gpu_test.sh does)";
  Proc p(64ull << 20);
  const int N = p.comm->world_size(), me = p.comm->rank();
  const int K = 256;
  for (DataType t : {DataType::F32, DataType::BF16}) {
    const int es = dtype_bytes(t);
    std::vector<std::vector<uint8_t>> probe(N);
    for (int r = 0; r < N; ++r) probe[r] = make_input(t, K, 123 + r);
    const auto ref = reference(Order::RankOrder, t, probe, K);
    std::vector<Algo> algos = p.det_algos();
    if (p.comm->available(Algo::Nccl)) algos.insert(algos.begin(), Algo::Nccl);
    for (Algo a : algos) {
      std::vector<uint8_t> first;
      int placements = 0, moved = 0;
      int64_t moved_elems = 0, off_ref = 0;
      for (int64_t n : {int64_t(K), int64_t(1000), int64_t(4099), int64_t(65536 + 5), int64_t(1) << 20, int64_t(4) << 20})
        for (int64_t pos : {int64_t(0), (n - K) / 3, n - K}) {
          if (n > max_elems()) continue;
          std::vector<uint8_t> mine = make_input(t, n, 9000 + n * 3 + pos + me);
          std::memcpy(mine.data() + pos * es, probe[me].data(), K * es);
          AR_CUDA_OK(cudaMemcpy(p.in, mine.data(), n * es, cudaMemcpyHostToDevice));
          p.comm->all_reduce(p.in, p.out, n, t, p.stream, a);
          p.comm->synchronize(p.stream);
          std::vector<uint8_t> got(K * es);
          AR_CUDA_OK(cudaMemcpy(got.data(), p.out + pos * es, K * es, cudaMemcpyDeviceToHost));
          if (first.empty()) first = got;
          int64_t d = 0, dr = 0;
          for (int i = 0; i < K; ++i) {
            d += std::memcmp(&got[i * es], &first[i * es], es) != 0;
            dr += std::memcmp(&got[i * es], &ref[i * es], es) != 0;
          }
          moved += d > 0;
          moved_elems += d;
          off_ref += dr;
          ++placements;
        }
      if (me == 0)
        std::printf("[ nccl-bits] world %d %s %-8s: %d of %d placements changed the probe's bits (%lld element "
                    "results moved; %lld differ from the rank-order reference)\n",
                    N, dtype_name(t), algo_name(a), moved, placements, static_cast<long long>(moved_elems),
                    static_cast<long long>(off_ref));
      if (a != Algo::Nccl) {
        EXPECT_EQ(moved, 0) << algo_name(a);
        EXPECT_EQ(off_ref, 0) << algo_name(a);
      }
    }
  }
}
