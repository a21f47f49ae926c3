#include "daemon/tier/replay.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <unordered_set>

#include "daemon/pool/dram_pool.h"
#include "daemon/tier/tier_policy.h"
#include "ipc/base/check.h"

namespace kvtier::tier {
namespace {

constexpr uint64_t kBlockBytes = 64 * 1024;  // one slot of one class; the size does not matter
constexpr uint32_t kSession = 1;

BlockKey KeyOf(uint64_t id) {
  BlockKey key;
  key.len = sizeof(id);
  std::memcpy(key.bytes.data(), &id, sizeof(id));
  return key;
}

double Ratio(uint64_t part, uint64_t whole) {
  return whole ? static_cast<double>(part) / static_cast<double>(whole) : 0;
}

// The SSD tier as the pool sees it: records written by demotions, the oldest dropped when
// full (reported through SsdCopyLost), released when the pool says they are dead.
class SimulatedSsd {
 public:
  SimulatedSsd(DramPool* pool, uint64_t capacity) : pool_(pool), capacity_(capacity) {}

  // Answers every order the pool queued, until it queues no more.
  void Settle(ReplayResult* out) {
    std::vector<SpillOrder> orders;
    for (;;) {
      pool_->Demote();
      orders.clear();
      pool_->TakeOrders(&orders);
      if (orders.empty()) return;
      for (const SpillOrder& o : orders) Apply(o, out);
    }
  }

 private:
  static uint64_t Id(SsdRef r) { return uint64_t{r.segment} << 32 | r.page; }

  void Apply(const SpillOrder& o, ReplayResult* out) {
    switch (o.kind) {
      case SpillOrder::Kind::kDemote: {
        if (capacity_ == 0) {
          pool_->DemoteDone(o.ref, Status(StatusCode::kResourceExhausted, "no SSD tier"), {});
          return;
        }
        while (live_.size() >= capacity_) DropOldest();
        const SsdRef ref{static_cast<uint32_t>(1 + next_ / 65536),
                         static_cast<uint32_t>(next_ % 65536)};
        ++next_;
        live_.emplace(Id(ref), o.ref);
        order_.push_back(ref);
        ++out->ssd_write_blocks;
        pool_->DemoteDone(o.ref, Status::Ok(), ref);
        return;
      }
      case SpillOrder::Kind::kPromote:
        ++out->ssd_read_blocks;
        pool_->PromoteDone(o.ref, Status::Ok());
        return;
      case SpillOrder::Kind::kRelease:
        live_.erase(Id(o.ssd));
        return;
    }
  }

  void DropOldest() {
    while (!order_.empty()) {
      const SsdRef ref = order_.front();
      order_.pop_front();
      auto it = live_.find(Id(ref));
      if (it == live_.end()) continue;  // released already
      const BlockRef block = it->second;
      live_.erase(it);
      pool_->SsdCopyLost(block, ref);
      return;
    }
  }

  DramPool* pool_;
  uint64_t capacity_;
  uint64_t next_ = 0;
  std::unordered_map<uint64_t, BlockRef> live_;  // by SsdRef
  std::deque<SsdRef> order_;                     // write order, released ones skipped
};

}  // namespace

double ReplayResult::block_hit_ratio() const { return Ratio(block_hits, block_requests); }
double ReplayResult::usable_prefix_hit_ratio() const {
  return Ratio(usable_prefix_hits, block_requests);
}

Status ReplayThroughPool(const std::vector<TraceRequest>& trace, const ReplayOptions& options,
                         ReplayResult* out) {
  *out = ReplayResult{};
  if (options.dram_blocks == 0) {
    return Status(StatusCode::kInvalidArgument, "the DRAM tier needs at least one block");
  }
  DramPool::Options o;
  o.slab_bytes = kBlockBytes;  // one block per slab: one class, no fragmentation
  o.pool_bytes = options.dram_blocks * kBlockBytes;
  o.max_block_bytes = kBlockBytes;
  o.max_blocks = static_cast<uint32_t>(
      std::min<uint64_t>(UINT32_MAX - 1, options.dram_blocks + options.ssd_blocks + 1024));
  o.hash_seed = 0x6b76746965727270ull;
  o.spill = options.ssd_blocks > 0;
  o.spill_max_block_bytes = kBlockBytes;
  o.dirty_limit_bytes =
      static_cast<uint64_t>(options.demote_above * static_cast<double>(o.pool_bytes));
  const std::unique_ptr<SsdAdmission> admission = MakeSsdAdmission(options.policy);
  DramPool pool(o);
  pool.set_admission(admission.get());
  SimulatedSsd ssd(&pool, options.ssd_blocks);

  std::unordered_set<uint64_t> unique;
  std::vector<DramPool::Placement> leases;
  for (const TraceRequest& r : trace) {
    ++out->requests;
    out->block_requests += r.hash_ids.size();
    // Lookup, in order: the usable prefix is the leading run found in any tier, counted as
    // match_prefix reports it. (A DRAM tier too small to hold a request's prefix at once lets
    // the engine take only part of it below; the rest is computed, not counted as a miss.)
    size_t usable = 0;
    bool prefix = true;
    for (uint64_t id : r.hash_ids) {
      unique.insert(id);
      const wire::Tier tier = pool.Match(KeyOf(id));
      const bool hit = tier != wire::Tier::kNone;
      out->block_hits += hit;
      out->dram_hits += tier == wire::Tier::kDram;
      out->ssd_hits += tier == wire::Tier::kSsd;
      prefix = prefix && hit;
      usable += prefix;
    }
    out->usable_prefix_hits += usable;
    // The engine takes the usable prefix (promoting SSD blocks), then lets it go.
    leases.clear();
    for (size_t i = 0; i < usable; ++i) {
      DramPool::Placement p;
      StatusCode code = pool.Acquire(KeyOf(r.hash_ids[i]), &p);
      if (code == StatusCode::kUnavailable) {  // a slot that demotions will free
        ssd.Settle(out);
        code = pool.Acquire(KeyOf(r.hash_ids[i]), &p);
      }
      if (code != StatusCode::kOk) break;  // gone meanwhile: the rest is computed
      leases.push_back(p);
    }
    ssd.Settle(out);
    for (const DramPool::Placement& p : leases) pool.Release(p.ref);
    // It computes the rest and stores every block it does not find.
    for (size_t i = usable; i < r.hash_ids.size(); ++i) {
      const BlockKey key = KeyOf(r.hash_ids[i]);
      DramPool::Placement p;
      StatusCode code = pool.Reserve(key, kBlockBytes, kSession, &p);
      if (code == StatusCode::kUnavailable) {
        ssd.Settle(out);
        code = pool.Reserve(key, kBlockBytes, kSession, &p);
      }
      if (code == StatusCode::kOk) {
        KVT_CHECK(pool.Commit(key, kSession) == StatusCode::kOk);
      } else if (code != StatusCode::kAlreadyExists) {
        ++out->stores_refused;
      }
    }
    ssd.Settle(out);
  }
  out->unique_blocks = unique.size();
  return Status::Ok();
}

}  // namespace kvtier::tier
