#include "daemon/server/server.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>

#include <spdlog/spdlog.h>

#include "daemon/sd_notify.h"
#include "daemon/tier/spill_orders.h"
#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"
#include "ipc/socket/seqpacket.h"
#include "ipc/wire/frame_codec.h"

namespace kvtier {
namespace {

// epoll user data for the two non-session fds; sessions use their fd (>= 0).
constexpr uint64_t kListenTag = UINT64_MAX;
constexpr uint64_t kSignalTag = UINT64_MAX - 1;
constexpr uint64_t kAdminTag = UINT64_MAX - 2;
constexpr uint64_t kCopyTag = UINT64_MAX - 3;
constexpr uint64_t kWorkerTagBase = UINT64_MAX - 1024;  // + worker index (< 64)
constexpr int kMaxFramesPerWake = 16;  // then let other sessions in
constexpr int64_t kMaxKeysPerWake = 8192;

}  // namespace

Server::Server(Config& config, TenantRegistry* tenants, std::vector<SpillWorker*> workers)
    : start_us_(NowUs()),
      config_(config),
      tenants_(tenants),
      tier_(tenants, std::move(workers)),
      handler_(tenants, HandlerLimits{config.max_block_bytes, config.spill.max_block_bytes},
               &tier_.estimator()),
      recv_buffer_(wire::kMaxFrameBytes),
      send_buffer_(wire::kMaxFrameBytes) {
  watchdog_us_ = SdWatchdogIntervalUs();
  if (watchdog_us_ > 0) {
    spdlog::info("systemd watchdog: a ping every {} ms from the event loop", watchdog_us_ / 1000);
  }
}

Server::~Server() {
  // Copies still queued run to their end first: they use the sessions' blocks and regions.
  copier_.reset();
  commands_.reset();  // answers purges and a drain still under way: "kvtierd is stopping"
  for (auto& [fd, session] : sessions_) session->Close();
  sessions_.clear();
  detached_.clear();
  // Freed slots still waiting to be zeroed are zeroed now (DramPool "Scrubbing").
  for (auto& tenant : tenants_->tenants()) {
    while (tenant->pool->scrub_pending_bytes() > 0) {
      tenant->pool->BeginScrubRound();
      tenant->pool->Scrub();
    }
  }
  // Closing sessions can free removed blocks: their SSD records go to the workers, which
  // release them before they stop.
  tier_.PostOrders(/*demote=*/false);
  if (listen_fd_.valid()) unlink(config_.socket_path.c_str());
}

Result<std::unique_ptr<Server>> Server::Open(Config& config, TenantRegistry* tenants,
                                             std::vector<SpillWorker*> workers,
                                             AdminInbox* admin, AuditLog* audit,
                                             SpillKeys* keys) {
  KVT_CHECK(workers.size() < 1024);
  std::unique_ptr<Server> server(new Server(config, tenants, std::move(workers)));
  server->admin_ = admin;
  server->audit_ = audit;
  AdminHost* host = server.get();
  server->commands_ =
      std::make_unique<AdminCommands>(config, tenants, &server->tier_, host, audit, keys);
  server->gpu_ = ProbeGpus();
  if (!tenants->tenants().empty()) {
    spdlog::info("each tenant may hold {} regions (its share of vm.max_map_count) and its "
                 "max_sessions connections",
                 tenants->tenants().front()->max_regions);
  }
  server->copier_ = std::make_unique<CopyEngine>();
  KVT_RETURN_IF_ERROR(server->copier_->Start());
  if (server->gpu_.devices > 0) {
    // Pools are pinned for DMA in the background: kvtierd serves meanwhile (pinner.h).
    std::vector<Pinner::Range> pools;
    for (auto& tenant : tenants->tenants()) {
      pools.push_back({tenant->memory.data(), tenant->memory.size()});
    }
    server->pinner_ = std::make_unique<Pinner>();
    server->pinner_->Start(std::move(pools));
  }
  server->epoll_fd_.reset(epoll_create1(EPOLL_CLOEXEC));
  if (!server->epoll_fd_.valid()) return ErrnoStatus("epoll_create1", errno);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  server->signal_fd_.reset(signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!server->signal_fd_.valid()) return ErrnoStatus("signalfd", errno);
  KVT_ASSIGN_OR_RETURN(server->listen_fd_,
                       ListenSeqpacket(config.socket_path.string(), config.socket_mode, 256));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenTag;
  if (epoll_ctl(server->epoll_fd_.get(), EPOLL_CTL_ADD, server->listen_fd_.get(), &ev) != 0) {
    return ErrnoStatus("epoll_ctl(listen)", errno);
  }
  ev.data.u64 = kSignalTag;
  if (epoll_ctl(server->epoll_fd_.get(), EPOLL_CTL_ADD, server->signal_fd_.get(), &ev) != 0) {
    return ErrnoStatus("epoll_ctl(signalfd)", errno);
  }
  ev.data.u64 = kCopyTag;
  if (epoll_ctl(server->epoll_fd_.get(), EPOLL_CTL_ADD, server->copier_->event_fd(), &ev) != 0) {
    return ErrnoStatus("epoll_ctl(copy engine)", errno);
  }
  if (admin != nullptr) {
    ev.data.u64 = kAdminTag;
    if (epoll_ctl(server->epoll_fd_.get(), EPOLL_CTL_ADD, admin->event_fd(), &ev) != 0) {
      return ErrnoStatus("epoll_ctl(admin inbox)", errno);
    }
  }
  for (size_t i = 0; i < server->tier_.worker_count(); ++i) {
    ev.data.u64 = kWorkerTagBase + i;
    if (epoll_ctl(server->epoll_fd_.get(), EPOLL_CTL_ADD, server->tier_.event_fd(i), &ev) != 0) {
      return ErrnoStatus("epoll_ctl(spill worker)", errno);
    }
  }
  return server;
}

Status Server::Run() {
  epoll_event events[64];
  uint64_t last_activity_us = NowUs();
  bool background_work = false;  // freed slots to zero or a purge's wipe: no sleeping
  for (;;) {
    // Also spin while a copy posted moments ago runs (poll_spin_us > 0 only): its result is
    // due within a millisecond or two, and a sleeping loop would add a wake-up to each copy's
    // round trip (measured: ~15% of a 64 x 64 KiB offload on these VMs).
    const uint64_t now = NowUs();
    const bool spinning =
        now - last_activity_us < config_.poll_spin_us ||
        (config_.poll_spin_us > 0 && !copies_.empty() && now - last_copy_post_us_ < kCopySpinUs);
    // Wake up at least each second: silent sessions are timed out and expired blocks reaped
    // (and more often where the watchdog wants its ping sooner).
    const int idle_ms = watchdog_us_ > 0 ? static_cast<int>(std::clamp<uint64_t>(
                                               watchdog_us_ / 1000, 1, 1000))
                                         : 1000;
    const int n = epoll_wait(epoll_fd_.get(), events, 64, spinning || background_work ? 0 : idle_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("epoll_wait", errno);
    }
    for (auto& tenant : tenants_->tenants()) tenant->pool->BeginScrubRound();
    if (awaiting_hello_ > 0) CloseSilentSessions();
    Tick();
    if (n == 0 && !commands_->busy() && !background_work) {
      // Spinning: give the CPU away at once if a client waits for it (on a shared vCPU the
      // client may be the very peer whose next request we are spinning for).
      sched_yield();
      continue;
    }
    for (int i = 0; i < n; ++i) {
      const uint64_t tag = events[i].data.u64;
      if (tag == kListenTag) {
        Accept();
      } else if (tag == kSignalTag) {
        signalfd_siginfo info{};
        while (read(signal_fd_.get(), &info, sizeof(info)) == sizeof(info)) {
          if (info.ssi_signo == SIGHUP) {
            (void)commands_->Reload("SIGHUP");  // logs and audits what it did or why it did nothing
            continue;
          }
          spdlog::info("signal {}: stopping; closing {} session(s)", info.ssi_signo,
                       sessions_.size());
          return Status::Ok();
        }
      } else if (tag == kAdminTag) {
        OnAdminCommands();
      } else if (tag == kCopyTag) {
        OnCopyResults();
      } else if (tag >= kWorkerTagBase) {
        OnSpillResults(tag - kWorkerTagBase);
      } else {
        auto it = sessions_.find(static_cast<int>(tag));
        if (it != sessions_.end()) OnSessionEvent(*it->second, events[i].events);
      }
    }
    background_work = ScrubPools();
    if (commands_->busy() && commands_->Advance()) return Status::Ok();  // drained
    background_work |= commands_->wiping();
    tier_.PostOrders();
    ForgetClosedSessions();
    // A round woken by the timeout (a purge or drain waiting) is no activity to spin after.
    if (n > 0) last_activity_us = NowUs();
  }
}

bool Server::ScrubPools() {
  bool more = false;
  for (auto& tenant : tenants_->tenants()) {
    DramPool& pool = *tenant->pool;
    if (pool.scrub_pending_bytes() > 0) pool.Scrub();
    // Also after zeroing done within a request this round: it may have emptied the queue a
    // parked request waits for.
    if (pool.scrubbed_this_round() && !parked_.empty()) ContinueParked(tenant.get());
    more |= pool.scrub_pending_bytes() > 0;
  }
  return more;
}

void Server::Tick() {
  const uint64_t now_us = NowUs();
  // The watchdog's ping comes from this loop, so a loop stuck anywhere stops it.
  if (watchdog_us_ > 0 && now_us - last_watchdog_us_ >= watchdog_us_) {
    SdNotify("WATCHDOG=1");
    last_watchdog_us_ = now_us;
  }
  // Block expiry runs on whole seconds of the daemon's uptime (1 at start; 0 means "never").
  const auto now_s = static_cast<uint32_t>((now_us - start_us_) / 1000000u + 1);
  if (now_s == clock_s_) return;
  clock_s_ = now_s;
  tier_.Tick(now_s, kReapEntriesPerSecond);
  if (std::string line = StatusLine(); line != status_line_) {
    SdNotify("STATUS=" + line);
    status_line_ = std::move(line);
  }
}

std::string Server::StatusLine() const {
  std::string line = commands_ != nullptr && commands_->draining() ? "draining: " : "serving: ";
  line += std::to_string(sessions_.size()) + (sessions_.size() == 1 ? " session" : " sessions");
  if (pinner_ != nullptr) {
    const Pinner::Progress pin = pinner_->progress();
    if (!pin.done) {
      line += ", pinning pools for CUDA (" +
              std::to_string(pin.total_bytes == 0 ? 0 : pin.pinned_bytes * 100 / pin.total_bytes) +
              "%)";
    } else if (!pin.error.empty()) {
      line += ", pool pinning failed: " + pin.error;
    }
  }
  if (commands_ != nullptr && commands_->purging()) line += ", purging";
  return line;
}

void Server::Refuse(int fd, const PeerCredentials& peer, const Status& why) {
  // Sent as the reply to the hello the client is about to send, so it can show the reason.
  std::byte frame[sizeof(wire::FrameHeader) + wire::kMaxMessageBytes];
  wire::FrameWriter w(frame);
  w.Begin(wire::Op::kHello, 0);
  w.SetStatus(why);
  (void)SendFrame(fd, w.Finish());
  if (AllowNoisyWarning()) {
    spdlog::warn("refused pid {} uid {} gid {}: {}", peer.pid, peer.uid, peer.gid, why.message());
  }
}

void Server::SetAccepting(bool on) {
  if (accepting_ == on) return;
  accepting_ = on;
  epoll_event ev{};
  ev.events = on ? uint32_t{EPOLLIN} : uint32_t{0};
  ev.data.u64 = kListenTag;
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, listen_fd_.get(), &ev);
}

