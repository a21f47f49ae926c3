#include "daemon/spill/file_table.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"

namespace kvtier {
namespace {

// Spill files hold ciphertext, but nobody else needs to read them either.
constexpr mode_t kFileMode = 0600;

// fd, or -errno.
int OpenFd(const std::string& path, int flags) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    int fd = ::open(path.c_str(), flags, kFileMode);
    if (fd >= 0) return fd;
    if (errno != EINTR) return -errno;
  }
  return -EINTR;
}

const char* FileType(mode_t mode) {
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device node";
  return "not a regular file";
}

Status Refused(const std::string& path, const std::string& why) {
  return Status(StatusCode::kFailedPrecondition,
                "refusing to use " + path + " as a spill file: " + why);
}

// A spill file must be a regular file of kvtierd's euid: anything else at a segment's name was
// planted (a link or FIFO would have the daemon write elsewhere or block). Checked on the fd,
// so nothing can be swapped in between. Group and other bits, which kvtierd never sets, are
// cleared rather than refused: the file is ours, and its records are authenticated anyway.
Status CheckOpened(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return ErrnoStatus("fstat " + path, errno);
  if (!S_ISREG(st.st_mode)) return Refused(path, std::string("it is ") + FileType(st.st_mode));
  if (st.st_uid != ::geteuid()) {
    return Refused(path, "it is owned by uid " + std::to_string(st.st_uid) +
                             ", not by kvtierd's uid " + std::to_string(::geteuid()));
  }
  if ((st.st_mode & 077) != 0 && ::fchmod(fd, kFileMode) != 0) {
    return ErrnoStatus("chmod 0600 " + path, errno);
  }
  return Status::Ok();
}

// 0, or errno.
int Preallocate(int fd, uint64_t bytes) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    if (::fallocate(fd, 0, 0, static_cast<off_t>(bytes)) == 0) return 0;
    if (errno != EINTR) return errno;
  }
  return EINTR;
}

Status FileStatus(std::string_view what, std::string_view path, int err) {
  // ErrnoStatus maps ENOENT to kUnavailable (a missing socket); a missing file is kNotFound.
  Status status = ErrnoStatus(std::string(what) + " " + std::string(path), err);
  if (err == ENOENT) return Status(StatusCode::kNotFound, status.message());
  return status;
}

}  // namespace

FileTable::FileTable(uint32_t max_files) : slots_(max_files) {}

Result<int> FileTable::Open(std::string_view path, const OpenMode& mode, std::string* warning) {
  auto free_slot = std::find_if(slots_.begin(), slots_.end(),
                                [](const Slot& slot) { return !slot.fd.valid(); });
  if (free_slot == slots_.end()) {
    return Status(StatusCode::kResourceExhausted,
                  "open " + std::string(path) + ": all " + std::to_string(slots_.size()) +
                      " file handles of this device are in use");
  }
  std::string owned_path(path);
  // Never through a symlink (O_NOFOLLOW). A new file is new (O_EXCL): whatever already holds
  // the name, kvtierd did not create it now. An existing one must be a regular file of ours:
  // anything else is refused before it is opened (lstat), and in case it is swapped in after
  // that, it is opened O_NONBLOCK (a FIFO cannot block) and checked again on the fd.
  if (!mode.create) {
    struct stat st {};
    if (::lstat(owned_path.c_str(), &st) != 0) return FileStatus("open", owned_path, errno);
    if (!S_ISREG(st.st_mode)) {
      return Refused(owned_path, std::string("it is ") + FileType(st.st_mode));
    }
  }
  const int flags = O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY |
                    (mode.create ? O_CREAT | O_EXCL : O_NONBLOCK);
  const int fd = OpenFd(owned_path, flags);
  if (fd == -ELOOP) return Refused(owned_path, "it is a symbolic link");
  if (fd == -EEXIST) {
    return Status(StatusCode::kAlreadyExists,
                  "create " + owned_path + ": a file of that name exists that kvtierd did not "
                  "create; refusing to write through it");
  }
  if (fd == -EISDIR || fd == -ENXIO) return Refused(owned_path, "it is not a regular file");
  if (fd < 0) return FileStatus("open", owned_path, -fd);
  UniqueFd owned(fd);
  const auto fail = [&](Status status) {
    owned.reset();
    if (mode.create) ::unlink(owned_path.c_str());  // ours (O_EXCL): leave nothing half made
    return status;
  };
  if (Status checked = CheckOpened(owned.get(), owned_path); !checked.ok()) {
    return fail(std::move(checked));
  }
  // O_DIRECT is set only now: an open with it fails (EINVAL) on a filesystem without direct
  // I/O after O_EXCL has already created the file. O_NONBLOCK goes in the same call.
  const int status_flags = ::fcntl(owned.get(), F_GETFL);
  if (status_flags < 0) return fail(ErrnoStatus("fcntl " + owned_path, errno));
  const int blocking = status_flags & ~O_NONBLOCK;
  bool direct = true;
  if (::fcntl(owned.get(), F_SETFL, blocking | O_DIRECT) != 0) {
    if (errno != EINVAL) return fail(ErrnoStatus("fcntl O_DIRECT " + owned_path, errno));
    // The filesystem has no direct I/O (ramfs, tmpfs before Linux 6.6, some FUSE): the page
    // cache is better than no spill tier.
    direct = false;
    if (::fcntl(owned.get(), F_SETFL, blocking) != 0) {
      return fail(ErrnoStatus("fcntl " + owned_path, errno));
    }
    if (warning != nullptr) {
      *warning = "O_DIRECT rejected (EINVAL) for " + owned_path +
                 "; using buffered I/O through the page cache for this file";
    }
  }

  if (mode.preallocate_bytes > 0) {
    if (mode.preallocate_bytes > static_cast<uint64_t>(std::numeric_limits<off_t>::max())) {
      return fail(
          Status(StatusCode::kInvalidArgument, "preallocation too large for " + owned_path));
    }
    int err = Preallocate(owned.get(), mode.preallocate_bytes);
    if (err == EOPNOTSUPP) {
      // No fallocate here (ramfs): extend the file so the offsets exist; space is not reserved.
      struct stat now {};
      err = 0;
      if (::fstat(owned.get(), &now) != 0) {
        err = errno;
      } else if (static_cast<uint64_t>(now.st_size) < mode.preallocate_bytes &&
                 ::ftruncate(owned.get(), static_cast<off_t>(mode.preallocate_bytes)) != 0) {
        err = errno;
      }
      if (err == 0 && warning != nullptr) {
        if (!warning->empty()) *warning += "; ";
        *warning += "fallocate unsupported for " + owned_path + "; the file is sparse";
      }
    }
    if (err != 0) {
      return fail(FileStatus(
          "preallocate " + std::to_string(mode.preallocate_bytes) + " bytes for", owned_path, err));
    }
  }

  free_slot->fd = std::move(owned);
  free_slot->path = std::move(owned_path);
  free_slot->direct = direct;
  free_slot->in_flight = 0;
  return static_cast<int>(free_slot - slots_.begin());
}

