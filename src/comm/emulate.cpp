#include "comm/emulate.h"

#include <barrier>
#include <chrono>
#include <cstring>
#include <thread>

#include "comm/order.h"
#include "comm/plan.h"
#include "common/error.h"
#include "common/half.h"

namespace detinfer::comm::emu {

float load_elem(DataType t, const void* base, int64_t i) {
  switch (t) {
    case DataType::F32: {
      float f;
      std::memcpy(&f, static_cast<const char*>(base) + i * 4, 4);
      return f;
    }
    case DataType::BF16: {
      uint16_t h;
      std::memcpy(&h, static_cast<const char*>(base) + i * 2, 2);
      return bf16_to_f32(h);
    }
    case DataType::F16: {
      uint16_t h;
      std::memcpy(&h, static_cast<const char*>(base) + i * 2, 2);
      return f16_to_f32(h);
    }
  }
  return 0.0f;
}

void store_elem(DataType t, void* base, int64_t i, float v) {
  switch (t) {
    case DataType::F32: std::memcpy(static_cast<char*>(base) + i * 4, &v, 4); break;
    case DataType::BF16: {
      uint16_t h = f32_to_bf16(v);
      std::memcpy(static_cast<char*>(base) + i * 2, &h, 2);
      break;
    }
    case DataType::F16: {
      uint16_t h = f32_to_f16(v);
      std::memcpy(static_cast<char*>(base) + i * 2, &h, 2);
      break;
    }
  }
}

void reference(Order order, DataType dtype, const std::vector<const void*>& in, void* out, int64_t count) {
  int n = static_cast<int>(in.size());
  DETINFER_CHECK(n >= 1 && n <= kMaxRanks, "reference: world size ", n, " outside [1, ", kMaxRanks, "]");
  for (int64_t i = 0; i < count; ++i) {
    float v[kMaxRanks] = {};
    for (int q = 0; q < n; ++q) v[q] = load_elem(dtype, in[q], i);
    store_elem(dtype, out, i, reduce_values(order, v, n));
  }
}

void ring_model(DataType dtype, const std::vector<const void*>& in, void* out, int64_t count) {
  int n = static_cast<int>(in.size());
  int64_t chunk = (count + n - 1) / n;
  for (int64_t i = 0; i < count; ++i) {
    int c = static_cast<int>(i / chunk);
    // Reduce-scatter: chunk c starts at rank c and travels the ring c, c+1, ..., each hop adding
    // its own value to what it received and storing the sum in the data type.
    float acc = load_elem(dtype, in[c], i);
    for (int hop = 1; hop < n; ++hop) {
      float sum = acc + load_elem(dtype, in[(c + hop) % n], i);
      char tmp[4];
      store_elem(dtype, tmp, 0, sum);
      acc = load_elem(dtype, tmp, 0);
    }
    store_elem(dtype, out, i, acc);
  }
}

// One rank's memory, laid out like the GPU's registered region.
struct World::Rank {
  int G, N, R;
  int64_t slot_bytes, ll_lines;
  std::unique_ptr<std::atomic<uint64_t>[]> d_ready, d_credit, a_ready, a_credit;  // [G][N]
  std::vector<uint64_t> d_meta;                                                  // [G][N][R]
  std::vector<uint8_t> d_data, a_data;                                           // [G][N][R][slot]
  std::vector<uint64_t> push_d, red_d, red_a, gat_a, ll_t;                       // role counters [G]
  // Low-latency lines [2][N][G + ll_lines], each two 64-bit halves {payload32 | epoch32 << 32}:
  // as on the GPU, a half is written and read whole, so its epoch vouches for its payload.
  std::unique_ptr<std::atomic<uint64_t>[]> ll;
  std::atomic<int> err{kOk};

