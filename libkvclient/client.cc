#include "kvclient/client.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
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
#include "ipc/base/mutex.h"
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

namespace {

// The client's mapping of a tenant's pool. The fd is closed once mapped (the mapping alone
// keeps the memory), so that retiring the mapping lets a dead daemon's pool go. Move-only.
class PoolMapping {
 public:
  // Maps `fd` read-write; kPermissionDenied unless it is a sealed memfd of exactly `bytes`.
  static Result<PoolMapping> Map(UniqueFd fd, uint64_t bytes) {
    struct stat st {};
    if (fstat(fd.get(), &st) != 0) return ErrnoStatus("fstat(pool fd)", errno);
    constexpr int kRequiredSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
    const int seals = fcntl(fd.get(), F_GET_SEALS);
    if (seals < 0 || (seals & kRequiredSeals) != kRequiredSeals ||
        static_cast<uint64_t>(st.st_size) != bytes) {
      return Status(StatusCode::kPermissionDenied,
                    "the daemon passed a pool fd that is not a sealed memfd of the announced size");
    }
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
    if (p == MAP_FAILED) return ErrnoStatus("mmap(pool fd)", errno);
    PoolMapping m;
    m.data_ = static_cast<std::byte*>(p);
    m.size_ = bytes;
    return m;
  }
  PoolMapping() = default;
  PoolMapping(PoolMapping&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  PoolMapping& operator=(PoolMapping&& other) noexcept {
    if (this != &other) {
      if (data_ != nullptr) munmap(data_, size_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  PoolMapping(const PoolMapping&) = delete;
  PoolMapping& operator=(const PoolMapping&) = delete;
  ~PoolMapping() {
    if (data_ != nullptr) munmap(data_, size_);
  }

  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }
  std::span<std::byte> bytes() const { return {data_, size_}; }

  // For a session that ended: replaces the mapping in place by private zero pages, so that
  // pointers into it stay valid (no fault), reads give zeros, writes stay in this process, and
  // nothing here holds the old pool (which a restarted kvtierd may serve again) any more. The
  // range is unmapped with the object. Where a writable private range is refused (strict
  // overcommit, vm.overcommit_memory = 2), read-only zero pages; where even that fails, no
  // access at all.
  void Retire() {
    if (data_ == nullptr) return;
    constexpr int kFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE;
    if (mmap(data_, size_, PROT_READ | PROT_WRITE, kFlags, -1, 0) != MAP_FAILED) return;
    if (mmap(data_, size_, PROT_READ, kFlags, -1, 0) != MAP_FAILED) return;
    // Never leave the old pool readable (after a warm restart it shows the new session's
    // blocks): an access through an old pointer faults instead.
    if (mprotect(data_, size_, PROT_NONE) != 0) (void)munmap(data_, size_);
  }

 private:
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
};

// With ClientOptions::reconnect, the lease ids the caller gets are the client's own: a new
// kvtierd numbers its leases from the same start (slot 0, generation 1), so a daemon id kept
// from a lost session could name, and release, a lease of the new one. One slot per lease the
// caller holds; an id is the slot's generation (high 32 bits, bumped when the slot is freed,
// so never 0) and its index, as kvtierd's own LeaseTable does.
class LeaseHandles {
 public:
  enum class Found { kLive, kStale, kUnknown };

  uint64_t Add(uint64_t daemon_id, uint64_t session) {
    uint32_t index = 0;
    if (!free_.empty()) {
      index = free_.back();
      free_.pop_back();
    } else {
      index = static_cast<uint32_t>(slots_.size());
      slots_.emplace_back();
    }
    Slot& s = slots_[index];
    s.daemon_id = daemon_id;
    s.session = session;
    s.in_use = true;
    return (uint64_t{s.generation} << 32) | index;
  }

  // Frees `id`'s slot unless it is kUnknown (not a lease the caller holds). kLive: a lease of
  // `session`, its daemon id in *daemon_id; kStale: one of an earlier session.
  Found Take(uint64_t id, uint64_t session, uint64_t* daemon_id) {
    const uint64_t index = id & 0xffffffffu;
    if (index >= slots_.size()) return Found::kUnknown;
    Slot& s = slots_[index];
    if (!s.in_use || s.generation != static_cast<uint32_t>(id >> 32)) return Found::kUnknown;
    s.in_use = false;
    if (++s.generation == 0) s.generation = 1;
    free_.push_back(static_cast<uint32_t>(index));
    if (s.session != session) return Found::kStale;
    *daemon_id = s.daemon_id;
    return Found::kLive;
  }

 private:
  struct Slot {
    uint64_t daemon_id = 0;
    uint64_t session = 0;  // generation of the session it was taken in
    uint32_t generation = 1;
    bool in_use = false;
  };
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
};

// With ClientOptions::reconnect, region ids are the client's own too (a new session numbers its
// regions from 1 again).
struct RegionHandle {
  uint32_t daemon_id = 0;
  uint64_t session = 0;
};

// The session the calling thread's last call ran in, and on which client (its Impl::serial):
// Client::last_call_generation.
std::atomic<uint64_t> g_next_client_serial{1};
thread_local uint64_t t_call_client = 0;
thread_local uint64_t t_call_generation = 0;

constexpr short kHangUp = static_cast<short>(POLLHUP | POLLRDHUP | POLLERR | POLLNVAL);

// One connection to kvtierd and what its hello gave. Built whole by OpenSession, then never
// changed but for `fd`, `pool` and `retired` (Retire, with Impl::mu held). Kept until the
// Client is destroyed, so that a pointer to it, or into its pool range, never dangles.
struct Session {
  uint64_t generation = 0;  // 0 for the first session, then one more per reconnect
  UniqueFd fd;              // closed by Retire
  int fd_number = -1;       // fd's number, for the checks that take no lock (CheckLive)
  PoolMapping pool;
  std::string tenant;
  uint64_t max_block_bytes = 0;
  uint64_t spill_max_block_bytes = 0;
  uint64_t features = 0;  // HelloLimits::features
  uint64_t session_id = 0;
  std::atomic<bool> retired{false};  // set before fd is closed
};

// OK while `s` is live: kvtierd has not hung its socket up, and it was not retired (replaced
// by a reconnect) meanwhile. No lock: `retired` is set before the fd is closed, and read after
// the poll, so a poll that hit a closed or reused fd number is never believed.
Status CheckLive(const Session& s) {
  // The reads of leased bytes come before the check (pairs with the fence in kvtierd's
  // Session::Revoke, which shuts the socket down before any leased slot may change).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  pollfd p{s.fd_number, POLLRDHUP, 0};
  const int rc = poll(&p, 1, 0);
  const int err = errno;
  const bool retired = s.retired.load(std::memory_order_seq_cst);
  if (!retired && rc == 0) return Status::Ok();
  if (!retired && rc < 0) return ErrnoStatus("poll(kvtierd socket)", err);
  // Readable but not hung up: a reply nobody waits for (only a StartOnload's); still live.
  if (!retired && (p.revents & kHangUp) == 0) return Status::Ok();
  return Status(StatusCode::kFailedPrecondition,
                "kvtierd ended this session (tenant purged, daemon draining or stopping, or an "
                "error): its leases were revoked and bytes read through them may be wrong");
}

}  // namespace

struct Client::Impl {
  ClientOptions options;  // set before the Client is shared; never changed
  // Names this client in t_call_client (an address could be reused by a later client).
  const uint64_t serial = g_next_client_serial.fetch_add(1, std::memory_order_relaxed);
  // The current session (sessions.back()): stored with mu held, loaded without it by the
  // accessors, pool() and the lease checks. Never null once connected.
  std::atomic<Session*> current{nullptr};
  std::atomic<uint64_t> reconnects{0};
  // Lease ids of earlier sessions handed out and not yet given to ReleaseRaw (reconnect only):
  // while any is held, VerifyLeases fails. Changed with mu held.
  std::atomic<uint64_t> stale_leases{0};

  Mutex mu;  // one round trip at a time; guards everything below
  // Every session so far, oldest first.
  std::vector<std::unique_ptr<Session>> sessions KVT_GUARDED_BY(mu);
  uint64_t next_request_id KVT_GUARDED_BY(mu) = 1;
  Status broken KVT_GUARDED_BY(mu);  // set once the daemon closed the current session
  std::vector<std::byte> send_buf KVT_GUARDED_BY(mu) =
      std::vector<std::byte>(wire::kMaxFrameBytes);
  std::vector<std::byte> recv_buf KVT_GUARDED_BY(mu) =
      std::vector<std::byte>(wire::kMaxFrameBytes);
  UniqueFd received_fd KVT_GUARDED_BY(mu);
  // With options.reconnect: lease and region ids handed out -> kvtierd's.
  LeaseHandles lease_handles KVT_GUARDED_BY(mu);
  uint64_t live_leases KVT_GUARDED_BY(mu) = 0;  // in lease_handles, of the current session
  std::unordered_map<uint32_t, RegionHandle> region_handles KVT_GUARDED_BY(mu);
  uint32_t next_region_handle KVT_GUARDED_BY(mu) = 1;
  // Host regions registered with a local mapping, by the caller's region id (to wait on
  // progress words).
  std::unordered_map<uint32_t, std::pair<std::byte*, uint64_t>> local_regions
      KVT_GUARDED_BY(mu);
  // The onload between StartOnload and FinishOnload.
  struct OpenTransfer {
    bool active = false;
    uint64_t request_id = 0;
    size_t items = 0;
    uint32_t layers = 0;
    const uint32_t* progress = nullptr;  // in the caller's mapping, or null
  } transfer KVT_GUARDED_BY(mu);
  // The pool is registered with cudaHostRegister (PinPoolForCuda).
  bool pinned KVT_GUARDED_BY(mu) = false;

  Session& s() KVT_REQUIRES(mu) { return *sessions.back(); }  // the current session

  wire::FrameWriter Begin(wire::Op op) KVT_REQUIRES(mu) {
    wire::FrameWriter w(send_buf);
    w.Begin(op, next_request_id);
    return w;
  }
  Status Receive(size_t* bytes) KVT_REQUIRES(mu);
  // Sends the frame in `w` (with `pass_fd` as SCM_RIGHTS if >= 0), waits for its reply and
  // checks it: a non-OK reply status is returned as is; on OK the reply has `items` items of
  // `item_bytes` (when item_bytes != 0).
  Result<wire::FrameView> RoundTrip(wire::FrameWriter& w, wire::Op op, size_t items,
                                    size_t item_bytes, bool exact_count = true, int pass_fd = -1)
      KVT_REQUIRES(mu);
  // RoundTrip's halves: Send returns the request id that Await expects.
  Result<uint64_t> Send(wire::FrameWriter& w, int pass_fd = -1) KVT_REQUIRES(mu);
  Result<wire::FrameView> Await(uint64_t id, wire::Op op, size_t items, size_t item_bytes,
                                bool exact_count = true) KVT_REQUIRES(mu);
  // Commit, abort, remove, prefetch and release: one frame per kMaxBatch items, a uint16
  // status per item. `mu` must be held. On failure, items from the failed frame on get its code.
  Status PerItemOp(wire::Op op, std::span<const Key> keys, std::span<const uint64_t> ids,
                   std::span<StatusCode> codes) KVT_REQUIRES(mu);

  // Connects, says hello and maps the pool: a session of `generation`, not yet installed.
  static Result<std::unique_ptr<Session>> OpenSession(const ClientOptions& client_options,
                                                      uint64_t generation);
  // Makes `session` the current one (mu held, or before the Client is shared).
  void Install(std::unique_ptr<Session> session) KVT_REQUIRES(mu);
  // Every call's first step, mu held: with options.reconnect and `may_reconnect`, a lost
  // session is replaced by a new one first (a failure to is the call's status). Records the
  // generation the call runs in.
  Status Enter(bool may_reconnect) KVT_REQUIRES(mu);
  // The caller's region id -> kvtierd's (0 stays 0): kNotFound for an id never handed out,
  // kFailedPrecondition for one of an earlier session. Identity without options.reconnect.
  Status DaemonRegion(uint32_t id, uint32_t* daemon_id) KVT_REQUIRES(mu);
  // The id the caller gets for kvtierd's region `daemon_id` (itself without options.reconnect).
  uint32_t HandOutRegion(uint32_t daemon_id) KVT_REQUIRES(mu);
  // DaemonRegion for a transfer's region and progress region.
  Status DaemonTransfer(uint32_t region, const TransferOptions& transfer_options,
                        uint32_t* daemon_region, TransferOptions* daemon_options)
      KVT_REQUIRES(mu) {
    *daemon_options = transfer_options;
    KVT_RETURN_IF_ERROR(DaemonRegion(region, daemon_region));
    return DaemonRegion(transfer_options.progress_region, &daemon_options->progress_region);
  }
};

Status Client::Impl::Receive(size_t* bytes) {
  const int fd = s().fd.get();
  const uint64_t spin_until = NowUs() + options.spin_us;
  for (;;) {
    const bool spinning = NowUs() < spin_until;
    if (!spinning) {
      pollfd p{fd, POLLIN, 0};
      const int rc = poll(&p, 1, options.timeout_ms);
      if (rc == 0) {
        return Status(StatusCode::kTimedOut, "no reply from kvtierd within " +
                                                 std::to_string(options.timeout_ms) + " ms");
      }
      if (rc < 0 && errno != EINTR) return ErrnoStatus("poll(kvtierd socket)", errno);
    }
    auto got = RecvFrame(fd, recv_buf, MSG_DONTWAIT);
    if (!got.ok() && !IsWouldBlock(got.status())) {
      // A daemon that refuses a session replies and closes; the kernel then reports
      // ECONNRESET once, ahead of the refusal still queued. Read past it once.
      auto queued = RecvFrame(fd, recv_buf, MSG_DONTWAIT);
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
  const int fd = s().fd.get();
  const uint64_t id = next_request_id++;
  if (Status st = SendFrame(fd, w.Finish(), pass_fd); !st.ok()) {
    // The daemon may have refused the session (e.g. max_sessions) and closed before our send;
    // its reason is still waiting in the socket.
    size_t pending = 0;
    auto got = RecvFrame(fd, recv_buf, MSG_DONTWAIT);
    if (got.ok() && !got->eof && !got->truncated) pending = got->bytes;
    auto refusal = wire::DecodeReply(std::span(recv_buf).first(pending));
    if (pending > 0 && refusal.ok() && refusal->header.status != 0) {
      broken = Status(static_cast<StatusCode>(refusal->header.status),
                      std::string(refusal->message));
    } else {
      broken = Status(StatusCode::kUnavailable, "lost the connection to kvtierd: " + st.message());
    }
    return broken;
  }
  return id;
}

Result<wire::FrameView> Client::Impl::Await(uint64_t id, wire::Op op, size_t items,
                                            size_t item_bytes, bool exact_count) {
  size_t bytes = 0;
  if (Status st = Receive(&bytes); !st.ok()) {
    broken = st;  // after a timeout the reply stream is out of step: do not reuse it
    return st;
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
    Status st(code, std::string(reply->message));
    // The daemon closes the session after these.
    if (code == StatusCode::kProtocolError || code == StatusCode::kVersionMismatch ||
        (op == wire::Op::kHello)) {
      broken = Status(StatusCode::kUnavailable, "session closed by kvtierd: " + st.ToString());
    }
    return st;
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

Result<std::unique_ptr<Session>> Client::Impl::OpenSession(const ClientOptions& client_options,
                                                           uint64_t generation) {
  // Ask for the limits; a kvtierd older than the flag refuses it (protocol_error, naming the
  // flags) and closes the session: say hello again without it.
  for (const uint32_t flags : {wire::kHelloWantsLimits, 0u}) {
    Impl link;  // this connection's own request ids, buffers and state until it is installed
    MutexLock link_lock(link.mu);  // no other thread sees it: only for the analysis
    link.options = client_options;
    auto session = std::make_unique<Session>();
    session->generation = generation;
    KVT_ASSIGN_OR_RETURN(session->fd, ConnectSeqpacket(client_options.socket_path));
    session->fd_number = session->fd.get();
    link.sessions.push_back(std::move(session));
    wire::FrameWriter w = link.Begin(wire::Op::kHello);
    wire::HelloRequest hello{};
    hello.flags = flags;
    hello.namespace_bytes = static_cast<uint32_t>(client_options.name_space.size());
    w.Append(&hello, sizeof(hello));
    w.Append(client_options.name_space.data(), client_options.name_space.size());
    auto reply = link.RoundTrip(w, wire::Op::kHello, 0, 0);
    if (!reply.ok()) {
      if (flags != 0 && reply.status().code() == StatusCode::kProtocolError &&
          reply.status().message().find("flags") != std::string::npos) {
        continue;
      }
      return reply.status();
    }
    wire::HelloReply out{};
    if (reply->body.size() < sizeof(out) || !link.received_fd.valid()) {
      return Status(StatusCode::kProtocolError, "kvtierd's hello reply lacks the pool");
    }
    Session& s = link.s();
    std::memcpy(&out, reply->body.data(), sizeof(out));
    // Later daemons may append more: read what this client knows of.
    if (reply->body.size() >= sizeof(out) + sizeof(wire::HelloLimits)) {
      wire::HelloLimits limits{};
      std::memcpy(&limits, reply->body.data() + sizeof(out), sizeof(limits));
      s.spill_max_block_bytes = limits.spill_max_block_bytes;
      s.features = limits.features;
    }
    KVT_ASSIGN_OR_RETURN(s.pool, PoolMapping::Map(std::move(link.received_fd), out.pool_bytes));
    s.tenant.assign(out.tenant, strnlen(out.tenant, sizeof(out.tenant)));
    s.max_block_bytes = out.max_block_bytes;
    s.session_id = out.session_id;
    return std::move(link.sessions.back());
  }
  return Status(StatusCode::kProtocolError, "kvtierd refused every hello");
}

void Client::Impl::Install(std::unique_ptr<Session> session) {
  if (!sessions.empty()) {
    // The lost session goes: whatever it held is void (stale lease ids, region ids), and its
    // pool range becomes private zero pages, so that neither a stale read nor a stale write
    // reaches the pool that a restarted kvtierd may be serving again. `retired` first: the
    // lock-free checks must never believe a poll of the closed (or reused) fd number.
    Session& old = s();
    old.retired.store(true, std::memory_order_seq_cst);
    if (pinned) client_cuda::Unpin(old.pool.data());
    old.pool.Retire();
    old.fd.reset();
    stale_leases.fetch_add(live_leases, std::memory_order_relaxed);
    live_leases = 0;
    local_regions.clear();
    transfer = OpenTransfer{};
    broken = Status::Ok();
    received_fd.reset();
    reconnects.fetch_add(1, std::memory_order_relaxed);
  }
  sessions.push_back(std::move(session));
  current.store(sessions.back().get(), std::memory_order_release);
  // The caller asked for a pinned pool once: the new mapping is pinned too (if that fails,
  // copies still work, at pageable speed).
  if (pinned) pinned = client_cuda::Pin(s().pool.data(), s().pool.size()).ok();
}

Status Client::Impl::Enter(bool may_reconnect) {
  Status st = Status::Ok();
  // An open onload is this session's: FinishOnload ends it (or says the session is lost) first.
  if (may_reconnect && options.reconnect && !transfer.active) {
    if (broken.ok()) {
      // Noticed between calls: kvtierd hung up while this client was idle.
      pollfd p{s().fd.get(), POLLRDHUP, 0};
      if (poll(&p, 1, 0) > 0 && (p.revents & kHangUp) != 0) {
        broken = Status(StatusCode::kUnavailable,
                        "lost the connection to kvtierd (it stopped, restarted or ended this "
                        "session)");
      }
    }
    // Any broken session, not only a lost one: after a timeout or a protocol fault this
    // session is unusable anyway (a hung kvtierd the watchdog then restarted, say), and a new
    // one voids everything the old one held just the same.
    if (!broken.ok()) {
      auto fresh = OpenSession(options, s().generation + 1);
      if (fresh.ok()) {
        Install(std::move(*fresh));
      } else {
        st = Status(fresh.status().code(),
                    "lost the connection to kvtierd, and reconnecting failed (the next call "
                    "tries again): " + fresh.status().message());
      }
    }
  }
  t_call_client = serial;
  t_call_generation = s().generation;
  return st;
}

Status Client::Impl::DaemonRegion(uint32_t id, uint32_t* daemon_id) {
  *daemon_id = id;
  if (!options.reconnect || id == 0) return Status::Ok();
  auto it = region_handles.find(id);
  if (it == region_handles.end()) {
    return Status(StatusCode::kNotFound, "region " + std::to_string(id) + " is not registered");
  }
  if (it->second.session != s().generation) {
    return Status(StatusCode::kFailedPrecondition,
                  "region " + std::to_string(id) +
                      " was registered in an earlier session (kvtierd went away and the client "
                      "reconnected since): register it again");
  }
  *daemon_id = it->second.daemon_id;
  return Status::Ok();
}

uint32_t Client::Impl::HandOutRegion(uint32_t daemon_id) {
  if (!options.reconnect) return daemon_id;
  uint32_t id = next_region_handle;
  while (id == 0 || region_handles.contains(id)) ++id;
  next_region_handle = id + 1;
  region_handles[id] = RegionHandle{daemon_id, s().generation};
  return id;
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() {
  if (impl_ != nullptr && impl_->pinned) client_cuda::Unpin(impl_->s().pool.data());
}

Result<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.name_space.empty() || options.name_space.size() > wire::kMaxNamespaceBytes) {
    return Status(StatusCode::kInvalidArgument, "name_space must be 1..128 bytes");
  }
  KVT_ASSIGN_OR_RETURN(auto session, Impl::OpenSession(options, 0));
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  {
    MutexLock lock(impl->mu);  // not shared yet: only for the analysis
    impl->Install(std::move(session));
  }
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

std::span<std::byte> Client::pool() const { return impl_->current.load()->pool.bytes(); }
std::span<std::byte> Client::pool(uint64_t generation) const {
  const Session* s = impl_->current.load();
  if (s->generation != generation) return {};
  return s->pool.bytes();
}
const std::string& Client::tenant() const { return impl_->current.load()->tenant; }
uint64_t Client::max_block_bytes() const { return impl_->current.load()->max_block_bytes; }
uint64_t Client::spill_max_block_bytes() const {
  return impl_->current.load()->spill_max_block_bytes;
}
uint64_t Client::session_id() const { return impl_->current.load()->session_id; }
const ClientOptions& Client::options() const { return impl_->options; }
uint64_t Client::reconnects() const { return impl_->reconnects.load(); }
uint64_t Client::last_call_generation() const {
  // The calling thread's own record, if its last call was on this client; else the current.
  if (t_call_client == impl_->serial) return t_call_generation;
  return impl_->current.load()->generation;
}

Status Client::VerifyLeases() const {
  KVT_RETURN_IF_ERROR(CheckLive(*impl_->current.load()));
  if (const uint64_t stale = impl_->stale_leases.load(); stale > 0) {
    return Status(StatusCode::kFailedPrecondition,
                  std::to_string(stale) +
                      " lease(s) of an earlier session (before a reconnect) are still held: their "
                      "bytes are not the block's. Release them (ReleaseRaw; nothing is sent)");
  }
  return Status::Ok();
}

Status Client::VerifySession(uint64_t generation) const {
  const Session* s = impl_->current.load();
  if (s->generation != generation) {
    return Status(StatusCode::kFailedPrecondition,
                  "the leases are of session " + std::to_string(generation) +
                      ", which kvtierd ended; the client has reconnected since (session " +
                      std::to_string(s->generation) + "): bytes read through them may be wrong");
  }
  return CheckLive(*s);
}

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
    return CheckKeys(keys);
  }();
  MutexLock lock(impl_->mu);
  if (s.ok()) s = impl_->Enter(/*may_reconnect=*/true);
  // Against the limit of the session the reserve runs in (a reconnect may have changed it).
  if (s.ok()) s = CheckSizes(sizes, impl_->s().max_block_bytes);
  if (!s.ok()) {
    FailFrom(codes, 0, s);
    return s;
  }
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
  impl_->mu.AssertHeld();  // by ReserveRaw
  const uint64_t pool_bytes = impl_->s().pool.size();
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
                        std::span<StatusCode> codes, const uint64_t* generation) {
  const auto op = static_cast<wire::Op>(raw_op);
  if (!codes.empty() && codes.size() < keys.size()) return SpanSizeError("codes");
  std::vector<StatusCode> scratch(codes.empty() ? keys.size() : 0);
  std::span<StatusCode> out = codes.empty() ? std::span<StatusCode>(scratch) : codes.first(keys.size());
  Status s = CheckKeys(keys);
  MutexLock lock(impl_->mu);
  // Commit and abort act on this session's reservations: a new session would have none.
  if (s.ok()) s = impl_->Enter(op != wire::Op::kCommit && op != wire::Op::kAbort);
  if (s.ok() && generation != nullptr && *generation != impl_->s().generation) {
    s = Status(StatusCode::kFailedPrecondition,
               "the keys were reserved in session " + std::to_string(*generation) +
                   ", which kvtierd ended (the client reconnected since): the reservations "
                   "went with it, and nothing was sent");
  }
  if (!s.ok()) {
    FailFrom(out, 0, s);
    return s;
  }
  return impl_->PerItemOp(op, keys, {}, out);
}

Status Client::CommitRaw(std::span<const Key> keys, std::span<StatusCode> codes) {
  return PerKeyOp(static_cast<uint16_t>(wire::Op::kCommit), keys, codes);
}
Status Client::AbortRaw(std::span<const Key> keys, std::span<StatusCode> codes) {
  return PerKeyOp(static_cast<uint16_t>(wire::Op::kAbort), keys, codes);
}
Status Client::CommitRawInSession(uint64_t generation, std::span<const Key> keys,
                                  std::span<StatusCode> codes) {
  return PerKeyOp(static_cast<uint16_t>(wire::Op::kCommit), keys, codes, &generation);
}
Status Client::AbortRawInSession(uint64_t generation, std::span<const Key> keys,
                                 std::span<StatusCode> codes) {
  return PerKeyOp(static_cast<uint16_t>(wire::Op::kAbort), keys, codes, &generation);
}
Status Client::Remove(std::span<const Key> keys, std::span<StatusCode> codes) {
  return PerKeyOp(static_cast<uint16_t>(wire::Op::kRemove), keys, codes);
}

Status Client::Prefetch(std::span<const Key> keys, std::span<StatusCode> codes) {
  return PerKeyOp(static_cast<uint16_t>(wire::Op::kPrefetch), keys, codes);
}

bool Client::has_hints() const {
  return (impl_->current.load()->features & wire::kFeatureHints) != 0;
}

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
    MutexLock lock(impl_->mu);
    s = impl_->Enter(/*may_reconnect=*/true);
    size_t done = 0;
    if (s.ok()) s = AcquireFrames(keys, out, &done);
    if (!s.ok()) {
      // A failed acquire holds nothing: give back what earlier frames leased.
      std::vector<uint64_t> ids;
      for (size_t i = 0; i < done; ++i) {
        if (out[i].code == StatusCode::kOk) ids.push_back(out[i].lease_id);
      }
      std::vector<StatusCode> ignored(ids.size());
      if (!ids.empty()) (void)impl_->PerItemOp(wire::Op::kRelease, {}, ids, ignored);
    } else if (impl_->options.reconnect) {
      // The caller gets the client's own ids, tagged with this session (LeaseHandles).
      const uint64_t session = impl_->s().generation;
      for (LeaseInfo& info : out) {
        if (info.code != StatusCode::kOk) continue;
        info.lease_id = impl_->lease_handles.Add(info.lease_id, session);
        ++impl_->live_leases;
      }
    }
  }
  if (!s.ok()) {
    for (LeaseInfo& info : out) info = LeaseInfo{.code = s.code()};
  }
  return s;
}

Status Client::AcquireFrames(std::span<const Key> keys, std::span<LeaseInfo> out, size_t* done) {
  impl_->mu.AssertHeld();  // by AcquireRaw
  const uint64_t pool_bytes = impl_->s().pool.size();
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
  MutexLock lock(impl_->mu);
  // The leases are this session's (or an earlier one's): a new session would have none.
  Status s = impl_->Enter(/*may_reconnect=*/false);
  if (s.ok() && impl_->transfer.active) {
    s = Status(StatusCode::kFailedPrecondition,
               "an onload started with StartOnload is still open: call FinishOnload first");
  }
  if (!s.ok()) {
    FailFrom(out, 0, s);
    return s;
  }
  if (!impl_->options.reconnect) return impl_->PerItemOp(wire::Op::kRelease, {}, lease_ids, out);
  // The caller's ids -> kvtierd's. Those of an earlier session are void (kvtierd gave them
  // back when it ended that session) and never sent: a new kvtierd may have handed out the same
  // daemon id in this session. Each slot is freed now; if the release then fails, the session
  // is lost, and the leases with it.
  const uint64_t session = impl_->s().generation;
  std::vector<uint64_t> daemon_ids;
  std::vector<size_t> sent;  // index in lease_ids of each daemon_ids entry
  for (size_t i = 0; i < lease_ids.size(); ++i) {
    uint64_t daemon_id = 0;
    switch (impl_->lease_handles.Take(lease_ids[i], session, &daemon_id)) {
      case LeaseHandles::Found::kLive:
        --impl_->live_leases;
        daemon_ids.push_back(daemon_id);
        sent.push_back(i);
        break;
      case LeaseHandles::Found::kStale:
        impl_->stale_leases.fetch_sub(1, std::memory_order_relaxed);
        out[i] = StatusCode::kFailedPrecondition;
        break;
      case LeaseHandles::Found::kUnknown:
        out[i] = StatusCode::kNotFound;  // as kvtierd says of an id that is no live lease
        break;
    }
  }
  if (daemon_ids.empty()) return Status::Ok();
  std::vector<StatusCode> sent_codes(daemon_ids.size());
  s = impl_->PerItemOp(wire::Op::kRelease, {}, daemon_ids, sent_codes);
  for (size_t j = 0; j < sent.size(); ++j) out[sent[j]] = sent_codes[j];
  return s;
}

Result<size_t> Client::MatchPrefix(std::span<const Key> keys, std::span<Tier> tiers,
                                   PrefixEstimate* estimate) {
  if (!tiers.empty() && tiers.size() < keys.size()) return SpanSizeError("tiers");
  KVT_RETURN_IF_ERROR(CheckKeys(keys));
  MutexLock lock(impl_->mu);
  if (estimate != nullptr) *estimate = PrefixEstimate{};
  KVT_RETURN_IF_ERROR(impl_->Enter(/*may_reconnect=*/true));
  const bool estimating =
      estimate != nullptr && (impl_->s().features & wire::kFeatureMatchEstimate) != 0;
  if (estimate != nullptr) *estimate = PrefixEstimate{.valid = estimating};
  const wire::Op op = estimating ? wire::Op::kMatchPrefixEstimate : wire::Op::kMatchPrefix;
  const size_t head = estimating ? sizeof(wire::MatchEstimate) : 0;
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
  MutexLock lock(impl_->mu);
  KVT_RETURN_IF_ERROR(impl_->Enter(/*may_reconnect=*/true));
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
  r.generation_ = last_call_generation();
  return r;
}

Result<Leases> Client::Acquire(std::span<const Key> keys) {
  Leases l(this);
  l.infos_.resize(keys.size());
  if (Status s = AcquireRaw(keys, l.infos_); !s.ok()) return s;
  l.generation_ = last_call_generation();
  return l;
}

Reservations::Reservations(Reservations&& other) noexcept
    : client_(other.client_),
      keys_(std::move(other.keys_)),
      sizes_(std::move(other.sizes_)),
      offsets_(std::move(other.offsets_)),
      codes_(std::move(other.codes_)),
      refusal_(std::move(other.refusal_)),
      generation_(other.generation_),
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
    generation_ = other.generation_;
    done_ = std::exchange(other.done_, true);
  }
  return *this;
}

Reservations::~Reservations() {
  if (!done_) (void)Abort();
}

std::span<std::byte> Reservations::data(size_t i) const {
  if (codes_[i] != StatusCode::kOk || done_) return {};
  const std::span<std::byte> pool = client_->pool(generation_);
  if (pool.empty()) return {};  // reserved in a session that has been replaced since
  return pool.subspan(offsets_[i], sizes_[i]);
}

std::vector<Key> Reservations::ReservedKeys() const {
  std::vector<Key> keys;
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (codes_[i] == StatusCode::kOk) keys.push_back(keys_[i]);
  }
  return keys;
}

