#include "daemon/server/request_handler.h"

#include <cstring>
#include <string>

#include "daemon/spill/spill_worker.h"
#include "ipc/base/check.h"

namespace kvtier {
namespace {

Status Invalid(std::string message) {
  return Status(StatusCode::kInvalidArgument, std::move(message));
}

// Per-item status replies are arrays of uint16_t, written unaligned-safe.
void PutCode(uint16_t* out, size_t i, StatusCode code) {
  const auto raw = static_cast<uint16_t>(code);
  std::memcpy(&out[i], &raw, sizeof(raw));
}

}  // namespace

RequestHandler::Outcome RequestHandler::Handle(Session& session, const wire::FrameView& request,
                                               wire::FrameWriter& reply) {
  if (request.op == wire::Op::kHello) return Hello(session, request, reply);
  if (session.tenant() == nullptr) {
    reply.SetStatus(Status(StatusCode::kFailedPrecondition,
                           "the first request of a session must be hello"));
    return {.close_session = true};
  }
  const size_t stride = wire::RequestItemBytes(request.op);
  if (request.op != wire::Op::kRelease && stride != 0) {
    const size_t key_stride = request.op == wire::Op::kReserve ? sizeof(wire::ReserveItem) : stride;
    if (Status s = CheckKeys(request, key_stride); !s.ok()) {
      reply.SetStatus(s);
      return {};
    }
  }
  session.progress() = ItemProgress{};
  switch (request.op) {
    case wire::Op::kReserve:
    case wire::Op::kAcquire:
    case wire::Op::kPrefetch: {
      const bool done = request.op == wire::Op::kReserve ? Reserve(session, request, reply)
                                                        : Acquire(session, request, reply);
      return {.park = !done};
    }
    case wire::Op::kCommit:
    case wire::Op::kAbort:
    case wire::Op::kRemove: PerKey(session, request, reply); break;
    case wire::Op::kMatchPrefix: MatchPrefix(session, request, reply); break;
    case wire::Op::kRelease: Release(session, request, reply); break;
    case wire::Op::kStats: Stats(session, reply); break;
    case wire::Op::kHello: break;  // handled above
  }
  return {};
}

bool RequestHandler::Continue(Session& session, const wire::FrameView& request,
                              wire::FrameWriter& reply) {
  if (request.op == wire::Op::kReserve) return Reserve(session, request, reply);
  return Acquire(session, request, reply);
}

RequestHandler::Outcome RequestHandler::Hello(Session& session, const wire::FrameView& request,
                                              wire::FrameWriter& reply) {
  if (session.tenant() != nullptr) {
    reply.SetStatus(Status(StatusCode::kFailedPrecondition, "hello sent twice in one session"));
    return {.close_session = true};
  }
  auto tenant = tenants_->Resolve(session.peer());
  if (!tenant.ok()) {
    reply.SetStatus(tenant.status());
    return {.close_session = true};
  }
  wire::HelloRequest hello;
  std::memcpy(&hello, request.body.data(), sizeof(hello));
  const std::string_view ns(reinterpret_cast<const char*>(request.body.data()) + sizeof(hello),
                            hello.namespace_bytes);
  auto ns_id = tenants_->NamespaceId(**tenant, ns);
  if (!ns_id.ok()) {
    reply.SetStatus(ns_id.status());
    return {.close_session = true};
  }
  session.Attach(*tenant, *ns_id);
  wire::HelloReply out{};
  out.session_id = session.id();
  out.pool_bytes = (*tenant)->memory.size();
  out.max_block_bytes = limits_.max_block_bytes;
  out.max_batch = wire::kMaxBatch;
  out.namespace_id = *ns_id;
  const std::string& name = (*tenant)->config.name;
  std::memcpy(out.tenant, name.data(), std::min(name.size(), sizeof(out.tenant) - 1));
  reply.Append(&out, sizeof(out));
  return {.pass_fd = (*tenant)->memory.fd()};
}

Status RequestHandler::CheckKeys(const wire::FrameView& request, size_t stride) const {
  for (size_t i = 0; i < request.header.count; ++i) {
    wire::WireKey key;
    std::memcpy(&key, request.body.data() + i * stride, sizeof(key));
    if (Status s = wire::CheckKey(key); !s.ok()) {
      return Invalid("item " + std::to_string(i) + ": " + s.message());
    }
  }
  return Status::Ok();
}

BlockKey RequestHandler::KeyAt(const Session& session, const wire::FrameView& request, size_t i,
                               size_t stride) const {
  // The key is the first member of every keyed item, and CheckKeys has vetted it.
  const std::byte* p = request.body.data() + i * stride;
  BlockKey key;
  key.ns_id = session.ns_id();
  std::memcpy(&key.len, p + offsetof(wire::WireKey, len), 1);
  std::memcpy(key.bytes.data(), p + offsetof(wire::WireKey, bytes), wire::kMaxKeyBytes);
  return key;
}

bool RequestHandler::Reserve(Session& session, const wire::FrameView& request,
                             wire::FrameWriter& reply) {
  const uint32_t n = request.header.count;
  ItemProgress& progress = session.progress();
  if (progress.next == 0 && progress.items_offset == 0) {
    for (uint32_t i = 0; i < n; ++i) {
      const auto item = request.ItemAt<wire::ReserveItem>(i);
      if (item.reserved != 0) {
        reply.SetStatus(Invalid("item " + std::to_string(i) + ": reserved field is not zero"));
        return true;
      }
      if (item.size == 0 || item.size > limits_.max_block_bytes) {
        reply.SetStatus(Invalid("item " + std::to_string(i) + ": block size " +
                                std::to_string(item.size) + " is outside 1.." +
                                std::to_string(limits_.max_block_bytes) + " (max_block_bytes)"));
        return true;
      }
    }
    auto* items = reply.AppendItems<wire::ReserveResult>(n);
    KVT_CHECK(items != nullptr);  // replies are smaller than the largest request
    progress.items_offset =
        static_cast<size_t>(reinterpret_cast<std::byte*>(items) - reply.buffer().data());
  }
  auto* out = reinterpret_cast<wire::ReserveResult*>(reply.buffer().data() + progress.items_offset);
  DramPool& pool = *session.tenant()->pool;
  for (; progress.next < n; ++progress.next) {
    const uint32_t i = progress.next;
    const auto item = request.ItemAt<wire::ReserveItem>(i);
    DramPool::Placement placement;
    const StatusCode code =
        pool.Reserve(KeyAt(session, request, i, sizeof(wire::ReserveItem)), item.size,
                     session.id(), &placement,
                     EffectiveTtl(session.tenant()->config, item.ttl_seconds));
    if (code == StatusCode::kUnavailable) return false;  // room is on its way to SSD
    if (code == StatusCode::kResourceExhausted && progress.refusal.empty()) {
      progress.refusal = "tenant '" + session.tenant()->config.name + "': " + pool.last_refusal();
    }
    wire::ReserveResult r{};
    r.status = static_cast<uint16_t>(code);
    if (code == StatusCode::kOk) {
      r.offset = placement.offset;
      session.NoteReservation(placement.ref);
    }
    std::memcpy(&out[i], &r, sizeof(r));
  }
  if (!progress.refusal.empty()) reply.InsertMessage(progress.refusal);
  return true;
}

void RequestHandler::PerKey(Session& session, const wire::FrameView& request,
                            wire::FrameWriter& reply) {
  DramPool& pool = *session.tenant()->pool;
  const uint32_t n = request.header.count;
  auto* out = reply.AppendItems<uint16_t>(n);
  KVT_CHECK(out != nullptr);
  for (uint32_t i = 0; i < n; ++i) {
    const BlockKey key = KeyAt(session, request, i, sizeof(wire::WireKey));
    StatusCode code = StatusCode::kInternal;
    switch (request.op) {
      case wire::Op::kCommit: code = pool.Commit(key, session.id()); break;
      case wire::Op::kAbort: code = pool.Abort(key, session.id()); break;
      default: code = pool.Remove(key); break;
    }
    if (code == StatusCode::kOk && request.op != wire::Op::kRemove) {
      session.NoteReservationEnded();
    }
    PutCode(out, i, code);
  }
}

void RequestHandler::MatchPrefix(Session& session, const wire::FrameView& request,
                                 wire::FrameWriter& reply) {
  DramPool& pool = *session.tenant()->pool;
  const uint32_t n = request.header.count;
  auto* tiers = reply.AppendItems<uint8_t>(n);
  KVT_CHECK(tiers != nullptr);
  uint32_t matched = 0;
  while (matched < n) {
    const wire::Tier tier = pool.Match(KeyAt(session, request, matched, sizeof(wire::WireKey)));
    if (tier == wire::Tier::kNone) break;
    tiers[matched++] = static_cast<uint8_t>(tier);
  }
  reply.SetCount(matched);
  // Shrink the body to the matched tiers.
  reply.Truncate(sizeof(uint8_t) * (n - matched));
}

// Acquire and Prefetch: a block in DRAM is leased at once; an SSD block is leased too and its
// promotion ordered, and its item is settled when the promotion ends. Prefetch holds its leases
// until every item is settled, gives them all back with the reply, and answers only a status
// per key.
bool RequestHandler::Acquire(Session& session, const wire::FrameView& request,
                             wire::FrameWriter& reply) {
  const bool prefetch = request.op == wire::Op::kPrefetch;
  const uint32_t n = request.header.count;
  ItemProgress& progress = session.progress();
  if (progress.next == 0 && progress.items_offset == 0) {
    std::byte* items = prefetch
                           ? reinterpret_cast<std::byte*>(reply.AppendItems<uint16_t>(n))
                           : reinterpret_cast<std::byte*>(reply.AppendItems<wire::AcquireResult>(n));
    KVT_CHECK(items != nullptr);
    progress.items_offset = static_cast<size_t>(items - reply.buffer().data());
  }
  std::byte* base = reply.buffer().data() + progress.items_offset;
  DramPool& pool = *session.tenant()->pool;
  for (; progress.next < n; ++progress.next) {
    const uint32_t i = progress.next;
    DramPool::Placement placement;
    wire::Tier tier = wire::Tier::kNone;
    StatusCode code =
        pool.Acquire(KeyAt(session, request, i, sizeof(wire::WireKey)), &placement, &tier);
    if (code == StatusCode::kUnavailable) break;  // a promotion waits for room
    wire::AcquireResult r{};
    if (code == StatusCode::kOk) {
      const uint64_t lease_id = session.leases().Add(placement.ref);
      if (lease_id == 0) {
        pool.Release(placement.ref);
        code = StatusCode::kResourceExhausted;
      } else if (tier == wire::Tier::kSsd) {
        progress.waiting.push_back({i, lease_id});
        continue;  // settled by SettlePromotions
      } else if (prefetch) {
        progress.held.push_back(lease_id);
      } else {
        r.lease_id = lease_id;
        r.offset = placement.offset;
        r.size = placement.size;
        r.tier = static_cast<uint8_t>(wire::Tier::kDram);
      }
    }
    if (prefetch) {
      PutCode(reinterpret_cast<uint16_t*>(base), i, code);
    } else {
      r.status = static_cast<uint16_t>(code);
      std::memcpy(base + i * sizeof(r), &r, sizeof(r));
    }
  }
  const bool settled = SettlePromotions(session, request.op, reply);
  if (!settled || progress.next != n) return false;
  for (uint64_t lease_id : progress.held) {
    if (auto ref = session.leases().Take(lease_id)) pool.Release(*ref);
  }
  progress.held.clear();
  return true;
}

bool RequestHandler::SettlePromotions(Session& session, wire::Op op, wire::FrameWriter& reply) {
  ItemProgress& progress = session.progress();
  std::byte* base = reply.buffer().data() + progress.items_offset;
  DramPool& pool = *session.tenant()->pool;
  std::erase_if(progress.waiting, [&](const ItemProgress::Waiting& w) {
    const std::optional<BlockRef> ref = session.leases().Peek(w.lease_id);
    KVT_CHECK(ref.has_value());  // the session holds it until the item is settled
    if (pool.IsPromoting(*ref)) return false;
    StatusCode code = StatusCode::kOk;
    wire::AcquireResult r{};
    if (!pool.IsInDram(*ref)) {
      // The promotion failed (a miss; the pool counted why): give the lease back.
      code = StatusCode::kNotFound;
      session.leases().Take(w.lease_id);
      pool.Release(*ref);
    } else if (op == wire::Op::kPrefetch) {
      progress.held.push_back(w.lease_id);  // given back with the reply
    } else {
      DramPool::Placement placement = pool.PlacementOf(*ref);
      r.lease_id = w.lease_id;
      r.offset = placement.offset;
      r.size = placement.size;
      r.tier = static_cast<uint8_t>(wire::Tier::kSsd);
    }
    if (op == wire::Op::kPrefetch) {
      PutCode(reinterpret_cast<uint16_t*>(base), w.item, code);
    } else {
      r.status = static_cast<uint16_t>(code);
      std::memcpy(base + w.item * sizeof(r), &r, sizeof(r));
    }
    return true;
  });
  return progress.waiting.empty();
}

void RequestHandler::Release(Session& session, const wire::FrameView& request,
                             wire::FrameWriter& reply) {
  DramPool& pool = *session.tenant()->pool;
  const uint32_t n = request.header.count;
  auto* out = reply.AppendItems<uint16_t>(n);
  KVT_CHECK(out != nullptr);
  for (uint32_t i = 0; i < n; ++i) {
    StatusCode code = StatusCode::kNotFound;
    if (auto ref = session.leases().Take(request.ItemAt<uint64_t>(i))) {
      pool.Release(*ref);
      code = StatusCode::kOk;
    }
    PutCode(out, i, code);
  }
}

wire::StatsReply StatsOf(const Tenant& tenant) {
  wire::StatsReply stats{};
  tenant.pool->FillStats(&stats);
  stats.sessions = tenant.sessions;
  if (tenant.spill != nullptr) {
    stats.ssd_quota_bytes = tenant.config.ssd_bytes;
    stats.ssd_segments = tenant.spill->StatsOf(tenant.spill_store).segments;
  }
  return stats;
}

void RequestHandler::Stats(Session& session, wire::FrameWriter& reply) {
  const wire::StatsReply stats = StatsOf(*session.tenant());
  reply.Append(&stats, sizeof(stats));
}

}  // namespace kvtier
