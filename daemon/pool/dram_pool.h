// DramPool: one tenant's block index over two tiers: its DRAM pool (warm) and, when the tenant
// has one, its encrypted SSD spill store (cold). It decides which blocks live where and who may
// touch them; it never reads or writes block bytes and never does I/O. Bytes move by "spill
// orders" it queues (demote, promote, release), which the server turns into SpillWorker jobs
// (daemon/tier/spill_orders.h), and whose outcomes come back through DemoteDone / PromoteDone /
// SsdCopyLost.
//
// Life of a block: Reserve (slot allocated, invisible, pinned for the reserving session) ->
// Commit (visible) -> Acquire/Release (a leased block is pinned: never evicted, moved or
// reused) -> dropped by Remove or eviction.
//
// With an SSD tier a committed block starts "dirty" (in DRAM only) and pins its slab, so DRAM
// eviction can never lose it. Once dirty blocks exceed `dirty_limit_bytes`, the least recently
// used ones are demoted: written to SSD in the background while they stay readable in DRAM.
// A demoted ("clean") block is evictable: eviction frees its DRAM slot and keeps it in the
// index as an SSD-only block (match_prefix reports tier ssd). Acquire or Prefetch of an
// SSD-only block promotes it: a slot is allocated and pinned, a read is ordered, and leases
// taken meanwhile complete when PromoteDone reports the bytes in place. A reserve or promotion
// that finds no free or clean slot while demotions are in flight answers kUnavailable ("wait"):
// the caller parks the request and retries after the next DemoteDone. Blocks too large for the
// spill store, or whose demotion failed, are "no-spill" and evicted by dropping them, as are
// all blocks of a tenant without an SSD tier.
//
// Which dirty blocks are worth an SSD write is the tenant's policy's call (SsdAdmission; none:
// every one): a dirty block it declines when its turn to be demoted comes stays in DRAM only,
// evictable by dropping it, unless it was found again since it was stored (kReused), which is
// evidence enough.
//
// Eviction, when a reserve finds no free slot, is global across size classes: the least-
// recently-used unpinned clean block of the same size class (its slot is reused as is), unless
// another class's coldest block sits in a slab whose every block is colder still and unpinned:
// then that whole slab is emptied and changes class. With no clean block of the class, the
// whole-slab window whose newest use is oldest and that holds no pinned block goes. When the
// index is full, the oldest SSD-only entry is dropped first, then the oldest clean DRAM block.
// Evict empties a tier (or all of them) on demand, e.g. for an operator or a tenant purge.
// Not thread-safe: used on the daemon's event-loop thread only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/index/block_index.h"
#include "daemon/pool/size_classes.h"
#include "daemon/pool/slab_allocator.h"
#include "daemon/pool/ssd_admission.h"
#include "daemon/spill/ssd_ref.h"
#include "ipc/wire/protocol.h"
#include "kvclient/status.h"

namespace kvtier {

struct BlockRef {
  uint32_t id = BlockIndex::kNil;
  uint32_t generation = 0;

