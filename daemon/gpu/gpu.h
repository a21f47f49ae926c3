// The GPU side of kvtierd (issue 5, in progress): what the daemon knows about CUDA devices.
//
// CMake builds this interface from cuda_probe.cc when the CUDA toolkit is found
// (KVTIER_WITH_CUDA=AUTO|ON) and from no_cuda.cc otherwise; nothing else in the daemon
// depends on which. The CUDA build links the static CUDA runtime, which loads the driver
// (libcuda.so.1) at run time: a host without a driver or a device runs the DRAM and SSD tiers
// and answers GPU calls with a clear "no CUDA device" status.
// Thread-safety: ProbeGpus may be called from any thread.
#pragma once

#include <string>

namespace kvtier {

struct GpuProbe {
  bool built_with_cuda = false;
  int devices = 0;       // usable CUDA devices (0 when built without CUDA)
  std::string summary;   // e.g. "2 CUDA devices: NVIDIA H100 80GB HBM3, ..." or why there are none
};

// What this build and this host offer; never fails (a missing driver is a summary, not an
// error).
GpuProbe ProbeGpus();

}  // namespace kvtier
