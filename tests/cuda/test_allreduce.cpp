// GPU tests of the deterministic all-reduce in one process (T8 of DETERMINISM.md): world sizes 2
// to 8, one rank per GPU while there are GPUs, then several ranks per GPU. Every result is
// compared bit for bit with the sequential rank-order (or tree) reference, and with fp64.
#include <chrono>

#include "allreduce_test_util.h"
#include "common/error.h"

using namespace artest;

namespace {

Options test_options(int64_t timeout_ms = 20000, bool nccl = true) {
  Options o = Options::from_env();
  o.timeout_ms = timeout_ms;
  o.algo = Algo::Auto;
  o.nccl = o.nccl && nccl;
  return o;
}

constexpr int kGuard = 64;  // poisoned bytes checked on both sides of every message
constexpr uint8_t kPoison = 0xEE;

struct World {
  int N;
  std::vector<int> devices;
  std::vector<std::unique_ptr<Communicator>> comms;
  std::vector<cudaStream_t> streams;
  std::vector<uint8_t*> in, out;
  size_t cap;

  World(int n, size_t cap_bytes, const Options& o = test_options()) : N(n), devices(devices_for(n)), cap(cap_bytes) {
    comms = Communicator::create_local(devices, o);
    for (int r = 0; r < N; ++r) {
      cuda_or_die(cudaSetDevice(devices[r]), "set device");
      cudaStream_t s;
      cuda_or_die(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
      streams.push_back(s);
      uint8_t *a, *b;
      cuda_or_die(cudaMalloc(&a, cap + 2 * kGuard), "alloc in");
      cuda_or_die(cudaMalloc(&b, cap + 2 * kGuard), "alloc out");
      in.push_back(a);
      out.push_back(b);
    }
  }
  ~World() {
    for (int r = 0; r < N; ++r) {
      cudaSetDevice(devices[r]);
      cudaStreamSynchronize(streams[r]);
      cudaStreamDestroy(streams[r]);
      cudaFree(in[r]);
      cudaFree(out[r]);
    }
    comms.clear();
  }
  bool has(Algo a) const { return comms[0]->available(a); }
};

std::string case_name(const World& w, DataType t, Algo a, Order o, int64_t n, int64_t off, bool in_place) {
  return detinfer::cat("world ", w.N, " ", dtype_name(t), " ", algo_name(a), " ", order_name(o), " n=", n, " off=", off,
                       in_place ? " in-place" : " out-of-place");
}

// One all-reduce on every rank (one host thread per rank, or all from this thread), checked
// against the reference bit for bit, against fp64, and for writes outside the message.
void run_case(World& w, DataType t, Algo a, Order o, int64_t n, int64_t off, bool in_place, uint64_t seed,
              bool one_thread = false) {
  const int N = w.N, es = dtype_bytes(t);
  const size_t bytes = static_cast<size_t>(n) * es, span = off * es + bytes + kGuard;
  ASSERT_LE(span, w.cap + 2 * kGuard);
  const std::string name = case_name(w, t, a, o, n, off, in_place);
  std::vector<std::vector<uint8_t>> host(N);
  for (int r = 0; r < N; ++r) host[r] = make_input(t, n, seed * 16 + r);
  const std::vector<uint8_t> ref = reference(o, t, host, n);
  for (int r = 0; r < N; ++r) {
    AR_CUDA_OK(cudaSetDevice(w.devices[r]));
    AR_CUDA_OK(cudaMemset(w.in[r], kPoison, span));
    AR_CUDA_OK(cudaMemset(w.out[r], kPoison, span));
    AR_CUDA_OK(cudaMemcpy(w.in[r] + off * es, host[r].data(), bytes, cudaMemcpyHostToDevice));
  }
  auto call = [&](int r) {
    uint8_t* src = w.in[r] + off * es;
    uint8_t* dst = (in_place ? w.in[r] : w.out[r]) + off * es;
    w.comms[r]->all_reduce(src, dst, n, t, o, w.streams[r], a);
  };
  if (one_thread) {
    for (int r = 0; r < N; ++r) call(r);
    for (int r = 0; r < N; ++r) w.comms[r]->synchronize(w.streams[r]);
  } else {
    run_threads(N, [&](int r) {
      call(r);
      w.comms[r]->synchronize(w.streams[r]);
    });
  }
  std::vector<uint8_t> got(span);
  for (int r = 0; r < N; ++r) {
    AR_CUDA_OK(cudaSetDevice(w.devices[r]));
    AR_CUDA_OK(cudaMemcpy(got.data(), in_place ? w.in[r] : w.out[r], span, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < static_cast<size_t>(off * es); ++i)
      ASSERT_EQ(got[i], kPoison) << name << ": rank " << r << " wrote before the message (byte " << i << ")";
    for (size_t i = off * es + bytes; i < span; ++i)
      ASSERT_EQ(got[i], kPoison) << name << ": rank " << r << " wrote after the message (byte " << i << ")";
    int64_t bad = first_diff(got.data() + off * es, ref.data(), n, es);
    ASSERT_EQ(bad, -1) << name << ": rank " << r << " element " << bad << " = "
                       << emu::load_elem(t, got.data() + off * es, bad < 0 ? 0 : bad) << ", reference "
                       << emu::load_elem(t, ref.data(), bad < 0 ? 0 : bad);
    if (r == 0 && o == Order::RankOrder) {
      ASSERT_LE(worst_vs_fp64(t, host, got.data() + off * es, n), 1.0) << name;
    }
  }
}

const std::vector<int64_t> kSizes = {1,    2,    3,    5,    7,     8,     9,     15,    16,     17,    31,
                                     32,   33,   63,   64,   65,    127,   255,   256,   257,    1000,  1023,
                                     1025, 4095, 4097, 65535, 65536, 65537, 262147, 1048573};

void sweep(int world) {
  World w(world, (1048576 + 64) * 4);
  std::vector<Algo> algos = {Algo::OneShot, Algo::TwoShot};
  if (w.has(Algo::NcclDet)) algos.push_back(Algo::NcclDet);
  std::printf("[ sweep    ] %s\n", w.comms[0]->describe().c_str());
  uint64_t seed = 1000 * world;
  int k = 0;
  for (DataType t : {DataType::F32, DataType::BF16, DataType::F16})
    for (Algo a : algos)
      for (int64_t n : kSizes) {
        ++k;
        const int64_t off = (k % 3 == 0) ? 0 : (k % 3 == 1 ? 1 : 8);  // 1: unaligned (scalar path)
        run_case(w, t, a, Order::RankOrder, n, off, k % 2 == 0, ++seed);
        if (::testing::Test::HasFatalFailure()) return;
        if (k % 3 == 0) {
          run_case(w, t, a, Order::Tree, n, 8, k % 4 == 0, ++seed);
          if (::testing::Test::HasFatalFailure()) return;
        }
      }
}

}  // namespace

TEST(AllreduceGpu, T8SweepWorld2) { sweep(2); }
TEST(AllreduceGpu, T8SweepWorld3Virtual) { sweep(3); }
TEST(AllreduceGpu, T8SweepWorld4Virtual) { sweep(4); }
TEST(AllreduceGpu, T8SweepWorld5Virtual) { sweep(5); }
TEST(AllreduceGpu, T8SweepWorld6Virtual) { sweep(6); }
TEST(AllreduceGpu, T8SweepWorld7Virtual) { sweep(7); }
TEST(AllreduceGpu, T8SweepWorld8Virtual) { sweep(8); }

// Up to 256 MiB: messages many times the registered rings, with odd counts and offsets.
TEST(AllreduceGpu, T8LargeMessages) {
  {
    World w(2, 256ull << 20);
    std::vector<Algo> algos = {Algo::OneShot, Algo::TwoShot};
    if (w.has(Algo::NcclDet)) algos.push_back(Algo::NcclDet);
    for (Algo a : algos) {
      run_case(w, DataType::F32, a, Order::RankOrder, (256ll << 20) / 4, 0, false, 71);
      run_case(w, DataType::BF16, a, Order::RankOrder, (64ll << 20) / 2 + 3, 5, a == Algo::TwoShot, 72);
      run_case(w, DataType::F16, a, Order::Tree, (16ll << 20) / 2 - 1, 8, false, 73);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  {
    World w(8, 256ull << 20);
    run_case(w, DataType::F32, Algo::TwoShot, Order::RankOrder, (256ll << 20) / 4, 0, false, 81);
    run_case(w, DataType::BF16, Algo::OneShot, Order::RankOrder, (32ll << 20) / 2 + 1, 1, true, 82);
  }
  {
    World w(4, 64ull << 20);
    run_case(w, DataType::F32, Algo::OneShot, Order::Tree, (64ll << 20) / 4 - 3, 3, false, 91);
    run_case(w, DataType::BF16, Algo::TwoShot, Order::RankOrder, (64ll << 20) / 2, 0, true, 92);
  }
}

// I8 literally: one element's N inputs, placed at different offsets of messages of different
// sizes, through different algorithms, always give the same bits on every rank.
TEST(AllreduceGpu, ElementBitsIndependentOfSizeOffsetAlgorithm) {
  for (int world : {2, 3}) {
    World w(world, 4 << 20);
    const DataType t = DataType::BF16;
    const int K = 37;  // probe elements
    std::vector<std::vector<uint8_t>> probe(world);
    for (int r = 0; r < world; ++r) probe[r] = make_input(t, K, 5000 + r);
    std::vector<uint8_t> first;
    int placements = 0;
    std::vector<Algo> algos = {Algo::OneShot, Algo::TwoShot};
    if (w.has(Algo::NcclDet)) algos.push_back(Algo::NcclDet);
    for (int64_t n : {int64_t(K), int64_t(100), int64_t(4099), int64_t(1) << 20})
      for (int64_t pos : {int64_t(0), (n - K) / 2, n - K})
        for (Algo a : algos) {
          std::vector<std::vector<uint8_t>> host(world);
          for (int r = 0; r < world; ++r) {
            host[r] = make_input(t, n, 7000 + n + pos + r);
            std::memcpy(host[r].data() + pos * 2, probe[r].data(), K * 2);
            AR_CUDA_OK(cudaSetDevice(w.devices[r]));
            AR_CUDA_OK(cudaMemcpy(w.in[r], host[r].data(), n * 2, cudaMemcpyHostToDevice));
          }
          run_threads(world, [&](int r) {
            w.comms[r]->all_reduce(w.in[r], w.out[r], n, t, w.streams[r], a);
            w.comms[r]->synchronize(w.streams[r]);
          });
          for (int r = 0; r < world; ++r) {
            std::vector<uint8_t> got(K * 2);
            AR_CUDA_OK(cudaSetDevice(w.devices[r]));
            AR_CUDA_OK(cudaMemcpy(got.data(), w.out[r] + pos * 2, K * 2, cudaMemcpyDeviceToHost));
            if (first.empty()) first = got;
            ASSERT_EQ(first_diff(got.data(), first.data(), K, 2), -1)
                << "world " << world << " n=" << n << " pos=" << pos << " " << algo_name(a) << " rank " << r;
            ++placements;
          }
        }
    std::printf("[ I8       ] world %d: %d placements of %d probe elements, one set of bits\n", world, placements, K);
  }
}

// All ranks driven from one host thread: the P2P kernels need no thread per rank.
TEST(AllreduceGpu, OneHostThreadDrivesAllRanks) {
  for (int world : {2, 4}) {
    World w(world, 1 << 20);
    for (Algo a : {Algo::OneShot, Algo::TwoShot})
      for (int64_t n : {int64_t(1), int64_t(1000), int64_t(200001)}) {
        run_case(w, DataType::F32, a, Order::RankOrder, n, 0, false, 300 + n, true);
        if (::testing::Test::HasFatalFailure()) return;
      }
  }
}

// CUDA graph capture: captured calls replay with new inputs and give the reference bits; the
// kernels' sequence numbers live on the device, so replays continue the protocol.
TEST(AllreduceGpu, GraphCaptureAndReplay) {
  for (int world : {2, 4}) {
    World w(world, 1 << 20);
    std::vector<Algo> algos = {Algo::OneShot, Algo::TwoShot};
    if (w.has(Algo::NcclDet)) algos.push_back(Algo::NcclDet);
    for (Algo a : algos) {
      const int64_t n1 = 1001, n2 = 65536 + 9;  // two calls per graph, different sizes
      const DataType t = DataType::BF16;
      std::vector<cudaGraphExec_t> execs(world);
      std::vector<cudaGraphExec_t> none(world, nullptr);
      execs = none;
      run_threads(world, [&](int r) {
        cuda_throw(cudaSetDevice(w.devices[r]), "set device");
        cuda_throw(cudaStreamBeginCapture(w.streams[r], cudaStreamCaptureModeThreadLocal), "begin capture");
        cudaGraph_t g = nullptr;
        try {
          w.comms[r]->all_reduce(w.in[r], w.out[r], n1, t, w.streams[r], a);
          w.comms[r]->all_reduce(w.in[r] + 4096, w.in[r] + 4096, n2, t, w.streams[r], a);
        } catch (...) {
          cudaStreamEndCapture(w.streams[r], &g);  // leave the stream usable
          if (g) cudaGraphDestroy(g);
          throw;
        }
        cuda_throw(cudaStreamEndCapture(w.streams[r], &g), "end capture");
        cuda_throw(cudaGraphInstantiate(&execs[r], g, 0), "instantiate");
        cudaGraphDestroy(g);
      });
      if (::testing::Test::HasFailure()) return;
      for (int rep = 0; rep < 4; ++rep) {
        std::vector<std::vector<uint8_t>> h1(world), h2(world);
        for (int r = 0; r < world; ++r) {
          h1[r] = make_input(t, n1, 900 + rep * 10 + r);
          h2[r] = make_input(t, n2, 950 + rep * 10 + r);
          AR_CUDA_OK(cudaSetDevice(w.devices[r]));
          AR_CUDA_OK(cudaMemcpy(w.in[r], h1[r].data(), n1 * 2, cudaMemcpyHostToDevice));
          AR_CUDA_OK(cudaMemcpy(w.in[r] + 4096, h2[r].data(), n2 * 2, cudaMemcpyHostToDevice));
        }
        run_threads(world, [&](int r) {
          cuda_throw(cudaSetDevice(w.devices[r]), "set device");
          cuda_throw(cudaGraphLaunch(execs[r], w.streams[r]), "graph launch");
          w.comms[r]->synchronize(w.streams[r]);
        });
        if (::testing::Test::HasFailure()) return;
        auto ref1 = reference(Order::RankOrder, t, h1, n1), ref2 = reference(Order::RankOrder, t, h2, n2);
        for (int r = 0; r < world; ++r) {
          std::vector<uint8_t> g1(n1 * 2), g2(n2 * 2);
          AR_CUDA_OK(cudaSetDevice(w.devices[r]));
          AR_CUDA_OK(cudaMemcpy(g1.data(), w.out[r], n1 * 2, cudaMemcpyDeviceToHost));
          AR_CUDA_OK(cudaMemcpy(g2.data(), w.in[r] + 4096, n2 * 2, cudaMemcpyDeviceToHost));
          ASSERT_EQ(first_diff(g1.data(), ref1.data(), n1, 2), -1) << algo_name(a) << " world " << world << " rep " << rep;
          ASSERT_EQ(first_diff(g2.data(), ref2.data(), n2, 2), -1) << algo_name(a) << " world " << world << " rep " << rep;
        }
      }
      for (int r = 0; r < world; ++r) cudaGraphExecDestroy(execs[r]);
    }
  }
}

// A rank that never arrives: the others stop at the timeout with a clear error, no hang.
TEST(AllreduceGpu, MissingRankTimesOut) {
  World w(2, 1 << 20, test_options(300, false));
  auto t0 = std::chrono::steady_clock::now();
  w.comms[0]->all_reduce(w.in[0], w.out[0], 100000, DataType::F32, w.streams[0]);
  try {
    w.comms[0]->synchronize(w.streams[0]);
    FAIL() << "expected a timeout";
  } catch (const detinfer::Error& e) {
    EXPECT_NE(std::string(e.what()).find("timed out"), std::string::npos) << e.what();
    std::printf("[ timeout  ] %s\n", e.what());
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 10.0);
  EXPECT_THROW(w.comms[0]->all_reduce(w.in[0], w.out[0], 10, DataType::F32, w.streams[0]), detinfer::Error);
}

// Mismatched counts or types: caught on the GPU before anything is reduced, on every rank.
TEST(AllreduceGpu, MismatchedCallsReported) {
  for (int variant = 0; variant < 2; ++variant) {
    World w(2, 1 << 20, test_options(5000, false));
    std::vector<std::string> errs(2);
    run_threads(2, [&](int r) {
      size_t n = variant == 0 ? 1000 + r : 1000;
      DataType t = variant == 1 && r == 1 ? DataType::BF16 : DataType::F32;
      w.comms[r]->all_reduce(w.in[r], w.out[r], n, t, w.streams[r]);
      try {
        w.comms[r]->synchronize(w.streams[r]);
      } catch (const detinfer::Error& e) {
        errs[r] = e.what();
      }
    });
    for (int r = 0; r < 2; ++r) {
      EXPECT_NE(errs[r].find("mismatched"), std::string::npos) << "rank " << r << ": " << errs[r];
      if (r == 0) std::printf("[ mismatch ] %s\n", errs[r].c_str());
    }
  }
}

// Bad arguments throw before anything is launched, and the communicator stays usable.
TEST(AllreduceGpu, BadArgumentsRejectedBeforeLaunch) {
  World w(2, 1 << 20);
  Communicator& c = *w.comms[0];
  auto expect_error = [&](const std::function<void()>& f, const char* words) {
    try {
      f();
      ADD_FAILURE() << "expected an error containing '" << words << "'";
    } catch (const detinfer::Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  expect_error([&] { c.all_reduce(nullptr, w.out[0], 10, DataType::F32, w.streams[0]); }, "in is null");
  expect_error([&] { c.all_reduce(w.in[0], nullptr, 10, DataType::F32, w.streams[0]); }, "out is null");
  expect_error([&] { c.all_reduce(w.in[0] + 2, w.out[0], 10, DataType::F32, w.streams[0]); }, "not aligned");
  expect_error([&] { c.all_reduce(w.in[0], w.in[0] + 8, 10, DataType::F32, w.streams[0]); }, "overlap");
  expect_error([&] { c.all_reduce(w.in[0], w.out[0], (2 << 20) / 4, DataType::F32, w.streams[0]); }, "too small");
  std::vector<float> host(16);
  expect_error([&] { c.all_reduce(host.data(), w.out[0], 16, DataType::F32, w.streams[0]); }, "host memory");
  if (w.devices[1] != w.devices[0])
    expect_error([&] { c.all_reduce(w.in[1], w.out[0], 16, DataType::F32, w.streams[0]); }, "lives on GPU");
  expect_error([&] { c.all_reduce(w.in[0], w.out[0], 16, static_cast<DataType>(7), w.streams[0]); }, "data type");
  int gpus = 0;
  cudaGetDeviceCount(&gpus);
  if (gpus < 8) {
    // One rank more than there are GPUs, so two ranks share one: NCCL cannot take that. (With
    // world 3 on 4 GPUs NCCL could run, and rank 0's call would wait for ranks that never call.)
    World v(gpus + 1, 1 << 16);
    expect_error([&] { v.comms[0]->all_reduce(v.in[0], v.out[0], 16, DataType::F32, v.streams[0], Algo::NcclDet); },
                 "cannot run");
  }
  // Nothing ran, nothing is out of step: a good call still works on both ranks.
  run_case(w, DataType::F32, Algo::Auto, Order::RankOrder, 4097, 0, false, 4242);
}

// Selection: automatic by size and topology, overridable by the API and the environment, and
// every communicator reports that peer access was tested.
TEST(AllreduceGpu, SelectionAndOverrides) {
  World w(2, 1 << 16, test_options(20000, false));
  std::string why;
  EXPECT_EQ(w.comms[0]->select(1000, DataType::F32, &why), Algo::OneShot) << why;
  EXPECT_NE(w.comms[0]->describe().find("P2P kernels on"), std::string::npos) << w.comms[0]->describe();
  std::printf("[ describe ] %s\n", w.comms[0]->describe().c_str());
  Options o = test_options(20000, false);
  o.two_shot_bytes = 4096;
  World w2(2, 1 << 16, o);
  EXPECT_EQ(w2.comms[0]->select(1024, DataType::F32, &why), Algo::TwoShot) << why;
  EXPECT_EQ(w2.comms[0]->select(1023, DataType::F32, &why), Algo::OneShot) << why;
  setenv("DETINFER_AR_ALGO", "twoshot", 1);
  Options env_opts = Options::from_env();
  env_opts.nccl = false;
  World w3(2, 1 << 16, env_opts);
  unsetenv("DETINFER_AR_ALGO");
  EXPECT_EQ(w3.comms[0]->select(10, DataType::F32, &why), Algo::TwoShot) << why;
  World w4(4, 1 << 16);
  EXPECT_EQ(w4.comms[0]->select(1 << 20, DataType::F32, &why), Algo::TwoShot) << why;
}

// Plain NCCL at world size 2, for the record: a single addition commutes, so NCCL's bits match
// the reference here; the size dependence needs 3+ ranks (see the multi-process test).
TEST(AllreduceGpu, NcclBaselineWorld2) {
  World w(2, 4 << 20);
  if (!w.has(Algo::Nccl)) GTEST_SKIP() << "no NCCL";
  int64_t differing = 0, total = 0;
  for (int64_t n : {int64_t(1000), int64_t(65537), int64_t(1) << 20}) {
    std::vector<std::vector<uint8_t>> host(2);
    for (int r = 0; r < 2; ++r) {
      host[r] = make_input(DataType::BF16, n, 600 + n + r);
      AR_CUDA_OK(cudaSetDevice(w.devices[r]));
      AR_CUDA_OK(cudaMemcpy(w.in[r], host[r].data(), n * 2, cudaMemcpyHostToDevice));
    }
    run_threads(2, [&](int r) {
      w.comms[r]->all_reduce(w.in[r], w.out[r], n, DataType::BF16, w.streams[r], Algo::Nccl);
      w.comms[r]->synchronize(w.streams[r]);
    });
    auto ref = reference(Order::RankOrder, DataType::BF16, host, n);
    std::vector<uint8_t> got(n * 2);
    AR_CUDA_OK(cudaMemcpy(got.data(), w.out[1], n * 2, cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < n; ++i) differing += std::memcmp(&got[i * 2], &ref[i * 2], 2) != 0;
    total += n;
  }
  std::printf("[ nccl     ] world 2 bf16: %lld of %lld elements differ from the rank-order reference\n",
              static_cast<long long>(differing), static_cast<long long>(total));
}
