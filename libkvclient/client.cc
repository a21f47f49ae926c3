#include "kvclient/client.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <utility>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"
#include "ipc/shm/shm_region.h"
#include "ipc/socket/seqpacket.h"
#include "ipc/wire/frame_codec.h"
#include "ipc/wire/protocol.h"
#include "libkvclient/cuda_pin.h"

namespace kvtier {
namespace {

static_assert(kMaxKeyBytes == wire::kMaxKeyBytes && kMaxBatch == wire::kMaxBatch);
static_assert(static_cast<int>(Tier::kSsd) == static_cast<int>(wire::Tier::kSsd));

uint64_t NowUs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

Status CheckKeys(std::span<const Key> keys) {
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys[i].len == 0 || keys[i].len > kMaxKeyBytes) {
      return Status(StatusCode::kInvalidArgument,
                    "key " + std::to_string(i) + " is " + std::to_string(keys[i].len) +
                        " bytes; keys are 1..32 bytes");
    }
  }
  return Status::Ok();
}

Status CheckSizes(std::span<const uint64_t> sizes, uint64_t max_block_bytes) {
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] == 0 || sizes[i] > max_block_bytes) {
      return Status(StatusCode::kInvalidArgument,
                    "item " + std::to_string(i) + ": block size " + std::to_string(sizes[i]) +
                        " is outside 1.." + std::to_string(max_block_bytes) +
                        " (max_block_bytes)");
    }
  }
  return Status::Ok();
}

wire::WireKey ToWire(const Key& key) {
  wire::WireKey w{};
  w.len = key.len;
  std::memcpy(w.bytes, key.bytes.data(), key.len);  // bytes past len stay zero
  return w;
}

void AppendKeys(wire::FrameWriter& w, std::span<const Key> keys) {
  auto* items = w.AppendItems<wire::WireKey>(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    const wire::WireKey k = ToWire(keys[i]);
    std::memcpy(&items[i], &k, sizeof(k));
  }
}

Status SpanSizeError(const char* what) {
  return Status(StatusCode::kInvalidArgument, std::string(what) + " must be as long as keys");
}

// A failed call's per-key results: every key from `from` on gets the call's code, so that no
// result claims success for a key the call did not carry out.
void FailFrom(std::span<StatusCode> codes, size_t from, const Status& s) {
  for (size_t i = from; i < codes.size(); ++i) codes[i] = s.code();
}

// The per-key summary the RAII types report: OK, or the first failure and how many failed.
Status Summarize(std::span<const StatusCode> codes, std::string_view verb) {
  size_t failed = 0;
  StatusCode first = StatusCode::kOk;
  for (StatusCode c : codes) {
    if (c != StatusCode::kOk && failed++ == 0) first = c;
  }
  if (failed == 0) return Status::Ok();
  return Status(first, std::to_string(failed) + " of " + std::to_string(codes.size()) +
                           " keys could not be " + std::string(verb) + " (first: " +
                           std::string(StatusCodeName(first)) + ")");
}

}  // namespace

const char* LibraryVersion() { return KVTIER_VERSION; }
uint16_t ProtocolVersion() { return wire::kProtocolVersion; }

Key Key::From(std::span<const std::byte> data) {
  Key key;
  key.len = static_cast<uint8_t>(std::min<size_t>(data.size(), 255));
  std::memcpy(key.bytes.data(), data.data(), std::min(data.size(), kMaxKeyBytes));
  return key;
}

struct Client::Impl {
  ClientOptions options;
  UniqueFd fd;
  ShmRegion pool;
  std::string tenant;
  uint64_t max_block_bytes = 0;
  uint64_t spill_max_block_bytes = 0;
  uint64_t features = 0;  // HelloLimits::features
  uint64_t session_id = 0;
  std::mutex mu;  // one round trip at a time; guards everything below
  uint64_t next_request_id = 1;
  Status broken;  // set once the daemon closed the session
  std::vector<std::byte> send_buf = std::vector<std::byte>(wire::kMaxFrameBytes);
  std::vector<std::byte> recv_buf = std::vector<std::byte>(wire::kMaxFrameBytes);
  UniqueFd received_fd;

  wire::FrameWriter Begin(wire::Op op) {
    wire::FrameWriter w(send_buf);
    w.Begin(op, next_request_id);
    return w;
  }
  Status Receive(size_t* bytes);
  // Sends the frame in `w` (with `pass_fd` as SCM_RIGHTS if >= 0), waits for its reply and
  // checks it: a non-OK reply status is returned as is; on OK the reply has `items` items of
  // `item_bytes` (when item_bytes != 0).
  Result<wire::FrameView> RoundTrip(wire::FrameWriter& w, wire::Op op, size_t items,
                                    size_t item_bytes, bool exact_count = true, int pass_fd = -1);
  // RoundTrip's halves: Send returns the request id that Await expects.
  Result<uint64_t> Send(wire::FrameWriter& w, int pass_fd = -1);
  Result<wire::FrameView> Await(uint64_t id, wire::Op op, size_t items, size_t item_bytes,
                                bool exact_count = true);
  // Commit, abort, remove, prefetch and release: one frame per kMaxBatch items, a uint16
  // status per item. `mu` must be held. On failure, items from the failed frame on get its code.
  Status PerItemOp(wire::Op op, std::span<const Key> keys, std::span<const uint64_t> ids,
                   std::span<StatusCode> codes);

  // Host regions registered with a local mapping, by region id (to wait on progress words).
  std::unordered_map<uint32_t, std::pair<std::byte*, uint64_t>> local_regions;
  // The onload between StartOnload and FinishOnload.
  struct OpenTransfer {
    bool active = false;
    uint64_t request_id = 0;
    size_t items = 0;
    uint32_t layers = 0;
    const uint32_t* progress = nullptr;  // in the caller's mapping, or null
  } transfer;
  bool pinned = false;  // pool registered with cudaHostRegister (PinPoolForCuda)
};