  // The 64-bit tag a spill job carries for the block.
  uint64_t tag() const { return uint64_t{generation} << 32 | id; }
  static BlockRef FromTag(uint64_t tag) {
    return {static_cast<uint32_t>(tag), static_cast<uint32_t>(tag >> 32)};
  }
};

// Work for the spill store that a pool call decided on (DramPool::TakeOrders).
struct SpillOrder {
  enum class Kind : uint8_t {
    kDemote,   // write `size` bytes at pool `offset` as `key`; answer with DemoteDone(ref)
    kPromote,  // read record `ssd` (`size` bytes) into pool `offset`; answer with PromoteDone
    kRelease,  // the record `ssd` is dead
  };
  Kind kind = Kind::kDemote;
  BlockRef ref;
  uint64_t offset = 0;
  uint64_t size = 0;
  SsdRef ssd;
  BlockKey key;
};

// Counters of the SSD side, for stats.
struct TierCounters {
  uint64_t ssd_blocks = 0;         // blocks with a record on SSD (clean in DRAM or SSD-only)
  uint64_t ssd_only_blocks = 0;    // of which not in DRAM
  uint64_t ssd_payload_bytes = 0;  // their sizes
  uint64_t dirty_bytes = 0;        // DRAM slot bytes of blocks not yet on SSD (demoting too)
  uint64_t demotions = 0;          // blocks written to SSD
  uint64_t promotions = 0;         // blocks read back from SSD into DRAM
  uint64_t demote_failures = 0;    // writes that failed (ENOSPC, EIO): the block stays in DRAM
  uint64_t promote_failures = 0;   // reads that failed or did not verify: the block is gone
  uint64_t integrity_failures = 0; // of which failed authentication (tampered or torn)
  uint64_t ssd_dropped = 0;        // SSD records lost to segment reclaim (quota pressure)
  uint64_t ssd_evictions = 0;      // clean blocks whose DRAM slot was freed (still on SSD)
  uint64_t ssd_declined = 0;       // dirty blocks the policy kept off SSD (no evidence of reuse)
};

// An engine's hint about a block (DramPool::Hint).
enum class BlockHint : uint8_t {
  kReuseSoon,  // it will be read again soon: keep it, and it is worth an SSD write
  kDoneWith,   // the request that used it is done with it: let it go first
};

// A committed DRAM block as a restart hands it to the next process (DramPool::ExportKept,
// DramPool::Adopt; daemon/tier/warm_restart.h). Its bytes stay where they are in the pool.
struct KeptBlock {
  BlockKey key;
  uint64_t offset = 0;
  uint32_t size = 0;
  uint32_t ttl_s = 0;     // seconds it has left to live; 0: it never expires
  bool on_ssd = false;    // it also has the SSD record `ssd`
  SsdRef ssd;
  bool reused = false;    // found again since it was stored (block_flags::kReused)
};

// Which tier DramPool::Evict empties.
enum class EvictTiers : uint8_t { kDram, kSsd, kAll };

// What an Evict removed.
struct EvictReport {
  uint64_t dram_blocks = 0;     // blocks whose DRAM copy went
  uint64_t dram_bytes = 0;      // their block sizes
  uint64_t ssd_blocks = 0;      // blocks whose SSD record went
  uint64_t ssd_bytes = 0;       // their payload sizes
  uint64_t dropped_blocks = 0;  // blocks gone from the index entirely (no copy left)
  uint64_t kept_pinned = 0;     // blocks skipped because leased, reserved or with I/O in flight
};

class DramPool {
 public:
  struct Options {
    uint64_t pool_bytes = 0;
    uint64_t slab_bytes = 0;
    uint64_t max_block_bytes = 0;  // <= UINT32_MAX (checked)
    uint32_t max_blocks = 0;
    uint64_t hash_seed = 0;
    // The pool's memory, to zero freed slots (null: not zeroed, e.g. in unit tests).
    std::byte* zero_memory = nullptr;
    // Bytes of freed slots zeroed per scrub round (see "Scrubbing" below); the default zeroes
    // every slot at once, as a pool without a server loop wants.
    uint64_t scrub_bytes_per_round = UINT64_MAX;
    // SSD tier: off when spill is false.
    bool spill = false;
    uint64_t spill_max_block_bytes = 0;  // larger blocks are never demoted
    uint64_t dirty_limit_bytes = 0;      // demote LRU dirty blocks beyond this
    uint32_t max_demotions_in_flight = 16;
  };
  struct Placement {
    BlockRef ref;
    uint64_t offset = 0;
    uint64_t size = 0;
  };

  explicit DramPool(const Options& options);

  // kOk: `out` names a pinned slot of at least `size` bytes reserved for `session`.
  // kAlreadyExists: the key is committed or reserved (by anyone). kInvalidArgument: size is 0
  // or above max_block_bytes. kUnavailable: no room yet, but demotions in flight will make some
  // (retry after DemoteDone; never sent to a client). kResourceExhausted: no room even after
  // evicting every unpinned block that could make room (last_refusal() says why).
  // `ttl_s`: seconds from commit until the block expires (0: never).
  StatusCode Reserve(const BlockKey& key, uint64_t size, uint32_t session, Placement* out,
                     uint32_t ttl_s = 0);
  // kOk: the block is visible. kNotFound: `session` holds no reservation for the key.
  StatusCode Commit(const BlockKey& key, uint32_t session);
  // kOk: the reservation is gone and its slot free. kNotFound as for Commit.
  StatusCode Abort(const BlockKey& key, uint32_t session);
  // Session teardown: aborts `ref` if it is still a reservation of `session`.
  void AbortIfReservedBy(BlockRef ref, uint32_t session);
  bool IsReservedBy(BlockRef ref, uint32_t session) const;

