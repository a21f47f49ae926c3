// DramPool with an SSD tier: the state machine of demotion, eviction to SSD and promotion,
// first against an in-memory spill store that completes orders in random order (and fails some),
// checking every byte a lease sees; then against the real SpillWorker over a FaultyDevice for
// the I/O faults a disk can have (EIO, short writes, flipped bytes).
#include <poll.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "crypto/secret_key.h"
#include "daemon/pool/dram_pool.h"
#include "tests/support/faulty_device.h"
#include "daemon/spill/spill_store.h"
#include "daemon/spill/spill_worker.h"
#include "daemon/tier/spill_orders.h"
#include "daemon/tier/tier_policy.h"
#include "daemon/spill/thread_pool_device.h"
#include "ipc/base/units.h"
#include "tests/support/test_support.h"

namespace kvtier {
namespace {

using testing::TempDir;

constexpr uint64_t kSlab = 2 * kMiB;
constexpr uint32_t kSession = 1;
constexpr std::string_view kTenant = "tenant-a";

DramPool::Options TierOptions(uint64_t pool_bytes, uint32_t max_blocks = 4096) {
  DramPool::Options o;
  o.pool_bytes = pool_bytes;
  o.slab_bytes = kSlab;
  o.max_block_bytes = kSlab;
  o.max_blocks = max_blocks;
  o.hash_seed = 7;
  o.spill = true;
  o.spill_max_block_bytes = kSlab;
  o.dirty_limit_bytes = pool_bytes / 2;
  o.max_demotions_in_flight = 8;
  return o;
}

BlockKey Key(uint64_t n) {
  BlockKey key;
  key.ns_id = 1;
  key.len = 8;
  std::memcpy(key.bytes.data(), &n, sizeof(n));
  return key;
}

uint64_t KeyNumber(const BlockKey& key) {
  uint64_t n = 0;
  std::memcpy(&n, key.bytes.data(), sizeof(n));
  return n;
}

// Block contents: a function of (key number, version, position).
void Fill(std::span<std::byte> out, uint64_t n, uint64_t version) {
  uint64_t x = (n * 0x9e3779b97f4a7c15ull) ^ (version << 20) ^ out.size();
  for (size_t i = 0; i + 8 <= out.size(); i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out.data() + i, &x, 8);
  }
}

bool Holds(std::span<const std::byte> bytes, uint64_t n, uint64_t version) {
  std::vector<std::byte> expected(bytes.size());
  Fill(expected, n, version);
  return std::memcmp(expected.data(), bytes.data(), bytes.size()) == 0;
}

wire::StatsReply Stats(const DramPool& pool) {
  wire::StatsReply s{};
  pool.FillStats(&s);
  return s;
}

// ---------------------------------------------------------------------------------------------
// A random workload against an in-memory spill store.

class TierModel {
 public:
  // `admission`: the tenant's policy (null: lru, every block to SSD).
  TierModel(uint64_t pool_bytes, uint32_t max_blocks, uint64_t seed,
            SsdAdmission* admission = nullptr)
      : memory_(pool_bytes), pool_(TierOptions(pool_bytes, max_blocks)), rng_(seed) {
    pool_.set_admission(admission);
  }

  void Run(int steps) {
    for (int step = 0; step < steps; ++step) {
      const uint64_t dice = rng_() % 100;
      if (dice < 35) {
        DoPut();
      } else if (dice < 55) {
        DoAcquire();
      } else if (dice < 68) {
        DoRelease();
      } else if (dice < 73) {
        DoRemove();
      } else if (dice < 78) {
        (void)pool_.Match(Key(rng_() % kKeys));
      } else {
        CompleteSome(1 + rng_() % 8);
      }
      pool_.Demote();
      pool_.TakeOrders(&orders_);
      SettleLeases();
    }
    // Wind down: every lease and key goes, every order completes; nothing may be left behind.
    while (!leases_.empty()) DoRelease();
    for (uint64_t n = 0; n < kKeys; ++n) (void)pool_.Remove(Key(n));
    pool_.TakeOrders(&orders_);
    for (int i = 0; i < 10000 && !orders_.empty(); ++i) {
      CompleteSome(orders_.size());
      pool_.TakeOrders(&orders_);
    }
    REQUIRE(orders_.empty());
    const wire::StatsReply s = Stats(pool_);
    CHECK(s.used_bytes == 0);
    CHECK(s.committed_blocks == 0);
    CHECK(s.leased_blocks == 0);
    CHECK(s.ssd_blocks == 0);
    CHECK(s.ssd_only_blocks == 0);
    CHECK(s.ssd_payload_bytes == 0);
    CHECK(s.dirty_bytes == 0);
    CHECK(ssd_.empty());  // every record was released
    INFO("puts " << puts_ << ", waits " << waits_ << ", promotions " << s.promotions
                 << ", demotions " << s.demotions << ", failures " << s.demote_failures << "/"
                 << s.promote_failures << ", lost " << s.ssd_dropped);
    CHECK(puts_ > 300);
    CHECK(s.demotions > 100);
    CHECK(s.promotions > 50);
    CHECK(waits_ > 0);
    CHECK(checked_ > 100);
  }

 private:
  static constexpr uint64_t kKeys = 200;
  struct Lease {
    BlockRef ref;
    uint64_t n;
    uint64_t version;
    bool checked;
  };

  std::span<std::byte> Slot(uint64_t offset, uint64_t size) {
    REQUIRE(offset + size <= memory_.size());
    return std::span(memory_).subspan(offset, size);
  }

  uint64_t Size() { return (16 + rng_() % (512 - 16 + 1)) * kKiB; }

  void DoPut() {
    const uint64_t n = rng_() % kKeys;
    const uint64_t size = Size();
    DramPool::Placement p;
    StatusCode code = pool_.Reserve(Key(n), size, kSession, &p);
    for (int tries = 0; code == StatusCode::kUnavailable && tries < 100; ++tries) {
      ++waits_;
      pool_.TakeOrders(&orders_);
      REQUIRE(!orders_.empty());  // a wait is only answered while demotions are on their way
      CompleteSome(orders_.size());
      code = pool_.Reserve(Key(n), size, kSession, &p);
    }
    if (code != StatusCode::kOk) return;  // exists, or every slot pinned
    const uint64_t version = ++next_version_;
    Fill(Slot(p.offset, size), n, version);
    if (rng_() % 10 == 0) {
      REQUIRE(pool_.Abort(Key(n), kSession) == StatusCode::kOk);
      return;
    }
    REQUIRE(pool_.Commit(Key(n), kSession) == StatusCode::kOk);
    versions_[n] = version;
    ++puts_;
  }

  void DoAcquire() {
    const uint64_t n = rng_() % kKeys;
    DramPool::Placement p;
    wire::Tier tier;
    const StatusCode code = pool_.Acquire(Key(n), &p, &tier);
    if (code != StatusCode::kOk) return;
    leases_.push_back({p.ref, n, versions_.at(n), false});
    if (tier == wire::Tier::kDram) {
      REQUIRE(pool_.IsInDram(p.ref));
    } else {
      REQUIRE(pool_.IsPromoting(p.ref));
    }
  }

  void DoRelease() {
    if (leases_.empty()) return;
    const size_t i = rng_() % leases_.size();
    pool_.Release(leases_[i].ref);
    leases_.erase(leases_.begin() + static_cast<std::ptrdiff_t>(i));
  }

  void DoRemove() {
    const uint64_t n = rng_() % kKeys;
    (void)pool_.Remove(Key(n));
  }

