// All-reduce benchmark in the form of nccl-tests: for each type and size, every path side by
// side (time, algbw, busbw) plus whether its result is bitwise identical to the rank-order
// reference. One process, one host thread per rank. --json writes every number.
//
//   bench_allreduce [--world 2] [--dtypes f32,bf16,f16] [--min 1K] [--max 256M]
//                   [--paths nccl,nccl_det,oneshot,twoshot,auto] [--graph-max 256K]
//                   [--json FILE] [--no-check] [--blocks N] [--slot-kb K] [--ring R]
//                   [--two-shot-bytes B] [--sweep | --sweep-bw]   (tuning tables, see run_sweep)
//                   [--sweep-blocks 32,40] [--sweep-slots 128,256] [--sweep-rings 2,4]
//                   [--sweep-two-shot-only]
#include <cuda_runtime.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#ifdef DETINFER_HAVE_NCCL
#include <nccl.h>
#endif

#include "comm/allreduce.h"
#include "comm/emulate.h"
#include "common/error.h"

using namespace detinfer::comm;
using detinfer::cat;

namespace {

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) detinfer::fail(what, ": ", cudaGetErrorString(e));
}

int64_t parse_bytes(const std::string& s) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  std::string u = end ? end : "";
  int64_t m = u == "K" || u == "k" ? 1024 : u == "M" || u == "m" ? 1 << 20 : u == "G" || u == "g" ? 1ll << 30 : 1;
  return static_cast<int64_t>(v * m);
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t a = 0;
  while (a <= s.size()) {
    size_t b = s.find(',', a);
    if (b == std::string::npos) b = s.size();
    if (b > a) out.push_back(s.substr(a, b - a));
    a = b + 1;
  }
  return out;
}

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  int t = static_cast<int>(std::min<int64_t>(std::max(1u, std::thread::hardware_concurrency()), 1 + n / 65536));
  std::vector<std::thread> th;
  for (int i = 0; i < t; ++i) th.emplace_back(fn, n * i / t, n * (i + 1) / t);
  for (auto& x : th) x.join();
}

std::vector<uint8_t> make_input(DataType t, int64_t n, uint64_t seed) {
  std::vector<uint8_t> buf(static_cast<size_t>(n) * dtype_bytes(t));
  const int emin = t == DataType::F16 ? -8 : -20, span = t == DataType::F16 ? 13 : 33;
  parallel_for(n, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      uint64_t h = mix(seed * 0x100000001b3ull + static_cast<uint64_t>(i));
      float m = 1.0f + static_cast<float>((h >> 8) & 0xffffff) / 16777216.0f;
      emu::store_elem(t, buf.data(), i, std::ldexp(m, emin + static_cast<int>(h % span)) * (((h >> 40) & 1) ? -1.0f : 1.0f));
    }
  });
  return buf;
}

// A reusable barrier for the rank threads (std::barrier needs C++20, which older CMake cannot
// request from nvcc).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mu_);
    int gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen != gen_; });
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_, count_ = 0, gen_ = 0;
};

struct Args {
  int world = 2;
  std::vector<DataType> dtypes = {DataType::F32, DataType::BF16, DataType::F16};
  int64_t min_bytes = 1024, max_bytes = 256ll << 20;
  std::vector<std::string> paths = {"nccl", "nccl_det", "oneshot", "twoshot", "auto"};
  int64_t graph_max = 256 << 10;
  std::string json;
  bool check = true, sweep = false, sweep_bw = false, sweep_two_only = false;
  std::vector<int> sweep_blocks = {32, 40}, sweep_slots_kb = {128, 256}, sweep_rings = {2, 4};
  Options opts = Options::from_env();
  std::string command;
};

