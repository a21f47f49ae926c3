#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "daemon/tier/reference_policies.h"
#include "daemon/tier/replay.h"

namespace kvtier::tier {
namespace {

std::vector<TraceRequest> Requests(const std::vector<std::vector<uint64_t>>& ids) {
  std::vector<TraceRequest> out;
  for (const auto& r : ids) out.push_back(TraceRequest{0, 0, 0, r});
  return out;
}

// Prefix-chained requests: 30 families of up to 12 blocks, shared prefixes within a family.
std::vector<TraceRequest> Families(uint64_t seed, int requests) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<uint64_t>> ids;
  for (int i = 0; i < requests; ++i) {
    const uint64_t family = rng() % 30;
    const uint64_t depth = 1 + rng() % 12;
    std::vector<uint64_t> r;
    for (uint64_t d = 0; d < depth; ++d) r.push_back(family * 100 + d);
    ids.push_back(r);
  }
  return Requests(ids);
}

ReplayResult Replay(const std::vector<TraceRequest>& trace, uint64_t dram, uint64_t ssd,
                    TierPolicy policy = TierPolicy::kReuse) {
  ReplayResult r;
  ReplayOptions o;
  o.dram_blocks = dram;
  o.ssd_blocks = ssd;
  o.policy = policy;
  const Status s = ReplayThroughPool(trace, o, &r);
  INFO(s.message());
  REQUIRE(s.ok());
  return r;
}

TEST_CASE("Replay through the pool: room for everything means every reread hits, in DRAM") {
  const auto trace = Families(1, 300);
  const ReplayResult r = Replay(trace, 1000, 0);
  const ReplayCounts all = ReplayLru(trace, 1000);
  CHECK(r.requests == 300);
  CHECK(r.block_requests == all.block_requests);
  CHECK(r.unique_blocks == all.unique_blocks);
  CHECK(r.block_hits == all.block_hits);
  CHECK(r.usable_prefix_hits == all.usable_prefix_hits);
  CHECK(r.dram_hits == r.block_hits);
  CHECK(r.ssd_hits == 0);
  CHECK(r.ssd_write_blocks == 0);
  CHECK(r.stores_refused == 0);
}

TEST_CASE("Replay through the pool: the DRAM tier alone is the LRU it is documented to be") {
  // The pool's eviction with one size class and no SSD tier is least-recently-used; lookups
  // touch blocks in a slightly different order than the reference (hits after a miss are
  // touched at lookup), so the ratios agree closely, not exactly.
  const auto trace = Families(2, 2000);
  for (uint64_t capacity : {40ULL, 120ULL, 250ULL}) {
    INFO("capacity " << capacity);
    const ReplayResult r = Replay(trace, capacity, 0);
    const ReplayCounts lru = ReplayLru(trace, capacity);
    CHECK(r.usable_prefix_hit_ratio() == Approx(lru.usable_prefix_hit_ratio()).margin(0.01));
    CHECK(r.usable_prefix_hits <= ReplayMin(trace, capacity).usable_prefix_hits);
  }
}

TEST_CASE("Replay through the pool: blocks demoted to SSD come back as SSD hits") {
  // DRAM for 8 blocks, SSD for 1000: what DRAM evicts is found on SSD and promoted.
  const auto trace = Families(3, 600);
  const ReplayResult r = Replay(trace, 8, 1000);
  CHECK(r.ssd_write_blocks > 0);
  CHECK(r.ssd_hits > 0);
  CHECK(r.ssd_read_blocks > 0);
  CHECK(r.dram_hits + r.ssd_hits == r.block_hits);
  // Everything fits across the tiers: every reread hits, as with DRAM for everything.
  CHECK(r.block_hits == Replay(trace, 1000, 0).block_hits);
  // And the small DRAM tier alone keeps far less.
  CHECK(Replay(trace, 8, 0).block_hits < r.block_hits / 2);
}

TEST_CASE("Replay through the pool: a full SSD tier drops its oldest records") {
  const auto trace = Families(4, 600);
  const ReplayResult small = Replay(trace, 8, 40);
  const ReplayResult large = Replay(trace, 8, 1000);
  CHECK(small.ssd_hits < large.ssd_hits);
  CHECK(small.block_hits <= ReplayMin(trace, 48).block_hits);
}

TEST_CASE("Replay through the pool: under the lru policy every block is written to SSD") {
  const auto trace = Families(5, 600);
  const ReplayResult lru = Replay(trace, 8, 40, TierPolicy::kLru);
  // All but what DRAM still holds, and again each time a dropped record's block is stored again.
  CHECK(lru.ssd_write_blocks >= lru.unique_blocks - 8);
  CHECK(lru.ssd_write_blocks > Replay(trace, 8, 40, TierPolicy::kReuse).ssd_write_blocks);
}

TEST_CASE("Replay through the pool: the reuse policy keeps one-time blocks off a full SSD and "
          "so holds what is reused") {
  // A hot set of 20 families (200 blocks in all, each request one family's 10 blocks) among
  // a scan of blocks used once. The scan flushes an LRU SSD tier of 150 blocks every few
  // requests; the reuse policy writes a scan block only while the SSD has room.
  std::mt19937_64 rng(6);
  std::vector<std::vector<uint64_t>> ids;
  uint64_t next_scan = 1'000'000;
  for (int i = 0; i < 3000; ++i) {
    std::vector<uint64_t> r;
    if (i % 2 == 0) {
      const uint64_t family = rng() % 20;
      for (uint64_t d = 0; d < 10; ++d) r.push_back(family * 100 + d);
    } else {
      for (int d = 0; d < 10; ++d) r.push_back(next_scan++);
    }
    ids.push_back(r);
  }
  const auto trace = Requests(ids);
  const ReplayResult lru = Replay(trace, 40, 160, TierPolicy::kLru);
  const ReplayResult reuse = Replay(trace, 40, 160, TierPolicy::kReuse);
  INFO("lru " << lru.usable_prefix_hit_ratio() << " (" << lru.ssd_write_blocks
              << " writes), reuse " << reuse.usable_prefix_hit_ratio() << " ("
              << reuse.ssd_write_blocks << " writes)");
  CHECK(reuse.usable_prefix_hit_ratio() > lru.usable_prefix_hit_ratio() + 0.1);
  CHECK(reuse.ssd_write_blocks * 4 < lru.ssd_write_blocks);
  CHECK(reuse.usable_prefix_hits <= ReplayMin(trace, 200).usable_prefix_hits);
}

TEST_CASE("Replay through the pool refuses a DRAM tier of no blocks") {
  ReplayResult r;
  ReplayOptions o;
  o.ssd_blocks = 10;
  const Status s = ReplayThroughPool(Requests({{1}}), o, &r);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("DRAM tier"));
}

}  // namespace
}  // namespace kvtier::tier
