// ThreadPoolDevice: BlockDevice on pread/pwrite worker threads, the fallback for hosts where
// io_uring is unavailable (container seccomp profiles, old kernels). Same contract as
// UringDevice, including the one continuation of a short transfer.
//
// Submit links the caller's IoRequest into a pending queue (the request is the queue node:
// nothing is allocated per I/O) and wakes a worker; workers move finished requests to a done
// queue and signal event_fd(), an eventfd. Both queues together hold at most queue_depth
// requests. Flush has nothing to do: workers start as soon as a request is queued.
// Ownership: owns the workers, the eventfd and the files it opened; borrows requests and
// buffers. The destructor lets the workers finish every queued request, then joins them.
// Thread-safety: not thread-safe for callers (one owner thread, as for every BlockDevice); the
// queues shared with the workers are guarded by mu_.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "daemon/spill/block_device.h"
#include "daemon/spill/file_table.h"
#include "ipc/base/mutex.h"
#include "ipc/base/unique_fd.h"
#include "kvclient/status.h"

namespace kvtier {

class ThreadPoolDevice final : public BlockDevice {
 public:
  // OK: options.threads workers are running. kInvalidArgument: threads, queue_depth or
  // max_files is 0, or threads is above 1024. Otherwise the errno of eventfd.
  static Result<std::unique_ptr<ThreadPoolDevice>> Open(const DeviceOptions& options);
  ~ThreadPoolDevice() override;

  Result<int> OpenFile(std::string_view path, const OpenMode& mode,
                       std::string* warning = nullptr) override;
  Status CloseFile(int file) override;
  Status RemoveFile(std::string_view path) override;
  Status Sync(int file) override;
  Status Submit(IoRequest* request) override;
  Status Flush() override { return Status::Ok(); }
  size_t Reap(std::span<IoRequest*> out, bool wait) override;

  int event_fd() const override { return event_fd_.get(); }
  std::string_view name() const override { return name_; }
  uint32_t queue_depth() const override { return queue_depth_; }
  uint32_t in_flight() const override { return in_flight_; }
  bool direct_io(int file) const override { return files_.direct(file); }

 private:
  ThreadPoolDevice(UniqueFd event_fd, const DeviceOptions& options);
  void WorkerLoop();
  void SignalEventFdLocked() KVT_REQUIRES(mu_);
  void DrainEventFdLocked() KVT_REQUIRES(mu_);

  // An intrusive FIFO through IoRequest::device.next.
  struct Queue {
    IoRequest* head = nullptr;
    IoRequest* tail = nullptr;
    bool empty() const { return head == nullptr; }
    void Push(IoRequest* request);
    IoRequest* Pop();
  };

  UniqueFd event_fd_;
  FileTable files_;  // owner thread only; workers get the fd in the request
  const uint32_t queue_depth_;
  const std::string name_;
  uint32_t in_flight_ = 0;  // owner thread only

  Mutex mu_;
  CondVar work_cv_;  // pending_ is not empty, or stopping_
  CondVar done_cv_;  // done_ is not empty
  Queue pending_ KVT_GUARDED_BY(mu_);
  Queue done_ KVT_GUARDED_BY(mu_);
  bool stopping_ KVT_GUARDED_BY(mu_) = false;

  std::vector<std::thread> workers_;  // last: started after everything above exists
};

}  // namespace kvtier
