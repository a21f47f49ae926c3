// Server: kvtierd's data-plane event loop. One thread owns the listening socket, every session
// and every tenant's pool state, so the request path takes no locks.
//
// The loop is epoll, level-triggered. After any activity it busy-polls (epoll_wait with a zero
// timeout) for poll_spin_us before sleeping: a wake-up costs ~25 us on these VMs, more than a
// whole batch of lookups, and an engine's next request usually follows within microseconds.
// SIGINT and SIGTERM (through a signalfd) stop the loop cleanly; SIGHUP reloads the config.
// Admin commands (admin_commands.cc) arrive from the AdminServer's thread through an
// AdminInbox and run here too, so they see and change tenant state without locks.
// Why epoll and not Asio here: SOCK_SEQPACKET with SCM_RIGHTS needs recvmsg/sendmsg, which Asio
// has no protocol for, and the busy-poll window needs control of the wait (docs/design.md).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <array>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "daemon/admin/admin_commands.h"
#include "daemon/admin/admin_inbox.h"
#include "daemon/admin/audit_log.h"
#include "daemon/admin/metrics.h"
#include "daemon/admin/report.h"
#include "daemon/config/config.h"
#include "daemon/gpu/gpu.h"
#include "daemon/server/request_handler.h"
#include "daemon/server/session.h"
#include "daemon/tenant/tenant_registry.h"
#include "daemon/tier/tier_coordinator.h"
#include "daemon/transfer/copy_engine.h"
#include "daemon/transfer/pinner.h"
#include "ipc/base/clock.h"
#include "ipc/base/unique_fd.h"

namespace kvtier {

class Server : private AdminHost {
 public:
  // Binds the control socket; signals SIGINT/SIGTERM/SIGHUP must already be blocked in every
  // thread (main does this first) so the signalfd receives them.
  // `workers` run the tenants' spill stores (Tenant::spill names one of them); they must outlive
  // the server. `config` is the running configuration; reload changes it in place. `admin`
  // and `audit` may be null (no admin socket). `keys` (null without an SSD tier) must outlive
  // the server: purges and rotate-key change them.
  static Result<std::unique_ptr<Server>> Open(Config& config, TenantRegistry* tenants,
                                              std::vector<SpillWorker*> workers = {},
                                              AdminInbox* admin = nullptr,
                                              AuditLog* audit = nullptr,
                                              SpillKeys* keys = nullptr);
  // Answers admin commands still waiting (kUnavailable: stopping).
  ~Server();

  // Serves until SIGINT or SIGTERM, until a drain has finished, or until an upgrade's new binary
  // accepted the config (then upgrade_ready()). Returns OK after a clean stop.
  Status Run();
  // The binary `kvtierctl upgrade` re-executes (kvtierd's own path); unset: upgrade is refused.
  void set_executable(std::string path) { commands_->set_executable(std::move(path)); }
  // Run returned for an upgrade: the caller re-executes executable().
  bool upgrade_ready() const { return commands_->upgrade_ready(); }
  const std::string& executable() const { return commands_->executable(); }
  // The CUDA devices found at Open (none where kvtierd was built without CUDA).
  const GpuProbe& gpu() const { return gpu_; }

 private:
  // An offload or onload copy on the CopyEngine, and the session it belongs to.
  struct PendingCopy {
    int fd = -1;
    uint32_t session_id = 0;
    Tenant* tenant = nullptr;
    CopyHold hold;
    bool replied = false;  // a CUDA onload replies once its copies are queued
  };

  Server(Config& config, TenantRegistry* tenants, std::vector<SpillWorker*> workers);
  void Accept();
  void Refuse(int fd, const PeerCredentials& peer, const Status& why);
  void SetAccepting(bool on);
  // Closes sessions that connected but did not send hello in time (at most once a second).
  void CloseSilentSessions();
  void OnSessionEvent(Session& session, uint32_t events);
  // Handles one frame; false if no more frames are to be read from the session now.
  bool ServeFrame(Session& session, size_t bytes, bool truncated, UniqueFd passed_fd);
  // Posts an offload's or onload's copy; its request stays parked until the copy's result.
  void StartCopy(Session& session, RequestHandler::Outcome& outcome);
  void OnCopyResults();
  // Sends a parked request's finished reply and reads the session's requests again.
  void SendParkedReply(Session& session, const wire::FrameView& request);
  // Forgets the sessions closed in this round; one whose copies still run is kept aside
  // (detached_) until they end.
  void ForgetClosedSessions();
  bool SendReply(Session& session, std::span<const std::byte> frame, int pass_fd);
  // std::bad_alloc while serving `request`: gives back what `outcome` holds, answers
  // resource_exhausted and closes the session (the others are served on).
  void FailOutOfMemory(Session& session, const wire::FrameView& request,
                       RequestHandler::Outcome& outcome);
  void CloseSession(Session& session, const char* why);
  void WatchWritable(Session& session, bool writable);
  // epoll interest of a session: `events` (0 while its request is parked; hang-ups still come).
  void SetInterest(Session& session, uint32_t events);
  // SSD tier: keeps a request that must wait, continues parked ones, applies spill results, and
  // sends the pools' spill orders to the workers.
  // `awaits_spill`: spill results continue it (else a copy's result will).
  void Park(Session& session, size_t request_bytes, const wire::FrameWriter& reply,
            bool awaits_spill = true);
  // Continues the parked requests of `tenant`'s sessions.
  void ContinueParked(const Tenant* tenant);
  // Applies a spill worker's results (TierCoordinator::OnResults), logs and audits the
  // failures, and continues the requests they unblock.
  void OnSpillResults(size_t worker);
  // A hostile peer can send errors as fast as it likes, and a failing disk fails every I/O: the
  // log gets at most kPeerErrorLogsPerSecond such warnings a second, then a count of the rest.
  bool AllowNoisyWarning();
  uint32_t NextSessionId();
  // Once a second: moves the pools' clocks and reaps a bounded number of expired blocks.
  void Tick();
  // End of a loop round: each pool zeroes part of its freed slots, and requests waiting for
  // that room continue. True while any pool has more to zero (the loop must not sleep).
  bool ScrubPools();

