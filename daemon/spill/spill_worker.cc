#include "daemon/spill/spill_worker.h"

#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"

namespace kvtier {
namespace {

void Signal(int fd) {
  const uint64_t one = 1;
  // EAGAIN means the counter is already huge: the reader is woken either way.
  (void)!write(fd, &one, sizeof(one));
}

void Drain(int fd) {
  uint64_t count = 0;
  (void)!read(fd, &count, sizeof(count));
}

std::string_view Namespace(const SpillJob& job) { return {job.ns.data(), job.ns_len}; }
std::span<const uint8_t> Key(const SpillJob& job) { return {job.key.data(), job.key_len}; }

SsdRef RefOf(const SpillLocation& location) {
  KVT_CHECK(location.offset % spill::kAlignBytes == 0 &&
            location.offset / spill::kAlignBytes <= UINT32_MAX);
  return SsdRef{location.segment_id, static_cast<uint32_t>(location.offset / spill::kAlignBytes)};
}

}  // namespace

SpillWorker::SpillWorker()
    : jobs_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)),
      results_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

SpillWorker::~SpillWorker() {
  if (thread_.joinable()) {
    stop_.store(true);
    Signal(jobs_fd_.get());
    thread_.join();
  }
  // Writes and reads not yet started are dropped, but releases are kept: a record the loop
  // let go of must not come back at the next start (the store scrubs it before it closes).
  // (The thread has run every release it took; only the inbox can still hold some.)
  for (const SpillJob& job : inbox_) {
    if (job.kind == SpillJob::Kind::kRelease) ReleaseNow(job);
  }
  inbox_.clear();
  // Each SpillStore's destructor writes pending scrubs, waits for its in-flight I/O and syncs;
  // then its device goes.
  for (auto& s : stores_) s->store.reset();
}

uint32_t SpillWorker::AddStore(std::unique_ptr<BlockDevice> device,
                               std::unique_ptr<SpillStore> store) {
  KVT_CHECK(!thread_.joinable());
  auto s = std::make_unique<Store>();
  s->device = std::move(device);
  s->store = std::move(store);
  {
    MutexLock lock(mu_);
    stats_.push_back(s->store->stats());
  }
  stores_.push_back(std::move(s));
  return static_cast<uint32_t>(stores_.size() - 1);
}

void SpillWorker::TagRecovered(uint32_t store, const SpillLocation& location, uint64_t tag) {
  KVT_CHECK(!thread_.joinable());
  stores_.at(store)->store->SetUser(location, tag);
}

Status SpillWorker::Start() {
  if (!jobs_fd_.valid() || !results_fd_.valid()) return ErrnoStatus("eventfd", errno);
  thread_ = std::thread([this] { Run(); });
  return Status::Ok();
}

void SpillWorker::Post(std::span<const SpillJob> jobs) {
  if (jobs.empty()) return;
  bool was_empty = false;
  {
    MutexLock lock(mu_);
    was_empty = inbox_.empty();
    inbox_.insert(inbox_.end(), jobs.begin(), jobs.end());
  }
  if (was_empty) Signal(jobs_fd_.get());
}

void SpillWorker::TakeResults(std::vector<SpillResult>* out) {
  Drain(results_fd_.get());
  MutexLock lock(mu_);
  for (SpillResult& r : outbox_) out->push_back(std::move(r));
  outbox_.clear();
}

SpillStats SpillWorker::StatsOf(uint32_t store) const {
  MutexLock lock(mu_);
  return stats_.at(store);
}

void SpillWorker::Run() {
  std::vector<SpillJob> jobs;
  std::vector<SpillResult> results;
  while (!stop_.load(std::memory_order_relaxed)) {
    Drain(jobs_fd_.get());
    {
      MutexLock lock(mu_);
      jobs.swap(inbox_);
    }
    for (SpillJob& job : jobs) {
      if (job.kind == SpillJob::Kind::kRelease) {
        // At once, not behind writes waiting for staging: the loop only learns of a record
        // from its write's result, so nothing pending can concern it.
        ReleaseNow(job);
        (void)stores_[job.store]->store->Flush();  // starts its scrub
        continue;
      }
      if (job.kind == SpillJob::Kind::kSetQuota) {
        SetQuotaNow(job, &results);
        continue;
      }
      if (job.kind == SpillJob::Kind::kErase) AbortPending(job, &results);
      stores_.at(job.store)->pending.push_back(job);
    }
    bool progress = !jobs.empty();
    jobs.clear();
    for (uint32_t i = 0; i < stores_.size(); ++i) {
      Store& s = *stores_[i];
      progress |= StartJobs(i, &results);
      const size_t before = results.size();
      const uint64_t reaped_before = s.store->reaped_total();
      Reap(i, &results);
      // Completions freed staging buffers, queue slots or segments, and an erase waits for the
      // last one: the front job may go now. Scrubs count too: their completions have no
      // result, yet a write may be waiting for the queue slots they held (a worker that
      // waited for a result instead slept forever with writes pending and nothing in flight).
      const bool reaped = results.size() != before || s.store->reaped_total() != reaped_before;
      if (reaped || (!s.pending.empty() && s.pending.front().kind == SpillJob::Kind::kErase)) {
        s.blocked = false;
        const bool started = StartJobs(i, &results);
        progress |= reaped || started;
      }
    }
    if (!progress) {
      // Idle: the segments being written that no live record needs lose their keys now,
      // rather than when they would have filled up.
      for (auto& s : stores_) progress |= s->pending.empty() && s->store->RetireEmptyOpenSegment();
    }
    Publish(&results);
    // The event loop has its results: now the plaintext that reads left in staging goes.
    for (auto& s : stores_) s->store->WipeStaging();
    if (!progress) WaitForWork();
  }
}

