#include "daemon/tier/load_estimator.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

namespace kvtier {
namespace {

double MeasureCopyBytesPerSecond() {
  constexpr size_t kBytes = 16u << 20;
  std::vector<std::byte> from(kBytes, std::byte{1});
  std::vector<std::byte> to(kBytes);
  double best = 0;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    std::memcpy(to.data(), from.data(), kBytes);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s > 0) best = std::max(best, static_cast<double>(kBytes) / s);
  }
  // Keep the copy from being optimized away.
  if (to[kBytes / 2] != std::byte{1}) return 1e9;
  return best > 0 ? best : 1e9;
}

uint64_t Micros(double bytes, double bytes_per_second) {
  return static_cast<uint64_t>(bytes / bytes_per_second * 1e6 + 0.5);
}

}  // namespace

LoadEstimator::LoadEstimator()
    : dram_bps_(MeasureCopyBytesPerSecond()), ssd_bps_(kAssumedSsdBytesPerSecond) {}

LoadEstimator::LoadEstimator(double dram_bytes_per_second, double ssd_bytes_per_second)
    : dram_bps_(dram_bytes_per_second), ssd_bps_(ssd_bytes_per_second), ssd_measured_(true) {}

void LoadEstimator::SsdPosted(uint64_t bytes, uint64_t now_ns) {
  if (in_flight_bytes_ == 0) busy_since_ns_ = now_ns;
  in_flight_bytes_ += bytes;
}

void LoadEstimator::SsdDone(uint64_t bytes, uint64_t now_ns) {
  if (in_flight_bytes_ == 0) return;  // posted before this estimator existed
  sample_bytes_ += bytes;
  in_flight_bytes_ -= std::min(bytes, in_flight_bytes_);
  if (in_flight_bytes_ == 0 || now_ns - busy_since_ns_ >= kMinSampleNs) {
    sample_busy_ns_ += now_ns - busy_since_ns_;
    busy_since_ns_ = now_ns;
  }
  if (sample_busy_ns_ < kMinSampleNs) return;
  const double rate = static_cast<double>(sample_bytes_) * 1e9 /
                      static_cast<double>(sample_busy_ns_);
  ssd_bps_ = ssd_measured_ ? 0.8 * ssd_bps_ + 0.2 * rate : rate;
  ssd_measured_ = true;
  sample_bytes_ = 0;
  sample_busy_ns_ = 0;
}

wire::MatchEstimate LoadEstimator::Estimate(uint32_t dram_blocks, uint64_t dram_bytes,
                                            uint32_t ssd_blocks, uint64_t ssd_bytes,
                                            uint64_t queued_bytes) const {
  wire::MatchEstimate e{};
  e.dram_blocks = dram_blocks;
  e.ssd_blocks = ssd_blocks;
  e.dram_bytes = dram_bytes;
  e.ssd_bytes = ssd_bytes;
  e.ssd_queue_us = ssd_bytes > 0 ? Micros(static_cast<double>(queued_bytes), ssd_bps_) : 0;
  e.load_us = Micros(static_cast<double>(dram_bytes + ssd_bytes), dram_bps_) +
              (ssd_bytes > 0 ? e.ssd_queue_us + Micros(static_cast<double>(ssd_bytes), ssd_bps_)
                             : 0);
  e.dram_mb_per_s = static_cast<uint32_t>(dram_bps_ / 1e6);
  e.ssd_mb_per_s = static_cast<uint32_t>(ssd_bps_ / 1e6);
  return e;
}

}  // namespace kvtier
