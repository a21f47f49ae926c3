// Metrics: what kvtierd exposes to Prometheus (`kvtierctl metrics`, GET /metrics on the loopback
// listener), rendered in the text exposition format by prometheus-cpp's TextSerializer.
// The counters themselves live where they are counted (each tenant's DramPool, the server's
// latency histograms) as plain integers on the event-loop thread; a scrape copies them into a
// MetricsSnapshot there and renders it, so the request path pays no atomics for metrics.
// Names and labels are listed in docs/operations.md ("Metrics").
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "ipc/wire/protocol.h"

namespace kvtier {

// Request latency of one op, from the request's arrival to its reply (parked time included),
// in fixed buckets from 5 us to 1 s.
class LatencyHistogram {
 public:
  static constexpr std::array<uint64_t, 16> kBoundsUs = {
      5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000};

  void Observe(uint64_t us) {
    size_t i = 0;
    while (i < kBoundsUs.size() && us > kBoundsUs[i])
      ++i;
    ++counts_[i];
    sum_us_ += us;
  }
  // Observations at or below kBoundsUs[i]; i == kBoundsUs.size() for all of them.
  uint64_t Cumulative(size_t i) const {
    uint64_t n = 0;
    for (size_t j = 0; j <= i; ++j)
      n += counts_[j];
    return n;
  }
  uint64_t sum_us() const { return sum_us_; }

 private:
  std::array<uint64_t, kBoundsUs.size() + 1> counts_{};
  uint64_t sum_us_ = 0;
};

struct TenantMetrics {
  std::string name;
  wire::StatsReply stats{};
  uint64_t dram_hits = 0;            // hits on blocks in DRAM
  uint64_t ssd_hits = 0;             // hits on blocks only on SSD (each starts a promotion)
  uint64_t demotions_in_flight = 0;  // spill writes queued or running for this tenant
  uint64_t promotions_in_flight = 0;
  // The spill store's own: released records whose on-disk header could not be zeroed (a
  // restart may serve them again), and segments whose wrapped key could not be destroyed.
  uint64_t scrub_failures = 0;
  uint64_t erase_failures = 0;
};

struct MetricsSnapshot {
  std::vector<TenantMetrics> tenants;
  // One histogram per op, indexed by wire::Op (0 unused).
  std::array<LatencyHistogram, wire::kMaxOp + 1> latency{};
  uint64_t sessions = 0;  // open connections
  uint64_t uptime_seconds = 0;
  uint32_t spill_queue_depth = 0;  // configured io_uring entries per tenant (0: no SSD tier)
};

// The Prometheus text exposition of `snapshot`.
std::string RenderMetrics(const MetricsSnapshot& snapshot);

}  // namespace kvtier
