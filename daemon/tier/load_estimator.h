// LoadEstimator: how long bringing a matched prefix into the caller's memory would take, per
// tier, from what the tiers did lately, so an engine's scheduler can choose between loading
// and recomputing (loading from a busy SSD can be slower than prefill).
//
// The model: a DRAM block costs a copy out of the pool at the host's copy bandwidth (measured
// at start with memcpy, best of three); an SSD block costs its share of the SSD's throughput
// behind the SSD work the caller's tenant has queued (its reads and writes posted and not yet
// done), then the same copy. Other tenants' queued work is left out on purpose: reporting it
// would tell one tenant what another does; it shows only as a lower measured throughput. SSD throughput is measured over the time the SSD had work:
// bytes done / busy time, smoothed over recent busy periods (EWMA, one fifth per sample of at
// least 1 ms of busy time). Until the first such sample it is kAssumedSsdBytesPerSecond.
// Not thread-safe: the event loop's thread only.
#pragma once

#include <cstdint>

#include "ipc/wire/protocol.h"

namespace kvtier {

class LoadEstimator {
 public:
  // A conservative NVMe read rate for the time before any SSD I/O was measured (1 GB/s).
  static constexpr double kAssumedSsdBytesPerSecond = 1e9;

  // Measures the copy bandwidth (a few milliseconds of memcpy).
  LoadEstimator();
  // For tests: both rates given, nothing measured.
  LoadEstimator(double dram_bytes_per_second, double ssd_bytes_per_second);

  // SSD work was posted / is done (reads and writes alike); `now_ns` is CLOCK_MONOTONIC.
  void SsdPosted(uint64_t bytes, uint64_t now_ns);
  void SsdDone(uint64_t bytes, uint64_t now_ns);

  // The estimate for a prefix of `dram_bytes` in DRAM and `ssd_bytes` on SSD only, for a
  // tenant with `queued_bytes` of SSD work ahead; the block counts are copied into the reply.
  wire::MatchEstimate Estimate(uint32_t dram_blocks, uint64_t dram_bytes, uint32_t ssd_blocks,
                               uint64_t ssd_bytes, uint64_t queued_bytes) const;

 private:
  static constexpr uint64_t kMinSampleNs = 1'000'000;
  double dram_bps_;
  double ssd_bps_;
  bool ssd_measured_ = false;
  uint64_t in_flight_bytes_ = 0;
  uint64_t busy_since_ns_ = 0;   // while in_flight_bytes_ > 0
  uint64_t sample_busy_ns_ = 0;  // busy time and bytes done since the last sample
  uint64_t sample_bytes_ = 0;
};

}  // namespace kvtier
