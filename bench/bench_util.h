// Helpers shared by the parts of kvtier-bench: failing loudly, clocks, percentiles, page-backed
// buffers and benchmark keys. Single-threaded use (the benchmark runs on one thread).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvclient/client.h"
#include "kvclient/status.h"

namespace kvtier::bench {

inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * kKiB;
inline constexpr uint64_t kGiB = 1024 * kMiB;

// Prints "kvtier-bench: FAILED: what", stops the daemon this process started (if any) and
// exits 1. Every error status in the benchmark ends here: a broken path must not be measured.
[[noreturn]] void Fail(const std::string& what);
// Fail(what + ": " + status) unless status is OK.
void CheckOk(const Status& status, const std::string& what);
// Every per-key result OK (batch calls report refusals per key, not in their Status).
void CheckCodes(std::span<const StatusCode> codes, const std::string& what);
// The daemon Fail() must stop; 0 for none.
void SetChildToStopOnFailure(pid_t pid);
// Temporary directories Fail() must remove (after stopping the daemon), newest first: Add one
// when it is made, Forget it once it is removed (or handed on).
void AddDirToRemoveOnFailure(const std::string& dir);
void ForgetDirToRemoveOnFailure(const std::string& dir);

uint64_t NowNs();
double Seconds(uint64_t ns);

// The q-quantile (0..1) of `samples`, which it sorts.
uint64_t Quantile(std::vector<uint64_t>& samples, double q);

// "2MiB", "64KiB", "4KiB".
std::string SizeName(uint64_t bytes);

// Private anonymous memory, touched at allocation so no figure pays first-touch faults, and
// filled with a non-zero pattern (zero pages could be flattered by the kernel or the copy).
// Move-only.
class PrivateBuffer {
 public:
  explicit PrivateBuffer(uint64_t bytes);
  ~PrivateBuffer();
  PrivateBuffer(const PrivateBuffer&) = delete;
  PrivateBuffer& operator=(const PrivateBuffer&) = delete;

  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
};

// CPU affinity of the calling thread (the benchmark is single-threaded, so of the process).
using CpuMask = std::vector<int>;  // CPU numbers
CpuMask GetCpuMask();
void SetCpuMask(const CpuMask& cpus);
void PinToCpu(int cpu);

// A 16-byte benchmark key: "kvtb", a figure tag and the block number.
Key BenchKey(uint32_t tag, uint64_t index);

}  // namespace kvtier::bench
