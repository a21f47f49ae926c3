// DaemonProcess: a kvtierd that kvtier-bench starts for itself in a temporary directory.
//
// Start() writes a config (one default tenant, socket mode 0600, run_dir in the temp dir; with
// DaemonOptions::spill, an SSD tier whose master key file kvtierd creates in the temp dir),
// fork/execs the binary with its log in the temp dir, and waits until the socket accepts a
// client. The destructor stops it with SIGTERM (SIGKILL after 30 s) and removes the directory.
// If the benchmark dies, the daemon gets SIGTERM (PR_SET_PDEATHSIG). Not thread-safe.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace kvtier::bench {

// The tenant's SSD tier ([spill] and the tenant's ssd_bytes; configs/kvtierd.toml).
struct DaemonSpillOptions {
  std::string dir;         // absolute: spill.dir (the caller makes and removes it)
  uint64_t ssd_bytes = 0;  // the tenant's quota: >= 2 segments, a multiple of one
  uint64_t segment_bytes = 256ull << 20;
  uint32_t threads = 1;          // spill worker threads (each is one crypto thread)
  uint32_t staging_buffers = 8;  // I/Os in flight per tenant
  uint32_t queue_depth = 16;     // > staging_buffers
  double demote_above = 0.75;
};

// A further tenant, mapped from one uid (kvtier-bench's noisy-neighbour section).
struct DaemonTenant {
  std::string name;
  uint32_t uid = 0;
  uint64_t dram_bytes = 0;
};

struct DaemonOptions {
  std::string binary;
  uint64_t dram_bytes = 0;
  uint64_t max_blocks = 0;
  uint64_t slab_bytes = 4 << 20;
  uint64_t max_block_bytes = 2 << 20;
  uint32_t poll_spin_us = 50;
  int cpu = -1;                             // pin the daemon to this CPU; -1: the scheduler decides
  std::optional<DaemonSpillOptions> spill;  // none: DRAM only
  // More tenants after "bench" (the default tenant); with any, the socket and its directories
  // are open to every uid (the tenant map decides who is who).
  std::vector<DaemonTenant> more_tenants;
};

class DaemonProcess {
 public:
  // Fails loudly (bench::Fail) with the daemon's log when it does not come up.
  static std::unique_ptr<DaemonProcess> Start(const DaemonOptions& options);
  ~DaemonProcess();
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  const std::string& socket_path() const { return socket_path_; }
  pid_t pid() const { return pid_; }
  double startup_seconds() const { return startup_seconds_; }
  // SIGTERM and wait; true if it exited with status 0.
  bool Stop();

 private:
  DaemonProcess() = default;
  std::string LogTail() const;

  std::string dir_;
  std::string socket_path_;
  std::string log_path_;
  pid_t pid_ = 0;
  double startup_seconds_ = 0;
};

}  // namespace kvtier::bench
