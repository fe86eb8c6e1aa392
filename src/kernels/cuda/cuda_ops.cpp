// CudaOps: device memory, weight upload, step metadata, and the calls into the kernels
// (kernels/cuda/launch.h). Everything runs on one stream of the object's device, in issue order.
#include "kernels/cuda/cuda_ops.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <optional>
#include <string>
#include <thread>
#include <mutex>
#include <exception>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "common/half.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/gemm_wgmma.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/sampler.h"

namespace detinfer {

namespace {

using cuda::check;

// Marks the stack key of an interleaved gate/up weight (its address only).
const char kGateUpKey = 0;

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// A device allocation that frees itself.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(int64_t bytes, const char* what) { allocate(bytes, what); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = o.p_, bytes_ = o.bytes_;
      o.p_ = nullptr, o.bytes_ = 0;
    }
    return *this;
  }
  void allocate(int64_t bytes, const char* what) {
    release();
    const size_t n = static_cast<size_t>(std::max<int64_t>(bytes, 256));
    const cudaError_t err = cudaMalloc(&p_, n);
    if (err != cudaSuccess) {
      p_ = nullptr;
      cudaGetLastError();  // so that later calls do not report this error again
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      cudaGetLastError();
      const double gib = 1024.0 * 1024.0 * 1024.0;
      if (err != cudaErrorMemoryAllocation)  // not a matter of size: say what CUDA said
        fail("CUDA: cannot allocate ", what, " (", fixed(n / gib, 2), " GiB): ", cudaGetErrorString(err));
      fail("CUDA: out of GPU memory: ", what, " needs ", fixed(n / gib, 2), " GiB, ",
           fixed(free_b / gib, 2), " GiB of ", fixed(total_b / gib, 2), " GiB are free (",
           cudaGetErrorString(err), "). The bf16 weights and the bf16 KV cache must fit: use a "
           "smaller KV cache (run/chat: --kv-mb), fewer or shorter sequences, a smaller model, "
           "or --device cpu");
    }
    bytes_ = static_cast<int64_t>(n);
  }
  void release() {
    if (p_) cudaFree(p_);
    p_ = nullptr, bytes_ = 0;
  }
  template <typename T>
  T* as() const { return static_cast<T*>(p_); }
  int64_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  int64_t bytes_ = 0;
};

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// What an upload was made from, besides its address: a tensor with other dtype or shape at the
// same address (the first one freed, another loaded there) is uploaded afresh.
struct Signature {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  explicit Signature(const TensorView& t) : dtype(t.dtype), shape(t.shape) {}
  bool matches(const TensorView& t) const { return dtype == t.dtype && shape == t.shape; }
};

// Offsets (in int32) of the step's arrays inside the metadata buffer.
// The attention work list sits before the tables: its offset and length depend only on the
// step's shape (tokens, logit rows, work items), so a recorded step finds it where it was.
struct StepLayout {
  int64_t tokens = 0, pos = 0, slots = 0, table_off = 0, logit_rows = 0, attn = 0, tables = 0,
          total = 0;
};

}  // namespace

struct CudaOps::Impl {
  int device = 0;
  bool deterministic = true;
  // Hopper (sm_90): the TMA/wgmma GEMM (gemm_wgmma.cu); elsewhere the mma.sync one. Both give
  // every element the same bits (one accumulator chain, the same MMA sums: bench_gemm checks it).
  bool hopper = false;
  // `--determinism off`: cuBLAS, its workspace, and x rounded to bf16 for it.
  cublasHandle_t blas = nullptr;
  DeviceBuffer blas_workspace;
  DeviceBuffer x_bf16[2];  // bf16 GEMM inputs (twins, below); [1] only for the fused SwiGLU
  cudaStream_t stream = nullptr;
  cudaEvent_t meta_copied = nullptr;  // the last metadata upload has left the pinned buffer

  ModelConfig config;
  KvCacheShape kv;
  bool initialized = false;
  // bf16 bits, all layers: [n_layers][num_blocks][block_size][kv_dim] (attention.h).
  DeviceBuffer k_cache, v_cache;
  cuda::AttentionPlan attn_plan;  // this step's (begin_step)
  DeviceBuffer attn_workspace;    // split partials of decode rows

  // Sampling on the device (Ops::sample_rows): parameters, histories and results through one
  // pinned staging area each way. DETINFER_GPU_SAMPLING=0 leaves sampling to the CPU.
  bool device_sampling = true;
  bool sampling_supported = true;
  DeviceBuffer sample_params, sample_history, sample_workspace, sample_results;
  std::vector<cuda::SampleRowParams> sample_params_host;
  std::vector<int32_t> sample_history_host;
  cuda::SampleRowResult* sample_results_pinned = nullptr;
  int64_t sample_results_cap = 0;

  // RoPE: inv_freq as the CPU computes it, and cos/sin tables for positions [0, rope_rows)
  // filled on the host with the CPU's formula, grown when a step needs a later position.
  std::vector<float> inv_freq;
  std::vector<float> cos_host, sin_host;
  int64_t rope_rows = 0;
  DeviceBuffer cos_dev, sin_dev;

  std::vector<DeviceBuffer> scratch;

  // bf16 copy of an activation, the input of the Hopper GEMM and of cuBLAS (x_bf16): while
  // twin_valid it holds bf16(twin_src) for twin_rows rows of twin_K values, round_up(K, 32)
  // apart. A norm or SwiGLU writes it beside its fp32 output, and the q/k/v (gate/up) GEMMs of
  // one input share it, so most GEMMs skip their rounding pass. Any other op ends it. The
  // gate/up GEMM with SwiGLU in its epilogue reads x_bf16[0] while it writes the down
  // projection's input, so that copy goes to x_bf16[1] (twin_buf says which holds the twin).
  bool twins = false;  // the GEMM path takes bf16 input (Hopper or cuBLAS)
  const float* twin_src = nullptr;
  int64_t twin_rows = 0, twin_K = 0;
  int twin_buf = 0;
  bool twin_valid = false;
  static int64_t twin_ld(int64_t K) { return round_up(K, cuda::kGemmBK); }
  // x_bf16[which], grown to rows × twin_ld(K)
  uint16_t* bf16_input(int64_t rows, int64_t K, int which = 0);
  void forget_twin() { twin_valid = false; }
  void set_twin(const float* src, int64_t rows, int64_t K, int which = 0) {
    twin_src = src, twin_rows = rows, twin_K = K, twin_buf = which, twin_valid = true;
  }
  const uint16_t* twin_data() const { return x_bf16[twin_buf].as<uint16_t>(); }

  // CUDA graphs of whole forward passes (Ops::replay_forward): a step whose shape (tokens,
  // logit rows) was seen before is recorded once and replayed after. Its kernels read the
  // step's varying data (tokens, positions, block tables) from the metadata buffer, so a replay
  // needs only the same buffers: `generation` counts every move of a buffer the kernels use,
  // and a recording from an older generation is dropped. DETINFER_CUDA_GRAPHS=0 turns them off.
  bool graphs = true;
  // SwiGLU in the gate/up GEMM's epilogue (Hopper); DETINFER_FUSE_SWIGLU=0 runs the GEMM and
  // the SwiGLU kernel instead (for timing comparisons; the same bits).
  bool fuse_swiglu = true;
  static constexpr int64_t kGraphMaxTokens = 512;  // larger steps are launched op by op
  static constexpr size_t kGraphMax = 64;          // recordings kept (all dropped beyond)
  uint64_t generation = 0;
  int64_t graph_replays = 0;
  struct StepGraph {
    cudaGraphExec_t exec = nullptr;
    uint64_t generation = 0;
  };
  using GraphKey = std::vector<int64_t>;  // tokens, logit rows, the attention plan's counts
  std::map<GraphKey, StepGraph> step_graphs;
  std::set<GraphKey> shapes_run;  // shapes whose step ran op by op to the end
  bool capturing = false;
  GraphKey capture_key;
  // The shape of the step now running op by op: it counts as seen only once end_forward is
  // reached, so a step that threw (out of memory while uploading weights) is not taken for one
  // that put everything in place, and its retry runs op by op again instead of recording.
  std::optional<GraphKey> eager_key;
  void drop_graphs() {
    for (auto& [key, g] : step_graphs) cudaGraphExecDestroy(g.exec);
    step_graphs.clear();
  }
  void abort_capture() {  // a forward pass that threw while being recorded
    n_pending_rope = 0;     // (its deferred rotations were part of the recording)
    eager_key.reset();
    if (!capturing) return;
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(stream, &g);
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
    capturing = false;
  }

