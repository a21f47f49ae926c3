#include "daemon/transfer/region.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include <string>

#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"

namespace kvtier {
namespace {

Status Invalid(std::string what) { return Status(StatusCode::kInvalidArgument, std::move(what)); }

}  // namespace

Result<std::shared_ptr<Region>> Region::OpenHost(UniqueFd fd, uint64_t bytes) {
  if (!fd.valid()) {
    return Invalid("a host region needs its memfd passed with the request (SCM_RIGHTS)");
  }
  if (bytes == 0) return Invalid("a region of 0 bytes");
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus("fstat(region fd)", errno);
  if (!S_ISREG(st.st_mode)) return Invalid("the region fd is not a memfd");
  // Only shmem (a plain memfd): on hugetlbfs a client could punch out its pages and use up
  // the free huge pages, and the copy thread's next fault would be SIGBUS.
  struct statfs fs {};
  if (fstatfs(fd.get(), &fs) != 0) return ErrnoStatus("fstatfs(region fd)", errno);
  if (fs.f_type != TMPFS_MAGIC) {
    return Invalid(fs.f_type == HUGETLBFS_MAGIC
                       ? "the region memfd is on hugetlbfs (MFD_HUGETLB): use a plain memfd"
                       : "the region fd is not a memfd");
  }
  const int seals = fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0) return Invalid("the region fd is not a memfd (F_GET_SEALS fails)");
  if ((seals & F_SEAL_SHRINK) == 0) {
    return Invalid(
        "the region memfd is not sealed against shrinking: add F_SEAL_SHRINK (a file that "
        "can shrink under a copy would crash the copy)");
  }
  if ((fcntl(fd.get(), F_GETFL) & O_ACCMODE) != O_RDWR) {
    return Invalid("the region fd is not open for reading and writing");
  }
  if (static_cast<uint64_t>(st.st_size) < bytes) {
    return Invalid("region of " + std::to_string(bytes) + " bytes exceeds its memfd of " +
                   std::to_string(st.st_size) + " bytes");
  }
  // Memory the daemon faults in is charged to the daemon: a sparse memfd (a terabyte of holes)
  // would let a client make kvtierd allocate for it until the OOM killer stops every tenant.
  // The client allocates its region itself (fallocate, or writing it), so the daemon's
  // mapping only finds pages that exist.
  if (static_cast<uint64_t>(st.st_blocks) * 512 < static_cast<uint64_t>(st.st_size)) {
    return Invalid("the region memfd is not fully allocated (" +
                   std::to_string(static_cast<uint64_t>(st.st_blocks) * 512) + " of " +
                   std::to_string(st.st_size) + " bytes): fallocate it first");
  }
  // Not populated here: that would hold the event loop for seconds on a large region. The
  // copy thread takes a minor fault on each page's first use instead (~3 ms per 128 MiB).
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap(region fd)", errno);
  std::shared_ptr<Region> region(new Region());
  region->kind_ = wire::RegionKind::kHost;
  region->bytes_ = bytes;
  region->host_ = static_cast<std::byte*>(p);
  return region;  // the mapping keeps the memory; the fd closes here
}

Result<std::shared_ptr<Region>> Region::OpenCuda(int device, std::span<const uint8_t> handle,
                                                 uint64_t bytes,
                                                 std::span<const uint8_t> event_handles) {
  if (bytes == 0) return Invalid("a region of 0 bytes");
  KVT_ASSIGN_OR_RETURN(GpuImportPtr gpu, ImportGpuRegion(device, handle, bytes, event_handles));
  std::shared_ptr<Region> region(new Region());
  region->kind_ = wire::RegionKind::kCuda;
  region->bytes_ = bytes;
  region->gpu_ = std::move(gpu);
  return region;
}

Region::~Region() {
  if (host_ != nullptr) munmap(host_, bytes_);
}

Result<uint32_t> RegionTable::Add(std::shared_ptr<Region> region) {
  if (regions_.size() >= wire::kMaxRegionsPerSession) {
    return Status(StatusCode::kResourceExhausted,
                  "a session may register at most " +
                      std::to_string(wire::kMaxRegionsPerSession) + " regions");
  }
  const uint32_t id = next_id_++;
  regions_.emplace_back(id, std::move(region));
  return id;
}

std::shared_ptr<Region> RegionTable::Find(uint32_t id) const {
  for (const auto& [rid, region] : regions_) {
    if (rid == id) return region;
  }
  return nullptr;
}

bool RegionTable::Remove(uint32_t id) {
  return std::erase_if(regions_, [&](const auto& r) { return r.first == id; }) > 0;
}

}  // namespace kvtier