Status Client::Impl::Receive(size_t* bytes) {
  const uint64_t spin_until = NowUs() + options.spin_us;
  for (;;) {
    const bool spinning = NowUs() < spin_until;
    if (!spinning) {
      pollfd p{fd.get(), POLLIN, 0};
      const int rc = poll(&p, 1, options.timeout_ms);
      if (rc == 0) {
        return Status(StatusCode::kTimedOut, "no reply from kvtierd within " +
                                                 std::to_string(options.timeout_ms) + " ms");
      }
      if (rc < 0 && errno != EINTR) return ErrnoStatus("poll(kvtierd socket)", errno);
    }
    auto got = RecvFrame(fd.get(), recv_buf, MSG_DONTWAIT);
    if (!got.ok() && !IsWouldBlock(got.status())) {
      // A daemon that refuses a session replies and closes; the kernel then reports
      // ECONNRESET once, ahead of the refusal still queued. Read past it once.
      auto queued = RecvFrame(fd.get(), recv_buf, MSG_DONTWAIT);
      if (!queued.ok() || queued->eof) {
        return Status(StatusCode::kUnavailable,
                      "lost the connection to kvtierd (it stopped, restarted or ended this "
                      "session; connect again): " + got.status().message());
      }
      got = std::move(queued);
    }
    if (!got.ok()) {
      // If kvtierd shares this CPU, let it run: spinning would only delay the reply.
      if (spinning) sched_yield();
      continue;
    }
    if (got->eof) {
      return Status(StatusCode::kUnavailable,
                    "kvtierd closed the connection (it stopped, restarted or ended this "
                    "session; connect again)");
    }
    if (got->truncated) {
      return Status(StatusCode::kProtocolError, "kvtierd sent a frame larger than the limit");
    }
    received_fd = std::move(got->passed_fd);
    *bytes = got->bytes;
    return Status::Ok();
  }
}

Result<uint64_t> Client::Impl::Send(wire::FrameWriter& w, int pass_fd) {
  if (!broken.ok()) return broken;
  if (transfer.active) {
    return Status(StatusCode::kFailedPrecondition,
                  "an onload started with StartOnload is still open: call FinishOnload first");
  }
  const uint64_t id = next_request_id++;
  if (Status s = SendFrame(fd.get(), w.Finish(), pass_fd); !s.ok()) {
    // The daemon may have refused the session (e.g. max_sessions) and closed before our send;
    // its reason is still waiting in the socket.
    size_t pending = 0;
    auto got = RecvFrame(fd.get(), recv_buf, MSG_DONTWAIT);
    if (got.ok() && !got->eof && !got->truncated) pending = got->bytes;
    auto refusal = wire::DecodeReply(std::span(recv_buf).first(pending));
    if (pending > 0 && refusal.ok() && refusal->header.status != 0) {
      broken = Status(static_cast<StatusCode>(refusal->header.status),
                      std::string(refusal->message));
    } else {
      broken = Status(StatusCode::kUnavailable, "lost the connection to kvtierd: " + s.message());
    }
    return broken;
  }
  return id;
}

Result<wire::FrameView> Client::Impl::Await(uint64_t id, wire::Op op, size_t items,
                                            size_t item_bytes, bool exact_count) {
  size_t bytes = 0;
  if (Status s = Receive(&bytes); !s.ok()) {
    broken = s;  // after a timeout the reply stream is out of step: do not reuse it
    return s;
  }
  auto reply = wire::DecodeReply(std::span(recv_buf).first(bytes));
  if (!reply.ok()) {
    broken = reply.status();
    return broken;
  }
  const wire::FrameHeader& h = reply->header;
  const auto code = static_cast<StatusCode>(h.status);
  // Only a refusal of the session (request id 0, before our hello was read) may carry another
  // id; every other reply must answer this very request.
  const bool refusal = op == wire::Op::kHello && h.request_id == 0 && code != StatusCode::kOk;
  if (!refusal && (h.request_id != id || h.op != static_cast<uint16_t>(op))) {
    broken = Status(StatusCode::kProtocolError, "kvtierd replied to a different request");
    return broken;
  }
  if (code != StatusCode::kOk) {
    Status s(code, std::string(reply->message));
    // The daemon closes the session after these.
    if (code == StatusCode::kProtocolError || code == StatusCode::kVersionMismatch ||
        (op == wire::Op::kHello)) {
      broken = Status(StatusCode::kUnavailable, "session closed by kvtierd: " + s.ToString());
    }
    return s;
  }
  const bool count_ok = exact_count ? h.count == items : h.count <= items;
  if (item_bytes != 0 && (!count_ok || h.body_bytes != size_t{h.count} * item_bytes)) {
    broken = Status(StatusCode::kProtocolError, "kvtierd reply has the wrong number of items");
    return broken;
  }
  return reply;
}

Result<wire::FrameView> Client::Impl::RoundTrip(wire::FrameWriter& w, wire::Op op, size_t items,
                                                size_t item_bytes, bool exact_count,
                                                int pass_fd) {
  KVT_ASSIGN_OR_RETURN(const uint64_t id, Send(w, pass_fd));
  return Await(id, op, items, item_bytes, exact_count);
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() {
  if (impl_ != nullptr && impl_->pinned) client_cuda::Unpin(impl_->pool.data());
}

Result<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.name_space.empty() || options.name_space.size() > wire::kMaxNamespaceBytes) {
    return Status(StatusCode::kInvalidArgument, "name_space must be 1..128 bytes");
  }
  // Ask for the limits; a kvtierd older than the flag refuses it (protocol_error, naming the
  // flags) and closes the session: say hello again without it.
  for (const uint32_t flags : {wire::kHelloWantsLimits, 0u}) {
    auto impl = std::make_unique<Impl>();
    impl->options = options;
    KVT_ASSIGN_OR_RETURN(impl->fd, ConnectSeqpacket(options.socket_path));
    wire::FrameWriter w = impl->Begin(wire::Op::kHello);
    wire::HelloRequest hello{};
    hello.flags = flags;
    hello.namespace_bytes = static_cast<uint32_t>(options.name_space.size());
    w.Append(&hello, sizeof(hello));
    w.Append(options.name_space.data(), options.name_space.size());
    auto reply = impl->RoundTrip(w, wire::Op::kHello, 0, 0);
    if (!reply.ok()) {
      if (flags != 0 && reply.status().code() == StatusCode::kProtocolError &&
          reply.status().message().find("flags") != std::string::npos) {
        continue;
      }
      return reply.status();
    }
    wire::HelloReply out{};
    if (reply->body.size() < sizeof(out) || !impl->received_fd.valid()) {
      return Status(StatusCode::kProtocolError, "kvtierd's hello reply lacks the pool");
    }
    std::memcpy(&out, reply->body.data(), sizeof(out));
    // Later daemons may append more: read what this client knows of.
    if (reply->body.size() >= sizeof(out) + sizeof(wire::HelloLimits)) {
      wire::HelloLimits limits{};
      std::memcpy(&limits, reply->body.data() + sizeof(out), sizeof(limits));
      impl->spill_max_block_bytes = limits.spill_max_block_bytes;
      impl->features = limits.features;
    }
    KVT_ASSIGN_OR_RETURN(impl->pool, ShmRegion::Map(std::move(impl->received_fd), out.pool_bytes));
    impl->tenant.assign(out.tenant, strnlen(out.tenant, sizeof(out.tenant)));
    impl->max_block_bytes = out.max_block_bytes;
    impl->session_id = out.session_id;
    return std::unique_ptr<Client>(new Client(std::move(impl)));
  }
  return Status(StatusCode::kProtocolError, "kvtierd refused every hello");
}

