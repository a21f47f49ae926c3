#include "ipc/shm/shm_region.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <thread>
#include <utility>
#include <vector>

#include "ipc/base/errno_status.h"
#include "ipc/base/units.h"

namespace kvtier {
namespace {

constexpr int kRequiredSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

void Note(std::string* warnings, const std::string& text) {
  if (warnings == nullptr) return;
  if (!warnings->empty()) *warnings += "; ";
  *warnings += text;
}

// Populates every page now, so no client ever takes a first-touch fault (0.15x of a warm copy
// on these VMs). The kernel zeroes pages at about 1 GB/s per core, so large pools are split
// across threads: an 8 GiB pool takes seconds, not tens of seconds.
void PreFault(std::byte* data, uint64_t bytes) {
  constexpr uint64_t kChunk = 256 * kMiB;
  const uint64_t cores = std::max(1u, std::thread::hardware_concurrency());
  const uint64_t threads = std::clamp<uint64_t>(bytes / kChunk, 1, std::min<uint64_t>(cores, 16));
  const uint64_t share = AlignUp(bytes / threads, 2 * kMiB);
  auto populate = [](std::byte* begin, uint64_t n) {
    // MADV_POPULATE_WRITE (Linux 5.14+) allocates without writing; else touch each page.
    if (madvise(begin, n, MADV_POPULATE_WRITE) == 0) return;
    const auto page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    for (uint64_t off = 0; off < n; off += page) {
      reinterpret_cast<volatile std::byte*>(begin)[off] = std::byte{0};
    }
  };
  std::vector<std::thread> workers;
  for (uint64_t off = share; off < bytes; off += share) {
    workers.emplace_back(populate, data + off, std::min(share, bytes - off));
  }
  populate(data, std::min(share, bytes));
  for (std::thread& t : workers) t.join();
}

}  // namespace

ShmRegion::~ShmRegion() { Reset(); }

ShmRegion::ShmRegion(ShmRegion&& other) noexcept
    : fd_(std::move(other.fd_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      huge_pages_(other.huge_pages_),
      locked_(other.locked_) {}

ShmRegion& ShmRegion::operator=(ShmRegion&& other) noexcept {
  if (this != &other) {
    Reset();
    fd_ = std::move(other.fd_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    huge_pages_ = other.huge_pages_;
    locked_ = other.locked_;
  }
  return *this;
}

void ShmRegion::Reset() {
  if (data_ != nullptr) munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
  fd_.reset();
}

Result<ShmRegion> ShmRegion::Create(const ShmCreateOptions& options, std::string* warnings) {
  if (options.bytes == 0 || options.bytes % (2 * kMiB) != 0) {
    return Status(StatusCode::kInvalidArgument, "pool size must be a non-zero multiple of 2 MiB");
  }
  ShmRegion region;
  const unsigned base_flags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
  void* p = MAP_FAILED;
  if (options.huge_pages != HugePages::kOff) {
    // Reserved hugetlb pages: fault in at full speed and never split. Needs vm.nr_hugepages;
    // without them ftruncate succeeds and only mmap fails, so try the whole sequence.
    UniqueFd fd(memfd_create(options.name.c_str(), base_flags | MFD_HUGETLB | MFD_HUGE_2MB));
    if (fd.valid() && ftruncate(fd.get(), static_cast<off_t>(options.bytes)) == 0 &&
        fcntl(fd.get(), F_ADD_SEALS, kRequiredSeals) == 0) {
      p = mmap(nullptr, options.bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
               fd.get(), 0);
    }
    if (p != MAP_FAILED) {
      region.fd_ = std::move(fd);
      region.huge_pages_ = true;
    }
  }
  if (p == MAP_FAILED) {
    region.fd_.reset(memfd_create(options.name.c_str(), base_flags));
    if (!region.fd_.valid()) return ErrnoStatus("memfd_create", errno);
    if (ftruncate(region.fd_.get(), static_cast<off_t>(options.bytes)) != 0) {
      return ErrnoStatus("ftruncate(pool memfd)", errno);
    }
    if (fcntl(region.fd_.get(), F_ADD_SEALS, kRequiredSeals) != 0) {
      return ErrnoStatus("fcntl(F_ADD_SEALS)", errno);
    }
    p = mmap(nullptr, options.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, region.fd_.get(), 0);
    if (p == MAP_FAILED) return ErrnoStatus("mmap(pool)", errno);
  }
  region.data_ = static_cast<std::byte*>(p);
  region.size_ = options.bytes;
  if (!region.huge_pages_ && options.huge_pages != HugePages::kOff) {
    // Transparent huge pages for shmem work when shmem_enabled allows "advise".
    madvise(p, options.bytes, MADV_HUGEPAGE);
    if (options.huge_pages == HugePages::kRequire) {
      return Status(StatusCode::kFailedPrecondition,
                    "huge_pages = \"require\" but no 2 MiB hugetlb pages are reserved "
                    "(set vm.nr_hugepages)");
    }
    Note(warnings, "no hugetlb pages reserved: pool uses 4 KiB pages (set vm.nr_hugepages)");
  }
  PreFault(region.data_, options.bytes);
  if (Status s = region.Lock(options.lock_memory, warnings); !s.ok()) return s;
  return region;
}

Status ShmRegion::Lock(LockMemory lock, std::string* warnings) {
  if (lock == LockMemory::kOff) return Status::Ok();
  if (mlock(data_, size_) == 0) {
    locked_ = true;
  } else if (lock == LockMemory::kRequire) {
    return ErrnoStatus("mlock(pool) with lock_memory = \"require\" (raise LimitMEMLOCK)", errno);
  } else {
    Note(warnings, "pool not locked in RAM: mlock failed (raise LimitMEMLOCK / ulimit -l)");
  }
  return Status::Ok();
}

Result<ShmRegion> ShmRegion::Adopt(UniqueFd fd, const ShmCreateOptions& options,
                                   std::string* warnings) {
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus("fstat(kept pool)", errno);
  const int seals = fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0 || (seals & kRequiredSeals) != kRequiredSeals) {
    return Status(StatusCode::kFailedPrecondition, "the kept pool is not a sealed memfd");
  }
  if (static_cast<uint64_t>(st.st_size) != options.bytes) {
    return Status(StatusCode::kFailedPrecondition,
                  "the kept pool has " + std::to_string(st.st_size) + " bytes, the config asks " +
                      std::to_string(options.bytes));
  }
  ShmRegion region;
  // A hugetlb memfd reports its page size as the block size.
  region.huge_pages_ = st.st_blksize >= static_cast<blksize_t>(2 * kMiB);
  if (!region.huge_pages_ && options.huge_pages == HugePages::kRequire) {
    return Status(StatusCode::kFailedPrecondition,
                  "huge_pages = \"require\" but the kept pool has 4 KiB pages");
  }
  if (!region.huge_pages_ && options.huge_pages != HugePages::kOff) {
    Note(warnings, "the kept pool uses 4 KiB pages");
  }
  // The pages exist already: mlock (below) maps them in; MAP_POPULATE would walk them twice.
  const int populate = options.lock_memory == LockMemory::kOff ? MAP_POPULATE : 0;
  void* p = mmap(nullptr, options.bytes, PROT_READ | PROT_WRITE, MAP_SHARED | populate, fd.get(),
                 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap(kept pool)", errno);
  region.fd_ = std::move(fd);
  region.data_ = static_cast<std::byte*>(p);
  region.size_ = options.bytes;
  if (!region.huge_pages_ && options.huge_pages != HugePages::kOff) {
    madvise(p, options.bytes, MADV_HUGEPAGE);
  }
  if (Status s = region.Lock(options.lock_memory, warnings); !s.ok()) return s;
  return region;
}

Result<ShmRegion> ShmRegion::Map(UniqueFd fd, uint64_t bytes) {
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus("fstat(pool fd)", errno);
  const int seals = fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0 || (seals & kRequiredSeals) != kRequiredSeals ||
      static_cast<uint64_t>(st.st_size) != bytes) {
    return Status(StatusCode::kPermissionDenied,
                  "the daemon passed a pool fd that is not a sealed memfd of the announced size");
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap(pool fd)", errno);
  ShmRegion region;
  region.fd_ = std::move(fd);
  region.data_ = static_cast<std::byte*>(p);
  region.size_ = bytes;
  return region;
}

}  // namespace kvtier
