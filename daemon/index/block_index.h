// BlockIndex: one tenant's map from BlockKey to its block, and the LRU lists.
//
// All memory is allocated at construction for `capacity` blocks: an entry array (96 bytes an
// entry) and a bucket array of 32-bit chain heads (one per entry, rounded up to a power of
// two). Entries are named by a 32-bit id and reused through a free list; each reuse bumps the
// entry's generation, so a stale (id, generation) pair held by a session can be detected.
// LRU lists are intrusive (prev/next ids in the entry), one per list number the caller picks.
// Not thread-safe: owned by one DramPool on the daemon's event-loop thread.
#pragma once

#include <cstdint>
#include <vector>

#include "daemon/index/block_key.h"

namespace kvtier {

enum class BlockState : uint8_t {
  kFree = 0,       // on the free list
  kReserved = 1,   // slot allocated, bytes being written; invisible to readers
  kCommitted = 2,  // visible
  kRemoved = 3,    // unlinked from the map, waiting for its last lease and its I/O to end
};

// BlockEntry::flags: where a committed block's bytes are, and what is happening to them.
namespace block_flags {
inline constexpr uint8_t kInDram = 1;   // `offset` names a slot in the pool
inline constexpr uint8_t kOnSsd = 2;    // ssd_segment/ssd_page name its spill record
inline constexpr uint8_t kDirty = 4;    // in DRAM only and due for demotion: pins its slab
inline constexpr uint8_t kDemoting = 8;  // a demotion write reads the slot (still kDirty)
inline constexpr uint8_t kNoSpill = 16;  // never demoted (too large, no SSD tier, or a failed
                                         // write): eviction drops it
inline constexpr uint8_t kPromoting = 32;  // a slot is allocated and pinned and a promotion read
                                           // is writing it; not kInDram until it verifies
inline constexpr uint8_t kReused = 64;  // found again since it was stored: worth an SSD write
inline constexpr uint8_t kDeclined = 128;  // kNoSpill because the policy declined its SSD write;
                                           // found again, it is dirty (due for demotion) again
// An entry with kDemoting or kPromoting is never freed: the worker uses its slot.
}  // namespace block_flags

struct BlockEntry {
  std::array<uint8_t, 32> key;
  uint8_t key_len;
  BlockState state;
  uint8_t size_class;
  uint8_t flags;           // block_flags
  uint32_t ns_id;
  uint64_t offset;         // in the pool
  uint32_t size;           // bytes the client asked for
  uint32_t generation;     // bumped each time the entry is freed
  uint32_t hash_next;      // next entry in the bucket chain
  uint32_t lru_prev;
  uint32_t lru_next;
  uint32_t lru_list;       // which LRU list it is on, or kNil
  uint32_t lease_count;
  uint32_t owner_session;  // kReserved: the reserving session
  uint32_t ssd_segment;    // kOnSsd: the spill segment id (ids start at 1)
  uint32_t ssd_page;       // kOnSsd: the record's offset in the segment / 4 KiB
  uint32_t expires_s;      // kCommitted: DramPool's clock second it expires at; 0: never.
                           // kReserved: its TTL in seconds, applied at commit

  BlockKey Key() const {
    BlockKey k;
    k.ns_id = ns_id;
    k.len = key_len;
    k.bytes = key;
    return k;
  }
};
static_assert(sizeof(BlockEntry) == 96);

class BlockIndex {
 public:
  static constexpr uint32_t kNil = UINT32_MAX;

  BlockIndex(uint32_t capacity, uint32_t lru_lists, uint64_t hash_seed);

  uint32_t Find(const BlockKey& key) const { return Find(key, Hash(key)); }
  // With the key's Hash, for a caller that needs the hash too.
  uint32_t Find(const BlockKey& key, uint64_t hash) const;
  uint64_t Hash(const BlockKey& key) const { return HashBlockKey(key, seed_); }
  // Takes a free entry, fills its key and links it into the map; kNil if the index is full.
  uint32_t Insert(const BlockKey& key);
  // Unlinks `id` from the map (it stays allocated, e.g. kRemoved while leased).
  void Unlink(uint32_t id);
  // Returns an entry that is neither in the map nor on an LRU list to the free list.
  void Free(uint32_t id);

  // LRU: front is the most recently used.
  void LruPushFront(uint32_t list, uint32_t id);
  void LruPushBack(uint32_t list, uint32_t id);
  void LruRemove(uint32_t id);  // no-op if not on a list
  uint32_t LruBack(uint32_t list) const { return lru_[list].tail; }

  BlockEntry& at(uint32_t id) { return entries_[id]; }
  const BlockEntry& at(uint32_t id) const { return entries_[id]; }
  bool full() const { return free_head_ == kNil; }
  uint32_t capacity() const { return static_cast<uint32_t>(entries_.size()); }
  uint32_t lru_lists() const { return static_cast<uint32_t>(lru_.size()); }
  uint64_t MemoryBytes() const {
    return entries_.size() * sizeof(BlockEntry) + buckets_.size() * sizeof(uint32_t);
  }

 private:
  struct List {
    uint32_t head = kNil;
    uint32_t tail = kNil;
  };
  uint32_t Bucket(const BlockKey& key) const { return BucketOf(Hash(key)); }
  uint32_t BucketOf(uint64_t hash) const { return static_cast<uint32_t>(hash & bucket_mask_); }
  static bool Matches(const BlockEntry& e, const BlockKey& key) {
    return e.ns_id == key.ns_id && e.key_len == key.len && e.key == key.bytes;
  }

  std::vector<BlockEntry> entries_;
  std::vector<uint32_t> buckets_;
  std::vector<List> lru_;
  uint64_t bucket_mask_;
  uint64_t seed_;
  uint32_t free_head_ = kNil;
};

}  // namespace kvtier
