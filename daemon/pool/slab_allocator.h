// SlabAllocator: hands out page-aligned slots of one tenant's pool, without touching its bytes.
//
// The pool is an array of equal slabs. A slab is free, carved into slots of one size class
// (a bitmap per slab marks used slots), or part of a run of slabs holding one large block.
// A slab whose last slot is freed becomes free again, so memory moves between classes.
// Per slab it also keeps what eviction needs: how many of its blocks are pinned (reserved or
// leased: such a slab is never a victim) and when any of its blocks was last used.
// Allocation is O(1) from a partial slab; carving a fresh slab scans the slab table.
// Not thread-safe: owned by one DramPool, used on the daemon's event-loop thread.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "daemon/pool/size_classes.h"

namespace kvtier {

class SlabAllocator {
 public:
  static constexpr uint32_t kNoOwner = UINT32_MAX;

  SlabAllocator(const SizeClasses* classes, uint64_t pool_bytes);

  // A slot of class `cls` from a partial slab, else from a free slab; nullopt if neither.
  std::optional<uint64_t> AllocSmall(uint8_t cls);
  // The first run of `slabs` free slabs; nullopt if there is none.
  std::optional<uint64_t> AllocLarge(uint32_t slabs);
  // Start-up, adopting the blocks of a previous process (DramPool::Adopt): allocates exactly
  // the slot of class `cls` at `offset` (carving its slab for `cls` if the slab is free), or for
  // kLarge the run of `slabs` slabs that starts there. False, changing nothing, if `offset` is
  // not such a slot's start or the slot (or any slab of the run) is already taken.
  bool AllocAt(uint64_t offset, uint8_t cls, uint32_t slabs = 0);
  // Calls `fn(offset, bytes)` for each range of the pool no slot or run holds (free slabs,
  // free slots, the tail of a slab past its last slot), in offset order.
  template <typename Fn>
  void ForEachUnallocated(Fn&& fn) const;
  // Frees the slot or run that starts at `offset`.
  void Free(uint64_t offset);

  // The block (an index entry id) that owns the allocated slot or run at `offset`.
  void SetOwner(uint64_t offset, uint32_t owner) {
    owners_[SlabOf(offset)][SlotOf(offset)] = owner;
  }
  uint32_t Owner(uint64_t offset) const { return owners_[SlabOf(offset)][SlotOf(offset)]; }
  void Pin(uint64_t offset) { ++slabs_[SlabOf(offset)].pinned; }
  void Unpin(uint64_t offset);
  void Touch(uint64_t offset, uint64_t tick) { slabs_[SlabOf(offset)].last_access = tick; }
  // The newest use of any block in the slab (or large run) that holds `offset`.
  uint64_t LastAccess(uint64_t offset) const {
    const Slab& s = slabs_[SlabOf(offset)];
    return s.kind == Kind::kLargeTail ? slabs_[s.run].last_access : s.last_access;
  }
  // No block in that slab (or large run) is pinned.
  bool EvictableAt(uint64_t offset) const { return Evictable(SlabOf(offset)); }

  // The first slab of the `slabs` consecutive slabs that are cheapest to empty: no pinned
  // block in them, and the most recent use among them the oldest. nullopt if every window holds
  // a pinned block.
  std::optional<uint32_t> FindVictimWindow(uint32_t slabs) const;
  // Appends the offsets of the blocks that occupy slabs [first, first + count).
  void CollectBlocks(uint32_t first, uint32_t count, std::vector<uint64_t>* out) const;

  uint32_t slab_count() const { return static_cast<uint32_t>(slabs_.size()); }
  uint32_t free_slabs() const { return free_slabs_; }
  uint64_t slab_bytes() const { return classes_->slab_bytes(); }
  // Bytes of the tables this allocator keeps (for the index-bytes-per-block figure).
  uint64_t MemoryBytes() const;

 private:
  static constexpr uint64_t kGranule = SizeClasses::kGranuleBytes;
  static constexpr uint32_t kNil = UINT32_MAX;
  enum class Kind : uint8_t { kFree, kSmall, kLargeHead, kLargeTail };
  struct Slab {
    Kind kind = Kind::kFree;
    uint8_t cls = 0;
    uint32_t used = 0;    // small: used slots
    uint32_t pinned = 0;  // blocks in it that are reserved or leased
    uint32_t run = 0;     // large head: slabs in the run; large tail: index of the head
    uint32_t prev = kNil, next = kNil;  // the class's list of partial slabs
    uint64_t last_access = 0;
  };

  uint32_t SlabOf(uint64_t offset) const { return static_cast<uint32_t>(offset / slab_bytes()); }
  // The slot index of `offset` within its slab (0 for a large block's head).
  uint64_t SlotOf(uint64_t offset) const;
  void Carve(uint32_t slab, Kind kind, uint8_t cls, uint32_t slots);
  uint64_t* Bitmap(uint32_t slab) { return &bitmap_[size_t{slab} * words_per_slab_]; }
  const uint64_t* Bitmap(uint32_t slab) const { return &bitmap_[size_t{slab} * words_per_slab_]; }
  std::optional<uint32_t> TakeFreeSlab();
  void ReleaseSlab(uint32_t slab);
  void PartialPush(uint32_t slab);
  void PartialRemove(uint32_t slab);
  bool Evictable(uint32_t slab) const;

  const SizeClasses* classes_;
  std::vector<Slab> slabs_;
  std::vector<uint64_t> bitmap_;
  // Per slab, the owner of each slot: sized to the slab's slots when it is carved and freed
  // with it, so this costs 4 bytes per block, whatever the pool size.
  std::vector<std::vector<uint32_t>> owners_;
  uint64_t owner_slots_ = 0;
  std::vector<uint32_t> partial_head_;
  uint32_t words_per_slab_;
  uint32_t free_slabs_;
  uint32_t free_hint_ = 0;
};

template <typename Fn>
void SlabAllocator::ForEachUnallocated(Fn&& fn) const {
  for (uint32_t i = 0; i < slab_count(); ++i) {
    const Slab& s = slabs_[i];
    const uint64_t base = uint64_t{i} * slab_bytes();
    if (s.kind == Kind::kFree) {
      fn(base, slab_bytes());
    } else if (s.kind == Kind::kSmall) {
      const uint64_t slot_bytes = classes_->SlotBytes(s.cls);
      const uint32_t slots = classes_->SlotsPerSlab(s.cls);
      const uint64_t* bits = Bitmap(i);
      for (uint32_t slot = 0; slot < slots; ++slot) {
        if ((bits[slot / 64] >> (slot % 64) & 1) == 0) fn(base + slot * slot_bytes, slot_bytes);
      }
      if (slots * slot_bytes < slab_bytes()) {
        fn(base + slots * slot_bytes, slab_bytes() - slots * slot_bytes);
      }
    }
  }
}

}  // namespace kvtier
