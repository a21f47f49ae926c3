#include "daemon/tenant/tenant_registry.h"

#include <algorithm>
#include <cstdio>

#include "crypto/secure_random.h"
#include "ipc/base/check.h"

namespace kvtier {
namespace {

// vm.max_map_count, or the kernel's default where it cannot be read.
uint64_t MaxMapCount() {
  uint64_t count = 65530;
  if (FILE* f = std::fopen("/proc/sys/vm/max_map_count", "r")) {
    unsigned long long value = 0;
    if (std::fscanf(f, "%llu", &value) == 1 && value > 0) count = value;
    std::fclose(f);
  }
  return count;
}

// Each region is one mapping of kvtierd's. Half of vm.max_map_count is left to everything else
// the process maps (pools, thread stacks, io_uring rings, malloc's large blocks, the CUDA
// driver), and each of `tenants` gets an equal part of the other half, so no tenant can bring
// kvtierd to the kernel's limit (mmap and malloc failing for everyone).
uint32_t RegionShare(size_t tenants) {
  const uint64_t share = MaxMapCount() / 2 / std::max<size_t>(tenants, 1);
  return static_cast<uint32_t>(std::clamp<uint64_t>(share, 1, UINT32_MAX));
}

}  // namespace

Result<std::unique_ptr<TenantRegistry>> TenantRegistry::Create(
    const Config& config, std::vector<std::string>* warnings,
    std::unordered_map<std::string, UniqueFd>* kept_pools) {
  std::unique_ptr<TenantRegistry> registry(new TenantRegistry());
  registry->config_path_ = config.source.string();
  const uint32_t region_share = RegionShare(config.tenants.size());
  for (const TenantConfig& tc : config.tenants) {
    auto tenant = std::make_unique<Tenant>();
    tenant->config = tc;
    tenant->ssd_bytes_at_start = tc.ssd_bytes;
    ShmCreateOptions shm;
    shm.name = "kvtier-pool-" + tc.name;
    shm.bytes = tc.dram_bytes;
    shm.huge_pages = config.huge_pages;
    shm.lock_memory = config.lock_memory;
    std::string warning;
    Result<ShmRegion> memory = Status(StatusCode::kNotFound, "no kept pool");
    if (kept_pools != nullptr && kept_pools->contains(tc.name)) {
      memory = ShmRegion::Adopt(std::move(kept_pools->at(tc.name)), shm, &warning);
      kept_pools->erase(tc.name);
      if (memory.ok()) {
        tenant->kept_pool = true;
      } else if (warnings != nullptr) {
        warnings->push_back("tenant '" + tc.name + "': the previous process's pool is dropped (" +
                            memory.status().message() + "); a fresh one is allocated");
        warning.clear();
      }
    }
    if (!memory.ok()) memory = ShmRegion::Create(shm, &warning);
    if (!memory.ok()) {
      return Status(memory.status().code(),
                    "tenant '" + tc.name + "' pool: " + memory.status().message());
    }
    if (!warning.empty() && warnings != nullptr) {
      warnings->push_back("tenant '" + tc.name + "': " + warning);
    }
    tenant->memory = std::move(*memory);
    KVT_ASSIGN_OR_RETURN(const uint64_t seed, SecureRandomU64());
    DramPool::Options pool;
    pool.pool_bytes = tc.dram_bytes;
    pool.slab_bytes = config.slab_bytes;
    pool.max_block_bytes = config.max_block_bytes;
    pool.max_blocks = static_cast<uint32_t>(tc.max_blocks);
    pool.hash_seed = seed;
    if (config.zero_freed) pool.zero_memory = tenant->memory.data();
    pool.scrub_bytes_per_round = kScrubBytesPerRound;
    if (!config.spill.dir.empty() && tc.ssd_bytes > 0) {
      pool.spill = true;
      pool.spill_max_block_bytes = config.spill.max_block_bytes;
      pool.dirty_limit_bytes =
          static_cast<uint64_t>(static_cast<double>(tc.dram_bytes) * config.spill.demote_above);
      // Enough writes queued to keep every staging buffer busy, twice over.
      pool.max_demotions_in_flight = 2 * config.spill.staging_buffers;
    }
    tenant->pool = std::make_unique<DramPool>(pool);
    tenant->max_regions = region_share;
    Tenant* raw = tenant.get();
    for (uid_t uid : tc.uids) registry->by_uid_[uid] = raw;
    for (gid_t gid : tc.gids) registry->by_gid_[gid] = raw;
    if (tc.name == config.default_tenant) registry->default_tenant_ = raw;
    registry->tenants_.push_back(std::move(tenant));
  }
  return registry;
}

Result<Tenant*> TenantRegistry::Resolve(const PeerCredentials& peer) {
  Tenant* tenant = default_tenant_;
  if (auto it = by_uid_.find(peer.uid); it != by_uid_.end()) {
    tenant = it->second;
  } else if (auto g = by_gid_.find(peer.gid); g != by_gid_.end()) {
    tenant = g->second;
  }
  if (tenant != nullptr && tenant->purging) {
    return Status(StatusCode::kUnavailable, "tenant '" + tenant->config.name +
                                                "' is being purged; connect again when it is done");
  }
  if (tenant != nullptr) return tenant;
  return Status(StatusCode::kPermissionDenied,
                "uid " + std::to_string(peer.uid) + " gid " + std::to_string(peer.gid) +
                    " matches no tenant of kvtierd; ask the operator to add it to a [[tenant]] "
                    "in " + config_path_);
}

void TenantRegistry::Remap(const Config& next) {
  by_uid_.clear();
  by_gid_.clear();
  default_tenant_ = nullptr;
  config_path_ = next.source.string();
  for (size_t i = 0; i < tenants_.size(); ++i) {
    Tenant* tenant = tenants_[i].get();
    const TenantConfig& tc = next.tenants.at(i);
    tenant->config.uids = tc.uids;
    tenant->config.gids = tc.gids;
    tenant->config.default_ttl_seconds = tc.default_ttl_seconds;
    tenant->config.max_ttl_seconds = tc.max_ttl_seconds;
    tenant->config.ssd_bytes = tc.ssd_bytes;
    tenant->config.policy = tc.policy;  // the caller gives the pool the new policy
    tenant->config.max_sessions = tc.max_sessions;
    for (uid_t uid : tc.uids) by_uid_[uid] = tenant;
    for (gid_t gid : tc.gids) by_gid_[gid] = tenant;
    if (tc.name == next.default_tenant) default_tenant_ = tenant;
  }
}

Result<uint32_t> TenantRegistry::NamespaceId(Tenant& tenant, std::string_view name) {
  auto it = tenant.namespaces.find(std::string(name));
  if (it != tenant.namespaces.end()) return it->second;
  if (tenant.namespaces.size() >= kMaxNamespacesPerTenant) {
    return Status(StatusCode::kResourceExhausted,
                  "tenant '" + tenant.config.name + "' already uses " +
                      std::to_string(kMaxNamespacesPerTenant) + " namespaces");
  }
  const auto id = static_cast<uint32_t>(tenant.namespaces.size() + 1);
  // The name first: under std::bad_alloc no id is left without one.
  tenant.namespace_names.emplace_back(name);
  try {
    tenant.namespaces.emplace(std::string(name), id);
  } catch (...) {
    tenant.namespace_names.pop_back();
    throw;
  }
  return id;
}

}  // namespace kvtier
