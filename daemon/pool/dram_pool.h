// DramPool: one tenant's warm tier: which blocks exist, where their bytes are, and who may
// touch them. It allocates slots (SlabAllocator) and names blocks (BlockIndex); it never reads
// or writes block bytes (clients do, through their mapping of the pool).
//
// Life of a block: Reserve (slot allocated, invisible, pinned for the reserving session) ->
// Commit (visible, on its class's LRU list) -> Acquire/Release (a leased block is pinned: never
// evicted, moved or reused) -> dropped by Remove or eviction. A reservation or lease is named
// by a BlockRef (entry id + generation) that sessions keep and give back.
//
// Eviction, when a reserve finds no free slot: first the least-recently-used unpinned block of
// the same size class (its slot is reused as is); otherwise the whole-slab window whose newest
// use is oldest and that holds no pinned block (the slab changes class). Eviction happens in
// one place, EvictLocked-style `Evict()`, where the SSD tier will demote instead of drop.
// Not thread-safe: used on the daemon's event-loop thread only.
#pragma once

#include <cstdint>
#include <vector>

#include "daemon/index/block_index.h"
#include "daemon/pool/size_classes.h"
#include "daemon/pool/slab_allocator.h"
#include "ipc/wire/protocol.h"
#include "kvclient/status.h"

namespace kvtier {

struct BlockRef {
  uint32_t id = BlockIndex::kNil;
  uint32_t generation = 0;
};

class DramPool {
 public:
  struct Options {
    uint64_t pool_bytes = 0;
    uint64_t slab_bytes = 0;
    uint64_t max_block_bytes = 0;  // <= UINT32_MAX (checked)
    uint32_t max_blocks = 0;
    uint64_t hash_seed = 0;
  };
  struct Placement {
    BlockRef ref;
    uint64_t offset = 0;
    uint64_t size = 0;
  };

  explicit DramPool(const Options& options);

  // kOk: `out` names a pinned slot of at least `size` bytes reserved for `session`.
  // kAlreadyExists: the key is committed or reserved (by anyone). kInvalidArgument: size is 0
  // or above max_block_bytes. kResourceExhausted: no room even after evicting every unpinned
  // block that could make room.
  StatusCode Reserve(const BlockKey& key, uint64_t size, uint32_t session, Placement* out);
  // kOk: the block is visible. kNotFound: `session` holds no reservation for the key.
  StatusCode Commit(const BlockKey& key, uint32_t session);
  // kOk: the reservation is gone and its slot free. kNotFound as for Commit.
  StatusCode Abort(const BlockKey& key, uint32_t session);
  // Session teardown: aborts `ref` if it is still a reservation of `session`.
  void AbortIfReservedBy(BlockRef ref, uint32_t session);
  bool IsReservedBy(BlockRef ref, uint32_t session) const;

  // The tier of a committed block (kDram) or kNone; a hit counts as a use for the LRU.
  wire::Tier Match(const BlockKey& key);
  // kOk: `out` names the leased block. kNotFound: not committed. kResourceExhausted: the block
  // already has 2^32 - 1 leases.
  StatusCode Acquire(const BlockKey& key, Placement* out);
  // Ends one lease taken by Acquire. The caller guarantees `ref` is a live lease.
  void Release(BlockRef ref);
  // kOk: the key is gone for readers; a leased block's slot is freed when its last lease ends.
  // kNotFound: not committed.
  StatusCode Remove(const BlockKey& key);

  void FillStats(wire::StatsReply* out) const;
  uint64_t pool_bytes() const { return options_.pool_bytes; }

 private:
  std::optional<uint64_t> AllocateSpace(uint8_t cls, uint64_t size);
  bool EvictForIndex(uint8_t cls);
  void Evict(uint32_t id);
  void Drop(uint32_t id);
  void Touch(uint32_t id);
  uint32_t LruListOf(uint8_t cls) const {
    return cls == SizeClasses::kLarge ? classes_.count() : cls;
  }
  uint64_t SlotBytes(const BlockEntry& e) const;

  Options options_;
  SizeClasses classes_;
  SlabAllocator slabs_;
  BlockIndex index_;
  std::vector<uint64_t> scratch_offsets_;  // reused by window eviction
  uint64_t tick_ = 0;
  // Stats.
  uint64_t used_bytes_ = 0;
  uint64_t committed_ = 0;
  uint64_t reserved_ = 0;
  uint64_t leased_ = 0;
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
  uint64_t evictions_ = 0;
};

}  // namespace kvtier