  Rank(int g, int n, int r, int64_t sb, int64_t llb) : G(g), N(n), R(r), slot_bytes(sb), ll_lines((llb + 7) / 8) {
    auto counters = [&](size_t k) {
      auto p = std::make_unique<std::atomic<uint64_t>[]>(k);
      for (size_t i = 0; i < k; ++i) p[i].store(0);
      return p;
    };
    d_ready = counters(static_cast<size_t>(G) * N);
    d_credit = counters(static_cast<size_t>(G) * N);
    a_ready = counters(static_cast<size_t>(G) * N);
    a_credit = counters(static_cast<size_t>(G) * N);
    ll = counters(2ull * N * (G + ll_lines) * 2);
    d_meta.assign(static_cast<size_t>(G) * N * R, 0);
    d_data.assign(static_cast<size_t>(G) * N * R * slot_bytes, 0);
    a_data.assign(static_cast<size_t>(G) * N * R * slot_bytes, 0);
    push_d.assign(G, 0);
    red_d.assign(G, 0);
    red_a.assign(G, 0);
    gat_a.assign(G, 0);
    ll_t.assign(G, 0);
  }
  std::atomic<uint64_t>& at(std::unique_ptr<std::atomic<uint64_t>[]>& c, int b, int q) { return c[b * N + q]; }
  uint8_t* dslot(int b, int q, uint64_t t) { return d_data.data() + ((static_cast<size_t>(b) * N + q) * R + t % R) * slot_bytes; }
  uint8_t* aslot(int b, int q, uint64_t t) { return a_data.data() + ((static_cast<size_t>(b) * N + q) * R + t % R) * slot_bytes; }
  uint64_t& meta(int b, int q, uint64_t t) { return d_meta[(static_cast<size_t>(b) * N + q) * R + t % R]; }
  std::atomic<uint64_t>* line(uint32_t par, int src, int64_t idx) {
    return &ll[(((static_cast<size_t>(par) * N + src) * (G + ll_lines)) + idx) * 2];
  }
};

namespace {

struct Call {
  Algo algo;
  Order order;
  DataType dtype;
  int esize;
  Plan plan;
  uint64_t meta;
  const void* in;
  void* out;
  bool ll;
};

// Spin until c >= target (acquire), the rank records an error, or the timeout passes.
bool wait_geq(std::atomic<uint64_t>& c, uint64_t target, World::Rank& me, int64_t timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (uint32_t it = 0;; ++it) {
    if (c.load(std::memory_order_acquire) >= target) return true;
    if (me.err.load(std::memory_order_relaxed) != kOk) return false;
    if ((it & 63) == 0 && std::chrono::steady_clock::now() > deadline) {
      int expected = kOk;
      me.err.compare_exchange_strong(expected, kTimeout);
      return false;
    }
    std::this_thread::yield();
  }
}

// Spin until both halves of a low-latency line carry epoch e; returns the two payload words.
bool wait_line(std::atomic<uint64_t>* l, uint32_t e, World::Rank& me, int64_t timeout_ms, uint32_t* p0, uint32_t* p1) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (uint32_t it = 0;; ++it) {
    uint64_t a = l[0].load(std::memory_order_relaxed), b = l[1].load(std::memory_order_relaxed);
    if ((a >> 32) == e && (b >> 32) == e) {
      *p0 = static_cast<uint32_t>(a);
      *p1 = static_cast<uint32_t>(b);
      return true;
    }
    if (me.err.load(std::memory_order_relaxed) != kOk) return false;
    if ((it & 63) == 0 && std::chrono::steady_clock::now() > deadline) {
      int expected = kOk;
      me.err.compare_exchange_strong(expected, kTimeout);
      return false;
    }
    std::this_thread::yield();
  }
}

void raise(World::Rank& me, int code) {
  int expected = kOk;
  me.err.compare_exchange_strong(expected, code);
}

// 8 bytes of a message at line i, zero past the end (the GPU's payload packing).
void ll_payload(const void* base, int64_t i, int64_t nbytes, uint32_t* p0, uint32_t* p1) {
  uint8_t b[8] = {};
  int64_t take = std::min<int64_t>(8, nbytes - i * 8);
  std::memcpy(b, static_cast<const uint8_t*>(base) + i * 8, take);
  std::memcpy(p0, b, 4);
  std::memcpy(p1, b + 4, 4);
}

}  // namespace

World::World(int nranks, const Config& cfg) : n_(nranks), cfg_(cfg) {
  DETINFER_CHECK(nranks >= 1 && nranks <= kMaxRanks, "emulated world size ", nranks, " outside [1, ", kMaxRanks, "]");
  DETINFER_CHECK(cfg.blocks >= 1 && cfg.ring_depth >= 1 && cfg.slot_bytes >= 16 && cfg.slot_bytes % 16 == 0 &&
                     cfg.ll_bytes >= 0,
                 "emulated all-reduce: bad config (blocks ", cfg.blocks, ", ring ", cfg.ring_depth, ", slot ",
                 cfg.slot_bytes, ")");
  for (int r = 0; r < nranks; ++r)
    ranks_.push_back(std::make_unique<Rank>(cfg.blocks, nranks, cfg.ring_depth, cfg.slot_bytes, cfg.ll_bytes));
}

World::~World() = default;