  // The tier of a committed block (kDram, or kSsd while it is not in DRAM) or kNone; a hit
  // counts as a use for the LRU.
  wire::Tier Match(const BlockKey& key) {
    uint64_t size = 0;
    return Match(key, &size);
  }
  // The same, and `*size` gets a found block's size.
  wire::Tier Match(const BlockKey& key, uint64_t* size);
  // The size of a block with a demotion or promotion in flight (its entry stays until the
  // I/O's result).
  uint64_t IoBytes(BlockRef ref) const { return index_.at(ref.id).size; }
  // kOk: `out` names the leased block; `*tier` is kDram if its bytes are in place, kSsd if a
  // promotion is in flight (the lease is valid; read the bytes after IsInDram(out->ref)).
  // kNotFound: not committed. kUnavailable: an SSD block needs a slot that demotions in flight
  // will free (retry). kResourceExhausted: no slot for the promotion, or the block already has
  // 2^32 - 1 leases (last_refusal() says which).
  StatusCode Acquire(const BlockKey& key, Placement* out, wire::Tier* tier);
  StatusCode Acquire(const BlockKey& key, Placement* out) {
    wire::Tier tier;
    return Acquire(key, out, &tier);
  }
  // A leased block whose promotion has ended: true if its bytes are in DRAM, false if the
  // promotion failed (the block is gone; release the lease and report a miss).
  bool IsInDram(BlockRef ref) const;
  // Where a live block's slot is.
  Placement PlacementOf(BlockRef ref) const;
  bool IsPromoting(BlockRef ref) const;
  // Ends one lease taken by Acquire. The caller guarantees `ref` is a live lease.
  void Release(BlockRef ref);
  // kOk: the key is gone for readers; a leased block's slot is freed when its last lease ends.
  // kNotFound: not committed.
  StatusCode Remove(const BlockKey& key);
  // An engine's hint (no hit or miss is counted). kReuseSoon: the block counts as used now and
  // as reused (its demotion is never declined), and the policy counts a sighting of the key
  // even when it is not stored yet (so its store is admitted). kDoneWith: the block goes to the
  // cold end of its list: the first to leave DRAM, or to be demoted (or declined). kOk, or
  // kNotFound when the key is not committed.
  StatusCode Hint(const BlockKey& key, BlockHint hint);
  // Why the last Reserve or Acquire answered kResourceExhausted: which limit, and by how much
  // (the caller prefixes the tenant). Only meaningful right after such an answer.
  const std::string& last_refusal() const { return last_refusal_; }

  // Empties `tiers` of every block that is not pinned, at once; counts in evictions (every
  // block that left DRAM or the index) and ssd_evictions, never in expirations.
  //   kDram: a clean block (on SSD) stays as an SSD-only block; any other block in DRAM
  //          (dirty, no-spill, or a pool without SSD tier) is dropped.
  //   kSsd:  an SSD-only block is dropped; a block in DRAM loses its SSD copy and is dirty
  //          again (due for demotion) or, if too large to spill, no-spill.
  //   kAll:  every block is dropped from every tier.
  // Pinned blocks are left as they are and counted in kept_pinned: reserved, leased, and with a
  // demotion or promotion in flight; except that kAll unpublishes a block with I/O in flight
  // (a miss at once, counted as dropped) and drops it when its DemoteDone/PromoteDone arrives.
  // `release_ssd_records`: queue a kRelease order for each SSD record dropped; false when the
  // caller erases the whole store instead. A tenant purge closes every session of the tenant
  // first (no lease or reservation is left), calls Evict(kAll, false), posts its orders and a
  // SpillJob::kErase, and applies results until kErased: then the pool is empty() and idle().
  EvictReport Evict(EvictTiers tiers, bool release_ssd_records = true);
  // No block and no DRAM byte in use (kRemoved blocks waiting for I/O count as blocks).
  bool empty() const { return committed_ == 0 && reserved_ == 0 && used_bytes_ == 0; }

