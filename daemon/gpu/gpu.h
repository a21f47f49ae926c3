// The GPU side of kvtierd: what the daemon knows about CUDA devices, CUDA IPC regions of the
// engines, the copies between them and the pinned pools, and page-locking of the pools.
//
// CMake builds this interface from the cuda_*.cc sources when the CUDA toolkit is found
// (KVTIER_WITH_CUDA=AUTO|ON) and from no_cuda.cc otherwise; nothing else in the daemon
// depends on which. The CUDA build links the static CUDA runtime, which loads the driver
// (libcuda.so.1) at run time: a host without a driver or a device runs the DRAM and SSD tiers
// and answers GPU calls with a clear "no CUDA device" status (kUnavailable).
// Thread-safety: every function may be called from any thread; a GpuImport is used by one
// copy at a time (the copy engine's thread) and may be destroyed on any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "kvclient/status.h"

namespace kvtier {

struct GpuProbe {
  bool built_with_cuda = false;
  int devices = 0;       // usable CUDA devices (0 when built without CUDA)
  std::string summary;   // e.g. "2 CUDA devices: NVIDIA H100 80GB HBM3, ..." or why there are none
};

// What this build and this host offer; never fails (a missing driver is a summary, not an
// error).
GpuProbe ProbeGpus();

// Another process's CUDA memory (cudaIpcOpenMemHandle) and its IPC events, opened here. The
// memory is closed when the last GpuImport holding it goes.
struct GpuImport;
struct GpuImportDeleter {
  void operator()(GpuImport* import) const;
};
using GpuImportPtr = std::unique_ptr<GpuImport, GpuImportDeleter>;

// Opens `mem_handle` (a cudaIpcMemHandle_t) of `bytes` bytes on `device` and each 64-byte
// cudaIpcEventHandle_t in `event_handles`. kUnavailable without a CUDA device; kInvalidArgument
// naming the CUDA error for a handle that does not open.
Result<GpuImportPtr> ImportGpuRegion(int device, std::span<const uint8_t> mem_handle,
                                     uint64_t bytes, std::span<const uint8_t> event_handles);

// One block's copy: `bytes` at `pool_offset` of the pool and at `region_offset` of the region.
struct CopySpan {
  uint64_t pool_offset = 0;
  uint64_t region_offset = 0;
  uint64_t bytes = 0;
};

struct GpuCopy {
  GpuImport* region = nullptr;
  std::byte* pool = nullptr;  // the tenant's pool mapping (pinned where PinHostMemory got to)
  bool to_pool = false;       // offload: region -> pool; else onload: pool -> region
  std::span<const CopySpan> spans;
  std::span<const uint32_t> layer_ends;  // spans[layer_ends[i-1], layer_ends[i]) are layer i
  uint32_t wait_event = UINT32_MAX;      // region event the copies wait for (offload)
  uint32_t signal_event = UINT32_MAX;    // layer i records region event signal_event + i
  std::function<void(uint32_t layer)> layer_done;  // after layer i's bytes have landed
  std::function<void()> enqueued;  // once every copy and event record is queued on the stream
};

// Runs `copy` on the daemon's own stream for the region's device, in batches (one
// cudaMemcpyBatchAsync per layer where the toolkit has it), and returns when every byte has
// landed. An event index outside the region's events is kInvalidArgument before any copy.
Status RunGpuCopy(const GpuCopy& copy);

// Whether the region's IPC event `event` has completed (cudaEventQuery): true, false (not
// yet), kInvalidArgument for an event index outside the region's events, or the CUDA error.
Result<bool> GpuEventDone(GpuImport* region, uint32_t event);

// Page-locks [data, data + bytes) for DMA from every device (cudaHostRegisterPortable).
// kUnavailable without a CUDA device.
Status PinHostMemory(void* data, size_t bytes);
void UnpinHostMemory(void* data);

}  // namespace kvtier
