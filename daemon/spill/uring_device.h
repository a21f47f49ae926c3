// UringDevice: BlockDevice on one io_uring (liburing), the fast path of the spill tier.
//
// Submit prepares one SQE whose user_data is the caller's IoRequest; Flush (or Reap) hands
// every prepared SQE to the kernel in one io_uring_enter, so a burst of Submits costs one
// system call. Completions are harvested in batches of up to 64 CQEs. The ring has at least
// queue_depth SQ entries and twice as many CQ entries, and at most queue_depth requests are in
// flight, so an SQE is always available and the CQ never overflows. event_fd() is an eventfd
// registered with the ring (io_uring_register_eventfd).
// Ownership: owns the ring, the eventfd and the files it opened; borrows requests and buffers.
// Thread-safety: not thread-safe; one owner thread, as for every BlockDevice.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "daemon/spill/block_device.h"
#include "daemon/spill/file_table.h"
#include "daemon/spill/io_ring.h"
#include "ipc/base/unique_fd.h"
#include "kvclient/status.h"

namespace kvtier {

class UringDevice final : public BlockDevice {
 public:
  // OK: a probed ring of options.queue_depth entries. kUnavailable: io_uring cannot be used
  // here (IoRing::Open's message says why). kInvalidArgument: queue_depth or max_files is 0.
  static Result<std::unique_ptr<UringDevice>> Open(const DeviceOptions& options);
  // Waits for every request in flight; their completions are dropped.
  ~UringDevice() override;

  Result<int> OpenFile(std::string_view path, const OpenMode& mode,
                       std::string* warning = nullptr) override;
  Status CloseFile(int file) override;
  Status RemoveFile(std::string_view path) override;
  Status Sync(int file) override;
  Status Submit(IoRequest* request) override;
  Status Flush() override;
  size_t Reap(std::span<IoRequest*> out, bool wait) override;

  int event_fd() const override { return event_fd_.get(); }
  std::string_view name() const override { return "io_uring"; }
  uint32_t queue_depth() const override { return queue_depth_; }
  uint32_t in_flight() const override { return in_flight_; }
  bool direct_io(int file) const override { return files_.direct(file); }

 private:
  UringDevice(IoRing ring, UniqueFd event_fd, const DeviceOptions& options);

  // Prepares an SQE for the request's next attempt.
  void Queue(IoRequest* request);
  // io_uring_submit of the prepared SQEs: 0 or -errno. EAGAIN/EBUSY/EINTR leave them queued.
  int SubmitQueued();
  // Completed requests into `out`; continued short transfers are queued again instead.
  size_t Harvest(std::span<IoRequest*> out);
  void DrainEventFd();
  void SignalEventFd();

  UniqueFd event_fd_;
  IoRing ring_;  // after event_fd_: torn down first
  FileTable files_;
  uint32_t queue_depth_ = 0;
  uint32_t in_flight_ = 0;    // submitted, not yet returned by Reap
  uint32_t unsubmitted_ = 0;  // SQEs prepared, not yet accepted by the kernel
};

}  // namespace kvtier
