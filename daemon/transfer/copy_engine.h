// CopyEngine: the thread that moves block bytes between tenant pools and client regions for
// offload and onload, so the event loop never spends a copy's time (a 64-block batch of 2 MiB
// is ~15 ms of memcpy) and keeps serving other sessions meanwhile.
//
// The loop posts a CopyJob with everything the copy needs: pool and region addresses that stay
// valid until the job's final result (the loop holds the blocks' leases or reservations, the
// job holds its regions). Jobs run one at a time, in order. Host regions are copied with the
// streaming-store helpers (kvclient/copy.h); CUDA regions with RunGpuCopy on the daemon's
// stream. After each layer the job's progress word, if any, is set to the layers done and
// futex-woken. Results come back through event_fd, like the spill workers'.
// Thread-safety: Post, TakeResults and event_fd are for the loop thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "daemon/gpu/gpu.h"
#include "daemon/transfer/region.h"
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
  void Run();
  Status RunJob(const CopyJob& job);
  void Publish(CopyResult result);

  std::thread thread_;
  UniqueFd results_fd_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<CopyJob> jobs_;          // guarded by mu_
  std::vector<CopyResult> results_;   // guarded by mu_
  bool stop_ = false;                 // guarded by mu_
};

// Sets a progress word to `layers_done` (release order, so the bytes it announces are visible
// first) and wakes every futex waiter on it.
void PublishProgress(uint32_t* word, uint32_t layers_done);

}  // namespace kvtier