std::span<std::byte> Client::pool() const { return impl_->pool.bytes(); }
const std::string& Client::tenant() const { return impl_->tenant; }
uint64_t Client::max_block_bytes() const { return impl_->max_block_bytes; }
uint64_t Client::spill_max_block_bytes() const { return impl_->spill_max_block_bytes; }
const ClientOptions& Client::options() const { return impl_->options; }

Status Client::VerifyLeases() const {
  // The reads of leased bytes come before the check (pairs with the fence in kvtierd's
  // Session::Revoke, which shuts the socket down before any leased slot may change).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  pollfd p{impl_->fd.get(), POLLRDHUP, 0};
  const int rc = poll(&p, 1, 0);
  if (rc == 0) return Status::Ok();
  if (rc < 0) return ErrnoStatus("poll(kvtierd socket)", errno);
  // Readable but not hung up: a reply nobody waits for (only a StartOnload's); still live.
  if ((p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) == 0) return Status::Ok();
  return Status(StatusCode::kFailedPrecondition,
                "kvtierd ended this session (tenant purged, daemon draining or stopping, or an "
                "error): its leases were revoked and bytes read through them may be wrong");
}
uint64_t Client::session_id() const { return impl_->session_id; }

Status Client::ReserveRaw(std::span<const Key> keys, std::span<const uint64_t> sizes,
                          std::span<uint64_t> offsets, std::span<StatusCode> codes,
                          std::span<const uint32_t> ttl_seconds, std::string* refusal) {
  if (codes.size() < keys.size()) return SpanSizeError("codes");
  codes = codes.first(keys.size());
  Status s = [&] {
    if (sizes.size() != keys.size()) return SpanSizeError("sizes");
    if (!ttl_seconds.empty() && ttl_seconds.size() != keys.size()) {
      return SpanSizeError("ttl_seconds");
    }
    if (offsets.size() < keys.size()) return SpanSizeError("offsets");
    KVT_RETURN_IF_ERROR(CheckKeys(keys));
    return CheckSizes(sizes, impl_->max_block_bytes);
  }();
  if (!s.ok()) {
    FailFrom(codes, 0, s);
    return s;
  }
  std::lock_guard lock(impl_->mu);
  size_t done = 0;
  s = ReserveFrames(keys, sizes, offsets, codes, ttl_seconds, refusal, &done);
  if (!s.ok()) {
    // A failed reserve holds nothing: give back what earlier frames reserved.
    std::vector<Key> reserved;
    for (size_t i = 0; i < done; ++i) {
      if (codes[i] == StatusCode::kOk) reserved.push_back(keys[i]);
    }
    std::vector<StatusCode> ignored(reserved.size());
    if (!reserved.empty()) (void)impl_->PerItemOp(wire::Op::kAbort, reserved, {}, ignored);
    FailFrom(codes, 0, s);
  }
  return s;
}

Status Client::ReserveFrames(std::span<const Key> keys, std::span<const uint64_t> sizes,
                             std::span<uint64_t> offsets, std::span<StatusCode> codes,
                             std::span<const uint32_t> ttl_seconds, std::string* refusal,
                             size_t* done) {
  const uint64_t pool_bytes = impl_->pool.size();
  for (size_t base = 0; base < keys.size(); base += kMaxBatch) {
    const size_t n = std::min(kMaxBatch, keys.size() - base);
    wire::FrameWriter w = impl_->Begin(wire::Op::kReserve);
    auto* items = w.AppendItems<wire::ReserveItem>(n);
    for (size_t i = 0; i < n; ++i) {
      wire::ReserveItem item{ToWire(keys[base + i]), sizes[base + i],
                             ttl_seconds.empty() ? 0u : ttl_seconds[base + i], 0};
      std::memcpy(&items[i], &item, sizeof(item));
    }
    KVT_ASSIGN_OR_RETURN(auto reply,
                         impl_->RoundTrip(w, wire::Op::kReserve, n, sizeof(wire::ReserveResult)));
    if (refusal != nullptr && refusal->empty()) refusal->assign(reply.message);
    for (size_t i = 0; i < n; ++i) {
      const auto r = reply.ItemAt<wire::ReserveResult>(i);
      codes[base + i] = IsKnownStatusCode(r.status) ? static_cast<StatusCode>(r.status)
                                                    : StatusCode::kInternal;
      offsets[base + i] = r.offset;
      if (codes[base + i] == StatusCode::kOk &&
          (r.offset > pool_bytes || sizes[base + i] > pool_bytes - r.offset)) {
        // No item of this reply can be trusted: a caller that skips the Status must not write.
        impl_->broken = Status(StatusCode::kProtocolError, "kvtierd sent an offset out of the pool");
        return impl_->broken;
      }
    }
    *done = base + n;
  }
  return Status::Ok();
}

