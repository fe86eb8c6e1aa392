// Ops on an NVIDIA GPU: the forward pass's operations on device memory, batch-invariant by
// construction (DETERMINISM.md "How kernels keep them"; the orders are in docs/CUDA.md).
//
// Memory: every float* that Ops passes (scratch buffers, the inputs and outputs of the ops) is
// device memory of this object's GPU; to_host / from_host copy to and from host memory.
// Weights come as the loader's TensorView (host memory) and are uploaded the first time an op
// sees them, keyed by TensorView::data (and re-uploaded if that address now holds a tensor of
// another dtype or shape), so the model must outlive this object:
//   - matmul weights: dequantized on the host with dequantize_row(), rounded to bf16 (round to
//     nearest even, f32_to_bf16), stored [N, K] padded with zeros to the GEMM's tile multiples;
//   - embedding tables: the stored bytes, dequantized on the device exactly as dequantize_row();
//   - norm weights and biases: fp32.
// Activations are fp32; the KV cache is bf16 (attention.h).
//
// This header has no CUDA types (opaque implementation), so host-only code can include it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "model/ops.h"

namespace detinfer {

class CudaOps final : public Ops {
 public:
  // Number of CUDA devices visible (0 when there is no driver or no GPU); never throws.
  static int device_count();
  // The device's name, e.g. "NVIDIA H100 80GB HBM3" (empty if it cannot be asked).
  static std::string device_name(int device);

  // deterministic = false is `--determinism off`: matmuls go to cuBLAS with its own heuristics
  // (fastest, not batch-invariant), the price reference for the deterministic kernels.
  explicit CudaOps(int device = 0, bool deterministic = true);  // throws Error if unusable
  ~CudaOps() override;
  CudaOps(const CudaOps&) = delete;
  CudaOps& operator=(const CudaOps&) = delete;

  const char* name() const override { return "cuda"; }
  int device() const;
  bool deterministic() const;
  // Bytes of device memory free and in total on this object's GPU (cudaMemGetInfo).
  void memory_info(int64_t* free_bytes, int64_t* total_bytes) const;
  // Device-to-device copy bandwidth measured now (bytes read + written per second, 256 MiB
  // copies): the ceiling that memory-bound kernels are compared with.
  double copy_bandwidth();
  // Bytes of the matmul weights uploaded so far (bf16, padded): what a batch-1 decode step reads.
  int64_t weight_bytes() const;

  void init(const ModelConfig& config, const KvCacheShape& kv) override;
  float* scratch(int slot, int64_t n) override;
  void begin_step(const StepBatch& batch) override;
  void embed(const TensorView& table, float* x) override;
  // y[M, N] = bf16(x)[M, K] · bf16(W)ᵀ with fp32 accumulation (+ bias in fp32).
  void matmul(const float* x, int64_t M, const TensorView& w, const TensorView* bias,
              float* y) override;
  // The weights of one input as one GEMM over their stacked rows (bits of matmul()): on Hopper it
  // writes each part's buffer directly; elsewhere a split pass (or a GEMM per part) follows.
  void matmul_n(const float* x, int64_t M, int n, const TensorView* const* ws,
                const TensorView* const* biases, float* const* ys) override;
  void rmsnorm(const float* x, int64_t rows, int64_t D, const TensorView& w, float eps,
               float* y) override;
  // Recorded, then run by the attention that reads x (one kernel with the cache writes) or
  // before any other op: the same bits as running it here.
  void rope(float* x, int n_heads) override;
  void attention(int layer, const float* q, const float* k, const float* v, float* out) override;
  void swiglu(const float* gate, const float* up, int64_t n, float* out) override;
  // On Hopper (deterministic): one GEMM over gate and up interleaved in blocks of 8 rows, SwiGLU
  // in its epilogue (gate and up are not written); elsewhere matmul_n then swiglu. Same bits.
  void matmul_swiglu(const float* x, int64_t M, const TensorView& w_gate, const TensorView& w_up,
                     float* gate, float* up, float* out) override;
  void add(float* y, const float* x, int64_t n) override;
  void add_rmsnorm(float* x, const float* r, int64_t rows, int64_t D, const TensorView& w,
                   float eps, float* y) override;
  void gather_logit_rows(const float* x, int64_t D, float* out) override;
  void to_host(const float* src, int64_t n, float* dst) override;  // waits for the copy
  float* host_buffer(int64_t n) override;  // pinned memory
  // CUDA graphs: a step of a shape (tokens, logit rows) seen before is recorded once, then
  // replayed. Off with DETINFER_CUDA_GRAPHS=0 (or set_cuda_graphs(false)) and under
  // DETINFER_PROFILE=1 (which times every op and prints the totals when this object goes).
  bool replay_forward() override;
  void end_forward() override;
  void set_cuda_graphs(bool enabled);
  int kv_value_bytes() const override { return 2; }  // bf16 KV cache
  // Sampling on the GPU (the CPU sampler's bits; off with DETINFER_GPU_SAMPLING=0).
  bool samples_on_device() const override;
  void set_device_sampling(bool enabled);
  void sample_rows(const float* logits, int64_t n_rows, int32_t vocab, const SampleRow* rows,
                   SampleRowResult* out) override;
  bool cuda_graphs() const;
  int64_t graph_replays() const;  // steps replayed from a recording so far

  // Copies n floats from host memory to device memory dst (waits for the copy).
  void from_host(const float* src, int64_t n, float* dst);
  // Waits until every operation issued so far has finished; throws Error on a device fault.
  void synchronize();
  // y[i] = the GPU's exp (the same polynomial and operation order as cpu::det_expf, so the same
  // bits) for device arrays x, y. The one exp every kernel here uses; exposed for tests.
  void det_expf_n(const float* x, int64_t n, float* y);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace detinfer
