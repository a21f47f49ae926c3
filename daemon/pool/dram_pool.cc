#include "daemon/pool/dram_pool.h"

#include "ipc/base/check.h"
#include "ipc/base/units.h"

namespace kvtier {

DramPool::DramPool(const Options& options)
    : options_(options),
      classes_(options.slab_bytes),
      slabs_(&classes_, options.pool_bytes),
      index_(options.max_blocks, classes_.count() + 1u, options.hash_seed) {
  // The index keeps sizes in 32 bits; the config caps max_block_bytes at 1 GiB.
  KVT_CHECK(options.max_block_bytes <= UINT32_MAX);
}

uint64_t DramPool::SlotBytes(const BlockEntry& e) const {
  if (e.size_class != SizeClasses::kLarge) return classes_.SlotBytes(e.size_class);
  return AlignUp(e.size, classes_.slab_bytes());
}

void DramPool::Touch(uint32_t id) {
  BlockEntry& e = index_.at(id);
  slabs_.Touch(e.offset, ++tick_);
  if (e.lru_list != BlockIndex::kNil) {
    index_.LruRemove(id);
    index_.LruPushFront(LruListOf(e.size_class), id);
  }
}

StatusCode DramPool::Reserve(const BlockKey& key, uint64_t size, uint32_t session,
                             Placement* out) {
  if (size == 0 || size > options_.max_block_bytes) return StatusCode::kInvalidArgument;
  if (index_.Find(key) != BlockIndex::kNil) return StatusCode::kAlreadyExists;
  const uint8_t cls = classes_.ClassFor(size);
  if (index_.full() && !EvictForIndex(cls)) return StatusCode::kResourceExhausted;
  const std::optional<uint64_t> offset = AllocateSpace(cls, size);
  if (!offset) return StatusCode::kResourceExhausted;
  const uint32_t id = index_.Insert(key);
  KVT_CHECK(id != BlockIndex::kNil);  // room was made above and eviction only frees entries
  BlockEntry& e = index_.at(id);
  e.state = BlockState::kReserved;
  e.size_class = cls;
  e.offset = *offset;
  e.size = static_cast<uint32_t>(size);
  e.owner_session = session;
  slabs_.SetOwner(*offset, id);
  slabs_.Pin(*offset);
  slabs_.Touch(*offset, ++tick_);
  used_bytes_ += SlotBytes(e);
  ++reserved_;
  *out = Placement{{id, e.generation}, e.offset, size};
  return StatusCode::kOk;
}

std::optional<uint64_t> DramPool::AllocateSpace(uint8_t cls, uint64_t size) {
  uint32_t slabs_needed = 1;
  if (cls != SizeClasses::kLarge) {
    if (auto offset = slabs_.AllocSmall(cls)) return offset;
    // The pool is carved up. The oldest unpinned block of the same class gives its slot.
    const uint32_t victim = index_.LruBack(LruListOf(cls));
    if (victim != BlockIndex::kNil) {
      Evict(victim);
      auto offset = slabs_.AllocSmall(cls);
      KVT_CHECK(offset.has_value());
      return offset;
    }
  } else {
    slabs_needed = static_cast<uint32_t>(AlignUp(size, classes_.slab_bytes()) /
                                         classes_.slab_bytes());
    if (auto offset = slabs_.AllocLarge(slabs_needed)) return offset;
  }
  // Empty the cheapest window of whole slabs and carve it.
  const std::optional<uint32_t> first = slabs_.FindVictimWindow(slabs_needed);
  if (!first) return std::nullopt;
  scratch_offsets_.clear();
  slabs_.CollectBlocks(*first, slabs_needed, &scratch_offsets_);
  for (uint64_t offset : scratch_offsets_) Evict(slabs_.Owner(offset));
  auto offset = cls == SizeClasses::kLarge ? slabs_.AllocLarge(slabs_needed)
                                           : slabs_.AllocSmall(cls);
  KVT_CHECK(offset.has_value());
  return offset;
}

bool DramPool::EvictForIndex(uint8_t cls) {
  uint32_t victim = index_.LruBack(LruListOf(cls));
  if (victim == BlockIndex::kNil) {
    for (uint32_t list = 0; list < index_.lru_lists() && victim == BlockIndex::kNil; ++list) {
      victim = index_.LruBack(list);
    }
  }
  if (victim == BlockIndex::kNil) return false;
  Evict(victim);
  return true;
}

void DramPool::Evict(uint32_t id) {
  const BlockEntry& e = index_.at(id);
  KVT_CHECK(e.state == BlockState::kCommitted && e.lease_count == 0);
  // The SSD tier demotes the block here instead of dropping it.
  ++evictions_;
  index_.Unlink(id);
  Drop(id);
}

void DramPool::Drop(uint32_t id) {
  BlockEntry& e = index_.at(id);
  if (e.state == BlockState::kCommitted || e.state == BlockState::kRemoved) --committed_;
  index_.LruRemove(id);
  used_bytes_ -= SlotBytes(e);
  slabs_.Free(e.offset);
  index_.Free(id);
}

StatusCode DramPool::Commit(const BlockKey& key, uint32_t session) {
  const uint32_t id = index_.Find(key);
  if (id == BlockIndex::kNil) return StatusCode::kNotFound;
  BlockEntry& e = index_.at(id);
  if (e.state != BlockState::kReserved || e.owner_session != session) {
    return StatusCode::kNotFound;
  }
  e.state = BlockState::kCommitted;
  slabs_.Unpin(e.offset);
  index_.LruPushFront(LruListOf(e.size_class), id);
  --reserved_;
  ++committed_;
  return StatusCode::kOk;
}

StatusCode DramPool::Abort(const BlockKey& key, uint32_t session) {
  const uint32_t id = index_.Find(key);
  if (id == BlockIndex::kNil) return StatusCode::kNotFound;
  const BlockEntry& e = index_.at(id);
  if (e.state != BlockState::kReserved || e.owner_session != session) {
    return StatusCode::kNotFound;
  }
  AbortIfReservedBy({id, e.generation}, session);
  return StatusCode::kOk;
}

bool DramPool::IsReservedBy(BlockRef ref, uint32_t session) const {
  const BlockEntry& e = index_.at(ref.id);
  return e.generation == ref.generation && e.state == BlockState::kReserved &&
         e.owner_session == session;
}

void DramPool::AbortIfReservedBy(BlockRef ref, uint32_t session) {
  if (!IsReservedBy(ref, session)) return;
  BlockEntry& e = index_.at(ref.id);
  slabs_.Unpin(e.offset);
  index_.Unlink(ref.id);
  --reserved_;
  Drop(ref.id);
}

wire::Tier DramPool::Match(const BlockKey& key) {
  const uint32_t id = index_.Find(key);
  if (id == BlockIndex::kNil || index_.at(id).state != BlockState::kCommitted) {
    ++misses_;
    return wire::Tier::kNone;
  }
  ++hits_;
  Touch(id);
  return wire::Tier::kDram;
}

StatusCode DramPool::Acquire(const BlockKey& key, Placement* out) {
  const uint32_t id = index_.Find(key);
  if (id == BlockIndex::kNil || index_.at(id).state != BlockState::kCommitted) {
    ++misses_;
    return StatusCode::kNotFound;
  }
  BlockEntry& e = index_.at(id);
  if (e.lease_count == UINT32_MAX) return StatusCode::kResourceExhausted;
  ++hits_;
  Touch(id);
  if (e.lease_count++ == 0) {
    index_.LruRemove(id);
    slabs_.Pin(e.offset);
    ++leased_;
  }
  *out = Placement{{id, e.generation}, e.offset, e.size};
  return StatusCode::kOk;
}

void DramPool::Release(BlockRef ref) {
  BlockEntry& e = index_.at(ref.id);
  KVT_CHECK(e.generation == ref.generation && e.lease_count > 0);
  if (--e.lease_count > 0) return;
  --leased_;
  slabs_.Unpin(e.offset);
  if (e.state == BlockState::kRemoved) {
    Drop(ref.id);
  } else {
    index_.LruPushFront(LruListOf(e.size_class), ref.id);
  }
}

StatusCode DramPool::Remove(const BlockKey& key) {
  const uint32_t id = index_.Find(key);
  if (id == BlockIndex::kNil || index_.at(id).state != BlockState::kCommitted) {
    return StatusCode::kNotFound;
  }
  index_.Unlink(id);
  BlockEntry& e = index_.at(id);
  if (e.lease_count > 0) {
    e.state = BlockState::kRemoved;  // freed by the last Release
  } else {
    Drop(id);
  }
  return StatusCode::kOk;
}

void DramPool::FillStats(wire::StatsReply* out) const {
  out->pool_bytes = options_.pool_bytes;
  out->used_bytes = used_bytes_;
  out->slab_bytes_in_use =
      uint64_t{slabs_.slab_count() - slabs_.free_slabs()} * classes_.slab_bytes();
  out->committed_blocks = committed_;
  out->reserved_blocks = reserved_;
  out->leased_blocks = leased_;
  out->index_capacity = index_.capacity();
  out->index_bytes = index_.MemoryBytes() + slabs_.MemoryBytes();
  out->hits = hits_;
  out->misses = misses_;
  out->evictions = evictions_;
}

}  // namespace kvtier
