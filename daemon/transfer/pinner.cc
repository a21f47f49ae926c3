#include "daemon/transfer/pinner.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "daemon/gpu/gpu.h"

namespace kvtier {

Pinner::~Pinner() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  for (void* chunk : pinned_) UnpinHostMemory(chunk);
}

void Pinner::Start(std::vector<Range> ranges) {
  ranges_ = std::move(ranges);
  for (const Range& r : ranges_) total_bytes_ += r.bytes;
  thread_ = std::thread([this] { Run(); });
}

Pinner::Progress Pinner::progress() const {
  Progress p;
  p.pinned_bytes = pinned_bytes_.load(std::memory_order_relaxed);
  p.total_bytes = total_bytes_;
  MutexLock lock(mu_);
  p.done = done_;
  p.error = error_;
  return p;
}

void Pinner::Run() {
  auto gib = [](uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024 * 1024); };
  uint64_t next_log = total_bytes_ / 10;
  std::string error;
  for (const Range& r : ranges_) {
    for (size_t at = 0; at < r.bytes && !stop_ && error.empty(); at += kChunkBytes) {
      void* chunk = static_cast<std::byte*>(r.data) + at;
      const size_t n = std::min(kChunkBytes, r.bytes - at);
      if (Status s = PinHostMemory(chunk, n); !s.ok()) {
        error = s.ToString();
        break;
      }
      pinned_.push_back(chunk);
      const uint64_t done = pinned_bytes_.fetch_add(n, std::memory_order_relaxed) + n;
      if (done >= next_log && done < total_bytes_) {
        spdlog::info("pinning pools for CUDA: {:.1f} of {:.1f} GiB", gib(done),
                     gib(total_bytes_));
        next_log = done + total_bytes_ / 10;
      }
    }
  }
  if (!error.empty()) {
    spdlog::warn("pinning pools for CUDA stopped after {:.1f} of {:.1f} GiB: {} (copies to and "
                 "from the rest are staged by the driver, slower)",
                 gib(pinned_bytes_.load()), gib(total_bytes_), error);
  } else if (!stop_) {
    spdlog::info("pools pinned for CUDA: {:.1f} GiB", gib(total_bytes_));
  }
  MutexLock lock(mu_);
  done_ = true;
  error_ = error;
}

}  // namespace kvtier
