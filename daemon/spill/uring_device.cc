#include "daemon/spill/uring_device.h"

#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <utility>

#include <liburing.h>

#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"

namespace kvtier {
namespace {

constexpr unsigned kReapBatch = 64;

}  // namespace

Result<std::unique_ptr<UringDevice>> UringDevice::Open(const DeviceOptions& options) {
  if (options.queue_depth == 0 || options.max_files == 0) {
    return Status(StatusCode::kInvalidArgument, "io_uring device: queue_depth and max_files "
                                                "must be positive");
  }
  KVT_ASSIGN_OR_RETURN(IoRing ring, IoRing::Open(options.queue_depth));
  UniqueFd event_fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!event_fd.valid()) return ErrnoStatus("eventfd", errno);
  int rc = io_uring_register_eventfd(ring.get(), event_fd.get());
  if (rc < 0) {
    Status status = ErrnoStatus("io_uring_register_eventfd", -rc);
    return Status(StatusCode::kUnavailable, "io_uring unavailable: " + status.message());
  }
  return std::unique_ptr<UringDevice>(
      new UringDevice(std::move(ring), std::move(event_fd), options));
}

UringDevice::UringDevice(IoRing ring, UniqueFd event_fd, const DeviceOptions& options)
    : event_fd_(std::move(event_fd)),
      ring_(std::move(ring)),
      files_(options.max_files),
      queue_depth_(options.queue_depth) {
  KVT_CHECK(ring_.sq_entries() >= queue_depth_);
}

UringDevice::~UringDevice() {
  // The kernel may still write into caller buffers: never tear the ring down under them.
  std::array<IoRequest*, kReapBatch> dropped{};
  while (in_flight_ > 0) {
    const uint32_t before = in_flight_;
    Reap(dropped, /*wait=*/true);
    if (in_flight_ == before) break;  // the ring failed; queue_exit cancels what is left
  }
}

Result<int> UringDevice::OpenFile(std::string_view path, const OpenMode& mode,
                                  std::string* warning) {
  return files_.Open(path, mode, warning);
}

Status UringDevice::CloseFile(int file) { return files_.Close(file); }

Status UringDevice::RemoveFile(std::string_view path) { return files_.Remove(path); }

Status UringDevice::Sync(int file) { return files_.Sync(file); }

Status UringDevice::Submit(IoRequest* request) {
  // Fits std::string's small buffer: a full queue allocates nothing.
  if (in_flight_ >= queue_depth_) return Status(StatusCode::kResourceExhausted, "queue full");
  KVT_RETURN_IF_ERROR(files_.Prepare(request, kAlignment));
  Queue(request);
  ++in_flight_;
  return Status::Ok();
}

Status UringDevice::Flush() {
  const int rc = SubmitQueued();
  if (rc < 0) return ErrnoStatus("io_uring_submit", -rc);
  return Status::Ok();
}

void UringDevice::Queue(IoRequest* request) {
  io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
  // In flight <= queue_depth <= SQ entries, and this request is one of those in flight.
  KVT_CHECK(sqe != nullptr);
  const std::span<std::byte> buffer = AttemptBuffer(*request);
  const auto bytes = static_cast<unsigned>(buffer.size());
  if (request->op == IoOp::kWrite) {
    io_uring_prep_write(sqe, request->device.fd, buffer.data(), bytes, AttemptOffset(*request));
  } else {
    io_uring_prep_read(sqe, request->device.fd, buffer.data(), bytes, AttemptOffset(*request));
  }
  io_uring_sqe_set_data(sqe, request);
  ++unsubmitted_;
}

int UringDevice::SubmitQueued() {
  if (unsubmitted_ == 0) return 0;
  const int rc = io_uring_submit(ring_.get());
  if (rc >= 0) {
    unsubmitted_ -= std::min(unsubmitted_, static_cast<uint32_t>(rc));
    return 0;
  }
  // Out of kernel resources for now, or a signal: the SQEs stay queued for the next try.
  if (rc == -EAGAIN || rc == -EBUSY || rc == -EINTR) return 0;
  return rc;
}

size_t UringDevice::Harvest(std::span<IoRequest*> out) {
  std::array<io_uring_cqe*, kReapBatch> cqes{};
  size_t count = 0;
  while (count < out.size()) {
    const auto want = static_cast<unsigned>(std::min<size_t>(kReapBatch, out.size() - count));
    const unsigned got = io_uring_peek_batch_cqe(ring_.get(), cqes.data(), want);
    if (got == 0) break;
    for (unsigned i = 0; i < got; ++i) {
      auto* request = static_cast<IoRequest*>(io_uring_cqe_get_data(cqes[i]));
      if (RecordAttempt(request, cqes[i]->res, kAlignment)) {
        Queue(request);
        continue;
      }
      files_.Finished(*request);
      --in_flight_;
      out[count++] = request;
    }
    io_uring_cq_advance(ring_.get(), got);
  }
  return count;
}

size_t UringDevice::Reap(std::span<IoRequest*> out, bool wait) {
  if (out.empty()) return 0;
  // Drained before harvesting: a CQE posted after this read signals the eventfd again.
  DrainEventFd();
  size_t count = 0;
  for (;;) {
    count += Harvest(out.subspan(count));
    // Continuations queued by Harvest, and the caller's unflushed Submits.
    (void)SubmitQueued();
    // Only what the kernel holds can complete; never wait on SQEs it did not accept.
    if (count > 0 || !wait || in_flight_ <= unsubmitted_) break;
    io_uring_cqe* cqe = nullptr;
    const int rc = io_uring_wait_cqe(ring_.get(), &cqe);
    if (rc < 0 && rc != -EINTR) break;
  }
  if (io_uring_cq_ready(ring_.get()) > 0) {
    SignalEventFd();  // `out` was too small: keep the epoll loop coming back
  } else if (in_flight_ == 0) {
    DrainEventFd();  // nothing can complete any more; a stale signal would be a false wake-up
  }
  return count;
}

void UringDevice::DrainEventFd() {
  uint64_t value = 0;
  // Non-blocking; one read resets the counter, EAGAIN means it was zero already.
  while (::read(event_fd_.get(), &value, sizeof(value)) < 0 && errno == EINTR) {
  }
}

void UringDevice::SignalEventFd() {
  const uint64_t one = 1;
  while (::write(event_fd_.get(), &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

}  // namespace kvtier