void Server::Accept() {
  // At most a backlog's worth per wake, so a connect flood cannot keep the loop from serving.
  for (int accepted = 0; accepted < 256; ++accepted) {
    UniqueFd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) {
      const int err = errno;
      if (err == EMFILE || err == ENFILE) {
        // The listener stays readable while we cannot accept: stop watching it until a
        // session closes, rather than spin.
        SetAccepting(false);
        spdlog::warn("out of file descriptors ({} sessions); not accepting until one closes",
                     sessions_.size());
      } else if (err != EAGAIN && err != EINTR && AllowNoisyWarning()) {
        spdlog::warn("accept on {}: {}", config_.socket_path.string(),
                     ErrnoStatus("accept4", err).message());
      }
      return;
    }
    auto peer = GetPeerCredentials(fd.get());
    if (!peer.ok()) {
      if (AllowNoisyWarning()) spdlog::warn("dropping a connection: {}", peer.status().ToString());
      continue;
    }
    // A peer that maps to no tenant is refused now, so it never holds a session slot.
    auto tenant = tenants_->Resolve(*peer);
    if (!tenant.ok()) {
      Refuse(fd.get(), *peer, tenant.status());
      continue;
    }
    if (sessions_.size() + detached_.size() >= config_.max_sessions) {
      Refuse(fd.get(), *peer,
             Status(StatusCode::kResourceExhausted,
                    "kvtierd already serves max_sessions = " +
                        std::to_string(config_.max_sessions) + " sessions"));
      continue;
    }
    // Each tenant has its share of the slots, so one cannot lock the others out.
    if (const TenantConfig& tc = (*tenant)->config; (*tenant)->connections >= tc.max_sessions) {
      Refuse(fd.get(), *peer,
             Status(StatusCode::kResourceExhausted,
                    "tenant '" + tc.name + "' already holds its max_sessions = " +
                        std::to_string(tc.max_sessions) +
                        " sessions: close one, or ask the operator to raise the tenant's "
                        "max_sessions"));
      continue;
    }
    if (Status b = SizeSocketBuffers(fd.get()); !b.ok() && AllowNoisyWarning()) {
      spdlog::warn("session socket: {}", b.message());  // small batches still work
    }
    const int raw_fd = fd.get();
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = static_cast<uint64_t>(raw_fd);
    if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, raw_fd, &ev) != 0) {
      spdlog::warn("epoll_ctl(session): {}", ErrnoStatus("epoll_ctl", errno).message());
      continue;
    }
    const uint32_t id = NextSessionId();
    spdlog::debug("session {}: connected pid {} uid {} gid {}", id, peer->pid, peer->uid,
                  peer->gid);
    try {
      auto session = std::make_unique<Session>(id, std::move(fd), *peer,
                                               config_.max_leases_per_session, *tenant);
      session->set_hello_deadline_us(NowUs() + kHelloTimeoutUs);
      sessions_[raw_fd] = std::move(session);
    } catch (const std::bad_alloc&) {
      // The fd closed with the session or still lies in `fd`; the peer sees a hang-up.
      epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, raw_fd, nullptr);
      if (AllowNoisyWarning()) spdlog::warn("out of memory accepting a session; dropped it");
      continue;
    }
    ++awaiting_hello_;
  }
}