  // DETINFER_PROFILE=1: every op is timed with CUDA events (graphs off), the totals per op and
  // shape are printed to stderr when the object is destroyed, with GB/s and TFLOP/s.
  bool profile = false;
  struct ProfRecord {
    std::string key;
    cudaEvent_t start, stop;
    double bytes, flops;
  };
  struct ProfTotal {
    int64_t calls = 0;
    double ms = 0, bytes = 0, flops = 0;
  };
  std::vector<ProfRecord> prof_pending;
  std::vector<cudaEvent_t> prof_free;
  std::map<std::string, ProfTotal> prof_totals;
  cudaEvent_t prof_event() {
    if (!prof_free.empty()) {
      cudaEvent_t e = prof_free.back();
      prof_free.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    check(cudaEventCreate(&e), "profile event");
    return e;
  }
  void prof_collect();  // after a synchronize: adds the finished records to the totals
  void prof_print();
  struct ProfScope {
    Impl* s = nullptr;
    size_t index = 0;
    ProfScope() = default;
    ProfScope(Impl* impl, std::string key, double bytes, double flops) : s(impl) {
      ProfRecord r{std::move(key), s->prof_event(), s->prof_event(), bytes, flops};
      check(cudaEventRecord(r.start, s->stream), "profile event");
      index = s->prof_pending.size();
      s->prof_pending.push_back(std::move(r));
    }
    ~ProfScope() {
      if (s) cudaEventRecord(s->prof_pending[index].stop, s->stream);
    }
    ProfScope(const ProfScope&) = delete;
    ProfScope& operator=(const ProfScope&) = delete;
  };
  // RoPE waits for the attention that reads it (Ops::rope only records it): the attention of
  // the q and k it was asked to rotate runs the rotations and the cache writes in one kernel
  // (cuda::rope_kv_write). Every other op first runs what is pending (flush_rope), so each op
  // sees the buffers exactly as the separate launches would have left them.
  struct PendingRope {
    float* x;
    int n_heads;
  };
  PendingRope pending_rope[2] = {};
  int n_pending_rope = 0;
  void flush_rope();
  // rmsnorm (r null) or add_rmsnorm (x += r first) of rows of D, with the GEMM's bf16 copy.
  void norm(float* x, const float* r, int64_t rows, int64_t D, const TensorView& w, float eps,
            float* y);

  // Unique K/V bytes the step's attention reads (all layers' shapes are equal: per layer).
  double attn_kv_bytes = 0;

  float* pinned_host = nullptr;  // host_buffer()
  int64_t pinned_host_cap = 0;

  struct Matrix {
    Signature sig;
    DeviceBuffer data;
    cuda::GemmWeight view;
  };
  struct Raw {
    Signature sig;
    DeviceBuffer data;
    int64_t rows = 0, row_bytes = 0;
  };
  struct Vector {
    Signature sig;
    DeviceBuffer data;
  };
  // Weights of one input (q/k/v, gate/up) stacked into one GEMM; the output is split after.
  struct Stack {
    std::vector<Signature> sigs, bias_sigs;
    DeviceBuffer data, bias;
    cuda::GemmWeight view;
    std::vector<int64_t> offsets, widths;
  };
  // Uploads keyed by TensorView::data.
  std::unordered_map<const void*, Matrix> matrices;  // matmul weights, bf16 padded
  std::map<std::vector<const void*>, Stack> stacks;    // keyed by the parts' and biases' data
  std::unordered_map<const void*, Raw> raw_tables;   // embedding tables, as stored
  std::unordered_map<const void*, Vector> vectors;   // norms and biases, fp32

  // Drops the entry for t's address if it was made from another tensor.
  template <typename Map>
  typename Map::iterator find_upload(Map& map, const TensorView& t) {
    auto it = map.find(t.data);
    if (it != map.end() && !it->second.sig.matches(t)) {
      sync();  // queued kernels may still read the old upload
      map.erase(it);
      ++generation;
      it = map.end();
    }
    return it;
  }

  // Step metadata: host copies (for checks), the pinned staging buffer and the device copy.
  int64_t T = 0, L = 0;
  std::vector<int32_t> tokens_host;
  StepLayout layout;
  int32_t* meta_pinned = nullptr;
  int64_t meta_pinned_cap = 0;
  DeviceBuffer meta_dev;
  bool have_step = false;
  int64_t embed_rows = 0;  // rows of the embedding table (known after the first embed)

  void set_device() const { check(cudaSetDevice(device), "cudaSetDevice"); }
  // Host -> device copy on the work stream, finished before it returns. (A plain cudaMemcpy from
  // pageable memory may return before its DMA lands and is ordered only with the legacy default
  // stream, not with our non-blocking one: a kernel could read half-copied weights.)
  void upload(void* dst, const void* src, size_t bytes, const char* what) const {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream), what);
    check(cudaStreamSynchronize(stream), what);
  }
  void sync() const {
    // Nothing waits while a step is being recorded: the buffers of a shape seen before are
    // already in place, so a wait here is a bug, said plainly rather than as a capture error.
    DETINFER_CHECK(!capturing, "cuda: internal error: a buffer moved while a CUDA graph was "
                               "being recorded (run with DETINFER_CUDA_GRAPHS=0 and report it)");
    check(cudaStreamSynchronize(stream), "stream synchronize");
  }

  const int32_t* meta(int64_t off) const { return meta_dev.as<int32_t>() + off; }
  // Makes b hold at least `bytes` (doubling): queued kernels may still use the old buffer, and
  // recordings that point at it are dropped (generation).
  void grow(DeviceBuffer& b, int64_t bytes, const char* what) {
    if (b.bytes() >= bytes) return;
    sync();
    ++generation;
    b.allocate(std::max(bytes, 2 * b.bytes()), what);
  }

  // gate_up: two parts of F rows interleaved in blocks of 8 (cuda::GemmSwiglu's layout) for the
  // SwiGLU epilogue, 16·⌈F/8⌉ rows.
  DeviceBuffer upload_matrix(const std::vector<const TensorView*>& parts, cuda::GemmWeight* view,
                             bool gate_up = false);
  const cuda::GemmWeight& matrix(const TensorView& w);
  const Stack& stack(int n, const TensorView* const* ws, const TensorView* const* biases,
                     bool gate_up = false);
  DeviceBuffer stack_out;  // a stacked GEMM's output before the split
  static constexpr int64_t kStackMaxM = 64;  // above: one GEMM per part (matmul_n)
  // y = x·Wᵀ (+ bias) with the GEMM of this object's mode (x rounded to bf16 unless its copy is
  // already there).
  void gemm(const float* x, int64_t M, const cuda::GemmWeight& g, const float* bias, float* y);
  // The same into column parts (cuda::GemmParts): the Hopper GEMM writes them directly (only
  // there: callers use it when gemm_writes_parts()).
  void gemm_parts(const float* x, int64_t M, const cuda::GemmWeight& g, const float* bias,
                  const cuda::GemmParts& out);
  bool gemm_writes_parts() const { return deterministic && hopper; }
  // x rounded to bf16 once (x_bf16, rows of twin_ld(K)) unless its copy is already there.
  int64_t round_input(const float* x, int64_t M, int64_t K);
  const Raw& raw_table(const TensorView& t);
  const float* vector(const TensorView& t, int64_t n, const char* what);
  void ensure_rope_rows(int64_t rows);
  void require_step(const char* op) const {
    DETINFER_CHECK(have_step, "cuda ", op, ": begin_step() was not called");
  }
};

// Weights [N_i, K] stacked row-wise into one bf16 matrix, dequantized exactly (dequantize_row),
// each value rounded to bf16, padded with zeros to the tile multiples. Rows are independent:
// large matrices are converted on several host threads.
DeviceBuffer CudaOps::Impl::upload_matrix(const std::vector<const TensorView*>& parts,
                                          cuda::GemmWeight* view, bool gate_up) {
  const int64_t K = parts[0]->cols();
  int64_t N = 0;
  for (const TensorView* w : parts) {
    DETINFER_CHECK(w->shape.size() == 2, "cuda matmul: weight ", w->name, " has shape ",
                   w->shape_str(), ", expected [N, K]");
    DETINFER_CHECK(w->cols() == K, "cuda matmul: weights of one input differ in K (", w->name, ")");
    const int64_t row_bytes = dtype_row_bytes(w->dtype, K);
    DETINFER_CHECK(w->nbytes >= w->rows() * row_bytes, "cuda matmul: weight ", w->name, " holds ",
                   w->nbytes, " bytes, ", w->rows() * row_bytes, " needed for ", w->shape_str(), " ",
                   dtype_name(w->dtype));
    N += w->rows();
  }
  const int64_t F = parts[0]->rows();
  if (gate_up) {
    DETINFER_CHECK(parts.size() == 2 && parts[1]->rows() == F, "cuda matmul_swiglu: gate ",
                   parts[0]->shape_str(), " and up ", parts.back()->shape_str(), " differ in shape");
    N = 16 * ((F + 7) / 8);
  }
  cuda::GemmWeight v;
  v.N = N, v.K = K;
  v.Np = round_up(N, cuda::kGemmBN), v.Kp = round_up(K, cuda::kGemmBK);
  std::vector<uint16_t> host(static_cast<size_t>(v.Np * v.Kp), 0);
  std::exception_ptr error;
  std::mutex error_mu;
  auto convert = [&](int64_t r0, int64_t r1) {  // rows of the stack
    try {
      std::vector<float> row(static_cast<size_t>(K));
      size_t part = 0;
      int64_t base = 0;
      for (int64_t r = r0; r < r1; ++r) {
        int64_t src = 0;  // row of part `part`
        if (gate_up) {    // stacked row 16j + 8p + i: part p's row 8j + i (zeros past F)
          part = static_cast<size_t>((r >> 3) & 1), src = (r >> 4) * 8 + (r & 7);
          if (src >= F) continue;
        } else {
          while (r >= base + parts[part]->rows()) base += parts[part++]->rows();
          src = r - base;
        }
        const TensorView& w = *parts[part];
        dequantize_row(w.dtype, w.data + src * dtype_row_bytes(w.dtype, K), row.data(), K);
        uint16_t* dst = host.data() + r * v.Kp;
        for (int64_t k = 0; k < K; ++k) dst[k] = f32_to_bf16(row[k]);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
    }
  };
  const int64_t workers = N * K < (int64_t{1} << 22)
                              ? 1
                              : std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 16);
  std::vector<std::thread> pool;
  for (int64_t i = 1; i < workers; ++i) pool.emplace_back(convert, N * i / workers, N * (i + 1) / workers);
  convert(0, N / workers);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  DeviceBuffer data(static_cast<int64_t>(host.size() * sizeof(uint16_t)), "a matmul weight");
  upload(data.as<void>(), host.data(), host.size() * sizeof(uint16_t), "weight upload");
  v.w = data.as<uint16_t>();
  *view = v;
  return data;
}

