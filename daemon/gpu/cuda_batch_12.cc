// cuda_batch.h for CUDA toolkits before 13 (whose cudaMemcpyBatchAsync, where present, has
// another signature): one cudaMemcpyAsync per block.
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

void* DriverFunction(const char* name) {
  void* fn = nullptr;
  if (cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault) != cudaSuccess) return nullptr;
  return fn;
}

}  // namespace kvtier::cuda_batch
