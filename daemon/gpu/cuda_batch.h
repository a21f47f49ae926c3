// The CUDA calls whose form depends on the toolkit's version. CMake builds cuda_batch_13.cc
// (CUDA 13 and later: cudaMemcpyBatchAsync, one driver call per batch) or cuda_batch_12.cc
// (older toolkits: one cudaMemcpyAsync per block).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace kvtier::cuda_batch {

// Queues `count` copies on `stream` (not the legacy default stream), in stream order.
cudaError_t MemcpyBatch(void* const* dsts, const void* const* srcs, const size_t* sizes,
                        size_t count, cudaStream_t stream);

// A driver API function by name, through the runtime (so kvtierd does not link libcuda: a host
// without a driver must still start); null if the driver has none.
void* DriverFunction(const char* name);

}  // namespace kvtier::cuda_batch