const cuda::GemmWeight& CudaOps::Impl::matrix(const TensorView& w) {
  auto it = find_upload(matrices, w);
  if (it != matrices.end()) return it->second.view;
  Matrix m{Signature(w), {}, {}};
  m.data = upload_matrix({&w}, &m.view);
  return matrices.emplace(w.data, std::move(m)).first->second.view;
}

const CudaOps::Impl::Stack& CudaOps::Impl::stack(int n, const TensorView* const* ws,
                                                 const TensorView* const* biases, bool gate_up) {
  std::vector<const void*> key;  // the weights, then the biases (null where none), the layout
  for (int i = 0; i < n; ++i) key.push_back(ws[i]->data);
  for (int i = 0; i < n; ++i) key.push_back(biases[i] ? biases[i]->data : nullptr);
  key.push_back(gate_up ? &kGateUpKey : nullptr);
  auto it = stacks.find(key);
  if (it != stacks.end()) {
    bool same = true;
    for (int i = 0; i < n; ++i) same = same && it->second.sigs[i].matches(*ws[i]);
    for (int i = 0; i < n; ++i)
      same = same && (!biases[i] || it->second.bias_sigs[i].matches(*biases[i]));
    if (same) return it->second;
    sync();
    stacks.erase(it);
    ++generation;
  }
  Stack st;
  std::vector<const TensorView*> parts(ws, ws + n);
  st.data = upload_matrix(parts, &st.view, gate_up);
  int64_t off = 0;
  std::vector<float> bias;
  for (int i = 0; i < n; ++i) {
    st.sigs.emplace_back(*ws[i]);
    st.bias_sigs.push_back(biases[i] ? Signature(*biases[i]) : Signature(*ws[i]));
    st.offsets.push_back(off);
    st.widths.push_back(ws[i]->rows());
    if (biases[i]) {
      DETINFER_CHECK(biases[i]->numel() == ws[i]->rows(), "cuda matmul: ", biases[i]->name, " has ",
                     biases[i]->numel(), " elements, expected ", ws[i]->rows());
      const std::vector<float> b = to_f32(*biases[i]);
      bias.insert(bias.end(), b.begin(), b.end());
    }
    off += ws[i]->rows();
  }
  if (!bias.empty()) {
    st.bias = DeviceBuffer(static_cast<int64_t>(bias.size() * sizeof(float)), "matmul biases");
    upload(st.bias.as<void>(), bias.data(), bias.size() * sizeof(float), "bias upload");
  }
  return stacks.emplace(std::move(key), std::move(st)).first->second;
}

const CudaOps::Impl::Raw& CudaOps::Impl::raw_table(const TensorView& t) {
  auto it = find_upload(raw_tables, t);
  if (it != raw_tables.end()) return it->second;
  DETINFER_CHECK(t.shape.size() == 2, "cuda embed: table ", t.name, " has shape ", t.shape_str(),
                 ", expected [rows, D]");
  Raw r{Signature(t), {}, 0, 0};
  r.rows = t.rows();
  r.row_bytes = dtype_row_bytes(t.dtype, t.cols());
  const int64_t bytes = r.rows * r.row_bytes;
  DETINFER_CHECK(t.nbytes >= bytes, "cuda embed: table ", t.name, " holds ", t.nbytes, " bytes, ",
                 bytes, " needed");
  r.data.allocate(bytes, "an embedding table");
  upload(r.data.as<void>(), t.data, static_cast<size_t>(bytes), "embedding upload");
  return raw_tables.emplace(t.data, std::move(r)).first->second;
}

const float* CudaOps::Impl::vector(const TensorView& t, int64_t n, const char* what) {
  DETINFER_CHECK(t.numel() == n, "cuda ", what, ": ", t.name, " has ", t.numel(),
                 " elements, expected ", n);
  auto it = find_upload(vectors, t);
  if (it == vectors.end()) {
    const std::vector<float> host = to_f32(t);
    Vector v{Signature(t), DeviceBuffer(static_cast<int64_t>(host.size() * sizeof(float)), what)};
    upload(v.data.as<void>(), host.data(), host.size() * sizeof(float), "vector upload");
    it = vectors.emplace(t.data, std::move(v)).first;
  }
  return it->second.data.as<float>();
}

uint16_t* CudaOps::Impl::bf16_input(int64_t rows, int64_t K, int which) {
  const int64_t need = rows * twin_ld(K) * static_cast<int64_t>(sizeof(uint16_t));
  if (x_bf16[which].bytes() < need && which == twin_buf) twin_valid = false;
  grow(x_bf16[which], need, "matmul input (bf16)");
  return x_bf16[which].as<uint16_t>();
}

void CudaOps::Impl::prof_collect() {
  for (ProfRecord& r : prof_pending) {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, r.start, r.stop), "profile event");
    ProfTotal& t = prof_totals[r.key];
    ++t.calls;
    t.ms += ms, t.bytes += r.bytes, t.flops += r.flops;
    prof_free.push_back(r.start);
    prof_free.push_back(r.stop);
  }
  prof_pending.clear();
}

