#include "daemon/server/session.h"

#include <sys/socket.h>

#include <algorithm>
#include <atomic>

namespace kvtier {

uint64_t LeaseTable::Add(BlockRef ref) {
  uint32_t index;
  if (!free_.empty()) {
    index = free_.back();
    free_.pop_back();
  } else if (slots_.size() < max_) {
    index = static_cast<uint32_t>(slots_.size());
    slots_.emplace_back();
  } else {
    return 0;
  }
  Slot& s = slots_[index];
  s.ref = ref;
  s.in_use = true;
  ++live_;
  return (uint64_t{s.generation} << 32) | index;
}

void LeaseTable::MakeRoom() {
  if (free_.empty() && slots_.size() < max_ && slots_.size() == slots_.capacity()) {
    slots_.reserve(std::min<size_t>(max_, std::max<size_t>(16, 2 * slots_.size())));
  }
  // Take pushes each slot's index at most once.
  if (free_.capacity() < slots_.capacity()) free_.reserve(slots_.capacity());
}

std::optional<BlockRef> LeaseTable::Peek(uint64_t id) const {
  const auto index = static_cast<uint32_t>(id);
  const auto generation = static_cast<uint32_t>(id >> 32);
  if (index >= slots_.size()) return std::nullopt;
  const Slot& s = slots_[index];
  if (!s.in_use || s.generation != generation) return std::nullopt;
  return s.ref;
}

std::optional<BlockRef> LeaseTable::Take(uint64_t id) {
  const auto index = static_cast<uint32_t>(id);
  const auto generation = static_cast<uint32_t>(id >> 32);
  if (index >= slots_.size()) return std::nullopt;
  Slot& s = slots_[index];
  if (!s.in_use || s.generation != generation) return std::nullopt;
  s.in_use = false;
  // Generation 0 is never used, so id 0 is never a lease.
  if (++s.generation == 0) s.generation = 1;
  free_.push_back(index);
  --live_;
  return s.ref;
}

void Session::NoteReservation(BlockRef ref) {
  ++live_reservations_;
  if (reservations_.size() >= 64 && reservations_.size() > 2 * size_t{live_reservations_}) {
    DramPool& pool = *tenant_->pool;
    std::erase_if(reservations_, [&](BlockRef r) { return !pool.IsReservedBy(r, id_); });
  }
  reservations_.push_back(ref);
}

void Session::Revoke() {
  if (fd_.valid()) shutdown(fd_.get(), SHUT_RDWR);
  // The hang-up must be visible before any store to a slot this session leased.
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

void Session::Close() {
  Revoke();
  if (tenant_ != nullptr) {
    DramPool& pool = *tenant_->pool;
    leases_.ForEach([&](BlockRef ref) { pool.Release(ref); });
    for (BlockRef ref : reservations_) pool.AbortIfReservedBy(ref, id_);
    reservations_.clear();
    leases_ = LeaseTable(0);
    tenant_->regions -= static_cast<uint32_t>(regions_.size());
    --tenant_->sessions;
    tenant_ = nullptr;
  }
  pending_reply_.clear();
  parked_.reset();
  progress_ = ItemProgress{};
  regions_.Clear();
  closed_ = true;
}

}  // namespace kvtier
