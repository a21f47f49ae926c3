// Fuzzes the client frame decoder (wire::DecodeRequest, DecodeReply, CheckKey) and, behind it,
// what the daemon does with a decoded request: RequestHandler::Handle against a real tenant
// pool and session, as Server::ServeFrame drives it (daemon/server/server.cc), without the
// socket. Offload and onload copies are not run: their CopyJob is checked (every span inside
// the pool and the region), then the copy is finished as the server does when it ends.
//
// Input: frames back to back, as one client sends them on one session. Each frame's length is
// what its own header announces (32 + message_bytes + body_bytes), cut at the end of the input.
// The session ends at the first frame the daemon would close it for. A register_region of a
// host region comes with a sealed memfd, as if passed with SCM_RIGHTS.
//
// Checked besides "no crash": a decoded frame's views lie inside the frame and agree with its
// header and the op's layout; CheckKey agrees with the key rules; every reply the handler writes
// decodes, echoes op and id, and has the op's item layout; a failed request carries no items;
// a copy never reaches outside the pool or the region; a closed session leaves the pool empty.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "daemon/config/config.h"
#include "daemon/server/request_handler.h"
#include "daemon/server/session.h"
#include "daemon/tenant/tenant_registry.h"
#include "daemon/tier/load_estimator.h"
#include "ipc/base/unique_fd.h"
#include "ipc/wire/frame_codec.h"
#include "ipc/wire/protocol.h"
#include "tests/fuzz/fuzz_check.h"

