// TenantRegistry: the tenants of the config, each with its pool memory and its DramPool.
//
// A peer is mapped to a tenant by its SO_PEERCRED uid first, then its primary gid, then the
// configured default tenant; anything else is refused. Each tenant's pool is its own sealed
// memfd, so a session can only ever be handed its own tenant's memory.
// Create() pre-faults every pool (seconds for many GiB): call it before announcing readiness.
// Not thread-safe: used on the daemon's event-loop thread after creation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "daemon/config/config.h"
#include "daemon/pool/dram_pool.h"
#include "ipc/shm/shm_region.h"
#include "ipc/socket/seqpacket.h"

namespace kvtier {

class SpillWorker;

struct Tenant {
  TenantConfig config;
  ShmRegion memory;
  std::unique_ptr<DramPool> pool;
  std::unordered_map<std::string, uint32_t> namespaces;
  std::vector<std::string> namespace_names;  // by id - 1
  uint32_t sessions = 0;      // attached (hello served)
  uint32_t connections = 0;   // accepted for this tenant and not yet gone (max_sessions caps it)
  // Regions registered by this tenant's sessions, and how many it may hold: an equal part of
  // half of vm.max_map_count, read at start.
  uint32_t regions = 0;
  uint32_t max_regions = 0;
  // Offload and onload copies into or out of this pool still running (a purge waits for them).
  uint32_t copies_in_flight = 0;
  // A purge is under way: peers of this tenant are refused until it ends.
  bool purging = false;
  // The pool memory is the previous process's (its bytes kept; daemon/tier/warm_restart.h).
  bool kept_pool = false;
  // SSD tier: the worker that runs this tenant's spill store (null: no SSD tier), and the
  // store's index there. Set by OpenSpillTier.
  SpillWorker* spill = nullptr;
  uint32_t spill_store = 0;
  // The SSD quota the store was opened for: its device holds that many segment files, so a
  // reload may lower ssd_bytes but not raise it above this.
  uint64_t ssd_bytes_at_start = 0;
  // Bytes of this tenant's SSD reads and writes posted and not yet done (the tier coordinator
  // keeps it): what a load estimate makes this tenant wait behind. Only its own: another
  // tenant's SSD activity is none of its business.
  uint64_t ssd_queued_bytes = 0;
};

// The TTL a block of `tenant` gets for a requested one (0: the tenant's default): capped by
// max_ttl_seconds, which also applies to blocks without a TTL. 0: never expires.
inline uint32_t EffectiveTtl(const TenantConfig& tenant, uint32_t requested) {
  uint32_t ttl = requested != 0 ? requested : tenant.default_ttl_seconds;
  if (tenant.max_ttl_seconds != 0 && (ttl == 0 || ttl > tenant.max_ttl_seconds)) {
    ttl = tenant.max_ttl_seconds;
  }
  return ttl;
}

class TenantRegistry {
 public:
  static constexpr size_t kMaxNamespacesPerTenant = 4096;
  // Freed bytes each pool zeroes per event-loop round (DramPool "Scrubbing"): ~0.1 ms of
  // memset, so a tenant freeing 1 GiB at once delays another tenant's request by about that
  // (measured: kvtier-bench, noisy neighbour), not by the ~100 ms the whole GiB takes.
  static constexpr uint64_t kScrubBytesPerRound = 1ull << 20;

  // `warnings` receives what was degraded per pool (no huge pages, not locked).
  // `kept_pools` (a restart keeping the DRAM tier, daemon/tier/warm_restart.h): by tenant name,
  // the pool memfds of the previous process; a tenant whose fd is there takes it over
  // (Tenant::kept_pool) instead of a fresh pool, or gets a fresh one with a warning if it does
  // not fit the config. Taken fds are moved out of the map.
  static Result<std::unique_ptr<TenantRegistry>> Create(
      const Config& config, std::vector<std::string>* warnings,
      std::unordered_map<std::string, UniqueFd>* kept_pools = nullptr);

  // kPermissionDenied naming the uid and gid when no tenant matches; kUnavailable while the
  // tenant is being purged.
  Result<Tenant*> Resolve(const PeerCredentials& peer);
  // Reload: takes the peer mapping (uids, gids, default tenant), the TTL limits, the SSD
  // quota and the tier policy (Tenant::config only; the caller tells the spill worker and the
  // tier coordinator) of `next`,
  // whose tenants must be the running ones (checked by the caller). Sessions already attached
  // keep their tenant.
  void Remap(const Config& next);
  // The tenant's id for `name`, assigning the next one on first use; kResourceExhausted past
  // kMaxNamespacesPerTenant.
  Result<uint32_t> NamespaceId(Tenant& tenant, std::string_view name);

  std::vector<std::unique_ptr<Tenant>>& tenants() { return tenants_; }
  const std::vector<std::unique_ptr<Tenant>>& tenants() const { return tenants_; }

 private:
  TenantRegistry() = default;

  std::vector<std::unique_ptr<Tenant>> tenants_;
  std::unordered_map<uid_t, Tenant*> by_uid_;
  std::unordered_map<gid_t, Tenant*> by_gid_;
  Tenant* default_tenant_ = nullptr;
  std::string config_path_;
};

}  // namespace kvtier