  // --- SSD tier (only with Options::spill) ---
  // Queues demotions while dirty blocks exceed the dirty limit.
  void Demote();
  // Orders queued by any call since the last TakeOrders, appended to `out`.
  void TakeOrders(std::vector<SpillOrder>* out);
  bool has_orders() const { return !orders_.empty(); }
  // Outcome of a kDemote order: `ssd` is where the record went (status OK).
  void DemoteDone(BlockRef ref, const Status& status, SsdRef ssd);
  // Outcome of a kPromote order; kDataLoss counts as an integrity failure.
  void PromoteDone(BlockRef ref, const Status& status);
  // The spill store dropped the record `ssd` of block `ref` (segment reclaim).
  void SsdCopyLost(BlockRef ref, SsdRef ssd);
  // Start-up: a record found on SSD becomes an SSD-only block. Returns its ref, or nullopt
  // (a release is queued) when the key exists or the index is full.
  // `ttl_s`: the record keeps no expiry, so it gets this one from now (0: never).
  std::optional<BlockRef> InsertRecovered(const BlockKey& key, uint64_t size, SsdRef ssd,
                                          uint32_t ttl_s = 0);
  uint32_t demotions_in_flight() const { return demotions_in_flight_; }
  uint32_t promotions_in_flight() const { return promotions_in_flight_; }
  // No demotion or promotion in flight: no spill job reads or writes this pool's memory.
  bool idle() const { return demotions_in_flight_ == 0 && promotions_in_flight_ == 0; }
  const TierCounters& tier_counters() const { return tier_; }

  void FillStats(wire::StatsReply* out) const;
  uint64_t pool_bytes() const { return options_.pool_bytes; }
  // Of the hits in FillStats, those on blocks that were on SSD only (metrics: hits by tier).
  uint64_t ssd_hits() const { return ssd_hits_; }
  // Committed blocks whose only copy is in DRAM (dirty, no-spill, or no SSD tier): their
  // bytes, and their count in `blocks`. O(index capacity).
  uint64_t UnspilledBytes(uint64_t* blocks) const;
  // The tenant's SSD admission (null: every block that fits goes to SSD); it must outlive the
  // pool or be replaced first. A drain (dirty limit 0, after WriteDeclined) writes every block
  // regardless: DRAM is about to be lost.
  // `resort` (a reload switching between a policy and none): the evictable blocks are sorted
  // into the lists the new one uses (their LRU order is not kept), and without a policy the
  // declined blocks are due for SSD again. O(index capacity).
  void set_admission(SsdAdmission* admission, bool resort = false);
  // Drain, or a switch to no policy: every block the policy declined is due for SSD again
  // (dirty, as after Commit). Returns how many. O(index capacity).
  uint64_t WriteDeclined();
  // Drain: 0 makes Demote() write out every dirty block that can go to SSD.
  void set_dirty_limit_bytes(uint64_t bytes) { options_.dirty_limit_bytes = bytes; }

  // --- Keeping DRAM across a restart (daemon/tier/warm_restart.h) ---
  // The committed blocks whose bytes are in DRAM (not those being promoted or removed),
  // coldest first, appended to `out`. Expired blocks are left out.
  void ExportKept(std::vector<KeptBlock>* out) const;
  // Start-up, before any request and after the SSD tier's recovery (InsertRecovered): takes
  // over a block of the previous process whose bytes are at `block.offset` already; call it
  // coldest first. An SSD-only entry of the same key with the same record and size becomes a
  // clean DRAM block; one with any other record is stale (released), and the block is dirty
  // (due for demotion) like any block DRAM alone holds. False, changing nothing, when the block
  // does not fit this pool: kNoRoom when the index is full even after evicting an SSD-only
  // entry, kInconsistent when its size or slot cannot be (outside the pool, not a slot of its
  // size class, overlapping a block adopted before, larger than max_block_bytes): a snapshot
  // that says so lies, and its caller should trust none of it.
  enum class AdoptResult : uint8_t { kAdopted, kNoRoom, kInconsistent };
  AdoptResult Adopt(const KeptBlock& block);
  // After the last Adopt: zeroes every byte of `memory` (the pool) that no adopted block holds,
  // free slots and the tail of each slot past its block alike, so that nothing the previous
  // process left there is ever handed out, whatever zero_freed says. Returns the bytes zeroed.
  uint64_t ZeroUnallocated(std::byte* memory);