  // A lease whose block is in DRAM must show exactly the bytes its key was committed with.
  void SettleLeases() {
    for (Lease& lease : leases_) {
      if (lease.checked || pool_.IsPromoting(lease.ref)) continue;
      lease.checked = true;
      if (!pool_.IsInDram(lease.ref)) continue;  // its promotion failed: a miss
      const DramPool::Placement p = pool_.PlacementOf(lease.ref);
      INFO("key " << lease.n << " version " << lease.version);
      REQUIRE(Holds(Slot(p.offset, p.size), lease.n, lease.version));
      ++checked_;
    }
  }

  // Completes up to `count` orders, picked at random; a few fail, and a few records get lost
  // to a (pretend) segment reclaim.
  void CompleteSome(size_t count) {
    for (size_t k = 0; k < count && !orders_.empty(); ++k) {
      const size_t i = rng_() % orders_.size();
      const SpillOrder order = orders_[i];
      orders_.erase(orders_.begin() + static_cast<std::ptrdiff_t>(i));
      const bool fail = rng_() % 20 == 0;
      switch (order.kind) {
        case SpillOrder::Kind::kDemote: {
          if (fail) {
            pool_.DemoteDone(order.ref, Status(StatusCode::kIoError, "injected"), {});
            break;
          }
          const SsdRef ref{1, next_page_++};
          // The slot must still hold the block: it stayed pinned while "written".
          ssd_[ref.page] = std::vector<std::byte>(Slot(order.offset, order.size).begin(),
                                                  Slot(order.offset, order.size).end());
          REQUIRE(Holds(ssd_[ref.page], KeyNumber(order.key), versions_.at(KeyNumber(order.key))));
          pool_.DemoteDone(order.ref, Status::Ok(), ref);
          if (rng_() % 30 == 0) {
            ssd_.erase(ref.page);
            pool_.SsdCopyLost(order.ref, ref);
          }
          break;
        }
        case SpillOrder::Kind::kPromote: {
          auto it = ssd_.find(order.ssd.page);
          std::span<std::byte> slot = Slot(order.offset, order.size);
          if (fail || it == ssd_.end()) {
            std::fill(slot.begin(), slot.end(), std::byte{0});
            pool_.PromoteDone(order.ref, Status(StatusCode::kDataLoss, "injected"));
            break;
          }
          REQUIRE(it->second.size() == order.size);
          std::copy(it->second.begin(), it->second.end(), slot.begin());
          pool_.PromoteDone(order.ref, Status::Ok());
          break;
        }
        case SpillOrder::Kind::kRelease:
          ssd_.erase(order.ssd.page);
          break;
      }
      pool_.TakeOrders(&orders_);
    }
  }

  std::vector<std::byte> memory_;
  DramPool pool_;
  std::mt19937_64 rng_;

 public:
  // Under a policy that declines blocks, some were: the model went through that path.
  void CheckDeclined(bool expected) {
    INFO("declined " << pool_.tier_counters().ssd_declined);
    CHECK((pool_.tier_counters().ssd_declined > 0) == expected);
  }

 private:
  std::vector<SpillOrder> orders_;
  std::map<uint32_t, std::vector<std::byte>> ssd_;  // page -> record
  std::map<uint64_t, uint64_t> versions_;           // key -> version last committed
  std::vector<Lease> leases_;
  uint32_t next_page_ = 1;
  uint64_t next_version_ = 0;
  uint64_t puts_ = 0, waits_ = 0, checked_ = 0;
};

TEST_CASE("A tiered pool never shows a lease wrong bytes and leaks nothing under random "
          "operations, failures and lost records",
          "[daemon][pool][spill]") {
  const uint64_t seed = GENERATE(uint64_t{1}, uint64_t{2}, uint64_t{3});
  const uint32_t max_blocks = GENERATE(uint32_t{4096}, uint32_t{64});
  const TierPolicy policy = GENERATE(TierPolicy::kLru, TierPolicy::kReuse);
  INFO("seed " << seed << ", max_blocks " << max_blocks << ", policy "
                << TierPolicyName(policy));
  const std::unique_ptr<SsdAdmission> admission = MakeSsdAdmission(policy);
  TierModel model(4 * kMiB, max_blocks, seed, admission.get());
  model.Run(6000);
  model.CheckDeclined(policy == TierPolicy::kReuse);
}

// Puts block `n` (one slab) and commits it.
BlockRef PutSlab(DramPool& pool, uint64_t n) {
  DramPool::Placement p;
  REQUIRE(pool.Reserve(Key(n), kSlab, kSession, &p) == StatusCode::kOk);
  REQUIRE(pool.Commit(Key(n), kSession) == StatusCode::kOk);
  return p.ref;
}

// A pool of four 2 MiB blocks under the reuse policy, dirty limit one block, whose SSD tier has
// just filled: blocks 0 and 1 were stored, block 0 written to SSD (every block goes while
// there is room) and its record then reclaimed for room. Block 1, stored once, is dirty.
struct FullSsdPool {
  FullSsdPool() : pool(Options()) {
    pool.set_admission(&reuse);
    const BlockRef b0 = PutSlab(pool, 0);
    (void)PutSlab(pool, 1);
    Demote();
    REQUIRE(orders.size() == 1);
    CHECK(orders[0].ref.id == b0.id);
    pool.DemoteDone(b0, Status::Ok(), SsdRef{1, 1});
    pool.SsdCopyLost(b0, SsdRef{1, 1});  // the store reclaimed a live record: it is full
  }
  static DramPool::Options Options() {
    DramPool::Options o = TierOptions(8 * kMiB);
    o.dirty_limit_bytes = kSlab;
    return o;
  }
  // Demotes down to the dirty limit; `orders` gets the writes ordered.
  void Demote() {
    pool.Demote();
    orders.clear();
    pool.TakeOrders(&orders);
  }
  std::set<uint64_t> Written() const {
    std::set<uint64_t> keys;
    for (const SpillOrder& order : orders) keys.insert(KeyNumber(order.key));
    return keys;
  }