void CudaOps::Impl::prof_print() {
  std::vector<std::pair<std::string, ProfTotal>> rows(prof_totals.begin(), prof_totals.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  double all = 0;
  for (const auto& r : rows) all += r.second.ms;
  std::fprintf(stderr, "\nGPU time per op (DETINFER_PROFILE; events around each op, graphs off): %.1f ms in all\n", all);
  std::fprintf(stderr, "%-44s %8s %10s %6s %9s %8s %9s\n", "op and shape", "calls", "total ms", "%", "avg us",
               "GB/s", "TFLOP/s");
  for (const auto& [key, t] : rows) {
    const double s_total = t.ms / 1e3;
    std::fprintf(stderr, "%-44s %8lld %10.2f %6.1f %9.1f %8.0f %9.1f\n", key.c_str(),
                 static_cast<long long>(t.calls), t.ms, all > 0 ? 100.0 * t.ms / all : 0.0,
                 1e3 * t.ms / static_cast<double>(t.calls), s_total > 0 ? t.bytes / s_total / 1e9 : 0.0,
                 s_total > 0 ? t.flops / s_total / 1e12 : 0.0);
  }
}

void CudaOps::Impl::ensure_rope_rows(int64_t rows) {
  if (rows <= rope_rows) return;
  const int half = config.head_dim / 2;
  int64_t want = std::max<int64_t>(256, rope_rows);
  while (want < rows) want *= 2;
  cos_host.resize(static_cast<size_t>(want * half));
  sin_host.resize(static_cast<size_t>(want * half));
  for (int64_t p = rope_rows; p < want; ++p)
    for (int i = 0; i < half; ++i) {
      // The CPU's recipe (kernels/cpu/rope.cpp): the angle and its cos/sin in fp64, rounded once.
      const double a = static_cast<double>(p) * static_cast<double>(inv_freq[i]);
      cos_host[p * half + i] = static_cast<float>(std::cos(a));
      sin_host[p * half + i] = static_cast<float>(std::sin(a));
    }
  sync();  // the old tables may still be read by queued kernels
  const int64_t bytes = want * half * static_cast<int64_t>(sizeof(float));
  ++generation;
  cos_dev.allocate(bytes, "rope tables");
  sin_dev.allocate(bytes, "rope tables");
  upload(cos_dev.as<void>(), cos_host.data(), bytes, "rope upload");
  upload(sin_dev.as<void>(), sin_host.data(), bytes, "rope upload");
  rope_rows = want;
}

int CudaOps::device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string CudaOps::device_name(int device) {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  return p.name;
}

CudaOps::CudaOps(int device, bool deterministic) : impl_(std::make_unique<Impl>()) {
  const int n = device_count();
  DETINFER_CHECK(device >= 0 && device < n, "CUDA device ", device, " does not exist (",
                 n, " visible)");
  impl_->device = device;
  impl_->set_device();
  check(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking), "stream create");
  check(cudaEventCreateWithFlags(&impl_->meta_copied, cudaEventDisableTiming), "event create");
  impl_->deterministic = deterministic;
  {
    const char* prof = std::getenv("DETINFER_PROFILE");
    impl_->profile = prof && *prof && std::string(prof) != "0";
    const char* g = std::getenv("DETINFER_CUDA_GRAPHS");
    impl_->graphs = !impl_->profile && !(g && std::string(g) == "0");
    const char* gs = std::getenv("DETINFER_GPU_SAMPLING");
    impl_->device_sampling = !(gs && std::string(gs) == "0");
    // Programmatic dependent launch (process-wide; for timing comparisons).
    const char* pdl = std::getenv("DETINFER_PDL");
    if (pdl && std::string(pdl) == "0") cuda::set_pdl(false);
    const char* fs = std::getenv("DETINFER_FUSE_SWIGLU");
    impl_->fuse_swiglu = !(fs && std::string(fs) == "0");
    // RoPE and the cache write inside the decode attention kernel (process-wide; for timing).
    const char* fr = std::getenv("DETINFER_FUSE_ROPE");
    if (fr && std::string(fr) == "0") cuda::set_attention_rope_fusion(false);
  }
  {
    cudaDeviceProp p{};
    check(cudaGetDeviceProperties(&p, device), "device properties");
    const char* force = std::getenv("DETINFER_GEMM");  // "mma": the portable kernel (tests)
    impl_->hopper = p.major == 9 && p.minor == 0 && !(force && std::string(force) == "mma");
    // The sampler's row kernel runs as thread-block clusters (sm_90 and later).
    impl_->sampling_supported = p.major >= 9;
    if (!impl_->sampling_supported) impl_->device_sampling = false;
  }
  impl_->twins = impl_->hopper || !deterministic;
  if (!deterministic) {
    Impl& s = *impl_;
    DETINFER_CHECK(cublasCreate(&s.blas) == CUBLAS_STATUS_SUCCESS, "cuBLAS: cannot create a handle");
    s.blas_workspace.allocate(32ll << 20, "the cuBLAS workspace");
    DETINFER_CHECK(cublasSetStream(s.blas, s.stream) == CUBLAS_STATUS_SUCCESS &&
                       cublasSetWorkspace(s.blas, s.blas_workspace.as<void>(), s.blas_workspace.bytes()) ==
                           CUBLAS_STATUS_SUCCESS &&
                       cublasSetMathMode(s.blas, CUBLAS_DEFAULT_MATH) == CUBLAS_STATUS_SUCCESS,
                   "cuBLAS: cannot set stream, workspace or math mode");
  }
}

CudaOps::~CudaOps() {
  if (!impl_) return;
  cudaSetDevice(impl_->device);
  impl_->abort_capture();
  if (impl_->stream) cudaStreamSynchronize(impl_->stream);
  if (impl_->profile) {
    if (cudaGetLastError() == cudaSuccess) {
      try {
        impl_->prof_collect();
        impl_->prof_print();
      } catch (const std::exception&) {  // a destructor reports nothing it cannot read
      }
    }
    for (auto& r : impl_->prof_pending) impl_->prof_free.push_back(r.start), impl_->prof_free.push_back(r.stop);
    for (cudaEvent_t e : impl_->prof_free) cudaEventDestroy(e);
  }
  impl_->drop_graphs();
  if (impl_->pinned_host) cudaFreeHost(impl_->pinned_host);
  if (impl_->sample_results_pinned) cudaFreeHost(impl_->sample_results_pinned);
  if (impl_->meta_pinned) cudaFreeHost(impl_->meta_pinned);
  if (impl_->meta_copied) cudaEventDestroy(impl_->meta_copied);
  if (impl_->blas) cublasDestroy(impl_->blas);
  Impl* p = impl_.get();
  p->matrices.clear();
  p->stacks.clear();
  p->raw_tables.clear();
  p->vectors.clear();
  p->scratch.clear();
  p->k_cache.release();
  p->v_cache.release();
  p->cos_dev.release();
  p->sin_dev.release();
  p->meta_dev.release();
  if (p->stream) cudaStreamDestroy(p->stream);
}

int CudaOps::device() const { return impl_->device; }
bool CudaOps::deterministic() const { return impl_->deterministic; }

void CudaOps::memory_info(int64_t* free_bytes, int64_t* total_bytes) const {
  impl_->set_device();
  size_t f = 0, t = 0;
  check(cudaMemGetInfo(&f, &t), "cudaMemGetInfo");
  if (free_bytes) *free_bytes = static_cast<int64_t>(f);
  if (total_bytes) *total_bytes = static_cast<int64_t>(t);
}

