// cuda_batch.h for CUDA 13 and later.
#include "daemon/gpu/cuda_batch.h"

namespace kvtier::cuda_batch {

cudaError_t MemcpyBatch(void* const* dsts, const void* const* srcs, const size_t* sizes,
                        size_t count, cudaStream_t stream) {
  if (count == 1) return cudaMemcpyAsync(dsts[0], srcs[0], sizes[0], cudaMemcpyDefault, stream);
  // One set of attributes for the whole batch: sources are read in stream order (after the
  // event the engine recorded, for an offload).
  cudaMemcpyAttributes attrs{};
  attrs.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
  size_t attrs_index = 0;
  return cudaMemcpyBatchAsync(const_cast<void**>(dsts), const_cast<const void**>(srcs),
                              const_cast<size_t*>(sizes), count, &attrs, &attrs_index, 1, stream);
}

void* DriverFunction(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found{};
  if (cudaGetDriverEntryPointByVersion(name, &fn, CUDART_VERSION, cudaEnableDefault, &found) !=
          cudaSuccess ||
      found != cudaDriverEntryPointSuccess) {
    return nullptr;
  }
  return fn;
}

}  // namespace kvtier::cuda_batch
