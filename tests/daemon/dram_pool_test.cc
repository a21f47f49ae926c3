#include "daemon/pool/dram_pool.h"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "daemon/index/block_key.h"
#include "daemon/pool/size_classes.h"
#include "daemon/tier/tier_policy.h"
#include "ipc/base/units.h"
#include "ipc/wire/protocol.h"

namespace kvtier {
namespace {

constexpr uint64_t kSlab = 2 * kMiB;
constexpr uint64_t kPool = 16 * kMiB;  // 8 slabs
constexpr uint32_t kSession = 1;
constexpr uint32_t kOtherSession = 2;

DramPool::Options Options(uint64_t pool_bytes = kPool,
                          uint32_t max_blocks = 4096,
                          uint64_t slab_bytes = kSlab) {
  DramPool::Options o;
  o.pool_bytes = pool_bytes;
  o.slab_bytes = slab_bytes;
  o.max_block_bytes = 3 * slab_bytes;
  o.max_blocks = max_blocks;
  o.hash_seed = 0x5eed;
  return o;
}

BlockKey Key(uint64_t n, uint32_t ns = 1) {
  BlockKey key;
  key.ns_id = ns;
  key.len = 8;
  std::memcpy(key.bytes.data(), &n, sizeof(n));
  return key;
}

wire::StatsReply Stats(const DramPool& pool) {
  wire::StatsReply stats{};
  pool.FillStats(&stats);
  return stats;
}

// Reserve and commit; returns the offset.
uint64_t Put(DramPool& pool, uint64_t n, uint64_t size) {
  DramPool::Placement p;
  REQUIRE(pool.Reserve(Key(n), size, kSession, &p) == StatusCode::kOk);
  REQUIRE(pool.Commit(Key(n), kSession) == StatusCode::kOk);
  return p.offset;
}

bool Present(DramPool& pool, uint64_t n) {
  return pool.Match(Key(n)) == wire::Tier::kDram;
}

TEST_CASE("A reserved block is invisible until its own session commits it", "[daemon][pool]") {
  DramPool pool(Options());
  DramPool::Placement p;
  REQUIRE(pool.Reserve(Key(1), 100'000, kSession, &p) == StatusCode::kOk);
  CHECK(p.size == 100'000);
  CHECK(p.offset % 4096 == 0);
  CHECK(p.offset + p.size <= kPool);
  CHECK(pool.IsReservedBy(p.ref, kSession));
  CHECK_FALSE(pool.IsReservedBy(p.ref, kOtherSession));

  DramPool::Placement a;
  CHECK(pool.Match(Key(1)) == wire::Tier::kNone);
  CHECK(pool.Acquire(Key(1), &a) == StatusCode::kNotFound);
  CHECK(pool.Remove(Key(1)) == StatusCode::kNotFound);
  CHECK(pool.Commit(Key(1), kOtherSession) == StatusCode::kNotFound);
  CHECK(pool.Match(Key(1)) == wire::Tier::kNone);
  auto stats = Stats(pool);
  CHECK(stats.reserved_blocks == 1);
  CHECK(stats.committed_blocks == 0);
  CHECK(stats.misses == 3);  // two matches and an acquire; Remove and Commit count nothing

  REQUIRE(pool.Commit(Key(1), kSession) == StatusCode::kOk);
  CHECK_FALSE(pool.IsReservedBy(p.ref, kSession));
  CHECK(pool.Commit(Key(1), kSession) == StatusCode::kNotFound);
  CHECK(pool.Match(Key(1)) == wire::Tier::kDram);
  REQUIRE(pool.Acquire(Key(1), &a) == StatusCode::kOk);
  CHECK(a.offset == p.offset);
  CHECK(a.size == 100'000);
  stats = Stats(pool);
  CHECK(stats.reserved_blocks == 0);
  CHECK(stats.committed_blocks == 1);
  CHECK(stats.hits == 2);
  pool.Release(a.ref);
}

TEST_CASE("Reserve refuses a key that is reserved or committed by anyone", "[daemon][pool]") {
  DramPool pool(Options());
  DramPool::Placement p;
  REQUIRE(pool.Reserve(Key(1), 4096, kSession, &p) == StatusCode::kOk);
  const uint32_t session = GENERATE(as<uint32_t>{}, kSession, kOtherSession);
  DramPool::Placement q;
  CHECK(pool.Reserve(Key(1), 4096, session, &q) == StatusCode::kAlreadyExists);
  CHECK(pool.Reserve(Key(1), 8192, session, &q) == StatusCode::kAlreadyExists);
  REQUIRE(pool.Commit(Key(1), kSession) == StatusCode::kOk);
  CHECK(pool.Reserve(Key(1), 4096, session, &q) == StatusCode::kAlreadyExists);
  // The same bytes in another namespace are another key.
  CHECK(pool.Reserve(Key(1, 2), 4096, session, &q) == StatusCode::kOk);
  CHECK(q.offset != p.offset);
  CHECK(Stats(pool).reserved_blocks == 1);
  CHECK(Stats(pool).committed_blocks == 1);
}

TEST_CASE("Reserve accepts sizes 1..max_block_bytes only", "[daemon][pool]") {
  DramPool pool(Options());
  const uint64_t max = Options().max_block_bytes;
  DramPool::Placement p;
  CHECK(pool.Reserve(Key(1), 0, kSession, &p) == StatusCode::kInvalidArgument);
  CHECK(pool.Reserve(Key(2), max + 1, kSession, &p) == StatusCode::kInvalidArgument);
  CHECK(pool.Reserve(Key(3), UINT64_MAX, kSession, &p) == StatusCode::kInvalidArgument);
  CHECK(Stats(pool).used_bytes == 0);
  REQUIRE(pool.Reserve(Key(4), 1, kSession, &p) == StatusCode::kOk);
  CHECK(p.size == 1);
  REQUIRE(pool.Reserve(Key(5), max, kSession, &p) == StatusCode::kOk);
  CHECK(p.size == max);
  CHECK(p.offset % kSlab == 0);
  CHECK(p.offset + max <= kPool);
}

TEST_CASE("Commit and Abort by another session are kNotFound", "[daemon][pool]") {
  DramPool pool(Options());
  DramPool::Placement p;
  REQUIRE(pool.Reserve(Key(1), 64 * kKiB, kSession, &p) == StatusCode::kOk);
  CHECK(pool.Commit(Key(1), kOtherSession) == StatusCode::kNotFound);
  CHECK(pool.Abort(Key(1), kOtherSession) == StatusCode::kNotFound);
  CHECK(pool.IsReservedBy(p.ref, kSession));
  CHECK(pool.Commit(Key(2), kSession) == StatusCode::kNotFound);
  CHECK(pool.Abort(Key(2), kSession) == StatusCode::kNotFound);

  SECTION("Abort by the owner frees the slot and the key") {
    REQUIRE(pool.Abort(Key(1), kSession) == StatusCode::kOk);
    CHECK_FALSE(pool.IsReservedBy(p.ref, kSession));
    CHECK(pool.Commit(Key(1), kSession) == StatusCode::kNotFound);
    auto stats = Stats(pool);
    CHECK(stats.used_bytes == 0);
    CHECK(stats.reserved_blocks == 0);
    CHECK(stats.slab_bytes_in_use == 0);
    DramPool::Placement q;
    CHECK(pool.Reserve(Key(1), 64 * kKiB, kOtherSession, &q) == StatusCode::kOk);
  }
  SECTION("Abort of a committed block is kNotFound and leaves it") {
    REQUIRE(pool.Commit(Key(1), kSession) == StatusCode::kOk);
    CHECK(pool.Abort(Key(1), kSession) == StatusCode::kNotFound);
    CHECK(Present(pool, 1));
  }
}

TEST_CASE("AbortIfReservedBy aborts only a live reservation of that session", "[daemon][pool]") {
  DramPool pool(Options());
  DramPool::Placement p;
  REQUIRE(pool.Reserve(Key(1), 64 * kKiB, kSession, &p) == StatusCode::kOk);

  SECTION("the owner's teardown frees the slot") {
    pool.AbortIfReservedBy(p.ref, kSession);
    CHECK_FALSE(pool.IsReservedBy(p.ref, kSession));
    auto stats = Stats(pool);
    CHECK(stats.reserved_blocks == 0);
    CHECK(stats.used_bytes == 0);
    DramPool::Placement q;
    REQUIRE(pool.Reserve(Key(1), 64 * kKiB, kOtherSession, &q) == StatusCode::kOk);
    CHECK(q.offset == p.offset);
    // The old ref names a recycled entry now: it must not abort the new reservation.
    pool.AbortIfReservedBy(p.ref, kOtherSession);
    pool.AbortIfReservedBy(p.ref, kSession);
    CHECK(pool.IsReservedBy(q.ref, kOtherSession));
    CHECK(pool.Commit(Key(1), kOtherSession) == StatusCode::kOk);
  }
  SECTION("another session's teardown leaves it") {
    pool.AbortIfReservedBy(p.ref, kOtherSession);
    CHECK(pool.IsReservedBy(p.ref, kSession));
    CHECK(pool.Commit(Key(1), kSession) == StatusCode::kOk);
  }
  SECTION("a committed block is not a reservation any more") {
    REQUIRE(pool.Commit(Key(1), kSession) == StatusCode::kOk);
    pool.AbortIfReservedBy(p.ref, kSession);
    CHECK(Present(pool, 1));
    CHECK(Stats(pool).used_bytes == 64 * kKiB);
  }
}

TEST_CASE("Leases pin a block until the last Release", "[daemon][pool]") {
  DramPool pool(Options());
  const uint64_t offset = Put(pool, 1, 64 * kKiB);
  DramPool::Placement a, b;
  REQUIRE(pool.Acquire(Key(1), &a) == StatusCode::kOk);
  REQUIRE(pool.Acquire(Key(1), &b) == StatusCode::kOk);
  CHECK(a.offset == offset);
  CHECK(b.offset == offset);
  CHECK(a.size == 64 * kKiB);
  CHECK(Stats(pool).leased_blocks == 1);
  pool.Release(a.ref);
  CHECK(Stats(pool).leased_blocks == 1);
  pool.Release(b.ref);
  CHECK(Stats(pool).leased_blocks == 0);
  CHECK(Present(pool, 1));
}

TEST_CASE("Remove hides a block at once and frees a leased slot only at Release",
          "[daemon][pool]") {
  DramPool pool(Options());
  const uint64_t offset = Put(pool, 1, 64 * kKiB);
  CHECK(pool.Remove(Key(2)) == StatusCode::kNotFound);

  SECTION("an unleased block is gone") {
    REQUIRE(pool.Remove(Key(1)) == StatusCode::kOk);
    CHECK_FALSE(Present(pool, 1));
    CHECK(pool.Remove(Key(1)) == StatusCode::kNotFound);
    auto stats = Stats(pool);
    CHECK(stats.used_bytes == 0);
    CHECK(stats.committed_blocks == 0);
    CHECK(stats.slab_bytes_in_use == 0);
  }
  SECTION("a leased block keeps its slot until Release") {
    DramPool::Placement lease;
    REQUIRE(pool.Acquire(Key(1), &lease) == StatusCode::kOk);
    REQUIRE(pool.Remove(Key(1)) == StatusCode::kOk);
    CHECK_FALSE(Present(pool, 1));
    DramPool::Placement again;
    CHECK(pool.Acquire(Key(1), &again) == StatusCode::kNotFound);
    CHECK(pool.Remove(Key(1)) == StatusCode::kNotFound);
    CHECK(Stats(pool).used_bytes == 64 * kKiB);
    CHECK(Stats(pool).leased_blocks == 1);
    // The key is free for a new block, which must not get the leased slot.
    DramPool::Placement fresh;
    REQUIRE(pool.Reserve(Key(1), 64 * kKiB, kSession, &fresh) == StatusCode::kOk);
    CHECK(fresh.offset != offset);
    REQUIRE(pool.Commit(Key(1), kSession) == StatusCode::kOk);
    CHECK(Stats(pool).used_bytes == 128 * kKiB);

    pool.Release(lease.ref);
    auto stats = Stats(pool);
    CHECK(stats.used_bytes == 64 * kKiB);
    CHECK(stats.leased_blocks == 0);
    CHECK(stats.committed_blocks == 1);
    // The new block is untouched by the old one's end.
    DramPool::Placement now;
    REQUIRE(pool.Acquire(Key(1), &now) == StatusCode::kOk);
    CHECK(now.offset == fresh.offset);
    pool.Release(now.ref);
  }
}

// 256 blocks of 64 KiB fill the 16 MiB pool exactly.
constexpr uint64_t kBlock = 64 * kKiB;
constexpr uint64_t kFill = kPool / kBlock;

std::vector<uint64_t> Fill(DramPool& pool) {
  std::vector<uint64_t> offsets;
  for (uint64_t n = 0; n < kFill; ++n)
    offsets.push_back(Put(pool, n, kBlock));
  REQUIRE(Stats(pool).used_bytes == kPool);
  REQUIRE(Stats(pool).evictions == 0);
  return offsets;
}

TEST_CASE("Eviction drops the least recently used blocks of the size class first",
          "[daemon][pool]") {
  DramPool pool(Options());
  const std::vector<uint64_t> offsets = Fill(pool);
  // Use the ten oldest blocks.
  SECTION("a match is a use") {
    for (uint64_t n = 0; n < 10; ++n)
      REQUIRE(Present(pool, n));
  }
  SECTION("an acquire and release is a use") {
    for (uint64_t n = 0; n < 10; ++n) {
      DramPool::Placement lease;
      REQUIRE(pool.Acquire(Key(n), &lease) == StatusCode::kOk);
      pool.Release(lease.ref);
    }
  }
  std::set<uint64_t> new_offsets;
  for (uint64_t n = kFill; n < kFill + 10; ++n)
    new_offsets.insert(Put(pool, n, kBlock));
  CHECK(Stats(pool).evictions == 10);
  // The evicted are the next ten oldest, and their slots were reused as they were.
  CHECK(new_offsets == std::set<uint64_t>(offsets.begin() + 10, offsets.begin() + 20));
  for (uint64_t n = 0; n < kFill + 10; ++n) {
    INFO("block " << n);
    CHECK(Present(pool, n) == (n < 10 || n >= 20));
  }
}

TEST_CASE("Leased and reserved blocks are never evicted", "[daemon][pool]") {
  DramPool pool(Options());
  (void)Fill(pool);
  std::vector<DramPool::Placement> leases(kFill);
  constexpr uint64_t kUnleased = 100;
  for (uint64_t n = 0; n < kFill; ++n) {
    if (n != kUnleased) REQUIRE(pool.Acquire(Key(n), &leases[n]) == StatusCode::kOk);
  }
  DramPool::Placement p;
  REQUIRE(pool.Reserve(Key(1000), kBlock, kSession, &p) == StatusCode::kOk);
  CHECK(Stats(pool).evictions == 1);
  CHECK_FALSE(Present(pool, kUnleased));
  // Now every block is leased or reserved: nothing of any size fits.
  const uint64_t size = GENERATE(as<uint64_t>{}, kBlock, 4 * kKiB, kSlab, 5 * kMiB);
  INFO("size " << size);
  CHECK(pool.Reserve(Key(1001), size, kSession, &p) == StatusCode::kResourceExhausted);
  CHECK(pool.Reserve(Key(1001), size, kSession, &p) == StatusCode::kResourceExhausted);
  CHECK(Stats(pool).evictions == 1);
  for (uint64_t n = 0; n < kFill; ++n) {
    if (n != kUnleased) CHECK(Present(pool, n));
  }
  // A released block is evictable again.
  pool.Release(leases[7].ref);
  REQUIRE(pool.Reserve(Key(1002), kBlock, kSession, &p) == StatusCode::kOk);
  CHECK(p.offset == leases[7].offset);
  CHECK_FALSE(Present(pool, 7));
}

TEST_CASE("A pool full of reservations refuses more and evicts nothing", "[daemon][pool]") {
  DramPool pool(Options());
  DramPool::Placement p;
  for (uint64_t n = 0; n < kFill; ++n) {
    REQUIRE(pool.Reserve(Key(n), kBlock, kSession, &p) == StatusCode::kOk);
  }
  const uint64_t size = GENERATE(as<uint64_t>{}, kBlock, 4 * kKiB, 5 * kMiB);
  CHECK(pool.Reserve(Key(kFill), size, kSession, &p) == StatusCode::kResourceExhausted);
  auto stats = Stats(pool);
  CHECK(stats.evictions == 0);
  CHECK(stats.reserved_blocks == kFill);
  // Still all committable.
  for (uint64_t n = 0; n < kFill; ++n)
    REQUIRE(pool.Commit(Key(n), kSession) == StatusCode::kOk);
}

TEST_CASE("A block of another class empties the slab window used longest ago", "[daemon][pool]") {
  DramPool pool(Options());
  (void)Fill(pool);  // slab s holds blocks 32s .. 32s + 31
  constexpr uint64_t kPerSlab = kSlab / kBlock;
  DramPool::Placement p;

  SECTION("a small block takes the oldest slab") {
    REQUIRE(pool.Reserve(Key(1000), 4 * kKiB, kSession, &p) == StatusCode::kOk);
    CHECK(p.offset / kSlab == 0);
    CHECK(Stats(pool).evictions == kPerSlab);
    for (uint64_t n = 0; n < kFill; ++n)
      CHECK(Present(pool, n) == (n >= kPerSlab));
  }
  SECTION("one use of a block saves its whole slab") {
    REQUIRE(Present(pool, 5));
    REQUIRE(pool.Reserve(Key(1000), 4 * kKiB, kSession, &p) == StatusCode::kOk);
    CHECK(p.offset / kSlab == 1);
    for (uint64_t n = 0; n < kFill; ++n)
      CHECK(Present(pool, n) == (n / kPerSlab != 1));
  }
  SECTION("a large block takes the oldest run of slabs") {
    REQUIRE(pool.Reserve(Key(1000), 5 * kMiB, kSession, &p) == StatusCode::kOk);
    CHECK(p.offset == 0);
    CHECK(Stats(pool).evictions == 3 * kPerSlab);
    CHECK(Stats(pool).used_bytes == kPool);
    for (uint64_t n = 0; n < kFill; ++n)
      CHECK(Present(pool, n) == (n >= 3 * kPerSlab));
  }
  SECTION("a large block avoids a recently used slab") {
    REQUIRE(Present(pool, kPerSlab + 3));  // slab 1
    REQUIRE(pool.Reserve(Key(1000), 5 * kMiB, kSession, &p) == StatusCode::kOk);
    CHECK(p.offset == 2 * kSlab);
    for (uint64_t n = 0; n < kFill; ++n) {
      CHECK(Present(pool, n) == (n < 2 * kPerSlab || n >= 5 * kPerSlab));
    }
  }
  SECTION("a leased block keeps its slab out of the window") {
    DramPool::Placement lease;
    REQUIRE(pool.Acquire(Key(0), &lease) == StatusCode::kOk);
    REQUIRE(pool.Reserve(Key(1000), 4 * kKiB, kSession, &p) == StatusCode::kOk);
    CHECK(p.offset / kSlab == 1);
    CHECK(Present(pool, 0));
    pool.Release(lease.ref);
  }
}

TEST_CASE("Under a policy eviction is global: a slab of another class used longer ago goes "
          "before this class's coldest block",
          "[daemon][pool]") {
  // Four slabs of 64 KiB blocks (32 a slab), then four slabs of 1 MiB blocks (2 a slab): every
  // small block was used before every large one.
  const bool policy = GENERATE(true, false);
  INFO((policy ? "reuse" : "no policy (lru)"));
  DramPool pool(Options());
  ReuseAdmission reuse;
  if (policy) pool.set_admission(&reuse);
  for (uint64_t n = 0; n < 128; ++n) (void)Put(pool, n, 64 * kKiB);
  for (uint64_t n = 1000; n < 1008; ++n) (void)Put(pool, n, kMiB);
  REQUIRE(Stats(pool).evictions == 0);
  (void)Put(pool, 1008, kMiB);
  if (policy) {
    // The first small slab (blocks 0..31) went whole, and carved into 1 MiB slots.
    CHECK(Stats(pool).evictions == 32);
    for (uint64_t n = 0; n < 128; ++n) CHECK(Present(pool, n) == (n >= 32));
    for (uint64_t n = 1000; n <= 1008; ++n) CHECK(Present(pool, n));
  } else {
    // Per class, as always: the oldest large block made room.
    CHECK(Stats(pool).evictions == 1);
    CHECK_FALSE(Present(pool, 1000));
    for (uint64_t n = 0; n < 128; ++n) CHECK(Present(pool, n));
  }
}

TEST_CASE("A block an engine is done with is evicted first, also when it was leased at the hint",
          "[daemon][pool][hints]") {
  DramPool pool(Options(4 * kSlab));  // four 2 MiB blocks
  for (uint64_t n = 0; n < 4; ++n) (void)Put(pool, n, kSlab);
  DramPool::Placement lease;
  REQUIRE(pool.Acquire(Key(3), &lease) == StatusCode::kOk);
  CHECK(pool.Hint(Key(3), BlockHint::kDoneWith) == StatusCode::kOk);
  CHECK(pool.Hint(Key(9), BlockHint::kDoneWith) == StatusCode::kNotFound);
  pool.Release(lease.ref);  // the newest block, yet listed at the cold end
  (void)Put(pool, 4, kSlab);
  CHECK_FALSE(Present(pool, 3));
  for (uint64_t n = 0; n < 3; ++n) CHECK(Present(pool, n));
  // Used again, a done-with block is as warm as any. (The lookups above made the order, most
  // recent first: 2, 1, 0, 4.)
  CHECK(pool.Hint(Key(0), BlockHint::kDoneWith) == StatusCode::kOk);
  CHECK(Present(pool, 0));  // now 0, 2, 1, 4
  (void)Put(pool, 5, kSlab);
  CHECK_FALSE(Present(pool, 4));
  CHECK(Present(pool, 0));
}

TEST_CASE("A large block's run is evicted whole and only when unpinned", "[daemon][pool]") {
  DramPool pool(Options());
  const uint64_t big = Put(pool, 1, 6 * kMiB);    // slabs 0..2
  const uint64_t other = Put(pool, 2, 6 * kMiB);  // slabs 3..5
  CHECK(big % kSlab == 0);
  CHECK(other % kSlab == 0);
  CHECK((big + 6 * kMiB <= other || other + 6 * kMiB <= big));
  CHECK(Stats(pool).slab_bytes_in_use == 12 * kMiB);
  DramPool::Placement lease;
  REQUIRE(pool.Acquire(Key(1), &lease) == StatusCode::kOk);
  // Needs three slabs: two are free, so block 2 (unleased) must go, block 1 must stay.
  DramPool::Placement p;
  REQUIRE(pool.Reserve(Key(3), 6 * kMiB, kSession, &p) == StatusCode::kOk);
  CHECK(Present(pool, 1));
  CHECK_FALSE(Present(pool, 2));
  CHECK(p.offset == other);
  // Slabs 6 and 7 are still free; then only a 4 KiB slot in a partial slab is left.
  CHECK(pool.Reserve(Key(4), 4 * kKiB, kSession, &p) == StatusCode::kOk);
  CHECK(pool.Reserve(Key(5), 2 * kMiB, kSession, &p) == StatusCode::kOk);
  CHECK(pool.Reserve(Key(6), 4 * kKiB, kSession, &p) == StatusCode::kOk);
  CHECK(pool.Reserve(Key(7), 8 * kKiB, kSession, &p) == StatusCode::kResourceExhausted);
  CHECK(Stats(pool).evictions == 1);
  pool.Release(lease.ref);
}

TEST_CASE("A full index evicts the least recently used block or refuses when all are pinned",
          "[daemon][pool]") {
  constexpr uint32_t kMaxBlocks = 8;
  DramPool pool(Options(kPool, kMaxBlocks));
  CHECK(Stats(pool).index_capacity == kMaxBlocks);
  for (uint64_t n = 0; n < kMaxBlocks; ++n)
    Put(pool, n, kBlock);
  REQUIRE(Present(pool, 0));  // block 1 is now the oldest
  DramPool::Placement p;

  SECTION("same class") {
    REQUIRE(pool.Reserve(Key(100), kBlock, kSession, &p) == StatusCode::kOk);
    CHECK(Stats(pool).evictions == 1);
    for (uint64_t n = 0; n < kMaxBlocks; ++n)
      CHECK(Present(pool, n) == (n != 1));
  }
  SECTION("another class") {
    REQUIRE(pool.Reserve(Key(100), 4 * kKiB, kSession, &p) == StatusCode::kOk);
    CHECK(Stats(pool).evictions == 1);
    for (uint64_t n = 0; n < kMaxBlocks; ++n)
      CHECK(Present(pool, n) == (n != 1));
  }
  SECTION("all leased") {
    std::vector<DramPool::Placement> leases(kMaxBlocks);
    for (uint64_t n = 0; n < kMaxBlocks; ++n) {
      REQUIRE(pool.Acquire(Key(n), &leases[n]) == StatusCode::kOk);
    }
    CHECK(pool.Reserve(Key(100), kBlock, kSession, &p) == StatusCode::kResourceExhausted);
    CHECK(Stats(pool).evictions == 0);
    for (auto& lease : leases)
      pool.Release(lease.ref);
  }
  SECTION("all reserved") {
    for (uint64_t n = 0; n < kMaxBlocks; ++n)
      REQUIRE(pool.Remove(Key(n)) == StatusCode::kOk);
    for (uint64_t n = 0; n < kMaxBlocks; ++n) {
      REQUIRE(pool.Reserve(Key(200 + n), kBlock, kSession, &p) == StatusCode::kOk);
    }
    CHECK(pool.Reserve(Key(100), kBlock, kSession, &p) == StatusCode::kResourceExhausted);
    CHECK(Stats(pool).evictions == 0);
  }
}

// A randomized model test: thousands of operations against a plain model of what exists.
// Eviction is the pool's choice; the model learns it by probing the evictable blocks (in
// least-recently-used order, which keeps the pool's LRU order) whenever the eviction counter
// moves. After every step: live slots are page-aligned, in bounds, disjoint, and the stats
// match the model exactly.
class PoolModel {
 public:
  enum class State { kReserved, kCommitted, kRemoved };
  struct Block {
    uint64_t key = 0;
    uint64_t offset = 0;
    uint64_t size = 0;
    uint64_t slot = 0;
    State state = State::kReserved;
    uint32_t session = 0;
    BlockRef ref;
    uint32_t leases = 0;
    uint64_t used = 0;  // model tick of the last use, for probing in LRU order
  };
  struct Lease {
    uint64_t serial;
    BlockRef ref;
    uint32_t session;
  };

  PoolModel(const DramPool::Options& options, uint64_t seed)
      : options_(options), classes_(options.slab_bytes), pool_(options), rng_(seed) {}

  void Run(int steps) {
    for (step_ = 0; step_ < steps; ++step_) {
      const uint64_t dice = Below(100);
      if (dice < 35) {
        DoReserve();
      } else if (dice < 50) {
        DoCommitOrAbort(/*commit=*/true);
      } else if (dice < 55) {
        DoCommitOrAbort(/*commit=*/false);
      } else if (dice < 65) {
        DoMatch();
      } else if (dice < 75) {
        DoAcquire();
      } else if (dice < 85) {
        DoRelease();
      } else if (dice < 92) {
        DoRemove();
      } else if (dice < 95) {
        DoStaleAbort();
      } else if (dice < 98) {
        DoTeardown(static_cast<uint32_t>(1 + Below(3)));
      } else {
        for (uint32_t session = 1; session <= 3; ++session)
          DoTeardown(session);
      }
      CheckInvariants();
    }
    INFO("reserves " << reserves_ok_ << ", exhausted " << exhausted_ << ", evictions " << evictions_
                     << ", large " << large_ok_);
    // The run must have reached the interesting states, or it proves little.
    CHECK(reserves_ok_ > 800);
    CHECK(evictions_ > 300);
    CHECK(large_ok_ > 100);
    CHECK(unpinned_full_reserves_ > 20);
  }

 private:
  uint64_t Below(uint64_t n) { return rng_() % n; }
  uint64_t Tick() { return ++tick_; }

  uint64_t RandomSize() {
    const uint64_t slab = options_.slab_bytes;
    const uint64_t dice = Below(100);
    if (dice < 35) return 1 + Below(64 * kKiB);
    if (dice < 60) return 1 + Below(slab);
    if (dice < 72)
      return uint64_t{4096} << Below(
                 static_cast<uint64_t>(std::countr_zero(slab) - 11));  // 4 KiB..slab
    if (dice < 90) return slab + 1 + Below(options_.max_block_bytes - slab);
    if (dice < 95) return 0;
    return options_.max_block_bytes + 1 + Below(slab);
  }
  uint64_t SlotFor(uint64_t size) const {
    const uint8_t cls = classes_.ClassFor(size);
    return cls == SizeClasses::kLarge ? AlignUp(size, options_.slab_bytes)
                                      : classes_.SlotBytes(cls);
  }
  bool AnyPinned() const {
    for (const auto& [serial, b] : blocks_) {
      if (b.state == State::kReserved || b.leases > 0) return true;
    }
    return false;
  }
  Block* Linked(uint64_t key) {
    auto it = by_key_.find(key);
    return it == by_key_.end() ? nullptr : &blocks_.at(it->second);
  }
  // A key that exists in some state most of the time, else a random one.
  uint64_t PickKey(State wanted) {
    std::vector<uint64_t> keys;
    for (const auto& [key, serial] : by_key_) {
      if (blocks_.at(serial).state == wanted) keys.push_back(key);
    }
    if (keys.empty() || Below(5) == 0) return Below(kKeys);
    return keys[Below(keys.size())];
  }
  void Forget(uint64_t serial) {
    const Block& b = blocks_.at(serial);
    if (dead_refs_.size() < 64) dead_refs_.push_back({b.ref, b.session});
    if (auto it = by_key_.find(b.key); it != by_key_.end() && it->second == serial) {
      by_key_.erase(it);
    }
    blocks_.erase(serial);
  }

  void DoReserve() {
    const uint64_t key = Below(5) == 0 ? PickKey(State::kCommitted) : Below(kKeys);
    const uint64_t size = RandomSize();
    const auto session = static_cast<uint32_t>(1 + Below(3));
    const bool pinned = AnyPinned();
    const uint64_t evictions_before = Stats(pool_).evictions;
    DramPool::Placement p;
    const StatusCode code = pool_.Reserve(Key(key), size, session, &p);
    const uint64_t evicted = Stats(pool_).evictions - evictions_before;
    INFO("step " << step_ << ": reserve key " << key << " size " << size);
    if (size == 0 || size > options_.max_block_bytes) {
      REQUIRE(code == StatusCode::kInvalidArgument);
      REQUIRE(evicted == 0);
      return;
    }
    if (Linked(key) != nullptr) {
      REQUIRE(code == StatusCode::kAlreadyExists);
      REQUIRE(evicted == 0);
      return;
    }
    if (evicted > 0) LearnEvictions(evicted);
    if (code == StatusCode::kResourceExhausted) {
      // "No room even after evicting every unpinned block": impossible with nothing pinned.
      REQUIRE(pinned);
      ++exhausted_;
      return;
    }
    REQUIRE(code == StatusCode::kOk);
    ++reserves_ok_;
    if (!pinned && evicted > 0) ++unpinned_full_reserves_;
    if (size > options_.slab_bytes) ++large_ok_;
    REQUIRE(p.size == size);
    Block b;
    b.key = key;
    b.offset = p.offset;
    b.size = size;
    b.slot = SlotFor(size);
    b.session = session;
    b.ref = p.ref;
    b.used = Tick();
    const uint64_t serial = next_serial_++;
    blocks_.emplace(serial, b);
    by_key_[key] = serial;
    REQUIRE(pool_.IsReservedBy(p.ref, session));
    REQUIRE_FALSE(pool_.IsReservedBy(p.ref, session % 3 + 1));
    // Half the writers commit at once, so runs without any pinned block happen.
    if (Below(2) == 0) {
      REQUIRE(pool_.Commit(Key(key), session) == StatusCode::kOk);
      blocks_.at(serial).state = State::kCommitted;
    }
  }

  // Probes the evictable blocks oldest first; those the pool no longer has were evicted.
  void LearnEvictions(uint64_t evicted) {
    std::vector<std::pair<uint64_t, uint64_t>> candidates;  // (used, serial)
    for (const auto& [serial, b] : blocks_) {
      if (b.state == State::kCommitted && b.leases == 0) candidates.emplace_back(b.used, serial);
    }
    std::sort(candidates.begin(), candidates.end());
    uint64_t gone = 0;
    for (const auto& [used, serial] : candidates) {
      Block& b = blocks_.at(serial);
      if (pool_.Match(Key(b.key)) == wire::Tier::kDram) {
        ++hits_;
        b.used = Tick();
      } else {
        ++misses_;
        ++gone;
        Forget(serial);
      }
    }
    REQUIRE(gone == evicted);
    evictions_ += evicted;
  }

  void DoCommitOrAbort(bool commit) {
    const uint64_t key = PickKey(State::kReserved);
    Block* b = Linked(key);
    uint32_t session = static_cast<uint32_t>(1 + Below(3));
    if (b != nullptr && Below(4) != 0) session = b->session;
    const bool expect_ok = b != nullptr && b->state == State::kReserved && b->session == session;
    const StatusCode code =
        commit ? pool_.Commit(Key(key), session) : pool_.Abort(Key(key), session);
    INFO("step " << step_ << (commit ? ": commit key " : ": abort key ") << key);
    REQUIRE(code == (expect_ok ? StatusCode::kOk : StatusCode::kNotFound));
    if (!expect_ok) return;
    if (commit) {
      REQUIRE_FALSE(pool_.IsReservedBy(b->ref, session));
      b->state = State::kCommitted;
      b->used = Tick();
    } else {
      Forget(by_key_.at(key));
    }
  }

  void DoMatch() {
    const uint64_t key = PickKey(State::kCommitted);
    Block* b = Linked(key);
    const bool hit = b != nullptr && b->state == State::kCommitted;
    INFO("step " << step_ << ": match key " << key);
    REQUIRE(pool_.Match(Key(key)) == (hit ? wire::Tier::kDram : wire::Tier::kNone));
    if (hit) {
      ++hits_;
      b->used = Tick();
    } else {
      ++misses_;
    }
  }

  void DoAcquire() {
    const uint64_t key = PickKey(State::kCommitted);
    Block* b = Linked(key);
    const bool hit = b != nullptr && b->state == State::kCommitted;
    DramPool::Placement p;
    INFO("step " << step_ << ": acquire key " << key);
    const StatusCode code = pool_.Acquire(Key(key), &p);
    REQUIRE(code == (hit ? StatusCode::kOk : StatusCode::kNotFound));
    if (!hit) {
      ++misses_;
      return;
    }
    ++hits_;
    REQUIRE(p.offset == b->offset);
    REQUIRE(p.size == b->size);
    ++b->leases;
    b->used = Tick();
    leases_.push_back({by_key_.at(key), p.ref, static_cast<uint32_t>(1 + Below(3))});
  }

  void ReleaseLease(size_t i) {
    const Lease lease = leases_[i];
    leases_.erase(leases_.begin() + static_cast<std::ptrdiff_t>(i));
    pool_.Release(lease.ref);
    Block& b = blocks_.at(lease.serial);
    if (--b.leases > 0) return;
    if (b.state == State::kRemoved) {
      Forget(lease.serial);
    } else {
      b.used = Tick();
    }
  }

  void DoRelease() {
    if (!leases_.empty()) ReleaseLease(Below(leases_.size()));
  }

  void DoRemove() {
    const uint64_t key = PickKey(State::kCommitted);
    Block* b = Linked(key);
    const bool hit = b != nullptr && b->state == State::kCommitted;
    INFO("step " << step_ << ": remove key " << key);
    REQUIRE(pool_.Remove(Key(key)) == (hit ? StatusCode::kOk : StatusCode::kNotFound));
    if (!hit) return;
    const uint64_t serial = by_key_.at(key);
    if (b->leases > 0) {
      b->state = State::kRemoved;
      by_key_.erase(key);
    } else {
      Forget(serial);
    }
  }

  // A ref whose entry was freed (and perhaps reused) must not abort anything.
  void DoStaleAbort() {
    if (dead_refs_.empty()) return;
    const auto& [ref, session] = dead_refs_[Below(dead_refs_.size())];
    REQUIRE_FALSE(pool_.IsReservedBy(ref, session));
    pool_.AbortIfReservedBy(ref, session);
  }

  // Session end: abort its reservations and end its leases.
  void DoTeardown(uint32_t session) {
    std::vector<uint64_t> aborted;
    for (const auto& [serial, b] : blocks_) {
      if (b.state == State::kReserved && b.session == session) {
        pool_.AbortIfReservedBy(b.ref, session);
        aborted.push_back(serial);
      } else if (b.state == State::kReserved) {
        pool_.AbortIfReservedBy(b.ref, session);  // not this session's: no effect
      }
    }
    for (uint64_t serial : aborted)
      Forget(serial);
    for (size_t i = leases_.size(); i-- > 0;) {
      if (leases_[i].session == session) ReleaseLease(i);
    }
  }

  void CheckInvariants() {
    INFO("step " << step_);
    const uint64_t slab = options_.slab_bytes;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    std::set<uint64_t> slabs;
    uint64_t used = 0, committed = 0, reserved = 0, leased = 0;
    for (const auto& [serial, b] : blocks_) {
      REQUIRE(b.offset % 4096 == 0);
      REQUIRE(b.offset + b.slot <= options_.pool_bytes);
      REQUIRE(b.slot >= b.size);
      if (b.size > slab) {
        REQUIRE(b.offset % slab == 0);
      } else {
        REQUIRE(b.offset / slab == (b.offset + b.slot - 1) / slab);  // inside one slab
      }
      ranges.emplace_back(b.offset, b.offset + b.slot);
      for (uint64_t s = b.offset / slab; s * slab < b.offset + b.slot; ++s)
        slabs.insert(s);
      used += b.slot;
      if (b.state == State::kReserved) ++reserved;
      // A removed block still holds its slot until its last lease ends; the pool counts it
      // with the committed blocks, as it does in used_bytes.
      if (b.state != State::kReserved) ++committed;
      if (b.leases > 0) ++leased;
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) {
      INFO("[" << ranges[i - 1].first << ", " << ranges[i - 1].second << ") and ["
               << ranges[i].first << ", " << ranges[i].second << ")");
      REQUIRE(ranges[i - 1].second <= ranges[i].first);
    }
    const wire::StatsReply stats = Stats(pool_);
    REQUIRE(stats.pool_bytes == options_.pool_bytes);
    REQUIRE(stats.used_bytes == used);
    REQUIRE(stats.slab_bytes_in_use == slabs.size() * slab);
    REQUIRE(stats.committed_blocks == committed);
    REQUIRE(stats.reserved_blocks == reserved);
    REQUIRE(stats.leased_blocks == leased);
    REQUIRE(stats.index_capacity == options_.max_blocks);
    REQUIRE(stats.hits == hits_);
    REQUIRE(stats.misses == misses_);
    REQUIRE(stats.evictions == evictions_);
    REQUIRE(blocks_.size() <= options_.max_blocks);
  }

  static constexpr uint64_t kKeys = 300;
  DramPool::Options options_;
  SizeClasses classes_;
  DramPool pool_;
  std::mt19937_64 rng_;
  int step_ = 0;
  uint64_t tick_ = 0;
  uint64_t next_serial_ = 0;
  std::map<uint64_t, Block> blocks_;     // serial -> block, every block holding a slot
  std::map<uint64_t, uint64_t> by_key_;  // key -> serial, blocks visible to the map
  std::vector<Lease> leases_;
  std::vector<std::pair<BlockRef, uint32_t>> dead_refs_;
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0;
  uint64_t reserves_ok_ = 0, exhausted_ = 0, large_ok_ = 0, unpinned_full_reserves_ = 0;
};

TEST_CASE("DramPool keeps live slots disjoint and its stats exact under random operations",
          "[daemon][pool]") {
  struct Config {
    const char* name;
    DramPool::Options options;
  };
  const Config config = GENERATE(Config{"16 MiB pool, 2 MiB slabs", Options()},
                                 Config{"tight index of 8 blocks", Options(kPool, 8)},
                                 Config{"64 KiB slabs", Options(1 * kMiB, 4096, 64 * kKiB)});
  const uint64_t seed = GENERATE(uint64_t{1}, uint64_t{2});
  INFO(config.name << ", seed " << seed);
  PoolModel model(config.options, seed);
  model.Run(4000);
}

}  // namespace
}  // namespace kvtier

namespace kvtier {
namespace {

TEST_CASE("An expired block is a miss at once, frees its slot, and frees its key",
          "[daemon][pool][expiry]") {
  DramPool pool(Options());
  pool.SetNow(100);
  DramPool::Placement p;
  REQUIRE(pool.Reserve(Key(1), kSlab, kSession, &p, /*ttl_s=*/10) == StatusCode::kOk);
  REQUIRE(pool.Commit(Key(1), kSession) == StatusCode::kOk);
  REQUIRE(pool.Reserve(Key(2), kSlab, kSession, &p) == StatusCode::kOk);  // no TTL
  REQUIRE(pool.Commit(Key(2), kSession) == StatusCode::kOk);
  pool.SetNow(109);
  CHECK(Present(pool, 1));
  pool.SetNow(110);  // commit at 100 + 10 s
  CHECK_FALSE(Present(pool, 1));
  CHECK(Present(pool, 2));
  wire::StatsReply s = Stats(pool);
  CHECK(s.expirations == 1);
  CHECK(s.committed_blocks == 1);
  CHECK(s.used_bytes == kSlab);
  // The key is free again.
  CHECK(pool.Reserve(Key(1), kSlab, kSession, &p) == StatusCode::kOk);
}

TEST_CASE("A leased block that expires stays readable to its lease holders until released",
          "[daemon][pool][expiry]") {
  DramPool pool(Options());
  DramPool::Placement p;
  REQUIRE(pool.Reserve(Key(1), kSlab, kSession, &p, 5) == StatusCode::kOk);
  REQUIRE(pool.Commit(Key(1), kSession) == StatusCode::kOk);
  DramPool::Placement lease;
  REQUIRE(pool.Acquire(Key(1), &lease) == StatusCode::kOk);
  pool.SetNow(1000);
  CHECK(pool.Acquire(Key(1), &p) == StatusCode::kNotFound);
  CHECK(Stats(pool).used_bytes == kSlab);  // held by the lease
  pool.Release(lease.ref);
  CHECK(Stats(pool).used_bytes == 0);
  CHECK(Stats(pool).expirations == 1);
}

TEST_CASE("The reaper drops expired blocks nobody looks up, a bounded number per call",
          "[daemon][pool][expiry]") {
  DramPool pool(Options(kPool, /*max_blocks=*/64));
  DramPool::Placement p;
  for (uint64_t n = 0; n < 6; ++n) {
    REQUIRE(pool.Reserve(Key(n), 64 * kKiB, kSession, &p, n < 4 ? 2 : 0) == StatusCode::kOk);
    REQUIRE(pool.Commit(Key(n), kSession) == StatusCode::kOk);
  }
  pool.SetNow(50);
  CHECK(pool.Reap(0) == 0);
  uint32_t dropped = 0;
  for (int call = 0; call < 8; ++call) dropped += pool.Reap(16);  // 8 x 16 = two sweeps of 64
  CHECK(dropped == 4);
  const wire::StatsReply s = Stats(pool);
  CHECK(s.expirations == 4);
  CHECK(s.committed_blocks == 2);
  CHECK(Present(pool, 4));
  CHECK(Present(pool, 5));
}

}  // namespace
}  // namespace kvtier

namespace kvtier {
namespace {

TEST_CASE("Evict without an SSD tier drops every unpinned block, zeroes its slot and keeps "
          "leased and reserved ones",
          "[daemon][pool][evict]") {
  constexpr uint64_t kBytes = 64 * kKiB;
  std::vector<std::byte> memory(kPool, std::byte{0});
  DramPool::Options options = Options();
  options.zero_memory = memory.data();
  DramPool pool(options);
  for (uint64_t n = 0; n < 5; ++n) {
    const uint64_t offset = Put(pool, n, kBytes);
    std::fill_n(memory.begin() + static_cast<std::ptrdiff_t>(offset), kBytes, std::byte{0xab});
  }
  DramPool::Placement lease;
  REQUIRE(pool.Acquire(Key(4), &lease) == StatusCode::kOk);
  DramPool::Placement reserved;
  REQUIRE(pool.Reserve(Key(5), kBytes, kSession, &reserved) == StatusCode::kOk);

  const EvictTiers tiers = GENERATE(EvictTiers::kDram, EvictTiers::kSsd, EvictTiers::kAll);
  const EvictReport r = pool.Evict(tiers);
  if (tiers == EvictTiers::kSsd) {  // nothing is on SSD
    CHECK(r.dram_blocks == 0);
    CHECK(r.ssd_blocks == 0);
    CHECK(r.dropped_blocks == 0);
    CHECK(r.kept_pinned == 0);  // neither pinned block is on SSD either
    CHECK(Stats(pool).committed_blocks == 5);
    for (uint64_t n = 0; n < 5; ++n) CHECK(Present(pool, n));
    return;
  }
  CHECK(r.dram_blocks == 4);
  CHECK(r.dram_bytes == 4 * kBytes);
  CHECK(r.ssd_blocks == 0);
  CHECK(r.ssd_bytes == 0);
  CHECK(r.dropped_blocks == 4);
  CHECK(r.kept_pinned == 2);
  for (uint64_t n = 0; n < 4; ++n) CHECK_FALSE(Present(pool, n));
  CHECK(Present(pool, 4));
  const wire::StatsReply s = Stats(pool);
  CHECK(s.committed_blocks == 1);
  CHECK(s.reserved_blocks == 1);
  CHECK(s.used_bytes == 2 * kBytes);
  CHECK(s.evictions == 4);
  CHECK(s.expirations == 0);
  CHECK_FALSE(pool.empty());
  // Once the lease and the reservation end, nothing is left, and every freed slot is zeros.
  pool.Release(lease.ref);
  pool.AbortIfReservedBy(reserved.ref, kSession);
  CHECK(pool.Evict(tiers).dropped_blocks == 1);
  CHECK(pool.empty());
  CHECK(Stats(pool).used_bytes == 0);
  CHECK(Stats(pool).slab_bytes_in_use == 0);
  CHECK(std::all_of(memory.begin(), memory.end(), [](std::byte b) { return b == std::byte{0}; }));
  // The pool works as before.
  Put(pool, 7, kBytes);
  CHECK(Present(pool, 7));
}

TEST_CASE("A DRAM refusal says which limit, what is pinned and what the block needed",
          "[daemon][pool]") {
  DramPool pool(Options());  // 16 MiB: eight 2 MiB slabs
  DramPool::Placement p;
  SECTION("a full slot class, everything reserved") {
    for (uint64_t n = 0; n < 8; ++n) {
      REQUIRE(pool.Reserve(Key(n), kSlab, kSession, &p) == StatusCode::kOk);
    }
    REQUIRE(pool.Reserve(Key(8), kSlab, kSession, &p) == StatusCode::kResourceExhausted);
    CHECK(pool.last_refusal() ==
          "DRAM pool of 16777216 bytes is full: a 2097152-byte block needs a free 2097152-byte "
          "slot; 16777216 bytes are in use, 16777216 of them pinned (leased, reserved, not yet "
          "on SSD or with I/O in flight), and nothing is evictable");
  }
  SECTION("a large block, every run of slabs holding a leased block") {
    std::vector<DramPool::Placement> leases;
    for (uint64_t n = 0; n < 8; ++n) {
      Put(pool, n, kSlab);
      if (n % 2 == 1) {
        REQUIRE(pool.Acquire(Key(n), &p) == StatusCode::kOk);
        leases.push_back(p);
      }
    }
    REQUIRE(pool.Reserve(Key(8), 3 * kSlab, kSession, &p) == StatusCode::kResourceExhausted);
    CHECK(pool.last_refusal() ==
          "DRAM pool of 16777216 bytes is full: a 6291456-byte block needs 3 adjacent free slabs "
          "(6291456 bytes); 16777216 bytes are in use, 8388608 of them pinned (leased, reserved, "
          "not yet on SSD or with I/O in flight), and evicting the other 8388608 bytes would "
          "free no such space");
    CHECK(Stats(pool).evictions == 0);
    for (const auto& lease : leases) pool.Release(lease.ref);
    CHECK(pool.Reserve(Key(8), 3 * kSlab, kSession, &p) == StatusCode::kOk);
  }
}

TEST_CASE("An index refusal says how many entries there are and what holds them",
          "[daemon][pool]") {
  DramPool pool(Options(kPool, /*max_blocks=*/4));
  DramPool::Placement p;
  for (uint64_t n = 0; n < 4; ++n) {
    if (n < 2) {
      REQUIRE(pool.Reserve(Key(n), 4096, kSession, &p) == StatusCode::kOk);
    } else {
      Put(pool, n, 4096);
      REQUIRE(pool.Acquire(Key(n), &p) == StatusCode::kOk);
    }
  }
  REQUIRE(pool.Reserve(Key(9), 4096, kSession, &p) == StatusCode::kResourceExhausted);
  CHECK(pool.last_refusal() ==
        "block index is full (4 of 4 entries, none evictable: 2 reserved and 2 leased blocks; "
        "raise max_blocks)");
}

}  // namespace
}  // namespace kvtier

namespace kvtier {
namespace {

bool AllZero(const std::vector<std::byte>& memory, uint64_t offset, uint64_t bytes) {
  return std::all_of(memory.begin() + static_cast<std::ptrdiff_t>(offset),
                     memory.begin() + static_cast<std::ptrdiff_t>(offset + bytes),
                     [](std::byte b) { return b == std::byte{0}; });
}

TEST_CASE("Freed slots past a round's scrub budget wait, pinned, until later rounds zero them, "
          "a reserve that needs them waits too and then gets zeros",
          "[daemon][pool][scrub]") {
  constexpr uint64_t kSlot = 2 * kMiB;  // one slab each: 8 fill the pool
  constexpr uint64_t kBudget = 3 * kMiB;
  std::vector<std::byte> memory(kPool, std::byte{0});
  DramPool::Options options = Options();
  options.zero_memory = memory.data();
  options.scrub_bytes_per_round = kBudget;
  DramPool pool(options);
  pool.BeginScrubRound();
  std::vector<DramPool::Placement> slots(8);
  for (uint64_t n = 0; n < 8; ++n) {
    REQUIRE(pool.Reserve(Key(n), kSlot, kSession, &slots[n]) == StatusCode::kOk);
    std::fill_n(memory.begin() + static_cast<std::ptrdiff_t>(slots[n].offset), kSlot,
                std::byte{0xab});
  }
  // One round: the whole pool is aborted at once. The first slot fits the budget and is zeroed
  // now; the other seven wait, still counted in use.
  for (uint64_t n = 0; n < 8; ++n) REQUIRE(pool.Abort(Key(n), kSession) == StatusCode::kOk);
  CHECK(AllZero(memory, slots[0].offset, kSlot));
  CHECK_FALSE(AllZero(memory, slots[7].offset, kSlot));
  CHECK(pool.scrub_pending_bytes() == 7 * kSlot);
  CHECK(Stats(pool).used_bytes == 7 * kSlot);
  CHECK_FALSE(pool.empty());
  // A reserve in the same round takes the free slot; the next finds only waiting slots, and
  // uses the 1 MiB left of the budget before it says "wait".
  DramPool::Placement got;
  REQUIRE(pool.Reserve(Key(100), kSlot, kSession, &got) == StatusCode::kOk);
  CHECK(AllZero(memory, got.offset, kSlot));
  CHECK(pool.Reserve(Key(101), kSlot, kSession, &got) == StatusCode::kUnavailable);
  CHECK(pool.scrub_pending_bytes() == 7 * kSlot - kMiB);
  // Later rounds zero the rest (a 2 MiB slot over two rounds where the budget ends inside it);
  // the waiting reserve then gets a zeroed slot and no slot is lost.
  int rounds = 0;
  while (pool.scrub_pending_bytes() > 0) {
    pool.BeginScrubRound();
    CHECK(pool.Scrub() <= kBudget);
    ++rounds;
  }
  CHECK(rounds == 5);  // 13 MiB at 3 MiB per round
  CHECK(Stats(pool).used_bytes == kSlot);  // Key(100)'s
  pool.BeginScrubRound();
  REQUIRE(pool.Reserve(Key(101), kSlot, kSession, &got) == StatusCode::kOk);
  CHECK(AllZero(memory, got.offset, kSlot));
  for (uint64_t n = 102; n < 108; ++n) {
    REQUIRE(pool.Reserve(Key(n), kSlot, kSession, &got) == StatusCode::kOk);
    CHECK(AllZero(memory, got.offset, kSlot));
  }
  CHECK(pool.Reserve(Key(108), kSlot, kSession, &got) == StatusCode::kResourceExhausted);
}

TEST_CASE("Eviction under a spent scrub budget frees its victims' slots only once zeroed, and "
          "evicts no more meanwhile",
          "[daemon][pool][scrub]") {
  constexpr uint64_t kSlot = 64 * kKiB;
  std::vector<std::byte> memory(kPool, std::byte{0});
  DramPool::Options options = Options();
  options.zero_memory = memory.data();
  options.scrub_bytes_per_round = kSlot;  // one slot per round
  DramPool pool(options);
  const uint64_t blocks = kPool / kSlot;
  for (uint64_t n = 0; n < blocks; ++n) {
    pool.BeginScrubRound();
    const uint64_t offset = Put(pool, n, kSlot);
    std::fill_n(memory.begin() + static_cast<std::ptrdiff_t>(offset), kSlot, std::byte{0xcd});
  }
  // The pool is full of clean blocks. Two removals in one round: the first slot is zeroed at
  // once, the second waits, its budget spent.
  pool.BeginScrubRound();
  REQUIRE(pool.Remove(Key(blocks - 1)) == StatusCode::kOk);
  REQUIRE(pool.Remove(Key(blocks - 2)) == StatusCode::kOk);
  DramPool::Placement got;
  REQUIRE(pool.Reserve(Key(1000), kSlot, kSession, &got) == StatusCode::kOk);
  CHECK(AllZero(memory, got.offset, kSlot));
  CHECK(pool.Reserve(Key(1001), kSlot, kSession, &got) == StatusCode::kUnavailable);
  CHECK(Stats(pool).evictions == 0);  // the queued slot comes first: nothing evicted
  pool.BeginScrubRound();
  REQUIRE(pool.Reserve(Key(1001), kSlot, kSession, &got) == StatusCode::kOk);
  CHECK(AllZero(memory, got.offset, kSlot));
  CHECK(Stats(pool).evictions == 0);
  // The next one evicts block 0, whose slot waits for the next round (this one's budget went
  // to the slot above).
  CHECK(pool.Reserve(Key(1002), kSlot, kSession, &got) == StatusCode::kUnavailable);
  CHECK(Stats(pool).evictions == 1);
  CHECK_FALSE(Present(pool, 0));
  CHECK(pool.Reserve(Key(1002), kSlot, kSession, &got) == StatusCode::kUnavailable);
  CHECK(Stats(pool).evictions == 1);  // waiting, not evicting more
  pool.BeginScrubRound();
  REQUIRE(pool.Reserve(Key(1002), kSlot, kSession, &got) == StatusCode::kOk);
  CHECK(AllZero(memory, got.offset, kSlot));
  CHECK(Stats(pool).evictions == 1);
}

}  // namespace
}  // namespace kvtier
