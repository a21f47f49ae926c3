// Pinner: page-locks the tenant pools for CUDA DMA (cudaHostRegister) on a thread of its own.
//
// Registering tens of GiB takes seconds to minutes, and users of other caches complain about
// daemons that block that long before serving. kvtierd serves at once: copies that touch a part
// not yet pinned still work (the driver stages them, slower), and the pools are pinned chunk
// by chunk, in the background, with progress in the log and in `kvtierctl status`.
// A copy spanning two chunks is still correct (the driver stages what it cannot DMA).
// Thread-safety: progress() may be called from any thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "ipc/base/mutex.h"

namespace kvtier {

class Pinner {
 public:
  static constexpr size_t kChunkBytes = size_t{1} << 30;

  struct Range {
    void* data = nullptr;
    size_t bytes = 0;
  };
  struct Progress {
    uint64_t pinned_bytes = 0;
    uint64_t total_bytes = 0;
    bool done = false;
    std::string error;  // why pinning stopped early ("" if it did not)
  };

  Pinner() = default;
  // Stops after the chunk being pinned and unpins every chunk pinned.
  ~Pinner();
  Pinner(const Pinner&) = delete;
  Pinner& operator=(const Pinner&) = delete;

  // Starts pinning `ranges`; call once.
  void Start(std::vector<Range> ranges);
  Progress progress() const;

 private:
  void Run();

  std::vector<Range> ranges_;
  std::vector<void*> pinned_;  // chunk starts, for unpinning (the pinning thread's until joined)
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> pinned_bytes_{0};
  uint64_t total_bytes_ = 0;
  mutable Mutex mu_;
  bool done_ KVT_GUARDED_BY(mu_) = false;
  std::string error_ KVT_GUARDED_BY(mu_);
};

}  // namespace kvtier
