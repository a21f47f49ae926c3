// Test support: temp dirs and a real kvtierd child process on a private socket.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kvtier::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

struct DaemonOptions {
  uint64_t dram_bytes = 64ull << 20;
  uint64_t slab_bytes = 2ull << 20;
  uint64_t max_block_bytes = 2ull << 20;
  uint64_t max_blocks = 0;  // 0: derived
  uint32_t max_sessions = 64;
  uint32_t max_leases_per_session = 65536;
  uint32_t poll_spin_us = 0;
  std::string extra_toml;  // appended to the [daemon] table
  std::string socket_mode = "0600";
  bool default_tenant = true;       // every peer maps to tenant "test"
  std::vector<uid_t> tenant_uids;   // else only these uids do
  bool zero_freed = true;           // [pool] zero_freed
  uint32_t default_ttl_seconds = 0;  // of tenant "test"
  uint32_t max_ttl_seconds = 0;
  // More tenants, after "test": each its own pool, mapped from its uids only.
  struct Tenant {
    std::string name;
    std::vector<uid_t> uids;
    uint64_t dram_bytes = 16ull << 20;
  };
  std::vector<Tenant> more_tenants;
  // SSD tier: on when spill_dir is set (an absolute path the test owns, so a restarted daemon
  // finds what the first one wrote). The master key is spill_dir/../kvtier-test.key, created on
  // first start.
  std::filesystem::path spill_dir;
  uint64_t ssd_bytes = 0;
  uint64_t segment_bytes = 16ull << 20;
  std::string spill_toml;  // more [spill] keys
  std::string admin_toml;  // more [admin] keys (the audit log is run/audit.log already)
  uint64_t watchdog_usec = 0;  // > 0: run as under WatchdogSec= ($WATCHDOG_USEC, $WATCHDOG_PID)
  // Another build of the daemon to run instead of build/daemon/kvtierd (a test's daemon such as
  // kvtierd-faults: same arguments, same behaviour otherwise), and variables to add to its
  // environment.
  std::string binary;
  std::vector<std::pair<std::string, std::string>> environment;
};

// A file descriptor the daemon gave the service manager's store (sd_notify FDSTORE=1), and its
// FDNAME: what systemd would pass to the next start.
struct StoredFd {
  std::string name;
  int fd = -1;  // owned
};

// Starts build/daemon/kvtierd (or options.binary) with a config in a fresh temp dir and waits for
// its READY=1 (sd_notify). The destructor stops it with SIGTERM, reaps it and fails the test unless it
// exited with status 0 (a sanitizer report, a leak or a crash at shutdown is a failure), except
// where the test took the exit status itself from Stop().
class DaemonProcess {
 public:
  static std::unique_ptr<DaemonProcess> Start(const DaemonOptions& options = {});
  // As systemd restarting a unit with FileDescriptorStoreMax=: the new daemon gets `passed` as
  // its LISTEN_FDS (fd 3 on) with their names in LISTEN_FDNAMES. Closes them here.
  static std::unique_ptr<DaemonProcess> Start(const DaemonOptions& options,
                                              std::vector<StoredFd> passed);
  ~DaemonProcess();

  const std::string& socket_path() const { return socket_path_; }
  std::string admin_socket_path() const { return (dir() / "run" / "kvtierd-admin.sock").string(); }
  std::filesystem::path audit_log_path() const { return dir() / "run" / "audit.log"; }
  // The config file it runs with (a reload test rewrites it).
  std::filesystem::path config_path() const { return dir() / "kvtierd.toml"; }
  const std::filesystem::path& dir() const { return dir_.path(); }
  pid_t pid() const { return pid_; }
  // True while the process has not exited.
  bool Alive();
  // SIGTERM, wait, and return the exit status (-signal if killed by one). The caller owns the
  // status from then on: the destructor no longer checks it.
  int Stop();
  std::string Log() const;  // the daemon's stderr so far
  // Every sd_notify message the daemon sent so far (READY=1 first), oldest first.
  const std::vector<std::string>& Notifications();
  // The fds it sent with FDSTORE=1 so far (at a clean stop, after Stop()); the caller owns them.
  std::vector<StoredFd> TakeStoredFds();

 private:
  DaemonProcess() = default;
  void CloseNotify();
  TempDir dir_;
  std::string socket_path_;
  pid_t pid_ = -1;
  int exit_status_ = 0;
  bool reaped_ = false;
  bool status_taken_ = false;  // Stop() handed the exit status to the test
  int notify_fd_ = -1;         // the NOTIFY_SOCKET the daemon sends to
  std::vector<std::string> notifications_;
  std::vector<StoredFd> stored_fds_;
};

// A filesystem mounted on a fresh directory for the test's lifetime (tests run as root; where
// mount fails, ok() is false and why() says why, and the test WARNs and returns).
class ScopedMount {
 public:
  ScopedMount(const char* type, const char* options);
  ~ScopedMount();
  bool ok() const { return mounted_; }
  const std::string& why() const { return why_; }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  TempDir tmp_;
  std::filesystem::path dir_;
  bool mounted_ = false;
  std::string why_;
};

// What a test needs and this machine lacks (io_uring, a tmpfs mount, root, hugetlbfs): where
// the environment variable KVTIER_TEST_REQUIRE (a comma-separated list of `what`s, or "all")
// names it, the test fails, so that a CI machine which should have it notices losing it;
// else a warning saying SKIPPED. With `whole_test` it also prints a line ctest reports as a
// skip (SKIP_REGULAR_EXPRESSION in tests/CMakeLists.txt): call it so only before the test's
// first assertion, and return right after, or a failure could be reported as a skip.
void Unavailable(std::string_view what, std::string_view why, bool whole_test);

// Runs `body` in a forked child; returns its exit code (128 + signal if it died of one).
int RunInChild(const std::function<int()>& body);
// Forks `body` and returns its pid without waiting.
pid_t SpawnChild(const std::function<int()>& body);
int WaitChild(pid_t pid);

// Runs build/daemon/kvtierctl with `args` (and the admin socket of `daemon` unless args name
// one); returns its exit status and fills `out` with its stdout and `err` with its stderr.
class DaemonProcess;
int RunCtl(const DaemonProcess& daemon, const std::vector<std::string>& args, std::string* out,
           std::string* err = nullptr);
// The whole file, or "" if it cannot be read.
std::string ReadFile(const std::filesystem::path& path);

}  // namespace kvtier::testing

namespace kvtier::testing {

// Polls `condition` every 10 ms until it holds; false after `max_wait_ms` (a liveness bound for
// a hung test, not a timing assertion: the condition normally holds within milliseconds).
bool WaitUntil(const std::function<bool()>& condition, int max_wait_ms = 30000);

}  // namespace kvtier::testing
