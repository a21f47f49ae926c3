#include "tests/support/faulty_device.h"

#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "ipc/base/check.h"

namespace kvtier {

FaultyDevice::FaultyDevice(std::unique_ptr<BlockDevice> inner) : inner_(std::move(inner)) {
  KVT_CHECK(inner_ != nullptr);
  name_ = "faulty " + std::string(inner_->name());
}

void FaultyDevice::FailNthWrite(uint32_t n, int err) {
  KVT_CHECK(n >= 1 && err > 0);
  fail_write_.at = writes_ + n;
  fail_write_errno_ = err;
}

void FaultyDevice::FailNthRead(uint32_t n, int err) {
  KVT_CHECK(n >= 1 && err > 0);
  fail_read_.at = reads_ + n;
  fail_read_errno_ = err;
}

void FaultyDevice::ShortenNthIo(uint32_t n, uint64_t bytes) {
  KVT_CHECK(n >= 1);
  shorten_.at = ios_ + n;
  shorten_bytes_ = bytes;
}

void FaultyDevice::FlipByteOfNthRead(uint32_t n, size_t index) {
  KVT_CHECK(n >= 1);
  flip_.at = reads_ + n;
  flip_index_ = index;
}

void FaultyDevice::Clear() { fail_write_ = fail_read_ = shorten_ = flip_ = Trigger{}; }

Status FaultyDevice::Submit(IoRequest* request) {
  if (in_flight() >= queue_depth()) return Status(StatusCode::kResourceExhausted, "queue full");
  const bool write = request->op == IoOp::kWrite;
  const uint64_t nth_of_kind = (write ? writes_ : reads_) + 1;
  const auto accept = [&] {
    ++ios_;
    ++(write ? writes_ : reads_);
  };

  Trigger& fail = write ? fail_write_ : fail_read_;
  if (fail.Fires(nth_of_kind)) {
    fail = Trigger{};
    ++faults_fired_;
    accept();
    Inject(request, -(write ? fail_write_errno_ : fail_read_errno_));
    return Status::Ok();
  }

  if (shorten_.Fires(ios_ + 1)) {
    KVT_CHECK(shortened_ == nullptr);
    const size_t align = alignment();
    const uint64_t size = request->buffer.size();
    const uint64_t bytes =
        shorten_bytes_ == kHalf ? size / 2 / align * align : std::min(shorten_bytes_, size);
    const std::span<std::byte> original = request->buffer;
    if (bytes == 0) {
      // Nothing to hand the inner device: a zero-length transfer completes here.
      Inject(request, 0);
    } else {
      request->buffer = original.first(bytes);
      Status status = inner_->Submit(request);
      if (!status.ok()) {
        request->buffer = original;
        return status;
      }
      shortened_ = request;
      shortened_buffer_ = original;
    }
    shorten_ = Trigger{};
    ++faults_fired_;
  } else {
    KVT_RETURN_IF_ERROR(inner_->Submit(request));
  }
  accept();
  if (!write && flip_.Fires(nth_of_kind)) {
    KVT_CHECK(flipped_ == nullptr);
    flip_ = Trigger{};
    flipped_ = request;
  }
  return Status::Ok();
}

size_t FaultyDevice::Reap(std::span<IoRequest*> out, bool wait) {
  if (out.empty()) return 0;
  size_t count = 0;
  while (count < out.size() && injected_head_ != nullptr) {
    IoRequest* request = injected_head_;
    injected_head_ = request->device.next;
    if (injected_head_ == nullptr) injected_tail_ = nullptr;
    request->device.next = nullptr;
    --injected_count_;
    out[count++] = request;
  }
  if (count < out.size()) {
    const size_t from_inner = inner_->Reap(out.subspan(count), wait && count == 0);
    for (size_t i = count; i < count + from_inner; ++i) {
      IoRequest* request = out[i];
      if (request == shortened_) {
        request->buffer = shortened_buffer_;
        shortened_ = nullptr;
      }
      if (request == flipped_) {
        flipped_ = nullptr;
        if (request->result > 0) {
          request->buffer[flip_index_ % static_cast<uint64_t>(request->result)] ^= std::byte{0xff};
          ++faults_fired_;
        }
      }
    }
    count += from_inner;
  }
  if (injected_head_ != nullptr) {
    SignalEventFd();
  } else if (inner_->in_flight() == 0) {
    // Nothing left to complete: clear the signals Inject left (the inner device's Reap may
    // not have run). Both devices' event fds are non-blocking eventfds.
    uint64_t value = 0;
    while (::read(inner_->event_fd(), &value, sizeof(value)) < 0 && errno == EINTR) {
    }
  }
  return count;
}

void FaultyDevice::Inject(IoRequest* request, int64_t result) {
  request->result = result;
  request->device.next = nullptr;
  if (injected_tail_ == nullptr) {
    injected_head_ = request;
  } else {
    injected_tail_->device.next = request;
  }
  injected_tail_ = request;
  ++injected_count_;
  SignalEventFd();
}

void FaultyDevice::SignalEventFd() {
  const uint64_t one = 1;
  while (::write(inner_->event_fd(), &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

}  // namespace kvtier
