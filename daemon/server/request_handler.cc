#include "daemon/server/request_handler.h"

#include <algorithm>
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

namespace {

// The stride of a request's items, whose key comes first.
size_t KeyStride(wire::Op op) {
  return op == wire::Op::kRelease ? 0 : wire::RequestItemBytes(op);
}

}  // namespace

RequestHandler::Outcome RequestHandler::Handle(Session& session, const wire::FrameView& request,
                                               wire::FrameWriter& reply, UniqueFd passed_fd) {
  if (request.op == wire::Op::kHello) return Hello(session, request, reply);
  if (session.tenant() == nullptr) {
    reply.SetStatus(Status(StatusCode::kFailedPrecondition,
                           "the first request of a session must be hello"));
    return {.close_session = true};
  }
  if (const size_t stride = KeyStride(request.op); stride != 0) {
    if (Status s = CheckKeys(request, stride); !s.ok()) {
      reply.SetStatus(s);
      return {};
    }
  }
  session.progress() = ItemProgress{};
  switch (request.op) {
    case wire::Op::kOffload:
    case wire::Op::kOnload:
      if (Status s = CheckTransfer(session, request); !s.ok()) {
        reply.SetStatus(s);
        return {};
      }
      session.progress().scratch.resize(
          size_t{request.header.count} *
          (request.op == wire::Op::kOffload ? sizeof(wire::ReserveResult)
                                            : sizeof(wire::AcquireResult)));
      return Continue(session, request, reply);
    case wire::Op::kReserve:
    case wire::Op::kAcquire:
    case wire::Op::kPrefetch: return Continue(session, request, reply);
    case wire::Op::kCommit:
    case wire::Op::kAbort:
    case wire::Op::kRemove:
    case wire::Op::kReuseSoon:
    case wire::Op::kDoneWith: PerKey(session, request, reply); break;
    case wire::Op::kMatchPrefix:
    case wire::Op::kMatchPrefixEstimate: MatchPrefix(session, request, reply); break;
    case wire::Op::kRelease: Release(session, request, reply); break;
    case wire::Op::kStats: Stats(session, reply); break;
    case wire::Op::kRegisterRegion:
      RegisterRegion(session, request, reply, std::move(passed_fd));
      break;
    case wire::Op::kDeregisterRegion: DeregisterRegion(session, request, reply); break;
    case wire::Op::kHello: break;  // handled above
  }
  return {};
}

