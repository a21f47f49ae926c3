#include "daemon/pool/dram_pool.h"

#include <cstring>
#include <string>

#include "ipc/base/check.h"
#include "ipc/base/units.h"

namespace kvtier {

using namespace block_flags;  // NOLINT: the flag names read as states here

DramPool::DramPool(const Options& options)
    : options_(options),
      classes_(options.slab_bytes),
      slabs_(&classes_, options.pool_bytes),
      // Lists: see CleanList.
      index_(options.max_blocks, 2 * classes_.count() + 4u, options.hash_seed),
      last_use_(options.max_blocks, 0) {
  // The index keeps sizes in 32 bits; the config caps max_block_bytes at 1 GiB.
  KVT_CHECK(options.max_block_bytes <= UINT32_MAX);
  scrub_allowance_ = options.scrub_bytes_per_round;
}

uint64_t DramPool::SlotBytes(const BlockEntry& e) const {
  if (e.size_class != SizeClasses::kLarge) return classes_.SlotBytes(e.size_class);
  return AlignUp(e.size, classes_.slab_bytes());
}

void DramPool::Touch(uint32_t id) {
  BlockEntry& e = index_.at(id);
  last_use_[id] = ++tick_;
  if ((e.flags & (kInDram | kPromoting)) != 0) slabs_.Touch(e.offset, tick_);
  if (e.lru_list != BlockIndex::kNil) {
    const uint32_t list = e.lru_list;
    index_.LruRemove(id);
    index_.LruPushFront(list, id);
  }
}

void DramPool::Relist(uint32_t id, bool front) {
  BlockEntry& e = index_.at(id);
  Unlist(id);
  if (e.state != BlockState::kCommitted || (e.flags & (kDemoting | kPromoting)) != 0) return;
  uint32_t list = BlockIndex::kNil;
  if ((e.flags & kInDram) == 0) {
    list = SsdList();  // SSD-only
  } else if (e.lease_count > 0) {
    return;
  } else if ((e.flags & kDirty) != 0) {
    list = DirtyList();
  } else {
    // Without a policy one list takes both kinds, in plain LRU order (kvtier's first policy).
    list = CleanList(e.size_class, (e.flags & kOnSsd) != 0 || admission_ == nullptr);
    evictable_bytes_ += SlotBytes(e);
  }
  // A block an engine is done with (DoneWith: last use 0) goes to the cold end wherever it
  // is listed next, e.g. at the Release of a lease it still held.
  if (front && last_use_[id] != 0) {
    index_.LruPushFront(list, id);
  } else {
    index_.LruPushBack(list, id);
  }
}

void DramPool::Unlist(uint32_t id) {
  const BlockEntry& e = index_.at(id);
  if (IsCleanList(e.lru_list)) evictable_bytes_ -= SlotBytes(e);
  index_.LruRemove(id);
}

uint32_t DramPool::FindCommitted(const BlockKey& key, uint64_t* hash) {
  const uint64_t h = index_.Hash(key);
  if (hash != nullptr) *hash = h;
  const uint32_t id = index_.Find(key, h);
  if (id == BlockIndex::kNil || index_.at(id).state != BlockState::kCommitted) {
    return BlockIndex::kNil;
  }
  if (Expired(index_.at(id))) {
    Expire(id);
    return BlockIndex::kNil;
  }
  return id;
}

void DramPool::Expire(uint32_t id) {
  ++expirations_;
  Unpublish(id);
}

void DramPool::Unpublish(uint32_t id) {
  // Gone for readers now; its slot and SSD record go once no lease or I/O holds it.
  index_.Unlink(id);
  BlockEntry& e = index_.at(id);
  e.state = BlockState::kRemoved;
  Unlist(id);
  ForgetSsdRecord(e);
  DropIfUnheld(id);
}

uint32_t DramPool::Reap(uint32_t budget) {
  uint32_t dropped = 0;
  const uint32_t capacity = index_.capacity();
  for (uint32_t i = 0; i < budget && i < capacity; ++i) {
    const uint32_t id = reap_cursor_;
    reap_cursor_ = reap_cursor_ + 1 == capacity ? 0 : reap_cursor_ + 1;
    if (Expired(index_.at(id))) {
      Expire(id);
      ++dropped;
    }
  }
  return dropped;
}

StatusCode DramPool::Reserve(const BlockKey& key, uint64_t size, uint32_t session,
                             Placement* out, uint32_t ttl_s) {
  if (size == 0 || size > options_.max_block_bytes) return StatusCode::kInvalidArgument;
  const uint64_t hash = index_.Hash(key);
  if (const uint32_t found = index_.Find(key, hash); found != BlockIndex::kNil) {
    if (!Expired(index_.at(found))) return StatusCode::kAlreadyExists;
    Expire(found);  // an expired block does not hold its key
  }
  const uint8_t cls = classes_.ClassFor(size);
  if (index_.full() && !EvictForIndex()) {
    // Every entry is dirty, leased or reserved. Dirty ones become evictable once on SSD.
    if (!options_.spill) return RefuseIndex();
    bool declined = false;
    while (demotions_in_flight_ == 0 && !declined &&
           index_.LruBack(DirtyList()) != BlockIndex::kNil) {
      declined = !DemoteOrDecline(index_.LruBack(DirtyList()));
    }
    // A declined block is evictable now: try again.
    if (!declined || !EvictForIndex()) {
      return demotions_in_flight_ > 0 ? StatusCode::kUnavailable : RefuseIndex();
    }
  }
  uint64_t offset = 0;
  if (StatusCode code = AllocateOrWait(cls, size, &offset); code != StatusCode::kOk) return code;
  const uint32_t id = index_.Insert(key);
  KVT_CHECK(id != BlockIndex::kNil);  // room was made above and eviction only frees entries
  BlockEntry& e = index_.at(id);
  e.state = BlockState::kReserved;
  e.flags = kInDram;
  e.size_class = cls;
  e.offset = offset;
  e.size = static_cast<uint32_t>(size);
  e.owner_session = session;
  e.expires_s = ttl_s;  // relative until Commit
  slabs_.SetOwner(offset, id);
  slabs_.Pin(offset);
  last_use_[id] = ++tick_;
  slabs_.Touch(offset, tick_);
  if (admission_ != nullptr) admission_->Seen(hash, committed_);  // a request computed it
  used_bytes_ += SlotBytes(e);
  ++reserved_;
  *out = Placement{{id, e.generation}, e.offset, size};
  return StatusCode::kOk;
}

StatusCode DramPool::AllocateOrWait(uint8_t cls, uint64_t size, uint64_t* offset,
                                    bool overwritten) {
  for (;;) {
    // Slots waiting to be zeroed come back first; no more is evicted while they are queued.
    const std::optional<uint64_t> at = scrub_pending_bytes_ > 0
                                           ? AllocateFree(cls, size)
                                           : AllocateSpace(cls, size, overwritten);
    if (at) {
      *offset = *at;
      return StatusCode::kOk;
    }
    if (scrub_pending_bytes_ > 0) {
      if (Scrub() == 0) return StatusCode::kUnavailable;  // this round's budget is spent: wait
      continue;
    }
    // Nothing evictable.
    if (!options_.spill) return RefuseDram(cls, size);
    // Room comes from dirty blocks once they are on SSD, or at once from those the policy
    // keeps off SSD: make sure enough are on their way.
    const uint64_t need = cls == SizeClasses::kLarge ? AlignUp(size, classes_.slab_bytes())
                                                     : classes_.slab_bytes();
    bool declined = false;
    while (demoting_bytes_ < need && !declined) {
      const uint32_t victim = index_.LruBack(DirtyList());
      if (victim == BlockIndex::kNil) break;
      declined = !DemoteOrDecline(victim);
    }
    if (!declined) break;  // evictable now: try again
  }
  return demotions_in_flight_ > 0 ? StatusCode::kUnavailable : RefuseDram(cls, size);
}

StatusCode DramPool::RefuseDram(uint8_t cls, uint64_t size) {
  const uint64_t slab = classes_.slab_bytes();
  std::string& why = last_refusal_;
  why.assign("DRAM pool of ")
      .append(std::to_string(options_.pool_bytes))
      .append(" bytes is full: a ")
      .append(std::to_string(size))
      .append("-byte block needs ");
  if (cls == SizeClasses::kLarge) {
    const uint64_t run = AlignUp(size, slab);
    why.append(std::to_string(run / slab))
        .append(" adjacent free slabs (")
        .append(std::to_string(run))
        .append(" bytes)");
  } else {
    why.append("a free ").append(std::to_string(classes_.SlotBytes(cls))).append("-byte slot");
  }
  // Every block not on a clean LRU list holds its slot: that is what "pinned" means here.
  why.append("; ")
      .append(std::to_string(used_bytes_))
      .append(" bytes are in use, ")
      .append(std::to_string(used_bytes_ - evictable_bytes_))
      .append(" of them pinned (leased, reserved, not yet on SSD or with I/O in flight), and ");
  if (evictable_bytes_ == 0) {
    why.append("nothing is evictable");
  } else {
    why.append("evicting the other ")
        .append(std::to_string(evictable_bytes_))
        .append(" bytes would free no such space");
  }
  return StatusCode::kResourceExhausted;
}

StatusCode DramPool::RefuseIndex() {
  const std::string capacity = std::to_string(index_.capacity());
  last_refusal_.assign("block index is full (")
      .append(capacity)
      .append(" of ")
      .append(capacity)
      .append(" entries, none evictable: ")
      .append(std::to_string(reserved_))
      .append(" reserved and ")
      .append(std::to_string(leased_))
      .append(" leased blocks; raise max_blocks)");
  return StatusCode::kResourceExhausted;
}

std::optional<uint64_t> DramPool::AllocateFree(uint8_t cls, uint64_t size) {
  if (cls != SizeClasses::kLarge) return slabs_.AllocSmall(cls);
  return slabs_.AllocLarge(
      static_cast<uint32_t>(AlignUp(size, classes_.slab_bytes()) / classes_.slab_bytes()));
}

std::optional<uint64_t> DramPool::AllocateSpace(uint8_t cls, uint64_t size, bool overwritten) {
  if (auto offset = AllocateFree(cls, size)) return offset;
  uint32_t slabs_needed = 1;
  if (cls != SizeClasses::kLarge) {
    // The pool is carved up. The oldest unpinned clean block of the same class gives its slot,
    // unless (under a policy) a whole slab of colder blocks of another class can go instead.
    const uint32_t victim = VictimOf(cls);
    if (admission_ != nullptr && EvictColderSlab(cls, victim)) return AllocateFree(cls, size);
    if (victim != BlockIndex::kNil && overwritten) {
      // Zeroing the whole slot only for the promotion to overwrite it would put a 2 MiB
      // memset (and, past the scrub budget, a wait for the next loop round) on the read's
      // path: only the tail the promotion does not write is zeroed.
      const uint64_t offset = TakeOverSlot(victim);
      const uint64_t slot_bytes = classes_.SlotBytes(cls);
      if (options_.zero_memory != nullptr && size < slot_bytes) {
        std::memset(options_.zero_memory + offset + size, 0, slot_bytes - size);
      }
      return offset;
    }
    if (victim != BlockIndex::kNil) {
      EvictBlock(victim);
      return AllocateFree(cls, size);  // nullopt while its slot waits to be zeroed
    }
  } else {
    slabs_needed = static_cast<uint32_t>(AlignUp(size, classes_.slab_bytes()) /
                                         classes_.slab_bytes());
  }
  // Empty the cheapest window of whole slabs and carve it. Dirty, leased, reserved and
  // in-flight blocks pin their slabs, so only clean blocks are in a window.
  const std::optional<uint32_t> first = slabs_.FindVictimWindow(slabs_needed);
  if (!first) return std::nullopt;
  scratch_offsets_.clear();
  slabs_.CollectBlocks(*first, slabs_needed, &scratch_offsets_);
  for (uint64_t offset : scratch_offsets_) EvictBlock(slabs_.Owner(offset));
  return AllocateFree(cls, size);  // nullopt while the window's slots wait to be zeroed
}

uint32_t DramPool::VictimOf(uint8_t cls) const {
  const uint32_t copy = index_.LruBack(CleanList(cls, true));
  const uint32_t only = index_.LruBack(CleanList(cls, false));
  if (copy == BlockIndex::kNil) return only;
  if (only == BlockIndex::kNil || admission_ != nullptr) return copy;
  return last_use_[only] < last_use_[copy] ? only : copy;
}

bool DramPool::EvictColderSlab(uint8_t cls, uint32_t victim) {
  // Without a block of its own class to compare with, the window scan decides.
  if (victim == BlockIndex::kNil) return false;
  // Only the slabs of the other classes' coldest blocks are candidates: O(classes).
  uint64_t coldest = last_use_[victim];
  uint32_t chosen = BlockIndex::kNil;
  for (uint32_t list = 0; list < ListCount(); ++list) {
    if (!IsCleanList(list) || list == CleanList(cls, true) || list == CleanList(cls, false)) {
      continue;
    }
    const uint32_t tail = index_.LruBack(list);
    if (tail == BlockIndex::kNil) continue;
    const uint64_t offset = index_.at(tail).offset;
    // The slab's newest use: every block in it is at least this cold.
    const uint64_t newest = slabs_.LastAccess(offset);
    if (newest < coldest && slabs_.EvictableAt(offset)) {
      coldest = newest;
      chosen = tail;
    }
  }
  if (chosen == BlockIndex::kNil) return false;
  const BlockEntry& e = index_.at(chosen);
  // Copies first: when this class's victim costs nothing (a copy of an SSD block), a slab
  // goes instead only if every block in it is such a copy too.
  const bool victim_is_copy = (index_.at(victim).flags & kOnSsd) != 0;
  if (e.size_class == SizeClasses::kLarge) {
    if (victim_is_copy && (e.flags & kOnSsd) == 0) return false;
    EvictBlock(chosen);  // its run of slabs holds only it
    return true;
  }
  scratch_offsets_.clear();
  slabs_.CollectBlocks(static_cast<uint32_t>(e.offset / classes_.slab_bytes()), 1,
                       &scratch_offsets_);
  if (victim_is_copy) {
    for (uint64_t offset : scratch_offsets_) {
      if ((index_.at(slabs_.Owner(offset)).flags & kOnSsd) == 0) return false;
    }
  }
  for (uint64_t offset : scratch_offsets_) EvictBlock(slabs_.Owner(offset));
  return true;
}

bool DramPool::EvictForIndex() {
  // An entry must go: the coldest SSD-only block first, then the coldest clean DRAM block.
  uint32_t victim = index_.LruBack(SsdList());
  for (uint32_t list = 0; list < ListCount() && victim == BlockIndex::kNil; ++list) {
    if (IsCleanList(list)) victim = index_.LruBack(list);
  }
  if (victim == BlockIndex::kNil) return false;
  ++evictions_;
  DropCommitted(victim);
  return true;
}

uint64_t DramPool::TakeOverSlot(uint32_t id) {
  BlockEntry& e = index_.at(id);
  KVT_CHECK(e.state == BlockState::kCommitted && e.lease_count == 0 &&
            (e.flags & (kInDram | kDirty | kDemoting | kPromoting)) == kInDram);
  const uint64_t offset = e.offset;
  ++evictions_;
  Unlist(id);
  // As EvictBlock, less FreeSlot: the slot stays allocated and counted in used_bytes_, for
  // the caller.
  e.flags &= static_cast<uint8_t>(~kInDram);
  used_bytes_ -= SlotBytes(e);  // the caller counts it again as its own
  if ((e.flags & kOnSsd) == 0) {
    DropCommitted(id);
  } else {
    ++tier_.ssd_evictions;
    ++tier_.ssd_only_blocks;
    Relist(id);
  }
  return offset;
}

void DramPool::EvictBlock(uint32_t id) {
  BlockEntry& e = index_.at(id);
  KVT_CHECK(e.state == BlockState::kCommitted && e.lease_count == 0 &&
            (e.flags & (kInDram | kDirty | kDemoting | kPromoting)) == kInDram);
  ++evictions_;
  if ((e.flags & kOnSsd) == 0) {
    DropCommitted(id);
    return;
  }
  // Clean: the SSD copy stays; only the DRAM slot goes.
  FreeSlot(e);
  ++tier_.ssd_evictions;
  ++tier_.ssd_only_blocks;
  Relist(id);
}

EvictReport DramPool::Evict(EvictTiers tiers, bool release_ssd_records) {
  EvictReport report;
  for (uint32_t id = 0; id < index_.capacity(); ++id) {
    const BlockEntry& e = index_.at(id);
    // Free entries, and removed ones already on their way out, are no one's blocks any more.
    if (e.state != BlockState::kReserved && e.state != BlockState::kCommitted) continue;
    const bool in_dram = (e.flags & (kInDram | kPromoting)) != 0;
    const bool on_ssd = (e.flags & kOnSsd) != 0;
    if ((tiers == EvictTiers::kDram && !in_dram) || (tiers == EvictTiers::kSsd && !on_ssd)) {
      continue;
    }
    const bool held = e.state == BlockState::kReserved || e.lease_count > 0;
    const bool io = (e.flags & (kDemoting | kPromoting)) != 0;
    if (held || (io && tiers != EvictTiers::kAll)) {
      ++report.kept_pinned;
      continue;
    }
    switch (tiers) {
      case EvictTiers::kDram: EvictFromDram(id, &report); break;
      case EvictTiers::kSsd: EvictFromSsd(id, release_ssd_records, &report); break;
      case EvictTiers::kAll: EvictEverywhere(id, release_ssd_records, &report); break;
    }
  }
  if (admission_ != nullptr && tiers != EvictTiers::kDram && tier_.ssd_blocks == 0) {
    admission_->SsdEmptied();
  }
  return report;
}

uint64_t DramPool::UnspilledBytes(uint64_t* blocks) const {
  uint64_t bytes = 0;
  *blocks = 0;
  for (uint32_t id = 0; id < index_.capacity(); ++id) {
    const BlockEntry& e = index_.at(id);
    if (e.state != BlockState::kCommitted || (e.flags & kInDram) == 0 ||
        (e.flags & kOnSsd) != 0) {
      continue;
    }
    ++*blocks;
    bytes += e.size;
  }
  return bytes;
}

void DramPool::EvictFromDram(uint32_t id, EvictReport* report) {
  BlockEntry& e = index_.at(id);
  ++report->dram_blocks;
  report->dram_bytes += e.size;
  if ((e.flags & kOnSsd) != 0) {
    EvictBlock(id);  // clean: stays on SSD
    return;
  }
  // Dirty or no-spill: DRAM holds its only copy.
  ++evictions_;
  ++report->dropped_blocks;
  DropCommitted(id);
}

void DramPool::EvictFromSsd(uint32_t id, bool release_ssd_record, EvictReport* report) {
  BlockEntry& e = index_.at(id);
  ++report->ssd_blocks;
  report->ssd_bytes += e.size;
  ForgetSsdRecord(e, release_ssd_record);
  if ((e.flags & kInDram) == 0) {  // SSD-only: nothing is left of it
    ++evictions_;
    ++report->dropped_blocks;
    DropCommitted(id);
    return;
  }
  // DRAM holds its only copy now: as after Commit, it is due for demotion and pins its slab
  // until then, unless it is too large for the SSD tier.
  if (e.size <= options_.spill_max_block_bytes) {
    e.flags |= kDirty;
    tier_.dirty_bytes += SlotBytes(e);
    slabs_.Pin(e.offset);
  } else {
    e.flags |= kNoSpill;
  }
  Relist(id);
}

void DramPool::EvictEverywhere(uint32_t id, bool release_ssd_record, EvictReport* report) {
  BlockEntry& e = index_.at(id);
  if ((e.flags & kInDram) != 0) {
    ++report->dram_blocks;
    report->dram_bytes += e.size;
  }
  if ((e.flags & kOnSsd) != 0) {
    ++report->ssd_blocks;
    report->ssd_bytes += e.size;
  }
  ++evictions_;
  ++report->dropped_blocks;
  ForgetSsdRecord(e, release_ssd_record);
  // A miss from now on; a block with I/O in flight is dropped when the I/O's result arrives.
  Unpublish(id);
}

void DramPool::FreeSlot(BlockEntry& e) {
  // Secure deletion: the next block placed here starts from zeros, not from these bytes. Every
  // slot leaves the pool through here, and no lease or I/O holds it any more.
  const uint64_t bytes = SlotBytes(e);
  e.flags &= static_cast<uint8_t>(~(kInDram | kPromoting));
  if (options_.zero_memory == nullptr || (scrubs_.empty() && bytes <= scrub_allowance_)) {
    if (options_.zero_memory != nullptr) scrub_allowance_ -= bytes;
    ScrubNow(e.offset, bytes);
    return;
  }
  // Zeroed by a later round; the pin keeps allocation and window eviction away until then.
  slabs_.Pin(e.offset);
  scrubs_.push_back(PendingScrub{e.offset, bytes, 0});
  scrub_pending_bytes_ += bytes;
}

void DramPool::ScrubNow(uint64_t offset, uint64_t bytes) {
  if (options_.zero_memory != nullptr) std::memset(options_.zero_memory + offset, 0, bytes);
  used_bytes_ -= bytes;
  slabs_.Free(offset);
}

uint64_t DramPool::Scrub() {
  uint64_t zeroed = 0;
  while (!scrubs_.empty() && scrub_allowance_ > 0) {
    PendingScrub& s = scrubs_.front();
    const uint64_t n = std::min(scrub_allowance_, s.bytes - s.zeroed);
    std::memset(options_.zero_memory + s.offset + s.zeroed, 0, n);
    s.zeroed += n;
    zeroed += n;
    scrub_allowance_ -= n;
    scrub_pending_bytes_ -= n;
    if (s.zeroed < s.bytes) break;
    slabs_.Unpin(s.offset);
    used_bytes_ -= s.bytes;
    slabs_.Free(s.offset);
    scrubs_.pop_front();
  }
  return zeroed;
}

void DramPool::FreeQueuedSlotsUnzeroed() {
  for (const PendingScrub& s : scrubs_) {
    slabs_.Unpin(s.offset);
    used_bytes_ -= s.bytes;
    slabs_.Free(s.offset);
  }
  scrubs_.clear();
  scrub_pending_bytes_ = 0;
}

void DramPool::ForgetSsdRecord(BlockEntry& e, bool release) {
  if ((e.flags & kOnSsd) == 0) return;
  // A promotion in flight still reads the record. Released now, its scrub could zero the
  // record under the read, which would then fail as if tampered with (a false integrity
  // failure); Drop releases it once PromoteDone has come.
  if (release && (e.flags & kPromoting) != 0) return;
  if (release) {
    SpillOrder order;
    order.kind = SpillOrder::Kind::kRelease;
    order.ssd = SsdRef{e.ssd_segment, e.ssd_page};
    orders_.push_back(order);
  }
  --tier_.ssd_blocks;
  tier_.ssd_payload_bytes -= e.size;
  if ((e.flags & (kInDram | kPromoting)) == 0) --tier_.ssd_only_blocks;
  e.flags &= static_cast<uint8_t>(~kOnSsd);
}

void DramPool::DropCommitted(uint32_t id) {
  index_.Unlink(id);
  Drop(id);
}

void DramPool::Drop(uint32_t id) {
  BlockEntry& e = index_.at(id);
  KVT_CHECK(e.lease_count == 0 && (e.flags & (kDemoting | kPromoting)) == 0);
  if (e.state == BlockState::kCommitted || e.state == BlockState::kRemoved) --committed_;
  Unlist(id);
  ForgetSsdRecord(e);
  if ((e.flags & kDirty) != 0) {
    slabs_.Unpin(e.offset);
    tier_.dirty_bytes -= SlotBytes(e);
  }
  if ((e.flags & kInDram) != 0) FreeSlot(e);
  e.flags = 0;
  index_.Free(id);
}

void DramPool::DropIfUnheld(uint32_t id) {
  const BlockEntry& e = index_.at(id);
  if (e.state == BlockState::kRemoved && e.lease_count == 0 &&
      (e.flags & (kDemoting | kPromoting)) == 0) {
    Drop(id);
  }
}

StatusCode DramPool::Commit(const BlockKey& key, uint32_t session) {
  const uint32_t id = index_.Find(key);
  if (id == BlockIndex::kNil) return StatusCode::kNotFound;
  BlockEntry& e = index_.at(id);
  if (e.state != BlockState::kReserved || e.owner_session != session) {
    return StatusCode::kNotFound;
  }
  e.state = BlockState::kCommitted;
  if (e.expires_s != 0) {
    e.expires_s = e.expires_s > UINT32_MAX - now_s_ ? UINT32_MAX : now_s_ + e.expires_s;
  }
  if (options_.spill && e.size <= options_.spill_max_block_bytes) {
    e.flags |= kDirty;  // keeps the reservation's pin until the block is on SSD
    tier_.dirty_bytes += SlotBytes(e);
  } else {
    e.flags |= kNoSpill;
    slabs_.Unpin(e.offset);
  }
  Relist(id);
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

wire::Tier DramPool::Match(const BlockKey& key, uint64_t* size) {
  uint64_t hash = 0;
  const uint32_t id = FindCommitted(key, &hash);
  if (id == BlockIndex::kNil) {
    ++misses_;
    return wire::Tier::kNone;
  }
  ++hits_;
  Found(id, hash);
  Touch(id);
  *size = index_.at(id).size;
  if ((index_.at(id).flags & kInDram) != 0) return wire::Tier::kDram;
  ++ssd_hits_;
  return wire::Tier::kSsd;
}

StatusCode DramPool::Acquire(const BlockKey& key, Placement* out, wire::Tier* tier) {
  const uint32_t id = FindCommitted(key);
  if (id == BlockIndex::kNil) {
    ++misses_;
    return StatusCode::kNotFound;
  }
  BlockEntry& e = index_.at(id);
  const bool in_dram = (e.flags & kInDram) != 0;
  if (e.lease_count == UINT32_MAX) {
    last_refusal_.assign("the block already has ")
        .append(std::to_string(UINT32_MAX))
        .append(" leases, the most one block can have");
    return StatusCode::kResourceExhausted;
  }
  if ((e.flags & (kInDram | kPromoting)) == 0) {
    // SSD-only: promote it into a fresh slot.
    uint64_t offset = 0;
    if (StatusCode code = AllocateOrWait(classes_.ClassFor(e.size), e.size, &offset,
                                         /*overwritten=*/true);
        code != StatusCode::kOk) {
      return code;
    }
    e.size_class = classes_.ClassFor(e.size);
    e.offset = offset;
    e.flags |= kPromoting;
    --tier_.ssd_only_blocks;
    slabs_.SetOwner(offset, id);
    slabs_.Pin(offset);  // the promotion's pin: the read writes into the slot
    used_bytes_ += SlotBytes(e);
    ++promotions_in_flight_;
    Unlist(id);
    SpillOrder order;
    order.kind = SpillOrder::Kind::kPromote;
    order.ref = {id, e.generation};
    order.offset = offset;
    order.size = e.size;
    order.ssd = SsdRef{e.ssd_segment, e.ssd_page};
    order.key = e.Key();
    orders_.push_back(order);
  }
  ++hits_;
  if (!in_dram) ++ssd_hits_;
  Found(id, 0);
  Touch(id);
  if (e.lease_count++ == 0) {
    Unlist(id);
    slabs_.Pin(e.offset);
    ++leased_;
  }
  *tier = (e.flags & kPromoting) != 0 ? wire::Tier::kSsd : wire::Tier::kDram;
  *out = Placement{{id, e.generation}, e.offset, e.size};
  return StatusCode::kOk;
}

bool DramPool::IsInDram(BlockRef ref) const {
  const BlockEntry& e = index_.at(ref.id);
  return e.generation == ref.generation && (e.flags & kInDram) != 0;
}

DramPool::Placement DramPool::PlacementOf(BlockRef ref) const {
  const BlockEntry& e = index_.at(ref.id);
  KVT_CHECK(e.generation == ref.generation);
  return Placement{ref, e.offset, e.size};
}

bool DramPool::IsPromoting(BlockRef ref) const {
  const BlockEntry& e = index_.at(ref.id);
  return e.generation == ref.generation && (e.flags & kPromoting) != 0;
}

void DramPool::Release(BlockRef ref) {
  BlockEntry& e = index_.at(ref.id);
  KVT_CHECK(e.generation == ref.generation && e.lease_count > 0);
  if (--e.lease_count > 0) return;
  --leased_;
  // Leases pin the slot they were granted on; a failed promotion already gave its slot back.
  if ((e.flags & (kInDram | kPromoting)) != 0) slabs_.Unpin(e.offset);
  if (e.state == BlockState::kRemoved) {
    DropIfUnheld(ref.id);
  } else {
    Relist(ref.id);
  }
}

StatusCode DramPool::Remove(const BlockKey& key) {
  const uint32_t id = FindCommitted(key);
  if (id == BlockIndex::kNil) return StatusCode::kNotFound;
  Unpublish(id);
  return StatusCode::kOk;
}

StatusCode DramPool::Hint(const BlockKey& key, BlockHint hint) {
  uint64_t hash = 0;
  const uint32_t id = FindCommitted(key, &hash);
  if (hint == BlockHint::kReuseSoon && admission_ != nullptr) admission_->Seen(hash, committed_);
  if (id == BlockIndex::kNil) return StatusCode::kNotFound;
  if (hint == BlockHint::kReuseSoon) {
    Found(id, /*hash=*/0);  // counted above
    Touch(id);
    return StatusCode::kOk;
  }
  // Done with: as cold as a block can be (last use 0, for global eviction too), at the cold
  // end of its list now or, while leased or with I/O in flight, when it is listed again.
  last_use_[id] = 0;
  const BlockEntry& e = index_.at(id);
  if (e.lru_list != BlockIndex::kNil) {
    const uint32_t list = e.lru_list;
    index_.LruRemove(id);
    index_.LruPushBack(list, id);
  }
  return StatusCode::kOk;
}

// --- SSD tier ---

void DramPool::StartDemotion(uint32_t id) {
  BlockEntry& e = index_.at(id);
  KVT_CHECK((e.flags & (kDirty | kInDram | kDemoting)) == (kDirty | kInDram));
  e.flags |= kDemoting;
  Unlist(id);
  demoting_bytes_ += SlotBytes(e);
  ++demotions_in_flight_;
  SpillOrder order;
  order.kind = SpillOrder::Kind::kDemote;
  order.ref = {id, e.generation};
  order.offset = e.offset;
  order.size = e.size;
  order.key = e.Key();
  orders_.push_back(order);
}

void DramPool::Found(uint32_t id, uint64_t hash) {
  BlockEntry& e = index_.at(id);
  e.flags |= kReused;
  if (admission_ == nullptr) return;
  // Lookups count for the policy; the read that follows a lookup (Acquire, hash 0) does not
  // count again: one request, one sighting.
  if (hash != 0) admission_->Seen(hash, committed_);
  if ((e.flags & kDeclined) != 0 && (e.flags & kInDram) != 0) {
    // Declined, now proven: as after Commit, it is dirty and pins its slab until it is on SSD.
    e.flags = static_cast<uint8_t>((e.flags & ~(kDeclined | kNoSpill)) | kDirty);
    tier_.dirty_bytes += SlotBytes(e);
    slabs_.Pin(e.offset);
    Relist(id);
  }
}

uint64_t DramPool::WriteDeclined() {
  uint64_t redirtied = 0;
  for (uint32_t id = 0; id < index_.capacity(); ++id) {
    BlockEntry& e = index_.at(id);
    if (e.state != BlockState::kCommitted || (e.flags & (kDeclined | kInDram)) !=
                                                 (kDeclined | kInDram)) {
      continue;
    }
    // As after Commit: dirty, pinning its slab until it is on SSD.
    e.flags = static_cast<uint8_t>((e.flags & ~(kDeclined | kNoSpill)) | kDirty);
    tier_.dirty_bytes += SlotBytes(e);
    slabs_.Pin(e.offset);
    Relist(id);
    ++redirtied;
  }
  return redirtied;
}

void DramPool::set_admission(SsdAdmission* admission, bool resort) {
  const bool had_policy = admission_ != nullptr;
  admission_ = admission;
  if (!resort || had_policy == (admission != nullptr)) return;
  // The clean lists mean something else now (one LRU order, or copies apart from DRAM-only
  // blocks): sort every evictable block into its list. Without a policy, declined blocks are
  // due for SSD like any other.
  if (admission == nullptr) WriteDeclined();
  for (uint32_t id = 0; id < index_.capacity(); ++id) {
    if (IsCleanList(index_.at(id).lru_list)) Relist(id);
  }
}

bool DramPool::DemoteOrDecline(uint32_t id) {
  BlockEntry& e = index_.at(id);
  // A drain (dirty limit 0) writes everything: DRAM is about to be lost.
  if (admission_ == nullptr || (e.flags & kReused) != 0 || options_.dirty_limit_bytes == 0 ||
      admission_->Admit(index_.Hash(e.Key()))) {
    StartDemotion(id);
    return true;
  }
  ++tier_.ssd_declined;
  tier_.dirty_bytes -= SlotBytes(e);
  slabs_.Unpin(e.offset);  // the dirty pin
  e.flags = static_cast<uint8_t>((e.flags & ~kDirty) | kNoSpill | kDeclined);
  // Declines come in LRU order (the coldest dirty block first), so the front keeps the
  // DRAM-only list in LRU order; copies of SSD blocks are evicted before any of it anyway.
  Relist(id);
  return false;
}

void DramPool::Demote() {
  if (!options_.spill) return;
  while (tier_.dirty_bytes - demoting_bytes_ > options_.dirty_limit_bytes &&
         demotions_in_flight_ < options_.max_demotions_in_flight) {
    const uint32_t victim = index_.LruBack(DirtyList());
    if (victim == BlockIndex::kNil) return;
    DemoteOrDecline(victim);
  }
}

void DramPool::TakeOrders(std::vector<SpillOrder>* out) {
  out->insert(out->end(), orders_.begin(), orders_.end());
  orders_.clear();
}

void DramPool::DemoteDone(BlockRef ref, const Status& status, SsdRef ssd) {
  BlockEntry& e = index_.at(ref.id);
  KVT_CHECK(e.generation == ref.generation && (e.flags & kDemoting) != 0);
  const uint64_t slot_bytes = SlotBytes(e);
  demoting_bytes_ -= slot_bytes;
  --demotions_in_flight_;
  tier_.dirty_bytes -= slot_bytes;
  slabs_.Unpin(e.offset);  // the dirty pin
  e.flags &= static_cast<uint8_t>(~(kDemoting | kDirty));
  if (status.ok()) {
    ++tier_.demotions;
    e.flags |= kOnSsd;
    e.ssd_segment = ssd.segment;
    e.ssd_page = ssd.page;
    ++tier_.ssd_blocks;
    tier_.ssd_payload_bytes += e.size;
  } else {
    // The SSD tier could not take it (full disk, I/O error): it stays in DRAM, evictable by
    // dropping it like any block of a tenant without SSD.
    ++tier_.demote_failures;
    if (admission_ != nullptr && status.code() == StatusCode::kResourceExhausted) {
      admission_->SsdFull();
    }
    e.flags |= kNoSpill;
  }
  if (e.state == BlockState::kRemoved) {
    ForgetSsdRecord(e);
    DropIfUnheld(ref.id);
    return;
  }
  Relist(ref.id, /*front=*/false);  // it was the coldest dirty block: evict it first
}

void DramPool::PromoteDone(BlockRef ref, const Status& status) {
  BlockEntry& e = index_.at(ref.id);
  KVT_CHECK(e.generation == ref.generation && (e.flags & kPromoting) != 0);
  --promotions_in_flight_;
  slabs_.Unpin(e.offset);  // the promotion's pin
  if (status.ok()) {
    ++tier_.promotions;
    e.flags = static_cast<uint8_t>((e.flags & ~kPromoting) | kInDram);
    if (e.state == BlockState::kRemoved) {
      DropIfUnheld(ref.id);
    } else {
      Relist(ref.id);
    }
    return;
  }
  // Unreadable: the block is gone from every tier (a miss, never wrong bytes).
  ++tier_.promote_failures;
  if (status.code() == StatusCode::kDataLoss) ++tier_.integrity_failures;
  if (e.lease_count > 0) slabs_.Unpin(e.offset);  // the leases' pin goes with the slot
  FreeSlot(e);
  if ((e.flags & kOnSsd) != 0) {
    ++tier_.ssd_only_blocks;  // ForgetSsdRecord counts it down with the other SSD counters
    ForgetSsdRecord(e);
  }
  if (e.state == BlockState::kCommitted) {
    index_.Unlink(ref.id);
    e.state = BlockState::kRemoved;
  }
  DropIfUnheld(ref.id);  // or by the last lease's Release
}

void DramPool::SsdCopyLost(BlockRef ref, SsdRef ssd) {
  BlockEntry& e = index_.at(ref.id);
  if (e.generation != ref.generation || (e.flags & kOnSsd) == 0 ||
      SsdRef{e.ssd_segment, e.ssd_page} != ssd) {
    return;  // the block already moved on
  }
  ++tier_.ssd_dropped;
  if (admission_ != nullptr) admission_->SsdFull();  // its segment was reclaimed for room
  --tier_.ssd_blocks;
  tier_.ssd_payload_bytes -= e.size;
  if ((e.flags & (kInDram | kPromoting)) == 0) --tier_.ssd_only_blocks;
  e.flags = static_cast<uint8_t>((e.flags & ~kOnSsd) | kNoSpill);
  // A promotion in flight will fail to find the record and drop the block then.
  if ((e.flags & (kInDram | kPromoting)) == 0 && e.state == BlockState::kCommitted) {
    DropCommitted(ref.id);
    return;
  }
  // Under a policy DRAM now holds its only copy: it moves to the DRAM-only list (without one,
  // both kinds share one list and it keeps its place in the LRU order).
  // Its record was the oldest on SSD: it goes in at the cold end.
  if (admission_ != nullptr && (e.flags & kInDram) != 0) Relist(ref.id, /*front=*/false);
}

void DramPool::ExportKept(std::vector<KeptBlock>* out) const {
  std::vector<uint32_t> ids;
  for (uint32_t id = 0; id < index_.capacity(); ++id) {
    const BlockEntry& e = index_.at(id);
    if (e.state != BlockState::kCommitted || (e.flags & kInDram) == 0 || Expired(e)) continue;
    ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end(), [&](uint32_t a, uint32_t b) {
    return last_use_[a] < last_use_[b];
  });
  for (uint32_t id : ids) {
    const BlockEntry& e = index_.at(id);
    KeptBlock k;
    k.key = e.Key();
    k.offset = e.offset;
    k.size = e.size;
    k.ttl_s = e.expires_s == 0 ? 0 : e.expires_s - now_s_;
    k.on_ssd = (e.flags & kOnSsd) != 0;
    if (k.on_ssd) k.ssd = SsdRef{e.ssd_segment, e.ssd_page};
    k.reused = (e.flags & kReused) != 0;
    out->push_back(k);
  }
}

DramPool::AdoptResult DramPool::Adopt(const KeptBlock& block) {
  if (block.size == 0 || block.size > options_.max_block_bytes) return AdoptResult::kInconsistent;
  const uint8_t cls = classes_.ClassFor(block.size);
  uint32_t id = index_.Find(block.key);
  // Only an SSD-only block recovered from the spill files can be there already.
  if (id != BlockIndex::kNil && (index_.at(id).state != BlockState::kCommitted ||
                                 (index_.at(id).flags & kInDram) != 0)) {
    return AdoptResult::kInconsistent;  // the key twice
  }
  // A full index (the SSD tier's recovery filled it) makes room as a Reserve would: the oldest
  // SSD-only entry goes first, since this block exists nowhere but here.
  if (id == BlockIndex::kNil && index_.full() && !EvictForIndex()) return AdoptResult::kNoRoom;
  const uint32_t large_slabs =
      cls == SizeClasses::kLarge
          ? static_cast<uint32_t>(AlignUp(block.size, classes_.slab_bytes()) / classes_.slab_bytes())
          : 0;
  if (!slabs_.AllocAt(block.offset, cls, large_slabs)) return AdoptResult::kInconsistent;
  if (id != BlockIndex::kNil) {
    const BlockEntry& found = index_.at(id);
    const bool same = block.on_ssd && found.size == block.size &&
                      SsdRef{found.ssd_segment, found.ssd_page} == block.ssd;
    if (!same) {
      DropCommitted(id);  // an older record of the key: the DRAM block is the live one
      id = BlockIndex::kNil;
    }
  }
  if (id == BlockIndex::kNil) {
    id = index_.Insert(block.key);
    BlockEntry& e = index_.at(id);
    e.state = BlockState::kCommitted;
    e.size = block.size;
    e.size_class = cls;
    if (options_.spill && block.size <= options_.spill_max_block_bytes) {
      e.flags = kInDram | kDirty;
      tier_.dirty_bytes += SlotBytes(e);
    } else {
      e.flags = kInDram | kNoSpill;
    }
    ++committed_;
  } else {
    BlockEntry& e = index_.at(id);  // the recovered SSD-only entry: now a clean copy too
    Unlist(id);
    e.flags |= kInDram;
    --tier_.ssd_only_blocks;
  }
  BlockEntry& e = index_.at(id);
  e.size_class = cls;
  e.offset = block.offset;
  if (block.reused) e.flags |= kReused;
  e.expires_s = block.ttl_s == 0 ? 0
                : block.ttl_s > UINT32_MAX - now_s_ ? UINT32_MAX
                                                    : now_s_ + block.ttl_s;
  slabs_.SetOwner(e.offset, id);
  if ((e.flags & kDirty) != 0) slabs_.Pin(e.offset);  // as Commit: dirty blocks pin their slab
  last_use_[id] = ++tick_;
  slabs_.Touch(e.offset, tick_);
  used_bytes_ += SlotBytes(e);
  Relist(id);
  return AdoptResult::kAdopted;
}

uint64_t DramPool::ZeroUnallocated(std::byte* memory) {
  uint64_t zeroed = 0;
  slabs_.ForEachUnallocated([&](uint64_t offset, uint64_t bytes) {
    std::memset(memory + offset, 0, bytes);
    zeroed += bytes;
  });
  for (uint32_t id = 0; id < index_.capacity(); ++id) {
    const BlockEntry& e = index_.at(id);
    if (e.state != BlockState::kCommitted || (e.flags & kInDram) == 0) continue;
    const uint64_t tail = SlotBytes(e) - e.size;
    std::memset(memory + e.offset + e.size, 0, tail);
    zeroed += tail;
  }
  return zeroed;
}

std::optional<BlockRef> DramPool::InsertRecovered(const BlockKey& key, uint64_t size,
                                                  SsdRef ssd, uint32_t ttl_s) {
  const bool fits = size > 0 && size <= options_.max_block_bytes;
  if (!fits || index_.Find(key) != BlockIndex::kNil || (index_.full() && !EvictForIndex())) {
    SpillOrder order;
    order.kind = SpillOrder::Kind::kRelease;
    order.ssd = ssd;
    orders_.push_back(order);
    return std::nullopt;
  }
  const uint32_t id = index_.Insert(key);
  BlockEntry& e = index_.at(id);
  e.state = BlockState::kCommitted;
  e.flags = kOnSsd;
  e.size = static_cast<uint32_t>(size);
  e.size_class = classes_.ClassFor(size);
  e.ssd_segment = ssd.segment;
  e.ssd_page = ssd.page;
  if (ttl_s != 0) e.expires_s = ttl_s > UINT32_MAX - now_s_ ? UINT32_MAX : now_s_ + ttl_s;
  ++committed_;
  ++tier_.ssd_blocks;
  ++tier_.ssd_only_blocks;
  tier_.ssd_payload_bytes += size;
  Relist(id);
  return BlockRef{id, e.generation};
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
  out->index_bytes = index_.MemoryBytes() + slabs_.MemoryBytes() +
                     last_use_.size() * sizeof(uint64_t);
  out->hits = hits_;
  out->misses = misses_;
  out->evictions = evictions_;
  out->ssd_blocks = tier_.ssd_blocks;
  out->ssd_only_blocks = tier_.ssd_only_blocks;
  out->ssd_payload_bytes = tier_.ssd_payload_bytes;
  out->dirty_bytes = tier_.dirty_bytes;
  out->demotions = tier_.demotions;
  out->promotions = tier_.promotions;
  out->demote_failures = tier_.demote_failures;
  out->promote_failures = tier_.promote_failures;
  out->integrity_failures = tier_.integrity_failures;
  out->ssd_dropped = tier_.ssd_dropped;
  out->expirations = expirations_;
}

}  // namespace kvtier
