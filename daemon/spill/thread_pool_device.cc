#include "daemon/spill/thread_pool_device.h"

#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <utility>

#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"

namespace kvtier {
namespace {

constexpr uint32_t kMaxThreads = 1024;

// Bytes moved, or -errno.
int64_t Transfer(const IoRequest& request) {
  const std::span<std::byte> buffer = AttemptBuffer(request);
  const auto offset = static_cast<off_t>(AttemptOffset(request));
  for (int attempt = 0; attempt < 8; ++attempt) {
    const ssize_t moved =
        request.op == IoOp::kWrite
            ? ::pwrite(request.device.fd, buffer.data(), buffer.size(), offset)
            : ::pread(request.device.fd, buffer.data(), buffer.size(), offset);
    if (moved >= 0) return moved;
    if (errno != EINTR) return -errno;
  }
  return -EINTR;
}

}  // namespace

void ThreadPoolDevice::Queue::Push(IoRequest* request) {
  request->device.next = nullptr;
  if (tail == nullptr) {
    head = request;
  } else {
    tail->device.next = request;
  }
  tail = request;
}

IoRequest* ThreadPoolDevice::Queue::Pop() {
  IoRequest* request = head;
  if (request == nullptr) return nullptr;
  head = request->device.next;
  if (head == nullptr) tail = nullptr;
  request->device.next = nullptr;
  return request;
}

Result<std::unique_ptr<ThreadPoolDevice>> ThreadPoolDevice::Open(const DeviceOptions& options) {
  if (options.threads == 0 || options.threads > kMaxThreads || options.queue_depth == 0 ||
      options.max_files == 0) {
    return Status(StatusCode::kInvalidArgument,
                  "thread pool device: threads must be in [1, 1024], queue_depth and max_files "
                  "positive");
  }
  UniqueFd event_fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!event_fd.valid()) return ErrnoStatus("eventfd", errno);
  return std::unique_ptr<ThreadPoolDevice>(new ThreadPoolDevice(std::move(event_fd), options));
}

ThreadPoolDevice::ThreadPoolDevice(UniqueFd event_fd, const DeviceOptions& options)
    : event_fd_(std::move(event_fd)),
      files_(options.max_files),
      queue_depth_(options.queue_depth),
      name_("thread pool (" + std::to_string(options.threads) + " pread/pwrite threads)") {
  workers_.reserve(options.threads);
  for (uint32_t i = 0; i < options.threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPoolDevice::~ThreadPoolDevice() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  work_cv_.NotifyAll();
  for (std::thread& worker : workers_) worker.join();
}

Result<int> ThreadPoolDevice::OpenFile(std::string_view path, const OpenMode& mode,
                                       std::string* warning) {
  return files_.Open(path, mode, warning);
}

Status ThreadPoolDevice::CloseFile(int file) { return files_.Close(file); }

Status ThreadPoolDevice::RemoveFile(std::string_view path) { return files_.Remove(path); }

Status ThreadPoolDevice::Sync(int file) { return files_.Sync(file); }

Status ThreadPoolDevice::Submit(IoRequest* request) {
  if (in_flight_ >= queue_depth_) return Status(StatusCode::kResourceExhausted, "queue full");
  KVT_RETURN_IF_ERROR(files_.Prepare(request, kAlignment));
  ++in_flight_;
  {
    MutexLock lock(mu_);
    pending_.Push(request);
  }
  work_cv_.NotifyOne();
  return Status::Ok();
}

size_t ThreadPoolDevice::Reap(std::span<IoRequest*> out, bool wait) {
  if (out.empty()) return 0;
  size_t count = 0;
  {
    MutexLock lock(mu_);
    if (wait && in_flight_ > 0) {
      while (done_.empty()) done_cv_.Wait(mu_);
    }
    // Workers push and signal under mu_, so draining here cannot lose a signal.
    DrainEventFdLocked();
    while (count < out.size() && !done_.empty()) out[count++] = done_.Pop();
    if (!done_.empty()) SignalEventFdLocked();  // `out` was too small
  }
  for (size_t i = 0; i < count; ++i) files_.Finished(*out[i]);
  in_flight_ -= static_cast<uint32_t>(count);
  return count;
}

void ThreadPoolDevice::WorkerLoop() {
  for (;;) {
    IoRequest* request = nullptr;
    {
      MutexLock lock(mu_);
      while (!stopping_ && pending_.empty()) work_cv_.Wait(mu_);
      // Pending requests are finished even when stopping: their buffers are the caller's.
      if (pending_.empty()) return;
      request = pending_.Pop();
    }
    while (RecordAttempt(request, Transfer(*request), kAlignment)) {
    }
    {
      MutexLock lock(mu_);
      done_.Push(request);
      SignalEventFdLocked();
    }
    done_cv_.NotifyOne();
  }
}

void ThreadPoolDevice::SignalEventFdLocked() {
  const uint64_t one = 1;
  while (::write(event_fd_.get(), &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

void ThreadPoolDevice::DrainEventFdLocked() {
  uint64_t value = 0;
  while (::read(event_fd_.get(), &value, sizeof(value)) < 0 && errno == EINTR) {
  }
}

}  // namespace kvtier