void Server::OnSessionEvent(Session& session, uint32_t events) {
  if (session.closed()) return;  // closed earlier in this round
  if ((events & (EPOLLHUP | EPOLLERR)) != 0) {
    // The peer is gone: no reply could reach it, and closing releases all it held. Requests it
    // sent last are dropped with it (its client never saw them acknowledged).
    return CloseSession(session, "peer hung up");
  }
  if ((events & EPOLLOUT) != 0 && !session.pending_reply().empty()) {
    const Status s = SendFrame(session.fd(), session.pending_reply());
    if (s.code() == StatusCode::kResourceExhausted) return;  // still full
    session.pending_reply().clear();
    if (!s.ok()) return CloseSession(session, "send failed");
    WatchWritable(session, false);
  }
  if (!session.pending_reply().empty()) return;  // no new requests until the reply is out
  // Fairness: after this many frames or keys, let other sessions in (level-triggered epoll
  // brings us back). A frame is at most 4096 keys, so one wake is bounded either way.
  int64_t key_budget = kMaxKeysPerWake;
  for (int i = 0; i < kMaxFramesPerWake && key_budget > 0; ++i) {
    auto received = RecvFrame(session.fd(), recv_buffer_, MSG_DONTWAIT);
    if (!received.ok()) {
      if (IsWouldBlock(received.status())) break;
      return CloseSession(session, "receive failed");
    }
    if (received->eof) return CloseSession(session, "peer closed");
    // Only register_region uses an fd; another request's is closed with the UniqueFd.
    if (received->fds_truncated) {
      return CloseSession(session, "sent more file descriptors than any request may carry");
    }
    if (received->bytes >= sizeof(wire::FrameHeader)) {
      wire::FrameHeader h;
      std::memcpy(&h, recv_buffer_.data(), sizeof(h));
      key_budget -= int64_t{1} + h.count;
    }
    if (!ServeFrame(session, received->bytes, received->truncated,
                    std::move(received->passed_fd))) {
      return;
    }
    if (!session.pending_reply().empty()) break;
  }
}