  ReuseAdmission reuse;
  DramPool pool;
  std::vector<SpillOrder> orders;
};

TEST_CASE("Under the reuse policy a full SSD tier gets only blocks found again or stored "
          "before, and DRAM evicts copies of SSD blocks before blocks it alone holds",
          "[daemon][pool][spill]") {
  FullSsdPool full;
  DramPool& pool = full.pool;
  std::vector<SpillOrder>& orders = full.orders;
  auto demote = [&] { full.Demote(); };
  // Block 1 was stored once and never found: declined, it stays in DRAM only.
  (void)PutSlab(pool, 2);
  demote();
  CHECK(orders.empty());
  CHECK(pool.tier_counters().ssd_declined == 1);
  // Found again, it is due for demotion once more, and this time it goes.
  CHECK(pool.Match(Key(1)) == wire::Tier::kDram);
  (void)PutSlab(pool, 3);  // block 2 (stored once) is declined on the way
  demote();
  REQUIRE(orders.size() == 1);
  CHECK(orders[0].key == Key(1));
  CHECK(pool.tier_counters().ssd_declined == 2);
  pool.DemoteDone(orders[0].ref, Status::Ok(), SsdRef{1, 2});
  // A key stored before (its block removed since) has earned its place: the second copy goes.
  REQUIRE(pool.Remove(Key(0)) == StatusCode::kOk);
  REQUIRE(pool.Remove(Key(3)) == StatusCode::kOk);
  (void)PutSlab(pool, 3);
  (void)PutSlab(pool, 4);  // pushes 3 past the dirty limit
  demote();
  REQUIRE(orders.size() == 1);
  CHECK(orders[0].key == Key(3));
  pool.DemoteDone(orders[0].ref, Status::Ok(), SsdRef{1, 3});
  // DRAM holds 1 and 3 (also on SSD), 2 (declined, DRAM only) and 4 (dirty). A new block
  // evicts a copy of an SSD block first, though block 2 was used longer ago.
  const uint64_t ssd_evictions = pool.tier_counters().ssd_evictions;
  (void)PutSlab(pool, 5);
  CHECK(pool.tier_counters().ssd_evictions == ssd_evictions + 1);
  (void)PutSlab(pool, 6);
  CHECK(pool.tier_counters().ssd_evictions == ssd_evictions + 2);
  CHECK(pool.Match(Key(1)) == wire::Tier::kSsd);
  CHECK(pool.Match(Key(3)) == wire::Tier::kSsd);
  // Now only the declined block is evictable: it goes, and with it its only copy.
  demote();
  (void)PutSlab(pool, 7);
  CHECK(pool.Match(Key(2)) == wire::Tier::kNone);
}

TEST_CASE("Under the reuse policy a block hinted 'reuse soon' is written to a full SSD tier, "
          "even before it is stored, and one 'done with' is declined first",
          "[daemon][pool][spill][hints]") {
  FullSsdPool full;
  DramPool& pool = full.pool;
  // Block 1 (stored once) would be declined; the hint says otherwise. Key 2, not stored yet,
  // is announced, so its one store is enough.
  CHECK(pool.Hint(Key(1), BlockHint::kReuseSoon) == StatusCode::kOk);
  CHECK(pool.Hint(Key(2), BlockHint::kReuseSoon) == StatusCode::kNotFound);
  (void)PutSlab(pool, 2);
  (void)PutSlab(pool, 3);
  // Block 3 is done with: though the newest, it is the first dirty block to be decided on.
  CHECK(pool.Hint(Key(3), BlockHint::kDoneWith) == StatusCode::kOk);
  full.Demote();
  CHECK(full.Written() == std::set<uint64_t>{1});  // down to the dirty limit
  CHECK(pool.tier_counters().ssd_declined == 1);   // block 3
  (void)PutSlab(pool, 4);  // pushes block 2 past the limit
  full.Demote();
  CHECK(full.Written() == std::set<uint64_t>{2});
  CHECK(pool.tier_counters().ssd_declined == 1);
}

TEST_CASE("A drain writes every block DRAM alone holds, those the policy declined included",
          "[daemon][pool][spill]") {
  FullSsdPool full;
  DramPool& pool = full.pool;
  (void)PutSlab(pool, 2);
  full.Demote();
  REQUIRE(full.orders.empty());
  REQUIRE(pool.tier_counters().ssd_declined == 1);  // block 1
  // The drain: declined blocks are due again, and with dirty limit 0 every one goes.
  CHECK(pool.WriteDeclined() == 1);
  pool.set_dirty_limit_bytes(0);
  (void)PutSlab(pool, 3);  // stored during the flush: no policy decides either
  full.Demote();
  CHECK(full.Written() == std::set<uint64_t>{1, 2, 3});
  CHECK(pool.tier_counters().ssd_declined == 1);
}

TEST_CASE("Under the reuse policy a block whose SSD record is lost counts as DRAM-only: copies of "
          "SSD blocks are evicted before it",
          "[daemon][pool][spill]") {
  DramPool::Options o = TierOptions(6 * kMiB);  // three 2 MiB blocks
  o.dirty_limit_bytes = 0;  // every block is written at once
  DramPool pool(o);
  ReuseAdmission reuse;
  pool.set_admission(&reuse);
  std::vector<SpillOrder> orders;
  for (uint64_t n : {uint64_t{1}, uint64_t{2}, uint64_t{0}}) {  // the last demoted goes first
    const BlockRef ref = PutSlab(pool, n);
    pool.Demote();
    orders.clear();
    pool.TakeOrders(&orders);
    REQUIRE(orders.size() == 1);
    pool.DemoteDone(ref, Status::Ok(), SsdRef{1, static_cast<uint32_t>(n + 1)});
    if (n == 0) pool.SsdCopyLost(ref, SsdRef{1, 1});  // block 0: DRAM holds its only copy now
  }
  // Block 0 would be the first evicted as a copy, but it is not one any more: evicting it
  // would lose it. Blocks 1 and 2 are copies.
  (void)PutSlab(pool, 3);
  CHECK(pool.tier_counters().ssd_evictions == 1);  // a copy's slot went
  CHECK(Stats(pool).evictions == 1);
  CHECK(pool.Match(Key(0)) == wire::Tier::kDram);
}

TEST_CASE("A tiered pool answers 'wait' only while demotions are on their way",
          "[daemon][pool][spill]") {
  DramPool pool(TierOptions(8 * kMiB));
  // Four 2 MiB dirty blocks fill the pool; the dirty limit (4 MiB) has started demotions.
  for (uint64_t n = 0; n < 4; ++n) {
    DramPool::Placement p;
    REQUIRE(pool.Reserve(Key(n), kSlab, kSession, &p) == StatusCode::kOk);
    REQUIRE(pool.Commit(Key(n), kSession) == StatusCode::kOk);
  }
  pool.Demote();
  std::vector<SpillOrder> orders;
  pool.TakeOrders(&orders);
  REQUIRE(orders.size() == 2);  // down to the dirty limit
  DramPool::Placement p;
  CHECK(pool.Reserve(Key(10), kSlab, kSession, &p) == StatusCode::kUnavailable);
  // One demotion lands: its block is clean and evictable, so the reserve goes through, and the
  // evicted block is still there, on SSD.
  pool.DemoteDone(orders[0].ref, Status::Ok(), SsdRef{1, 1});
  REQUIRE(pool.Reserve(Key(10), kSlab, kSession, &p) == StatusCode::kOk);
  CHECK(pool.Match(orders[0].key) == wire::Tier::kSsd);
  // A failed demotion leaves its block in DRAM, unpinned: eviction may drop it.
  pool.DemoteDone(orders[1].ref, Status(StatusCode::kIoError, "injected"), {});
  CHECK(pool.Match(orders[1].key) == wire::Tier::kDram);
  REQUIRE(pool.Commit(Key(10), kSession) == StatusCode::kOk);
  REQUIRE(pool.Reserve(Key(11), kSlab, kSession, &p) == StatusCode::kOk);
  CHECK(pool.Match(orders[1].key) == wire::Tier::kNone);
  // Everything left is dirty or reserved: demotions start, and the answer is "wait".
  CHECK(pool.Reserve(Key(12), kSlab, kSession, &p) == StatusCode::kUnavailable);
  orders.clear();
  pool.TakeOrders(&orders);
  CHECK(!orders.empty());
  const wire::StatsReply s = Stats(pool);
  CHECK(s.demotions == 1);
  CHECK(s.demote_failures == 1);
  CHECK(s.ssd_only_blocks == 1);
}

TEST_CASE("A tiered pool whose index is full of dirty blocks demotes one and waits",
          "[daemon][pool][spill]") {
  DramPool pool(TierOptions(64 * kMiB, /*max_blocks=*/8));
  for (uint64_t n = 0; n < 8; ++n) {
    DramPool::Placement p;
    REQUIRE(pool.Reserve(Key(n), 4096, kSession, &p) == StatusCode::kOk);
    REQUIRE(pool.Commit(Key(n), kSession) == StatusCode::kOk);
  }
  pool.Demote();  // far below the dirty limit: nothing to do
  std::vector<SpillOrder> orders;
  pool.TakeOrders(&orders);
  REQUIRE(orders.empty());
  DramPool::Placement p;
  REQUIRE(pool.Reserve(Key(8), 4096, kSession, &p) == StatusCode::kUnavailable);
  pool.TakeOrders(&orders);
  REQUIRE(orders.size() == 1);
  CHECK(orders[0].kind == SpillOrder::Kind::kDemote);
  CHECK(orders[0].key == Key(0));  // the least recently used
  pool.DemoteDone(orders[0].ref, Status::Ok(), SsdRef{1, 1});
  // Now a clean block can give up its entry.
  REQUIRE(pool.Reserve(Key(8), 4096, kSession, &p) == StatusCode::kOk);
  CHECK(pool.Match(Key(0)) == wire::Tier::kNone);
}

// ---------------------------------------------------------------------------------------------
// The real SpillWorker over a FaultyDevice.

// As the daemon runs a pool (zero_freed = true): freed slots are zeroed.
DramPool::Options ZeroingOptions(DramPool::Options o, std::byte* memory) {
  o.zero_memory = memory;
  return o;
}

class WorkerHarness {
 public:
  // `arm` sets faults on the device before the worker thread starts using it.
  explicit WorkerHarness(const std::function<void(FaultyDevice&)>& arm = {})
      : memory_(16 * kMiB), pool_(ZeroingOptions(TierOptions(16 * kMiB), memory_.data())) {
    DeviceOptions d;
    d.queue_depth = 8;
    d.threads = 2;
    d.max_files = 16;
    auto inner = ThreadPoolDevice::Open(d);
    REQUIRE(inner.ok());
    auto device = std::make_unique<FaultyDevice>(std::move(*inner));
    auto key = SecretKey::Random();
    REQUIRE(key.ok());
    SpillOptions o;
    o.dir = dir_.path() / kTenant;
    o.tenant = std::string(kTenant);
    o.segment_bytes = 16 * kMiB;
    o.quota_bytes = 64 * kMiB;
    o.max_record_payload_bytes = kSlab;
    o.staging_buffers = 4;
    auto store = SpillStore::Open(o, device.get(), *key, nullptr);
    REQUIRE(store.ok());
    if (arm) arm(*device);
    worker_.AddStore(std::move(device), std::move(*store));
    REQUIRE(worker_.Start().ok());
  }

