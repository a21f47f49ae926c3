// The GPU interface of a build with the CUDA toolkit.
#include <cuda_runtime_api.h>

#include "daemon/gpu/gpu.h"

namespace kvtier {

GpuProbe ProbeGpus() {
  GpuProbe probe;
  probe.built_with_cuda = true;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    probe.summary = std::string("no CUDA device: ") +
                    (err != cudaSuccess ? cudaGetErrorString(err) : "the driver reports none");
    return probe;
  }
  probe.devices = count;
  probe.summary = std::to_string(count) + " CUDA device" + (count > 1 ? "s" : "") + ":";
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) == cudaSuccess) {
      probe.summary += (i > 0 ? ", " : " ") + std::string(prop.name);
    }
  }
  return probe;
}

}  // namespace kvtier
