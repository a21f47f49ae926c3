#include "daemon/server/request_handler.h"

#include <cstring>
#include <string>

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
  switch (request.op) {
    case wire::Op::kReserve: Reserve(session, request, reply); break;
    case wire::Op::kCommit:
    case wire::Op::kAbort:
    case wire::Op::kRemove: PerKey(session, request, reply); break;
    case wire::Op::kMatchPrefix: MatchPrefix(session, request, reply); break;
    case wire::Op::kAcquire: Acquire(session, request, reply); break;
    case wire::Op::kRelease: Release(session, request, reply); break;
    case wire::Op::kStats: Stats(session, reply); break;
    case wire::Op::kHello: break;  // handled above
  }
  return {};
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

void RequestHandler::Reserve(Session& session, const wire::FrameView& request,
                             wire::FrameWriter& reply) {
  const uint32_t n = request.header.count;
  for (uint32_t i = 0; i < n; ++i) {
    const auto item = request.ItemAt<wire::ReserveItem>(i);
    if (item.size == 0 || item.size > limits_.max_block_bytes) {
      reply.SetStatus(Invalid("item " + std::to_string(i) + ": block size " +
                              std::to_string(item.size) + " is outside 1.." +
                              std::to_string(limits_.max_block_bytes) + " (max_block_bytes)"));
      return;
    }
  }
  DramPool& pool = *session.tenant()->pool;
  auto* out = reply.AppendItems<wire::ReserveResult>(n);
  KVT_CHECK(out != nullptr);  // replies are smaller than the largest request
  for (uint32_t i = 0; i < n; ++i) {
    const auto item = request.ItemAt<wire::ReserveItem>(i);
    DramPool::Placement placement;
    const StatusCode code = pool.Reserve(KeyAt(session, request, i, sizeof(wire::ReserveItem)),
                                         item.size, session.id(), &placement);
    wire::ReserveResult r{};
    r.status = static_cast<uint16_t>(code);
    if (code == StatusCode::kOk) {
      r.offset = placement.offset;
      session.NoteReservation(placement.ref);
    }
    std::memcpy(&out[i], &r, sizeof(r));
  }
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

void RequestHandler::Acquire(Session& session, const wire::FrameView& request,
                             wire::FrameWriter& reply) {
  DramPool& pool = *session.tenant()->pool;
  const uint32_t n = request.header.count;
  auto* out = reply.AppendItems<wire::AcquireResult>(n);
  KVT_CHECK(out != nullptr);
  for (uint32_t i = 0; i < n; ++i) {
    DramPool::Placement placement;
    StatusCode code = pool.Acquire(KeyAt(session, request, i, sizeof(wire::WireKey)), &placement);
    wire::AcquireResult r{};
    if (code == StatusCode::kOk) {
      r.lease_id = session.leases().Add(placement.ref);
      if (r.lease_id == 0) {
        pool.Release(placement.ref);
        code = StatusCode::kResourceExhausted;
      } else {
        r.offset = placement.offset;
        r.size = placement.size;
        r.tier = static_cast<uint8_t>(wire::Tier::kDram);
      }
    }
    r.status = static_cast<uint16_t>(code);
    std::memcpy(&out[i], &r, sizeof(r));
  }
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

void RequestHandler::Stats(Session& session, wire::FrameWriter& reply) {
  wire::StatsReply stats{};
  session.tenant()->pool->FillStats(&stats);
  stats.sessions = session.tenant()->sessions;
  reply.Append(&stats, sizeof(stats));
}

}  // namespace kvtier