  DramPool& pool() { return pool_; }
  std::span<std::byte> Slot(const DramPool::Placement& p) {
    return std::span(memory_).subspan(p.offset, p.size);
  }

  void Put(uint64_t n, uint64_t size = kSlab) {
    DramPool::Placement p;
    REQUIRE(pool_.Reserve(Key(n), size, kSession, &p) == StatusCode::kOk);
    Fill(Slot(p), n, 1);
    REQUIRE(pool_.Commit(Key(n), kSession) == StatusCode::kOk);
  }

  // Posts the pool's orders and applies results until no I/O is in flight.
  void Settle() {
    for (;;) {
      pool_.Demote();
      std::vector<SpillOrder> orders;
      pool_.TakeOrders(&orders);
      std::vector<SpillJob> jobs;
      for (const SpillOrder& order : orders) {
        jobs.push_back(ToSpillJob(order, 0, memory_.data(), memory_.size(), "ns"));
      }
      worker_.Post(jobs);
      // Releases have no result: done once no write or read is in flight.
      if (pool_.demotions_in_flight() + pool_.promotions_in_flight() == 0) return;
      for (const SpillResult& r : WaitForResults()) Apply(r);
    }
  }

  // Posts the pool's orders and then, if `erase`, a kErase job, in one Post.
  void PostOrders(bool erase = false) {
    std::vector<SpillOrder> orders;
    pool_.TakeOrders(&orders);
    std::vector<SpillJob> jobs;
    for (const SpillOrder& order : orders) {
      jobs.push_back(ToSpillJob(order, 0, memory_.data(), memory_.size(), "ns"));
    }
    if (erase) {
      SpillJob job;
      job.kind = SpillJob::Kind::kErase;
      jobs.push_back(job);
    }
    worker_.Post(jobs);
  }

  // Applies results until kErased, which must come last; returns it. `purged` counts the
  // results of jobs the erase dropped before they started.
  SpillResult ApplyUntilErased(int* purged) {
    for (;;) {
      const std::vector<SpillResult> results = WaitForResults();
      for (size_t i = 0; i < results.size(); ++i) {
        const SpillResult& r = results[i];
        if (r.kind == SpillResult::Kind::kErased) {
          CHECK(i + 1 == results.size());
          return r;
        }
        if (r.status.code() == StatusCode::kUnavailable) ++*purged;
        Apply(r);
      }
    }
  }

  SpillResult ApplyUntilErased() {
    int purged = 0;
    return ApplyUntilErased(&purged);
  }

  std::vector<SpillResult> WaitForResults() {
    pollfd p{worker_.event_fd(), POLLIN, 0};
    REQUIRE(poll(&p, 1, 30000) == 1);  // a liveness bound, not a timing assertion
    std::vector<SpillResult> results;
    worker_.TakeResults(&results);
    return results;
  }

  void Apply(const SpillResult& r) {
    const BlockRef ref = BlockRef::FromTag(r.tag);
    if (r.kind == SpillResult::Kind::kWritten) pool_.DemoteDone(ref, r.status, r.ref);
    if (r.kind == SpillResult::Kind::kRead) pool_.PromoteDone(ref, r.status);
    if (r.kind == SpillResult::Kind::kDropped) pool_.SsdCopyLost(ref, r.ref);
  }

  // Pushes block `n` out of DRAM: fills the pool with others and settles.
  void PushOut(uint64_t first_other, int count) {
    for (int i = 0; i < count; ++i) {
      DramPool::Placement p;
      const BlockKey key = Key(first_other + static_cast<uint64_t>(i));
      StatusCode code = pool_.Reserve(key, kSlab, kSession, &p);
      while (code == StatusCode::kUnavailable) {
        Settle();
        code = pool_.Reserve(key, kSlab, kSession, &p);
      }
      REQUIRE(code == StatusCode::kOk);
      REQUIRE(pool_.Commit(key, kSession) == StatusCode::kOk);
    }
    Settle();
  }

  SpillStats store_stats() { return worker_.StatsOf(0); }
  std::filesystem::path store_dir() const { return dir_.path() / kTenant; }

