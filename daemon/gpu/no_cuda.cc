// The GPU interface of a build without the CUDA toolkit (KVTIER_WITH_CUDA=OFF, or AUTO where
// none was found).
#include "daemon/gpu/gpu.h"

namespace kvtier {

GpuProbe ProbeGpus() {
  GpuProbe probe;
  probe.summary =
      "no CUDA device: kvtierd was built without CUDA (rebuild with the CUDA toolkit installed, "
      "or -DKVTIER_WITH_CUDA=ON)";
  return probe;
}

}  // namespace kvtier