Status Client::Impl::PerItemOp(wire::Op op, std::span<const Key> keys,
                               std::span<const uint64_t> ids, std::span<StatusCode> codes) {
  const size_t total = op == wire::Op::kRelease ? ids.size() : keys.size();
  for (size_t base = 0; base < total; base += kMaxBatch) {
    const size_t n = std::min(kMaxBatch, total - base);
    wire::FrameWriter w = Begin(op);
    if (op == wire::Op::kRelease) {
      w.Append(ids.data() + base, n * sizeof(uint64_t));
      w.SetCount(static_cast<uint32_t>(n));
    } else {
      AppendKeys(w, keys.subspan(base, n));
    }
    auto reply = RoundTrip(w, op, n, sizeof(uint16_t));
    if (!reply.ok()) {
      FailFrom(codes, base, reply.status());
      return reply.status();
    }
    for (size_t i = 0; i < n; ++i) {
      const auto raw = reply->ItemAt<uint16_t>(i);
      codes[base + i] = IsKnownStatusCode(raw) ? static_cast<StatusCode>(raw) : StatusCode::kInternal;
    }
  }
  return Status::Ok();
}

// Commit, abort, remove and prefetch share one shape: keys in, a uint16 status per key out.
Status Client::PerKeyOp(uint16_t raw_op, std::span<const Key> keys,
                        std::span<StatusCode> codes) {
  const auto op = static_cast<wire::Op>(raw_op);
  if (!codes.empty() && codes.size() < keys.size()) return SpanSizeError("codes");
  std::vector<StatusCode> scratch(codes.empty() ? keys.size() : 0);
  std::span<StatusCode> out = codes.empty() ? std::span<StatusCode>(scratch) : codes.first(keys.size());
  if (Status s = CheckKeys(keys); !s.ok()) {
    FailFrom(out, 0, s);
    return s;
  }
  std::lock_guard lock(impl_->mu);
  return impl_->PerItemOp(op, keys, {}, out);
}

Status Client::CommitRaw(std::span<const Key> keys, std::span<StatusCode> codes) {
  return PerKeyOp(static_cast<uint16_t>(wire::Op::kCommit), keys, codes);
}
Status Client::AbortRaw(std::span<const Key> keys, std::span<StatusCode> codes) {
  return PerKeyOp(static_cast<uint16_t>(wire::Op::kAbort), keys, codes);
}
Status Client::Remove(std::span<const Key> keys, std::span<StatusCode> codes) {
  return PerKeyOp(static_cast<uint16_t>(wire::Op::kRemove), keys, codes);
}

Status Client::Prefetch(std::span<const Key> keys, std::span<StatusCode> codes) {
  return PerKeyOp(static_cast<uint16_t>(wire::Op::kPrefetch), keys, codes);
}

bool Client::has_hints() const { return (impl_->features & wire::kFeatureHints) != 0; }

namespace {

// A hint to a kvtierd without hints: refused for every key, as a failed batch is.
Status NoHints(std::span<const Key> keys, std::span<StatusCode> codes) {
  const Status refused(StatusCode::kFailedPrecondition,
                       "this kvtierd takes no hints (it predates them: upgrade it, or check "
                       "has_hints() and skip them)");
  if (!codes.empty() && codes.size() < keys.size()) return SpanSizeError("codes");
  FailFrom(codes.first(std::min(codes.size(), keys.size())), 0, refused);
  return refused;
}

}  // namespace

Status Client::ReuseSoon(std::span<const Key> keys, std::span<StatusCode> codes) {
  if (!has_hints()) return NoHints(keys, codes);
  return PerKeyOp(static_cast<uint16_t>(wire::Op::kReuseSoon), keys, codes);
}

Status Client::DoneWith(std::span<const Key> keys, std::span<StatusCode> codes) {
  if (!has_hints()) return NoHints(keys, codes);
  return PerKeyOp(static_cast<uint16_t>(wire::Op::kDoneWith), keys, codes);
}

Status Client::AcquireRaw(std::span<const Key> keys, std::span<LeaseInfo> out) {
  if (out.size() < keys.size()) return SpanSizeError("out");
  out = out.first(keys.size());
  Status s = CheckKeys(keys);
  if (s.ok()) {
    std::lock_guard lock(impl_->mu);
    size_t done = 0;
    s = AcquireFrames(keys, out, &done);
    if (!s.ok()) {
      // A failed acquire holds nothing: give back what earlier frames leased.
      std::vector<uint64_t> ids;
      for (size_t i = 0; i < done; ++i) {
        if (out[i].code == StatusCode::kOk) ids.push_back(out[i].lease_id);
      }
      std::vector<StatusCode> ignored(ids.size());
      if (!ids.empty()) (void)impl_->PerItemOp(wire::Op::kRelease, {}, ids, ignored);
    }
  }
  if (!s.ok()) {
    for (LeaseInfo& info : out) info = LeaseInfo{.code = s.code()};
  }
  return s;
}

Status Client::AcquireFrames(std::span<const Key> keys, std::span<LeaseInfo> out, size_t* done) {
  const uint64_t pool_bytes = impl_->pool.size();
  for (size_t base = 0; base < keys.size(); base += kMaxBatch) {
    const size_t n = std::min(kMaxBatch, keys.size() - base);
    wire::FrameWriter w = impl_->Begin(wire::Op::kAcquire);
    AppendKeys(w, keys.subspan(base, n));
    KVT_ASSIGN_OR_RETURN(auto reply,
                         impl_->RoundTrip(w, wire::Op::kAcquire, n, sizeof(wire::AcquireResult)));
    for (size_t i = 0; i < n; ++i) {
      const auto r = reply.ItemAt<wire::AcquireResult>(i);
      LeaseInfo& info = out[base + i];
      info = LeaseInfo{};
      info.code = IsKnownStatusCode(r.status) ? static_cast<StatusCode>(r.status)
                                              : StatusCode::kInternal;
      if (info.code != StatusCode::kOk) continue;
      if (r.offset > pool_bytes || r.size > pool_bytes - r.offset || r.tier > 3) {
        impl_->broken = Status(StatusCode::kProtocolError, "kvtierd sent a lease out of the pool");
        return impl_->broken;
      }
      info.lease_id = r.lease_id;
      info.offset = r.offset;
      info.size = r.size;
      info.tier = static_cast<Tier>(r.tier);
    }
    *done = base + n;
  }
  return Status::Ok();
}