 private:
  TempDir dir_;
  std::vector<std::byte> memory_;
  DramPool pool_;
  SpillWorker worker_;
};

TEST_CASE("Blocks demoted by the worker come back byte for byte on promotion",
          "[daemon][pool][spill]") {
  WorkerHarness h;
  for (uint64_t n = 0; n < 4; ++n) h.Put(n, kSlab - n * 4096);
  h.PushOut(100, 12);
  for (uint64_t n = 0; n < 4; ++n) REQUIRE(h.pool().Match(Key(n)) == wire::Tier::kSsd);
  for (uint64_t n = 0; n < 4; ++n) {
    DramPool::Placement p;
    wire::Tier tier;
    REQUIRE(h.pool().Acquire(Key(n), &p, &tier) == StatusCode::kOk);
    CHECK(tier == wire::Tier::kSsd);
    h.Settle();
    REQUIRE(h.pool().IsInDram(p.ref));
    CHECK(Holds(h.Slot(p), n, 1));
    h.pool().Release(p.ref);
  }
  CHECK(Stats(h.pool()).promotions == 4);
}

TEST_CASE("A write that fails with EIO or comes up short leaves the block in DRAM, serving",
          "[daemon][pool][spill]") {
  const bool short_write = GENERATE(false, true);
  INFO((short_write ? "short write" : "EIO"));
  // The first write the store makes is its segment header; the second is block 0's record.
  WorkerHarness h([&](FaultyDevice& d) {
    if (short_write) {
      d.ShortenNthIo(2);
    } else {
      d.FailNthWrite(2, EIO);
    }
  });
  for (uint64_t n = 0; n < 6; ++n) h.Put(n);  // 12 MiB of 16: demotions start at 8
  h.Settle();
  const wire::StatsReply s = Stats(h.pool());
  CHECK(s.demote_failures == 1);
  CHECK(s.demotions >= 1);
  // Block 0 was the write that failed: still in DRAM, intact.
  DramPool::Placement p;
  wire::Tier tier;
  REQUIRE(h.pool().Acquire(Key(0), &p, &tier) == StatusCode::kOk);
  CHECK(tier == wire::Tier::kDram);
  CHECK(Holds(h.Slot(p), 0, 1));
  h.pool().Release(p.ref);
  CHECK(h.store_stats().writes_failed == 1);
}

TEST_CASE("A read that fails, or returns a flipped byte, is a miss and never wrong bytes",
          "[daemon][pool][spill]") {
  const bool flip = GENERATE(false, true);
  INFO((flip ? "flipped byte" : "EIO"));
  WorkerHarness h([&](FaultyDevice& d) {
    if (flip) {
      d.FlipByteOfNthRead(1, 12345);
    } else {
      d.FailNthRead(1, EIO);
    }
  });
  h.Put(0);
  h.Put(1);
  h.PushOut(100, 12);
  REQUIRE(h.pool().Match(Key(0)) == wire::Tier::kSsd);
  DramPool::Placement p;
  wire::Tier tier;
  REQUIRE(h.pool().Acquire(Key(0), &p, &tier) == StatusCode::kOk);
  h.Settle();
  CHECK_FALSE(h.pool().IsInDram(p.ref));
  CHECK(std::all_of(h.Slot(p).begin(), h.Slot(p).end(), [](std::byte b) { return b == std::byte{0}; }));
  h.pool().Release(p.ref);
  CHECK(h.pool().Match(Key(0)) == wire::Tier::kNone);
  const wire::StatsReply s = Stats(h.pool());
  CHECK(s.promote_failures == 1);
  CHECK(s.integrity_failures == (flip ? 1u : 0u));
  // The next read is fine.
  REQUIRE(h.pool().Acquire(Key(1), &p, &tier) == StatusCode::kOk);
  h.Settle();
  REQUIRE(h.pool().IsInDram(p.ref));
  CHECK(Holds(h.Slot(p), 1, 1));
  h.pool().Release(p.ref);
}

}  // namespace
}  // namespace kvtier

namespace kvtier {
namespace {

// Adds a store for 1 MiB records in `dir` on a two-thread pread/pwrite device to `worker`.
void AddThreadPoolStore(SpillWorker& worker, const std::filesystem::path& dir, uint64_t segment_bytes,
                        uint64_t quota_bytes, uint32_t queue_depth, uint32_t staging_buffers) {
  DeviceOptions d;
  d.queue_depth = queue_depth;
  d.threads = 2;
  d.max_files = 16;
  auto device = ThreadPoolDevice::Open(d);
  REQUIRE(device.ok());
  auto key = SecretKey::Random();
  REQUIRE(key.ok());
  SpillOptions o;
  o.dir = dir;
  o.tenant = std::string(kTenant);
  o.segment_bytes = segment_bytes;
  o.quota_bytes = quota_bytes;
  o.max_record_payload_bytes = kMiB;
  o.staging_buffers = staging_buffers;
  auto store = SpillStore::Open(o, device->get(), *key, nullptr);
  REQUIRE(store.ok());
  worker.AddStore(std::move(*device), std::move(*store));
}

// A job writing `data` as the record of key `tag` (its 8 bytes) in namespace "ns".
SpillJob WriteJob(uint64_t tag, std::span<std::byte> data) {
  SpillJob job;
  job.kind = SpillJob::Kind::kWrite;
  job.tag = tag;
  job.bytes = data.size();
  job.data = data.data();
  job.key_len = 8;
  std::memcpy(job.key.data(), &tag, 8);
  job.ns_len = 2;
  std::memcpy(job.ns.data(), "ns", 2);
  return job;
}

TEST_CASE("The worker never reports a record written after reporting it dropped",
          "[daemon][spill]") {
  // One 1 MiB record per 2 MiB segment and a two-segment quota: nearly every write reclaims a
  // segment, often one whose write completion is reaped but not yet reported.
  TempDir dir;
  SpillWorker worker;
  AddThreadPoolStore(worker, dir.path() / "t", 2 * kMiB, 4 * kMiB, /*queue_depth=*/16,
                     /*staging_buffers=*/8);
  REQUIRE(worker.Start().ok());
  std::vector<std::byte> data(kMiB, std::byte{7});
  for (int round = 0; round < 10; ++round) {
    std::vector<SpillJob> jobs;
    for (uint64_t i = 0; i < 30; ++i) {
      jobs.push_back(WriteJob(static_cast<uint64_t>(round) * 1000 + i + 1, data));
    }
    worker.Post(jobs);
    std::map<uint64_t, bool> dropped;
    size_t written = 0;
    while (written < jobs.size()) {
      pollfd p{worker.event_fd(), POLLIN, 0};
      REQUIRE(poll(&p, 1, 30000) == 1);  // a liveness bound, not a timing assertion
      std::vector<SpillResult> results;
      worker.TakeResults(&results);
      for (const SpillResult& r : results) {
        if (r.kind == SpillResult::Kind::kDropped) dropped[r.tag] = true;
        if (r.kind != SpillResult::Kind::kWritten) continue;
        ++written;
        INFO("tag " << r.tag);
        CHECK_FALSE((r.status.ok() && dropped.count(r.tag) > 0));
      }
    }
  }
  CHECK(worker.StatsOf(0).segments <= 2);
}

TEST_CASE("Once idle, the worker erases the segment being written when no record in it lives",
          "[daemon][spill]") {
  // Releases posted together: the first one's scrub is in flight when the last one arrives, so
  // the erase must come later, when the worker is idle, not from the release itself.
  TempDir dir;
  SpillWorker worker;
  AddThreadPoolStore(worker, dir.path() / "t", 8 * kMiB, 64 * kMiB, /*queue_depth=*/16,
                     /*staging_buffers=*/8);
  REQUIRE(worker.Start().ok());
  std::vector<std::byte> data(kMiB, std::byte{7});
  std::vector<SpillJob> jobs;
  for (uint64_t i = 0; i < 3; ++i) jobs.push_back(WriteJob(i + 1, data));
  worker.Post(jobs);
  std::vector<SpillJob> releases;
  while (releases.size() < jobs.size()) {
    pollfd p{worker.event_fd(), POLLIN, 0};
    REQUIRE(poll(&p, 1, 30000) == 1);  // a liveness bound, not a timing assertion
    std::vector<SpillResult> results;
    worker.TakeResults(&results);
    for (const SpillResult& r : results) {
      REQUIRE(r.kind == SpillResult::Kind::kWritten);
      REQUIRE(r.status.ok());
      SpillJob release;
      release.kind = SpillJob::Kind::kRelease;
      release.ref = r.ref;
      releases.push_back(release);
    }
  }
  REQUIRE(worker.StatsOf(0).segments == 1);
  worker.Post(releases);
  CHECK(testing::WaitUntil([&] { return worker.StatsOf(0).segments == 0; }));
  CHECK(worker.StatsOf(0).segments_erased == 1);
  CHECK(std::filesystem::is_empty(dir.path() / "t"));
}

TEST_CASE("Writes posted behind releases whose scrubs fill the device queue all complete",
          "[daemon][spill]") {
  // A release's scrub takes a queue slot and completes with no result. A write that waited for
  // a slot used to wait for a result that never came: the worker slept with writes pending.
  TempDir dir;
  SpillWorker worker;
  AddThreadPoolStore(worker, dir.path() / "t", 8 * kMiB, 256 * kMiB, /*queue_depth=*/4,
                     /*staging_buffers=*/2);
  REQUIRE(worker.Start().ok());
  std::vector<std::byte> data(64 * 1024, std::byte{7});
  // Waits for `n` write results (a liveness bound, not a timing assertion); their refs.
  auto written = [&](size_t n) {
    std::vector<SsdRef> refs;
    while (refs.size() < n) {
      pollfd p{worker.event_fd(), POLLIN, 0};
      REQUIRE(poll(&p, 1, 30000) == 1);
      std::vector<SpillResult> results;
      worker.TakeResults(&results);
      for (const SpillResult& r : results) {
        if (r.kind != SpillResult::Kind::kWritten) continue;
        REQUIRE(r.status.ok());
        refs.push_back(r.ref);
      }
    }
    return refs;
  };
  uint64_t tag = 1;
  std::vector<SpillJob> first;
  for (int i = 0; i < 32; ++i) first.push_back(WriteJob(tag++, data));
  worker.Post(first);
  std::vector<SsdRef> live = written(first.size());
  for (int round = 0; round < 20; ++round) {
    std::vector<SpillJob> jobs;
    for (const SsdRef& ref : live) {
      SpillJob release;
      release.kind = SpillJob::Kind::kRelease;
      release.ref = ref;
      jobs.push_back(release);
    }
    for (int i = 0; i < 32; ++i) jobs.push_back(WriteJob(tag++, data));
    worker.Post(jobs);
    live = written(32);
  }
  CHECK(worker.StatsOf(0).writes_started >= 21 * 32);
}

}  // namespace
}  // namespace kvtier