Status FileTable::Close(int file) {
  Slot* slot = Find(file);
  if (slot == nullptr) {
    return Status(StatusCode::kInvalidArgument, "close: unknown file handle " +
                                                    std::to_string(file));
  }
  if (slot->in_flight > 0) {
    return Status(StatusCode::kFailedPrecondition,
                  "close " + slot->path + ": " + std::to_string(slot->in_flight) +
                      " I/O requests in flight");
  }
  // close(2) errors on a regular file only echo earlier writeback errors; Sync reports those.
  slot->fd.reset();
  slot->path.clear();
  return Status::Ok();
}

Status FileTable::Remove(std::string_view path) {
  for (const Slot& slot : slots_) {
    if (slot.fd.valid() && slot.path == path) {
      return Status(StatusCode::kFailedPrecondition,
                    "remove " + std::string(path) + ": the file is open on this device");
    }
  }
  std::string owned_path(path);
  if (::unlink(owned_path.c_str()) != 0) return FileStatus("remove", owned_path, errno);
  return Status::Ok();
}

Status FileTable::Sync(int file) {
  Slot* slot = Find(file);
  if (slot == nullptr) {
    return Status(StatusCode::kInvalidArgument, "sync: unknown file handle " +
                                                    std::to_string(file));
  }
  for (int attempt = 0; attempt < 8; ++attempt) {
    if (::fdatasync(slot->fd.get()) == 0) return Status::Ok();
    if (errno != EINTR) return FileStatus("fdatasync", slot->path, errno);
  }
  return FileStatus("fdatasync", slot->path, EINTR);
}

Status FileTable::Prepare(IoRequest* request, size_t alignment) {
  Slot* slot = Find(request->file);
  if (slot == nullptr) {
    return Status(StatusCode::kInvalidArgument,
                  "submit: unknown file handle " + std::to_string(request->file));
  }
  const uint64_t size = request->buffer.size();
  const auto address = reinterpret_cast<uintptr_t>(request->buffer.data());
  if (size == 0 || size > BlockDevice::kMaxIoBytes || size % alignment != 0 ||
      address % alignment != 0 || request->offset % alignment != 0 ||
      request->offset > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - size) {
    return Status(StatusCode::kInvalidArgument,
                  "submit: buffer of " + std::to_string(size) + " bytes at offset " +
                      std::to_string(request->offset) + " is empty, above 1 GiB or not " +
                      std::to_string(alignment) + "-byte aligned (address, size and offset)");
  }
  request->device = IoRequest::DeviceState{};
  request->device.fd = slot->fd.get();
  request->device.direct = slot->direct;
  request->result = 0;
  ++slot->in_flight;
  return Status::Ok();
}

void FileTable::Finished(const IoRequest& request) {
  Slot* slot = Find(request.file);
  KVT_CHECK(slot != nullptr && slot->in_flight > 0);
  --slot->in_flight;
}

bool FileTable::direct(int file) const {
  const Slot* slot = Find(file);
  return slot != nullptr && slot->direct;
}

FileTable::Slot* FileTable::Find(int file) {
  if (file < 0 || static_cast<size_t>(file) >= slots_.size()) return nullptr;
  Slot& slot = slots_[static_cast<size_t>(file)];
  return slot.fd.valid() ? &slot : nullptr;
}

const FileTable::Slot* FileTable::Find(int file) const {
  if (file < 0 || static_cast<size_t>(file) >= slots_.size()) return nullptr;
  const Slot& slot = slots_[static_cast<size_t>(file)];
  return slot.fd.valid() ? &slot : nullptr;
}

bool RecordAttempt(IoRequest* request, int64_t res, size_t alignment) {
  if (res < 0) {
    request->result = res;
    return false;
  }
  const uint64_t done = request->device.done_bytes + static_cast<uint64_t>(res);
  // Continue only what can make progress: not after EOF (0), not twice, and never from an
  // offset O_DIRECT would reject (a misaligned short transfer ends at EOF anyway).
  if (res == 0 || done >= request->buffer.size() || request->device.continued ||
      (request->device.direct && done % alignment != 0)) {
    request->result = static_cast<int64_t>(done);
    return false;
  }
  request->device.done_bytes = done;
  request->device.continued = true;
  return true;
}

}  // namespace kvtier