  // --- Scrubbing (secure deletion of freed slots) ---
  // A freed slot is zeroed before it can be reused. Zeroing 1 GiB takes ~100 ms, and the event
  // loop that runs every tenant's requests must not stall for it, so each round gets a budget
  // (Options::scrub_bytes_per_round): freed slots are zeroed at once while it lasts, and the
  // rest wait in a queue, their slots pinned (no allocation or eviction can reach them), and
  // counted in used_bytes, until later rounds zero them. A Reserve or promotion that needs
  // their space uses what is left of the round's budget, or answers kUnavailable ("wait";
  // retry after the next round's Scrub). One exception: a promotion that evicts a block of its
  // own size class takes that block's slot over as it is, zeroing only the tail it will not
  // write, since the promotion overwrites the rest with authenticated bytes before any lease
  // reads them (and a failed promotion frees, so zeroes, the slot). The evicted block's bytes
  // stay in its tenant's own pool for the ~1 ms the read takes.
  // Starts a round: the budget is full again.
  void BeginScrubRound() { scrub_allowance_ = options_.scrub_bytes_per_round; }
  // Zeroes queued slots with what is left of this round's budget; returns the bytes zeroed.
  uint64_t Scrub();
  // Bytes of freed slots still to be zeroed.
  uint64_t scrub_pending_bytes() const { return scrub_pending_bytes_; }
  // Something was zeroed (and its space freed) since BeginScrubRound: requests waiting for
  // room may go on.
  bool scrubbed_this_round() const { return scrub_allowance_ < options_.scrub_bytes_per_round; }
  // Purge: frees every queued slot without zeroing it (the caller wipes the whole pool).
  void FreeQueuedSlotsUnzeroed();

  // --- Expiry ---
  // The pool's clock, in whole seconds (the daemon's monotonic uptime); only moves forward.
  // An expired block is a miss at once for every call; Reap reclaims expired blocks nobody
  // looks up.
  void SetNow(uint32_t now_s) { now_s_ = std::max(now_s_, now_s); }
  // Examines up to `budget` index entries (round robin) and drops the expired ones; returns
  // how many it dropped.
  uint32_t Reap(uint32_t budget);