bool Server::ServeFrame(Session& session, size_t bytes, bool truncated, UniqueFd passed_fd) {
  wire::FrameWriter reply(send_buffer_);
  auto request = truncated ? Result<wire::FrameView>(Status(
                                 StatusCode::kProtocolError,
                                 "frame exceeds the limit of " +
                                     std::to_string(wire::kMaxFrameBytes) + " bytes"))
                           : wire::DecodeRequest(std::span(recv_buffer_).first(bytes));
  if (!request.ok()) {
    // Echo the op and id when the header at least was readable, so the client can match it.
    wire::FrameHeader header{};
    if (bytes >= sizeof(header)) std::memcpy(&header, recv_buffer_.data(), sizeof(header));
    const bool op_known = header.op >= 1 && header.op <= wire::kMaxOp;
    reply.Begin(op_known ? static_cast<wire::Op>(header.op) : wire::Op::kHello, header.request_id);
    reply.SetStatus(request.status());
    if (AllowNoisyWarning()) {
      spdlog::warn("session {} (pid {} uid {}): {}; closing it", session.id(), session.peer().pid,
                   session.peer().uid, request.status().ToString());
    }
    SendReply(session, reply.Finish(), -1);
    CloseSession(session, "protocol error");
    return false;
  }
  reply.Begin(request->op, request->header.request_id);
  const uint64_t arrived_us = NowUs();
  const bool was_anonymous = session.tenant() == nullptr;
  // Running out of memory (or of mappings: malloc's large blocks are mmaps) fails this request
  // and closes its session; every other session keeps being served.
  RequestHandler::Outcome outcome;
  bool out_of_memory = false;
  try {
    outcome = handler_.Handle(session, *request, reply, std::move(passed_fd));
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  if (was_anonymous && session.tenant() != nullptr) --awaiting_hello_;
  if (!out_of_memory && (outcome.park || outcome.copy)) {
    try {
      Park(session, bytes, reply, /*awaits_spill=*/!outcome.copy);
      session.parked()->arrived_us = arrived_us;
      if (outcome.copy) StartCopy(session, outcome);
      return false;  // read nothing more from it until the reply is out
    } catch (const std::bad_alloc&) {
      out_of_memory = true;
    }
  }
  if (out_of_memory) {
    FailOutOfMemory(session, *request, outcome);
    return false;
  }
  const bool sent = SendReply(session, reply.Finish(), outcome.pass_fd);
  latency_[static_cast<size_t>(request->op)].Observe(NowUs() - arrived_us);
  if (!sent) return false;
  if (outcome.close_session) {
    CloseSession(session, "request refused");
    return false;
  }
  return true;
}

void Server::FailOutOfMemory(Session& session, const wire::FrameView& request,
                             RequestHandler::Outcome& outcome) {
  const Status failure(StatusCode::kResourceExhausted,
                       "kvtierd could not allocate memory for this request; the session is "
                       "closed, others are served");
  // A copy that was not posted gives back the blocks it held.
  if (outcome.copy) handler_.FinishCopy(session, outcome.hold, failure, nullptr, nullptr);
  if (AllowNoisyWarning()) {
    spdlog::warn("session {} (pid {} uid {}): out of memory serving op {}; closing it",
                 session.id(), session.peer().pid, session.peer().uid,
                 static_cast<int>(request.op));
  }
  wire::FrameWriter error(send_buffer_);
  error.Begin(request.op, request.header.request_id);
  error.SetStatus(failure);
  SendReply(session, error.Finish(), -1);
  CloseSession(session, "out of memory");
}

bool Server::SendReply(Session& session, std::span<const std::byte> frame, int pass_fd) {
  const Status s = SendFrame(session.fd(), frame, pass_fd);
  if (s.ok()) return true;
  if (s.code() == StatusCode::kResourceExhausted && pass_fd < 0) {
    // The client is not reading its replies. Park this one and stop reading its requests.
    session.pending_reply().assign(frame.begin(), frame.end());
    WatchWritable(session, true);
    return true;
  }
  CloseSession(session, "send failed");
  return false;
}

uint32_t Server::NextSessionId() {
  // Reservations are owned by session id, so a live id must never be handed out twice. Ids
  // only repeat after 2^32 sessions; from then on skip the ones still in use.
  for (;;) {
    const uint32_t id = next_session_id_++;
    if (next_session_id_ == 0) {
      next_session_id_ = 1;
      ids_wrapped_ = true;
    }
    if (!ids_wrapped_) return id;
    bool in_use = false;
    for (const auto& [fd, s] : sessions_) in_use = in_use || s->id() == id;
    for (const auto& [fd, s] : detached_) in_use = in_use || s->id() == id;
    if (!in_use) return id;
  }
}

bool Server::AllowNoisyWarning() {
  const uint64_t second = NowUs() / 1000000u;
  if (second != log_second_) {
    if (suppressed_logs_ > 0) {
      spdlog::warn("{} more warnings (peer errors, failed copies, spill I/O failures) were "
                   "not logged in the last second",
                   suppressed_logs_);
    }
    log_second_ = second;
    logged_this_second_ = 0;
    suppressed_logs_ = 0;
  }
  if (logged_this_second_ < kPeerErrorLogsPerSecond) {
    ++logged_this_second_;
    return true;
  }
  ++suppressed_logs_;
  return false;
}

void Server::WatchWritable(Session& session, bool writable) {
  SetInterest(session, writable ? EPOLLOUT : EPOLLIN);
}

void Server::SetInterest(Session& session, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = static_cast<uint64_t>(session.fd());
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, session.fd(), &ev);
}