double CudaOps::copy_bandwidth() {
  Impl& s = *impl_;
  s.set_device();
  s.sync();
  const int64_t bytes = int64_t{256} << 20;
  DeviceBuffer a(bytes, "the copy-bandwidth probe"), b(bytes, "the copy-bandwidth probe");
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  check(cudaEventCreate(&e0), "event create");
  check(cudaEventCreate(&e1), "event create");
  float best_ms = 0;
  for (int rep = 0; rep < 6; ++rep) {  // the first is a warm-up; the fastest of the rest counts
    check(cudaEventRecord(e0, s.stream), "event record");
    check(cudaMemcpyAsync(b.as<void>(), a.as<void>(), bytes, cudaMemcpyDeviceToDevice, s.stream), "copy");
    check(cudaEventRecord(e1, s.stream), "event record");
    check(cudaEventSynchronize(e1), "event sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, e0, e1), "event time");
    if (rep > 0 && (best_ms == 0 || ms < best_ms)) best_ms = ms;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return best_ms > 0 ? 2.0 * static_cast<double>(bytes) / (best_ms / 1e3) : 0.0;
}

int64_t CudaOps::weight_bytes() const {
  int64_t n = 0;
  for (const auto& [key, m] : impl_->matrices) n += m.data.bytes();
  for (const auto& [key, st] : impl_->stacks) n += st.data.bytes();
  return n;
}

void CudaOps::init(const ModelConfig& config, const KvCacheShape& kv) {
  Impl& s = *impl_;
  s.set_device();
  s.sync();
  DETINFER_CHECK(config.head_dim > 0 && config.head_dim % 2 == 0 &&
                     config.head_dim <= cuda::kAttnMaxHeadDim,
                 "cuda: head_dim ", config.head_dim, " must be even and at most ",
                 cuda::kAttnMaxHeadDim);
  DETINFER_CHECK(kv.n_kv_heads == config.n_kv_heads && kv.head_dim == config.head_dim,
                 "cuda: KV cache shape does not match the model");
  DETINFER_CHECK(kv.block_size > 0 && kv.num_blocks >= 0 &&
                     kv.num_blocks * kv.block_size <= 0x7fffffff,
                 "cuda: KV cache of ", kv.num_blocks, " blocks of ", kv.block_size,
                 " positions is out of range");
  // Until the new cache is in place (its allocation may fail), no step may run on the old one.
  s.initialized = false;
  s.have_step = false;
  s.abort_capture();
  s.drop_graphs();
  s.shapes_run.clear();
  ++s.generation;
  s.forget_twin();
  s.config = config;
  s.kv = kv;
  const RopeConfig& r = config.rope;
  s.inv_freq.assign(config.head_dim / 2, 0.0f);
  cpu::rope_inv_freq(config.head_dim, r.theta, r.llama3_factor, r.llama3_low_freq_factor,
                     r.llama3_high_freq_factor, r.llama3_original_max_position, s.inv_freq.data());
  if (!r.freq_factors.empty()) {  // exactly as CpuOps::init
    DETINFER_CHECK(r.freq_factors.size() == s.inv_freq.size(), "rope: ", r.freq_factors.size(),
                   " frequency factors for ", s.inv_freq.size(), " frequencies");
    for (size_t i = 0; i < s.inv_freq.size(); ++i)
      s.inv_freq[i] = static_cast<float>(static_cast<double>(s.inv_freq[i]) / r.freq_factors[i]);
  }
  s.cos_host.clear();
  s.sin_host.clear();
  s.rope_rows = 0;
  s.ensure_rope_rows(1);
  KvCacheShape bf16 = kv;
  bf16.value_bytes = 2;
  const int64_t cache_bytes = bf16.bytes() / 2;  // each of K and V
  s.k_cache.allocate(cache_bytes, "the K cache");
  s.v_cache.allocate(cache_bytes, "the V cache");
  check(cudaMemsetAsync(s.k_cache.as<void>(), 0, s.k_cache.bytes(), s.stream), "cache clear");
  check(cudaMemsetAsync(s.v_cache.as<void>(), 0, s.v_cache.bytes(), s.stream), "cache clear");
  s.initialized = true;
  s.have_step = false;
}

float* CudaOps::scratch(int slot, int64_t n) {
  Impl& s = *impl_;
  DETINFER_CHECK(slot >= 0 && n >= 0, "cuda scratch: bad slot ", slot, " or size ", n);
  if (slot >= static_cast<int>(s.scratch.size())) s.scratch.resize(slot + 1);
  DeviceBuffer& b = s.scratch[slot];
  const int64_t bytes = n * static_cast<int64_t>(sizeof(float));
  if (b.bytes() < bytes || b.bytes() == 0) {
    s.set_device();
    s.flush_rope();  // (it may rotate this buffer)
    s.sync();  // queued kernels may still use the old buffer
    ++s.generation;
    s.forget_twin();
    b.allocate(std::max(bytes, b.bytes() + b.bytes() / 2), "a scratch buffer");
  }
  return b.as<float>();
}

void CudaOps::begin_step(const StepBatch& batch) {
  Impl& s = *impl_;
  DETINFER_CHECK(s.initialized, "cuda: begin_step before init");
  s.set_device();
  s.abort_capture();
  s.flush_rope();
  s.forget_twin();
  const int64_t T = batch.n_tokens();
  const int64_t L = static_cast<int64_t>(batch.logit_tokens.size());
  const int64_t S = static_cast<int64_t>(batch.block_tables.size());
  DETINFER_CHECK(static_cast<int64_t>(batch.pos.size()) == T &&
                     static_cast<int64_t>(batch.seq.size()) == T,
                 "cuda: step has ", T, " tokens but ", batch.pos.size(), " positions and ",
                 batch.seq.size(), " sequence ids");
  // Checks that keep the kernels inside their buffers: every position a token attends to is
  // covered by its table, with blocks inside the cache.
  std::vector<int32_t> max_pos(static_cast<size_t>(S), -1);
  int32_t top = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t q = batch.seq[t], p = batch.pos[t];
    DETINFER_CHECK(q >= 0 && q < S, "cuda: token ", t, " belongs to sequence ", q, " of ", S);
    DETINFER_CHECK(p >= 0, "cuda: token ", t, " has position ", p);
    max_pos[q] = std::max(max_pos[q], p);
    top = std::max(top, p);
  }
  StepLayout& lay = s.layout;
  s.attn_plan = cuda::plan_attention(batch.pos.data(), batch.seq.data(), T, s.config.n_heads,
                                     s.kv.n_kv_heads, s.kv.head_dim);
  const int64_t n_work = static_cast<int64_t>(s.attn_plan.work.size());
  lay.tokens = 0, lay.pos = T, lay.slots = 2 * T, lay.table_off = 3 * T, lay.logit_rows = 4 * T;
  lay.attn = 4 * T + L;
  lay.tables = lay.attn + n_work;
  std::vector<int64_t> seq_off(static_cast<size_t>(S), 0);
  int64_t n_tables = 0;
  for (int64_t q = 0; q < S; ++q) {
    seq_off[q] = n_tables;
    if (max_pos[q] < 0) continue;
    const auto& tab = batch.block_tables[q];
    const int64_t need = max_pos[q] / s.kv.block_size + 1;
    DETINFER_CHECK(static_cast<int64_t>(tab.size()) >= need, "cuda: sequence ", q, " has ",
                   tab.size(), " KV blocks for position ", max_pos[q]);
    for (int64_t b = 0; b < need; ++b)
      DETINFER_CHECK(tab[b] >= 0 && tab[b] < s.kv.num_blocks, "cuda: KV block ", tab[b],
                     " is outside the cache (", s.kv.num_blocks, " blocks)");
    n_tables += need;
  }
  lay.total = lay.tables + n_tables;
  for (int64_t i = 0; i < L; ++i)
    DETINFER_CHECK(batch.logit_tokens[i] >= 0 && batch.logit_tokens[i] < T, "cuda: logit token ",
                   batch.logit_tokens[i], " is outside the step's ", T, " tokens");
  s.ensure_rope_rows(static_cast<int64_t>(top) + 1);

  // Fill the pinned buffer once its previous upload has left it, then upload.
  check(cudaEventSynchronize(s.meta_copied), "metadata event");
  if (s.meta_pinned_cap < lay.total) {
    if (s.meta_pinned) cudaFreeHost(s.meta_pinned);
    s.meta_pinned = nullptr;
    s.meta_pinned_cap = std::max<int64_t>(lay.total, 2 * s.meta_pinned_cap);
    void* p = nullptr;
    check(cudaMallocHost(&p, s.meta_pinned_cap * sizeof(int32_t)), "pinned alloc");
    s.meta_pinned = static_cast<int32_t*>(p);
  }
  int32_t* m = s.meta_pinned;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t q = batch.seq[t], p = batch.pos[t];
    m[lay.tokens + t] = batch.tokens[t];
    m[lay.pos + t] = p;
    m[lay.slots + t] = batch.block_tables[q][p / s.kv.block_size] * s.kv.block_size +
                       p % s.kv.block_size;
    m[lay.table_off + t] = static_cast<int32_t>(lay.tables + seq_off[q]);
  }
  for (int64_t i = 0; i < L; ++i) m[lay.logit_rows + i] = batch.logit_tokens[i];
  if (n_work > 0)
    std::memcpy(m + lay.attn, s.attn_plan.work.data(), static_cast<size_t>(n_work) * sizeof(int32_t));
  for (int64_t q = 0; q < S; ++q)
    if (max_pos[q] >= 0)
      std::memcpy(m + lay.tables + seq_off[q], batch.block_tables[q].data(),
                  static_cast<size_t>(max_pos[q] / s.kv.block_size + 1) * sizeof(int32_t));
  const int64_t bytes = std::max<int64_t>(lay.total, 1) * static_cast<int64_t>(sizeof(int32_t));
  s.grow(s.meta_dev, bytes, "step metadata");
  s.grow(s.attn_workspace, s.attn_plan.workspace_floats * static_cast<int64_t>(sizeof(float)),
         "attention partials");
  check(cudaMemcpyAsync(s.meta_dev.as<void>(), m, lay.total * sizeof(int32_t),
                        cudaMemcpyHostToDevice, s.stream),
        "metadata upload");
  check(cudaEventRecord(s.meta_copied, s.stream), "metadata event");
  s.tokens_host.assign(batch.tokens.begin(), batch.tokens.end());
  if (s.embed_rows > 0)  // also checked here: a replayed step does not call embed()
    for (int32_t tok : s.tokens_host)
      DETINFER_CHECK(tok >= 0 && tok < s.embed_rows, "cuda embed: token ", tok,
                     " is outside the embedding table (", s.embed_rows, " rows)");
  s.T = T, s.L = L;
  s.have_step = true;
  if (s.profile) {
    double positions = 0;
    for (int64_t q = 0; q < S; ++q) positions += max_pos[q] + 1;
    s.attn_kv_bytes = positions * 2.0 * s.kv.n_kv_heads * s.kv.head_dim * sizeof(uint16_t);
  }
}

bool CudaOps::replay_forward() {
  Impl& s = *impl_;
  s.require_step("replay_forward");
  if (!s.graphs || s.T > Impl::kGraphMaxTokens) return false;
  const cuda::AttentionPlan& ap = s.attn_plan;
  // (Whether the attention kernel does RoPE is part of what a recording holds.)
  const Impl::GraphKey key{s.T, s.L, ap.n_small, ap.n_large, ap.n_merge, ap.n_simple,
                           cuda::attention_fuses_rope(ap) ? 1 : 0};
  auto it = s.step_graphs.find(key);
  if (it != s.step_graphs.end()) {
    if (it->second.generation == s.generation) {
      check(cudaGraphLaunch(it->second.exec, s.stream), "CUDA graph launch");
      ++s.graph_replays;
      return true;
    }
    cudaGraphExecDestroy(it->second.exec);
    s.step_graphs.erase(it);
  }
  // The first step of a shape runs op by op: it uploads the weights and grows the buffers that
  // a recording must find in place. The next is recorded (and then run from the recording).
  if (!s.shapes_run.count(key)) {
    s.eager_key = key;
    return false;
  }
  if (s.step_graphs.size() >= Impl::kGraphMax) s.drop_graphs();
  check(cudaStreamBeginCapture(s.stream, cudaStreamCaptureModeThreadLocal), "CUDA graph capture");
  s.capturing = true;
  s.capture_key = key;
  return false;
}