struct Rig {
  int N;
  std::vector<int> devices;
  std::vector<std::unique_ptr<Communicator>> comms;
  std::vector<cudaStream_t> streams;
  std::vector<uint8_t*> in, out;
  std::vector<cudaEvent_t> ev0, ev1;
  int64_t cap;
  Rig(int n, int64_t cap_bytes, const Options& o) : N(n), cap(cap_bytes) {
    int ndev = 0;
    ck(cudaGetDeviceCount(&ndev), "device count");
    for (int r = 0; r < n; ++r) devices.push_back(r % ndev);
    comms = Communicator::create_local(devices, o);
    for (int r = 0; r < N; ++r) {
      ck(cudaSetDevice(devices[r]), "set device");
      cudaStream_t s;
      ck(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
      streams.push_back(s);
      uint8_t *a, *b;
      ck(cudaMalloc(&a, cap), "alloc");
      ck(cudaMalloc(&b, cap), "alloc");
      in.push_back(a);
      out.push_back(b);
      cudaEvent_t e0, e1;
      ck(cudaEventCreate(&e0), "event");
      ck(cudaEventCreate(&e1), "event");
      ev0.push_back(e0);
      ev1.push_back(e1);
    }
  }
  ~Rig() {
    for (int r = 0; r < N; ++r) {
      cudaSetDevice(devices[r]);
      cudaStreamSynchronize(streams[r]);
      cudaFree(in[r]);
      cudaFree(out[r]);
      cudaEventDestroy(ev0[r]);
      cudaEventDestroy(ev1[r]);
      cudaStreamDestroy(streams[r]);
    }
  }

  // Runs fn(rank) on one thread per rank.
  void each(const std::function<void(int)>& fn) {
    std::vector<std::thread> th;
    std::vector<std::string> err(N);
    for (int r = 0; r < N; ++r)
      th.emplace_back([&, r] {
        try {
          ck(cudaSetDevice(devices[r]), "set device");
          fn(r);
        } catch (const std::exception& e) {
          err[r] = e.what();
        }
      });
    for (auto& t : th) t.join();
    for (int r = 0; r < N; ++r)
      if (!err[r].empty()) detinfer::fail("rank ", r, ": ", err[r]);
  }

  // Eager time per call (µs): back-to-back calls between two events, the slowest rank; the
  // median of three such loops (host-side jitter shows in eager launches of small messages).
  double time_eager(Algo a, DataType t, int64_t count, int iters, int warmup) {
    std::vector<double> reps;
    for (int rep = 0; rep < 3; ++rep) {
      std::vector<double> us(N);
      Barrier sync(N);
      each([&](int r) {
        for (int i = 0; i < warmup; ++i) comms[r]->all_reduce(in[r], out[r], count, t, streams[r], a);
        comms[r]->synchronize(streams[r]);
        sync.arrive_and_wait();
        ck(cudaEventRecord(ev0[r], streams[r]), "record");
        for (int i = 0; i < iters; ++i) comms[r]->all_reduce(in[r], out[r], count, t, streams[r], a);
        ck(cudaEventRecord(ev1[r], streams[r]), "record");
        comms[r]->synchronize(streams[r]);
        float ms = 0;
        ck(cudaEventElapsedTime(&ms, ev0[r], ev1[r]), "elapsed");
        us[r] = ms * 1000.0 / iters;
      });
      reps.push_back(*std::max_element(us.begin(), us.end()));
    }
    std::sort(reps.begin(), reps.end());
    return reps[1];
  }

  // Graph-replayed time per call (µs): `calls` calls captured in one graph, replayed.
  double time_graph(Algo a, DataType t, int64_t count, int calls, int replays) {
    std::vector<double> us(N);
    Barrier sync(N);
    each([&](int r) {
      ck(cudaStreamBeginCapture(streams[r], cudaStreamCaptureModeThreadLocal), "begin capture");
      for (int i = 0; i < calls; ++i) comms[r]->all_reduce(in[r], out[r], count, t, streams[r], a);
      cudaGraph_t g;
      ck(cudaStreamEndCapture(streams[r], &g), "end capture");
      cudaGraphExec_t x;
      ck(cudaGraphInstantiate(&x, g, 0), "instantiate");
      ck(cudaGraphLaunch(x, streams[r]), "warm replay");
      comms[r]->synchronize(streams[r]);
      sync.arrive_and_wait();
      ck(cudaEventRecord(ev0[r], streams[r]), "record");
      for (int i = 0; i < replays; ++i) ck(cudaGraphLaunch(x, streams[r]), "replay");
      ck(cudaEventRecord(ev1[r], streams[r]), "record");
      comms[r]->synchronize(streams[r]);
      float ms = 0;
      ck(cudaEventElapsedTime(&ms, ev0[r], ev1[r]), "elapsed");
      us[r] = ms * 1000.0 / (static_cast<double>(replays) * calls);
      cudaGraphExecDestroy(x);
      cudaGraphDestroy(g);
    });
    return *std::max_element(us.begin(), us.end());
  }

  void upload(const std::vector<std::vector<uint8_t>>& host) {
    each([&](int r) { ck(cudaMemcpy(in[r], host[r].data(), host[r].size(), cudaMemcpyHostToDevice), "upload"); });
  }

  // One call on the uploaded inputs; true if every rank's output equals ref bit for bit.
  bool bitwise(Algo a, DataType t, int64_t count, const std::vector<uint8_t>& ref) {
    std::vector<int> ok(N, 0);
    each([&](int r) {
      ck(cudaMemsetAsync(out[r], 0xEE, ref.size(), streams[r]), "poison");
      comms[r]->all_reduce(in[r], out[r], count, t, streams[r], a);
      comms[r]->synchronize(streams[r]);
      std::vector<uint8_t> got(ref.size());
      ck(cudaMemcpy(got.data(), out[r], ref.size(), cudaMemcpyDeviceToHost), "download");
      ok[r] = std::memcmp(got.data(), ref.data(), ref.size()) == 0;
    });
    return std::all_of(ok.begin(), ok.end(), [](int v) { return v; });
  }
};

int iters_for(int64_t bytes) { return static_cast<int>(std::clamp<int64_t>((1ll << 30) / std::max<int64_t>(bytes, 1), 8, 200)); }

std::string machine_json(nlohmann::json& j) {
  int n = 0;
  cudaGetDeviceCount(&n);
  cudaDeviceProp p{};
  cudaGetDeviceProperties(&p, 0);
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  j["gpu"] = p.name;
  j["gpus"] = n;
  j["sms"] = p.multiProcessorCount;
  j["cuda_driver"] = drv;
  j["cuda_runtime"] = rt;
#ifdef DETINFER_HAVE_NCCL
  int nv = 0;
  ncclGetVersion(&nv);
  j["nccl"] = nv;
#endif
  return cat(n, " x ", p.name, ", ", p.multiProcessorCount, " SMs, driver ", drv, ", runtime ", rt);
}

void run_sweep(Args& a) {
  const double f = 2.0 * (a.world - 1) / a.world;
  // Latency and crossover: the low-latency one-shot, the fenced-ring one-shot and two-shot,
  // eager (µs per call, fp32). Picks DETINFER_AR_LL_BYTES and DETINFER_AR_TWOSHOT_BYTES.
  std::printf("# sweep A: world %d, latency by protocol, fp32 (us per call)\n", a.world);
  std::printf("%10s %12s %12s %12s %12s %12s\n", "bytes", "ll_1shot", "ll_1shot_gr", "ring_1shot", "ring_1shot_gr",
              "ring_2shot");
  {
    Options ring = a.opts, ll = a.opts;
    ring.nccl = ll.nccl = false;
    ring.ll_bytes = 0;
    ll.ll_bytes = 4 << 20;
    Rig r0(a.world, 4 << 20, ring), r1(a.world, 4 << 20, ll);
    for (int64_t bytes = 1024; bytes <= (4 << 20); bytes *= 2) {
      const int64_t c = bytes / 4;
      const int it = iters_for(bytes);
      std::printf("%10lld %12.2f %12.2f %12.2f %12.2f %12.2f\n", static_cast<long long>(bytes),
                  r1.time_eager(Algo::OneShot, DataType::F32, c, it, 5), r1.time_graph(Algo::OneShot, DataType::F32, c, 20, 5),
                  r0.time_eager(Algo::OneShot, DataType::F32, c, it, 5), r0.time_graph(Algo::OneShot, DataType::F32, c, 20, 5),
                  r0.time_eager(Algo::TwoShot, DataType::F32, c, it, 5));
      std::fflush(stdout);
    }
  }
  if (!a.sweep_bw) return;
  // Bandwidth: blocks per role x slot x ring depth (lists from --sweep-blocks/-slots/-rings).
  std::printf("# sweep B: world %d, blocks/role x slot x ring, one-shot and two-shot, fp32\n", a.world);
  std::printf("%6s %7s %5s %10s %12s %12s %12s %12s\n", "blocks", "slot_kb", "ring", "bytes", "1shot_us", "1shot_busbw",
              "2shot_us", "2shot_busbw");
  for (int blocks : a.sweep_blocks)
    for (int slot_kb : a.sweep_slots_kb)
      for (int ring : a.sweep_rings) {
        Options o = a.opts;
        o.nccl = false;
        o.blocks = blocks;
        o.slot_bytes = slot_kb * 1024;
        o.ring_depth = ring;
        Rig rig(a.world, 256ll << 20, o);
        for (int64_t bytes : {int64_t(4) << 20, int64_t(16) << 20, int64_t(64) << 20, int64_t(256) << 20}) {
          const int64_t count = bytes / 4;
          double t1 = a.sweep_two_only ? 0.0 : rig.time_eager(Algo::OneShot, DataType::F32, count, iters_for(bytes), 3);
          double t2 = rig.time_eager(Algo::TwoShot, DataType::F32, count, iters_for(bytes), 3);
          std::printf("%6d %7d %5d %10lld %12.2f %12.2f %12.2f %12.2f\n", blocks, slot_kb, ring, static_cast<long long>(bytes),
                      t1, t1 > 0 ? bytes / t1 / 1e3 * f : 0.0, t2, bytes / t2 / 1e3 * f);
        }
        std::fflush(stdout);
      }
}

std::vector<int> parse_ints(const std::string& s) {
  std::vector<int> v;
  for (const auto& x : split(s)) v.push_back(std::stoi(x));
  DETINFER_CHECK(!v.empty(), "empty list: ", s);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args a;
    for (int i = 0; i < argc; ++i) a.command += (i ? " " : "") + std::string(argv[i]);
    for (int i = 1; i < argc; ++i) {
      std::string k = argv[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= argc) detinfer::fail("missing value after ", k);
        return argv[++i];
      };
      if (k == "--world") a.world = std::stoi(next());
      else if (k == "--dtypes") {
        a.dtypes.clear();
        for (auto& s : split(next())) a.dtypes.push_back(parse_dtype(s));
      } else if (k == "--min") a.min_bytes = parse_bytes(next());
      else if (k == "--max") a.max_bytes = parse_bytes(next());
      else if (k == "--paths") a.paths = split(next());
      else if (k == "--graph-max") a.graph_max = parse_bytes(next());
      else if (k == "--json") a.json = next();
      else if (k == "--no-check") a.check = false;
      else if (k == "--sweep") a.sweep = true;
      else if (k == "--sweep-bw") a.sweep = a.sweep_bw = true;
      else if (k == "--sweep-blocks") a.sweep_blocks = parse_ints(next());
      else if (k == "--sweep-slots") a.sweep_slots_kb = parse_ints(next());
      else if (k == "--sweep-rings") a.sweep_rings = parse_ints(next());
      else if (k == "--sweep-two-shot-only") a.sweep_two_only = true;
      else if (k == "--blocks") a.opts.blocks = std::stoi(next());
      else if (k == "--slot-kb") a.opts.slot_bytes = std::stoll(next()) * 1024;
      else if (k == "--ring") a.opts.ring_depth = std::stoi(next());
      else if (k == "--two-shot-bytes") a.opts.two_shot_bytes = parse_bytes(next());
      else if (k == "-h" || k == "--help") {
        std::printf("see the comment at the top of bench/cuda/allreduce.cu\n");
        return 0;
      } else detinfer::fail("unknown option ", k);
    }
    a.opts.algo = Algo::Auto;
    nlohmann::json doc;
    std::string machine = machine_json(doc["machine"]);
    doc["command"] = a.command;
    doc["world"] = a.world;
    std::printf("# %s\n# machine: %s\n", a.command.c_str(), machine.c_str());
    if (a.sweep) {
      run_sweep(a);
      return 0;
    }
    Rig rig(a.world, a.max_bytes, a.opts);
    std::printf("# %s\n", rig.comms[0]->describe().c_str());
    std::vector<std::pair<std::string, Algo>> paths;
    for (auto& p : a.paths) {
      Algo al = parse_algo(p);
      std::string why;
      if (!rig.comms[0]->available(al, &why)) {
        std::printf("# path %s skipped: %s\n", p.c_str(), why.c_str());
        continue;
      }
      paths.emplace_back(algo_name(al), al);
    }
    const double busf = 2.0 * (a.world - 1) / a.world;
    nlohmann::json rows = nlohmann::json::array();
    for (DataType t : a.dtypes) {
      const int es = dtype_bytes(t);
      std::printf("\n# %s, world %d: time in us, algbw and busbw in GB/s, bit = bitwise equal to the rank-order reference; "
                  "graph = us per call replayed from a CUDA graph\n",
                  dtype_name(t), a.world);
      std::printf("%12s %11s %5s", "size", "count", "type");
      for (auto& p : paths) std::printf(" | %-8s %9s %7s %7s %3s", p.first.c_str(), "time", "algbw", "busbw", "bit");
      std::printf(" | graph:");
      for (auto& p : paths) std::printf(" %8s", p.first.c_str());
      std::printf("\n");
      for (int64_t bytes = a.min_bytes; bytes <= a.max_bytes; bytes *= 2) {
        const int64_t count = bytes / es;
        std::vector<uint8_t> ref;
        if (a.check) {
          std::vector<std::vector<uint8_t>> host(a.world);
          for (int r = 0; r < a.world; ++r) host[r] = make_input(t, count, bytes * 10 + r);
          ref.assign(count * es, 0);
          parallel_for(count, [&](int64_t lo, int64_t hi) {
            std::vector<const void*> p;
            for (auto& h : host) p.push_back(h.data() + lo * es);
            emu::reference(Order::RankOrder, t, p, ref.data() + lo * es, hi - lo);
          });
          rig.upload(host);
        }
        std::printf("%12lld %11lld %5s", static_cast<long long>(bytes), static_cast<long long>(count), dtype_name(t));
        std::vector<double> graph_us;
        for (auto& p : paths) {
          bool bit = a.check ? rig.bitwise(p.second, t, count, ref) : false;
          double us = rig.time_eager(p.second, t, count, iters_for(bytes), 5);
          double algbw = bytes / us / 1e3;
          double g = bytes <= a.graph_max ? rig.time_graph(p.second, t, count, 20, 20) : -1;
          graph_us.push_back(g);
          std::printf(" | %-8s %9.2f %7.2f %7.2f %3s", "", us, algbw, algbw * busf, a.check ? (bit ? "yes" : "NO") : "-");
          rows.push_back({{"dtype", dtype_name(t)},
                          {"bytes", bytes},
                          {"count", count},
                          {"path", p.first},
                          {"time_us", us},
                          {"algbw_gbs", algbw},
                          {"busbw_gbs", algbw * busf},
                          {"bitwise", a.check ? nlohmann::json(bit) : nlohmann::json(nullptr)},
                          {"graph_us", g >= 0 ? nlohmann::json(g) : nlohmann::json(nullptr)}});
        }
        std::printf(" |       ");
        for (double g : graph_us)
          if (g >= 0) std::printf(" %8.2f", g);
          else std::printf(" %8s", "-");
        std::printf("\n");
        std::fflush(stdout);
      }
    }
    doc["results"] = rows;
    if (!a.json.empty()) {
      std::ofstream f(a.json);
      f << doc.dump(1) << "\n";
      std::printf("# wrote %s\n", a.json.c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_allreduce: %s\n", e.what());
    return 1;
  }
}