void Server::Park(Session& session, size_t request_bytes, const wire::FrameWriter& reply,
                  bool awaits_spill) {
  auto parked = std::make_unique<ParkedRequest>();
  const auto request = std::span(recv_buffer_).first(request_bytes);
  parked->frame.assign(request.begin(), request.end());
  // Room for this request's reply only: header, message, and its items (the largest item is
  // an AcquireResult), not a whole frame.
  wire::FrameHeader header{};
  std::memcpy(&header, parked->frame.data(), sizeof(header));
  const size_t capacity = std::min<size_t>(
      wire::kMaxFrameBytes, sizeof(wire::FrameHeader) + wire::kMaxMessageBytes +
                                size_t{header.count} * sizeof(wire::AcquireResult));
  KVT_CHECK(capacity >= reply.size());
  parked->reply.resize(capacity);
  std::memcpy(parked->reply.data(), send_buffer_.data(), reply.size());
  parked->writer = reply;
  parked->writer.Rebind(parked->reply);
  session.parked() = std::move(parked);
  SetInterest(session, 0);
  if (awaits_spill) parked_.push_back(session.fd());
}

void Server::StartCopy(Session& session, RequestHandler::Outcome& outcome) {
  // All or nothing under std::bad_alloc: until the job is posted, outcome keeps its hold.
  const uint64_t id = next_copy_id_;
  outcome.copy->id = id;
  PendingCopy& copy = copies_[id];
  try {
    copier_->Post(std::move(*outcome.copy));
  } catch (...) {
    copies_.erase(id);
    throw;
  }
  outcome.copy.reset();
  ++next_copy_id_;
  copy = PendingCopy{session.fd(), session.id(), session.tenant(), std::move(outcome.hold), false};
  session.progress().copy_id = id;
  ++session.copies_in_flight();
  ++session.tenant()->copies_in_flight;
  last_copy_post_us_ = NowUs();
}

