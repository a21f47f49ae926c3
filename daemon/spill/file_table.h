// FileTable: the open files of one BlockDevice, named by small integer handles, and what
// UringDevice and ThreadPoolDevice share: opening with O_DIRECT (buffered where the filesystem
// rejects it), preallocation, close, remove, checking a request before it is submitted, and the
// rule for continuing a short transfer.
// Owns the file descriptors. Sized at construction, then allocation-free on the I/O path.
// Not thread-safe: the owning device's owner thread only (workers get the fd in the request).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/spill/block_device.h"
#include "ipc/base/unique_fd.h"
#include "kvclient/status.h"

namespace kvtier {

class FileTable {
 public:
  explicit FileTable(uint32_t max_files);

  // The contracts of BlockDevice::OpenFile, CloseFile, RemoveFile and Sync.
  Result<int> Open(std::string_view path, const OpenMode& mode, std::string* warning);
  Status Close(int file);
  Status Remove(std::string_view path);
  Status Sync(int file);

  // OK: `request` may be handed to the kernel or a worker: its device state is reset and holds
  // the fd, and the file counts one more I/O in flight. kInvalidArgument as for Submit.
  Status Prepare(IoRequest* request, size_t alignment);
  // The request is being returned by Reap: its file counts one I/O fewer.
  void Finished(const IoRequest& request);

  bool direct(int file) const;

 private:
  struct Slot {
    UniqueFd fd;
    std::string path;
    bool direct = false;
    uint32_t in_flight = 0;
  };
  Slot* Find(int file);
  const Slot* Find(int file) const;

  std::vector<Slot> slots_;
};

// Records one attempt's outcome (`res`: bytes moved or -errno). True: issue the request again
// for the remainder (offset + device.done_bytes, the rest of the buffer); this happens at most
// once per request. False: request->result is final.
bool RecordAttempt(IoRequest* request, int64_t res, size_t alignment);

// The part of the request the next attempt moves.
inline uint64_t AttemptOffset(const IoRequest& request) {
  return request.offset + request.device.done_bytes;
}
inline std::span<std::byte> AttemptBuffer(const IoRequest& request) {
  return request.buffer.subspan(request.device.done_bytes);
}

}  // namespace kvtier
