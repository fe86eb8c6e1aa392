// Ops on the CPU: host memory, fp32 activations, weights read in their stored dtype.
#pragma once
#include <memory>
#include <unordered_map>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "model/ops.h"

namespace detinfer {

class CpuOps final : public Ops {
 public:
  explicit CpuOps(int n_threads);
  const char* name() const override { return "cpu"; }
  int n_threads() const { return pool_.n_threads(); }

  void init(const ModelConfig& config, const KvCacheShape& kv) override;
  float* scratch(int slot, int64_t n) override;
  void begin_step(const StepBatch& batch) override;
  void embed(const TensorView& table, float* x) override;
  void matmul(const float* x, int64_t M, const TensorView& w, const TensorView* bias,
              float* y) override;
  void rmsnorm(const float* x, int64_t rows, int64_t D, const TensorView& w, float eps,
               float* y) override;
  void rope(float* x, int n_heads) override;
  void attention(int layer, const float* q, const float* k, const float* v, float* out) override;
  void swiglu(const float* gate, const float* up, int64_t n, float* out) override;
  void add(float* y, const float* x, int64_t n) override;
  void gather_logit_rows(const float* x, int64_t D, float* out) override;
  void to_host(const float* src, int64_t n, float* dst) override;

 private:
  const float* as_f32(const TensorView& t);  // small vectors (norms, biases), converted once

  ThreadPool pool_;
  ModelConfig config_;
  KvCacheShape kv_shape_;
  std::vector<float> inv_freq_;
  std::vector<std::vector<float>> k_cache_, v_cache_;  // per layer
  std::vector<std::vector<float>> scratch_;
  std::unordered_map<const void*, std::vector<float>> f32_cache_;
  const StepBatch* step_ = nullptr;
  std::vector<const int32_t*> token_tables_;  // block table per token of the step
};

}  // namespace detinfer