 private:
  // AllocateFree, else evicts clean blocks to make room: nullopt when nothing is evictable, or
  // when the evicted slots wait to be zeroed (scrub_pending_bytes() > 0 then).
  // `overwritten`: the caller writes [0, size) of the slot with bytes nobody sees before they
  // are whole and authentic (a promotion): a victim's slot of the same class may then be taken
  // over as it is, only its tail past `size` zeroed, instead of being zeroed whole and freed.
  std::optional<uint64_t> AllocateSpace(uint8_t cls, uint64_t size, bool overwritten = false);
  // AllocateSpace, or: kUnavailable if demotions in flight (started here if need be) will make
  // room, kResourceExhausted if nothing will.
  StatusCode AllocateOrWait(uint8_t cls, uint64_t size, uint64_t* offset,
                            bool overwritten = false);
  // Evicts the unpinned clean block `id` but keeps its slot allocated for the caller: returns
  // the slot's offset (its bytes as they were).
  uint64_t TakeOverSlot(uint32_t id);
  bool EvictForIndex();
  // Frees an unpinned clean block's slot: it stays as an SSD-only block if it is on SSD.
  void EvictBlock(uint32_t id);
  // Evict(tiers)'s work on one unpinned committed block.
  void EvictFromDram(uint32_t id, EvictReport* report);
  void EvictFromSsd(uint32_t id, bool release_ssd_record, EvictReport* report);
  void EvictEverywhere(uint32_t id, bool release_ssd_record, EvictReport* report);
  // kResourceExhausted, with last_refusal_ saying what holds the pool or the index.
  StatusCode RefuseDram(uint8_t cls, uint64_t size);
  StatusCode RefuseIndex();
  // Unlinks a committed block and drops it from every tier.
  void DropCommitted(uint32_t id);
  void Drop(uint32_t id);
  // Drops a kRemoved entry once no lease or I/O holds it.
  void DropIfUnheld(uint32_t id);
  void FreeSlot(BlockEntry& e);
  // Zeroes [offset, offset + bytes) and gives the slot back to the allocator.
  void ScrubNow(uint64_t offset, uint64_t bytes);
  // Allocation without eviction: a free slot or run, or nullopt.
  std::optional<uint64_t> AllocateFree(uint8_t cls, uint64_t size);
  void Touch(uint32_t id);
  // Puts the entry on the list its state calls for (or none).
  void Relist(uint32_t id, bool front = true);
  void StartDemotion(uint32_t id);
  // The coldest dirty block's turn: a demotion is started (true), or the policy declines it
  // and it becomes evictable at the cold end of its clean list, dropped when evicted (false).
  bool DemoteOrDecline(uint32_t id);
  // A block is found (Match, Acquire): evidence of reuse for the policy; a declined block is
  // due for demotion again.
  void Found(uint32_t id, uint64_t hash);
  // Global eviction: empties the slab of another class's coldest block if every block in it is
  // colder than `victim` (this class's coldest) and unpinned. True if it did; false at once if
  // `victim` is kNil (the window scan is the global choice then).
  bool EvictColderSlab(uint8_t cls, uint32_t victim);
  // kNil, or the committed block of `key`; an expired one is dropped and reads as kNil.
  uint32_t FindCommitted(const BlockKey& key, uint64_t* hash = nullptr);
  bool Expired(const BlockEntry& e) const {
    return e.state == BlockState::kCommitted && e.expires_s != 0 && e.expires_s <= now_s_;
  }
  void Expire(uint32_t id);
  // Remove's work: unlinks a committed block and drops it once nothing holds it.
  void Unpublish(uint32_t id);
  // The block no longer has its SSD record (counters included); a kRelease order is queued for
  // it if `release`.
  void ForgetSsdRecord(BlockEntry& e, bool release = true);
  // Takes the entry off its LRU list (if any), keeping evictable_bytes_.
  void Unlist(uint32_t id);
  // LRU lists: the evictable (clean) blocks of each class (and one for large blocks) whose
  // bytes are also on SSD, then dirty, then SSD-only, then the evictable blocks of each class
  // that DRAM alone holds (no-spill: a tenant without SSD tier, too large, a failed write, or
  // declined by the policy).
  uint32_t CleanList(uint8_t cls, bool on_ssd) const {
    const uint32_t i = cls == SizeClasses::kLarge ? classes_.count() : cls;
    return on_ssd ? i : classes_.count() + 3u + i;
  }
  bool IsCleanList(uint32_t list) const {
    return list <= classes_.count() || (list >= classes_.count() + 3u && list != BlockIndex::kNil);
  }
  uint32_t DirtyList() const { return classes_.count() + 1u; }
  uint32_t SsdList() const { return classes_.count() + 2u; }
  uint32_t ListCount() const { return 2 * classes_.count() + 4u; }
  // The class's eviction victim (kNil if none): of its coldest block with a copy on SSD and its
  // coldest DRAM-only block, the colder, or with a policy (SsdAdmission) the former whenever
  // there is one: evicting a copy loses no hit, evicting a DRAM-only block loses the block.
  uint32_t VictimOf(uint8_t cls) const;
  uint64_t SlotBytes(const BlockEntry& e) const;

  Options options_;
  SizeClasses classes_;
  SlabAllocator slabs_;
  BlockIndex index_;
  std::vector<uint64_t> scratch_offsets_;  // reused by window eviction
  uint64_t tick_ = 0;
  std::vector<uint64_t> last_use_;  // by entry id: tick_ of its last use (global eviction)
  SsdAdmission* admission_ = nullptr;
  // Stats.
  uint64_t used_bytes_ = 0;
  uint64_t evictable_bytes_ = 0;  // slot bytes of the blocks on the clean LRU lists
  uint64_t committed_ = 0;
  uint64_t reserved_ = 0;
  uint64_t leased_ = 0;
  uint64_t hits_ = 0;
  uint64_t ssd_hits_ = 0;
  uint64_t misses_ = 0;
  uint64_t evictions_ = 0;
  uint64_t expirations_ = 0;
  uint32_t now_s_ = 1;        // 0 is "never" in BlockEntry::expires_s
  uint32_t reap_cursor_ = 0;
  std::string last_refusal_;
  // SSD tier.
  std::vector<SpillOrder> orders_;
  uint64_t demoting_bytes_ = 0;
  uint32_t demotions_in_flight_ = 0;
  uint32_t promotions_in_flight_ = 0;
  TierCounters tier_;
  // Scrubbing.
  struct PendingScrub {
    uint64_t offset = 0;
    uint64_t bytes = 0;
    uint64_t zeroed = 0;  // a large slot may be zeroed over several rounds
  };
  std::deque<PendingScrub> scrubs_;
  uint64_t scrub_pending_bytes_ = 0;
  uint64_t scrub_allowance_ = UINT64_MAX;
};

}  // namespace kvtier
