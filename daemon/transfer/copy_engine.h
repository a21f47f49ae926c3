// CopyEngine: the thread that moves block bytes between tenant pools and client regions for
// offload and onload, so the event loop never spends a copy's time (a 64-block batch of 2 MiB
// is ~15 ms of memcpy) and keeps serving other sessions meanwhile.
//
// The loop posts a CopyJob with everything the copy needs: pool and region addresses that stay
// valid until the job's final result (the loop holds the blocks' leases or reservations, the
// job holds its regions). Host regions are copied with the streaming-store helpers
// (kvclient/copy.h); CUDA regions with RunGpuCopy on the daemon's stream. After each layer the
// job's progress word, if any, is set to the layers done and futex-woken. Results come back
// through event_fd, like the spill workers'.
//
// Fairness between tenants: each owner (tenant) has its own FIFO queue, and the thread serves
// the queues round robin, a slice at a time: a host job copies at most kSliceBytes before the
// next owner's job gets its turn, so one tenant's 4,096-block onload delays another tenant's
// copy by a slice (~0.5 ms), not by its whole length. A CUDA job that waits for an engine's
// IPC event leaves its queue and waits aside until the event has completed (cudaEventQuery,
// polled between turns), so an event that never completes holds up no queue, not even its own
// tenant's; it fails with kTimedOut after kEventWaitUs. A CUDA job, once started, runs whole
// (its copies are queued on the device's stream at once).
// Thread-safety: Post, TakeResults and event_fd are for the loop thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "daemon/gpu/gpu.h"
#include "daemon/transfer/region.h"
#include "ipc/base/mutex.h"
#include "ipc/base/unique_fd.h"

namespace kvtier {

struct CopyJob {
  uint64_t id = 0;
  bool to_pool = false;  // offload: region -> pool; onload: pool -> region
  std::shared_ptr<Region> region;
  std::byte* pool = nullptr;
  std::vector<CopySpan> spans;
  std::vector<uint32_t> layer_ends;  // spans[layer_ends[i-1], layer_ends[i]) are layer i
  std::shared_ptr<Region> progress;  // a host region holding the progress word, or null
  uint64_t progress_offset = 0;      // 4-byte aligned, inside `progress`
  uint32_t wait_event = UINT32_MAX;
  uint32_t signal_event = UINT32_MAX;
  uint64_t owner = 0;  // whose queue it joins (the tenant)
  // The engine's progress through a host job (set by the engine).
  uint32_t next_span = 0;
  uint32_t next_layer = 0;
  uint64_t span_done = 0;  // bytes of spans[next_span] already copied
  uint64_t wait_deadline_us = 0;  // a CUDA job waiting for wait_event fails after this
};

struct CopyResult {
  uint64_t id = 0;
  // False: a CUDA onload with signal events has queued every copy and event (its reply may go
  // out); the final result follows. True: every byte has landed (or the copy failed).
  bool final = true;
  Status status;
};

class CopyEngine {
 public:
  // A host job copies at most this much per turn (~0.5 ms at the memory's speed).
  static constexpr uint64_t kSliceBytes = 4ull << 20;
  // How long a CUDA job waits for its wait_event to complete before it fails.
  static constexpr uint64_t kEventWaitUs = 10'000'000;

  CopyEngine();
  // Runs the jobs still queued, then stops.
  ~CopyEngine();
  CopyEngine(const CopyEngine&) = delete;
  CopyEngine& operator=(const CopyEngine&) = delete;

  Status Start();
  void Post(CopyJob job);
  // Appends every result waiting; clears event_fd's readiness.
  void TakeResults(std::vector<CopyResult>* out);
  int event_fd() const { return results_fd_.get(); }

 private:
  struct Queue {
    uint64_t owner = 0;
    std::deque<CopyJob> jobs;  // the front one is running or next
  };

  void Run();
  // Copies up to kSliceBytes of a host job; true once it is done.
  bool RunHostSlice(CopyJob& job);
  Status RunCudaJob(const CopyJob& job);
  // Runs the waiting CUDA jobs whose event has completed; fails those past their deadline, and
  // every one once stopping.
  void PollWaiting();
  // Drops the front job of queues_[queue], and the queue if that was its last; true then.
  bool PopFront(size_t queue);
  void Publish(CopyResult result);

  std::thread thread_;
  UniqueFd results_fd_;
  Mutex mu_;
  CondVar wake_;
  // Owners with jobs, in round-robin order; a queue is removed once empty. Only the copy
  // thread pops jobs or removes queues, so the front job it runs stays put while the loop
  // pushes more (deque::push_back keeps references).
  std::vector<std::unique_ptr<Queue>> queues_ KVT_GUARDED_BY(mu_);
  std::vector<CopyResult> results_ KVT_GUARDED_BY(mu_);
  bool stop_ KVT_GUARDED_BY(mu_) = false;
  std::vector<CopyJob> waiting_;      // CUDA jobs waiting for their event (copy thread only)
};

// Sets a progress word to `layers_done` (release order, so the bytes it announces are visible
// first) and wakes every futex waiter on it.
void PublishProgress(uint32_t* word, uint32_t layers_done);

}  // namespace kvtier