Status Client::ReleaseRaw(std::span<const uint64_t> lease_ids, std::span<StatusCode> codes) {
  if (!codes.empty() && codes.size() < lease_ids.size()) return SpanSizeError("codes");
  std::vector<StatusCode> scratch(codes.empty() ? lease_ids.size() : 0);
  std::span<StatusCode> out =
      codes.empty() ? std::span<StatusCode>(scratch) : codes.first(lease_ids.size());
  std::lock_guard lock(impl_->mu);
  return impl_->PerItemOp(wire::Op::kRelease, {}, lease_ids, out);
}

Result<size_t> Client::MatchPrefix(std::span<const Key> keys, std::span<Tier> tiers,
                                   PrefixEstimate* estimate) {
  if (!tiers.empty() && tiers.size() < keys.size()) return SpanSizeError("tiers");
  KVT_RETURN_IF_ERROR(CheckKeys(keys));
  const bool estimating =
      estimate != nullptr && (impl_->features & wire::kFeatureMatchEstimate) != 0;
  if (estimate != nullptr) *estimate = PrefixEstimate{.valid = estimating};
  const wire::Op op = estimating ? wire::Op::kMatchPrefixEstimate : wire::Op::kMatchPrefix;
  const size_t head = estimating ? sizeof(wire::MatchEstimate) : 0;
  std::lock_guard lock(impl_->mu);
  size_t matched = 0;
  uint64_t queue_us = 0;  // frames after the first wait behind the same queue: counted once
  for (size_t base = 0; base < keys.size(); base += kMaxBatch) {
    const size_t n = std::min(kMaxBatch, keys.size() - base);
    wire::FrameWriter w = impl_->Begin(op);
    AppendKeys(w, keys.subspan(base, n));
    KVT_ASSIGN_OR_RETURN(auto reply,
                         impl_->RoundTrip(w, op, n, estimating ? 0 : sizeof(uint8_t),
                                          /*exact_count=*/false));
    const uint32_t got = reply.header.count;
    if (got > n || reply.body.size() != head + got) {
      impl_->broken = Status(StatusCode::kProtocolError,
                             "kvtierd's match_prefix reply has the wrong size");
      return impl_->broken;
    }
    const std::byte* tier_bytes = reply.body.data() + head;
    for (uint32_t i = 0; i < got && !tiers.empty(); ++i) {
      tiers[base + i] = static_cast<Tier>(std::min<uint8_t>(std::to_integer<uint8_t>(tier_bytes[i]), 3));
    }
    if (estimating) {
      wire::MatchEstimate e{};
      std::memcpy(&e, reply.body.data(), sizeof(e));
      estimate->dram_blocks += e.dram_blocks;
      estimate->ssd_blocks += e.ssd_blocks;
      estimate->dram_bytes += e.dram_bytes;
      estimate->ssd_bytes += e.ssd_bytes;
      estimate->load_us += e.load_us - e.ssd_queue_us;
      queue_us = std::max(queue_us, e.ssd_queue_us);
      estimate->dram_mb_per_s = e.dram_mb_per_s;
      estimate->ssd_mb_per_s = e.ssd_mb_per_s;
    }
    matched += got;
    if (got < n) break;
  }
  if (estimating) {
    estimate->ssd_queue_us = queue_us;
    estimate->load_us += queue_us;
  }
  return matched;
}

Result<PoolStats> Client::Stats() {
  std::lock_guard lock(impl_->mu);
  wire::FrameWriter w = impl_->Begin(wire::Op::kStats);
  KVT_ASSIGN_OR_RETURN(auto reply, impl_->RoundTrip(w, wire::Op::kStats, 0, 0));
  wire::StatsReply s{};
  if (reply.body.size() != sizeof(s)) {
    return Status(StatusCode::kProtocolError, "kvtierd's stats reply has the wrong size");
  }
  std::memcpy(&s, reply.body.data(), sizeof(s));
  return PoolStats{s.pool_bytes,        s.used_bytes,         s.slab_bytes_in_use,
                   s.committed_blocks,  s.reserved_blocks,    s.leased_blocks,
                   s.index_capacity,    s.index_bytes,        s.hits,
                   s.misses,            s.evictions,          s.sessions,
                   s.ssd_quota_bytes,   s.ssd_blocks,         s.ssd_only_blocks,
                   s.ssd_payload_bytes, s.dirty_bytes,        s.demotions,
                   s.promotions,        s.demote_failures,    s.promote_failures,
                   s.integrity_failures, s.ssd_dropped,       s.ssd_segments,
                   s.expirations};
}

// --- RAII batches ---

Result<Reservations> Client::Reserve(std::span<const Key> keys, std::span<const uint64_t> sizes,
                                     std::span<const uint32_t> ttl_seconds) {
  Reservations r(this);
  r.keys_.assign(keys.begin(), keys.end());
  r.sizes_.assign(sizes.begin(), sizes.end());
  r.offsets_.resize(keys.size());
  r.codes_.resize(keys.size(), StatusCode::kInternal);
  if (Status s = ReserveRaw(keys, sizes, r.offsets_, r.codes_, ttl_seconds, &r.refusal_);
      !s.ok()) {
    return s;
  }
  return r;
}

Result<Leases> Client::Acquire(std::span<const Key> keys) {
  Leases l(this);
  l.infos_.resize(keys.size());
  if (Status s = AcquireRaw(keys, l.infos_); !s.ok()) return s;
  return l;
}

Reservations::Reservations(Reservations&& other) noexcept
    : client_(other.client_),
      keys_(std::move(other.keys_)),
      sizes_(std::move(other.sizes_)),
      offsets_(std::move(other.offsets_)),
      codes_(std::move(other.codes_)),
      refusal_(std::move(other.refusal_)),
      done_(std::exchange(other.done_, true)) {}