void CudaOps::end_forward() {
  Impl& s = *impl_;
  s.flush_rope();
  if (!s.capturing) {
    if (s.eager_key) s.shapes_run.insert(*s.eager_key);
    s.eager_key.reset();
    return;
  }
  s.capturing = false;
  cudaGraph_t graph = nullptr;
  check(cudaStreamEndCapture(s.stream, &graph), "CUDA graph capture");
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  check(err, "CUDA graph instantiate");
  s.step_graphs[s.capture_key] = Impl::StepGraph{exec, s.generation};
  check(cudaGraphLaunch(exec, s.stream), "CUDA graph launch");  // the recorded step runs now
}

float* CudaOps::host_buffer(int64_t n) {
  Impl& s = *impl_;
  if (s.pinned_host_cap < n) {
    s.set_device();
    s.sync();  // a copy into the old buffer may still be in flight
    if (s.pinned_host) cudaFreeHost(s.pinned_host);
    s.pinned_host = nullptr;
    s.pinned_host_cap = 0;
    void* p = nullptr;
    const int64_t want = std::max<int64_t>(n, 2 * s.pinned_host_cap);
    check(cudaMallocHost(&p, static_cast<size_t>(want) * sizeof(float)), "pinned host buffer");
    s.pinned_host = static_cast<float*>(p);
    s.pinned_host_cap = want;
  }
  return s.pinned_host;
}

// Times the rest of the enclosing op under DETINFER_PROFILE (a no-op otherwise).
#define DETINFER_PROFILE_OP(s, key, bytes, flops) \
  std::optional<Impl::ProfScope> profile_scope;   \
  if ((s).profile) profile_scope.emplace(&(s), key, bytes, flops)

namespace {
std::string shape_key(const char* op, int64_t rows, int64_t cols, int64_t M) {
  return std::string(op) + " " + std::to_string(rows) + "x" + std::to_string(cols) + " M=" +
         std::to_string(M);
}
}  // namespace

void CudaOps::embed(const TensorView& table, float* x) {
  Impl& s = *impl_;
  s.require_step("embed");
  s.set_device();
  s.flush_rope();
  const Impl::Raw& r = s.raw_table(table);
  s.embed_rows = r.rows;
  s.forget_twin();
  for (int32_t tok : s.tokens_host)
    DETINFER_CHECK(tok >= 0 && tok < r.rows, "cuda embed: token ", tok, " is outside ", table.name,
                   " (", r.rows, " rows)");
  DETINFER_PROFILE_OP(s, "embed T=" + std::to_string(s.T), 8.0 * s.T * table.cols(), 0);
  cuda::embed(r.data.as<uint8_t>(), table.dtype, r.row_bytes, table.cols(), s.meta(s.layout.tokens),
              s.T, x, s.stream);
}

int64_t CudaOps::Impl::round_input(const float* x, int64_t M, int64_t K) {
  // x rounded to bf16 once (round to nearest even, as every kernel here), rows of Kp: the input
  // of both the wgmma GEMM and cuBLAS. Skipped when the op that made x also wrote its bf16 copy.
  const int64_t ld = twin_ld(K);
  if (!(twin_valid && twin_src == x && twin_rows == M && twin_K == K)) {
    uint16_t* xb = bf16_input(M, K);
    DETINFER_PROFILE_OP(*this, shape_key("round to bf16", M, K, M), 6.0 * M * K, 0);
    cuda::round_rows_to_bf16(x, M, K, ld, xb, stream);
    set_twin(x, M, K);
  }
  return ld;
}

