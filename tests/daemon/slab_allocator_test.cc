#include "daemon/pool/slab_allocator.h"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <optional>
#include <set>
#include <vector>

#include <catch2/catch.hpp>

#include "daemon/pool/size_classes.h"
#include "ipc/base/units.h"

namespace kvtier {
namespace {

TEST_CASE("SizeClasses has every power of two from 4 KiB to the slab as an exact class",
          "[daemon][pool]") {
  const uint64_t slab = GENERATE(16 * kKiB, 2 * kMiB, 1 * kGiB);
  const SizeClasses classes(slab);
  CHECK(classes.slab_bytes() == slab);
  for (uint64_t p = 4 * kKiB; p <= slab; p *= 2) {
    INFO("slab " << slab << ", size " << p);
    const uint8_t cls = classes.ClassFor(p);
    REQUIRE(cls < classes.count());
    CHECK(classes.SlotBytes(cls) == p);
  }
  // The largest class is the slab itself; one byte more is large.
  CHECK(classes.SlotBytes(static_cast<uint8_t>(classes.count() - 1)) == slab);
  CHECK(classes.ClassFor(slab + 1) == SizeClasses::kLarge);
  CHECK(classes.ClassFor(10 * slab) == SizeClasses::kLarge);
}

TEST_CASE("SizeClasses slots are 4 KiB multiples, ascending, and waste at most 25%",
          "[daemon][pool]") {
  const uint64_t slab = GENERATE(16 * kKiB, 64 * kKiB, 2 * kMiB, 1 * kGiB);
  const SizeClasses classes(slab);
  for (uint8_t c = 0; c < classes.count(); ++c) {
    INFO("class " << int{c});
    CHECK(classes.SlotBytes(c) % 4096 == 0);
    CHECK(classes.SlotBytes(c) <= slab);
    CHECK(classes.SlotsPerSlab(c) == slab / classes.SlotBytes(c));
    CHECK(classes.SlotsPerSlab(c) >= 1);
    if (c > 0) CHECK(classes.SlotBytes(c) > classes.SlotBytes(static_cast<uint8_t>(c - 1)));
  }
  // Every size class boundary and its neighbours, plus a sweep of 4 KiB steps and odd sizes.
  std::vector<uint64_t> sizes = {1, 4095, 4096, 4097, 12 * kKiB + 1};
  for (uint8_t c = 0; c < classes.count(); ++c) {
    for (int64_t d : {-1, 0, 1}) {
      sizes.push_back(static_cast<uint64_t>(static_cast<int64_t>(classes.SlotBytes(c)) + d));
    }
  }
  for (uint64_t x = 4096; x <= std::min(slab, 4 * kMiB); x += 4096 - 1)
    sizes.push_back(x);
  for (uint64_t x : sizes) {
    if (x == 0 || x > slab) continue;
    const uint8_t cls = classes.ClassFor(x);
    INFO("slab " << slab << ", size " << x);
    REQUIRE(cls < classes.count());
    const uint64_t slot = classes.SlotBytes(cls);
    CHECK(slot >= x);
    // The smallest class that fits: the one below is too small.
    if (cls > 0) CHECK(classes.SlotBytes(static_cast<uint8_t>(cls - 1)) < x);
    if (x >= 16 * kKiB) CHECK((slot - x) * 4 <= slot);
  }
}

TEST_CASE("SizeClasses has p, 1.25p, 1.5p and 1.75p for every power of two from 16 KiB",
          "[daemon][pool]") {
  const uint64_t slab = GENERATE(16 * kKiB, 2 * kMiB, 1 * kGiB);
  const SizeClasses classes(slab);
  std::vector<uint64_t> expected = {4 * kKiB, 8 * kKiB, 12 * kKiB};
  for (uint64_t p = 16 * kKiB; p <= slab; p *= 2) {
    for (uint64_t quarters = 4; quarters <= 7; ++quarters) {
      if (p / 4 * quarters <= slab) expected.push_back(p / 4 * quarters);
    }
  }
  std::vector<uint64_t> actual;
  for (uint8_t c = 0; c < classes.count(); ++c)
    actual.push_back(classes.SlotBytes(c));
  CHECK(actual == expected);
}

struct Allocator {
  explicit Allocator(uint64_t slab, uint64_t pool) : classes(slab), slabs(&classes, pool) {}
  SizeClasses classes;
  SlabAllocator slabs;
};

TEST_CASE("SlabAllocator carves a slab into distinct slots before taking another",
          "[daemon][pool]") {
  constexpr uint64_t kSlab = 64 * kKiB;
  Allocator a(kSlab, 4 * kSlab);
  CHECK(a.slabs.slab_count() == 4);
  CHECK(a.slabs.free_slabs() == 4);
  const uint64_t slot = GENERATE(4 * kKiB, 12 * kKiB, 20 * kKiB, 64 * kKiB);
  const uint8_t cls = a.classes.ClassFor(slot);
  const uint32_t per_slab = a.classes.SlotsPerSlab(cls);
  std::set<uint64_t> offsets;
  for (uint32_t i = 0; i < per_slab; ++i) {
    auto offset = a.slabs.AllocSmall(cls);
    REQUIRE(offset);
    CHECK(*offset % 4096 == 0);
    CHECK(*offset % slot == 0);
    // All in the first slab taken, and each slot ends inside it.
    if (!offsets.empty()) CHECK(*offset / kSlab == *offsets.begin() / kSlab);
    CHECK((*offset % kSlab) + slot <= kSlab);
    offsets.insert(*offset);
  }
  CHECK(offsets.size() == per_slab);
  CHECK(a.slabs.free_slabs() == 3);
  auto next = a.slabs.AllocSmall(cls);
  REQUIRE(next);
  CHECK(*next / kSlab != *offsets.begin() / kSlab);
  CHECK(a.slabs.free_slabs() == 2);

  SECTION("a freed slot is reused before a free slab is carved") {
    const uint64_t freed = *std::next(offsets.begin(), per_slab / 2);
    a.slabs.Free(freed);
    offsets.erase(freed);
    auto again = a.slabs.AllocSmall(cls);
    REQUIRE(again);
    CHECK(a.slabs.free_slabs() == 2);
    CHECK(*again != *next);
    CHECK(offsets.count(*again) == 0);
  }
  SECTION("a slab whose last slot is freed is free again, for any class") {
    for (uint64_t offset : offsets)
      a.slabs.Free(offset);
    CHECK(a.slabs.free_slabs() == 3);
    a.slabs.Free(*next);
    CHECK(a.slabs.free_slabs() == 4);
    // Now the whole pool is one large run.
    auto run = a.slabs.AllocLarge(4);
    REQUIRE(run);
    CHECK(*run == 0);
    CHECK(a.slabs.free_slabs() == 0);
  }
}

TEST_CASE("SlabAllocator runs out of slots and slabs cleanly", "[daemon][pool]") {
  constexpr uint64_t kSlab = 16 * kKiB;
  Allocator a(kSlab, 2 * kSlab);
  const uint8_t cls = a.classes.ClassFor(8 * kKiB);
  std::set<uint64_t> offsets;
  for (int i = 0; i < 4; ++i) {
    auto offset = a.slabs.AllocSmall(cls);
    REQUIRE(offset);
    offsets.insert(*offset);
  }
  CHECK(offsets == std::set<uint64_t>{0, 8 * kKiB, 16 * kKiB, 24 * kKiB});
  CHECK_FALSE(a.slabs.AllocSmall(cls));
  CHECK_FALSE(a.slabs.AllocSmall(a.classes.ClassFor(4 * kKiB)));
  CHECK_FALSE(a.slabs.AllocLarge(1));
  CHECK(a.slabs.free_slabs() == 0);
}

TEST_CASE("SlabAllocator AllocLarge takes the first run of free slabs", "[daemon][pool]") {
  constexpr uint64_t kSlab = 16 * kKiB;
  Allocator a(kSlab, 8 * kSlab);
  const uint8_t small = a.classes.ClassFor(16 * kKiB);  // one slot per slab
  CHECK_FALSE(a.slabs.AllocLarge(0));
  CHECK_FALSE(a.slabs.AllocLarge(9));
  // Slabs: [S L L S . . . .]
  auto s0 = a.slabs.AllocSmall(small);
  auto l1 = a.slabs.AllocLarge(2);
  auto s3 = a.slabs.AllocSmall(small);
  REQUIRE((s0 && l1 && s3));
  CHECK(*s0 == 0);
  CHECK(*l1 == 1 * kSlab);
  CHECK(*s3 == 3 * kSlab);
  CHECK(a.slabs.free_slabs() == 4);
  CHECK_FALSE(a.slabs.AllocLarge(5));
  auto l4 = a.slabs.AllocLarge(4);
  REQUIRE(l4);
  CHECK(*l4 == 4 * kSlab);
  CHECK_FALSE(a.slabs.AllocLarge(1));
  // Freeing a run frees all of its slabs; a longer run then fits across the hole.
  a.slabs.Free(*l1);
  CHECK(a.slabs.free_slabs() == 2);
  CHECK_FALSE(a.slabs.AllocLarge(3));
  a.slabs.Free(*s3);
  auto l13 = a.slabs.AllocLarge(3);
  REQUIRE(l13);
  CHECK(*l13 == 1 * kSlab);
}

TEST_CASE("SlabAllocator picks the unpinned window whose newest use is oldest", "[daemon][pool]") {
  constexpr uint64_t kSlab = 16 * kKiB;
  Allocator a(kSlab, 4 * kSlab);
  const uint8_t half = a.classes.ClassFor(8 * kKiB);
  // Two slots in each of the four slabs.
  std::vector<uint64_t> slot;
  for (int i = 0; i < 8; ++i)
    slot.push_back(*a.slabs.AllocSmall(half));
  std::sort(slot.begin(), slot.end());
  for (uint32_t i = 0; i < 8; ++i)
    a.slabs.SetOwner(slot[i], 100 + i);
  for (uint32_t i = 0; i < 8; ++i)
    CHECK(a.slabs.Owner(slot[i]) == 100 + i);
  // Slab ages by their newest use: slab 0 -> 50, slab 1 -> 20, slab 2 -> 30, slab 3 -> 40.
  a.slabs.Touch(slot[0], 10);
  a.slabs.Touch(slot[1], 50);
  a.slabs.Touch(slot[2], 20);
  a.slabs.Touch(slot[4], 30);
  a.slabs.Touch(slot[6], 40);

  CHECK(a.slabs.FindVictimWindow(1) == std::optional<uint32_t>(1));
  CHECK(a.slabs.FindVictimWindow(2) == std::optional<uint32_t>(1));  // max(20, 30) is least
  CHECK(a.slabs.FindVictimWindow(4) == std::optional<uint32_t>(0));
  CHECK_FALSE(a.slabs.FindVictimWindow(5));
  CHECK_FALSE(a.slabs.FindVictimWindow(0));

  SECTION("a pinned block keeps its slab out of every window") {
    a.slabs.Pin(slot[3]);
    CHECK(a.slabs.FindVictimWindow(1) == std::optional<uint32_t>(2));
    CHECK(a.slabs.FindVictimWindow(2) == std::optional<uint32_t>(2));
    CHECK_FALSE(a.slabs.FindVictimWindow(4));
    a.slabs.Unpin(slot[3]);
    CHECK(a.slabs.FindVictimWindow(1) == std::optional<uint32_t>(1));
  }
  SECTION("CollectBlocks lists every block in the window") {
    std::vector<uint64_t> blocks;
    a.slabs.CollectBlocks(1, 2, &blocks);
    std::sort(blocks.begin(), blocks.end());
    CHECK(blocks == std::vector<uint64_t>{slot[2], slot[3], slot[4], slot[5]});
    a.slabs.Free(slot[3]);
    blocks.clear();
    a.slabs.CollectBlocks(1, 1, &blocks);
    CHECK(blocks == std::vector<uint64_t>{slot[2]});
  }
}

TEST_CASE("SlabAllocator windows over large runs evict whole runs", "[daemon][pool]") {
  constexpr uint64_t kSlab = 16 * kKiB;
  Allocator a(kSlab, 4 * kSlab);
  auto run = a.slabs.AllocLarge(3);  // slabs 0..2
  REQUIRE(run);
  auto single = a.slabs.AllocSmall(a.classes.ClassFor(kSlab));  // slab 3
  REQUIRE(single);
  a.slabs.Touch(*run, 5);
  a.slabs.Touch(*single, 9);
  std::vector<uint64_t> blocks;
  // A window that starts inside the run names the run's head, which lies before it.
  a.slabs.CollectBlocks(2, 2, &blocks);
  std::sort(blocks.begin(), blocks.end());
  CHECK(blocks == std::vector<uint64_t>{*run, *single});
  // Pinning the run's head pins its tail slabs too.
  a.slabs.Pin(*run);
  CHECK(a.slabs.FindVictimWindow(1) == std::optional<uint32_t>(3));
  CHECK_FALSE(a.slabs.FindVictimWindow(2));
  a.slabs.Unpin(*run);
  CHECK(a.slabs.FindVictimWindow(1) == std::optional<uint32_t>(0));
  CHECK(a.slabs.FindVictimWindow(2) == std::optional<uint32_t>(0));
}

}  // namespace
}  // namespace kvtier
