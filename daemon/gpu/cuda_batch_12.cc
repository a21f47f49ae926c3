// cuda_batch.h for CUDA toolkits before 13 (whose cudaMemcpyBatchAsync, where present, has
// another signature): one cudaMemcpyAsync per block.
#include <cuda.h>

#include "daemon/gpu/cuda_batch.h"

namespace kvtier::cuda_batch {

cudaError_t MemcpyBatch(void* const* dsts, const void* const* srcs, const size_t* sizes,
                        size_t count, cudaStream_t stream) {
  for (size_t i = 0; i < count; ++i) {
    const cudaError_t err = cudaMemcpyAsync(dsts[i], srcs[i], sizes[i], cudaMemcpyDefault, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

bool AllocationRange(void* ptr, void** base, size_t* bytes) {
  // The driver API through the runtime's entry point (CUDA 11.3+), so kvtierd does not link
  // libcuda. cuMemGetAddressRange_v2 has this signature since CUDA 3.2.
  using GetRange = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);
  static GetRange get_range = [] {
    void* fn = nullptr;
    if (cudaGetDriverEntryPoint("cuMemGetAddressRange", &fn, cudaEnableDefault) != cudaSuccess) {
      fn = nullptr;
    }
    return reinterpret_cast<GetRange>(fn);
  }();
  if (get_range == nullptr) return false;
  CUdeviceptr b = 0;
  size_t n = 0;
  if (get_range(&b, &n, reinterpret_cast<CUdeviceptr>(ptr)) != CUDA_SUCCESS) return false;
  *base = reinterpret_cast<void*>(b);
  *bytes = n;
  return true;
}

}  // namespace kvtier::cuda_batch
