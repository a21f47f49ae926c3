#include "daemon/transfer/copy_engine.h"

#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <time.h>

#include <algorithm>
#include <chrono>
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
    MutexLock lock(mu_);
    stop_ = true;
  }
  wake_.NotifyOne();
  if (thread_.joinable()) thread_.join();
}

Status CopyEngine::Start() {
  if (!results_fd_.valid()) return ErrnoStatus("eventfd", errno);
  thread_ = std::thread([this] { Run(); });
  return Status::Ok();
}

void CopyEngine::Post(CopyJob job) {
  {
    MutexLock lock(mu_);
    auto queue = std::find_if(queues_.begin(), queues_.end(),
                              [&](const auto& q) { return q->owner == job.owner; });
    if (queue != queues_.end()) {
      (*queue)->jobs.push_back(std::move(job));
    } else {
      // Built whole before it joins: under std::bad_alloc no empty queue is left behind.
      auto fresh = std::make_unique<Queue>();
      fresh->owner = job.owner;
      fresh->jobs.push_back(std::move(job));
      queues_.push_back(std::move(fresh));
    }
  }
  wake_.NotifyOne();
}

void CopyEngine::TakeResults(std::vector<CopyResult>* out) {
  uint64_t n;
  (void)!read(results_fd_.get(), &n, sizeof(n));
  MutexLock lock(mu_);
  for (CopyResult& r : results_) out->push_back(std::move(r));
  results_.clear();
}

void CopyEngine::Publish(CopyResult result) {
  {
    MutexLock lock(mu_);
    results_.push_back(std::move(result));
  }
  const uint64_t one = 1;
  (void)!write(results_fd_.get(), &one, sizeof(one));
}

namespace {

uint64_t MonotonicUs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

}  // namespace

void CopyEngine::Run() {
  size_t cursor = 0;  // the queue whose turn is next
  for (;;) {
    PollWaiting();
    CopyJob* job = nullptr;
    {
      MutexLock lock(mu_);
      if (queues_.empty()) {
        if (waiting_.empty()) {
          while (!stop_ && queues_.empty()) wake_.Wait(mu_);
          if (queues_.empty()) return;  // stopping, and nothing left to run
        } else {
          // Only jobs waiting for engines' events: look again soon, or at a new job.
          wake_.WaitFor(mu_, std::chrono::microseconds(200));
          continue;
        }
      }
      cursor %= queues_.size();
      // Stays put while the loop posts more (deque::push_back keeps references, and only this
      // thread pops jobs or removes queues).
      job = &queues_[cursor]->jobs.front();
    }
    const bool cuda = job->region->kind() == wire::RegionKind::kCuda;
    if (cuda && job->wait_event != UINT32_MAX) {
      // It runs once the engine's event has completed; until then it waits aside, holding up
      // no queue (a stream waiting on an event that never comes would hold up every copy on
      // the device).
      job->wait_deadline_us = MonotonicUs() + kEventWaitUs;
      CopyJob aside = std::move(*job);
      PopFront(cursor);
      waiting_.push_back(std::move(aside));
      continue;
    }
    Status status;
    if (cuda) {
      status = RunCudaJob(*job);
    } else if (!RunHostSlice(*job)) {
      ++cursor;  // another owner's turn
      continue;
    }
    const uint64_t id = job->id;
    if (!PopFront(cursor)) ++cursor;  // its regions go before the loop hears of it
    Publish(CopyResult{id, true, status});
  }
}

bool CopyEngine::PopFront(size_t queue) {
  MutexLock lock(mu_);
  auto& jobs = queues_[queue]->jobs;
  jobs.pop_front();
  if (!jobs.empty()) return false;
  queues_.erase(queues_.begin() + static_cast<std::ptrdiff_t>(queue));
  return true;
}

void CopyEngine::PollWaiting() {
  if (waiting_.empty()) return;
  const uint64_t now = MonotonicUs();
  bool stopping = false;
  {
    MutexLock lock(mu_);
    stopping = stop_;
  }
  for (size_t i = 0; i < waiting_.size();) {
    CopyJob& job = waiting_[i];
    Result<bool> done = GpuEventDone(job.region->gpu(), job.wait_event);
    Status status;
    if (!done.ok()) {
      status = done.status();
    } else if (*done) {
      // Seen complete: the stream must not wait on it again, or an engine recording it anew on
      // a stream that never ends could still block the device's copies for every tenant.
      job.wait_event = UINT32_MAX;
      status = RunCudaJob(job);
    } else if (stopping) {
      status = Status(StatusCode::kUnavailable,
                      "kvtierd is stopping; the offload's event had not completed");
    } else if (now >= job.wait_deadline_us) {
      status = Status(StatusCode::kTimedOut,
                      "the region's event " + std::to_string(job.wait_event) +
                          " did not complete within " + std::to_string(kEventWaitUs / 1000000) +
                          " s of the offload; nothing was copied");
    } else {
      ++i;
      continue;
    }
    const uint64_t id = job.id;
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
    Publish(CopyResult{id, true, status});
  }
}

Status CopyEngine::RunCudaJob(const CopyJob& job) {
  uint32_t* progress = job.progress == nullptr
                           ? nullptr
                           : reinterpret_cast<uint32_t*>(job.progress->host() + job.progress_offset);
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

bool CopyEngine::RunHostSlice(CopyJob& job) {
  uint32_t* progress = job.progress == nullptr
                           ? nullptr
                           : reinterpret_cast<uint32_t*>(job.progress->host() + job.progress_offset);
  const auto layers = static_cast<uint32_t>(job.layer_ends.size());
  std::byte* region = job.region->host();
  uint64_t budget = kSliceBytes;
  while (job.next_layer < layers) {
    const uint32_t end = job.layer_ends[job.next_layer];
    for (; job.next_span < end; ++job.next_span) {
      if (budget == 0) return false;  // another owner's turn
      const CopySpan& s = job.spans[job.next_span];
      // A block larger than the slice is copied over several turns.
      const uint64_t n = std::min(budget, s.bytes - job.span_done);
      std::byte* pool = job.pool + s.pool_offset + job.span_done;
      std::byte* host = region + s.region_offset + job.span_done;
      // Streaming stores both ways: the destination is a shared mapping that this thread
      // never reads back (kvclient/copy.h: 2.25x memcpy into shm on these hosts).
      if (job.to_pool) {
        CopyToPool(pool, host, n);
      } else {
        CopyToPool(host, pool, n);
      }
      budget -= n;
      job.span_done += n;
      if (job.span_done < s.bytes) return false;
      job.span_done = 0;
    }
    if (progress != nullptr) PublishProgress(progress, job.next_layer + 1);
    ++job.next_layer;
  }
  return true;
}

}  // namespace kvtier
