// Session: one client connection and everything it holds: its tenant and namespace after
// hello, its reservations, and its leases. Close() gives every reservation and lease back, so
// a client that exits or is killed leaves nothing pinned.
// Not thread-safe: owned by the Server's event-loop thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "daemon/pool/dram_pool.h"
#include "daemon/tenant/tenant_registry.h"
#include "daemon/transfer/region.h"
#include "ipc/base/unique_fd.h"
#include "ipc/socket/seqpacket.h"
#include "ipc/wire/frame_codec.h"

namespace kvtier {

// Leases of one session, named by ids that are only meaningful to that session: the low 32
// bits pick a slot, the high 32 bits are the slot's generation, so a released, guessed or
// another session's id never matches. Bounded by max_leases_per_session.
class LeaseTable {
 public:
  explicit LeaseTable(uint32_t max_leases) : max_(max_leases) {}

  // 0 if the table is full. Allocates nothing after MakeRoom.
  uint64_t Add(BlockRef ref);
  // Makes sure the next Add and every Take allocate nothing (may throw std::bad_alloc, before
  // anything changed): call it before taking what the lease will hold.
  void MakeRoom();
  // The lease's block, if `id` is a live lease here.
  std::optional<BlockRef> Peek(uint64_t id) const;
  // The lease's block, and the lease is gone; nullopt if `id` is not a live lease here.
  std::optional<BlockRef> Take(uint64_t id);
  template <typename F>
  void ForEach(F&& f) const {
    for (const Slot& s : slots_) {
      if (s.in_use) f(s.ref);
    }
  }
  uint32_t size() const { return live_; }

 private:
  struct Slot {
    BlockRef ref;
    uint32_t generation = 1;
    bool in_use = false;
  };
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  uint32_t max_;
  uint32_t live_ = 0;
};

// A request that waits for the SSD tier: a reserve or promotion waiting for demotions to make
// room, or acquires and prefetches waiting for their promotions. The server keeps the request
// and the reply begun for it, stops reading the session, and lets the handler continue it
// after each batch of spill results; the reply goes out when every item is settled.
struct ParkedRequest {
  std::vector<std::byte> frame;  // the request as received
  std::vector<std::byte> reply;  // kMaxFrameBytes; `writer` writes here
  wire::FrameWriter writer{std::span<std::byte>()};
  uint64_t arrived_us = 0;       // when the request was received (latency metrics)
};

// How far the handler got with a request's items (valid while it is parked).
struct ItemProgress {
  struct Waiting {
    uint32_t item;
    uint64_t lease_id;  // taken at once; valid when the promotion ends
  };
  uint32_t next = 0;          // first item not yet handled
  size_t items_offset = 0;    // where the reply's item array starts in the reply buffer
  std::vector<Waiting> waiting;
  // Prefetch: leases held on blocks already in DRAM until the whole request is settled, so a
  // later item's promotion cannot evict an earlier one before the reply.
  std::vector<uint64_t> held;
  // Reserve: why the first item refused with kResourceExhausted was refused.
  std::string refusal;
  // Offload and onload: the per-item results of their reserve or acquire phase (ReserveResult
  // or AcquireResult each), kept here because their replies carry other items.
  std::vector<std::byte> scratch;
  // Nonzero while the parked request's copy runs (its CopyJob id).
  uint64_t copy_id = 0;
};

// What an offload or onload holds while its copy runs: per copied item, a lease on its block
// (onload; taken out of the session's lease table, so no id the client could guess ends it
// mid-copy) or the session's reservation of it (offload, by key). They end with the copy's
// final result; the session outlives its connection until then.
struct CopyHold {
  struct Item {
    uint32_t index = 0;  // the item's position in the request
    BlockRef ref;        // onload: the leased block
    BlockKey key;        // offload
  };
  wire::Op op = wire::Op::kOnload;
  std::vector<Item> items;
};

class Session {
 public:
  // `connected_to`: the tenant whose connections (Tenant::connections) this session counts in
  // until it is destroyed.
  Session(uint32_t id, UniqueFd fd, PeerCredentials peer, uint32_t max_leases,
          Tenant* connected_to)
      : id_(id), fd_(std::move(fd)), peer_(peer), leases_(max_leases), connected_to_(connected_to) {
    ++connected_to_->connections;
  }
  ~Session() {  // the fd closes with the UniqueFd
    Close();
    --connected_to_->connections;
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Gives back every lease and reservation; the session serves nothing more. The fd stays open
  // until the Session is destroyed, so its number cannot be reused while the loop still holds
  // events for it, but it is shut down first (Revoke). Idempotent.
  void Close();
  // The session serves nothing more, but keeps what it holds until Close: its copies in
  // flight still read or write those blocks and regions.
  void Detach() {
    Revoke();
    closed_ = true;
    pending_reply_.clear();
    parked_.reset();
  }
  bool closed() const { return closed_; }
  // Offload and onload copies of this session still running.
  uint32_t& copies_in_flight() { return copies_in_flight_; }
  RegionTable& regions() { return regions_; }

  void Attach(Tenant* tenant, uint32_t ns_id) {
    tenant_ = tenant;
    ns_id_ = ns_id;
    ++tenant_->sessions;
  }
  // Allocates nothing after MakeRoomForReservation.
  void NoteReservation(BlockRef ref);
  // May throw std::bad_alloc: call it before reserving in the pool.
  void MakeRoomForReservation() {
    if (reservations_.size() == reservations_.capacity()) {
      reservations_.reserve(std::max<size_t>(16, 2 * reservations_.size()));
    }
  }
  void NoteReservationEnded() { --live_reservations_; }

  uint32_t id() const { return id_; }
  uint64_t hello_deadline_us() const { return hello_deadline_us_; }
  void set_hello_deadline_us(uint64_t t) { hello_deadline_us_ = t; }
  int fd() const { return fd_.get(); }
  const PeerCredentials& peer() const { return peer_; }
  Tenant* tenant() const { return tenant_; }
  uint32_t ns_id() const { return ns_id_; }
  LeaseTable& leases() { return leases_; }
  std::vector<std::byte>& pending_reply() { return pending_reply_; }
  ItemProgress& progress() { return progress_; }
  // Non-null while a request waits (see ParkedRequest).
  std::unique_ptr<ParkedRequest>& parked() { return parked_; }

 private:
  // Shuts the socket down before any lease is given back. The client library's lease check
  // (Leases::Verify, kvtier_verify_leases) relies on this order: a leased slot can be reused
  // or wiped (purge, shutdown, eviction) only after its session's peer sees the hang-up.
  void Revoke();

  uint32_t id_;
  UniqueFd fd_;
  PeerCredentials peer_;
  Tenant* tenant_ = nullptr;
  uint32_t ns_id_ = 0;
  // Reservations this session made; some may since have been committed or aborted, which
  // DramPool::IsReservedBy tells. Compacted when mostly stale.
  std::vector<BlockRef> reservations_;
  uint32_t live_reservations_ = 0;
  LeaseTable leases_;
  std::vector<std::byte> pending_reply_;  // a reply the socket could not take yet
  ItemProgress progress_;
  std::unique_ptr<ParkedRequest> parked_;
  RegionTable regions_;
  uint32_t copies_in_flight_ = 0;
  Tenant* connected_to_;
  bool closed_ = false;
  uint64_t hello_deadline_us_ = 0;
};

}  // namespace kvtier
