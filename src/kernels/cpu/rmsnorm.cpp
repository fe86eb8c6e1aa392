#include <cmath>

#include "common/error.h"
#include "common/thread_pool.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd.h"

namespace detinfer::cpu {

void rmsnorm(ThreadPool& pool, const float* x, int64_t M, int64_t D, const float* weight, float eps,
             float* y) {
  DETINFER_CHECK(D > 0 && M >= 0, "rmsnorm: bad shape [", M, ", ", D, "]");
  pool.parallel_for(M, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * D;
      float* yr = y + r * D;
      // One row, one canonical sum of squares; sqrtf is correctly rounded everywhere.
      const float ss = detail::dot(xr, xr, D);
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(D) + eps);
      for (int64_t i = 0; i < D; ++i) yr[i] = (xr[i] * inv) * weight[i];
    }
  });
}

}  // namespace detinfer::cpu