std::vector<int> World::run(const std::vector<CallSpec>& specs) {
  const int N = n_, G = cfg_.blocks, R = cfg_.ring_depth;
  const int64_t timeout = cfg_.timeout_ms;
  auto& rk = ranks_;
  // calls[c][r]: rank r's view of call c.
  std::vector<std::vector<Call>> calls(specs.size(), std::vector<Call>(N));
  for (size_t c = 0; c < specs.size(); ++c) {
    const CallSpec& sp = specs[c];
    DETINFER_CHECK(static_cast<int>(sp.in.size()) == N && static_cast<int>(sp.out.size()) == N &&
                       static_cast<int>(sp.counts.size()) == N,
                   "emulated all-reduce: need one input, output and count per rank");
    DETINFER_CHECK(sp.algo == Algo::OneShot || sp.algo == Algo::TwoShot, "emulated run(): one-shot or two-shot only");
    const int esize = dtype_bytes(sp.dtype), V = 16 / esize;
    for (int r = 0; r < N; ++r)
      calls[c][r] = Call{sp.algo,
                         sp.order,
                         sp.dtype,
                         esize,
                         make_plan(sp.counts[r], N, sp.algo == Algo::TwoShot, G, cfg_.slot_bytes / esize, V),
                         call_meta(sp.counts[r], sp.dtype, sp.algo, sp.order),
                         sp.in[r],
                         sp.out[r],
                         sp.algo == Algo::OneShot && sp.counts[r] * esize <= cfg_.ll_bytes};
  }

  auto pusher = [&](int me, int b, const Call& c) {
    Rank& m = *rk[me];
    const bool two = c.algo == Algo::TwoShot;
    const int64_t steps = c.plan.steps(b);
    const uint64_t t0 = m.push_d[b];
    for (int64_t k = 0; k < steps; ++k) {
      uint64_t t = t0 + k;
      int64_t j = c.plan.chunk(b, k);
      // The slot we are about to fill in rank p was last used R steps ago: p must have read it.
      for (int p = 0; p < N; ++p)
        if (p != me && t + 1 > static_cast<uint64_t>(R) && !wait_geq(m.at(m.d_credit, b, p), t + 1 - R, m, timeout))
          return;
      for (int p = 0; p < N; ++p) {
        if (p == me) continue;
        Rank& dst = *rk[p];
        int64_t lo, hi;
        c.plan.range(two ? p : 0, j, &lo, &hi);
        if (hi > lo) std::memcpy(dst.dslot(b, me, t), static_cast<const char*>(c.in) + lo * c.esize, (hi - lo) * c.esize);
        dst.meta(b, me, t) = c.meta;
      }
      // Ready for every rank, ourselves included: our own reducer must not overwrite an in-place
      // input before we have sent it.
      for (int p = 0; p < N; ++p) rk[p]->at(rk[p]->d_ready, b, me).store(t + 1, std::memory_order_release);
    }
    m.push_d[b] = t0 + steps;
  };

  auto reducer = [&](int me, int b, const Call& c) {
    Rank& m = *rk[me];
    const bool two = c.algo == Algo::TwoShot;
    const int64_t steps = c.plan.steps(b);
    const uint64_t t0 = m.red_d[b], ta0 = m.red_a[b];
    for (int64_t k = 0; k < steps; ++k) {
      uint64_t t = t0 + k, ta = ta0 + k;
      int64_t j = c.plan.chunk(b, k);
      // Credits for every slot read before step t, sent at the top of the next step (or call).
      for (int q = 0; q < N; ++q)
        if (q != me && t > 0) rk[q]->at(rk[q]->d_credit, b, me).store(t, std::memory_order_release);
      for (int q = 0; q < N; ++q)
        if (!wait_geq(m.at(m.d_ready, b, q), t + 1, m, timeout)) return;
      if (two)
        for (int p = 0; p < N; ++p)
          if (p != me && ta + 1 > static_cast<uint64_t>(R) && !wait_geq(m.at(m.a_credit, b, p), ta + 1 - R, m, timeout))
            return;
      for (int q = 0; q < N; ++q)
        if (q != me && m.meta(b, q, t) != c.meta) {
          raise(m, kMismatch);
          return;
        }
      int64_t lo, hi;
      c.plan.range(two ? me : 0, j, &lo, &hi);
      for (int64_t i = lo; i < hi; ++i) {
        float v[kMaxRanks] = {};
        for (int q = 0; q < N; ++q)
          v[q] = q == me ? load_elem(c.dtype, c.in, i) : load_elem(c.dtype, m.dslot(b, q, t), i - lo);
        float s = reduce_values(c.order, v, N);
        store_elem(c.dtype, c.out, i, s);
        if (two)
          for (int p = 0; p < N; ++p)
            if (p != me) store_elem(c.dtype, rk[p]->aslot(b, me, ta), i - lo, s);
      }
      if (two)
        for (int p = 0; p < N; ++p)
          if (p != me) rk[p]->at(rk[p]->a_ready, b, me).store(ta + 1, std::memory_order_release);
    }
    m.red_d[b] = t0 + steps;
    if (two) m.red_a[b] = ta0 + steps;
  };

  auto gatherer = [&](int me, int b, const Call& c) {
    Rank& m = *rk[me];
    const int64_t steps = c.plan.steps(b);
    const uint64_t ta0 = m.gat_a[b];
    for (int64_t k = 0; k < steps; ++k) {
      uint64_t ta = ta0 + k;
      int64_t j = c.plan.chunk(b, k);
      for (int s = 0; s < N; ++s)
        if (s != me && ta > 0) rk[s]->at(rk[s]->a_credit, b, me).store(ta, std::memory_order_release);
      for (int s = 0; s < N; ++s)
        if (s != me && !wait_geq(m.at(m.a_ready, b, s), ta + 1, m, timeout)) return;
      for (int s = 0; s < N; ++s) {
        if (s == me) continue;
        int64_t lo, hi;
        c.plan.range(s, j, &lo, &hi);
        if (hi > lo) std::memcpy(static_cast<char*>(c.out) + lo * c.esize, m.aslot(b, s, ta), (hi - lo) * c.esize);
      }
    }
    m.gat_a[b] = ta0 + steps;
  };

  // The low-latency one-shot, block b of rank me (see kernels.cu for why two parities suffice).
  auto ll_block = [&](int me, int b, const Call& c) {
    Rank& m = *rk[me];
    const uint64_t cnt = m.ll_t[b] + 1;
    const uint32_t e = static_cast<uint32_t>(cnt % 0xffffffffull) + 1, par = static_cast<uint32_t>(cnt & 1);
    const int64_t nbytes = c.plan.n * c.esize, nlines = (nbytes + 7) / 8;
    const uint64_t tag = static_cast<uint64_t>(e) << 32;
    for (int q = 0; q < N; ++q) {
      if (q == me) continue;
      std::atomic<uint64_t>* h = rk[q]->line(par, me, b);
      h[0].store((c.meta & 0xffffffffu) | tag, std::memory_order_relaxed);
      h[1].store((c.meta >> 32) | tag, std::memory_order_relaxed);
      for (int64_t i = b; i < nlines; i += G) {
        uint32_t p0, p1;
        ll_payload(c.in, i, nbytes, &p0, &p1);
        std::atomic<uint64_t>* l = rk[q]->line(par, me, G + i);
        l[0].store(p0 | tag, std::memory_order_relaxed);
        l[1].store(p1 | tag, std::memory_order_relaxed);
      }
    }
    for (int q = 0; q < N; ++q) {
      if (q == me) continue;
      uint32_t lo, hi;
      if (!wait_line(m.line(par, q, b), e, m, timeout, &lo, &hi)) return;
      if ((static_cast<uint64_t>(hi) << 32 | lo) != c.meta) {
        raise(m, kMismatch);
        return;
      }
    }
    for (int64_t i = b; i < nlines; i += G) {
      uint8_t words[kMaxRanks][8];
      for (int q = 0; q < N; ++q) {
        uint32_t p0, p1;
        if (q == me) ll_payload(c.in, i, nbytes, &p0, &p1);
        else if (!wait_line(m.line(par, q, G + i), e, m, timeout, &p0, &p1)) return;
        std::memcpy(words[q], &p0, 4);
        std::memcpy(words[q] + 4, &p1, 4);
      }
      for (int k = 0; k < 8 / c.esize && i * 8 + (k + 1) * c.esize <= nbytes; ++k) {
        float v[kMaxRanks] = {};
        for (int q = 0; q < N; ++q) v[q] = load_elem(c.dtype, words[q], k);
        store_elem(c.dtype, static_cast<uint8_t*>(c.out) + i * 8, k, reduce_values(c.order, v, N));
      }
    }
    m.ll_t[b] = cnt;
  };

  // Per rank: G blocks of each role; all of a rank's threads meet after every call (the kernel
  // boundary of a stream), ranks do not wait for each other between calls.
  std::vector<std::unique_ptr<std::barrier<>>> rank_sync;
  for (int r = 0; r < N; ++r) rank_sync.push_back(std::make_unique<std::barrier<>>(3 * G));
  std::vector<std::thread> threads;
  for (int r = 0; r < N; ++r)
    for (int b = 0; b < G; ++b)
      for (int role = 0; role < 3; ++role)
        threads.emplace_back([&, r, b, role] {
          for (size_t ci = 0; ci < calls.size(); ++ci) {
            const Call& c = calls[ci][r];
            if (rk[r]->err.load() == kOk) {
              if (c.ll) {
                if (role == 0) ll_block(r, b, c);
              } else if (role == 0) {
                pusher(r, b, c);
              } else if (role == 1) {
                reducer(r, b, c);
              } else if (c.algo == Algo::TwoShot) {
                gatherer(r, b, c);
              }
            }
            rank_sync[r]->arrive_and_wait();
          }
        });
  for (auto& t : threads) t.join();
  std::vector<int> errs(N);
  for (int r = 0; r < N; ++r) errs[r] = rk[r]->err.load();
  return errs;
}

