#include <cmath>
#include <numbers>
#include <vector>

#include "common/error.h"
#include "common/thread_pool.h"
#include "kernels/cpu/ops.h"

namespace detinfer::cpu {

void rope_inv_freq(int head_dim, float theta, float llama3_factor, float low_freq_factor,
                   float high_freq_factor, int original_max_position, float* inv_freq) {
  DETINFER_CHECK(head_dim > 0 && head_dim % 2 == 0,
                 "rope: head_dim must be even and positive, got ", head_dim);
  DETINFER_CHECK(theta > 0.0f, "rope: theta must be positive, got ", theta);
  const bool llama3 = llama3_factor > 0.0f;
  if (llama3)
    DETINFER_CHECK(
        low_freq_factor > 0.0f && high_freq_factor > low_freq_factor && original_max_position > 0,
        "rope: invalid llama3 scaling (low_freq_factor ", low_freq_factor, ", high_freq_factor ",
        high_freq_factor, ", original_max_position ", original_max_position, ")");
  const double factor = llama3_factor, low = low_freq_factor, high = high_freq_factor;
  const double old_len = original_max_position;
  const double low_freq_wavelen = old_len / low, high_freq_wavelen = old_len / high;
  for (int i = 0; i < head_dim / 2; ++i) {
    double f = 1.0 / std::pow(static_cast<double>(theta), (2.0 * i) / head_dim);
    if (llama3) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen < high_freq_wavelen) {
        // high frequency: unchanged
      } else if (wavelen > low_freq_wavelen) {
        f = f / factor;
      } else {
        const double smooth = (old_len / wavelen - low) / (high - low);
        f = (1.0 - smooth) * f / factor + smooth * f;
      }
    }
    inv_freq[i] = static_cast<float>(f);
  }
}

void rope(ThreadPool& pool, float* x, int64_t M, int n_heads, int head_dim, const int32_t* pos,
          const float* inv_freq) {
  DETINFER_CHECK(head_dim > 0 && head_dim % 2 == 0,
                 "rope: head_dim must be even and positive, got ", head_dim);
  const int half = head_dim / 2;
  pool.parallel_for(M, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> cs;
    cs.resize(static_cast<size_t>(head_dim));
    float* c = cs.data();
    float* s = c + half;
    for (int64_t t = begin; t < end; ++t) {
      // The angle and its cos/sin in fp64, rounded once: a function of (pos, i) only.
      for (int i = 0; i < half; ++i) {
        const double a = static_cast<double>(pos[t]) * static_cast<double>(inv_freq[i]);
        c[i] = static_cast<float>(std::cos(a));
        s[i] = static_cast<float>(std::sin(a));
      }
      for (int h = 0; h < n_heads; ++h) {
        float* v = x + (t * n_heads + h) * static_cast<int64_t>(head_dim);
        for (int i = 0; i < half; ++i) {
          const float x0 = v[i], x1 = v[i + half];
          v[i] = x0 * c[i] - x1 * s[i];
          v[i + half] = x1 * c[i] + x0 * s[i];
        }
      }
    }
  });
}

}  // namespace detinfer::cpu