namespace kvtier {
namespace {

// One block in each state a tiered pool has, 2 MiB each (a slot per slab):
//   0 clean (DRAM and SSD)   1 SSD-only      2 dirty         3 demoting
//   4 clean and leased       5 reserved      6 promoting     7 no-spill (its demotion failed)
class EveryState {
 public:
  EveryState() : pool_(Options()) {
    for (uint64_t n : {0u, 3u, 4u, 7u}) Put(n);
    pool_.Demote();  // a dirty limit of 0: all four
    std::vector<SpillOrder> orders;
    pool_.TakeOrders(&orders);
    REQUIRE(orders.size() == 4);
    for (const SpillOrder& order : orders) {
      const uint64_t n = KeyNumber(order.key);
      if (n == 0 || n == 4) {
        pool_.DemoteDone(order.ref, Status::Ok(), SsdRef{1, static_cast<uint32_t>(n)});
      }
      if (n == 7) pool_.DemoteDone(order.ref, Status(StatusCode::kIoError, "injected"), {});
      if (n == 3) demoting_ = order.ref;
    }
    REQUIRE(pool_.InsertRecovered(Key(1), kSlab, SsdRef{1, 1}).has_value());
    Put(2);  // no Demote() after it: dirty
    DramPool::Placement p;
    REQUIRE(pool_.Acquire(Key(4), &p) == StatusCode::kOk);
    lease_ = p.ref;
    REQUIRE(pool_.Reserve(Key(5), kSlab, kSession, &p) == StatusCode::kOk);
    reservation_ = p.ref;
    REQUIRE(pool_.InsertRecovered(Key(6), kSlab, SsdRef{1, 6}).has_value());
    wire::Tier tier;
    REQUIRE(pool_.Acquire(Key(6), &p, &tier) == StatusCode::kOk);
    REQUIRE(tier == wire::Tier::kSsd);
    pool_.Release(p.ref);  // the promotion goes on without a lease
    promoting_ = p.ref;
    orders.clear();
    pool_.TakeOrders(&orders);
    REQUIRE(orders.size() == 1);  // the promotion
  }

  static DramPool::Options Options() {
    DramPool::Options o = TierOptions(16 * kMiB);
    o.dirty_limit_bytes = 0;
    return o;
  }

  void Put(uint64_t n) {
    DramPool::Placement p;
    REQUIRE(pool_.Reserve(Key(n), kSlab, kSession, &p) == StatusCode::kOk);
    REQUIRE(pool_.Commit(Key(n), kSession) == StatusCode::kOk);
  }

  std::vector<SpillOrder> Orders() {
    std::vector<SpillOrder> orders;
    pool_.TakeOrders(&orders);
    return orders;
  }

