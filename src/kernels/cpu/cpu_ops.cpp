#include "kernels/cpu/cpu_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "common/paths.h"

namespace detinfer {

CpuOps::CpuOps(int n_threads) : pool_(n_threads) {}

void CpuOps::init(const ModelConfig& config, const KvCacheShape& kv) {
  config_ = config;
  kv_shape_ = kv;
  const RopeConfig& r = config.rope;
  inv_freq_.assign(config.head_dim / 2, 0.0f);
  cpu::rope_inv_freq(config.head_dim, r.theta, r.llama3_factor, r.llama3_low_freq_factor,
                     r.llama3_high_freq_factor, r.llama3_original_max_position, inv_freq_.data());
  if (!r.freq_factors.empty()) {  // Llama-3 scaling as GGUF stores it: a divisor per frequency
    DETINFER_CHECK(r.freq_factors.size() == inv_freq_.size(), "rope: ", r.freq_factors.size(),
                   " frequency factors for ", inv_freq_.size(), " frequencies");
    for (size_t i = 0; i < inv_freq_.size(); ++i)
      inv_freq_[i] = static_cast<float>(static_cast<double>(inv_freq_[i]) / r.freq_factors[i]);
  }
  check_fits_in_memory(kv.bytes(), "the KV cache", "make it smaller (--kv-mb) or run fewer sequences");
  const int64_t per_layer = kv.num_blocks * kv.block_size * kv.n_kv_heads * kv.head_dim;
  k_cache_.assign(kv.n_layers, std::vector<float>(per_layer, 0.0f));
  v_cache_.assign(kv.n_layers, std::vector<float>(per_layer, 0.0f));
}

float* CpuOps::scratch(int slot, int64_t n) {
  if (slot >= static_cast<int>(scratch_.size())) scratch_.resize(slot + 1);
  if (static_cast<int64_t>(scratch_[slot].size()) < n) scratch_[slot].resize(n);
  return scratch_[slot].data();
}

void CpuOps::begin_step(const StepBatch& batch) {
  step_ = &batch;
  token_tables_.resize(batch.tokens.size());
  for (size_t t = 0; t < batch.tokens.size(); ++t)
    token_tables_[t] = batch.block_tables[batch.seq[t]].data();
}

void CpuOps::embed(const TensorView& table, float* x) {
  const int64_t D = table.cols();
  const int64_t T = step_->n_tokens();
  pool_.parallel_for(T, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) cpu::embed_row(table, step_->tokens[t], x + t * D);
  });
}

void CpuOps::matmul(const float* x, int64_t M, const TensorView& w, const TensorView* bias,
                    float* y) {
  cpu::matmul(pool_, x, M, w.cols(), w, y, bias ? as_f32(*bias) : nullptr);
}

void CpuOps::rmsnorm(const float* x, int64_t rows, int64_t D, const TensorView& w, float eps,
                     float* y) {
  cpu::rmsnorm(pool_, x, rows, D, as_f32(w), eps, y);
}

void CpuOps::rope(float* x, int n_heads) {
  cpu::rope(pool_, x, step_->n_tokens(), n_heads, config_.head_dim, step_->pos.data(),
            inv_freq_.data());
}

void CpuOps::attention(int layer, const float* q, const float* k, const float* v, float* out) {
  cpu::PagedKV kv;
  kv.k = k_cache_[layer].data();
  kv.v = v_cache_[layer].data();
  kv.num_blocks = kv_shape_.num_blocks;
  kv.block_size = kv_shape_.block_size;
  kv.n_kv_heads = kv_shape_.n_kv_heads;
  kv.head_dim = kv_shape_.head_dim;
  const int64_t T = step_->n_tokens();
  cpu::kv_write(kv, k, v, T, step_->pos.data(), token_tables_.data());
  cpu::attention(pool_, q, T, step_->pos.data(), token_tables_.data(), kv, config_.n_heads,
                 1.0f / std::sqrt(static_cast<float>(config_.head_dim)), out);
}

void CpuOps::swiglu(const float* gate, const float* up, int64_t n, float* out) {
  cpu::swiglu(pool_, gate, up, n, out);
}

void CpuOps::add(float* y, const float* x, int64_t n) { cpu::add_inplace(y, x, n); }

void CpuOps::gather_logit_rows(const float* x, int64_t D, float* out) {
  for (size_t i = 0; i < step_->logit_tokens.size(); ++i)
    std::memcpy(out + i * D, x + static_cast<int64_t>(step_->logit_tokens[i]) * D, D * sizeof(float));
}

void CpuOps::to_host(const float* src, int64_t n, float* dst) {
  if (src != dst) std::memcpy(dst, src, n * sizeof(float));
}

const float* CpuOps::as_f32(const TensorView& t) {
  auto it = f32_cache_.find(t.data);
  if (it == f32_cache_.end()) it = f32_cache_.emplace(t.data, to_f32(t)).first;
  return it->second.data();
}

}  // namespace detinfer