void SpillWorker::ReleaseNow(const SpillJob& job) {
  SpillStore& store = *stores_.at(job.store)->store;
  if (auto location = store.Locate(job.ref.segment, job.ref.offset())) store.Release(*location);
}

void SpillWorker::SetQuotaNow(const SpillJob& job, std::vector<SpillResult>* results) {
  Store& s = *stores_.at(job.store);
  SpillStore& store = *s.store;
  store.set_quota_bytes(job.bytes);
  // An erase on its way takes every segment anyway, and reports how many went.
  for (const SpillJob& pending : s.pending) {
    if (pending.kind == SpillJob::Kind::kErase) return;
  }
  std::vector<SpillLocation> dropped;
  std::vector<uint64_t> tags;
  while (store.segment_count() * store.segment_bytes() > job.bytes) {
    dropped.clear();
    tags.clear();
    const Status reclaimed = store.ReclaimOldestSegment(&dropped, &tags);
    for (size_t i = 0; i < dropped.size(); ++i) {
      results->push_back({SpillResult::Kind::kDropped, job.store, tags[i], RefOf(dropped[i]), {}});
    }
    // Nothing sealed without I/O in flight: the rest goes when a segment is next needed.
    if (reclaimed.code() == StatusCode::kNotFound ||
        reclaimed.code() == StatusCode::kFailedPrecondition) {
      break;
    }
  }
}

void SpillWorker::AbortPending(const SpillJob& erase, std::vector<SpillResult>* results) {
  Store& s = *stores_.at(erase.store);
  const Status purged(StatusCode::kUnavailable, "purged: the spill store was erased first");
  for (const SpillJob& job : s.pending) {
    if (job.kind == SpillJob::Kind::kRead) {
      std::memset(job.data, 0, job.bytes);
      results->push_back({SpillResult::Kind::kRead, erase.store, job.tag, job.ref, purged});
    } else if (job.kind == SpillJob::Kind::kWrite) {
      results->push_back({SpillResult::Kind::kWritten, erase.store, job.tag, SsdRef{}, purged});
    }
  }
  // Earlier erases keep their place; nothing else was started.
  std::erase_if(s.pending, [](const SpillJob& job) { return job.kind != SpillJob::Kind::kErase; });
  s.blocked = false;
}

bool SpillWorker::EraseNow(uint32_t index, const SpillJob& erase,
                           std::vector<SpillResult>* results) {
  SpillStore& store = *stores_[index]->store;
  // Completions the store reaped already (e.g. while creating a segment) are reported first.
  Reap(index, results);
  if (store.in_flight() > 0) return false;
  const uint64_t erased_before = store.stats().segments_erased;
  SpillResult r;
  r.kind = SpillResult::Kind::kErased;
  r.store = index;
  r.tag = erase.tag;
  r.status = store.CryptoEraseAll();
  // Before any later job can create a segment: nothing after the purge is wrapped under the
  // key it retired.
  if (erase.tenant_key != nullptr) {
    store.SetTenantKey(SecretKey::FromBytes(erase.tenant_key->bytes()));
  }
  r.segments = store.stats().segments_erased - erased_before;
  results->push_back(std::move(r));
  return true;
}

bool SpillWorker::StartJobs(uint32_t index, std::vector<SpillResult>* results) {
  Store& s = *stores_[index];
  SpillStore& store = *s.store;
  bool started = false;
  while (!s.pending.empty() && !s.blocked) {
    const SpillJob& job = s.pending.front();
    switch (job.kind) {
      case SpillJob::Kind::kRelease:
      case SpillJob::Kind::kSetQuota:
        KVT_CHECK(false && "releases and quotas apply when they arrive, never from `pending`");
        break;
      case SpillJob::Kind::kRead: {
        auto location = store.Locate(job.ref.segment, job.ref.offset());
        if (!location || location->payload_bytes != job.bytes) {
          std::memset(job.data, 0, job.bytes);
          results->push_back({SpillResult::Kind::kRead, index, job.tag, job.ref,
                              Status(StatusCode::kNotFound, "spill record is gone")});
          break;
        }
        if (!store.staging_available()) {
          s.blocked = true;
          continue;
        }
        Status st = store.StartRead(*location, Namespace(job), Key(job),
                                    std::span(job.data, job.bytes), job.tag);
        if (!st.ok()) {
          results->push_back({SpillResult::Kind::kRead, index, job.tag, job.ref, std::move(st)});
        }
        break;
      }
      case SpillJob::Kind::kWrite:
        if (!StartWrite(index, job, results)) {
          s.blocked = true;
          continue;
        }
        break;
      case SpillJob::Kind::kErase:
        if (!EraseNow(index, job, results)) {
          s.blocked = true;
          continue;
        }
        break;
    }
    s.pending.pop_front();
    started = true;
  }
  if (started) (void)store.Flush();  // a failed submit completes its I/O with the error
  return started;
}