  DramPool pool_;
  BlockRef demoting_, lease_, reservation_, promoting_;
};

TEST_CASE("A removed block's SSD record is released only once its promotion has read it",
          "[daemon][pool][spill]") {
  // A release scrubs the record's header on disk; under a read in flight that would make the
  // read fail as if the record had been tampered with.
  const bool success = GENERATE(true, false);
  EveryState t;
  DramPool& pool = t.pool_;
  REQUIRE(pool.Remove(Key(6)) == StatusCode::kOk);
  CHECK(t.Orders().empty());
  pool.PromoteDone(t.promoting_, success ? Status::Ok() : Status(StatusCode::kIoError, "x"));
  const std::vector<SpillOrder> orders = t.Orders();
  REQUIRE(orders.size() == 1);
  CHECK(orders[0].kind == SpillOrder::Kind::kRelease);
  CHECK(orders[0].ssd == SsdRef{1, 6});
  CHECK(Stats(pool).integrity_failures == 0);
}

TEST_CASE("Evict(kDram) moves clean blocks to SSD only and drops those DRAM alone holds",
          "[daemon][pool][spill][evict]") {
  EveryState t;
  DramPool& pool = t.pool_;
  const EvictReport r = pool.Evict(EvictTiers::kDram);
  CHECK(r.dram_blocks == 3);  // 0 (now SSD-only), 2 and 7 (dropped)
  CHECK(r.dram_bytes == 3 * kSlab);
  CHECK(r.ssd_blocks == 0);
  CHECK(r.dropped_blocks == 2);
  CHECK(r.kept_pinned == 4);  // 3, 4, 5, 6
  CHECK(pool.Match(Key(0)) == wire::Tier::kSsd);
  CHECK(pool.Match(Key(1)) == wire::Tier::kSsd);
  CHECK(pool.Match(Key(2)) == wire::Tier::kNone);
  CHECK(pool.Match(Key(3)) == wire::Tier::kDram);
  CHECK(pool.Match(Key(4)) == wire::Tier::kDram);
  CHECK(pool.Match(Key(7)) == wire::Tier::kNone);
  CHECK(t.Orders().empty());  // no SSD record went
  const wire::StatsReply s = Stats(pool);
  CHECK(s.evictions == 3);
  CHECK(pool.tier_counters().ssd_evictions == 1);
  CHECK(s.dirty_bytes == kSlab);  // block 3, still demoting
  CHECK(s.ssd_blocks == 4);       // 0, 1, 4, 6
  CHECK(s.ssd_only_blocks == 2);  // 0 and 1
  CHECK(s.used_bytes == 4 * kSlab);
}

TEST_CASE("Evict(kSsd) drops SSD-only blocks and makes clean DRAM blocks dirty again",
          "[daemon][pool][spill][evict]") {
  const bool release = GENERATE(true, false);
  EveryState t;
  DramPool& pool = t.pool_;
  const EvictReport r = pool.Evict(EvictTiers::kSsd, release);
  CHECK(r.ssd_blocks == 2);  // 0 (back to dirty) and 1 (dropped)
  CHECK(r.ssd_bytes == 2 * kSlab);
  CHECK(r.dram_blocks == 0);
  CHECK(r.dropped_blocks == 1);
  CHECK(r.kept_pinned == 2);  // 4 (leased) and 6 (promoting)
  CHECK(pool.Match(Key(0)) == wire::Tier::kDram);
  CHECK(pool.Match(Key(1)) == wire::Tier::kNone);
  std::vector<SpillOrder> orders = t.Orders();
  CHECK(orders.size() == (release ? 2u : 0u));
  for (const SpillOrder& order : orders) CHECK(order.kind == SpillOrder::Kind::kRelease);
  wire::StatsReply s = Stats(pool);
  CHECK(s.dirty_bytes == 3 * kSlab);  // 0, 2 and 3
  CHECK(s.ssd_blocks == 2);           // 4 and 6
  CHECK(s.ssd_only_blocks == 0);
  CHECK(s.ssd_payload_bytes == 2 * kSlab);
  CHECK(s.evictions == 1);
  // Block 0 is due for demotion again; its dirty pin keeps it from eviction meanwhile.
  pool.Demote();
  orders = t.Orders();
  const bool demotes_0 = std::any_of(orders.begin(), orders.end(), [](const SpillOrder& o) {
    return o.kind == SpillOrder::Kind::kDemote && KeyNumber(o.key) == 0;
  });
  CHECK(demotes_0);
  for (const SpillOrder& order : orders) {
    pool.DemoteDone(order.ref, Status::Ok(),
                    SsdRef{2, static_cast<uint32_t>(KeyNumber(order.key))});
  }
  pool.DemoteDone(t.demoting_, Status::Ok(), SsdRef{2, 3});
  s = Stats(pool);
  CHECK(s.dirty_bytes == 0);
  CHECK(s.ssd_blocks == 5);  // 0, 2, 3, 4, 6
}

TEST_CASE("Evict(kAll) drops every block but leased and reserved ones, those with I/O in flight "
          "when it ends",
          "[daemon][pool][spill][evict]") {
  const bool release = GENERATE(true, false);
  EveryState t;
  DramPool& pool = t.pool_;
  const EvictReport r = pool.Evict(EvictTiers::kAll, release);
  CHECK(r.dram_blocks == 4);  // 0, 2, 3, 7
  CHECK(r.dram_bytes == 4 * kSlab);
  CHECK(r.ssd_blocks == 3);  // 0, 1, 6
  CHECK(r.ssd_bytes == 3 * kSlab);
  CHECK(r.dropped_blocks == 6);
  CHECK(r.kept_pinned == 2);  // 4 and 5
  for (uint64_t n : {0u, 1u, 2u, 3u, 6u, 7u}) CHECK(pool.Match(Key(n)) == wire::Tier::kNone);
  CHECK(pool.Match(Key(4)) == wire::Tier::kDram);
  // Released now: 0 and 1; the promoting 6's record only after its read (see below).
  CHECK(t.Orders().size() == (release ? 2u : 0u));
  // The demotion and the promotion in flight hold their slots until their results.
  CHECK(Stats(pool).used_bytes == 4 * kSlab);  // 3, 4, 5, 6
  CHECK_FALSE(pool.idle());
  pool.DemoteDone(t.demoting_, Status::Ok(), SsdRef{2, 3});
  pool.PromoteDone(t.promoting_, Status::Ok());
  CHECK(pool.idle());
  // The record written meanwhile is released: it belongs to no block. So is the promoted
  // block's, now that nothing reads it.
  const std::vector<SpillOrder> orders = t.Orders();
  REQUIRE(orders.size() == (release ? 2u : 1u));
  CHECK(orders[0].kind == SpillOrder::Kind::kRelease);
  CHECK(orders[0].ssd == SsdRef{2, 3});
  if (release) CHECK(orders[1].ssd == SsdRef{1, 6});
  wire::StatsReply s = Stats(pool);
  CHECK(s.committed_blocks == 1);
  CHECK(s.reserved_blocks == 1);
  CHECK(s.used_bytes == 2 * kSlab);
  CHECK(s.ssd_blocks == 1);  // 4
  CHECK(s.dirty_bytes == 0);
  pool.Release(t.lease_);
  pool.AbortIfReservedBy(t.reservation_, kSession);
  CHECK(pool.Evict(EvictTiers::kAll, release).dropped_blocks == 1);
  CHECK(pool.empty());
  s = Stats(pool);
  CHECK(s.used_bytes == 0);
  CHECK(s.slab_bytes_in_use == 0);
  CHECK(s.ssd_blocks == 0);
  CHECK(s.ssd_only_blocks == 0);
  CHECK(s.ssd_payload_bytes == 0);
  CHECK(s.expirations == 0);
}

// ---------------------------------------------------------------------------------------------
// kErase on the real worker.

class EraseHarness {
 public:
  EraseHarness() : data_(kMiB, std::byte{7}) {
    // Three 1 MiB records a segment; two staging buffers, so most writes of a burst wait.
    AddThreadPoolStore(worker_, dir_.path() / "t", 4 * kMiB, 64 * kMiB, /*queue_depth=*/4,
                       /*staging_buffers=*/2);
    REQUIRE(worker_.Start().ok());
  }

  SpillJob Write(uint64_t tag) { return WriteJob(tag, data_); }
  SpillJob Read(uint64_t tag, SsdRef ref, std::span<std::byte> out) {
    SpillJob job = Write(tag);
    job.kind = SpillJob::Kind::kRead;
    job.ref = ref;
    job.data = out.data();
    return job;
  }
  static SpillJob Erase(uint64_t tag) {
    SpillJob job;
    job.kind = SpillJob::Kind::kErase;
    job.tag = tag;
    return job;
  }

  // Results in the order the worker published them, until `count` have come.
  std::vector<SpillResult> Collect(size_t count) {
    std::vector<SpillResult> all;
    while (all.size() < count) {
      pollfd p{worker_.event_fd(), POLLIN, 0};
      REQUIRE(poll(&p, 1, 30000) == 1);  // a liveness bound, not a timing assertion
      worker_.TakeResults(&all);
    }
    CHECK(all.size() == count);
    return all;
  }

  size_t SegmentFiles() const {
    size_t n = 0;
    for (const auto& entry : std::filesystem::directory_iterator(dir_.path() / "t")) {
      n += entry.path().extension() == ".kvs" ? 1u : 0u;
    }
    return n;
  }

  SpillWorker& worker() { return worker_; }