RequestHandler::Outcome RequestHandler::Continue(Session& session, const wire::FrameView& request,
                                                 wire::FrameWriter& reply) {
  const bool reserving = request.op == wire::Op::kReserve || request.op == wire::Op::kOffload;
  const bool done =
      reserving ? Reserve(session, request, reply) : Acquire(session, request, reply);
  if (!done) return {.park = true};
  if (request.op == wire::Op::kOffload || request.op == wire::Op::kOnload) {
    return StartCopy(session, request, reply);
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
  if ((hello.flags & wire::kHelloWantsLimits) != 0) {
    wire::HelloLimits limits{};
    limits.spill_max_block_bytes =
        (*tenant)->spill != nullptr ? limits_.spill_max_block_bytes : 0;
    limits.features = wire::kFeatureHints | wire::kFeatureMatchEstimate;
    reply.Append(&limits, sizeof(limits));
  }
  return {.pass_fd = (*tenant)->memory.fd()};
}

Status RequestHandler::CheckKeys(const wire::FrameView& request, size_t stride) const {
  for (size_t i = 0; i < request.header.count; ++i) {
    wire::WireKey key;
    std::memcpy(&key, request.items.data() + i * stride, sizeof(key));
    if (Status s = wire::CheckKey(key); !s.ok()) {
      return Invalid("item " + std::to_string(i) + ": " + s.message());
    }
  }
  return Status::Ok();
}

BlockKey RequestHandler::KeyAt(const Session& session, const wire::FrameView& request, size_t i,
                               size_t stride) const {
  // The key is the first member of every keyed item, and CheckKeys has vetted it.
  const std::byte* p = request.items.data() + i * stride;
  BlockKey key;
  key.ns_id = session.ns_id();
  std::memcpy(&key.len, p + offsetof(wire::WireKey, len), 1);
  std::memcpy(key.bytes.data(), p + offsetof(wire::WireKey, bytes), wire::kMaxKeyBytes);
  return key;
}

std::byte* RequestHandler::ResultsBase(Session& session, wire::FrameWriter& reply) const {
  ItemProgress& progress = session.progress();
  if (!progress.scratch.empty()) return progress.scratch.data();
  return reply.buffer().data() + progress.items_offset;
}

// Reserve and the reserve phase of Offload.
bool RequestHandler::Reserve(Session& session, const wire::FrameView& request,
                             wire::FrameWriter& reply) {
  const uint32_t n = request.header.count;
  const bool offload = request.op == wire::Op::kOffload;
  const size_t stride = offload ? sizeof(wire::OffloadItem) : sizeof(wire::ReserveItem);
  struct Wanted {
    uint64_t size;
    uint32_t ttl_seconds;
  };
  auto wanted = [&](uint32_t i) {
    if (offload) {
      const auto item = request.ItemAt<wire::OffloadItem>(i);
      return Wanted{item.size, item.ttl_seconds};
    }
    const auto item = request.ItemAt<wire::ReserveItem>(i);
    return Wanted{item.size, item.ttl_seconds};
  };
  ItemProgress& progress = session.progress();
  if (progress.next == 0 && progress.items_offset == 0 && !offload) {
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
  std::byte* out = ResultsBase(session, reply);
  DramPool& pool = *session.tenant()->pool;
  for (; progress.next < n; ++progress.next) {
    const uint32_t i = progress.next;
    const Wanted w = wanted(i);
    DramPool::Placement placement;
    session.MakeRoomForReservation();  // nothing to throw once the pool has reserved
    const StatusCode code =
        pool.Reserve(KeyAt(session, request, i, stride), w.size, session.id(), &placement,
                     EffectiveTtl(session.tenant()->config, w.ttl_seconds));
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
    std::memcpy(out + i * sizeof(r), &r, sizeof(r));
  }
  if (!progress.refusal.empty() && !offload) reply.InsertMessage(progress.refusal);
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
      case wire::Op::kReuseSoon: code = pool.Hint(key, BlockHint::kReuseSoon); break;
      case wire::Op::kDoneWith: code = pool.Hint(key, BlockHint::kDoneWith); break;
      default: code = pool.Remove(key); break;
    }
    if (code == StatusCode::kOk &&
        (request.op == wire::Op::kCommit || request.op == wire::Op::kAbort)) {
      session.NoteReservationEnded();
    }
    PutCode(out, i, code);
  }
}

