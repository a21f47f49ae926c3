#include "daemon/tier/tier_coordinator.h"

#include <algorithm>
#include <span>
#include <string_view>
#include <utility>

#include "daemon/tier/spill_orders.h"
#include "ipc/base/check.h"
#include "ipc/base/clock.h"

namespace kvtier {

TierCoordinator::TierCoordinator(TenantRegistry* tenants, std::vector<SpillWorker*> workers)
    : tenants_(tenants), workers_(std::move(workers)), stores_(workers_.size()) {
  for (size_t i = 0; i < workers_.size(); ++i) {
    for (auto& tenant : tenants->tenants()) {
      if (tenant->spill != workers_[i]) continue;
      auto& stores = stores_[i];
      if (stores.size() <= tenant->spill_store) stores.resize(tenant->spill_store + 1);
      stores[tenant->spill_store] = tenant.get();
    }
  }
  policies_.resize(tenants->tenants().size());
  for (auto& tenant : tenants->tenants()) ApplyPolicy(*tenant);
}

TierCoordinator::~TierCoordinator() {
  for (auto& tenant : tenants_->tenants()) tenant->pool->set_admission(nullptr);
}

void TierCoordinator::ApplyPolicy(Tenant& tenant) {
  const auto& all = tenants_->tenants();
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i].get() != &tenant) continue;
    // A policy decides what goes to SSD: a tenant without an SSD tier needs none.
    std::unique_ptr<SsdAdmission> next =
        tenant.spill != nullptr ? MakeSsdAdmission(tenant.config.policy) : nullptr;
    tenant.pool->set_admission(next.get(), /*resort=*/true);
    policies_[i] = std::move(next);
    return;
  }
}

SpillStats SpillStatsOf(const Tenant& tenant) {
  if (tenant.spill == nullptr) return {};
  return tenant.spill->StatsOf(tenant.spill_store);
}

wire::StatsReply StatsOf(const Tenant& tenant) {
  wire::StatsReply stats{};
  tenant.pool->FillStats(&stats);
  stats.sessions = tenant.sessions;
  if (tenant.spill != nullptr) {
    stats.ssd_quota_bytes = tenant.config.ssd_bytes;
    stats.ssd_segments = tenant.spill->StatsOf(tenant.spill_store).segments;
  }
  return stats;
}

void TierCoordinator::OnResults(size_t worker, std::vector<Tenant*>* moved,
                                std::vector<SpillNotice>* notices) {
  results_.clear();
  workers_[worker]->TakeResults(&results_);
  const uint64_t now_ns = NowUs() * 1000;
  std::vector<bool> touched(stores_[worker].size(), false);
  for (const SpillResult& r : results_) {
    touched[r.store] = true;
    Tenant& tenant = *stores_[worker][r.store];
    DramPool& pool = *tenant.pool;
    const BlockRef ref = BlockRef::FromTag(r.tag);
    switch (r.kind) {
      case SpillResult::Kind::kWritten:
        SsdDone(tenant, pool.IoBytes(ref), now_ns);
        pool.DemoteDone(ref, r.status, r.ref);
        if (!r.status.ok()) notices->push_back({&tenant, r});
        break;
      case SpillResult::Kind::kRead:
        SsdDone(tenant, pool.IoBytes(ref), now_ns);
        pool.PromoteDone(ref, r.status);
        if (!r.status.ok()) notices->push_back({&tenant, r});
        break;
      case SpillResult::Kind::kErased:
        notices->push_back({&tenant, r});
        break;
      case SpillResult::Kind::kDropped:
        pool.SsdCopyLost(ref, r.ref);
        break;
    }
  }
  for (size_t store = 0; store < touched.size(); ++store) {
    if (touched[store]) moved->push_back(stores_[worker][store]);
  }
}

void TierCoordinator::SsdDone(Tenant& tenant, uint64_t bytes, uint64_t now_ns) {
  estimator_.SsdDone(bytes, now_ns);
  tenant.ssd_queued_bytes -= std::min(bytes, tenant.ssd_queued_bytes);
}

void TierCoordinator::PostOrders(bool demote) {
  if (workers_.empty()) return;
  for (auto& tenant : tenants_->tenants()) {
    if (tenant->spill == nullptr) continue;
    DramPool& pool = *tenant->pool;
    if (demote) pool.Demote();
    if (!pool.has_orders()) continue;
    orders_.clear();
    pool.TakeOrders(&orders_);
    jobs_.clear();
    const uint64_t now_ns = NowUs() * 1000;
    for (const SpillOrder& order : orders_) {
      if (order.kind != SpillOrder::Kind::kRelease) {
        estimator_.SsdPosted(order.size, now_ns);
        tenant->ssd_queued_bytes += order.size;
      }
      const std::string_view ns = order.kind == SpillOrder::Kind::kRelease
                                      ? std::string_view()
                                      : tenant->namespace_names.at(order.key.ns_id - 1);
      jobs_.push_back(ToSpillJob(order, tenant->spill_store, tenant->memory.data(),
                                 tenant->memory.size(), ns));
    }
    tenant->spill->Post(jobs_);
  }
}

bool TierCoordinator::PostErase(Tenant& tenant, std::shared_ptr<const SecretKey> new_key) {
  if (tenant.spill == nullptr) return false;
  // Orders the pool queued before the purge go first; the erase then fails whatever of them
  // has not started, waits for what has, and destroys every segment key.
  PostOrders(/*demote=*/false);
  SpillJob erase;
  erase.kind = SpillJob::Kind::kErase;
  erase.store = tenant.spill_store;
  erase.tenant_key = std::move(new_key);
  tenant.spill->Post(std::span(&erase, 1));
  return true;
}

void TierCoordinator::PostQuota(Tenant& tenant, uint64_t bytes) {
  if (tenant.spill == nullptr) return;
  SpillJob quota;
  quota.kind = SpillJob::Kind::kSetQuota;
  quota.store = tenant.spill_store;
  quota.bytes = bytes;
  tenant.spill->Post(std::span(&quota, 1));
}

uint64_t TierCoordinator::StartFlush() {
  uint64_t demotions = 0;
  for (auto& tenant : tenants_->tenants()) {
    if (tenant->spill == nullptr) continue;
    demotions += tenant->pool->tier_counters().demotions;
    tenant->pool->WriteDeclined();           // blocks the policy kept off SSD go too
    tenant->pool->set_dirty_limit_bytes(0);  // every block that can go to SSD goes now
  }
  return demotions;
}

bool TierCoordinator::Flushed() {
  for (auto& tenant : tenants_->tenants()) {
    if (tenant->spill == nullptr) continue;
    tenant->pool->Demote();
    if (!tenant->pool->idle()) return false;
  }
  return true;
}

uint64_t TierCoordinator::FlushedSince(uint64_t before) const {
  uint64_t demotions = 0;
  for (auto& tenant : tenants_->tenants()) demotions += tenant->pool->tier_counters().demotions;
  return demotions - before;
}

void TierCoordinator::Tick(uint32_t now_s, uint32_t reap_entries) {
  bool reaped = false;
  for (auto& tenant : tenants_->tenants()) {
    tenant->pool->SetNow(now_s);
    reaped |= tenant->pool->Reap(reap_entries) > 0;
  }
  if (reaped) PostOrders();  // their SSD records go too
}

}  // namespace kvtier
