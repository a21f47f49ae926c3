// FaultSwitch and SwitchedDevice, test doubles (they live in tests/, never in the daemon): the
// spill disk's faults of kvtierd-faults (tests/support/kvtierd_faults_main.cc), switched on and
// off at run time by the test through a control file (the format is in fault_plan.h). Unlike
// FaultyDevice's one-shot faults, a plan holds until the next one replaces it: every write
// fails with EIO or ENOSPC, every read fails, every new segment file finds the disk full, each
// I/O takes seconds, or completions are held back ("stall") until the test lets them go.
//
// SwitchedDevice wraps a real BlockDevice. An I/O the plan fails never reaches it, nor its
// argument checks (result -errno, the file untouched); every other I/O goes to it at once and
// really happens, but its completion is handed back by Reap only after the plan's delay and
// never while the plan stalls: a slow disk that acknowledges late (a stalled daemon has writes
// on disk that it does not know of yet). Sync takes the plan's delay too. A completion held
// back counts in in_flight() and keeps event_fd() (the inner device's, shared) quiet; once it
// may be handed back, the switch's thread signals event_fd() so the spill worker's poll wakes.
// A Reap with wait blocks while everything is held (a stalled disk blocks a synchronous write,
// as a hung one would).
//
// FaultSwitch reads the control file at construction and, from the first Wrap on, looks every
// 5 ms (in a thread of its own) whether the file changed (its inode, size or mtime); it applies
// a new plan to every device before it reports the plan's seq in the report file, which it
// rewrites whenever a figure changes. The thread blocks every signal (kvtierd takes its
// signals through a signalfd).
// Ownership: the switch outlives every device it wrapped (checked); a device owns its inner one.
// Thread-safety: FaultSwitch's methods are thread-safe. A SwitchedDevice is a BlockDevice: one
// owner thread calls its methods; the switch's thread only calls Tick. Lock order: the switch's
// mu_, then a device's mu_; a device never calls into the switch with its mu_ held.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "daemon/spill/block_device.h"
#include "ipc/base/mutex.h"
#include "kvclient/status.h"
#include "tests/support/fault_plan.h"

namespace kvtier::testing {

class SwitchedDevice;

class FaultSwitch {
 public:
  // `control`: the file the test writes (absent: no faults). `report`: the file this writes.
  FaultSwitch(std::filesystem::path control, std::filesystem::path report);
  ~FaultSwitch();
  FaultSwitch(const FaultSwitch&) = delete;
  FaultSwitch& operator=(const FaultSwitch&) = delete;

  // The device a spill store gets instead of `inner` (DaemonHooks::wrap_spill_device).
  std::unique_ptr<BlockDevice> Wrap(std::unique_ptr<BlockDevice> inner, std::string_view tenant)
      KVT_EXCLUDES(mu_);
  FaultPlan plan() const KVT_EXCLUDES(mu_);

 private:
  friend class SwitchedDevice;
  void Remove(SwitchedDevice* device) KVT_EXCLUDES(mu_);
  void Run() KVT_EXCLUDES(mu_);
  // Re-reads the control file if it changed (the switch thread, or the constructor).
  void ReadControl() KVT_EXCLUDES(mu_);
  // Lets each device signal what it may hand back now; writes the report if it changed.
  void TickDevices() KVT_EXCLUDES(mu_);

  const std::filesystem::path control_;
  const std::filesystem::path report_;

  mutable Mutex mu_;
  FaultPlan plan_ KVT_GUARDED_BY(mu_);
  std::string control_error_ KVT_GUARDED_BY(mu_);  // the last read's, "" when it parsed
  std::vector<SwitchedDevice*> devices_ KVT_GUARDED_BY(mu_);
  bool stop_ KVT_GUARDED_BY(mu_) = false;
  CondVar wake_;  // stop_ was set
  std::thread thread_;  // started by the first Wrap (under mu_), joined by the destructor

  // The control file as last seen, and the report as last written: the constructor's, then
  // the thread's alone.
  struct Seen {
    uint64_t ino = 0, size = 0, mtime_ns = 0;
    bool exists = false;
    bool operator==(const Seen&) const = default;
  };
  Seen seen_;
  std::string last_report_;
};

class SwitchedDevice final : public BlockDevice {
 public:
  SwitchedDevice(std::unique_ptr<BlockDevice> inner, FaultSwitch& faults, std::string_view tenant);
  ~SwitchedDevice() override;

  Result<int> OpenFile(std::string_view path, const OpenMode& mode,
                       std::string* warning = nullptr) override;
  Status CloseFile(int file) override { return inner_->CloseFile(file); }
  Status RemoveFile(std::string_view path) override { return inner_->RemoveFile(path); }
  Status Sync(int file) override;
  Status Submit(IoRequest* request) override;
  Status Flush() override { return inner_->Flush(); }
  size_t Reap(std::span<IoRequest*> out, bool wait) override;

  int event_fd() const override { return event_fd_; }
  std::string_view name() const override { return name_; }
  size_t alignment() const override { return inner_->alignment(); }
  uint32_t queue_depth() const override { return inner_->queue_depth(); }
  uint32_t in_flight() const override;
  bool direct_io(int file) const override { return inner_->direct_io(file); }

  // The switch's thread, with the switch's mu_ held: signals event_fd() once while completions
  // may be handed back under `plan`, and adds this device's figures to `report`.
  void Tick(const FaultPlan& plan, uint64_t now_us, FaultReport* report) KVT_EXCLUDES(mu_);

 private:
  struct Held {
    IoRequest* request;
    uint64_t due_us;  // not handed back before (CLOCK_MONOTONIC, NowUs)
  };
  // Moves what the inner device completed to held_ (the owner thread).
  void TakeInner() KVT_EXCLUDES(mu_);
  uint64_t DueUs(const FaultPlan& plan);
  void SignalEventFd() const;

  std::unique_ptr<BlockDevice> inner_;
  FaultSwitch& faults_;
  const int event_fd_;  // the inner device's, which Tick signals from the switch's thread
  std::string name_;
  // The owner thread's alone: when each request now in the inner device may complete, and the
  // jitter's generator.
  std::unordered_map<IoRequest*, uint64_t> due_in_inner_;
  uint64_t rng_;

  mutable Mutex mu_;
  std::vector<Held> held_ KVT_GUARDED_BY(mu_);  // completed (or failed), not handed back
  uint32_t in_flight_ KVT_GUARDED_BY(mu_) = 0;  // accepted, not handed back
  bool woken_ KVT_GUARDED_BY(mu_) = false;      // Tick signalled; cleared by Reap
  FaultReport counts_ KVT_GUARDED_BY(mu_);      // submitted, completed, failed_*
};

}  // namespace kvtier::testing
