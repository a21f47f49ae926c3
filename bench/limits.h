// The machine's limits, measured in the same run as kvtier's figures so that each figure can be
// printed as a ratio of what the hardware allows: single-core copies into and out of a shared
// memfd mapping (made the way kvtierd makes its pools), and a bare SOCK_SEQPACKET round trip.
#pragma once

#include <cstdint>

namespace kvtier::bench {

struct CopyLimit {
  double memcpy_gbps = 0;  // glibc memcpy
  double nt_gbps = 0;      // kvtier::CopyNonTemporal
  double best() const { return memcpy_gbps > nt_gbps ? memcpy_gbps : nt_gbps; }
};

struct CopyLimits {
  bool huge_pages = false;  // whether the shared mapping got hugetlb pages
  CopyLimit into_shm;       // private -> shared mapping
  CopyLimit out_of_shm;     // shared mapping -> private
};

struct CopyLimitOptions {
  uint64_t block_bytes = 0;
  uint64_t working_set_bytes = 256ull << 20;  // per side; cycled so caches do not flatter it
  uint64_t bytes_per_rep = 512ull << 20;
  int reps = 5;  // best of
};

// Holds a shared mapping and a private buffer of `working_set_bytes` each, so the copy limits
// can be measured again next to every figure: this VM's memory bandwidth drifts by 2x within a
// run, so a limit measured minutes earlier is no yardstick. Move-only.
class CopyMeter {
 public:
  explicit CopyMeter(uint64_t working_set_bytes);
  ~CopyMeter();
  CopyMeter(const CopyMeter&) = delete;
  CopyMeter& operator=(const CopyMeter&) = delete;

  // Best-of-reps GB/s (1e9 bytes/s) for each direction and copy function.
  CopyLimits Measure(const CopyLimitOptions& options);
  // One direction only (into_shm true: private -> shared).
  CopyLimit MeasureOne(bool into_shm, const CopyLimitOptions& options);

 private:
  struct State;
  State* state_;
};

struct RttLimit {
  double p50_us = 0;
  double p99_us = 0;
};

// 64-byte round trips to a forked echo child over a SOCK_SEQPACKET socketpair; both sides block
// in recv. Best p50 and best p99 over `reps` runs of `round_trips` each. The caller runs on
// `self_cpu` and the child on `child_cpu` for the measurement (-1: wherever the scheduler puts
// them); the caller's CPU mask is restored afterwards.
RttLimit MeasureSocketRtt(int round_trips, int reps, int self_cpu, int child_cpu);

}  // namespace kvtier::bench
