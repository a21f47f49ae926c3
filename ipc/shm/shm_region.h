// ShmRegion: a memfd-backed shared mapping; the DRAM pool of one tenant.
//
// The daemon Creates one per tenant: a memfd sized to the tenant's reservation, sealed so it can
// never shrink or grow (a client mapping it can never SIGBUS), pre-faulted (first-touch faults
// run at 0.15x of a warm copy on these VMs) and, where permitted, locked in RAM. Clients Map the
// fd they receive and check those seals before trusting it. Move-only; the mapping and fd are
// released together. Not thread-safe to move; the bytes themselves are shared memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "ipc/base/unique_fd.h"
#include "kvclient/status.h"

namespace kvtier {

enum class HugePages { kOff, kTry, kRequire };
enum class LockMemory { kOff, kTry, kRequire };

struct ShmCreateOptions {
  std::string name;  // shows in /proc/PID/fd; e.g. "kvtier-pool-dev"
  uint64_t bytes = 0;
  HugePages huge_pages = HugePages::kTry;
  LockMemory lock_memory = LockMemory::kTry;
};

class ShmRegion {
 public:
  ShmRegion() = default;
  ~ShmRegion();
  ShmRegion(ShmRegion&& other) noexcept;
  ShmRegion& operator=(ShmRegion&& other) noexcept;
  ShmRegion(const ShmRegion&) = delete;
  ShmRegion& operator=(const ShmRegion&) = delete;

  // Daemon side. kResourceExhausted if the memory cannot be had; kFailedPrecondition if
  // huge pages or locking are required and unavailable. `warnings` collects what was degraded
  // (no huge pages, not locked) so the caller can log it.
  static Result<ShmRegion> Create(const ShmCreateOptions& options, std::string* warnings);
  // Daemon side, at a restart that keeps the DRAM tier (daemon/tier/warm_restart.h): takes
  // over the pool memfd of a previous process. kFailedPrecondition if `fd` is not a sealed
  // memfd of exactly options.bytes, or huge pages or locking are required and it cannot have
  // them. Its pages are already in memory: nothing is pre-faulted, and its bytes are kept.
  static Result<ShmRegion> Adopt(UniqueFd fd, const ShmCreateOptions& options,
                                 std::string* warnings);
  // Client side: maps `fd` read-write. kPermissionDenied if the fd is not a sealed memfd of
  // exactly `bytes`.
  static Result<ShmRegion> Map(UniqueFd fd, uint64_t bytes);

  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }
  int fd() const { return fd_.get(); }
  bool huge_pages() const { return huge_pages_; }
  bool locked() const { return locked_; }
  std::span<std::byte> bytes() const { return {data_, size_}; }

 private:
  void Reset();
  // mlock as `lock` asks; a warning where "try" fails.
  Status Lock(LockMemory lock, std::string* warnings);

  UniqueFd fd_;
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
  bool huge_pages_ = false;
  bool locked_ = false;
};

}  // namespace kvtier