namespace kvtier::fuzz {
namespace {

using wire::FrameHeader;
using wire::FrameView;
using wire::Op;

// One tenant that every peer of this uid maps to; small limits so that full pools, full lease
// tables and refused sizes are reachable with small inputs.
constexpr uint64_t kRegionBytes = 64 * 1024;
constexpr uint32_t kMaxLeases = 64;

std::string FuzzConfigText() {
  return "config_version = 1\n"
         "[daemon]\n"
         "run_dir = \"/nonexistent/kvt-fuzz\"\n"
         "max_leases_per_session = " +
         std::to_string(kMaxLeases) +
         "\n"
         "[pool]\n"
         "slab_bytes = \"2MiB\"\n"
         "max_block_bytes = \"64KiB\"\n"
         "huge_pages = \"off\"\n"
         "lock_memory = \"off\"\n"
         "zero_freed = false\n"
         "[[tenant]]\n"
         "name = \"fuzz\"\n"
         "uids = [" +
         std::to_string(geteuid()) +
         "]\n"
         "dram_bytes = \"8MiB\"\n";
}

struct World {
  Config config;
  std::unique_ptr<TenantRegistry> tenants;
  Tenant* tenant = nullptr;
  LoadEstimator estimator{1e9, 1e9};
  std::unique_ptr<RequestHandler> handler;
  UniqueFd region_memfd;  // a valid host region; each register_region gets a dup
  std::vector<std::byte> send_buffer = std::vector<std::byte>(wire::kMaxFrameBytes);
};

World& TheWorld() {
  static World* world = [] {
    auto* w = new World();
    auto config = ParseConfig(FuzzConfigText(), "/nonexistent/kvt-fuzz/fuzz.toml");
    KVT_FUZZ_CHECK(config.ok(), config.status().ToString());
    w->config = std::move(*config);
    auto tenants = TenantRegistry::Create(w->config, nullptr);
    KVT_FUZZ_CHECK(tenants.ok(), tenants.status().ToString());
    w->tenants = std::move(*tenants);
    w->tenant = w->tenants->tenants().at(0).get();
    w->handler = std::make_unique<RequestHandler>(
        w->tenants.get(), HandlerLimits{w->config.max_block_bytes, w->config.spill.max_block_bytes},
        &w->estimator);
    const int fd = memfd_create("kvt-fuzz-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    KVT_FUZZ_CHECK(fd >= 0, "memfd_create");
    w->region_memfd.reset(fd);
    KVT_FUZZ_CHECK(fallocate(fd, 0, 0, static_cast<off_t>(kRegionBytes)) == 0, "fallocate");
    KVT_FUZZ_CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0, "F_ADD_SEALS");
    return w;
  }();
  return *world;
}

// KVT_FUZZ_VERBOSE=1: print each request and its reply (to see what a seed reaches).
bool Verbose() {
  static const bool verbose = std::getenv("KVT_FUZZ_VERBOSE") != nullptr;
  return verbose;
}

FrameHeader HeaderOf(std::span<const std::byte> frame) {
  FrameHeader h{};
  std::memcpy(&h, frame.data(), std::min(frame.size(), sizeof(h)));
  return h;
}

std::string Describe(const FrameHeader& h) {
  return "op " + std::to_string(h.op) + " count " + std::to_string(h.count) + " body " +
         std::to_string(h.body_bytes) + " message " + std::to_string(h.message_bytes) + " status " +
         std::to_string(h.status);
}

// The key rules of protocol.h, written out plainly: CheckKey's word tricks must agree.
bool KeyFollowsRules(const wire::WireKey& key) {
  if (key.len < 1 || key.len > wire::kMaxKeyBytes) return false;
  for (uint8_t b : key.reserved) {
    if (b != 0) return false;
  }
  for (size_t i = key.len; i < wire::kMaxKeyBytes; ++i) {
    if (key.bytes[i] != 0) return false;
  }
  return true;
}

// The stride of a request's items that start with a key; 0 for ops without keys.
size_t KeyStride(Op op) {
  return op == Op::kRelease ? 0 : wire::RequestItemBytes(op);
}

void CheckDecodedRequest(std::span<const std::byte> frame, const FrameView& v) {
  const FrameHeader h = HeaderOf(frame);
  const std::string what = Describe(h);
  KVT_FUZZ_CHECK(std::memcmp(&v.header, &h, sizeof(h)) == 0, what);
  KVT_FUZZ_CHECK(h.magic == wire::kMagic && h.version == wire::kProtocolVersion, what);
  KVT_FUZZ_CHECK(h.op >= 1 && h.op <= wire::kMaxOp && static_cast<uint16_t>(v.op) == h.op, what);
  KVT_FUZZ_CHECK(h.reserved == 0 && h.status == 0 && h.message_bytes == 0, what);
  KVT_FUZZ_CHECK(h.count <= wire::kMaxBatch, what);
  KVT_FUZZ_CHECK(frame.size() == sizeof(FrameHeader) + size_t{h.body_bytes}, what);
  KVT_FUZZ_CHECK(frame.size() <= wire::kMaxFrameBytes, what);
  KVT_FUZZ_CHECK(v.message.empty(), what);
  KVT_FUZZ_CHECK(v.body.data() == frame.data() + sizeof(FrameHeader), what);
  KVT_FUZZ_CHECK(v.body.size() == h.body_bytes && Within(v.body, frame), what);
  KVT_FUZZ_CHECK(Within(v.items, v.body), what);
  KVT_FUZZ_CHECK(v.items.data() + v.items.size() == v.body.data() + v.body.size(), what);
  const size_t item = wire::RequestItemBytes(v.op);
  const size_t prefix = wire::RequestPrefixBytes(v.op);
  if (item != 0) {
    KVT_FUZZ_CHECK(v.items.size() == size_t{h.count} * item, what);
    KVT_FUZZ_CHECK(v.body.size() == prefix + v.items.size(), what);
    if (prefix != 0) {
      const auto spec = v.Prefix<wire::TransferSpec>();
      KVT_FUZZ_CHECK(spec.reserved == 0 && spec.layers >= 1, what);
      KVT_FUZZ_CHECK(spec.layers <= std::max<uint32_t>(h.count, 1), what);
      KVT_FUZZ_CHECK(h.count % spec.layers == 0, what);
    }
    // Every key the handler will read: CheckKey against the plain rules.
    if (const size_t stride = KeyStride(v.op); stride != 0) {
      for (size_t i = 0; i < h.count; ++i) {
        wire::WireKey key;
        std::memcpy(&key, v.items.data() + i * stride, sizeof(key));
        const bool ok = wire::CheckKey(key).ok();
        KVT_FUZZ_CHECK(ok == KeyFollowsRules(key),
                       "CheckKey says " + std::string(ok ? "ok" : "bad") + " for a key of len " +
                           std::to_string(key.len));
      }
    }
    return;
  }
  KVT_FUZZ_CHECK(h.count == 0, what);
  switch (v.op) {
    case Op::kHello: {
      wire::HelloRequest hello;
      KVT_FUZZ_CHECK(v.body.size() >= sizeof(hello), what);
      std::memcpy(&hello, v.body.data(), sizeof(hello));
      KVT_FUZZ_CHECK((hello.flags & ~wire::kHelloWantsLimits) == 0, what);
      KVT_FUZZ_CHECK(
          hello.namespace_bytes >= 1 && hello.namespace_bytes <= wire::kMaxNamespaceBytes, what);
      KVT_FUZZ_CHECK(v.body.size() == sizeof(hello) + hello.namespace_bytes, what);
      break;
    }
    case Op::kStats:
      KVT_FUZZ_CHECK(v.body.empty(), what);
      break;
    case Op::kRegisterRegion: {
      KVT_FUZZ_CHECK(v.body.size() >= sizeof(wire::RegionSpec), what);
      const auto spec = v.Prefix<wire::RegionSpec>();
      KVT_FUZZ_CHECK(spec.kind == static_cast<uint32_t>(wire::RegionKind::kHost) ||
                         spec.kind == static_cast<uint32_t>(wire::RegionKind::kCuda),
                     what);
      KVT_FUZZ_CHECK(spec.reserved == 0 && spec.events <= wire::kMaxRegionEvents, what);
      KVT_FUZZ_CHECK(
          v.body.size() == sizeof(spec) + size_t{spec.events} * wire::kCudaIpcHandleBytes, what);
      break;
    }
    case Op::kDeregisterRegion:
      KVT_FUZZ_CHECK(v.body.size() == sizeof(wire::RegionId), what);
      KVT_FUZZ_CHECK(v.Prefix<wire::RegionId>().reserved == 0, what);
      break;
    default:
      KVT_FUZZ_CHECK(false, "an op with items has no item size: " + what);
  }
}

void CheckDecodeError(std::span<const std::byte> frame, const Status& status) {
  KVT_FUZZ_CHECK(
      status.code() == StatusCode::kProtocolError || status.code() == StatusCode::kVersionMismatch,
      status.ToString());
  KVT_FUZZ_CHECK(!status.message().empty(), "an error without a message");
  if (status.code() == StatusCode::kVersionMismatch) {
    const FrameHeader h = HeaderOf(frame);
    KVT_FUZZ_CHECK(
        frame.size() >= sizeof(h) && h.magic == wire::kMagic && h.version != wire::kProtocolVersion,
        status.ToString());
  }
}

// DecodeReply on any frame: OK means the message and body lie inside and fill the frame.
void CheckDecodeReply(std::span<const std::byte> frame) {
  auto reply = wire::DecodeReply(frame);
  if (!reply.ok()) {
    CheckDecodeError(frame, reply.status());
    return;
  }
  const FrameHeader& h = reply->header;
  const std::string what = Describe(h);
  KVT_FUZZ_CHECK(frame.size() == sizeof(h) + size_t{h.message_bytes} + size_t{h.body_bytes}, what);
  KVT_FUZZ_CHECK(h.message_bytes <= wire::kMaxMessageBytes && IsKnownStatusCode(h.status), what);
  const auto message = std::as_bytes(std::span(reply->message.data(), reply->message.size()));
  KVT_FUZZ_CHECK(message.data() == frame.data() + sizeof(h) && message.size() == h.message_bytes,
                 what);
  KVT_FUZZ_CHECK(reply->body.data() == message.data() + message.size(), what);
  KVT_FUZZ_CHECK(reply->body.size() == h.body_bytes && Within(reply->body, frame), what);
}

template <typename T>
T Item(const FrameView& reply, size_t i, size_t base = 0) {
  T item;
  std::memcpy(&item, reply.body.data() + base + i * sizeof(T), sizeof(T));
  return item;
}

bool InPool(const Tenant& tenant, uint64_t offset, uint64_t size) {
  const uint64_t pool = tenant.memory.size();
  return offset <= pool && size <= pool - offset;
}

void CheckCodes(const FrameView& reply, uint32_t n, const std::string& what) {
  KVT_FUZZ_CHECK(reply.header.count == n && reply.body.size() == size_t{n} * 2, what);
  for (uint32_t i = 0; i < n; ++i) {
    KVT_FUZZ_CHECK(IsKnownStatusCode(Item<uint16_t>(reply, i)), what);
  }
}

// The reply the handler wrote for `request`: well formed, and shaped as protocol.h says.
void CheckReply(const FrameView& request,
                std::span<const std::byte> frame,
                const Tenant& tenant,
                const RequestHandler::Outcome& outcome) {
  auto decoded = wire::DecodeReply(frame);
  KVT_FUZZ_CHECK(decoded.ok(),
                 "the daemon wrote a reply that does not decode: " + decoded.status().ToString());
  const FrameView& r = *decoded;
  const FrameHeader& h = r.header;
  const std::string what = "reply to " + Describe(request.header) + ": " + Describe(h) + " '" +
                           std::string(r.message) + "'";
  if (Verbose()) std::fprintf(stderr, "%s\n", what.c_str());
  KVT_FUZZ_CHECK(r.op == request.op && h.request_id == request.header.request_id, what);
  if (outcome.pass_fd >= 0) {
    KVT_FUZZ_CHECK(request.op == Op::kHello && h.status == 0, what);
    KVT_FUZZ_CHECK(outcome.pass_fd == tenant.memory.fd(), what);
  }
  if (h.status != 0) {
    // A failed call leaves no per-key result behind (README, "Batch calls").
    KVT_FUZZ_CHECK(h.count == 0 && h.body_bytes == 0, what);
    KVT_FUZZ_CHECK(!r.message.empty(), what);
    return;
  }
  const uint32_t n = request.header.count;
  switch (request.op) {
    case Op::kHello: {
      const auto hello = Item<wire::HelloReply>(r, 0);
      wire::HelloRequest asked;
      std::memcpy(&asked, request.body.data(), sizeof(asked));
      const size_t expected =
          sizeof(wire::HelloReply) +
          ((asked.flags & wire::kHelloWantsLimits) != 0 ? sizeof(wire::HelloLimits) : 0);
      KVT_FUZZ_CHECK(h.count == 0 && r.body.size() == expected, what);
      KVT_FUZZ_CHECK(hello.pool_bytes == tenant.memory.size(), what);
      KVT_FUZZ_CHECK(hello.max_batch == wire::kMaxBatch && hello.namespace_id >= 1, what);
      KVT_FUZZ_CHECK(std::string(hello.tenant) == tenant.config.name, what);
      KVT_FUZZ_CHECK(outcome.pass_fd == tenant.memory.fd(), what);
      break;
    }
    case Op::kReserve: {
      KVT_FUZZ_CHECK(h.count == n && r.body.size() == size_t{n} * sizeof(wire::ReserveResult),
                     what);
      std::vector<std::pair<uint64_t, uint64_t>> slots;  // offset, size of each OK item
      for (uint32_t i = 0; i < n; ++i) {
        const auto result = Item<wire::ReserveResult>(r, i);
        KVT_FUZZ_CHECK(IsKnownStatusCode(result.status), what);
        if (result.status != 0) continue;
        const uint64_t size = request.ItemAt<wire::ReserveItem>(i).size;
        KVT_FUZZ_CHECK(InPool(tenant, result.offset, size),
                       "item " + std::to_string(i) + " offset " + std::to_string(result.offset) +
                           " size " + std::to_string(size) + ": " + what);
        slots.emplace_back(result.offset, size);
      }
      // Slots handed out in one reply never overlap: two writers of one slot.
      std::sort(slots.begin(), slots.end());
      for (size_t i = 1; i < slots.size(); ++i) {
        KVT_FUZZ_CHECK(slots[i - 1].first + slots[i - 1].second <= slots[i].first,
                       "reserve handed out overlapping slots at " +
                           std::to_string(slots[i - 1].first) + " and " +
                           std::to_string(slots[i].first) + ": " + what);
      }
      break;
    }
    case Op::kCommit:
    case Op::kAbort:
    case Op::kRemove:
    case Op::kRelease:
    case Op::kPrefetch:
    case Op::kReuseSoon:
    case Op::kDoneWith:
    case Op::kOffload:
      CheckCodes(r, n, what);
      break;
    case Op::kMatchPrefix:
    case Op::kMatchPrefixEstimate: {
      const size_t head = request.op == Op::kMatchPrefixEstimate ? sizeof(wire::MatchEstimate) : 0;
      KVT_FUZZ_CHECK(h.count <= n && r.body.size() == head + h.count, what);
      for (uint32_t i = 0; i < h.count; ++i) {
        const auto tier = Item<uint8_t>(r, i, head);
        KVT_FUZZ_CHECK(tier == static_cast<uint8_t>(wire::Tier::kDram), what);  // no SSD tier
      }
      if (head != 0) {
        const auto e = Item<wire::MatchEstimate>(r, 0);
        KVT_FUZZ_CHECK(e.dram_blocks == h.count && e.ssd_blocks == 0 && e.ssd_bytes == 0, what);
      }
      break;
    }
    case Op::kAcquire: {
      KVT_FUZZ_CHECK(h.count == n && r.body.size() == size_t{n} * sizeof(wire::AcquireResult),
                     what);
      for (uint32_t i = 0; i < n; ++i) {
        const auto result = Item<wire::AcquireResult>(r, i);
        KVT_FUZZ_CHECK(IsKnownStatusCode(result.status), what);
        if (result.status != 0) continue;
        KVT_FUZZ_CHECK(result.lease_id != 0 && result.size >= 1, what);
        KVT_FUZZ_CHECK(InPool(tenant, result.offset, result.size), what);
        KVT_FUZZ_CHECK(result.tier == static_cast<uint8_t>(wire::Tier::kDram), what);
      }
      break;
    }
    case Op::kStats:
      KVT_FUZZ_CHECK(h.count == 0 && r.body.size() == sizeof(wire::StatsReply), what);
      break;
    case Op::kRegisterRegion: {
      KVT_FUZZ_CHECK(h.count == 0 && r.body.size() == sizeof(wire::RegionReply), what);
      const auto reply = Item<wire::RegionReply>(r, 0);
      KVT_FUZZ_CHECK(
          reply.region_id >= 1 && reply.bytes == request.Prefix<wire::RegionSpec>().bytes, what);
      break;
    }
    case Op::kDeregisterRegion:
      KVT_FUZZ_CHECK(h.count == 0 && r.body.empty(), what);
      break;
    case Op::kOnload: {
      KVT_FUZZ_CHECK(h.count == n && r.body.size() == size_t{n} * sizeof(wire::OnloadResult), what);
      for (uint32_t i = 0; i < n; ++i) {
        const auto result = Item<wire::OnloadResult>(r, i);
        KVT_FUZZ_CHECK(IsKnownStatusCode(result.status), what);
        if (result.status == 0) KVT_FUZZ_CHECK(result.size >= 1, what);
      }
      break;
    }
  }
}

// What a copy would touch: every span inside the pool and the region, the layers as asked.
void CheckCopyJob(const FrameView& request,
                  const CopyJob& job,
                  const CopyHold& hold,
                  Session& session,
                  const Tenant& tenant) {
  const auto spec = request.Prefix<wire::TransferSpec>();
  const std::string what = "copy for " + Describe(request.header);
  KVT_FUZZ_CHECK(job.region != nullptr && job.region == session.regions().Find(spec.region_id),
                 what);
  KVT_FUZZ_CHECK(job.pool == tenant.memory.data(), what);
  KVT_FUZZ_CHECK(job.to_pool == (request.op == Op::kOffload) && hold.op == request.op, what);
  KVT_FUZZ_CHECK(job.spans.size() == hold.items.size(), what);
  KVT_FUZZ_CHECK(job.spans.size() <= request.header.count, what);
  std::vector<std::pair<uint64_t, uint64_t>> pool_spans;
  for (const CopySpan& span : job.spans) {
    KVT_FUZZ_CHECK(span.bytes >= 1 && span.bytes <= tenant.pool->pool_bytes(), what);
    KVT_FUZZ_CHECK(InPool(tenant, span.pool_offset, span.bytes),
                   "pool span [" + std::to_string(span.pool_offset) + ", +" +
                       std::to_string(span.bytes) + "): " + what);
    KVT_FUZZ_CHECK(job.region->Holds(span.region_offset, span.bytes),
                   "region span [" + std::to_string(span.region_offset) + ", +" +
                       std::to_string(span.bytes) + ") of " + std::to_string(job.region->bytes()) +
                       ": " + what);
    pool_spans.emplace_back(span.pool_offset, span.bytes);
  }
  if (job.to_pool) {  // an offload writes each of its slots once
    std::sort(pool_spans.begin(), pool_spans.end());
    for (size_t i = 1; i < pool_spans.size(); ++i) {
      KVT_FUZZ_CHECK(pool_spans[i - 1].first + pool_spans[i - 1].second <= pool_spans[i].first,
                     "offload writes overlapping pool spans: " + what);
    }
  }
  KVT_FUZZ_CHECK(job.layer_ends.size() == spec.layers, what);
  for (size_t i = 0; i < job.layer_ends.size(); ++i) {
    KVT_FUZZ_CHECK(job.layer_ends[i] <= job.spans.size(), what);
    if (i > 0) KVT_FUZZ_CHECK(job.layer_ends[i - 1] <= job.layer_ends[i], what);
  }
  if (!job.layer_ends.empty()) KVT_FUZZ_CHECK(job.layer_ends.back() == job.spans.size(), what);
  if (spec.progress_region != wire::kNoRegion) {
    KVT_FUZZ_CHECK(job.progress != nullptr && job.progress->kind() == wire::RegionKind::kHost,
                   what);
    KVT_FUZZ_CHECK(job.progress_offset % 4 == 0 && job.progress->Holds(job.progress_offset, 4),
                   what);
  } else {
    KVT_FUZZ_CHECK(job.progress == nullptr, what);
  }
}

// Runs one decoded request as Server::ServeFrame and the copy completion do. False: the
// session is closed after this reply.
bool Serve(World& w, Session& session, std::span<const std::byte> frame, const FrameView& request) {
  wire::FrameWriter reply(w.send_buffer);
  reply.Begin(request.op, request.header.request_id);
  UniqueFd passed;
  if (request.op == Op::kRegisterRegion &&
      request.Prefix<wire::RegionSpec>().kind == static_cast<uint32_t>(wire::RegionKind::kHost)) {
    passed.reset(fcntl(w.region_memfd.get(), F_DUPFD_CLOEXEC, 0));
    KVT_FUZZ_CHECK(passed.valid(), "dup of the region memfd");
  }
  RequestHandler::Outcome outcome = w.handler->Handle(session, request, reply, std::move(passed));
  // Without an SSD tier nothing waits for spill I/O.
  KVT_FUZZ_CHECK(!outcome.park,
                 "a request parked without an SSD tier: " + Describe(request.header));
  if (!outcome.copy) {
    CheckReply(request, reply.Finish(), *w.tenant, outcome);
    return !outcome.close_session;
  }
  KVT_FUZZ_CHECK(request.op == Op::kOffload || request.op == Op::kOnload,
                 "a copy for " + Describe(request.header));
  CheckCopyJob(request, *outcome.copy, outcome.hold, session, *w.tenant);
  // Server::Park: the reply continues in a buffer sized for this request.
  const FrameHeader header = HeaderOf(frame);
  const size_t capacity = std::min<size_t>(wire::kMaxFrameBytes,
                                           sizeof(FrameHeader) + wire::kMaxMessageBytes +
                                               size_t{header.count} * sizeof(wire::AcquireResult));
  KVT_FUZZ_CHECK(capacity >= reply.size(), "a parked reply outgrows its buffer");
  std::vector<std::byte> parked(capacity);
  std::memcpy(parked.data(), w.send_buffer.data(), reply.size());
  wire::FrameWriter writer = reply;
  writer.Rebind(parked);
  // The copy ends: it fails for an odd request id, so both endings are explored.
  const Status copied = (request.header.request_id & 1) != 0
                            ? Status(StatusCode::kInternal, "fuzz: the copy failed")
                            : Status::Ok();
  w.handler->FinishCopy(session, outcome.hold, copied, &writer, &request);
  CheckReply(request, writer.Finish(), *w.tenant, outcome);
  return true;
}

// The next frame of the stream: as long as its header says, within what is left.
std::span<const std::byte> NextFrame(std::span<const std::byte> rest) {
  if (rest.size() < sizeof(FrameHeader)) return rest;
  const FrameHeader h = HeaderOf(rest);
  const size_t length = sizeof(FrameHeader) + size_t{h.message_bytes} + size_t{h.body_bytes};
  return rest.first(std::min(length, rest.size()));
}

}  // namespace
}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier;
  using namespace kvtier::fuzz;
  World& w = TheWorld();
  const std::span<const std::byte> input = Bytes(data, size);
  {
    PeerCredentials peer{.pid = getpid(), .uid = geteuid(), .gid = getegid()};
    Session session(1, UniqueFd(), peer, w.config.max_leases_per_session, w.tenant);
    std::span<const std::byte> rest = input;
    bool open = true;
    while (open && !rest.empty()) {
      const std::span<const std::byte> frame = NextFrame(rest);
      rest = rest.subspan(frame.size());
      CheckDecodeReply(frame);
      auto request = wire::DecodeRequest(frame);
      if (!request.ok()) {
        CheckDecodeError(frame, request.status());
        // The server answers with the error and closes the session; that reply must decode.
        wire::FrameWriter reply(w.send_buffer);
        const FrameHeader h = HeaderOf(frame);
        const bool op_known = h.op >= 1 && h.op <= wire::kMaxOp;
        reply.Begin(op_known ? static_cast<wire::Op>(h.op) : wire::Op::kHello, h.request_id);
        reply.SetStatus(request.status());
        auto echoed = wire::DecodeReply(reply.Finish());
        KVT_FUZZ_CHECK(
            echoed.ok() && echoed->header.status == static_cast<uint16_t>(request.status().code()),
            "the error reply does not decode");
        break;
      }
      CheckDecodedRequest(frame, *request);
      // A decodable request is a decodable reply too (status 0, no message).
      KVT_FUZZ_CHECK(wire::DecodeReply(frame).ok(), Describe(request->header));
      open = Serve(w, session, frame, *request);
    }
  }
  // The session is gone: everything it reserved, leased or registered is given back, so
  // evicting what it committed empties the pool.
  Tenant& tenant = *w.tenant;
  KVT_FUZZ_CHECK(tenant.sessions == 0 && tenant.connections == 0 && tenant.regions == 0,
                 "the closed session left counts behind: sessions " +
                     std::to_string(tenant.sessions) + " regions " +
                     std::to_string(tenant.regions));
  const EvictReport evicted = tenant.pool->Evict(EvictTiers::kAll);
  KVT_FUZZ_CHECK(evicted.kept_pinned == 0, "blocks still pinned after the session closed: " +
                                               std::to_string(evicted.kept_pinned));
  KVT_FUZZ_CHECK(tenant.pool->empty(), "the pool is not empty after evicting everything");
  tenant.namespaces.clear();
  tenant.namespace_names.clear();
  return 0;
}