void Server::SendParkedReply(Session& session, const wire::FrameView& request) {
  std::unique_ptr<ParkedRequest> parked = std::move(session.parked());
  latency_[static_cast<size_t>(request.op)].Observe(NowUs() - parked->arrived_us);
  if (SendReply(session, parked->writer.Finish(), -1) && session.pending_reply().empty()) {
    SetInterest(session, EPOLLIN);  // requests it sent meanwhile are read from here
  }
}

void Server::OnCopyResults() {
  copy_results_.clear();
  copier_->TakeResults(&copy_results_);
  for (const CopyResult& r : copy_results_) {
    auto it = copies_.find(r.id);
    KVT_CHECK(it != copies_.end());
    PendingCopy& copy = it->second;
    Session* session = nullptr;
    bool live = false;
    if (auto s = sessions_.find(copy.fd); s != sessions_.end() && s->second->id() == copy.session_id) {
      session = s->second.get();
      live = !session->closed();
    } else if (auto d = detached_.find(copy.fd); d != detached_.end()) {
      session = d->second.get();
    }
    KVT_CHECK(session != nullptr && session->id() == copy.session_id);
    // The reply goes out with the first result (a CUDA onload's "queued" one, or the final).
    const bool reply_now = live && !copy.replied && session->parked() != nullptr &&
                           session->progress().copy_id == r.id;
    std::optional<wire::FrameView> request;
    if (reply_now) {
      request = *wire::DecodeRequest(session->parked()->frame);
      copy.replied = true;
    }
    if (!r.final) {
      if (reply_now) {
        session->progress().copy_id = 0;
        SendParkedReply(*session, *request);
      }
      continue;
    }
    if (!r.status.ok() && AllowNoisyWarning()) {
      spdlog::warn("session {}: a copy between region and pool failed: {}", copy.session_id,
                   r.status.ToString());
    }
    if (session->tenant() != nullptr) {
      // A closed session's offload is not committed: its client is gone, or its tenant purged.
      const Status status =
          live ? r.status : Status(StatusCode::kUnavailable, "the session closed during the copy");
      handler_.FinishCopy(*session, copy.hold, status,
                          reply_now ? &session->parked()->writer : nullptr,
                          reply_now ? &*request : nullptr);
    }
    --copy.tenant->copies_in_flight;
    const int fd = copy.fd;
    copies_.erase(it);
    if (reply_now) {
      session->progress().copy_id = 0;
      SendParkedReply(*session, *request);
    }
    if (--session->copies_in_flight() == 0 && !live) {
      // Give back what it held now, not when the map entry goes: a purge in this very round
      // must find the blocks unpinned.
      session->Close();
      detached_.erase(fd);
    }
  }
}

