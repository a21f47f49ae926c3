#include "tests/support/fault_switch.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <utility>

#include "ipc/base/check.h"
#include "ipc/base/clock.h"
#include "ipc/base/errno_status.h"

namespace kvtier::testing {
namespace {

constexpr auto kTick = std::chrono::milliseconds(5);
// How long a Reap with wait sleeps at most before it looks again.
constexpr uint64_t kWaitSliceMs = 10;

std::string OneLine(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

}  // namespace

FaultSwitch::FaultSwitch(std::filesystem::path control, std::filesystem::path report)
    : control_(std::move(control)), report_(std::move(report)) {
  ReadControl();
  TickDevices();
}

FaultSwitch::~FaultSwitch() {
  {
    MutexLock lock(mu_);
    KVT_CHECK(devices_.empty());
    stop_ = true;
  }
  wake_.NotifyAll();
  if (thread_.joinable()) thread_.join();
}

std::unique_ptr<BlockDevice> FaultSwitch::Wrap(std::unique_ptr<BlockDevice> inner,
                                               std::string_view tenant) {
  auto device = std::make_unique<SwitchedDevice>(std::move(inner), *this, tenant);
  MutexLock lock(mu_);
  devices_.push_back(device.get());
  if (!thread_.joinable()) {
    // Created with every signal blocked, so it inherits that mask: a SIGTERM meant for
    // kvtierd's signalfd must never be delivered to (and kill the process through) this thread.
    sigset_t all;
    sigset_t old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    thread_ = std::thread([this] { Run(); });
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
  return device;
}

FaultPlan FaultSwitch::plan() const {
  MutexLock lock(mu_);
  return plan_;
}

void FaultSwitch::Remove(SwitchedDevice* device) {
  MutexLock lock(mu_);
  std::erase(devices_, device);
}

void FaultSwitch::Run() {
  for (;;) {
    {
      MutexLock lock(mu_);
      if (stop_) return;
      wake_.WaitFor(mu_, kTick);
      if (stop_) return;
    }
    ReadControl();
    TickDevices();
  }
}

void FaultSwitch::ReadControl() {
  Seen now;
  struct stat st {};
  if (::stat(control_.c_str(), &st) == 0) {
    now.exists = true;
    now.ino = st.st_ino;
    now.size = static_cast<uint64_t>(st.st_size);
    now.mtime_ns = static_cast<uint64_t>(st.st_mtim.tv_sec) * 1000000000u +
                   static_cast<uint64_t>(st.st_mtim.tv_nsec);
  }
  if (now == seen_) return;
  seen_ = now;
  FaultPlan plan;  // no control file: no faults
  if (now.exists) {
    std::ifstream in(control_, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    std::string error;
    const std::optional<FaultPlan> parsed = ParseFaultPlan(text.str(), &error);
    if (!parsed) {
      std::fprintf(stderr, "kvtierd-faults: %s: %s; the plan in force stays\n", control_.c_str(),
                   error.c_str());
      MutexLock lock(mu_);
      control_error_ = error;
      return;
    }
    plan = *parsed;
  }
  {
    MutexLock lock(mu_);
    plan_ = plan;
    control_error_.clear();
  }
  std::fprintf(stderr, "kvtierd-faults: in force: %s\n", OneLine(FormatFaultPlan(plan)).c_str());
}

void FaultSwitch::TickDevices() {
  FaultReport report;
  {
    MutexLock lock(mu_);
    report.plan = plan_.seq;
    report.control_error = control_error_;
    report.devices = devices_.size();
    const uint64_t now = NowUs();
    for (SwitchedDevice* device : devices_) device->Tick(plan_, now, &report);
  }
  std::string text = FormatFaultReport(report);
  if (text != last_report_ && ReplaceFile(report_, text)) last_report_ = std::move(text);
}

SwitchedDevice::SwitchedDevice(std::unique_ptr<BlockDevice> inner, FaultSwitch& faults,
                               std::string_view tenant)
    : inner_(std::move(inner)),
      faults_(faults),
      event_fd_(inner_->event_fd()),
      name_("fault-switched " + std::string(inner_->name())),
      rng_(std::hash<std::string_view>{}(tenant) | 1) {}

SwitchedDevice::~SwitchedDevice() { faults_.Remove(this); }

uint32_t SwitchedDevice::in_flight() const {
  MutexLock lock(mu_);
  return in_flight_;
}

Result<int> SwitchedDevice::OpenFile(std::string_view path, const OpenMode& mode,
                                     std::string* warning) {
  const FaultPlan plan = faults_.plan();
  if (mode.create && plan.create_errno != 0) {
    {
      MutexLock lock(mu_);
      ++counts_.failed_creates;
    }
    // As the real devices report a failed preallocation: ENOSPC is kResourceExhausted.
    return ErrnoStatus("create " + std::string(path) + " (fault injected by kvtierd-faults)",
                       plan.create_errno);
  }
  return inner_->OpenFile(path, mode, warning);
}

Status SwitchedDevice::Sync(int file) {
  const FaultPlan plan = faults_.plan();
  if (plan.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(plan.delay_ms));
  return inner_->Sync(file);
}

uint64_t SwitchedDevice::DueUs(const FaultPlan& plan) {
  uint64_t delay_us = uint64_t{plan.delay_ms} * 1000;
  if (plan.jitter_ms > 0) {
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    delay_us += rng_ % (uint64_t{plan.jitter_ms} * 1000 + 1);
  }
  return NowUs() + delay_us;
}

Status SwitchedDevice::Submit(IoRequest* request) {
  if (in_flight() >= queue_depth()) return Status(StatusCode::kResourceExhausted, "queue full");
  const FaultPlan plan = faults_.plan();
  const uint64_t due = DueUs(plan);
  const bool write = request->op == IoOp::kWrite;
  const int err = write ? plan.write_errno : plan.read_errno;
  if (err != 0) {
    // Fails without reaching the inner device, nor its checks: the file is untouched.
    request->result = -err;
    {
      MutexLock lock(mu_);
      held_.push_back({request, due});
      ++in_flight_;
      ++counts_.submitted;
      ++(write ? counts_.failed_writes : counts_.failed_reads);
    }
    if (!plan.stall && due <= NowUs()) SignalEventFd();  // a completion waits now
    return Status::Ok();
  }
  KVT_RETURN_IF_ERROR(inner_->Submit(request));
  due_in_inner_[request] = due;
  MutexLock lock(mu_);
  ++in_flight_;
  ++counts_.submitted;
  return Status::Ok();
}

void SwitchedDevice::TakeInner() {
  std::array<IoRequest*, 64> done{};
  for (;;) {
    const size_t n = inner_->Reap(done, /*wait=*/false);
    for (size_t i = 0; i < n; ++i) {
      const auto it = due_in_inner_.find(done[i]);
      KVT_CHECK(it != due_in_inner_.end());
      const uint64_t due = it->second;
      due_in_inner_.erase(it);
      MutexLock lock(mu_);
      held_.push_back({done[i], due});
    }
    if (n < done.size()) return;
  }
}

size_t SwitchedDevice::Reap(std::span<IoRequest*> out, bool wait) {
  if (out.empty()) return 0;
  for (;;) {
    // The inner device's Reap drains event_fd() first; what may be handed back is decided
    // after that, so a signal from Tick is either consumed here or left for the next Reap.
    TakeInner();
    const FaultPlan plan = faults_.plan();
    const uint64_t now = NowUs();
    size_t count = 0;
    bool left_behind = false;  // ready, but `out` was full
    uint64_t next_due = UINT64_MAX;
    uint32_t in_flight = 0;
    {
      MutexLock lock(mu_);
      woken_ = false;
      for (auto it = held_.begin(); it != held_.end();) {
        if (plan.stall || it->due_us > now) {
          next_due = std::min(next_due, it->due_us);
        } else if (count < out.size()) {
          out[count++] = it->request;
          it = held_.erase(it);
          continue;
        } else {
          left_behind = true;
        }
        ++it;
      }
      in_flight_ -= static_cast<uint32_t>(count);
      counts_.completed += count;
      in_flight = in_flight_;
    }
    if (left_behind) SignalEventFd();
    if (count > 0 || !wait || in_flight == 0) return count;
    // Everything is held or still in the inner device: sleep until either may have changed.
    uint64_t sleep_ms = kWaitSliceMs;
    if (!plan.stall && next_due != UINT64_MAX) {
      sleep_ms = std::min(sleep_ms, (next_due - std::min(next_due, now) + 999) / 1000);
    }
    pollfd p{event_fd(), POLLIN, 0};
    while (::poll(&p, 1, static_cast<int>(sleep_ms)) < 0 && errno == EINTR) {
    }
  }
}

void SwitchedDevice::Tick(const FaultPlan& plan, uint64_t now_us, FaultReport* report) {
  MutexLock lock(mu_);
  if (!woken_ && !plan.stall &&
      std::any_of(held_.begin(), held_.end(), [&](const Held& h) { return h.due_us <= now_us; })) {
    woken_ = true;
    SignalEventFd();
  }
  report->submitted += counts_.submitted;
  report->completed += counts_.completed;
  report->failed_writes += counts_.failed_writes;
  report->failed_reads += counts_.failed_reads;
  report->failed_creates += counts_.failed_creates;
  report->in_flight += in_flight_;
  report->held += held_.size();
}

void SwitchedDevice::SignalEventFd() const {
  const uint64_t one = 1;
  while (::write(event_fd_, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

}  // namespace kvtier::testing
