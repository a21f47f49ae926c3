// BlockDevice: asynchronous positional reads and writes of aligned buffers on files it opens.
// The block I/O layer of the spill tier: UringDevice (io_uring) and ThreadPoolDevice
// (pread/pwrite workers, the fallback) implement it; FaultyDevice wraps one to inject faults.
//
// Life of an I/O: the caller fills an IoRequest it owns and calls Submit; the device keeps a
// pointer to it (the request is io_uring's user_data, or a thread pool queue node: nothing is
// allocated per I/O) until Reap hands the same pointer back with `result` set. Between Submit
// and Reap the request and its buffer belong to the device: the caller must not touch, move or
// free them. At most queue_depth() requests are in flight; Submit beyond that answers
// kResourceExhausted ("queue full"), which is flow control, not a failure: reap, then retry.
//
// Completion: event_fd() is readable while completions wait to be reaped, so an epoll loop can
// wait on it; the caller never reads it, Reap drains it. A Reap that leaves completions behind
// (`out` too small) keeps it readable. It may be readable spuriously (Reap then returns 0):
// io_uring makes a completion visible a moment before it signals the eventfd, so the Reap that
// collects the last completion can leave that one late signal behind; the next Reap, which
// returns 0, clears it. A loop that waits on the fd sees at most one false wake-up, never a
// spin.
//
// Short transfers: a transfer that moves fewer bytes than asked is continued once, internally,
// for its remainder (when the remainder stays aligned, or the file is buffered). What is still
// short after that is the result: 0 <= result < buffer.size() (a read past the end of a file,
// a write the filesystem cut short). A failure is -errno, even if part of the buffer moved.
//
// Ownership: the device owns the files it opened (closed on CloseFile or destruction) and its
// ring or threads; the destructor waits for every in-flight request. Requests and buffers are
// borrowed from the caller.
// Thread-safety: not thread-safe. One owner thread (the I/O thread) calls every method;
// event_fd() may be polled from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "kvclient/status.h"

namespace kvtier {

enum class IoOp : uint8_t { kRead, kWrite };

struct IoRequest {
  // Set by the caller before Submit; the device leaves them as they are.
  IoOp op = IoOp::kRead;
  int file = -1;                // a handle from BlockDevice::OpenFile
  uint64_t offset = 0;          // a multiple of alignment()
  std::span<std::byte> buffer;  // address and size multiples of alignment(), not empty
  void* user = nullptr;         // the caller's; the device never reads it

  // Set by the device when Reap returns the request: bytes moved, or -errno.
  int64_t result = 0;

  // Owned by the device from Submit until Reap returns the request; the caller ignores them.
  struct DeviceState {
    IoRequest* next = nullptr;  // intrusive queue link
    uint64_t done_bytes = 0;    // moved by earlier attempts of a continued short transfer
    int fd = -1;
    bool continued = false;  // the one continuation of a short transfer was issued
    bool direct = false;
  } device;

  // The whole buffer moved.
  bool complete() const { return result >= 0 && static_cast<uint64_t>(result) == buffer.size(); }
};

struct OpenMode {
  bool create = false;             // create the file if it does not exist
  uint64_t preallocate_bytes = 0;  // fallocate [0, preallocate_bytes) when non-zero
};

struct DeviceOptions {
  uint32_t queue_depth = 32;  // requests in flight at most (io_uring SQ entries)
  uint32_t threads = 4;       // pread/pwrite workers of the thread pool fallback
  uint32_t max_files = 256;   // open files at most
  bool force_thread_pool = false;
};

class BlockDevice {
 public:
  static constexpr size_t kAlignment = 4096;
  static constexpr uint64_t kMaxIoBytes = uint64_t{1} << 30;

  virtual ~BlockDevice() = default;
  BlockDevice() = default;
  BlockDevice(const BlockDevice&) = delete;
  BlockDevice& operator=(const BlockDevice&) = delete;

  // OK: a handle for IoRequest::file. The file is opened O_DIRECT|O_CLOEXEC read-write; if its
  // filesystem rejects O_DIRECT (EINVAL) it is opened buffered instead, direct_io() says so and
  // `warning` (when given) explains. A created file whose preallocation fails is removed again.
  // Symlinks are never followed. mode.create makes a new file (mode 0600) or fails with
  // kAlreadyExists if anything holds the name; without it, the path must be a regular file
  // owned by kvtierd's euid (its group and other permission bits are cleared), and is never
  // opened in a way that could block (a FIFO); anything else is kFailedPrecondition, with the
  // path and what it is in the message.
  // kResourceExhausted: no space to preallocate (message names the path), or max_files open.
  // kNotFound: no such file and !mode.create. Otherwise the errno's Status.
  virtual Result<int> OpenFile(std::string_view path, const OpenMode& mode,
                               std::string* warning = nullptr) = 0;
  // OK: closed. kInvalidArgument: not an open handle. kFailedPrecondition: I/O in flight.
  virtual Status CloseFile(int file) = 0;
  // OK: unlinked. kFailedPrecondition: the path is open on this device (close it first).
  // kNotFound: no such file.
  virtual Status RemoveFile(std::string_view path) = 0;
  // fdatasync, on the calling thread (blocks). Needed after O_DIRECT writes into preallocated
  // space too: the extents' written state is metadata.
  virtual Status Sync(int file) = 0;

  // OK: the request is queued; it may not start before Flush() or Reap(). kResourceExhausted
  // "queue full": queue_depth() requests are in flight (not an error: reap, then retry).
  // kInvalidArgument: unknown handle, empty, oversized or misaligned buffer or offset.
  virtual Status Submit(IoRequest* request) = 0;
  // Starts every queued request (one system call for a burst of Submits).
  virtual Status Flush() = 0;
  // Moves up to out.size() completed requests into `out` (result set) and returns how many.
  // wait: block until at least one completes, unless nothing is in flight. Flushes first.
  virtual size_t Reap(std::span<IoRequest*> out, bool wait) = 0;

  virtual int event_fd() const = 0;
  virtual std::string_view name() const = 0;
  virtual size_t alignment() const { return kAlignment; }
  virtual uint32_t queue_depth() const = 0;
  // Submitted and not yet returned by Reap.
  virtual uint32_t in_flight() const = 0;
  // False if the file fell back to buffered I/O; false for an unknown handle.
  virtual bool direct_io(int file) const = 0;
};

}  // namespace kvtier
