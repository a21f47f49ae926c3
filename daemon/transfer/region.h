// Region: memory of a client that kvtierd copies blocks into and out of (offload and onload,
// wire ops 11..14): host memory the client shares as a memfd, or CUDA device memory it shares
// as a CUDA IPC handle. A session's RegionTable holds its regions; a copy in flight holds its
// region too (shared_ptr), so a region deregistered or a session closed mid-copy stays mapped
// until that copy ends.
// Region is immutable after Open and safe to share between the loop and the copy thread;
// RegionTable is used on the event loop only.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "daemon/gpu/gpu.h"
#include "ipc/base/unique_fd.h"
#include "ipc/wire/protocol.h"
#include "kvclient/status.h"

namespace kvtier {

class Region {
 public:
  // A host region: `fd` must be a memfd sealed against shrinking (F_SEAL_SHRINK, so the client
  // cannot truncate it under a copy and crash the daemon with SIGBUS), opened read-write and at
  // least `bytes` long. kInvalidArgument naming what is wrong otherwise.
  static Result<std::shared_ptr<Region>> OpenHost(UniqueFd fd, uint64_t bytes);
  // A CUDA region (see ImportGpuRegion); kUnavailable without a CUDA device.
  static Result<std::shared_ptr<Region>> OpenCuda(int device, std::span<const uint8_t> handle,
                                                  uint64_t bytes,
                                                  std::span<const uint8_t> event_handles);
  ~Region();
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  wire::RegionKind kind() const { return kind_; }
  uint64_t bytes() const { return bytes_; }
  // Host regions: the daemon's mapping of the client's memory.
  std::byte* host() const { return host_; }
  // CUDA regions.
  GpuImport* gpu() const { return gpu_.get(); }
  // True if [offset, offset + bytes) lies inside the region.
  bool Holds(uint64_t offset, uint64_t bytes) const {
    return offset <= bytes_ && bytes <= bytes_ - offset;
  }

 private:
  Region() = default;
  wire::RegionKind kind_ = wire::RegionKind::kHost;
  uint64_t bytes_ = 0;
  std::byte* host_ = nullptr;
  GpuImportPtr gpu_;
};

// The regions of one session, by the ids the session was given (1, 2, ...; never reused
// within the session).
class RegionTable {
 public:
  // The new region's id; kResourceExhausted past wire::kMaxRegionsPerSession.
  Result<uint32_t> Add(std::shared_ptr<Region> region);
  // Null if `id` names no live region of this session.
  std::shared_ptr<Region> Find(uint32_t id) const;
  bool Remove(uint32_t id);
  void Clear() { regions_.clear(); }
  size_t size() const { return regions_.size(); }

 private:
  std::vector<std::pair<uint32_t, std::shared_ptr<Region>>> regions_;
  uint32_t next_id_ = 1;
};

}  // namespace kvtier
