// FaultyDevice, a test double (it lives in tests/, never in the daemon): wraps any BlockDevice
// and injects one fault of each kind on request: the Nth write or read fails with an errno, the
// Nth I/O moves fewer bytes than asked, the Nth read's buffer has one byte flipped after it
// completes. "Nth" counts the requests Submit accepts after the fault is armed, from 1; each
// fault fires once.
//
// A failed request never reaches the inner device, nor its checks: it completes at once with
// -errno (a failed write leaves the file untouched). At most one shortened and one flipped
// request may be in flight at a time (a test that arms another first aborts). A shortened request reaches it with a shorter buffer, which
// is restored before Reap returns it, its result the shorter length. Injected completions
// signal the inner device's event_fd(), which this device shares.
// Ownership: owns the inner device. Thread-safety: none, like every BlockDevice.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "daemon/spill/block_device.h"
#include "kvclient/status.h"

namespace kvtier {

class FaultyDevice final : public BlockDevice {
 public:
  static constexpr uint64_t kHalf = UINT64_MAX;

  explicit FaultyDevice(std::unique_ptr<BlockDevice> inner);

  // The nth write (read) accepted from now on completes with -err. n >= 1.
  void FailNthWrite(uint32_t n, int err);
  void FailNthRead(uint32_t n, int err);
  // The nth I/O of either kind accepted from now on moves only `bytes` (kHalf: half its
  // buffer, rounded down to alignment()); its result says so. n >= 1.
  void ShortenNthIo(uint32_t n, uint64_t bytes = kHalf);
  // After the nth read accepted from now on completes with result > 0, byte
  // `index % result` of its buffer is inverted. n >= 1.
  void FlipByteOfNthRead(uint32_t n, size_t index = 0);
  // Disarms every fault.
  void Clear();
  // Faults that have fired so far.
  uint32_t faults_fired() const { return faults_fired_; }

  Result<int> OpenFile(std::string_view path, const OpenMode& mode,
                       std::string* warning = nullptr) override {
    return inner_->OpenFile(path, mode, warning);
  }
  Status CloseFile(int file) override { return inner_->CloseFile(file); }
  Status RemoveFile(std::string_view path) override { return inner_->RemoveFile(path); }
  Status Sync(int file) override { return inner_->Sync(file); }
  Status Submit(IoRequest* request) override;
  Status Flush() override { return inner_->Flush(); }
  size_t Reap(std::span<IoRequest*> out, bool wait) override;

  int event_fd() const override { return inner_->event_fd(); }
  std::string_view name() const override { return name_; }
  size_t alignment() const override { return inner_->alignment(); }
  uint32_t queue_depth() const override { return inner_->queue_depth(); }
  uint32_t in_flight() const override { return inner_->in_flight() + injected_count_; }
  bool direct_io(int file) const override { return inner_->direct_io(file); }

 private:
  // Fires when the counter it watches reaches `at`; 0 is disarmed.
  struct Trigger {
    uint64_t at = 0;
    bool Fires(uint64_t count) const { return at != 0 && count == at; }
  };

  void Inject(IoRequest* request, int64_t result);
  void SignalEventFd();

  std::unique_ptr<BlockDevice> inner_;
  std::string name_;

  uint64_t reads_ = 0;   // accepted so far
  uint64_t writes_ = 0;
  uint64_t ios_ = 0;
  Trigger fail_write_, fail_read_, shorten_, flip_;
  int fail_write_errno_ = 0;
  int fail_read_errno_ = 0;
  uint64_t shorten_bytes_ = 0;
  size_t flip_index_ = 0;
  uint32_t faults_fired_ = 0;

  IoRequest* shortened_ = nullptr;  // in flight with a shortened buffer
  std::span<std::byte> shortened_buffer_;
  IoRequest* flipped_ = nullptr;  // in flight; flip a byte when it completes

  // Completed at Submit (failed, or shortened to nothing), linked through device.next.
  IoRequest* injected_head_ = nullptr;
  IoRequest* injected_tail_ = nullptr;
  uint32_t injected_count_ = 0;
};

}  // namespace kvtier