void CudaOps::Impl::gemm(const float* x, int64_t M, const cuda::GemmWeight& g, const float* b,
                         float* y) {
  if (deterministic && hopper) {
    cuda::GemmParts out;
    out.n = 1, out.y[0] = y, out.col0[1] = g.N;
    return gemm_parts(x, M, g, b, out);
  }
  DETINFER_PROFILE_OP(*this, shape_key("matmul", g.N, g.K, M),
                      2.0 * g.N * g.K + (twins ? 2.0 : 4.0) * M * g.K + 4.0 * M * g.N,
                      2.0 * M * g.N * g.K);
  if (deterministic) return cuda::gemm_bf16(x, M, g, b, y, stream);
  const int64_t ld = round_input(x, M, g.K);
  if (y == twin_src) forget_twin();  // (never in the model: a GEMM writes a new buffer)
  // Off: cuBLAS with its heuristics. Row-major y[M, N] = x[M, K]·Wᵀ is column-major
  // yᵀ[N, M] = W[N, K]ᵀᵀ·xᵀ: op T on W, op N on x (both ld Kp), fp32 output and compute.
  const float one = 1.0f, zero = 0.0f;
  const cublasStatus_t st = cublasGemmEx(
      blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(g.N), static_cast<int>(M), static_cast<int>(g.K), &one,
      g.w, CUDA_R_16BF, static_cast<int>(g.Kp), twin_data(), CUDA_R_16BF, static_cast<int>(ld), &zero, y,
      CUDA_R_32F, static_cast<int>(g.N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  DETINFER_CHECK(st == CUBLAS_STATUS_SUCCESS, "cuBLAS GEMM (", M, "x", g.N, "x", g.K, ") failed: status ",
                 static_cast<int>(st));
  if (b) cuda::add_bias(y, M, g.N, b, stream);
}

void CudaOps::Impl::gemm_parts(const float* x, int64_t M, const cuda::GemmWeight& g,
                               const float* b, const cuda::GemmParts& out) {
  DETINFER_PROFILE_OP(*this, shape_key("matmul", g.N, g.K, M),
                      2.0 * g.N * g.K + (twins ? 2.0 : 4.0) * M * g.K + 4.0 * M * g.N,
                      2.0 * M * g.N * g.K);
  const int64_t ld = round_input(x, M, g.K);
  for (int i = 0; i < out.n; ++i)
    if (out.y[i] == twin_src) forget_twin();  // (never in the model: a GEMM writes a new buffer)
  cuda::gemm_wgmma_parts(twin_data(), ld, M, g, b, out, stream);
}

void CudaOps::matmul(const float* x, int64_t M, const TensorView& w, const TensorView* bias,
                     float* y) {
  Impl& s = *impl_;
  s.set_device();
  s.flush_rope();
  const cuda::GemmWeight& g = s.matrix(w);
  const float* b = bias ? s.vector(*bias, g.N, "matmul bias") : nullptr;
  if (M <= 0) return;
  s.gemm(x, M, g, b, y);
}

void CudaOps::matmul_n(const float* x, int64_t M, int n, const TensorView* const* ws,
                       const TensorView* const* biases, float* const* ys) {
  Impl& s = *impl_;
  s.set_device();
  s.flush_rope();
  int with_bias = 0;
  for (int i = 0; i < n; ++i) with_bias += biases[i] != nullptr;
  // One GEMM over the stacked weights gives each output element the bits of its own GEMM (one K
  // order per element, whatever N). Mixed bias / no bias stays separate: + 0 is not a no-op on -0.
  if (n < 2 || n > cuda::kMaxSplit || (with_bias != 0 && with_bias != n))
    return Ops::matmul_n(x, M, n, ws, biases, ys);
  const Impl::Stack& st = s.stack(n, ws, biases);
  if (M <= 0) return;
  const float* bias = with_bias ? st.bias.as<float>() : nullptr;
  // The Hopper GEMM writes each part's columns to its own buffer: one GEMM, no split pass.
  if (s.gemm_writes_parts()) {
    cuda::GemmParts out;
    out.n = n;
    for (int i = 0; i < n; ++i) out.y[i] = ys[i], out.col0[i] = st.offsets[i];
    out.col0[n] = st.view.N;
    return s.gemm_parts(x, M, st.view, bias, out);
  }
  // Elsewhere, past decode sizes each part runs as its own GEMM on its rows of the stack (a
  // part's padded rows read the next part's, whose outputs are never written); at small M one
  // GEMM over the whole stack, then a split pass, fills the GPU better. The same bits either way.
  bool views = M > Impl::kStackMaxM;
  for (int i = 0; i < n && views; ++i)
    views = st.offsets[i] + round_up(st.widths[i], cuda::kGemmBN) <= st.view.Np;
  if (views) {
    for (int i = 0; i < n; ++i) {
      cuda::GemmWeight part = st.view;
      part.w = st.view.w + st.offsets[i] * st.view.Kp;
      part.N = st.widths[i];
      part.Np = round_up(st.widths[i], cuda::kGemmBN);
      s.gemm(x, M, part, bias ? bias + st.offsets[i] : nullptr, ys[i]);
    }
    return;
  }
  const int64_t need = M * st.view.N * static_cast<int64_t>(sizeof(float));
  s.grow(s.stack_out, need, "a stacked matmul output");
  s.gemm(x, M, st.view, bias, s.stack_out.as<float>());
  cuda::SplitColumns parts;
  parts.n = n;
  for (int i = 0; i < n; ++i) parts.out[i] = ys[i], parts.offset[i] = st.offsets[i], parts.width[i] = st.widths[i];
  DETINFER_PROFILE_OP(s, shape_key("split columns", M, st.view.N, M), 8.0 * M * st.view.N, 0);
  cuda::split_columns(s.stack_out.as<float>(), M, st.view.N, parts, s.stream);
}

void CudaOps::Impl::norm(float* x, const float* r, int64_t rows, int64_t D, const TensorView& w,
                         float eps, float* y) {
  set_device();
  flush_rope();
  const float* wd = vector(w, D, "rmsnorm weight");
  forget_twin();
  if (rows <= 0) return;
  // The norms that feed a GEMM (rows of d_model) also write its bf16 input.
  const bool twin = twins && D == config.d_model;
  uint16_t* tw = twin ? bf16_input(rows, D) : nullptr;
  DETINFER_PROFILE_OP(*this, shape_key(r ? "add+rmsnorm" : "rmsnorm", rows, D, rows),
                      (r ? 16.0 : 8.0) * rows * D, 0);
  cuda::rmsnorm(x, r, rows, D, wd, eps, y, tw, twin_ld(D), stream);
  if (twin) set_twin(y, rows, D);
}

void CudaOps::rmsnorm(const float* x, int64_t rows, int64_t D, const TensorView& w, float eps,
                      float* y) {
  // The kernel takes x as writable for its fused form; without a residual it only reads it.
  impl_->norm(const_cast<float*>(x), nullptr, rows, D, w, eps, y);
}

void CudaOps::add_rmsnorm(float* x, const float* r, int64_t rows, int64_t D, const TensorView& w,
                          float eps, float* y) {
  impl_->norm(x, r, rows, D, w, eps, y);
}

void CudaOps::Impl::flush_rope() {
  for (int i = 0; i < n_pending_rope; ++i) {
    const PendingRope& r = pending_rope[i];
    DETINFER_PROFILE_OP(*this, "rope heads=" + std::to_string(r.n_heads) + " T=" + std::to_string(T),
                        8.0 * T * r.n_heads * config.head_dim, 0);
    cuda::rope(r.x, T, r.n_heads, config.head_dim, meta(layout.pos), cos_dev.as<float>(),
               sin_dev.as<float>(), stream);
  }
  n_pending_rope = 0;
}

void CudaOps::rope(float* x, int n_heads) {
  Impl& s = *impl_;
  s.require_step("rope");
  DETINFER_CHECK(n_heads > 0, "cuda rope: ", n_heads, " heads");
  s.set_device();
  s.forget_twin();
  bool queued = s.n_pending_rope == 2;
  for (int i = 0; i < s.n_pending_rope; ++i) queued = queued || s.pending_rope[i].x == x;
  if (queued) s.flush_rope();  // (a second rotation of the same buffer runs after the first)
  s.pending_rope[s.n_pending_rope++] = Impl::PendingRope{x, n_heads};
}

void CudaOps::attention(int layer, const float* q, const float* k, const float* v, float* out) {
  Impl& s = *impl_;
  s.require_step("attention");
  DETINFER_CHECK(layer >= 0 && layer < s.kv.n_layers, "cuda attention: layer ", layer,
                 " outside the cache's ", s.kv.n_layers);
  s.set_device();
  s.forget_twin();
  const int64_t row = static_cast<int64_t>(s.kv.n_kv_heads) * s.kv.head_dim;
  const int64_t per_layer = s.kv.num_blocks * s.kv.block_size * row;
  uint16_t* kc = s.k_cache.as<uint16_t>() + layer * per_layer;
  uint16_t* vc = s.v_cache.as<uint16_t>() + layer * per_layer;
  // The pending rotations are exactly this q's and this k's (the model's order): one kernel
  // rotates both and writes the cache rows. Anything else: run them, then the plain cache write.
  const Impl::PendingRope* pr = s.pending_rope;
  const bool fused = s.n_pending_rope == 2 && pr[0].x != pr[1].x &&
                     ((pr[0].x == q && pr[0].n_heads == s.config.n_heads && pr[1].x == k &&
                       pr[1].n_heads == s.kv.n_kv_heads) ||
                      (pr[1].x == q && pr[1].n_heads == s.config.n_heads && pr[0].x == k &&
                       pr[0].n_heads == s.kv.n_kv_heads));
  // At small decode batches the attention kernel does that rotation and write itself
  // (cuda::attention_fuses_rope; DETINFER_FUSE_ROPE=0: never, for timing).
  const bool rope_inside = fused && cuda::attention_fuses_rope(s.attn_plan);
  if (fused && !rope_inside) {
    s.n_pending_rope = 0;
    DETINFER_PROFILE_OP(s, "rope+kv write T=" + std::to_string(s.T),
                        8.0 * s.T * (s.config.q_dim() + row) + 8.0 * s.T * row, 0);
    cuda::rope_kv_write(const_cast<float*>(q), const_cast<float*>(k), v, s.T, s.config.n_heads,
                        s.kv.n_kv_heads, s.config.head_dim, s.meta(s.layout.pos),
                        s.cos_dev.as<float>(), s.sin_dev.as<float>(), kc, vc,
                        s.meta(s.layout.slots), s.stream);
  } else if (rope_inside) {
    s.n_pending_rope = 0;
  } else {
    s.flush_rope();
    // New K/V go into the cache first; cached and new positions then go through the same loop.
    cuda::kv_write_bf16(kc, vc, k, v, s.T, row, s.meta(s.layout.slots), s.stream);
  }
  DETINFER_PROFILE_OP(s, (rope_inside ? "rope+kv write+attention T=" : "attention T=") + std::to_string(s.T),
                      s.attn_kv_bytes + 8.0 * s.T * s.config.q_dim() +
                          (rope_inside ? 8.0 * s.T * (s.config.q_dim() + 2 * row) : 0.0),
                      0);
  cuda::PagedAttentionArgs a;
  a.q = q, a.out = out, a.k_cache = kc, a.v_cache = vc;
  a.pos = s.meta(s.layout.pos);
  a.table_off = s.meta(s.layout.table_off);
  a.tables = s.meta(0);
  a.block_size = s.kv.block_size;
  a.scale = 1.0f / std::sqrt(static_cast<float>(s.config.head_dim));  // as CpuOps
  // The output projection's input: the kernel also writes it as bf16, so that GEMM skips its
  // rounding pass.
  const int64_t Q = s.config.q_dim();
  if (s.twins) a.out_bf16 = s.bf16_input(s.T, Q), a.out_bf16_ld = Impl::twin_ld(Q);
  if (rope_inside)
    a.rope = cuda::RopeInAttention{const_cast<float*>(q), const_cast<float*>(k), v, s.cos_dev.as<float>(),
                                   s.sin_dev.as<float>(), s.meta(s.layout.slots), kc, vc};
  cuda::attention_paged(a, s.attn_plan, s.meta(s.layout.attn), s.attn_workspace.as<float>(),
                        s.stream);
  if (s.twins) s.set_twin(out, s.T, Q);
}

void CudaOps::matmul_swiglu(const float* x, int64_t M, const TensorView& w_gate,
                            const TensorView& w_up, float* gate, float* up, float* out) {
  Impl& s = *impl_;
  if (!s.gemm_writes_parts() || !s.fuse_swiglu)
    return Ops::matmul_swiglu(x, M, w_gate, w_up, gate, up, out);
  s.set_device();
  s.flush_rope();
  const TensorView* ws[2] = {&w_gate, &w_up};
  const TensorView* bs[2] = {nullptr, nullptr};
  const Impl::Stack& st = s.stack(2, ws, bs, /*gate_up=*/true);
  if (M <= 0) return;
  const int64_t F = w_gate.rows(), K = st.view.K;
  // The down projection reads out's bf16 copy; it goes to the second buffer while the GEMM
  // reads its input from the first.
  const bool twin = s.twins && F == s.config.d_ff;
  uint16_t* tw = twin ? s.bf16_input(M, F, 1) : nullptr;
  if (s.twin_buf == 1) s.forget_twin();  // x's copy must be in x_bf16[0]
  cuda::GemmParts o;
  o.n = 1, o.y[0] = out, o.col0[1] = st.view.N;
  o.swiglu = cuda::GemmSwiglu{out, tw, F, Impl::twin_ld(F)};
  DETINFER_PROFILE_OP(s, shape_key("matmul+swiglu", 2 * F, K, M),
                      2.0 * st.view.N * K + 2.0 * M * K + (twin ? 6.0 : 4.0) * M * F,
                      4.0 * M * F * K);
  const int64_t ld = s.round_input(x, M, K);
  if (out == s.twin_src) s.forget_twin();  // (never in the model: out is a new buffer)
  cuda::gemm_wgmma_parts(s.twin_data(), ld, M, st.view, nullptr, o, s.stream);
  if (twin) s.set_twin(out, M, F, 1);
  else s.forget_twin();
}

void CudaOps::swiglu(const float* gate, const float* up, int64_t n, float* out) {
  Impl& s = *impl_;
  s.set_device();
  s.flush_rope();
  s.forget_twin();
  if (n <= 0) return;
  // The down projection's input: rows of d_ff.
  const int64_t F = s.config.d_ff;
  const bool twin = s.twins && F > 0 && n % F == 0;
  uint16_t* tw = twin ? s.bf16_input(n / F, F) : nullptr;
  DETINFER_PROFILE_OP(s, shape_key("swiglu", n / std::max<int64_t>(F, 1), F, n / std::max<int64_t>(F, 1)),
                      12.0 * n, 0);
  cuda::swiglu(gate, up, n, out, tw, F, Impl::twin_ld(F), s.stream);
  if (twin) s.set_twin(out, n / F, F);
}

void CudaOps::add(float* y, const float* x, int64_t n) {
  Impl& s = *impl_;
  s.set_device();
  s.flush_rope();
  s.forget_twin();
  DETINFER_PROFILE_OP(s, "add n=" + std::to_string(n), 12.0 * n, 0);
  cuda::add(y, x, n, s.stream);
}

void CudaOps::gather_logit_rows(const float* x, int64_t D, float* out) {
  Impl& s = *impl_;
  s.require_step("gather_logit_rows");
  s.set_device();
  s.flush_rope();
  s.forget_twin();
  DETINFER_PROFILE_OP(s, "gather rows L=" + std::to_string(s.L), 8.0 * s.L * D, 0);
  cuda::gather_rows(x, D, s.meta(s.layout.logit_rows), s.L, out, s.stream);
}

void CudaOps::to_host(const float* src, int64_t n, float* dst) {
  Impl& s = *impl_;
  if (n <= 0) return;
  s.set_device();
  s.flush_rope();
  {
    DETINFER_PROFILE_OP(s, "copy to host n=" + std::to_string(n), 4.0 * n, 0);
    check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, s.stream),
          "copy to host");
  }
  s.sync();
  if (s.profile) s.prof_collect();
}

