// The GPU interface of a build with the CUDA toolkit: the probe, CUDA IPC imports, the copies
// on the daemon's streams and page-locking. See gpu.h.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstring>
#include <map>
#include <vector>

#include "daemon/gpu/cuda_batch.h"
#include "daemon/gpu/gpu.h"
#include "ipc/base/check.h"
#include "ipc/base/mutex.h"

namespace kvtier {
namespace {

Status CudaError(const char* what, cudaError_t err) {
  return Status(StatusCode::kInternal,
                std::string(what) + ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

Status NoDevice() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  return Status(StatusCode::kUnavailable,
                std::string("no CUDA device: ") +
                    (err != cudaSuccess ? cudaGetErrorString(err) : "the driver reports none"));
}

bool HaveDevice() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

// Process-wide state: one non-blocking stream per device for the daemon's copies, and the IPC
// memory opened so far (a handle is opened once per device; sessions that register the same
// memory share the mapping).
struct Shared {
  Mutex mu;
  std::map<int, cudaStream_t> streams KVT_GUARDED_BY(mu);
  struct Opened {
    void* base = nullptr;
    uint32_t users = 0;
  };
  std::map<std::pair<int, std::string>, Opened> memory KVT_GUARDED_BY(mu);
};

Shared& State() {
  static Shared* shared = new Shared();  // never destroyed: CUDA may be torn down first
  return *shared;
}

Result<cudaStream_t> StreamFor(int device) {
  Shared& s = State();
  MutexLock lock(s.mu);
  auto it = s.streams.find(device);
  if (it != s.streams.end()) return it->second;
  cudaStream_t stream = nullptr;
  if (cudaError_t err = cudaSetDevice(device); err != cudaSuccess) {
    return CudaError("cudaSetDevice", err);
  }
  if (cudaError_t err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
      err != cudaSuccess) {
    return CudaError("cudaStreamCreateWithFlags", err);
  }
  s.streams[device] = stream;
  return stream;
}

// The base and size of the CUDA allocation holding `ptr`; false where the driver cannot tell.
bool AllocationRange(void* ptr, void** base, size_t* bytes) {
  // cuMemGetAddressRange_v2 has had this signature since CUDA 3.2.
  using GetRange = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);
  static const auto get_range =
      reinterpret_cast<GetRange>(cuda_batch::DriverFunction("cuMemGetAddressRange"));
  if (get_range == nullptr) return false;
  CUdeviceptr b = 0;
  size_t n = 0;
  if (get_range(&b, &n, reinterpret_cast<CUdeviceptr>(ptr)) != CUDA_SUCCESS) return false;
  *base = reinterpret_cast<void*>(b);
  *bytes = n;
  return true;
}

void CallLayerDone(void* arg) {
  auto* done = static_cast<std::pair<const GpuCopy*, uint32_t>*>(arg);
  done->first->layer_done(done->second);
}

}  // namespace

struct GpuImport {
  int device = 0;
  std::string handle;  // the key in Shared::memory
  std::byte* base = nullptr;
  uint64_t bytes = 0;
  std::vector<cudaEvent_t> events;
};

void GpuImportDeleter::operator()(GpuImport* import) const {
  cudaSetDevice(import->device);
  for (cudaEvent_t e : import->events) cudaEventDestroy(e);
  Shared& s = State();
  {
    MutexLock lock(s.mu);
    auto it = s.memory.find({import->device, import->handle});
    if (it != s.memory.end() && --it->second.users == 0) {
      cudaIpcCloseMemHandle(it->second.base);
      s.memory.erase(it);
    }
  }
  delete import;
}

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

Result<GpuImportPtr> ImportGpuRegion(int device, std::span<const uint8_t> mem_handle,
                                     uint64_t bytes, std::span<const uint8_t> event_handles) {
  if (!HaveDevice()) return NoDevice();
  int count = 0;
  cudaGetDeviceCount(&count);
  if (device < 0 || device >= count) {
    return Status(StatusCode::kInvalidArgument, "CUDA device " + std::to_string(device) +
                                                    " does not exist (this host has " +
                                                    std::to_string(count) + ")");
  }
  if (mem_handle.size() != sizeof(cudaIpcMemHandle_t) ||
      event_handles.size() % sizeof(cudaIpcEventHandle_t) != 0) {
    return Status(StatusCode::kInvalidArgument, "CUDA IPC handles are 64 bytes each");
  }
  if (cudaError_t err = cudaSetDevice(device); err != cudaSuccess) {
    return CudaError("cudaSetDevice", err);
  }
  GpuImportPtr import(new GpuImport());
  import->device = device;
  import->handle.assign(reinterpret_cast<const char*>(mem_handle.data()), mem_handle.size());
  import->bytes = bytes;
  {
    Shared& s = State();
    MutexLock lock(s.mu);
    Shared::Opened& opened = s.memory[{device, import->handle}];
    if (opened.users == 0) {
      cudaIpcMemHandle_t handle;
      std::memcpy(&handle, mem_handle.data(), sizeof(handle));
      const cudaError_t err =
          cudaIpcOpenMemHandle(&opened.base, handle, cudaIpcMemLazyEnablePeerAccess);
      if (err != cudaSuccess) {
        s.memory.erase({device, import->handle});
        import->handle.clear();
        return Status(StatusCode::kInvalidArgument,
                      std::string("the CUDA IPC memory handle does not open: ") +
                          cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
      }
    }
    ++opened.users;
    import->base = static_cast<std::byte*>(opened.base);
  }
  // cudaIpcOpenMemHandle maps the whole allocation; the region must lie inside it, or copies
  // would run past the mapping into whatever the daemon mapped next (another tenant's memory).
  // Where the size cannot be learned, the region is refused: fail closed.
  void* alloc_base = nullptr;
  size_t alloc_bytes = 0;
  if (!AllocationRange(import->base, &alloc_base, &alloc_bytes)) {
    return Status(StatusCode::kUnavailable,
                  "cannot learn the size of the CUDA allocation behind the handle "
                  "(cuMemGetAddressRange unavailable): region refused");
  }
  const auto skip = static_cast<size_t>(import->base - static_cast<std::byte*>(alloc_base));
  if (import->base < static_cast<std::byte*>(alloc_base) || skip > alloc_bytes ||
      bytes > alloc_bytes - skip) {
    return Status(StatusCode::kInvalidArgument,
                  "region of " + std::to_string(bytes) + " bytes exceeds its CUDA allocation of " +
                      std::to_string(alloc_bytes) + " bytes");
  }
  for (size_t i = 0; i < event_handles.size() / sizeof(cudaIpcEventHandle_t); ++i) {
    cudaIpcEventHandle_t handle;
    std::memcpy(&handle, event_handles.data() + i * sizeof(handle), sizeof(handle));
    cudaEvent_t event = nullptr;
    if (cudaError_t err = cudaIpcOpenEventHandle(&event, handle); err != cudaSuccess) {
      return Status(StatusCode::kInvalidArgument,
                    "CUDA IPC event handle " + std::to_string(i) + " does not open: " +
                        cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
    }
    import->events.push_back(event);
  }
  return import;
}

Status RunGpuCopy(const GpuCopy& copy) {
  GpuImport& region = *copy.region;
  const auto events = static_cast<uint32_t>(region.events.size());
  const auto layers = static_cast<uint32_t>(copy.layer_ends.size());
  if (copy.wait_event != UINT32_MAX && copy.wait_event >= events) {
    return Status(StatusCode::kInvalidArgument,
                  "wait_event " + std::to_string(copy.wait_event) + " is not one of the region's " +
                      std::to_string(events) + " events");
  }
  if (copy.signal_event != UINT32_MAX &&
      (copy.signal_event >= events || layers > events - copy.signal_event)) {
    return Status(StatusCode::kInvalidArgument,
                  "signal_event " + std::to_string(copy.signal_event) + " + " +
                      std::to_string(layers) + " layers exceeds the region's " +
                      std::to_string(events) + " events");
  }
  KVT_ASSIGN_OR_RETURN(cudaStream_t stream, StreamFor(region.device));
  if (cudaError_t err = cudaSetDevice(region.device); err != cudaSuccess) {
    return CudaError("cudaSetDevice", err);
  }
  if (copy.wait_event != UINT32_MAX) {
    if (cudaError_t err = cudaStreamWaitEvent(stream, region.events[copy.wait_event], 0);
        err != cudaSuccess) {
      return CudaError("cudaStreamWaitEvent", err);
    }
  }
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;
  std::vector<std::pair<const GpuCopy*, uint32_t>> done(layers);
  Status status;
  uint32_t begin = 0;
  for (uint32_t layer = 0; layer < layers && status.ok(); ++layer) {
    dsts.clear();
    srcs.clear();
    sizes.clear();
    for (uint32_t i = begin; i < copy.layer_ends[layer]; ++i) {
      const CopySpan& s = copy.spans[i];
      std::byte* pool = copy.pool + s.pool_offset;
      std::byte* gpu = region.base + s.region_offset;
      dsts.push_back(copy.to_pool ? static_cast<void*>(pool) : gpu);
      srcs.push_back(copy.to_pool ? static_cast<const void*>(gpu) : pool);
      sizes.push_back(s.bytes);
    }
    begin = copy.layer_ends[layer];
    if (!sizes.empty()) {
      if (cudaError_t err =
              cuda_batch::MemcpyBatch(dsts.data(), srcs.data(), sizes.data(), sizes.size(), stream);
          err != cudaSuccess) {
        status = CudaError("copy batch", err);
        break;
      }
    }
    if (copy.signal_event != UINT32_MAX) {
      if (cudaError_t err = cudaEventRecord(region.events[copy.signal_event + layer], stream);
          err != cudaSuccess) {
        status = CudaError("cudaEventRecord", err);
        break;
      }
    }
    if (copy.layer_done) {
      done[layer] = {&copy, layer};
      if (cudaError_t err = cudaLaunchHostFunc(stream, CallLayerDone, &done[layer]);
          err != cudaSuccess) {
        status = CudaError("cudaLaunchHostFunc", err);
        break;
      }
    }
  }
  if (status.ok() && copy.enqueued) copy.enqueued();
  // Whatever was queued must finish before the spans' memory may be reused.
  if (cudaError_t err = cudaStreamSynchronize(stream); err != cudaSuccess && status.ok()) {
    status = CudaError("cudaStreamSynchronize", err);
  }
  return status;
}

Result<bool> GpuEventDone(GpuImport* import, uint32_t event) {
  GpuImport& region = *import;
  if (event >= region.events.size()) {
    return Status(StatusCode::kInvalidArgument,
                  "wait_event " + std::to_string(event) + " is not one of the region's " +
                      std::to_string(region.events.size()) + " events");
  }
  if (cudaError_t err = cudaSetDevice(region.device); err != cudaSuccess) {
    return CudaError("cudaSetDevice", err);
  }
  const cudaError_t err = cudaEventQuery(region.events[event]);
  if (err == cudaSuccess) return true;
  if (err == cudaErrorNotReady) return false;
  return CudaError("cudaEventQuery", err);
}

Status PinHostMemory(void* data, size_t bytes) {
  if (!HaveDevice()) return NoDevice();
  if (cudaError_t err = cudaHostRegister(data, bytes, cudaHostRegisterPortable);
      err != cudaSuccess) {
    return CudaError("cudaHostRegister", err);
  }
  return Status::Ok();
}

void UnpinHostMemory(void* data) { cudaHostUnregister(data); }

}  // namespace kvtier
