// Programmatic dependent launch (sm_90). A kernel launched with the programmatic-serialization
// attribute may start while the kernel before it still runs; it must call pdl_wait() before it
// touches anything that kernel writes or reads. pdl_wait() returns only after the preceding grid
// has completed and its memory is visible, so results never change, only the overlap. A kernel
// calls pdl_launch_dependents() to let the next one start early. Both are no-ops elsewhere.
//
// Every kernel launched through launch_pdl() calls pdl_wait() before it reads memory that an
// earlier kernel of the step writes and before it writes anything. That makes the order transitive: kernel
// n + 2 waits for n + 1, which could not finish before n had. What a kernel may read before its
// wait is what no kernel of the step writes: weights and tables, uploaded (and waited for) at
// load; the step's metadata, which a copy uploads before the step's first kernel, a plain launch
// that starts only once the copy is done, and after which every kernel of the step starts; and
// what only earlier steps wrote (the decode attention's cached keys older than the step,
// attention.cu), done before that copy.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <utility>

#include "kernels/cuda/launch.h"

namespace detinfer::cuda {

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// On by default; set_pdl(false) (DETINFER_PDL=0) launches every kernel plainly, for timing.
inline std::atomic<bool>& pdl_enabled() {
  static std::atomic<bool> on{true};
  return on;
}

// kernel<<<grid, block, smem, stream>>>(args...) with the programmatic-serialization attribute
// (when enabled); throws Error naming `what` if the launch fails.
template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                const char* what, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled().load(std::memory_order_relaxed) ? 1 : 0;
  check(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), what);
}

// The opt-in to more than 48 KB of dynamic shared memory for `Kernel`: it is per device (and per
// kernel instance), so it is set the first time each device launches the kernel.
template <auto Kernel>
void opt_in_dynamic_smem(size_t bytes, const char* what) {
  static std::atomic<uint64_t> configured{0};
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (configured.load() & bit) return;
  check(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), what);
  configured.fetch_or(bit);
}

}  // namespace detinfer::cuda
