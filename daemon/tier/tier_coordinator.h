// TierCoordinator: moves blocks between the tenants' DRAM pools (warm) and their SSD spill
// stores (cold). Each pool decides, for its tenant, what to demote, promote and release, by its
// policy; the coordinator turns those decisions into jobs for the spill workers, applies the
// workers' results to the pools, and drives the pools' clocks (expiry). It knows which tenant
// each store belongs to; the spill store knows segments only, the pool slots and block states
// only, and the server dispatches requests and continues the parked ones the coordinator names.
//
// Data flows one way: server -> tier (this) -> pool / spill. The coordinator never touches a
// session; what the server must act on (requests to continue, failures to log or audit, a
// purge's erase ending) comes back as return values.
// Not thread-safe: used on the daemon's event-loop thread, like the pools.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "daemon/pool/dram_pool.h"
#include "daemon/spill/spill_worker.h"
#include "daemon/tenant/tenant_registry.h"
#include "daemon/tier/load_estimator.h"
#include "daemon/tier/tier_policy.h"

namespace kvtier {

// A spill result the server reports on (log, audit) or waits for (a purge's erase).
struct SpillNotice {
  Tenant* tenant = nullptr;
  SpillResult result;  // kWritten or kRead that failed, or kErased
};

// A tenant's counters, both tiers (the stats op, kvtierctl stats, metrics).
wire::StatsReply StatsOf(const Tenant& tenant);
// The tenant's spill store's own counters (all zero without an SSD tier).
SpillStats SpillStatsOf(const Tenant& tenant);

class TierCoordinator {
 public:
  // `workers` run the tenants' spill stores (Tenant::spill names one of them) and must outlive
  // the coordinator; none means no tenant has an SSD tier. Each tenant's pool gets the policy
  // its config names.
  TierCoordinator(TenantRegistry* tenants, std::vector<SpillWorker*> workers);
  // Takes the pools' policies back: the pools may outlive the coordinator.
  ~TierCoordinator();
  TierCoordinator(const TierCoordinator&) = delete;
  TierCoordinator& operator=(const TierCoordinator&) = delete;

  // Reload: gives `tenant`'s pool the policy its config names now (a fresh one: what the old
  // one learned is forgotten).
  void ApplyPolicy(Tenant& tenant);

  bool has_ssd_tier() const { return !workers_.empty(); }
  // What loading from each tier costs now (match_prefix_estimate), fed with every spill order
  // posted and result applied.
  const LoadEstimator& estimator() const { return estimator_; }
  size_t worker_count() const { return workers_.size(); }
  // Readable when worker `i` has results (OnResults).
  int event_fd(size_t i) const { return workers_[i]->event_fd(); }

  // Applies worker `worker`'s results to the pools. Appends each tenant whose pool moved (a
  // demotion or promotion ended: parked requests may go on) to `moved`, once, and each failed
  // write or read and each erase ended to `notices`.
  void OnResults(size_t worker, std::vector<Tenant*>* moved, std::vector<SpillNotice>* notices);
  // Sends every pool's queued orders to its worker; with `demote`, the pools first queue the
  // demotions their dirty limit calls for.
  void PostOrders(bool demote = true);

  // Purge: after the pool was emptied (Evict(kAll, false)), its queued orders go, then a
  // kErase job that crypto-erases every segment of the tenant's store; its end comes back as a
  // kErased notice. False if the tenant has no SSD tier (nothing to erase). `new_key`, when
  // set, is the tenant key the store uses after the erase (the keyring's new epoch).
  bool PostErase(Tenant& tenant, std::shared_ptr<const SecretKey> new_key = nullptr);
  // Reload: the tenant's SSD quota is `bytes` now (a lower one reclaims its oldest segments,
  // whose blocks come back as dropped records).
  void PostQuota(Tenant& tenant, uint64_t bytes);

  // Drain: every tenant with an SSD tier writes out every dirty block. Returns the demotions
  // counted so far, for FlushedSince.
  uint64_t StartFlush();
  // True once no tenant has a demotion to queue or any I/O in flight.
  bool Flushed();
  // Blocks written to SSD since StartFlush returned `before`.
  uint64_t FlushedSince(uint64_t before) const;

  // Once a second: moves the pools' clocks to `now_s` and reaps up to `reap_entries` index
  // entries of each; the SSD records of expired blocks are released.
  void Tick(uint32_t now_s, uint32_t reap_entries);

 private:
  TenantRegistry* tenants_;
  std::vector<SpillWorker*> workers_;
  std::vector<std::vector<Tenant*>> stores_;  // [worker][store]
  std::vector<std::unique_ptr<SsdAdmission>> policies_;  // by tenant, as in the registry
  // A spill result of `bytes` for `tenant` is in.
  void SsdDone(Tenant& tenant, uint64_t bytes, uint64_t now_ns);

  LoadEstimator estimator_;
  // Reused buffers.
  std::vector<SpillResult> results_;
  std::vector<SpillOrder> orders_;
  std::vector<SpillJob> jobs_;
};

}  // namespace kvtier