void Server::ContinueParked(const Tenant* tenant) {
  std::erase_if(parked_, [&](int fd) {
    auto it = sessions_.find(fd);
    if (it == sessions_.end() || it->second->closed() || it->second->parked() == nullptr) {
      return true;
    }
    Session& session = *it->second;
    if (session.tenant() != tenant) return false;  // only its own tenant's results move it
    if (session.progress().copy_id != 0) return true;  // its copy's result moves it now
    auto request = wire::DecodeRequest(session.parked()->frame);
    KVT_CHECK(request.ok());  // it was decoded before it was parked
    RequestHandler::Outcome outcome;
    try {
      outcome = handler_.Continue(session, *request, session.parked()->writer);
      if (outcome.park) return false;
      if (outcome.copy) {
        StartCopy(session, outcome);
        return true;
      }
    } catch (const std::bad_alloc&) {
      // As in ServeFrame: this request fails and its session closes; others go on. The
      // request's frame moves out first: closing the session drops it.
      const std::unique_ptr<ParkedRequest> parked = std::move(session.parked());
      FailOutOfMemory(session, *request, outcome);
      return true;
    }
    SendParkedReply(session, *request);
    return true;
  });
}

void Server::OnSpillResults(size_t worker) {
  spill_moved_.clear();
  spill_notices_.clear();
  tier_.OnResults(worker, &spill_moved_, &spill_notices_);
  for (const SpillNotice& notice : spill_notices_) {
    const Tenant& tenant = *notice.tenant;
    const SpillResult& r = notice.result;
    if (r.kind == SpillResult::Kind::kErased) {
      commands_->OnErased(tenant, r.status, r.segments);
      continue;
    }
    if (r.kind == SpillResult::Kind::kRead && r.status.code() == StatusCode::kDataLoss) {
      Audit("integrity_failure", "tenant=" + tenant.config.name +
                                     " segment=" + std::to_string(r.ref.segment) +
                                     " offset=" + std::to_string(r.ref.offset()) +
                                     " reason=" + AuditLog::Quote(r.status.message()));
    }
    // During a purge the worker fails the tenant's queued jobs on purpose.
    if (tenant.purging || !AllowNoisyWarning()) continue;
    if (r.kind == SpillResult::Kind::kWritten) {
      spdlog::warn("tenant '{}': demotion to SSD failed, the block stays in DRAM only: {}",
                   tenant.config.name, r.status.ToString());
    } else {
      spdlog::warn("tenant '{}': promotion from SSD failed, the block is dropped (a miss): {}",
                   tenant.config.name, r.status.ToString());
    }
  }
  for (const Tenant* tenant : spill_moved_) ContinueParked(tenant);
}

