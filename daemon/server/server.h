// Server: kvtierd's data-plane event loop. One thread owns the listening socket, every session
// and every tenant's pool state, so the request path takes no locks.
//
// The loop is epoll, level-triggered. After any activity it busy-polls (epoll_wait with a zero
// timeout) for poll_spin_us before sleeping: a wake-up costs ~25 us on these VMs, more than a
// whole batch of lookups, and an engine's next request usually follows within microseconds.
// SIGINT and SIGTERM (through a signalfd) stop the loop cleanly.
// Why epoll and not Asio here: SOCK_SEQPACKET with SCM_RIGHTS needs recvmsg/sendmsg, which Asio
// has no protocol for, and the busy-poll window needs control of the wait (docs/design.md).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "daemon/config/config.h"
#include "daemon/server/request_handler.h"
#include "daemon/server/session.h"
#include "daemon/spill/spill_worker.h"
#include "daemon/tenant/tenant_registry.h"
#include "ipc/base/unique_fd.h"

namespace kvtier {

class Server {
 public:
  // Binds the control socket; signals SIGINT/SIGTERM/SIGHUP must already be blocked in every
  // thread (main does this first) so the signalfd receives them.
  // `workers` run the tenants' spill stores (Tenant::spill names one of them); they must outlive
  // the server.
  static Result<std::unique_ptr<Server>> Open(const Config& config, TenantRegistry* tenants,
                                              std::vector<SpillWorker*> workers = {});
  ~Server();

  // Serves until SIGINT or SIGTERM. Returns OK after a clean stop.
  Status Run();

 private:
  Server(const Config& config, TenantRegistry* tenants, std::vector<SpillWorker*> workers);
  void Accept();
  void Refuse(int fd, const PeerCredentials& peer, const Status& why);
  void SetAccepting(bool on);
  // Closes sessions that connected but did not send hello in time (at most once a second).
  void CloseSilentSessions();
  void OnSessionEvent(Session& session, uint32_t events);
  // Handles one frame; false if the session must close.
  bool ServeFrame(Session& session, size_t bytes, bool truncated);
  bool SendReply(Session& session, std::span<const std::byte> frame, int pass_fd);
  void CloseSession(Session& session, const char* why);
  void WatchWritable(Session& session, bool writable);
  // epoll interest of a session: `events` (0 while its request is parked; hang-ups still come).
  void SetInterest(Session& session, uint32_t events);
  // SSD tier: keeps a request that must wait, continues parked ones, applies spill results, and
  // sends the pools' spill orders to the workers.
  void Park(Session& session, size_t request_bytes, const wire::FrameWriter& reply);
  // Continues the parked requests of `tenant`'s sessions.
  void ContinueParked(const Tenant* tenant);
  void OnSpillResults(size_t worker);
  void PostSpillOrders(bool demote = true);
  // A hostile peer can send errors as fast as it likes; the log gets at most a few per second.
  bool AllowPeerErrorLog();
  uint32_t NextSessionId();
  // Once a second: moves the pools' clocks and reaps a bounded number of expired blocks.
  void Tick();
  // Index entries each tenant's reaper looks at per second: a 1M-block index in ~16 s, at
  // about a millisecond of loop time per tick.
  static constexpr uint32_t kReapEntriesPerSecond = 65536;
  static constexpr uint32_t kPeerErrorLogsPerSecond = 10;
  static constexpr uint64_t kHelloTimeoutUs = 5'000'000;

  uint64_t start_us_;
  uint32_t clock_s_ = 0;
  const Config& config_;
  TenantRegistry* tenants_;
  std::vector<SpillWorker*> workers_;
  std::vector<std::vector<Tenant*>> spill_tenants_;  // [worker][store]
  RequestHandler handler_;
  UniqueFd listen_fd_;
  UniqueFd epoll_fd_;
  UniqueFd signal_fd_;
  std::unordered_map<int, std::unique_ptr<Session>> sessions_;  // by fd
  std::vector<int> closing_;
  std::vector<std::byte> recv_buffer_;
  std::vector<std::byte> send_buffer_;
  std::vector<int> parked_;  // fds of sessions with a parked request (some may have moved on)
  std::vector<SpillResult> spill_results_;
  std::vector<SpillOrder> spill_orders_;
  std::vector<SpillJob> spill_jobs_;
  uint32_t next_session_id_ = 1;
  bool ids_wrapped_ = false;
  bool accepting_ = true;
  uint32_t awaiting_hello_ = 0;  // sessions accepted whose hello has not been served
  uint64_t next_hello_sweep_us_ = 0;
  uint64_t log_second_ = 0;
  uint32_t logged_this_second_ = 0;
  uint64_t suppressed_logs_ = 0;
};

}  // namespace kvtier
