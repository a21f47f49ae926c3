#include "daemon/transfer/copy_engine.h"

#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>

#include "ipc/base/errno_status.h"
#include "kvclient/copy.h"

namespace kvtier {

void PublishProgress(uint32_t* word, uint32_t layers_done) {
  std::atomic_ref<uint32_t>(*word).store(layers_done, std::memory_order_release);
  // A shared (not FUTEX_PRIVATE) wake: the waiter is the client, in another process.
  syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

CopyEngine::CopyEngine() : results_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

CopyEngine::~CopyEngine() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

Status CopyEngine::Start() {
  if (!results_fd_.valid()) return ErrnoStatus("eventfd", errno);
  thread_ = std::thread([this] { Run(); });
  return Status::Ok();
}

void CopyEngine::Post(CopyJob job) {
  {
    std::lock_guard lock(mu_);
    jobs_.push_back(std::move(job));
  }
  wake_.notify_one();
}

void CopyEngine::TakeResults(std::vector<CopyResult>* out) {
  uint64_t n;
  (void)!read(results_fd_.get(), &n, sizeof(n));
  std::lock_guard lock(mu_);
  for (CopyResult& r : results_) out->push_back(std::move(r));
  results_.clear();
}

void CopyEngine::Publish(CopyResult result) {
  {
    std::lock_guard lock(mu_);
    results_.push_back(std::move(result));
  }
  const uint64_t one = 1;
  (void)!write(results_fd_.get(), &one, sizeof(one));
}

void CopyEngine::Run() {
  for (;;) {
    CopyJob job;
    {
      std::unique_lock lock(mu_);
      wake_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping, and nothing left to run
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    const Status status = RunJob(job);
    const uint64_t id = job.id;
    job = CopyJob{};  // regions go before the loop hears of it
    Publish(CopyResult{id, true, status});
  }
}

Status CopyEngine::RunJob(const CopyJob& job) {
  uint32_t* progress = job.progress == nullptr
                           ? nullptr
                           : reinterpret_cast<uint32_t*>(job.progress->host() + job.progress_offset);
  const auto layers = static_cast<uint32_t>(job.layer_ends.size());
  if (job.region->kind() == wire::RegionKind::kCuda) {
    GpuCopy copy;
    copy.region = job.region->gpu();
    copy.pool = job.pool;
    copy.to_pool = job.to_pool;
    copy.spans = job.spans;
    copy.layer_ends = job.layer_ends;
    copy.wait_event = job.wait_event;
    copy.signal_event = job.signal_event;
    if (progress != nullptr) {
      copy.layer_done = [progress](uint32_t layer) { PublishProgress(progress, layer + 1); };
    }
    if (job.signal_event != UINT32_MAX) {
      copy.enqueued = [this, id = job.id] { Publish(CopyResult{id, false, Status::Ok()}); };
    }
    // A failed copy leaves the word short of `layers`: waiters see the reply carry the error.
    return RunGpuCopy(copy);
  }
  std::byte* region = job.region->host();
  uint32_t begin = 0;
  for (uint32_t layer = 0; layer < layers; ++layer) {
    for (uint32_t i = begin; i < job.layer_ends[layer]; ++i) {
      const CopySpan& s = job.spans[i];
      // Streaming stores both ways: the destination is a shared mapping that this thread
      // never reads back (kvclient/copy.h: 2.25x memcpy into shm on these hosts).
      if (job.to_pool) {
        CopyToPool(job.pool + s.pool_offset, region + s.region_offset, s.bytes);
      } else {
        CopyToPool(region + s.region_offset, job.pool + s.pool_offset, s.bytes);
      }
    }
    begin = job.layer_ends[layer];
    if (progress != nullptr) PublishProgress(progress, layer + 1);
  }
  return Status::Ok();
}

}  // namespace kvtier
