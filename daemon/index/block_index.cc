#include "daemon/index/block_index.h"

#include <bit>

#include "ipc/base/check.h"

namespace kvtier {

BlockIndex::BlockIndex(uint32_t capacity, uint32_t lru_lists, uint64_t hash_seed)
    : entries_(capacity),
      buckets_(std::bit_ceil(uint64_t{capacity}), kNil),
      lru_(lru_lists),
      bucket_mask_(buckets_.size() - 1),
      seed_(hash_seed) {
  KVT_CHECK(capacity > 0 && capacity < kNil);
  // Thread the free list so that low ids are handed out first.
  for (uint32_t i = capacity; i-- > 0;) {
    BlockEntry& e = entries_[i];
    e = BlockEntry{};
    e.state = BlockState::kFree;
    e.hash_next = free_head_;
    e.lru_prev = e.lru_next = e.lru_list = kNil;
    free_head_ = i;
  }
}

uint32_t BlockIndex::Find(const BlockKey& key, uint64_t hash) const {
  for (uint32_t id = buckets_[BucketOf(hash)]; id != kNil; id = entries_[id].hash_next) {
    if (Matches(entries_[id], key)) return id;
  }
  return kNil;
}

uint32_t BlockIndex::Insert(const BlockKey& key) {
  if (free_head_ == kNil) return kNil;
  const uint32_t id = free_head_;
  BlockEntry& e = entries_[id];
  free_head_ = e.hash_next;
  e.key = key.bytes;
  e.key_len = key.len;
  e.ns_id = key.ns_id;
  e.lease_count = 0;
  e.flags = 0;
  e.ssd_segment = 0;
  e.ssd_page = 0;
  e.expires_s = 0;
  uint32_t& head = buckets_[Bucket(key)];
  e.hash_next = head;
  head = id;
  return id;
}

void BlockIndex::Unlink(uint32_t id) {
  const BlockEntry& e = entries_[id];
  for (uint32_t* link = &buckets_[Bucket(e.Key())]; *link != kNil;
       link = &entries_[*link].hash_next) {
    if (*link == id) {
      *link = e.hash_next;
      return;
    }
  }
  KVT_CHECK(false && "unlinking an entry that is not in the map");
}

void BlockIndex::Free(uint32_t id) {
  BlockEntry& e = entries_[id];
  KVT_DCHECK(e.lru_list == kNil && e.lease_count == 0);
  e.state = BlockState::kFree;
  ++e.generation;
  e.hash_next = free_head_;
  free_head_ = id;
}

void BlockIndex::LruPushFront(uint32_t list, uint32_t id) {
  BlockEntry& e = entries_[id];
  KVT_DCHECK(e.lru_list == kNil);
  List& l = lru_[list];
  e.lru_list = list;
  e.lru_prev = kNil;
  e.lru_next = l.head;
  if (l.head != kNil) entries_[l.head].lru_prev = id;
  l.head = id;
  if (l.tail == kNil) l.tail = id;
}

void BlockIndex::LruPushBack(uint32_t list, uint32_t id) {
  BlockEntry& e = entries_[id];
  KVT_DCHECK(e.lru_list == kNil);
  List& l = lru_[list];
  e.lru_list = list;
  e.lru_next = kNil;
  e.lru_prev = l.tail;
  if (l.tail != kNil) entries_[l.tail].lru_next = id;
  l.tail = id;
  if (l.head == kNil) l.head = id;
}

void BlockIndex::LruRemove(uint32_t id) {
  BlockEntry& e = entries_[id];
  if (e.lru_list == kNil) return;
  List& l = lru_[e.lru_list];
  if (e.lru_prev != kNil) {
    entries_[e.lru_prev].lru_next = e.lru_next;
  } else {
    l.head = e.lru_next;
  }
  if (e.lru_next != kNil) {
    entries_[e.lru_next].lru_prev = e.lru_prev;
  } else {
    l.tail = e.lru_prev;
  }
  e.lru_prev = e.lru_next = e.lru_list = kNil;
}

}  // namespace kvtier
