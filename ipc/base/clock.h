// The daemon's clock for timeouts and latencies: CLOCK_MONOTONIC, in microseconds.
#pragma once

#include <time.h>

#include <cstdint>

namespace kvtier {

inline uint64_t NowUs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

}  // namespace kvtier