Reservations& Reservations::operator=(Reservations&& other) noexcept {
  if (this != &other) {
    if (!done_) (void)Abort();
    client_ = other.client_;
    keys_ = std::move(other.keys_);
    sizes_ = std::move(other.sizes_);
    offsets_ = std::move(other.offsets_);
    codes_ = std::move(other.codes_);
    refusal_ = std::move(other.refusal_);
    done_ = std::exchange(other.done_, true);
  }
  return *this;
}

Reservations::~Reservations() {
  if (!done_) (void)Abort();
}

std::span<std::byte> Reservations::data(size_t i) const {
  if (codes_[i] != StatusCode::kOk || done_) return {};
  return client_->pool().subspan(offsets_[i], sizes_[i]);
}

std::vector<Key> Reservations::ReservedKeys() const {
  std::vector<Key> keys;
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (codes_[i] == StatusCode::kOk) keys.push_back(keys_[i]);
  }
  return keys;
}

Status Reservations::Commit() {
  if (done_) return Status(StatusCode::kFailedPrecondition, "reservations already ended");
  done_ = true;
  const std::vector<Key> keys = ReservedKeys();
  std::vector<StatusCode> codes(keys.size());
  KVT_RETURN_IF_ERROR(client_->CommitRaw(keys, codes));
  return Summarize(codes, "committed");
}

Status Reservations::Abort() {
  if (done_) return Status(StatusCode::kFailedPrecondition, "reservations already ended");
  done_ = true;
  const std::vector<Key> keys = ReservedKeys();
  std::vector<StatusCode> codes(keys.size());
  KVT_RETURN_IF_ERROR(client_->AbortRaw(keys, codes));
  return Summarize(codes, "aborted");
}

Leases::Leases(Leases&& other) noexcept
    : client_(other.client_),
      infos_(std::move(other.infos_)),
      done_(std::exchange(other.done_, true)) {}

Leases& Leases::operator=(Leases&& other) noexcept {
  if (this != &other) {
    if (!done_) (void)Release();
    client_ = other.client_;
    infos_ = std::move(other.infos_);
    done_ = std::exchange(other.done_, true);
  }
  return *this;
}

Leases::~Leases() {
  if (!done_) (void)Release();
}

std::span<const std::byte> Leases::data(size_t i) const {
  const LeaseInfo& info = infos_[i];
  if (info.code != StatusCode::kOk || done_) return {};
  return client_->pool().subspan(info.offset, info.size);
}

size_t Leases::prefix() const {
  size_t n = 0;
  while (n < infos_.size() && infos_[n].code == StatusCode::kOk) ++n;
  return n;
}

Status Leases::Release() {
  if (done_) return Status(StatusCode::kFailedPrecondition, "leases already released");
  done_ = true;
  std::vector<uint64_t> ids;
  for (const LeaseInfo& info : infos_) {
    if (info.code == StatusCode::kOk) ids.push_back(info.lease_id);
  }
  std::vector<StatusCode> codes(ids.size());
  KVT_RETURN_IF_ERROR(client_->ReleaseRaw(ids, codes));
  return Summarize(codes, "released");
}

Status Leases::Verify() const {
  if (done_) return Status(StatusCode::kFailedPrecondition, "the leases were released");
  return client_->VerifyLeases();
}


// --- Daemon-driven copies ---

namespace {

Status TransferChecks(std::span<const Key> keys, std::span<const uint64_t> offsets,
                      const TransferOptions& options, bool single_frame) {
  if (offsets.size() != keys.size()) return SpanSizeError("offsets");
  KVT_RETURN_IF_ERROR(CheckKeys(keys));
  if (options.layers == 0 || keys.size() % options.layers != 0) {
    return Status(StatusCode::kInvalidArgument,
                  std::to_string(keys.size()) + " keys do not split into " +
                      std::to_string(options.layers) + " equal layers");
  }
  if ((single_frame || options.layers > 1 || options.progress_region != 0) &&
      keys.size() > kMaxBatch) {
    return Status(StatusCode::kInvalidArgument,
                  "a layered or pipelined transfer carries at most " + std::to_string(kMaxBatch) +
                      " keys (one request)");
  }
  return Status::Ok();
}

void AppendTransferSpec(wire::FrameWriter& w, uint32_t region, const TransferOptions& options) {
  wire::TransferSpec spec{};
  spec.region_id = region;
  spec.layers = options.layers;
  spec.progress_region = options.progress_region;
  spec.progress_offset = options.progress_offset;
  spec.wait_event = options.wait_event;
  spec.signal_event = options.signal_event;
  w.Append(&spec, sizeof(spec));
}

// An onload request's body: the spec, then one item per key.
void AppendOnload(wire::FrameWriter& w, uint32_t region, const TransferOptions& options,
                  std::span<const Key> keys, std::span<const uint64_t> offsets) {
  AppendTransferSpec(w, region, options);
  auto* items = w.AppendItems<wire::OnloadItem>(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    const wire::OnloadItem item{ToWire(keys[i]), offsets[i]};
    std::memcpy(&items[i], &item, sizeof(item));
  }
}

}  // namespace