 private:
  TempDir dir_;
  std::vector<std::byte> data_;
  SpillWorker worker_;
};

TEST_CASE("A kErase fails pending jobs, waits for I/O in flight, erases every segment and is "
          "reported after every earlier result",
          "[daemon][spill][erase]") {
  const bool one_post = GENERATE(false, true);
  INFO((one_post ? "writes and erase in one post" : "erase posted after the writes"));
  EraseHarness h;
  // Some records on disk first, in three segments.
  std::vector<SpillJob> jobs;
  for (uint64_t tag = 1; tag <= 8; ++tag) jobs.push_back(h.Write(tag));
  h.worker().Post(jobs);
  std::vector<SpillResult> results = h.Collect(8);
  for (const SpillResult& r : results) REQUIRE(r.status.ok());
  REQUIRE(h.worker().StatsOf(0).segments == 3);
  const SsdRef first = results[0].ref;

  // A burst of writes and a read, then the erase, then a write that must land afterwards.
  std::vector<std::byte> out(kMiB, std::byte{1});
  jobs.clear();
  for (uint64_t tag = 11; tag <= 16; ++tag) jobs.push_back(h.Write(tag));
  jobs.push_back(h.Read(17, first, out));
  if (!one_post) {
    h.worker().Post(jobs);
    jobs.clear();
  }
  jobs.push_back(EraseHarness::Erase(99));
  jobs.push_back(h.Write(21));
  h.worker().Post(jobs);
  results = h.Collect(9);

  // Every earlier job has its result before kErased; the later write comes after it.
  size_t purged = 0;
  for (size_t i = 0; i < 7; ++i) {
    INFO("result " << i << ": tag " << results[i].tag << " " << results[i].status.ToString());
    CHECK(results[i].tag >= 11);
    CHECK(results[i].tag <= 17);
    CHECK(((results[i].status.ok()) || (results[i].status.code() == StatusCode::kUnavailable)));
    if (!results[i].status.ok()) ++purged;
  }
  CHECK(results[7].kind == SpillResult::Kind::kErased);
  CHECK(results[7].tag == 99);
  CHECK(results[7].status.ok());
  CHECK(results[7].segments >= 3);
  CHECK(results[8].kind == SpillResult::Kind::kWritten);
  CHECK(results[8].tag == 21);
  CHECK(results[8].status.ok());
  if (one_post) {
    CHECK(purged == 7);  // none had started
    CHECK(std::all_of(out.begin(), out.end(), [](std::byte b) { return b == std::byte{0}; }));
  }
  // Only the segment of the later write is left.
  const SpillStats s = h.worker().StatsOf(0);
  CHECK(s.segments == 1);
  CHECK(s.live_records == 1);
  CHECK(h.SegmentFiles() == 1);
  // A release of a record that went with the erase does nothing.
  SpillJob release;
  release.kind = SpillJob::Kind::kRelease;
  release.ref = first;
  std::vector<SpillJob> later{release, h.Write(22)};
  h.worker().Post(later);
  results = h.Collect(1);
  CHECK(results[0].status.ok());
  CHECK(h.worker().StatsOf(0).live_records == 2);
}

TEST_CASE("Two erases in a row are each reported, the second one erasing nothing",
          "[daemon][spill][erase]") {
  EraseHarness h;
  std::vector<SpillJob> jobs{h.Write(1), EraseHarness::Erase(2), h.Write(3),
                             EraseHarness::Erase(4)};
  h.worker().Post(jobs);
  const std::vector<SpillResult> results = h.Collect(4);
  CHECK(results[0].kind == SpillResult::Kind::kWritten);
  CHECK(results[0].status.code() == StatusCode::kUnavailable);  // pending at the first erase
  CHECK(results[1].kind == SpillResult::Kind::kWritten);
  CHECK(results[1].status.code() == StatusCode::kUnavailable);  // pending at the second
  CHECK(results[2].kind == SpillResult::Kind::kErased);
  CHECK(results[2].tag == 2);
  CHECK(results[3].kind == SpillResult::Kind::kErased);
  CHECK(results[3].tag == 4);
  CHECK(results[3].segments == 0);
  CHECK(h.SegmentFiles() == 0);
}

// A tenant purge as the server runs it: leases end, Evict(kAll, false), the orders and a kErase
// go to the worker, and results are applied until kErased.
TEST_CASE("A purge leaves an empty pool and an empty spill store, with I/O in flight or "
          "not yet started",
          "[daemon][pool][spill][erase]") {
  const bool posted_first = GENERATE(false, true);
  INFO((posted_first ? "I/O posted before the purge" : "I/O posted with the erase"));
  WorkerHarness h;
  DramPool& pool = h.pool();
  for (uint64_t n = 0; n < 4; ++n) h.Put(n);
  h.PushOut(100, 12);
  for (uint64_t n = 0; n < 4; ++n) REQUIRE(pool.Match(Key(n)) == wire::Tier::kSsd);
  REQUIRE(h.store_stats().segments > 0);

  // Two promotions (one leased), two new dirty blocks, two demotions, a leased DRAM block.
  DramPool::Placement promoting, leased;
  wire::Tier tier;
  REQUIRE(pool.Acquire(Key(0), &promoting, &tier) == StatusCode::kOk);
  REQUIRE(tier == wire::Tier::kSsd);
  DramPool::Placement p;
  REQUIRE(pool.Acquire(Key(1), &p, &tier) == StatusCode::kOk);
  REQUIRE(tier == wire::Tier::kSsd);
  pool.Release(p.ref);
  for (uint64_t n = 200; n < 202; ++n) h.Put(n);
  pool.Demote();
  REQUIRE(pool.demotions_in_flight() > 0);
  REQUIRE(pool.promotions_in_flight() == 2);
  REQUIRE(pool.Acquire(Key(201), &leased, &tier) == StatusCode::kOk);
  REQUIRE(tier == wire::Tier::kDram);
  if (posted_first) h.PostOrders();

  // The tenant's sessions close, then the purge.
  pool.Release(promoting.ref);
  pool.Release(leased.ref);
  const uint64_t blocks = Stats(pool).committed_blocks;
  const EvictReport r = pool.Evict(EvictTiers::kAll, /*release_ssd_records=*/false);
  CHECK(r.dropped_blocks == blocks);
  CHECK(r.kept_pinned == 0);
  for (uint64_t n : {0u, 1u, 2u, 3u, 100u, 111u, 200u, 201u}) {
    CHECK(pool.Match(Key(n)) == wire::Tier::kNone);
  }
  h.PostOrders(/*erase=*/true);
  int purged = 0;
  const SpillResult erased = h.ApplyUntilErased(&purged);
  CHECK(erased.status.ok());
  CHECK(erased.segments > 0);
  if (!posted_first) CHECK(purged == 4);  // two demotions and two promotions
  h.PostOrders();  // releases of records written meanwhile: the store knows them no more

  CHECK(pool.idle());
  CHECK(pool.empty());
  const wire::StatsReply s = Stats(pool);
  CHECK(s.committed_blocks == 0);
  CHECK(s.reserved_blocks == 0);
  CHECK(s.leased_blocks == 0);
  CHECK(s.used_bytes == 0);
  CHECK(s.slab_bytes_in_use == 0);
  CHECK(s.dirty_bytes == 0);
  CHECK(s.ssd_blocks == 0);
  CHECK(s.ssd_only_blocks == 0);
  CHECK(s.ssd_payload_bytes == 0);
  CHECK(h.store_stats().segments == 0);
  CHECK(h.store_stats().live_records == 0);
  CHECK(std::filesystem::is_empty(h.store_dir()));

  // The tenant goes on: new blocks are demoted into a fresh segment and come back.
  for (uint64_t n = 300; n < 306; ++n) h.Put(n);
  h.Settle();
  CHECK(Stats(pool).ssd_blocks == 2);  // 12 MiB dirty, a limit of 8
  CHECK(h.store_stats().segments == 1);
  h.PushOut(400, 8);
  REQUIRE(pool.Match(Key(300)) == wire::Tier::kSsd);
  REQUIRE(pool.Acquire(Key(300), &p, &tier) == StatusCode::kOk);
  h.Settle();
  REQUIRE(pool.IsInDram(p.ref));
  CHECK(Holds(h.Slot(p), 300, 1));
  pool.Release(p.ref);
}

}  // namespace
}  // namespace kvtier