void CudaOps::from_host(const float* src, int64_t n, float* dst) {
  Impl& s = *impl_;
  if (n <= 0) return;
  s.set_device();
  s.flush_rope();
  s.forget_twin();
  check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, s.stream),
        "copy to device");
  s.sync();
}

bool CudaOps::samples_on_device() const {
  // Larger vocabularies than the GPU sampler takes are sampled on the CPU.
  return impl_->device_sampling && impl_->config.vocab_size <= cuda::kSampleMaxVocab;
}
void CudaOps::set_device_sampling(bool enabled) {
  impl_->device_sampling = enabled && impl_->sampling_supported;
}

void CudaOps::sample_rows(const float* logits, int64_t n_rows, int32_t vocab, const SampleRow* rows,
                          SampleRowResult* out) {
  Impl& s = *impl_;
  if (n_rows <= 0) return;
  s.set_device();
  s.flush_rope();
  s.forget_twin();
  // Parameters, and the histories of the rows whose penalties read them.
  s.sample_params_host.assign(static_cast<size_t>(n_rows), cuda::SampleRowParams{});
  s.sample_history_host.clear();
  for (int64_t r = 0; r < n_rows; ++r) {
    const SampleRow& in = rows[r];
    cuda::SampleRowParams& p = s.sample_params_host[r];
    p.temperature = in.temperature, p.top_p = in.top_p, p.min_p = in.min_p;
    p.repetition_penalty = in.repetition_penalty;
    p.frequency_penalty = in.frequency_penalty, p.presence_penalty = in.presence_penalty;
    p.top_k = in.top_k, p.n_logprobs = in.n_logprobs, p.want_token = in.want_token;
    p.seed = in.seed, p.token_index = in.token_index;
    const bool penalties = in.repetition_penalty != 1.0f || in.frequency_penalty != 0.0f ||
                           in.presence_penalty != 0.0f;
    if (in.want_token < 0 && penalties && in.history_len > 0) {
      p.history_offset = static_cast<int64_t>(s.sample_history_host.size());
      p.history_len = in.history_len;
      p.n_prompt = static_cast<int32_t>(in.n_prompt);
      s.sample_history_host.insert(s.sample_history_host.end(), in.history, in.history + in.history_len);
    }
  }
  const int64_t params_bytes = n_rows * static_cast<int64_t>(sizeof(cuda::SampleRowParams));
  const int64_t history_bytes = static_cast<int64_t>(s.sample_history_host.size() * sizeof(int32_t));
  const int64_t ws_bytes = static_cast<int64_t>(cuda::sample_workspace_bytes(n_rows, vocab));
  const int64_t results_bytes = n_rows * static_cast<int64_t>(sizeof(cuda::SampleRowResult));
  s.grow(s.sample_params, params_bytes, "sampling parameters");
  s.grow(s.sample_history, history_bytes, "sampling histories");
  s.grow(s.sample_workspace, ws_bytes, "the sampling workspace");
  s.grow(s.sample_results, results_bytes, "sampling results");
  if (s.sample_results_cap < n_rows) {
    s.sync();
    if (s.sample_results_pinned) cudaFreeHost(s.sample_results_pinned);
    s.sample_results_pinned = nullptr;
    void* p = nullptr;
    const int64_t want = std::max<int64_t>(n_rows, 2 * s.sample_results_cap);
    check(cudaMallocHost(&p, static_cast<size_t>(want) * sizeof(cuda::SampleRowResult)), "pinned results");
    s.sample_results_pinned = static_cast<cuda::SampleRowResult*>(p);
    s.sample_results_cap = want;
  }
  check(cudaMemcpyAsync(s.sample_params.as<void>(), s.sample_params_host.data(), params_bytes,
                        cudaMemcpyHostToDevice, s.stream), "sampling upload");
  if (history_bytes > 0)
    check(cudaMemcpyAsync(s.sample_history.as<void>(), s.sample_history_host.data(), history_bytes,
                          cudaMemcpyHostToDevice, s.stream), "sampling upload");
  {
    DETINFER_PROFILE_OP(s, "sample rows=" + std::to_string(n_rows), 4.0 * n_rows * vocab, 0);
    cuda::sample_rows(logits, vocab, n_rows, vocab, s.sample_params.as<cuda::SampleRowParams>(),
                      history_bytes > 0 ? s.sample_history.as<int32_t>() : nullptr,
                      s.sample_workspace.as<void>(), static_cast<size_t>(s.sample_workspace.bytes()),
                      s.sample_results.as<cuda::SampleRowResult>(), s.stream);
  }
  check(cudaMemcpyAsync(s.sample_results_pinned, s.sample_results.as<void>(), results_bytes,
                        cudaMemcpyDeviceToHost, s.stream), "sampling results");
  s.sync();  // (the pageable uploads above are also complete once this returns)
  if (s.profile) s.prof_collect();
  for (int64_t r = 0; r < n_rows; ++r) {
    const cuda::SampleRowResult& d = s.sample_results_pinned[r];
    switch (d.status) {
      case cuda::kSampleOk: break;
      case cuda::kSampleNonFiniteLogit: {
        float v = 0;
        check(cudaMemcpy(&v, logits + r * vocab + d.detail, sizeof v, cudaMemcpyDeviceToHost), "copy");
        fail("sampler: logit of token ", d.detail, " is ", v, " (the model produced a non-finite value)");
      }
      case cuda::kSampleNoFiniteLogit: fail("sampler: every logit is -inf; no token can be chosen");
      case cuda::kSampleBadHistory:
        fail("sampler: a history token is outside the vocabulary of ", vocab, " (history index ",
             d.detail, ")");
      case cuda::kSampleBadWantToken:
        fail("sampler: token ", rows[r].want_token, " is outside the vocabulary of ", vocab);
      default: fail("sampler: parameters of row ", r, " are out of range (status ", d.status, ")");
    }
    SampleRowResult& o = out[r];
    o.token = d.token;
    o.logprob = d.logprob;
    o.top.clear();
    for (int i = 0; i < d.n_top; ++i) o.top.emplace_back(d.top_token[i], d.top_logprob[i]);
  }
}

void CudaOps::set_cuda_graphs(bool enabled) {
  Impl& s = *impl_;
  s.abort_capture();
  s.graphs = enabled && !s.profile;
  if (!s.graphs) s.drop_graphs();
}

bool CudaOps::cuda_graphs() const { return impl_->graphs; }
int64_t CudaOps::graph_replays() const { return impl_->graph_replays; }

void CudaOps::synchronize() {
  impl_->set_device();
  impl_->sync();
}

void CudaOps::det_expf_n(const float* x, int64_t n, float* y) {
  Impl& s = *impl_;
  s.set_device();
  s.flush_rope();
  s.forget_twin();
  cuda::exp_n(x, n, y, s.stream);
}

}  // namespace detinfer