Result<HostMemory> HostMemory::Create(uint64_t bytes, const std::string& name) {
  if (bytes == 0) return Status(StatusCode::kInvalidArgument, "host memory of 0 bytes");
  UniqueFd fd(memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return ErrnoStatus("memfd_create", errno);
  if (ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    return ErrnoStatus("ftruncate(region memfd)", errno);
  }
  // Allocated here, charged to this process: kvtierd refuses a region with holes.
  if (int err = posix_fallocate(fd.get(), 0, static_cast<off_t>(bytes)); err != 0) {
    return ErrnoStatus("fallocate(region memfd)", err);
  }
  // Sealed so that neither side can shrink it under the other's copies (kvtierd requires it).
  if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return ErrnoStatus("fcntl(F_ADD_SEALS)", errno);
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap(region memfd)", errno);
  HostMemory memory;
  memory.fd_ = fd.release();
  memory.data_ = static_cast<std::byte*>(p);
  memory.size_ = bytes;
  return memory;
}

HostMemory::HostMemory(HostMemory&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      fd_(std::exchange(other.fd_, -1)) {}

HostMemory& HostMemory::operator=(HostMemory&& other) noexcept {
  if (this != &other) {
    this->~HostMemory();
    new (this) HostMemory(std::move(other));
  }
  return *this;
}

HostMemory::~HostMemory() {
  if (data_ != nullptr) munmap(data_, size_);
  if (fd_ >= 0) close(fd_);
}

Result<uint32_t> Client::RegisterHostRegion(int memfd, uint64_t bytes, std::byte* local) {
  wire::RegionSpec spec{};
  spec.kind = static_cast<uint32_t>(wire::RegionKind::kHost);
  spec.bytes = bytes;
  std::lock_guard lock(impl_->mu);
  wire::FrameWriter w = impl_->Begin(wire::Op::kRegisterRegion);
  w.Append(&spec, sizeof(spec));
  KVT_ASSIGN_OR_RETURN(auto reply, impl_->RoundTrip(w, wire::Op::kRegisterRegion, 0, 0,
                                                    /*exact_count=*/true, memfd));
  wire::RegionReply out{};
  if (reply.body.size() != sizeof(out)) {
    return Status(StatusCode::kProtocolError, "kvtierd's register_region reply has the wrong size");
  }
  std::memcpy(&out, reply.body.data(), sizeof(out));
  if (local != nullptr) impl_->local_regions[out.region_id] = {local, bytes};
  return out.region_id;
}

Result<uint32_t> Client::RegisterCudaRegion(int device, std::span<const std::byte> ipc_handle,
                                            uint64_t bytes,
                                            std::span<const std::byte> event_handles) {
  wire::RegionSpec spec{};
  if (ipc_handle.size() != sizeof(spec.ipc_handle) ||
      event_handles.size() % wire::kCudaIpcHandleBytes != 0 ||
      event_handles.size() / wire::kCudaIpcHandleBytes > wire::kMaxRegionEvents) {
    return Status(StatusCode::kInvalidArgument,
                  "CUDA IPC handles are 64 bytes each, and a region has at most " +
                      std::to_string(wire::kMaxRegionEvents) + " events");
  }
  spec.kind = static_cast<uint32_t>(wire::RegionKind::kCuda);
  spec.device = device;
  spec.bytes = bytes;
  std::memcpy(spec.ipc_handle, ipc_handle.data(), ipc_handle.size());
  spec.events = static_cast<uint32_t>(event_handles.size() / wire::kCudaIpcHandleBytes);
  std::lock_guard lock(impl_->mu);
  wire::FrameWriter w = impl_->Begin(wire::Op::kRegisterRegion);
  w.Append(&spec, sizeof(spec));
  w.Append(event_handles.data(), event_handles.size());
  KVT_ASSIGN_OR_RETURN(auto reply, impl_->RoundTrip(w, wire::Op::kRegisterRegion, 0, 0));
  wire::RegionReply out{};
  if (reply.body.size() != sizeof(out)) {
    return Status(StatusCode::kProtocolError, "kvtierd's register_region reply has the wrong size");
  }
  std::memcpy(&out, reply.body.data(), sizeof(out));
  return out.region_id;
}

Status Client::DeregisterRegion(uint32_t region) {
  std::lock_guard lock(impl_->mu);
  wire::FrameWriter w = impl_->Begin(wire::Op::kDeregisterRegion);
  const wire::RegionId id{region, 0};
  w.Append(&id, sizeof(id));
  KVT_ASSIGN_OR_RETURN(auto reply, impl_->RoundTrip(w, wire::Op::kDeregisterRegion, 0, 0));
  (void)reply;
  impl_->local_regions.erase(region);
  return Status::Ok();
}

Status Client::Offload(std::span<const Key> keys, uint32_t region,
                       std::span<const uint64_t> offsets, std::span<const uint64_t> sizes,
                       std::span<StatusCode> codes, const TransferOptions& options,
                       std::span<const uint32_t> ttl_seconds, std::string* refusal) {
  if (!codes.empty() && codes.size() < keys.size()) return SpanSizeError("codes");
  std::vector<StatusCode> scratch(codes.empty() ? keys.size() : 0);
  std::span<StatusCode> out = codes.empty() ? std::span<StatusCode>(scratch) : codes.first(keys.size());
  Status s = [&] {
    if (sizes.size() != keys.size()) return SpanSizeError("sizes");
    if (!ttl_seconds.empty() && ttl_seconds.size() != keys.size()) {
      return SpanSizeError("ttl_seconds");
    }
    KVT_RETURN_IF_ERROR(TransferChecks(keys, offsets, options, /*single_frame=*/false));
    return CheckSizes(sizes, impl_->max_block_bytes);
  }();
  if (!s.ok()) {
    FailFrom(out, 0, s);
    return s;
  }
  std::lock_guard lock(impl_->mu);
  for (size_t base = 0; base < keys.size() || base == 0; base += kMaxBatch) {
    const size_t n = std::min(kMaxBatch, keys.size() - base);
    wire::FrameWriter w = impl_->Begin(wire::Op::kOffload);
    AppendTransferSpec(w, region, options);
    auto* items = w.AppendItems<wire::OffloadItem>(n);
    for (size_t i = 0; i < n; ++i) {
      wire::OffloadItem item{ToWire(keys[base + i]), offsets[base + i],
                             static_cast<uint32_t>(sizes[base + i]),
                             ttl_seconds.empty() ? 0u : ttl_seconds[base + i]};
      std::memcpy(&items[i], &item, sizeof(item));
    }
    auto reply = impl_->RoundTrip(w, wire::Op::kOffload, n, sizeof(uint16_t));
    if (!reply.ok()) {
      FailFrom(out, base, reply.status());
      return reply.status();
    }
    if (refusal != nullptr && refusal->empty()) refusal->assign(reply->message);
    for (size_t i = 0; i < n; ++i) {
      const auto raw = reply->ItemAt<uint16_t>(i);
      out[base + i] = IsKnownStatusCode(raw) ? static_cast<StatusCode>(raw) : StatusCode::kInternal;
    }
    if (n == 0) break;
  }
  return Status::Ok();
}

Status Client::ReadOnloadReply(uint64_t id, size_t n, std::span<OnloadInfo> out) {
  KVT_ASSIGN_OR_RETURN(auto reply,
                       impl_->Await(id, wire::Op::kOnload, n, sizeof(wire::OnloadResult)));
  for (size_t i = 0; i < n; ++i) {
    const auto r = reply.ItemAt<wire::OnloadResult>(i);
    OnloadInfo& info = out[i];
    info.code = IsKnownStatusCode(r.status) ? static_cast<StatusCode>(r.status)
                                            : StatusCode::kInternal;
    info.size = r.size;
    info.tier = static_cast<Tier>(std::min<uint8_t>(r.tier, 3));
  }
  return Status::Ok();
}

Status Client::Onload(std::span<const Key> keys, uint32_t region,
                      std::span<const uint64_t> offsets, std::span<OnloadInfo> out,
                      const TransferOptions& options) {
  if (out.size() < keys.size()) return SpanSizeError("out");
  if (Status s = TransferChecks(keys, offsets, options, /*single_frame=*/false); !s.ok()) {
    for (size_t i = 0; i < keys.size(); ++i) out[i] = OnloadInfo{.code = s.code()};
    return s;
  }
  std::lock_guard lock(impl_->mu);
  for (size_t base = 0; base < keys.size() || base == 0; base += kMaxBatch) {
    const size_t n = std::min(kMaxBatch, keys.size() - base);
    wire::FrameWriter w = impl_->Begin(wire::Op::kOnload);
    AppendOnload(w, region, options, keys.subspan(base, n), offsets.subspan(base, n));
    auto id = impl_->Send(w);
    Status s = id.ok() ? ReadOnloadReply(*id, n, out.subspan(base, n)) : id.status();
    if (!s.ok()) {
      // Nothing from this frame on was copied.
      for (size_t i = base; i < keys.size(); ++i) out[i] = OnloadInfo{.code = s.code()};
      return s;
    }
    if (n == 0) break;
  }
  return Status::Ok();
}

Status Client::StartOnload(std::span<const Key> keys, uint32_t region,
                           std::span<const uint64_t> offsets, const TransferOptions& options) {
  KVT_RETURN_IF_ERROR(TransferChecks(keys, offsets, options, /*single_frame=*/true));
  std::lock_guard lock(impl_->mu);
  const uint32_t* progress = nullptr;
  if (options.progress_region != 0) {
    auto it = impl_->local_regions.find(options.progress_region);
    if (it == impl_->local_regions.end() || options.progress_offset % 4 != 0 ||
        options.progress_offset > it->second.second - 4 || it->second.second < 4) {
      return Status(StatusCode::kInvalidArgument,
                    "the progress word must be 4-byte aligned inside a host region registered "
                    "with its local mapping");
    }
    progress = reinterpret_cast<const uint32_t*>(it->second.first + options.progress_offset);
  }
  wire::FrameWriter w = impl_->Begin(wire::Op::kOnload);
  AppendOnload(w, region, options, keys, offsets);
  KVT_ASSIGN_OR_RETURN(const uint64_t id, impl_->Send(w));
  impl_->transfer = Impl::OpenTransfer{true, id, keys.size(), options.layers, progress};
  return Status::Ok();
}

Status Client::WaitLayer(uint32_t layer) {
  std::lock_guard lock(impl_->mu);
  const Impl::OpenTransfer& t = impl_->transfer;
  if (!t.active) return Status(StatusCode::kFailedPrecondition, "no onload was started");
  if (t.progress == nullptr) {
    return Status(StatusCode::kFailedPrecondition, "the onload was started without a progress word");
  }
  if (layer >= t.layers) {
    return Status(StatusCode::kInvalidArgument, "layer " + std::to_string(layer) +
                                                    " of an onload of " +
                                                    std::to_string(t.layers) + " layers");
  }
  const uint64_t deadline = NowUs() + uint64_t(impl_->options.timeout_ms) * 1000u;
  for (;;) {
    const uint32_t seen = std::atomic_ref<const uint32_t>(*t.progress).load(std::memory_order_acquire);
    if (seen > layer) return Status::Ok();
    // The daemon sets every layer before it replies, so a reply waiting means this layer
    // will never come (the request failed as a whole).
    pollfd p{impl_->fd.get(), POLLIN, 0};
    if (poll(&p, 1, 0) > 0) {
      if (std::atomic_ref<const uint32_t>(*t.progress).load(std::memory_order_acquire) > layer) {
        return Status::Ok();
      }
      return Status(StatusCode::kFailedPrecondition,
                    "the onload ended without layer " + std::to_string(layer) +
                        "; FinishOnload says why");
    }
    const uint64_t now = NowUs();
    if (now >= deadline) {
      return Status(StatusCode::kTimedOut, "layer " + std::to_string(layer) +
                                               " did not land within " +
                                               std::to_string(impl_->options.timeout_ms) + " ms");
    }
    // Sleep until the word changes, in slices, to notice a reply that ends the onload early.
    const timespec slice{0, 10'000'000};
    syscall(SYS_futex, t.progress, FUTEX_WAIT, seen, &slice, nullptr, 0);
  }
}

Status Client::FinishOnload(std::span<OnloadInfo> out) {
  std::lock_guard lock(impl_->mu);
  Impl::OpenTransfer t = impl_->transfer;
  if (!t.active) return Status(StatusCode::kFailedPrecondition, "no onload was started");
  if (out.size() < t.items) return SpanSizeError("out");
  impl_->transfer = Impl::OpenTransfer{};
  Status s = ReadOnloadReply(t.request_id, t.items, out);
  if (!s.ok()) {
    for (size_t i = 0; i < t.items; ++i) out[i] = OnloadInfo{.code = s.code()};
  }
  return s;
}

Status Client::PinPoolForCuda() {
  std::lock_guard lock(impl_->mu);
  if (impl_->pinned) return Status::Ok();
  KVT_RETURN_IF_ERROR(client_cuda::Pin(impl_->pool.data(), impl_->pool.size()));
  impl_->pinned = true;
  return Status::Ok();
}

}  // namespace kvtier
