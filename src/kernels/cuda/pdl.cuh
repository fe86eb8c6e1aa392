// Programmatic dependent launch (sm_90). A kernel launched with the programmatic-serialization
// attribute may start while the kernel before it still runs; it must call pdl_wait() before it
// touches anything that kernel writes or reads. pdl_wait() returns only after the preceding grid
// has completed and its memory is visible, so results never change, only the overlap. A kernel
// calls pdl_launch_dependents() to let the next one start early. Both are no-ops elsewhere.
#pragma once

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

}  // namespace detinfer::cuda
