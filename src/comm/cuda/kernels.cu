// The deterministic all-reduce kernels. One launch runs three roles, each on G blocks:
//   push:   copies this rank's chunks into the peers' ring slots (NVLink stores), then
//           publishes the step with a release store of the slot's ready counter;
//   reduce: waits for every rank's chunk (and its own push, so an in-place input is sent
//           before it is overwritten), checks the call metadata, sums each element in the
//           canonical order (order.h), writes the output and returns the slots (credits);
//           in two-shot it sums only its own slice and pushes the result to every peer;
//   gather: (two-shot) copies the other slices' results out of its gather ring.
// Rings of R slots per (block, peer) let a message of any size stream through a fixed
// registered buffer; the counters only grow, so no flag is ever reset and CUDA graph replays
// continue the sequence. Every wait checks a %globaltimer deadline and the rank's error word.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "comm/cuda/kernels.h"
#include "comm/order.h"

namespace detinfer::comm::cuda {
namespace {

// ---- memory-model primitives ---------------------------------------------------------------
__device__ __forceinline__ uint64_t ld_acquire(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ uint32_t* err_word(const KernelArgs& a) {
  return reinterpret_cast<uint32_t*>(a.base[a.me] + a.lay.err);
}
__device__ __forceinline__ bool has_error(const KernelArgs& a) {
  return *reinterpret_cast<volatile uint32_t*>(err_word(a)) != 0;
}
__device__ __forceinline__ uint64_t* counter(uint8_t* base, uint64_t off, int b, int q) {
  return reinterpret_cast<uint64_t*>(base + off) + b * kMaxRanks + q;
}
__device__ __forceinline__ uint64_t slot_off(const Layout& l, uint64_t ring, int b, int q, uint64_t step) {
  return ring + ((static_cast<uint64_t>(b) * l.N + q) * l.R + step % l.R) * l.slot_bytes;
}
// a.base[q] for a run-time q without dynamic indexing into the parameter block.
__device__ __forceinline__ uint8_t* base_of(const KernelArgs& a, int q) {
  uint8_t* p = nullptr;
  DETINFER_UNROLL
  for (int i = 0; i < kMaxRanks; ++i)
    if (i == q) p = a.base[i];
  return p;
}

__device__ __noinline__ void raise_error(const KernelArgs& a, uint32_t code, int role, int b, int peer, uint64_t step,
                                         uint64_t expected, uint64_t got) {
  if (atomicCAS(err_word(a), 0u, code) == 0u) {
    ErrorInfo* h = a.host_err;
    h->rank = a.me;
    h->role = role;
    h->block = b;
    h->peer = peer;
    h->step = step;
    h->expected = expected;
    h->got = got;
    __threadfence_system();
    *reinterpret_cast<volatile uint32_t*>(&h->code) = code;
    __threadfence_system();
  }
}

// One thread waits until *p >= target. False (and the error recorded) on timeout, or when another
// block of this rank has already failed.
__device__ __noinline__ bool wait_geq(const KernelArgs& a, const uint64_t* p, uint64_t target, int role, int b, int peer,
                                      uint64_t step) {
  if (ld_acquire(p) >= target) return true;
  const uint64_t start = global_ns();
  for (uint32_t it = 1;; ++it) {
    if (ld_acquire(p) >= target) return true;
    if ((it & 15) == 0) {
      if (has_error(a)) return false;
      if (global_ns() - start > a.timeout_ns) {
        raise_error(a, kErrTimeout, role, b, peer, step, target, ld_acquire(p));
        return false;
      }
      if (it > 4096) __nanosleep(200);
    }
  }
}

// ---- element conversion ---------------------------------------------------------------------
template <DataType DT>
struct Elem;
template <>
struct Elem<DataType::F32> {
  using T = unsigned int;
  static constexpr int kBytes = 4;
  __device__ static float to_f(T x) { return __uint_as_float(x); }
  __device__ static T from_f(float f) { return __float_as_uint(f); }
};
template <>
struct Elem<DataType::BF16> {
  using T = unsigned short;
  static constexpr int kBytes = 2;
  __device__ static float to_f(T x) { return __uint_as_float(static_cast<uint32_t>(x) << 16); }
  __device__ static T from_f(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
};
template <>
struct Elem<DataType::F16> {
  using T = unsigned short;
  static constexpr int kBytes = 2;
  __device__ static float to_f(T x) { return __half2float(__ushort_as_half(x)); }
  __device__ static T from_f(float f) { return __half_as_ushort(__float2half_rn(f)); }
};

template <DataType DT>
__device__ __forceinline__ uint32_t lane_bits(const uint4& r, int lane) {
  const uint32_t w[4] = {r.x, r.y, r.z, r.w};
  if constexpr (Elem<DT>::kBytes == 4) return w[lane];
  else return (w[lane >> 1] >> ((lane & 1) * 16)) & 0xffffu;
}

// Sums one 16-byte vector per rank lane by lane in the canonical order; rounds once.
template <DataType DT, Order O>
__device__ __forceinline__ uint4 fold_vec(const uint4 (&raw)[kMaxRanks], int n) {
  using E = Elem<DT>;
  constexpr int V = 16 / E::kBytes;
  uint32_t w[4] = {0, 0, 0, 0};
  DETINFER_UNROLL
  for (int lane = 0; lane < V; ++lane) {
    float v[kMaxRanks];
    DETINFER_UNROLL
    for (int q = 0; q < kMaxRanks; ++q) v[q] = q < n ? E::to_f(static_cast<typename E::T>(lane_bits<DT>(raw[q], lane))) : 0.0f;
    const uint32_t bits = E::from_f(reduce_values<O>(v, n));
    if constexpr (E::kBytes == 4) w[lane] = bits;
    else w[lane >> 1] |= bits << ((lane & 1) * 16);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// ---- block-wide data movement ----------------------------------------------------------------
// Copies count elements from src to every dst[d] with bit d set in mask. VEC: src and all dst
// are 16-byte aligned; otherwise element by element (pointers aligned to the element size).
template <int ES, bool VEC>
__device__ __forceinline__ void block_copy(uint8_t* const (&dst)[kMaxRanks], uint32_t mask, const uint8_t* src,
                                           int64_t count) {
  using T = typename std::conditional<ES == 4, unsigned int, unsigned short>::type;
  const int tid = threadIdx.x;
  int64_t done = 0;
  if constexpr (VEC) {
    constexpr int U = 4;
    const int64_t nvec = count * ES / 16;
    const uint4* s = reinterpret_cast<const uint4*>(src);
    for (int64_t v0 = tid; v0 < nvec; v0 += static_cast<int64_t>(kThreads) * U) {
      uint4 x[U];
      DETINFER_UNROLL
      for (int u = 0; u < U; ++u) {
        const int64_t v = v0 + static_cast<int64_t>(u) * kThreads;
        if (v < nvec) x[u] = __ldcg(s + v);
      }
      DETINFER_UNROLL
      for (int d = 0; d < kMaxRanks; ++d) {
        if (!((mask >> d) & 1u)) continue;
        DETINFER_UNROLL
        for (int u = 0; u < U; ++u) {
          const int64_t v = v0 + static_cast<int64_t>(u) * kThreads;
          if (v < nvec) reinterpret_cast<uint4*>(dst[d])[v] = x[u];
        }
      }
    }
    done = nvec * 16 / ES;
  }
  for (int64_t e = done + tid; e < count; e += kThreads) {
    const T x = __ldcg(reinterpret_cast<const T*>(src) + e);
    DETINFER_UNROLL
    for (int d = 0; d < kMaxRanks; ++d)
      if ((mask >> d) & 1u) reinterpret_cast<T*>(dst[d])[e] = x;
  }
}

// out[e] = fold over ranks q of src[q][e]; also written to every adst[d] with bit d in amask.
template <DataType DT, Order O, int NF, bool VEC>
__device__ __forceinline__ void block_reduce(const uint8_t* const (&src)[kMaxRanks], int n_rt, uint8_t* out,
                                             uint8_t* const (&adst)[kMaxRanks], uint32_t amask, int64_t count) {
  using E = Elem<DT>;
  using T = typename E::T;
  constexpr int ES = E::kBytes;
  const int n = NF > 0 ? NF : n_rt;
  const int tid = threadIdx.x;
  int64_t done = 0;
  if constexpr (VEC) {
    constexpr int U = NF == 2 ? 4 : 1;  // more loads in flight when registers allow
    const int64_t nvec = count * ES / 16;
    for (int64_t v0 = tid; v0 < nvec; v0 += static_cast<int64_t>(kThreads) * U) {
      uint4 raw[U][kMaxRanks];
      DETINFER_UNROLL
      for (int u = 0; u < U; ++u) {
        const int64_t v = v0 + static_cast<int64_t>(u) * kThreads;
        DETINFER_UNROLL
        for (int q = 0; q < kMaxRanks; ++q)
          raw[u][q] = (q < n && v < nvec) ? __ldcg(reinterpret_cast<const uint4*>(src[q]) + v) : make_uint4(0, 0, 0, 0);
      }
      DETINFER_UNROLL
      for (int u = 0; u < U; ++u) {
        const int64_t v = v0 + static_cast<int64_t>(u) * kThreads;
        if (v >= nvec) continue;
        const uint4 r = fold_vec<DT, O>(raw[u], n);
        reinterpret_cast<uint4*>(out)[v] = r;
        DETINFER_UNROLL
        for (int d = 0; d < kMaxRanks; ++d)
          if ((amask >> d) & 1u) reinterpret_cast<uint4*>(adst[d])[v] = r;
      }
    }
    done = nvec * 16 / ES;
  }
  for (int64_t e = done + tid; e < count; e += kThreads) {
    float v[kMaxRanks];
    DETINFER_UNROLL
    for (int q = 0; q < kMaxRanks; ++q) v[q] = q < n ? E::to_f(__ldcg(reinterpret_cast<const T*>(src[q]) + e)) : 0.0f;
    const T r = E::from_f(reduce_values<O>(v, n));
    reinterpret_cast<T*>(out)[e] = r;
    DETINFER_UNROLL
    for (int d = 0; d < kMaxRanks; ++d)
      if ((amask >> d) & 1u) reinterpret_cast<T*>(adst[d])[e] = r;
  }
}

// ---- roles -----------------------------------------------------------------------------------
// counters: [0] push (data ring), [1] reduce (data ring), [2] reduce (gather ring), [3] gather.
__device__ __forceinline__ uint64_t* role_counter(const KernelArgs& a, int which, int b) {
  return reinterpret_cast<uint64_t*>(a.base[a.me] + a.lay.counters) + which * a.lay.G + b;
}

template <DataType DT, bool VEC>
__device__ void push_role(const KernelArgs& a, int b) {
  constexpr int ES = Elem<DT>::kBytes;
  __shared__ int s_abort;
  __shared__ uint64_t s_t0;
  const int tid = threadIdx.x, N = a.nranks, me = a.me, R = a.lay.R;
  const bool two = a.plan.slices > 1;
  uint64_t* cnt = role_counter(a, 0, b);
  if (tid == 0) {
    s_t0 = *cnt;
    s_abort = has_error(a);
  }
  __syncthreads();
  if (s_abort) return;
  const uint64_t t0 = s_t0;
  const int64_t steps = a.plan.steps(b);
  uint8_t* mine = a.base[me];
  uint8_t* peer = tid < N ? base_of(a, tid) : nullptr;
  uint32_t others = 0;
  for (int q = 0; q < N; ++q)
    if (q != me) others |= 1u << q;

  for (int64_t k = 0; k < steps; ++k) {
    const uint64_t t = t0 + k;
    const int64_t j = a.plan.chunk(b, k);
    // The slot we fill in rank tid was used R steps ago: wait until tid has read it.
    if (tid < N && tid != me && t + 1 > static_cast<uint64_t>(R))
      if (!wait_geq(a, counter(mine, a.lay.d_credit, b, tid), t + 1 - R, kRolePush, b, tid, t)) s_abort = 1;
    __syncthreads();
    if (s_abort) return;
    uint8_t* dst[kMaxRanks];
    DETINFER_UNROLL
    for (int q = 0; q < kMaxRanks; ++q) dst[q] = q < N ? a.base[q] + slot_off(a.lay, a.lay.d_data, b, me, t) : nullptr;
    if (!two) {
      int64_t lo, hi;
      a.plan.range(0, j, &lo, &hi);
      block_copy<ES, VEC>(dst, others, static_cast<const uint8_t*>(a.in) + lo * ES, hi - lo);
    } else {
      DETINFER_UNROLL
      for (int p = 0; p < kMaxRanks; ++p) {
        if (!((others >> p) & 1u)) continue;
        int64_t lo, hi;
        a.plan.range(p, j, &lo, &hi);
        block_copy<ES, VEC>(dst, 1u << p, static_cast<const uint8_t*>(a.in) + lo * ES, hi - lo);
      }
    }
    __syncthreads();  // every thread's stores precede the release below (cumulativity)
    if (tid < N) {
      if (tid != me)
        reinterpret_cast<uint64_t*>(peer + a.lay.d_meta)[(static_cast<uint64_t>(b) * kMaxRanks + me) * R + t % R] = a.meta;
      // Ready for ourselves too: our reducer must not overwrite an in-place input before it is sent.
      st_release(counter(peer, a.lay.d_ready, b, me), t + 1);
    }
  }
  if (tid == 0) *cnt = t0 + steps;
}

template <DataType DT, Order O, int NF, bool VEC>
__device__ void reduce_role(const KernelArgs& a, int b) {
  constexpr int ES = Elem<DT>::kBytes;
  __shared__ int s_abort;
  __shared__ uint64_t s_t0, s_ta0;
  const int tid = threadIdx.x, N = a.nranks, me = a.me, R = a.lay.R;
  const bool two = a.plan.slices > 1;
  uint64_t* cnt_d = role_counter(a, 1, b);
  uint64_t* cnt_a = role_counter(a, 2, b);
  if (tid == 0) {
    s_t0 = *cnt_d;
    s_ta0 = *cnt_a;
    s_abort = has_error(a);
  }
  __syncthreads();
  if (s_abort) return;
  const uint64_t t0 = s_t0, ta0 = s_ta0;
  const int64_t steps = a.plan.steps(b);
  uint8_t* mine = a.base[me];
  uint8_t* peer = tid < N ? base_of(a, tid) : nullptr;
  uint32_t others = 0;
  for (int q = 0; q < N; ++q)
    if (q != me) others |= 1u << q;

  for (int64_t k = 0; k < steps; ++k) {
    const uint64_t t = t0 + k, ta = ta0 + k;
    const int64_t j = a.plan.chunk(b, k);
    // Return the slots read so far (every step before t, the previous call's too). Sent here
    // rather than after the step's reads, its fence overlaps the wait below and stays off the
    // end of the kernel; a pusher needs a credit only R steps later.
    if (tid < N && tid != me && t > 0) st_release(counter(peer, a.lay.d_credit, b, me), t);
    if (tid < N) {
      bool ok = wait_geq(a, counter(mine, a.lay.d_ready, b, tid), t + 1, kRoleReduce, b, tid, t);
      if (ok && two && tid != me && ta + 1 > static_cast<uint64_t>(R))
        ok = wait_geq(a, counter(mine, a.lay.a_credit, b, tid), ta + 1 - R, kRoleReduce, b, tid, ta);
      if (ok && tid != me) {
        const uint64_t m =
            __ldcg(reinterpret_cast<const unsigned long long*>(mine + a.lay.d_meta) + (static_cast<uint64_t>(b) * kMaxRanks + tid) * R + t % R);
        if (m != a.meta) {
          raise_error(a, kErrMismatch, kRoleReduce, b, tid, t, a.meta, m);
          ok = false;
        }
      }
      if (!ok) s_abort = 1;
    }
    __syncthreads();
    if (s_abort) return;
    int64_t lo, hi;
    a.plan.range(two ? me : 0, j, &lo, &hi);
    const uint8_t* src[kMaxRanks];
    uint8_t* adst[kMaxRanks];
    DETINFER_UNROLL
    for (int q = 0; q < kMaxRanks; ++q) {
      src[q] = q == me ? static_cast<const uint8_t*>(a.in) + lo * ES
                       : (q < N ? mine + slot_off(a.lay, a.lay.d_data, b, q, t) : nullptr);
      adst[q] = q < N ? a.base[q] + slot_off(a.lay, a.lay.a_data, b, me, ta) : nullptr;
    }
    block_reduce<DT, O, NF, VEC>(src, N, static_cast<uint8_t*>(a.out) + lo * ES, adst, two ? others : 0u, hi - lo);
    __syncthreads();
    if (two && tid < N && tid != me) st_release(counter(peer, a.lay.a_ready, b, me), ta + 1);
  }
  if (tid == 0) {
    *cnt_d = t0 + steps;
    if (two) *cnt_a = ta0 + steps;
  }
}

template <DataType DT, bool VEC>
__device__ void gather_role(const KernelArgs& a, int b) {
  constexpr int ES = Elem<DT>::kBytes;
  __shared__ int s_abort;
  __shared__ uint64_t s_t0;
  const int tid = threadIdx.x, N = a.nranks, me = a.me;
  uint64_t* cnt = role_counter(a, 3, b);
  if (tid == 0) {
    s_t0 = *cnt;
    s_abort = has_error(a);
  }
  __syncthreads();
  if (s_abort) return;
  const uint64_t ta0 = s_t0;
  const int64_t steps = a.plan.steps(b);
  uint8_t* mine = a.base[me];
  uint8_t* peer = tid < N ? base_of(a, tid) : nullptr;
  for (int64_t k = 0; k < steps; ++k) {
    const uint64_t ta = ta0 + k;
    const int64_t j = a.plan.chunk(b, k);
    if (tid < N && tid != me && ta > 0) st_release(counter(peer, a.lay.a_credit, b, me), ta);  // deferred, as above
    if (tid < N && tid != me)
      if (!wait_geq(a, counter(mine, a.lay.a_ready, b, tid), ta + 1, kRoleGather, b, tid, ta)) s_abort = 1;
    __syncthreads();
    if (s_abort) return;
    for (int s = 0; s < N; ++s) {
      if (s == me) continue;
      int64_t lo, hi;
      a.plan.range(s, j, &lo, &hi);
      uint8_t* dst[kMaxRanks] = {static_cast<uint8_t*>(a.out) + lo * ES};
      block_copy<ES, VEC>(dst, 1u, mine + slot_off(a.lay, a.lay.a_data, b, s, ta), hi - lo);
    }
    __syncthreads();
  }
  if (tid == 0) *cnt = ta0 + steps;
}

template <DataType DT, Order O, int NF, bool VEC>
__global__ void __launch_bounds__(kThreads) allreduce_kernel(const __grid_constant__ KernelArgs a) {
  const int G = a.plan.G;
  const int role = blockIdx.x / G;
  const int b = blockIdx.x - role * G;
  if (role == kRolePush) push_role<DT, VEC>(a, b);
  else if (role == kRoleReduce) reduce_role<DT, O, NF, VEC>(a, b);
  else gather_role<DT, VEC>(a, b);
}

__global__ void probe_kernel(const __grid_constant__ KernelArgs a, uint64_t token) {
  const int q = threadIdx.x;
  if (q < a.nranks) st_release(reinterpret_cast<uint64_t*>(base_of(a, q) + a.lay.probe) + a.me, token);
}

template <DataType DT, Order O, bool VEC>
__global__ void __launch_bounds__(256) local_reduce_kernel(const uint8_t* own, const uint8_t* scratch, int64_t stride,
                                                           int me, int n, int64_t count, uint8_t* dst) {
  using E = Elem<DT>;
  using T = typename E::T;
  constexpr int ES = E::kBytes, V = 16 / ES;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if constexpr (VEC) {
    const int64_t nvec = count / V;
    for (int64_t v = tid; v < nvec; v += nthreads) {
      uint4 raw[kMaxRanks];
      DETINFER_UNROLL
      for (int q = 0; q < kMaxRanks; ++q)
        raw[q] = q < n ? __ldcg(reinterpret_cast<const uint4*>(q == me ? own : scratch + q * stride * ES) + v)
                       : make_uint4(0, 0, 0, 0);
      reinterpret_cast<uint4*>(dst)[v] = fold_vec<DT, O>(raw, n);
    }
    done = nvec * V;
  }
  for (int64_t e = done + tid; e < count; e += nthreads) {
    float v[kMaxRanks];
    DETINFER_UNROLL
    for (int q = 0; q < kMaxRanks; ++q)
      v[q] = q < n ? E::to_f(__ldcg(reinterpret_cast<const T*>(q == me ? own : scratch + q * stride * ES) + e)) : 0.0f;
    reinterpret_cast<T*>(dst)[e] = E::from_f(reduce_values<O>(v, n));
  }
}


// ---- low-latency one-shot ---------------------------------------------------------------------
// Each 8-byte payload is sent as one 16-byte store {p0, e, p1, e} where e is the call's epoch:
// the reader polls the line until both epoch words match, so data and "ready" arrive together
// (8-byte stores are not torn) and no fence or flag round trip is needed. Line i always belongs
// to block i mod G, and block b's epoch counts block b's calls, so a line's epochs only grow.
// The 32-bit epoch written into a line is never 0 (fresh memory) and repeats only every 2^32 - 1
// calls; the parity comes from the 64-bit call count.
// Lines come in two parities (call count & 1): rank q overwrites a parity-P line at call e+2 only after
// its call e+1 finished, which needed every peer's call e+1 lines, and a peer writes those only
// after its own call e has finished reading. So nothing is overwritten while it is still read.
__device__ __forceinline__ void st_volatile_v4(uint8_t* p, uint4 v) {
  asm volatile("st.volatile.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}
__device__ __forceinline__ uint4 ld_volatile_v4(const uint8_t* p) {
  uint4 v;
  asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p)
               : "memory");
  return v;
}
__device__ __forceinline__ uint8_t* ll_line(const KernelArgs& a, uint8_t* base, int par, int src, int64_t idx) {
  const int64_t per_src = a.lay.ll_G + a.lay.ll_lines;
  return base + a.lay.ll + ((static_cast<int64_t>(par) * a.lay.N + src) * per_src + idx) * 16;
}
// Polls a line until it carries epoch e in both halves; false on timeout or another error.
__device__ __forceinline__ bool ll_wait(const KernelArgs& a, const uint8_t* p, uint32_t e, int b, int peer, uint4* out) {
  uint4 v = ld_volatile_v4(p);
  if (v.y == e && v.w == e) {
    *out = v;
    return true;
  }
  const uint64_t start = global_ns();
  for (uint32_t it = 1;; ++it) {
    v = ld_volatile_v4(p);
    if (v.y == e && v.w == e) {
      *out = v;
      return true;
    }
    if ((it & 15) == 0) {
      if (has_error(a)) return false;
      if (global_ns() - start > a.timeout_ns) {
        raise_error(a, kErrTimeout, kRoleReduce, b, peer, e, e, v.y);
        return false;
      }
    }
  }
}

// 8 bytes of the message from line i (zero past the end); VEC8: the pointer is 8-byte aligned.
template <int ES, bool VEC8>
__device__ __forceinline__ uint2 ll_load(const void* base, int64_t i, int64_t nbytes) {
  const uint8_t* p = static_cast<const uint8_t*>(base) + i * 8;
  if (VEC8 && i * 8 + 8 <= nbytes) return __ldcg(reinterpret_cast<const uint2*>(p));
  uint32_t w[2] = {0, 0};
  DETINFER_UNROLL
  for (int k = 0; k < 8 / ES; ++k) {
    if (i * 8 + (k + 1) * ES > nbytes) break;
    uint32_t x = ES == 4 ? __ldcg(reinterpret_cast<const unsigned int*>(p) + k)
                         : static_cast<uint32_t>(__ldcg(reinterpret_cast<const unsigned short*>(p) + k));
    w[(k * ES) / 4] |= x << (((k * ES) % 4) * 8);
  }
  return make_uint2(w[0], w[1]);
}
template <int ES, bool VEC8>
__device__ __forceinline__ void ll_store(void* base, int64_t i, int64_t nbytes, uint2 v) {
  uint8_t* p = static_cast<uint8_t*>(base) + i * 8;
  if (VEC8 && i * 8 + 8 <= nbytes) {
    *reinterpret_cast<uint2*>(p) = v;
    return;
  }
  const uint32_t w[2] = {v.x, v.y};
  DETINFER_UNROLL
  for (int k = 0; k < 8 / ES; ++k) {
    if (i * 8 + (k + 1) * ES > nbytes) break;
    const uint32_t x = w[(k * ES) / 4] >> (((k * ES) % 4) * 8);
    if (ES == 4) reinterpret_cast<unsigned int*>(p)[k] = x;
    else reinterpret_cast<unsigned short*>(p)[k] = static_cast<unsigned short>(x);
  }
}

template <DataType DT, Order O, int NF, bool VEC8>
__global__ void __launch_bounds__(kThreads) ll_kernel(const __grid_constant__ KernelArgs a) {
  using E = Elem<DT>;
  constexpr int ES = E::kBytes;
  constexpr int U = NF == 2 ? 4 : 1;  // lines in flight per thread
  __shared__ uint64_t s_c;
  __shared__ int s_abort;
  const int b = blockIdx.x, tid = threadIdx.x, me = a.me, G = a.lay.ll_G;
  const int n = NF > 0 ? NF : a.nranks;
  uint64_t* cnt = reinterpret_cast<uint64_t*>(a.base[me] + a.lay.ll_count) + b;
  if (tid == 0) {
    s_c = *cnt + 1;
    s_abort = has_error(a);
  }
  __syncthreads();
  if (s_abort) return;
  const uint64_t c = s_c;
  const uint32_t e = static_cast<uint32_t>(c % 0xffffffffull) + 1;
  const int par = static_cast<int>(c & 1);
  const int64_t nbytes = a.plan.n * ES, nlines = (nbytes + 7) / 8;
  const int64_t stride = static_cast<int64_t>(G) * kThreads;
  const int64_t first = b + static_cast<int64_t>(G) * tid;
  uint8_t* mine = a.base[me];

  // Send: a header line per block (the call's metadata), then this block's payload lines.
  if (tid < n && tid != me)
    st_volatile_v4(ll_line(a, base_of(a, tid), par, me, b),
                   make_uint4(static_cast<uint32_t>(a.meta), e, static_cast<uint32_t>(a.meta >> 32), e));
  for (int64_t i0 = first; i0 < nlines; i0 += U * stride) {
    uint2 p[U];
    DETINFER_UNROLL
    for (int u = 0; u < U; ++u)
      if (i0 + u * stride < nlines) p[u] = ll_load<ES, VEC8>(a.in, i0 + u * stride, nbytes);
    DETINFER_UNROLL
    for (int u = 0; u < U; ++u) {
      const int64_t i = i0 + u * stride;
      if (i >= nlines) continue;
      const uint4 v = make_uint4(p[u].x, e, p[u].y, e);
      DETINFER_UNROLL
      for (int q = 0; q < kMaxRanks; ++q)
        if (q < n && q != me) st_volatile_v4(ll_line(a, a.base[q], par, me, G + i), v);
    }
  }
  // Every peer made the same call? Checked before anything is reduced.
  if (tid < n && tid != me) {
    uint4 h;
    if (!ll_wait(a, ll_line(a, mine, par, tid, b), e, b, tid, &h)) s_abort = 1;
    else {
      const uint64_t m = static_cast<uint64_t>(h.x) | (static_cast<uint64_t>(h.z) << 32);
      if (m != a.meta) {
        raise_error(a, kErrMismatch, kRoleReduce, b, tid, e, a.meta, m);
        s_abort = 1;
      }
    }
  }
  __syncthreads();
  if (s_abort) return;
  // Sum: the same lines as sent, so an in-place input is read before it is overwritten. U lines
  // are loaded at once; only those not there yet are polled again.
  for (int64_t i0 = first; i0 < nlines; i0 += U * stride) {
    uint4 v[U][kMaxRanks];
    DETINFER_UNROLL
    for (int u = 0; u < U; ++u)
      DETINFER_UNROLL
      for (int q = 0; q < kMaxRanks; ++q)
        v[u][q] = (q < n && q != me && i0 + u * stride < nlines) ? ld_volatile_v4(ll_line(a, mine, par, q, G + i0 + u * stride))
                                                                  : make_uint4(0, e, 0, e);
    DETINFER_UNROLL
    for (int u = 0; u < U; ++u) {
      const int64_t i = i0 + u * stride;
      if (i >= nlines) continue;
      uint32_t w[kMaxRanks][2];
      DETINFER_UNROLL
      for (int q = 0; q < kMaxRanks; ++q) {
        w[q][0] = w[q][1] = 0;
        if (q >= n) continue;
        if (q == me) {
          const uint2 p = ll_load<ES, VEC8>(a.in, i, nbytes);
          w[q][0] = p.x;
          w[q][1] = p.y;
        } else {
          if ((v[u][q].y != e || v[u][q].w != e) && !ll_wait(a, ll_line(a, mine, par, q, G + i), e, b, q, &v[u][q])) return;
          w[q][0] = v[u][q].x;
          w[q][1] = v[u][q].z;
        }
      }
      uint32_t r[2] = {0, 0};
      DETINFER_UNROLL
      for (int lane = 0; lane < 8 / ES; ++lane) {
        float f[kMaxRanks];
        DETINFER_UNROLL
        for (int q = 0; q < kMaxRanks; ++q) {
          const uint32_t word = w[q][(lane * ES) / 4];
          const uint32_t bits = ES == 4 ? word : (word >> ((lane & 1) * 16)) & 0xffffu;
          f[q] = q < n ? E::to_f(static_cast<typename E::T>(bits)) : 0.0f;
        }
        const uint32_t out = E::from_f(reduce_values<O>(f, n));
        if (ES == 4) r[lane] = out;
        else r[lane >> 1] |= out << ((lane & 1) * 16);
      }
      ll_store<ES, VEC8>(a.out, i, nbytes, make_uint2(r[0], r[1]));
    }
  }
  if (tid == 0) *cnt = c;
}

// ---- dispatch --------------------------------------------------------------------------------
using AllreduceFn = void (*)(KernelArgs);

template <DataType DT, Order O, int NF, bool VEC>
void* kernel_ptr() {
  return reinterpret_cast<void*>(&allreduce_kernel<DT, O, NF, VEC>);
}

template <DataType DT, Order O, int NF>
void* pick_vec(bool vec) {
  return vec ? kernel_ptr<DT, O, NF, true>() : kernel_ptr<DT, O, NF, false>();
}
template <DataType DT, Order O>
void* pick_nf(int n, bool vec) {
  return n == 2 ? pick_vec<DT, O, 2>(vec) : pick_vec<DT, O, 0>(vec);
}
template <DataType DT>
void* pick_order(Order o, int n, bool vec) {
  return o == Order::RankOrder ? pick_nf<DT, Order::RankOrder>(n, vec) : pick_nf<DT, Order::Tree>(n, vec);
}
void* pick_kernel(DataType dt, Order o, int n, bool vec) {
  switch (dt) {
    case DataType::F32: return pick_order<DataType::F32>(o, n, vec);
    case DataType::BF16: return pick_order<DataType::BF16>(o, n, vec);
    case DataType::F16: return pick_order<DataType::F16>(o, n, vec);
  }
  return nullptr;
}

template <DataType DT, Order O, int NF>
void* pick_ll_vec(bool vec) {
  return vec ? reinterpret_cast<void*>(&ll_kernel<DT, O, NF, true>) : reinterpret_cast<void*>(&ll_kernel<DT, O, NF, false>);
}
template <DataType DT, Order O>
void* pick_ll_nf(int n, bool vec) {
  return n == 2 ? pick_ll_vec<DT, O, 2>(vec) : pick_ll_vec<DT, O, 0>(vec);
}
template <DataType DT>
void* pick_ll_order(Order o, int n, bool vec) {
  return o == Order::RankOrder ? pick_ll_nf<DT, Order::RankOrder>(n, vec) : pick_ll_nf<DT, Order::Tree>(n, vec);
}
void* pick_ll_kernel(DataType dt, Order o, int n, bool vec) {
  switch (dt) {
    case DataType::F32: return pick_ll_order<DataType::F32>(o, n, vec);
    case DataType::BF16: return pick_ll_order<DataType::BF16>(o, n, vec);
    case DataType::F16: return pick_ll_order<DataType::F16>(o, n, vec);
  }
  return nullptr;
}

template <DataType DT, Order O>
void* pick_local(bool vec) {
  return vec ? reinterpret_cast<void*>(&local_reduce_kernel<DT, O, true>)
             : reinterpret_cast<void*>(&local_reduce_kernel<DT, O, false>);
}
void* pick_local_kernel(DataType dt, Order o, bool vec) {
  const bool r = o == Order::RankOrder;
  switch (dt) {
    case DataType::F32: return r ? pick_local<DataType::F32, Order::RankOrder>(vec) : pick_local<DataType::F32, Order::Tree>(vec);
    case DataType::BF16: return r ? pick_local<DataType::BF16, Order::RankOrder>(vec) : pick_local<DataType::BF16, Order::Tree>(vec);
    case DataType::F16: return r ? pick_local<DataType::F16, Order::RankOrder>(vec) : pick_local<DataType::F16, Order::Tree>(vec);
  }
  return nullptr;
}

}  // namespace

int launch_allreduce(const KernelArgs& a, DataType dtype, Order order, bool vec, void* stream) {
  void* fn = pick_kernel(dtype, order, a.nranks, vec);
  const int roles = a.plan.slices > 1 ? 3 : 2;
  void* args[] = {const_cast<KernelArgs*>(&a)};
  return static_cast<int>(cudaLaunchKernel(fn, dim3(roles * a.plan.G), dim3(kThreads), args, 0,
                                           static_cast<cudaStream_t>(stream)));
}

int launch_allreduce_ll(const KernelArgs& a, DataType dtype, Order order, bool vec8, void* stream) {
  void* fn = pick_ll_kernel(dtype, order, a.nranks, vec8);
  void* args[] = {const_cast<KernelArgs*>(&a)};
  return static_cast<int>(cudaLaunchKernel(fn, dim3(a.lay.ll_G), dim3(kThreads), args, 0, static_cast<cudaStream_t>(stream)));
}

int launch_local_reduce(const void* own, const void* scratch, int64_t stride, int me, int nranks, int64_t count,
                        void* dst, DataType dtype, Order order, void* stream) {
  if (count <= 0) return 0;
  const int es = dtype_bytes(dtype);
  const bool vec = (reinterpret_cast<uintptr_t>(own) % 16 == 0) && (reinterpret_cast<uintptr_t>(dst) % 16 == 0) &&
                   (reinterpret_cast<uintptr_t>(scratch) % 16 == 0) && ((stride * es) % 16 == 0);
  const int64_t work = vec ? (count * es + 15) / 16 : count;
  const int blocks = static_cast<int>(work / 256 + 1 < 1024 ? work / 256 + 1 : 1024);
  void* fn = pick_local_kernel(dtype, order, vec);
  const uint8_t* own_b = static_cast<const uint8_t*>(own);
  const uint8_t* scr_b = static_cast<const uint8_t*>(scratch);
  uint8_t* dst_b = static_cast<uint8_t*>(dst);
  void* args[] = {&own_b, &scr_b, &stride, &me, &nranks, &count, &dst_b};
  return static_cast<int>(cudaLaunchKernel(fn, dim3(blocks), dim3(256), args, 0, static_cast<cudaStream_t>(stream)));
}

int launch_probe(const KernelArgs& a, uint64_t token, void* stream) {
  void* args[] = {const_cast<KernelArgs*>(&a), &token};
  return static_cast<int>(cudaLaunchKernel(reinterpret_cast<void*>(&probe_kernel), dim3(1), dim3(32), args, 0,
                                           static_cast<cudaStream_t>(stream)));
}

int preload_kernels() {
  int fewest = 1 << 30;
  for (DataType dt : {DataType::F32, DataType::BF16, DataType::F16})
    for (Order o : {Order::RankOrder, Order::Tree})
      for (int n : {2, 3})
        for (bool vec : {false, true}) {
          void* fn = pick_kernel(dt, o, n, vec);
          cudaFuncAttributes attr;
          if (cudaFuncGetAttributes(&attr, fn) != cudaSuccess) return 0;
          int blocks = 0;
          if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, fn, kThreads, 0) != cudaSuccess) return 0;
          fewest = blocks < fewest ? blocks : fewest;
          void* ll = pick_ll_kernel(dt, o, n, vec);
          if (cudaFuncGetAttributes(&attr, ll) != cudaSuccess) return 0;
          if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, ll, kThreads, 0) != cudaSuccess) return 0;
          fewest = blocks < fewest ? blocks : fewest;
          cudaFuncAttributes la;
          if (cudaFuncGetAttributes(&la, pick_local_kernel(dt, o, vec)) != cudaSuccess) return 0;
        }
  cudaFuncAttributes pa;
  if (cudaFuncGetAttributes(&pa, reinterpret_cast<void*>(&probe_kernel)) != cudaSuccess) return 0;
  return fewest;
}

}  // namespace detinfer::comm::cuda