bool SpillWorker::StartWrite(uint32_t index, const SpillJob& job,
                             std::vector<SpillResult>* results) {
  Store& s = *stores_[index];
  SpillStore& store = *s.store;
  std::vector<SpillLocation> dropped;
  std::vector<uint64_t> tags;
  for (;;) {
    if (!store.CanStartWrite(job.bytes)) return false;
    auto location = store.StartWrite(Namespace(job), Key(job),
                                     std::span<const std::byte>(job.data, job.bytes), job.tag);
    if (location.ok()) {
      s.writing[job.tag] = *location;
      return true;
    }
    if (location.status().code() != StatusCode::kResourceExhausted) {
      results->push_back(
          {SpillResult::Kind::kWritten, index, job.tag, SsdRef{}, location.status()});
      return true;
    }
    // Quota or disk full: make room by reclaiming the oldest segment, then try again.
    dropped.clear();
    tags.clear();
    const Status reclaimed = store.ReclaimOldestSegment(&dropped, &tags);
    for (size_t i = 0; i < dropped.size(); ++i) {
      results->push_back({SpillResult::Kind::kDropped, index, tags[i], RefOf(dropped[i]), {}});
    }
    if (reclaimed.code() == StatusCode::kFailedPrecondition) return false;  // I/O in flight
    if (reclaimed.code() == StatusCode::kNotFound) {
      // Nothing left to reclaim: the disk itself is full (or the quota holds one segment).
      results->push_back(
          {SpillResult::Kind::kWritten, index, job.tag, SsdRef{}, location.status()});
      return true;
    }
    // A reclaim whose erase write failed still removed the file: keep going.
  }
}

void SpillWorker::Reap(uint32_t index, std::vector<SpillResult>* results) {
  Store& s = *stores_[index];
  SpillCompletion done[32];
  for (;;) {
    const size_t n = s.store->Poll(done, /*wait=*/false);
    for (size_t i = 0; i < n; ++i) {
      SpillResult r;
      r.store = index;
      r.tag = done[i].cookie;
      r.status = std::move(done[i].status);
      if (done[i].is_write) {
        r.kind = SpillResult::Kind::kWritten;
        auto it = s.writing.find(done[i].cookie);
        KVT_CHECK(it != s.writing.end());
        const SpillLocation& at = it->second;
        // A segment reclaim in this round may have taken the record between its completion and
        // now (and reported it dropped already): then it is not on SSD after all.
        if (r.status.ok() && !s.store->Locate(at.segment_id, at.offset)) {
          r.status = Status(StatusCode::kResourceExhausted,
                            "spill record reclaimed with its segment before it was reported");
        }
        if (r.status.ok()) r.ref = RefOf(at);
        s.writing.erase(it);
      } else {
        r.kind = SpillResult::Kind::kRead;
      }
      results->push_back(std::move(r));
    }
    if (n < std::size(done)) break;
  }
}

void SpillWorker::Publish(std::vector<SpillResult>* results) {
  bool signal = false;
  {
    MutexLock lock(mu_);
    for (size_t i = 0; i < stores_.size(); ++i) stats_[i] = stores_[i]->store->stats();
    if (!results->empty()) {
      signal = outbox_.empty();
      for (SpillResult& r : *results) outbox_.push_back(std::move(r));
    }
  }
  results->clear();
  if (signal) Signal(results_fd_.get());
}

void SpillWorker::WaitForWork() {
  std::vector<pollfd> fds;
  fds.push_back({jobs_fd_.get(), POLLIN, 0});
  for (const auto& s : stores_) {
    if (s->store->in_flight() > 0) fds.push_back({s->store->event_fd(), POLLIN, 0});
  }
  // Jobs and completions both wake us; a stop request writes jobs_fd_. While I/O is in flight
  // the wait is bounded, so a submission the kernel deferred (EAGAIN) is retried.
  const int timeout_ms = fds.size() > 1 ? 100 : -1;
  while (poll(fds.data(), fds.size(), timeout_ms) < 0 && errno == EINTR) {
  }
}

}  // namespace kvtier