Status Reservations::Commit() { return End(/*commit=*/true); }
Status Reservations::Abort() { return End(/*commit=*/false); }

Status Reservations::End(bool commit) {
  if (done_) return Status(StatusCode::kFailedPrecondition, "reservations already ended");
  done_ = true;
  const std::vector<Key> keys = ReservedKeys();
  if (keys.empty()) return Status::Ok();
  std::vector<StatusCode> codes(keys.size());
  // Only in the session that reserved them: after a reconnect the same keys could name
  // reservations made in the new one.
  KVT_RETURN_IF_ERROR(commit ? client_->CommitRawInSession(generation_, keys, codes)
                             : client_->AbortRawInSession(generation_, keys, codes));
  return Summarize(codes, commit ? "committed" : "aborted");
}

Leases::Leases(Leases&& other) noexcept
    : client_(other.client_),
      infos_(std::move(other.infos_)),
      generation_(other.generation_),
      done_(std::exchange(other.done_, true)) {}

Leases& Leases::operator=(Leases&& other) noexcept {
  if (this != &other) {
    if (!done_) (void)Release();
    client_ = other.client_;
    infos_ = std::move(other.infos_);
    generation_ = other.generation_;
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
  const std::span<std::byte> pool = client_->pool(generation_);
  if (pool.empty()) return {};  // taken in a session that has been replaced since
  return pool.subspan(info.offset, info.size);
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
  if (!ids.empty() && std::all_of(codes.begin(), codes.end(), [](StatusCode c) {
        return c == StatusCode::kFailedPrecondition;
      })) {
    return Status(StatusCode::kFailedPrecondition,
                  "the leases were of session " + std::to_string(generation_) +
                      ", which kvtierd ended (the client reconnected since): kvtierd gave them "
                      "back then, and nothing was sent now");
  }
  return Summarize(codes, "released");
}

Status Leases::Verify() const {
  if (done_) return Status(StatusCode::kFailedPrecondition, "the leases were released");
  return client_->VerifySession(generation_);
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
  MutexLock lock(impl_->mu);
  KVT_RETURN_IF_ERROR(impl_->Enter(/*may_reconnect=*/true));
  wire::FrameWriter w = impl_->Begin(wire::Op::kRegisterRegion);
  w.Append(&spec, sizeof(spec));
  KVT_ASSIGN_OR_RETURN(auto reply, impl_->RoundTrip(w, wire::Op::kRegisterRegion, 0, 0,
                                                    /*exact_count=*/true, memfd));
  wire::RegionReply out{};
  if (reply.body.size() != sizeof(out)) {
    return Status(StatusCode::kProtocolError, "kvtierd's register_region reply has the wrong size");
  }
  std::memcpy(&out, reply.body.data(), sizeof(out));
  const uint32_t id = impl_->HandOutRegion(out.region_id);
  if (local != nullptr) impl_->local_regions[id] = {local, bytes};
  return id;
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
  MutexLock lock(impl_->mu);
  KVT_RETURN_IF_ERROR(impl_->Enter(/*may_reconnect=*/true));
  wire::FrameWriter w = impl_->Begin(wire::Op::kRegisterRegion);
  w.Append(&spec, sizeof(spec));
  w.Append(event_handles.data(), event_handles.size());
  KVT_ASSIGN_OR_RETURN(auto reply, impl_->RoundTrip(w, wire::Op::kRegisterRegion, 0, 0));
  wire::RegionReply out{};
  if (reply.body.size() != sizeof(out)) {
    return Status(StatusCode::kProtocolError, "kvtierd's register_region reply has the wrong size");
  }
  std::memcpy(&out, reply.body.data(), sizeof(out));
  return impl_->HandOutRegion(out.region_id);
}

Status Client::DeregisterRegion(uint32_t region) {
  MutexLock lock(impl_->mu);
  KVT_RETURN_IF_ERROR(impl_->Enter(/*may_reconnect=*/false));
  uint32_t daemon_id = 0;
  if (Status s = impl_->DaemonRegion(region, &daemon_id); !s.ok()) {
    // One of an earlier session went with it: forget it (the call still says so).
    if (s.code() == StatusCode::kFailedPrecondition) impl_->region_handles.erase(region);
    return s;
  }
  wire::FrameWriter w = impl_->Begin(wire::Op::kDeregisterRegion);
  const wire::RegionId id{daemon_id, 0};
  w.Append(&id, sizeof(id));
  KVT_ASSIGN_OR_RETURN(auto reply, impl_->RoundTrip(w, wire::Op::kDeregisterRegion, 0, 0));
  (void)reply;
  impl_->local_regions.erase(region);
  impl_->region_handles.erase(region);
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
    return TransferChecks(keys, offsets, options, /*single_frame=*/false);
  }();
  MutexLock lock(impl_->mu);
  if (s.ok()) s = impl_->Enter(/*may_reconnect=*/true);
  if (s.ok()) s = CheckSizes(sizes, impl_->s().max_block_bytes);
  uint32_t daemon_region = 0;
  TransferOptions daemon_options;
  if (s.ok()) s = impl_->DaemonTransfer(region, options, &daemon_region, &daemon_options);
  if (!s.ok()) {
    FailFrom(out, 0, s);
    return s;
  }
  for (size_t base = 0; base < keys.size() || base == 0; base += kMaxBatch) {
    const size_t n = std::min(kMaxBatch, keys.size() - base);
    wire::FrameWriter w = impl_->Begin(wire::Op::kOffload);
    AppendTransferSpec(w, daemon_region, daemon_options);
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
  impl_->mu.AssertHeld();  // by Onload and FinishOnload
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
  Status checked = TransferChecks(keys, offsets, options, /*single_frame=*/false);
  MutexLock lock(impl_->mu);
  if (checked.ok()) checked = impl_->Enter(/*may_reconnect=*/true);
  uint32_t daemon_region = 0;
  TransferOptions daemon_options;
  if (checked.ok()) {
    checked = impl_->DaemonTransfer(region, options, &daemon_region, &daemon_options);
  }
  if (!checked.ok()) {
    for (size_t i = 0; i < keys.size(); ++i) out[i] = OnloadInfo{.code = checked.code()};
    return checked;
  }
  for (size_t base = 0; base < keys.size() || base == 0; base += kMaxBatch) {
    const size_t n = std::min(kMaxBatch, keys.size() - base);
    wire::FrameWriter w = impl_->Begin(wire::Op::kOnload);
    AppendOnload(w, daemon_region, daemon_options, keys.subspan(base, n),
                 offsets.subspan(base, n));
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
  MutexLock lock(impl_->mu);
  KVT_RETURN_IF_ERROR(impl_->Enter(/*may_reconnect=*/true));
  uint32_t daemon_region = 0;
  TransferOptions daemon_options;
  KVT_RETURN_IF_ERROR(impl_->DaemonTransfer(region, options, &daemon_region, &daemon_options));
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
  AppendOnload(w, daemon_region, daemon_options, keys, offsets);
  KVT_ASSIGN_OR_RETURN(const uint64_t id, impl_->Send(w));
  impl_->transfer = Impl::OpenTransfer{true, id, keys.size(), options.layers, progress};
  return Status::Ok();
}

Status Client::WaitLayer(uint32_t layer) {
  MutexLock lock(impl_->mu);
  (void)impl_->Enter(/*may_reconnect=*/false);
  const Impl::OpenTransfer t = impl_->transfer;  // a copy: the analysis cannot follow a reference
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
    pollfd p{impl_->s().fd.get(), POLLIN, 0};
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
  MutexLock lock(impl_->mu);
  (void)impl_->Enter(/*may_reconnect=*/false);
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
  MutexLock lock(impl_->mu);
  (void)impl_->Enter(/*may_reconnect=*/false);
  if (impl_->pinned) return Status::Ok();
  KVT_RETURN_IF_ERROR(client_cuda::Pin(impl_->s().pool.data(), impl_->s().pool.size()));
  impl_->pinned = true;
  return Status::Ok();
}

}  // namespace kvtier
