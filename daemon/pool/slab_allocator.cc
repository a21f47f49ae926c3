#include "daemon/pool/slab_allocator.h"

#include <algorithm>
#include <bit>

#include "ipc/base/check.h"

namespace kvtier {

SlabAllocator::SlabAllocator(const SizeClasses* classes, uint64_t pool_bytes)
    : classes_(classes),
      slabs_(pool_bytes / classes->slab_bytes()),
      owners_(slabs_.size()),
      partial_head_(classes->count(), kNil),
      words_per_slab_(static_cast<uint32_t>((classes->slab_bytes() / kGranule + 63) / 64)),
      free_slabs_(static_cast<uint32_t>(slabs_.size())) {
  KVT_CHECK(pool_bytes % classes->slab_bytes() == 0 && !slabs_.empty());
  bitmap_.assign(slabs_.size() * words_per_slab_, 0);
}

uint64_t SlabAllocator::MemoryBytes() const {
  return slabs_.size() * (sizeof(Slab) + sizeof(std::vector<uint32_t>)) +
         bitmap_.size() * sizeof(uint64_t) + owner_slots_ * sizeof(uint32_t);
}

uint64_t SlabAllocator::SlotOf(uint64_t offset) const {
  const uint32_t slab = SlabOf(offset);
  const Slab& s = slabs_[slab];
  KVT_DCHECK(s.kind == Kind::kSmall || s.kind == Kind::kLargeHead);
  if (s.kind != Kind::kSmall) return 0;
  return (offset - uint64_t{slab} * slab_bytes()) / classes_->SlotBytes(s.cls);
}

void SlabAllocator::Carve(uint32_t slab, Kind kind, uint8_t cls, uint32_t slots) {
  Slab& s = slabs_[slab];
  s.kind = kind;
  s.cls = cls;
  owners_[slab].assign(slots, kNoOwner);
  owner_slots_ += slots;
}

std::optional<uint32_t> SlabAllocator::TakeFreeSlab() {
  if (free_slabs_ == 0) return std::nullopt;
  const uint32_t n = slab_count();
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t s = (free_hint_ + i) % n;
    if (slabs_[s].kind == Kind::kFree) {
      free_hint_ = s + 1;
      --free_slabs_;
      return s;
    }
  }
  KVT_CHECK(false && "free_slabs_ out of sync with the slab table");
  return std::nullopt;
}

void SlabAllocator::ReleaseSlab(uint32_t slab) {
  slabs_[slab] = Slab{};
  owner_slots_ -= owners_[slab].size();
  std::vector<uint32_t>().swap(owners_[slab]);
  ++free_slabs_;
  free_hint_ = std::min(free_hint_, slab);
}

void SlabAllocator::PartialPush(uint32_t slab) {
  Slab& s = slabs_[slab];
  s.prev = kNil;
  s.next = partial_head_[s.cls];
  if (s.next != kNil) slabs_[s.next].prev = slab;
  partial_head_[s.cls] = slab;
}

void SlabAllocator::PartialRemove(uint32_t slab) {
  Slab& s = slabs_[slab];
  if (s.prev != kNil) {
    slabs_[s.prev].next = s.next;
  } else {
    partial_head_[s.cls] = s.next;
  }
  if (s.next != kNil) slabs_[s.next].prev = s.prev;
  s.prev = s.next = kNil;
}

std::optional<uint64_t> SlabAllocator::AllocSmall(uint8_t cls) {
  KVT_DCHECK(cls < classes_->count());
  uint32_t slab = partial_head_[cls];
  if (slab == kNil) {
    auto fresh = TakeFreeSlab();
    if (!fresh) return std::nullopt;
    slab = *fresh;
    Carve(slab, Kind::kSmall, cls, classes_->SlotsPerSlab(cls));
    std::fill_n(Bitmap(slab), words_per_slab_, 0);
    PartialPush(slab);
  }
  Slab& s = slabs_[slab];
  const uint32_t slots = classes_->SlotsPerSlab(cls);
  uint64_t* bits = Bitmap(slab);
  for (uint32_t w = 0; w * 64 < slots; ++w) {
    if (bits[w] == ~uint64_t{0}) continue;
    const uint32_t slot = w * 64 + static_cast<uint32_t>(std::countr_one(bits[w]));
    KVT_CHECK(slot < slots);  // a partial slab has a free slot
    bits[w] |= uint64_t{1} << (slot % 64);
    if (++s.used == slots) PartialRemove(slab);
    return uint64_t{slab} * slab_bytes() + uint64_t{slot} * classes_->SlotBytes(cls);
  }
  KVT_CHECK(false && "partial slab without a free slot");
  return std::nullopt;
}

std::optional<uint64_t> SlabAllocator::AllocLarge(uint32_t slabs) {
  const uint32_t n = slab_count();
  if (slabs == 0 || slabs > free_slabs_) return std::nullopt;
  uint32_t run = 0;
  for (uint32_t i = 0; i < n; ++i) {
    run = slabs_[i].kind == Kind::kFree ? run + 1 : 0;
    if (run < slabs) continue;
    const uint32_t head = i + 1 - slabs;
    for (uint32_t j = head; j <= i; ++j) {
      Carve(j, j == head ? Kind::kLargeHead : Kind::kLargeTail, SizeClasses::kLarge,
            j == head ? 1 : 0);
      slabs_[j].run = j == head ? slabs : head;
    }
    free_slabs_ -= slabs;
    return uint64_t{head} * slab_bytes();
  }
  return std::nullopt;
}

