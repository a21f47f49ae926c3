// AdminCommands: what kvtierctl's commands do (docs/operations.md), run on the event loop so
// they see and change tenant state without locks. Commands arrive through the AdminInbox
// (admin_server.h); SIGHUP reloads through Reload.
//
// The commands act on the tenants, the tier coordinator (evictions, a purge's crypto-erase, a
// drain's flush, a lower SSD quota) and the running config; the server they need only for its
// sessions, through the narrow AdminHost below. Purge and drain finish after spill I/O: they
// are kept here and moved on by Advance after each loop round.
// Not thread-safe: the event loop's thread only.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/admin/admin_inbox.h"
#include "daemon/admin/audit_log.h"
#include "daemon/admin/metrics.h"
#include "daemon/admin/report.h"
#include "daemon/config/config.h"
#include "daemon/tenant/tenant_registry.h"
#include "daemon/tier/spill_keys.h"
#include "daemon/tier/tier_coordinator.h"
#include "ipc/base/unique_fd.h"

namespace kvtier {

// The server, as the admin commands see it.
class AdminHost {
 public:
  // What `status` and `metrics` report of the server.
  struct Snapshot {
    uint64_t uptime_seconds = 0;
    uint64_t sessions = 0;          // open connections
    uint64_t copies_in_flight = 0;  // offload and onload copies running
    int gpu_devices = 0;
    std::string gpu;      // the GPU probe's summary
    std::string pinning;  // "in progress", "done", an error, or "off (no CUDA device)"
    uint64_t pools_pinned_bytes = 0;
    uint64_t pools_bytes = 0;
    bool pinner = false;  // the two counts above mean something
    const std::array<LatencyHistogram, wire::kMaxOp + 1>* latency = nullptr;
  };

  virtual ~AdminHost() = default;
  virtual Snapshot Snap() const = 0;
  // Closes every session of `tenant` (a purge); returns how many.
  virtual uint64_t CloseTenantSessions(const Tenant& tenant) = 0;
  // Drain: no new sessions from now on (the socket is closed and unlinked).
  virtual void StopAccepting() = 0;
  // Drain: closes the sessions between requests, or all of them when `all`; adds how many to
  // `*closed`. True once no session is left (copies of closed ones included).
  virtual bool CloseSessionsForDrain(bool all, uint64_t* closed) = 0;
};

class AdminCommands {
 public:
  // `config` is the running config (reload changes it in place); `audit` may be null; `keys`
  // (the SSD tier's master key and keyring) is null without an SSD tier.
  AdminCommands(Config& config, TenantRegistry* tenants, TierCoordinator* tier, AdminHost* host,
                AuditLog* audit, SpillKeys* keys = nullptr);
  // Answers the purges and a drain still under way with "kvtierd is stopping".
  ~AdminCommands();

  // Runs one command; `done` is called now, or later for a purge or a drain.
  void Run(AdminRequest request, AdminDone done);
  // Reload from SIGHUP or the reload command; `origin` names which in the log and audit.
  Result<Report> Reload(const char* origin);
  // A purge's crypto-erase ended (TierCoordinator's kErased notice).
  void OnErased(const Tenant& tenant, const Status& status, uint64_t segments);
  // Moves purges, a drain and an upgrade's check on; call after each loop round while busy().
  // True once a drain has finished or an upgrade's binary passed its check: the server stops.
  bool Advance();
  // A purge, drain or upgrade is under way: the loop must not sleep long.
  bool busy() const { return !purges_.empty() || drain_.has_value() || upgrade_.has_value(); }
  // A purge is wiping a pool: the loop must not sleep at all.
  bool wiping() const;
  bool draining() const { return drain_.has_value(); }
  bool purging() const { return !purges_.empty(); }
  // The binary `upgrade` re-executes: kvtierd's own path, resolved at start (an upgrade installs
  // the new kvtierd there). Empty: upgrade is refused.
  void set_executable(std::string path) { executable_ = std::move(path); }
  // An upgrade's new binary accepted the config: the server stops, then kvtierd re-executes
  // executable() (warm_restart.h, ExecWithKeptState).
  bool upgrade_ready() const { return upgrade_ready_; }
  const std::string& executable() const { return executable_; }

 private:
  struct PendingPurge {
    Tenant* tenant = nullptr;
    AdminRequest request;
    AdminDone done;
    EvictReport removed;
    uint64_t sessions_closed = 0;
    bool erase_posted = false;
    bool erased = false;
    Status erase_status;
    uint64_t segments_erased = 0;
    bool copies_waited = false;  // closed sessions' copies were still running
    bool emptied = false;        // the pool holds nothing any more; the wipe is under way
    uint64_t wiped_bytes = 0;    // of the pool, from its start, kWipeBytesPerRound at a time
    std::optional<uint64_t> key_epoch;  // the tenant key's new epoch (the keyring had the tenant)
    Status key_status;           // replacing the tenant key failed: copies are not revoked
  };
  struct PendingDrain {
    AdminRequest request;
    AdminDone done;
    uint64_t sessions_closed = 0;
    uint64_t demotions_before = 0;  // the tenants' demotions when the flush began
    bool sessions_done = false;
    uint64_t deadline_us = 0;  // then sessions still busy are closed anyway
  };

  struct PendingUpgrade {
    AdminRequest request;
    AdminDone done;
    pid_t pid = -1;      // `executable_ --check-config <config>`
    UniqueFd output;     // its stdout and stderr (non-blocking)
    std::string text;    // what it wrote so far (the first kMaxCheckOutput bytes)
    uint64_t deadline_us = 0;
  };

  Result<Report> ServerStatus();
  Result<Report> Stats(const std::vector<std::string>& args);
  Result<Report> Tenants();
  Result<Report> Evict(const std::vector<std::string>& args);
  void Purge(AdminRequest request, AdminDone done);
  void Drain(AdminRequest request, AdminDone done);
  void Upgrade(AdminRequest request, AdminDone done);
  Result<Report> RotateKey(const AdminRequest& request);
  // True once the new binary's check passed (answered); a failed check is answered and dropped.
  bool AdvanceUpgrade();
  // Ends a pending upgrade with `why` (kvtierd keeps running) and audits it.
  void RefuseUpgrade(const Status& why);
  std::string Metrics();
  Result<Tenant*> TenantNamed(std::string_view name);
  void AdvancePurges();
  void FinishPurge(PendingPurge& purge);
  // True once the drain has closed every session and flushed the SSD tier.
  bool AdvanceDrain();
  void Audit(std::string_view event, std::string_view fields) {
    if (audit_ != nullptr) audit_->Record(event, fields);
  }
  // A purge wipes its tenant's whole pool this much per loop round, so other tenants are
  // served between chunks (DramPool scrubbing has the same reason).
  static constexpr uint64_t kWipeBytesPerRound = 4ull << 20;

  Config& config_;
  TenantRegistry* tenants_;
  TierCoordinator* tier_;
  AdminHost* host_;
  AuditLog* audit_;
  SpillKeys* keys_;
  std::vector<PendingPurge> purges_;
  std::optional<PendingDrain> drain_;
  std::string executable_;
  std::optional<PendingUpgrade> upgrade_;
  bool upgrade_ready_ = false;
};

}  // namespace kvtier