std::vector<int> World::all_reduce(Algo algo, Order order, DataType dtype, const std::vector<const void*>& in,
                                   const std::vector<void*>& out, const std::vector<int64_t>& counts) {
  DETINFER_CHECK(static_cast<int>(in.size()) == n_ && static_cast<int>(out.size()) == n_ &&
                     static_cast<int>(counts.size()) == n_,
                 "emulated all-reduce: need one input, output and count per rank");
  DETINFER_CHECK(algo == Algo::OneShot || algo == Algo::TwoShot || algo == Algo::NcclDet,
                 "emulated all-reduce: algorithm ", static_cast<int>(algo), " is not emulated");
  if (algo != Algo::NcclDet) return run({CallSpec{algo, order, dtype, in, out, counts}});
  // send/recv of slices, a local sum in rank order, all-gather: the NCCL-based path's order.
  const int N = n_;
  const int esize = dtype_bytes(dtype);
  for (int r = 1; r < N; ++r)
    DETINFER_CHECK(counts[r] == counts[0], "emulated NCCL-based path: counts differ across ranks");
  int64_t n = counts[0];
  int64_t L = (n + N - 1) / N;
  std::vector<std::vector<uint8_t>> scratch(N, std::vector<uint8_t>(static_cast<size_t>(N * L) * esize));
  std::vector<std::vector<uint8_t>> gathered(N, std::vector<uint8_t>(static_cast<size_t>(N * L) * esize));
  std::barrier sync(N);
  auto rank_fn = [&](int me) {
    for (int p = 0; p < N; ++p) {  // "ncclSend" slice p to rank p, landing in its scratch[me]
      int64_t lo = std::min<int64_t>(p * L, n), hi = std::min<int64_t>(lo + L, n);
      if (hi > lo) std::memcpy(scratch[p].data() + static_cast<size_t>(me * L) * esize,
                               static_cast<const char*>(in[me]) + lo * esize, (hi - lo) * esize);
    }
    sync.arrive_and_wait();
    int64_t lo = std::min<int64_t>(me * L, n), hi = std::min<int64_t>(lo + L, n);
    for (int64_t i = lo; i < hi; ++i) {
      float v[kMaxRanks] = {};
      for (int q = 0; q < N; ++q) v[q] = load_elem(dtype, scratch[me].data(), q * L + (i - lo));
      store_elem(dtype, gathered[me].data(), i, reduce_values(order, v, N));
    }
    sync.arrive_and_wait();
    for (int s = 0; s < N; ++s) {  // "ncclAllGather"
      int64_t a = std::min<int64_t>(s * L, n), e = std::min<int64_t>(a + L, n);
      if (e > a) std::memcpy(static_cast<char*>(out[me]) + a * esize, gathered[s].data() + a * esize, (e - a) * esize);
    }
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < N; ++r) threads.emplace_back(rank_fn, r);
  for (auto& t : threads) t.join();
  return std::vector<int>(N, kOk);
}

void World::all_reduce(Algo algo, Order order, DataType dtype, const std::vector<const void*>& in,
                       const std::vector<void*>& out, int64_t count) {
  auto errs = all_reduce(algo, order, dtype, in, out, std::vector<int64_t>(n_, count));
  for (int r = 0; r < n_; ++r)
    DETINFER_CHECK(errs[r] == kOk, "emulated all-reduce: rank ", r, " reported ",
                   errs[r] == kTimeout ? "a timeout" : "mismatched calls");
}

}  // namespace detinfer::comm::emu
