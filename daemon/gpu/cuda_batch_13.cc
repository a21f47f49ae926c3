// cuda_batch.h for CUDA 13 and later.
#include <cuda.h>
#include <cudaTypedefs.h>

#include <vector>

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

bool AllocationRange(void* ptr, void** base, size_t* bytes) {
  // The driver API through the runtime's entry point, so kvtierd does not link libcuda (a host
  // without a driver must still start).
  static PFN_cuMemGetAddressRange_v3020 get_range = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 3020, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      fn = nullptr;
    }
    return reinterpret_cast<PFN_cuMemGetAddressRange_v3020>(fn);
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
