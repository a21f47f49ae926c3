// AdminServer: the operators' side of kvtierd, on its own thread with Boost.Asio: the admin
// Unix stream socket (kvtierctl) and, when configured, the loopback HTTP listener that serves
// GET /metrics to Prometheus. It authenticates and parses; the commands themselves run on the
// event loop (AdminInbox), which owns the tenants.
//
// Admin socket protocol (docs/protocol.md, "Admin socket"): the client sends one line
//   KVTIER-ADMIN 1 text|json COMMAND [ARG ...]\n
// (at most kMaxRequestBytes, within kRequestTimeoutSeconds) and reads the reply to EOF: a first
// line "OK" or "ERROR <status name>: <message>", then the body.
//
// Who may connect: the peer's SO_PEERCRED uid is kvtierd's own or root, or the configured admin
// group is the peer's primary gid or one of its supplementary groups (SO_PEERGROUPS). Anyone
// else is refused with an ERROR line before anything is read, and the refusal is audited.
// Every command run is audited too, with the peer's uid and pid and the outcome.
#pragma once

#include <atomic>
#include <list>
#include <memory>
#include <optional>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>

#include "daemon/admin/admin_inbox.h"
#include "daemon/admin/audit_log.h"
#include "daemon/config/config.h"

namespace kvtier {

class AdminServer {
 public:
  static constexpr size_t kMaxRequestBytes = 1024;
  static constexpr size_t kMaxHttpHeaderBytes = 8192;
  static constexpr int kRequestTimeoutSeconds = 5;
  static constexpr int kReplyTimeoutSeconds = 10;  // to take a reply, once it is ready
  // Connections at once: authorized admin ones, and metrics ones. At the cap a new connection
  // closes the oldest one that is idle (see admin_idle_), so silent peers lock no one out.
  static constexpr int kMaxConnections = 32;
  static constexpr int kMaxHttpConnections = 16;

  // Binds the admin socket (and the metrics listener); the thread starts serving at once.
  static Result<std::unique_ptr<AdminServer>> Open(const AdminConfig& config,
                                                   AuditLog* audit,
                                                   AdminInbox* inbox);
  // Stops accepting, gives replies in flight up to two seconds, joins the thread and removes
  // the socket file. Close the inbox first, so no command waits for the loop.
  ~AdminServer();

  // Whether `peer` may use the admin socket (see above), and if not, why.
  static Status Authorize(int fd, const AdminConfig& config);

 private:
  class Connection;
  class HttpConnection;

  AdminServer(const AdminConfig& config, AuditLog* audit, AdminInbox* inbox);
  void AcceptAdmin();
  void AcceptHttp();
  void ConnectionEnded();

  AdminConfig config_;
  AuditLog* audit_;
  AdminInbox* inbox_;
  // Before io_: connections still queued in io_ when it is destroyed end here.
  std::atomic<int> connections_{0};  // open connections of both kinds
  int admin_active_ = 0;             // authorized admin connections (io thread)
  int http_active_ = 0;              // metrics connections (io thread)
  bool stopped_ = false;             // the thread has ended
  // The connections a newcomer pushes out at the cap, oldest first (io thread): admin ones
  // still reading their request, metrics ones not waiting for the loop.
  std::list<Connection*> admin_idle_;
  std::list<HttpConnection*> http_idle_;
  boost::asio::io_context io_;
  boost::asio::local::stream_protocol::acceptor admin_;
  std::optional<boost::asio::ip::tcp::acceptor> http_;
  std::optional<boost::asio::steady_timer> deadline_;  // set when stopping (io thread)
  std::thread thread_;
};

}  // namespace kvtier