void RequestHandler::MatchPrefix(Session& session, const wire::FrameView& request,
                                 wire::FrameWriter& reply) {
  DramPool& pool = *session.tenant()->pool;
  const uint32_t n = request.header.count;
  const bool estimate = request.op == wire::Op::kMatchPrefixEstimate;
  // The estimate heads the body; it is filled in once the prefix is known.
  std::byte* head = nullptr;
  if (estimate) {
    head = reply.AppendItems<std::byte>(sizeof(wire::MatchEstimate));
    KVT_CHECK(head != nullptr);
  }
  auto* tiers = reply.AppendItems<uint8_t>(n);
  KVT_CHECK(tiers != nullptr);
  uint32_t matched = 0;
  uint32_t blocks[2] = {0, 0};  // DRAM, SSD
  uint64_t bytes[2] = {0, 0};
  while (matched < n) {
    uint64_t size = 0;
    const wire::Tier tier =
        pool.Match(KeyAt(session, request, matched, sizeof(wire::WireKey)), &size);
    if (tier == wire::Tier::kNone) break;
    tiers[matched++] = static_cast<uint8_t>(tier);
    const size_t t = tier == wire::Tier::kSsd ? 1 : 0;
    ++blocks[t];
    bytes[t] += size;
  }
  reply.SetCount(matched);
  // Shrink the body to the matched tiers.
  reply.Truncate(sizeof(uint8_t) * (n - matched));
  if (estimate) {
    const wire::MatchEstimate e = estimator_->Estimate(blocks[0], bytes[0], blocks[1], bytes[1],
                                                       session.tenant()->ssd_queued_bytes);
    std::memcpy(head, &e, sizeof(e));
  }
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
  const size_t stride = KeyStride(request.op);
  if (progress.next == 0 && progress.items_offset == 0 && progress.scratch.empty()) {
    std::byte* items = prefetch
                           ? reinterpret_cast<std::byte*>(reply.AppendItems<uint16_t>(n))
                           : reinterpret_cast<std::byte*>(reply.AppendItems<wire::AcquireResult>(n));
    KVT_CHECK(items != nullptr);
    progress.items_offset = static_cast<size_t>(items - reply.buffer().data());
  }
  std::byte* base = ResultsBase(session, reply);
  DramPool& pool = *session.tenant()->pool;
  for (; progress.next < n; ++progress.next) {
    const uint32_t i = progress.next;
    DramPool::Placement placement;
    wire::Tier tier = wire::Tier::kNone;
    session.leases().MakeRoom();  // nothing to throw once the pool has leased
    StatusCode code = pool.Acquire(KeyAt(session, request, i, stride), &placement, &tier);
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
  std::byte* base = ResultsBase(session, reply);
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

void RequestHandler::RegisterRegion(Session& session, const wire::FrameView& request,
                                    wire::FrameWriter& reply, UniqueFd passed_fd) {
  const auto spec = request.Prefix<wire::RegionSpec>();
  if (session.regions().size() >= wire::kMaxRegionsPerSession) {  // before mapping anything
    reply.SetStatus(Status(StatusCode::kResourceExhausted,
                           "a session may register at most " +
                               std::to_string(wire::kMaxRegionsPerSession) + " regions"));
    return;
  }
  Tenant& tenant = *session.tenant();
  if (tenant.regions >= tenant.max_regions) {
    reply.SetStatus(Status(StatusCode::kResourceExhausted,
                           "tenant '" + tenant.config.name + "' already holds " +
                               std::to_string(tenant.regions) +
                               " regions, its share of the kernel's vm.max_map_count: "
                               "deregister regions it no longer uses, or ask the operator to "
                               "raise vm.max_map_count"));
    return;
  }
  Result<std::shared_ptr<Region>> region = Status(StatusCode::kInternal, "unreachable");
  if (spec.kind == static_cast<uint32_t>(wire::RegionKind::kHost)) {
    if (spec.events != 0 || spec.device != 0 ||
        std::any_of(std::begin(spec.ipc_handle), std::end(spec.ipc_handle),
                    [](uint8_t b) { return b != 0; })) {
      reply.SetStatus(Invalid("a host region has no device, no events and no IPC handle"));
      return;
    }
    region = Region::OpenHost(std::move(passed_fd), spec.bytes);
  } else {
    if (passed_fd.valid()) {
      reply.SetStatus(Invalid("a CUDA region is named by its IPC handle; no fd goes with it"));
      return;
    }
    region = Region::OpenCuda(
        spec.device, std::span(spec.ipc_handle), spec.bytes,
        std::span(reinterpret_cast<const uint8_t*>(request.body.data()) + sizeof(spec),
                  size_t{spec.events} * wire::kCudaIpcHandleBytes));
  }
  if (!region.ok()) {
    reply.SetStatus(region.status());
    return;
  }
  auto id = session.regions().Add(std::move(*region));
  if (!id.ok()) {
    reply.SetStatus(id.status());
    return;
  }
  ++tenant.regions;
  wire::RegionReply out{};
  out.region_id = *id;
  out.bytes = spec.bytes;
  reply.Append(&out, sizeof(out));
}

void RequestHandler::DeregisterRegion(Session& session, const wire::FrameView& request,
                                      wire::FrameWriter& reply) {
  const uint32_t id = request.Prefix<wire::RegionId>().region_id;
  // A copy still running keeps its own reference: the memory stays mapped until it ends.
  if (!session.regions().Remove(id)) {
    reply.SetStatus(Status(StatusCode::kNotFound,
                           "region " + std::to_string(id) + " is not registered in this session"));
    return;
  }
  --session.tenant()->regions;
}

Status RequestHandler::CheckTransfer(Session& session, const wire::FrameView& request) const {
  const auto spec = request.Prefix<wire::TransferSpec>();
  const std::shared_ptr<Region> region = session.regions().Find(spec.region_id);
  if (region == nullptr) {
    return Status(StatusCode::kNotFound, "region " + std::to_string(spec.region_id) +
                                             " is not registered in this session");
  }
  const bool cuda = region->kind() == wire::RegionKind::kCuda;
  if (!cuda && (spec.wait_event != wire::kNoEvent || spec.signal_event != wire::kNoEvent)) {
    return Invalid("wait_event and signal_event are for CUDA regions; use kNoEvent");
  }
  if (request.op == wire::Op::kOffload && spec.signal_event != wire::kNoEvent) {
    return Invalid("an offload signals no event (its reply says the bytes are stored)");
  }
  if (request.op == wire::Op::kOnload && spec.wait_event != wire::kNoEvent) {
    return Invalid("an onload waits for no event (its copies only read the pool)");
  }
  if (spec.signal_event != wire::kNoEvent && spec.progress_region != wire::kNoRegion) {
    // Its reply comes before the copies end, so a waiter could not tell a failed copy from
    // one still running: layer events and progress words are alternatives.
    return Invalid("use signal_event or a progress word, not both");
  }
  if (spec.progress_region != wire::kNoRegion) {
    const std::shared_ptr<Region> progress = session.regions().Find(spec.progress_region);
    if (progress == nullptr || progress->kind() != wire::RegionKind::kHost) {
      return Invalid("progress_region " + std::to_string(spec.progress_region) +
                     " is not a host region of this session");
    }
    if (spec.progress_offset % sizeof(uint32_t) != 0 ||
        !progress->Holds(spec.progress_offset, sizeof(uint32_t))) {
      return Invalid("progress_offset " + std::to_string(spec.progress_offset) +
                     " is not a 4-byte-aligned offset inside region " +
                     std::to_string(spec.progress_region));
    }
  }
  if (request.op == wire::Op::kOffload) {
    for (uint32_t i = 0; i < request.header.count; ++i) {
      const auto item = request.ItemAt<wire::OffloadItem>(i);
      if (item.size == 0 || item.size > limits_.max_block_bytes) {
        return Invalid("item " + std::to_string(i) + ": block size " + std::to_string(item.size) +
                       " is outside 1.." + std::to_string(limits_.max_block_bytes) +
                       " (max_block_bytes)");
      }
      if (!region->Holds(item.offset, item.size)) {
        return Invalid("item " + std::to_string(i) + ": bytes [" + std::to_string(item.offset) +
                       ", +" + std::to_string(item.size) + ") are outside region " +
                       std::to_string(spec.region_id) + " of " +
                       std::to_string(region->bytes()) + " bytes");
      }
    }
  }
  return Status::Ok();
}

RequestHandler::Outcome RequestHandler::StartCopy(Session& session,
                                                  const wire::FrameView& request,
                                                  wire::FrameWriter& reply) {
  const auto spec = request.Prefix<wire::TransferSpec>();
  const uint32_t n = request.header.count;
  const uint32_t per_layer = n / spec.layers;  // 0 for an empty request
  ItemProgress& progress = session.progress();
  DramPool& pool = *session.tenant()->pool;
  Outcome outcome;
  CopyJob& job = outcome.copy.emplace();
  job.to_pool = request.op == wire::Op::kOffload;
  job.region = session.regions().Find(spec.region_id);
  KVT_CHECK(job.region != nullptr);  // checked before the request could wait
  job.pool = session.tenant()->memory.data();
  if (spec.progress_region != wire::kNoRegion) {
    job.progress = session.regions().Find(spec.progress_region);
    job.progress_offset = spec.progress_offset;
  }
  job.wait_event = spec.wait_event;
  job.signal_event = spec.signal_event;
  job.owner = reinterpret_cast<uintptr_t>(session.tenant());  // its tenant's copy queue
  // Everything that can throw std::bad_alloc is allocated before a lease leaves the session's
  // table for the hold.
  job.spans.reserve(n);
  job.layer_ends.reserve(spec.layers);
  outcome.hold.items.reserve(n);
  outcome.hold.op = request.op;
  auto end_layer = [&](uint32_t i) {
    if (per_layer == 0 || (i + 1) % per_layer == 0) {
      job.layer_ends.push_back(static_cast<uint32_t>(job.spans.size()));
    }
  };
  if (request.op == wire::Op::kOnload) {
    auto* out = reply.AppendItems<wire::OnloadResult>(n);
    KVT_CHECK(out != nullptr);
    for (uint32_t i = 0; i < n; ++i) {
      wire::AcquireResult got;
      std::memcpy(&got, progress.scratch.data() + i * sizeof(got), sizeof(got));
      const uint64_t offset = request.ItemAt<wire::OnloadItem>(i).offset;
      wire::OnloadResult r{};
      r.status = got.status;
      r.tier = got.tier;
      if (got.status == static_cast<uint16_t>(StatusCode::kOk)) {
        if (job.region->Holds(offset, got.size)) {
          r.size = got.size;
          job.spans.push_back({got.offset, offset, got.size});
          const std::optional<BlockRef> ref = session.leases().Take(got.lease_id);
          KVT_CHECK(ref.has_value());  // taken by the acquire phase of this very request
          outcome.hold.items.push_back({.index = i, .ref = *ref});
        } else {
          // The caller learns the block's size and can make room for it.
          r.size = got.size;
          r.status = static_cast<uint16_t>(StatusCode::kInvalidArgument);
          if (auto ref = session.leases().Take(got.lease_id)) pool.Release(*ref);
        }
      }
      std::memcpy(&out[i], &r, sizeof(r));
      end_layer(i);
    }
  } else {
    auto* out = reply.AppendItems<uint16_t>(n);
    KVT_CHECK(out != nullptr);
    for (uint32_t i = 0; i < n; ++i) {
      wire::ReserveResult got;
      std::memcpy(&got, progress.scratch.data() + i * sizeof(got), sizeof(got));
      const auto item = request.ItemAt<wire::OffloadItem>(i);
      if (got.status == static_cast<uint16_t>(StatusCode::kOk)) {
        job.spans.push_back({got.offset, item.offset, item.size});
        outcome.hold.items.push_back(
            {.index = i, .key = KeyAt(session, request, i, sizeof(wire::OffloadItem))});
      }
      PutCode(out, i, static_cast<StatusCode>(got.status));  // kOk is confirmed by FinishCopy
      end_layer(i);
    }
    if (!progress.refusal.empty()) reply.InsertMessage(progress.refusal);
  }
  if (job.layer_ends.empty()) job.layer_ends.assign(spec.layers, 0);  // an empty request
  progress.scratch.clear();
  return outcome;
}

void RequestHandler::FinishCopy(Session& session, const CopyHold& hold, const Status& status,
                                wire::FrameWriter* reply, const wire::FrameView* request) {
  DramPool& pool = *session.tenant()->pool;
  if (hold.op == wire::Op::kOnload) {
    for (const CopyHold::Item& item : hold.items) pool.Release(item.ref);
  } else {
    // The items' statuses follow the message, if any, in the reply.
    uint16_t* codes = nullptr;
    if (reply != nullptr) {
      codes = reinterpret_cast<uint16_t*>(reply->buffer().data() + reply->size() -
                                          size_t{request->header.count} * sizeof(uint16_t));
    }
    for (const CopyHold::Item& item : hold.items) {
      const StatusCode code =
          status.ok() ? pool.Commit(item.key, session.id()) : pool.Abort(item.key, session.id());
      if (code == StatusCode::kOk) session.NoteReservationEnded();
      if (codes != nullptr) PutCode(codes, item.index, status.ok() ? code : status.code());
    }
  }
  if (reply != nullptr && !status.ok()) {
    // The copy itself failed (a CUDA error): the request as a whole did not happen.
    reply->Begin(request->op, request->header.request_id);
    reply->SetStatus(status);
  }
}

void RequestHandler::Stats(Session& session, wire::FrameWriter& reply) {
  const wire::StatsReply stats = StatsOf(*session.tenant());
  reply.Append(&stats, sizeof(stats));
}

}  // namespace kvtier