bool SlabAllocator::AllocAt(uint64_t offset, uint8_t cls, uint32_t slabs) {
  if (offset % kGranule != 0 || offset / slab_bytes() >= slab_count()) return false;
  const uint32_t slab = SlabOf(offset);
  const uint64_t within = offset - uint64_t{slab} * slab_bytes();
  if (cls == SizeClasses::kLarge) {
    if (within != 0 || slabs == 0 || slabs > slab_count() - slab) return false;
    for (uint32_t j = slab; j < slab + slabs; ++j) {
      if (slabs_[j].kind != Kind::kFree) return false;
    }
    for (uint32_t j = slab; j < slab + slabs; ++j) {
      Carve(j, j == slab ? Kind::kLargeHead : Kind::kLargeTail, SizeClasses::kLarge,
            j == slab ? 1 : 0);
      slabs_[j].run = j == slab ? slabs : slab;
    }
    free_slabs_ -= slabs;
    return true;
  }
  if (cls >= classes_->count()) return false;
  const uint64_t slot_bytes = classes_->SlotBytes(cls);
  const uint32_t slots = classes_->SlotsPerSlab(cls);
  if (within % slot_bytes != 0 || within / slot_bytes >= slots) return false;
  const auto slot = static_cast<uint32_t>(within / slot_bytes);
  Slab& s = slabs_[slab];
  if (s.kind == Kind::kFree) {
    --free_slabs_;
    Carve(slab, Kind::kSmall, cls, slots);
    std::fill_n(Bitmap(slab), words_per_slab_, 0);
    PartialPush(slab);
  } else if (s.kind != Kind::kSmall || s.cls != cls) {
    return false;
  }
  uint64_t& word = Bitmap(slab)[slot / 64];
  const uint64_t bit = uint64_t{1} << (slot % 64);
  if ((word & bit) != 0) return false;
  word |= bit;
  if (++s.used == slots) PartialRemove(slab);
  return true;
}

void SlabAllocator::Free(uint64_t offset) {
  const uint32_t slab = SlabOf(offset);
  Slab& s = slabs_[slab];
  owners_[slab][SlotOf(offset)] = kNoOwner;
  if (s.kind == Kind::kLargeHead) {
    KVT_CHECK(offset % slab_bytes() == 0);
    const uint32_t run = s.run;
    for (uint32_t j = slab; j < slab + run; ++j) ReleaseSlab(j);
    return;
  }
  KVT_CHECK(s.kind == Kind::kSmall);
  const uint64_t slot_bytes = classes_->SlotBytes(s.cls);
  const uint64_t in_slab = offset - uint64_t{slab} * slab_bytes();
  KVT_CHECK(in_slab % slot_bytes == 0);
  const auto slot = static_cast<uint32_t>(in_slab / slot_bytes);
  uint64_t& word = Bitmap(slab)[slot / 64];
  const uint64_t bit = uint64_t{1} << (slot % 64);
  KVT_CHECK((word & bit) != 0);  // double free
  word &= ~bit;
  const bool was_full = s.used == classes_->SlotsPerSlab(s.cls);
  --s.used;
  if (s.used == 0) {
    if (!was_full) PartialRemove(slab);
    ReleaseSlab(slab);
  } else if (was_full) {
    PartialPush(slab);
  }
}

void SlabAllocator::Unpin(uint64_t offset) {
  Slab& s = slabs_[SlabOf(offset)];
  KVT_CHECK(s.pinned > 0);
  --s.pinned;
}

bool SlabAllocator::Evictable(uint32_t slab) const {
  const Slab& s = slabs_[slab];
  switch (s.kind) {
    case Kind::kFree: return true;
    case Kind::kSmall:
    case Kind::kLargeHead: return s.pinned == 0;
    case Kind::kLargeTail: return slabs_[s.run].pinned == 0;
  }
  return false;
}

std::optional<uint32_t> SlabAllocator::FindVictimWindow(uint32_t slabs) const {
  const uint32_t n = slab_count();
  if (slabs == 0 || slabs > n) return std::nullopt;
  std::optional<uint32_t> best;
  uint64_t best_cost = UINT64_MAX;
  for (uint32_t first = 0; first + slabs <= n; ++first) {
    uint64_t cost = 0;
    bool ok = true;
    for (uint32_t j = first; j < first + slabs && ok; ++j) {
      ok = Evictable(j);
      const Slab& s = slabs_[j];
      const uint64_t used = s.kind == Kind::kLargeTail ? slabs_[s.run].last_access : s.last_access;
      cost = std::max(cost, used);
    }
    if (ok && cost < best_cost) {
      best = first;
      best_cost = cost;
    }
  }
  return best;
}

void SlabAllocator::CollectBlocks(uint32_t first, uint32_t count,
                                  std::vector<uint64_t>* out) const {
  for (uint32_t j = first; j < first + count; ++j) {
    const Slab& s = slabs_[j];
    if (s.kind == Kind::kLargeHead) {
      out->push_back(uint64_t{j} * slab_bytes());
    } else if (s.kind == Kind::kLargeTail) {
      if (j == first) out->push_back(uint64_t{s.run} * slab_bytes());  // head lies before
    } else if (s.kind == Kind::kSmall) {
      const uint32_t slots = classes_->SlotsPerSlab(s.cls);
      const uint64_t* bits = Bitmap(j);
      for (uint32_t slot = 0; slot < slots; ++slot) {
        if ((bits[slot / 64] >> (slot % 64)) & 1) {
          out->push_back(uint64_t{j} * slab_bytes() + uint64_t{slot} * classes_->SlotBytes(s.cls));
        }
      }
    }
  }
}

}  // namespace kvtier