  // AdminHost, for the admin commands (daemon/admin/admin_commands.h).
  Snapshot Snap() const override;
  uint64_t CloseTenantSessions(const Tenant& tenant) override;
  void StopAccepting() override;
  bool CloseSessionsForDrain(bool all, uint64_t* closed) override;
  void OnAdminCommands();
  // What `systemctl status` shows: serving or draining, sessions, pool pinning.
  std::string StatusLine() const;
  void Audit(std::string_view event, std::string_view fields) {
    if (audit_ != nullptr) audit_->Record(event, fields);
  }
  // Index entries each tenant's reaper looks at per second: a 1M-block index in ~16 s, at
  // about a millisecond of loop time per tick.
  static constexpr uint32_t kReapEntriesPerSecond = 65536;
  static constexpr uint32_t kPeerErrorLogsPerSecond = 10;
  static constexpr uint64_t kHelloTimeoutUs = 5'000'000;

  uint64_t start_us_;
  uint32_t clock_s_ = 0;
  // systemd (daemon/sd_notify.h): the watchdog's ping interval (0: none) and the last ping, and
  // the last STATUS= line sent.
  uint64_t watchdog_us_ = 0;
  uint64_t last_watchdog_us_ = 0;
  std::string status_line_;
  Config& config_;
  GpuProbe gpu_;
  AdminInbox* admin_ = nullptr;
  AuditLog* audit_ = nullptr;
  std::array<LatencyHistogram, wire::kMaxOp + 1> latency_{};
  TenantRegistry* tenants_;
  TierCoordinator tier_;
  std::unique_ptr<AdminCommands> commands_;
  RequestHandler handler_;
  UniqueFd listen_fd_;
  UniqueFd epoll_fd_;
  UniqueFd signal_fd_;
  std::unordered_map<int, std::unique_ptr<Session>> sessions_;  // by fd
  // Closed sessions whose copies still run, by fd: they keep their leases, reservations and
  // regions (and their fd, so the number is not reused) until the last copy ends.
  std::unordered_map<int, std::unique_ptr<Session>> detached_;
  std::unique_ptr<CopyEngine> copier_;
  std::unordered_map<uint64_t, PendingCopy> copies_;  // by CopyJob id
  std::vector<CopyResult> copy_results_;
  uint64_t next_copy_id_ = 1;
  uint64_t last_copy_post_us_ = 0;
  // How long after posting a copy the loop busy-polls for its result (yielding the CPU to
  // anyone who wants it): a 64-block batch of 64 KiB takes ~0.5 ms, of 2 MiB ~15 ms.
  static constexpr uint64_t kCopySpinUs = 2000;
  std::unique_ptr<Pinner> pinner_;  // null without a CUDA device
  std::vector<int> closing_;
  std::vector<std::byte> recv_buffer_;
  std::vector<std::byte> send_buffer_;
  std::vector<int> parked_;  // fds of sessions with a parked request (some may have moved on)
  std::vector<Tenant*> spill_moved_;        // reused by OnSpillResults
  std::vector<SpillNotice> spill_notices_;  // reused by OnSpillResults
  uint32_t next_session_id_ = 1;
  bool ids_wrapped_ = false;
  bool accepting_ = true;
  uint32_t awaiting_hello_ = 0;  // sessions accepted whose hello has not been served
  uint64_t next_hello_sweep_us_ = 0;
  uint64_t log_second_ = 0;
  uint32_t logged_this_second_ = 0;
  uint64_t suppressed_logs_ = 0;
};

}  // namespace kvtier