void Server::OnAdminCommands() {
  for (auto& [request, done] : admin_->Take()) commands_->Run(std::move(request), std::move(done));
}

AdminHost::Snapshot Server::Snap() const {
  Snapshot s;
  s.uptime_seconds = (NowUs() - start_us_) / 1000000u;
  s.sessions = sessions_.size();
  s.copies_in_flight = copies_.size();
  s.gpu_devices = gpu_.devices;
  s.gpu = gpu_.summary;
  if (pinner_ != nullptr) {
    const Pinner::Progress pin = pinner_->progress();
    s.pinner = true;
    s.pools_pinned_bytes = pin.pinned_bytes;
    s.pools_bytes = pin.total_bytes;
    s.pinning = !pin.done ? "in progress" : pin.error.empty() ? "done" : pin.error;
  } else {
    s.pinning = "off (no CUDA device)";
  }
  s.latency = &latency_;
  return s;
}

uint64_t Server::CloseTenantSessions(const Tenant& tenant) {
  uint64_t closed = 0;
  for (auto& [fd, session] : sessions_) {
    if (session->tenant() != &tenant || session->closed()) continue;
    CloseSession(*session, "tenant purged");
    ++closed;
  }
  return closed;
}

void Server::StopAccepting() {
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, listen_fd_.get(), nullptr);
  listen_fd_.reset();
  unlink(config_.socket_path.c_str());
}

bool Server::CloseSessionsForDrain(bool all, uint64_t* closed) {
  for (auto& [fd, session] : sessions_) {
    if (session->closed()) continue;
    if (!all && (session->parked() != nullptr || !session->pending_reply().empty())) continue;
    CloseSession(*session, "kvtierd is draining");
    ++*closed;
  }
  ForgetClosedSessions();
  return sessions_.empty() && detached_.empty();
}

void Server::CloseSilentSessions() {
  const uint64_t now = NowUs();
  if (now < next_hello_sweep_us_) return;
  next_hello_sweep_us_ = now + 1000000u;
  for (auto& [fd, session] : sessions_) {
    if (session->tenant() == nullptr && !session->closed() && now > session->hello_deadline_us()) {
      CloseSession(*session, "no hello within the time limit");
    }
  }
  ForgetClosedSessions();
}

void Server::ForgetClosedSessions() {
  for (int fd : closing_) {
    auto it = sessions_.find(fd);
    if (it == sessions_.end()) continue;
    if (it->second->copies_in_flight() > 0) detached_[fd] = std::move(it->second);
    sessions_.erase(it);
  }
  if (!closing_.empty() && !commands_->draining()) SetAccepting(true);  // fds were freed
  closing_.clear();
}

void Server::CloseSession(Session& session, const char* why) {
  if (session.closed()) return;
  if (session.tenant() == nullptr) --awaiting_hello_;
  spdlog::debug("session {}: closing ({})", session.id(), why);
  const int fd = session.fd();
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
  if (session.copies_in_flight() > 0) {
    session.Detach();  // Close when the last copy ends (OnCopyResults)
  } else {
    session.Close();
  }
  closing_.push_back(fd);
}

}  // namespace kvtier
