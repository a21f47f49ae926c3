#include "daemon/admin/admin_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string_view>

#include <boost/asio/post.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"

namespace kvtier {
namespace asio = boost::asio;
using boost::system::error_code;

namespace {

std::vector<std::string> SplitWords(std::string_view line) {
  std::vector<std::string> words;
  size_t at = 0;
  while (at < line.size()) {
    const size_t end = std::min(line.find(' ', at), line.size());
    if (end > at) words.emplace_back(line.substr(at, end - at));
    at = end + 1;
  }
  return words;
}

std::string OneLine(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return out;
}

std::string Joined(const std::vector<std::string>& args) {
  std::string out;
  for (const std::string& a : args) {
    if (!out.empty()) out += ' ';
    out += a;
  }
  return out;
}

// The admin reply format: "OK\n" and the body, or one "ERROR" line.
std::string AdminWireReply(const AdminReply& reply) {
  if (reply.status.ok()) return "OK\n" + reply.body;
  return "ERROR " + std::string(StatusCodeName(reply.status.code())) + ": " +
         OneLine(reply.status.message()) + "\n";
}

std::vector<gid_t> PeerGroups(int fd) {
  std::vector<gid_t> groups(64);
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
      groups.resize(len / sizeof(gid_t));
      return groups;
    }
    if (errno != ERANGE) break;
    groups.resize(len / sizeof(gid_t) + 1);
  }
  return {};
}

}  // namespace

// One admin socket connection: authorize, read one request line, hand it to the loop, write
// the reply, close. Lives as long as a handler or the loop's `done` holds it.
class AdminServer::Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(AdminServer* server, asio::local::stream_protocol::socket socket)
      : server_(server), socket_(std::move(socket)), timer_(server->io_) {
    ++server_->connections_;
  }
  ~Connection() {
    NotIdle();
    if (counted_) --server_->admin_active_;
    server_->ConnectionEnded();
  }

  void Start() {
    const int fd = socket_.native_handle();
    auto peer = GetPeerCredentials(fd);
    if (!peer.ok()) return;  // the peer is already gone
    peer_ = *peer;
    if (Status allowed = Authorize(fd, server_->config_); !allowed.ok()) {
      server_->audit_->RecordRefusal(peer_.pid, peer_.uid, peer_.gid, allowed.message());
      return Send(AdminReply{allowed, {}}, /*audit=*/false);
    }
    // Counted only once authorized: other uids cannot crowd administrators out. At the cap,
    // the oldest connection still sending its request makes room: silent peers cannot lock
    // kvtierctl out. Commands running or answered are never cut.
    if (server_->admin_active_ >= kMaxConnections && !server_->admin_idle_.empty()) {
      server_->admin_idle_.front()->Evict();
    }
    if (server_->admin_active_ >= kMaxConnections) {
      const Status busy(StatusCode::kResourceExhausted,
                        "too many admin connections at once; retry");
      server_->audit_->RecordRefusal(peer_.pid, peer_.uid, peer_.gid, busy.message());
      return Send(AdminReply{busy, {}}, /*audit=*/false);
    }
    counted_ = true;
    ++server_->admin_active_;
    idle_at_ = server_->admin_idle_.insert(server_->admin_idle_.end(), this);
    idle_ = true;
    // A peer that connects and says nothing is dropped: it must not hold a slot for good.
    timer_.expires_after(std::chrono::seconds(kRequestTimeoutSeconds));
    timer_.async_wait([self = shared_from_this()](error_code ec) {
      error_code ignored;
      if (!ec && !self->request_read_) self->socket_.close(ignored);
    });
    asio::async_read_until(
        socket_, asio::dynamic_buffer(line_, kMaxRequestBytes), '\n',
        [self = shared_from_this()](error_code ec, size_t bytes) { self->OnLine(ec, bytes); });
  }

 private:
  void OnLine(error_code ec, size_t bytes) {
    NotIdle();
    if (!socket_.is_open()) return;  // timed out, or pushed out by a newer connection
    if (ec == asio::error::not_found) {
      return Send(AdminReply{Status(StatusCode::kProtocolError,
                                    "request line longer than " + std::to_string(kMaxRequestBytes) +
                                        " bytes"),
                             {}},
                  /*audit=*/false);
    }
    if (ec) {  // the peer closed: end now, not at the timeout
      timer_.cancel();
      return;
    }
    // The limit is on sending the request; a purge or a drain may take longer to answer.
    // A timeout already due may still run its handler: the flag makes it a no-op.
    request_read_ = true;
    timer_.cancel();
    const std::string_view line(line_.data(), bytes - 1);
    std::vector<std::string> words = SplitWords(line);
    if (words.size() < 4 || words[0] != "KVTIER-ADMIN" ||
        (words[2] != "text" && words[2] != "json")) {
      return Send(AdminReply{Status(StatusCode::kProtocolError,
                                    "expected 'KVTIER-ADMIN 1 text|json COMMAND [ARG ...]'"),
                             {}},
                  /*audit=*/false);
    }
    if (words[1] != "1") {
      return Send(AdminReply{Status(StatusCode::kVersionMismatch,
                                    "admin protocol version " + words[1] +
                                        " is not supported; this kvtierd speaks version 1"),
                             {}},
                  /*audit=*/false);
    }
    AdminRequest request;
    request.peer = peer_;
    request.json = words[2] == "json";
    request.args.assign(words.begin() + 3, words.end());
    command_ = Joined(request.args);
    // The loop calls `done` on its thread; the reply is written on ours.
    server_->inbox_->Push(std::move(request), [self = shared_from_this(),
                                               io = &server_->io_](AdminReply reply) mutable {
      asio::post(*io, [self = std::move(self), reply = std::move(reply)]() mutable {
        self->Send(std::move(reply), /*audit=*/true);
      });
    });
  }

  void Send(AdminReply reply, bool audit) {
    if (audit) {
      std::string fields = "pid=" + std::to_string(peer_.pid) +
                           " uid=" + std::to_string(peer_.uid) +
                           " command=" + AuditLog::Quote(command_) + " result=";
      fields += reply.status.ok() ? std::string("ok")
                                  : std::string(StatusCodeName(reply.status.code())) +
                                        " reason=" + AuditLog::Quote(reply.status.message());
      server_->audit_->Record("admin", fields);
    }
    out_ = AdminWireReply(reply);
    StartReplyDeadline();
    asio::async_write(socket_, asio::buffer(out_), [self = shared_from_this()](error_code, size_t) {
      error_code ignored;
      self->socket_.shutdown(asio::socket_base::shutdown_both, ignored);
      self->socket_.close(ignored);
      self->timer_.cancel();
    });
  }

  // A peer that stops reading its reply must not hold a connection for good.
  void StartReplyDeadline() {
    timer_.expires_after(std::chrono::seconds(kReplyTimeoutSeconds));
    timer_.async_wait([self = shared_from_this()](error_code ec) {
      error_code ignored;
      if (!ec) self->socket_.close(ignored);
    });
  }

  // Closes a connection still reading its request, to admit a newer one.
  void Evict() {
    NotIdle();
    --server_->admin_active_;
    counted_ = false;
    error_code ignored;
    socket_.close(ignored);
    timer_.cancel();
  }

  void NotIdle() {
    if (idle_) server_->admin_idle_.erase(idle_at_);
    idle_ = false;
  }

  AdminServer* server_;
  asio::local::stream_protocol::socket socket_;
  asio::steady_timer timer_;
  bool counted_ = false;  // in admin_active_
  bool idle_ = false;     // in admin_idle_, at idle_at_
  std::list<Connection*>::iterator idle_at_;
  bool request_read_ = false;  // the request timeout no longer applies
  PeerCredentials peer_;
  std::string line_;
  std::string command_;
  std::string out_;
};

// One HTTP/1.x request on the metrics listener: GET /metrics, anything else 404 or 405.
class AdminServer::HttpConnection : public std::enable_shared_from_this<HttpConnection> {
 public:
  HttpConnection(AdminServer* server, asio::ip::tcp::socket socket)
      : server_(server), socket_(std::move(socket)), timer_(server->io_) {
    ++server_->connections_;
  }
  ~HttpConnection() {
    NotIdle();
    if (counted_) --server_->http_active_;
    server_->ConnectionEnded();
  }

  void Start() {
    // Its own limit: scrapers (any local uid may connect) never crowd out the admin socket. At
    // the cap, the oldest connection not waiting for the loop (still sending its request, or
    // not taking its reply) makes room: idle or slow peers cannot lock a scraper out.
    if (server_->http_active_ >= kMaxHttpConnections && !server_->http_idle_.empty()) {
      server_->http_idle_.front()->Evict();
    }
    // Closed when every connection waits for the loop: the scraper retries.
    if (server_->http_active_ >= kMaxHttpConnections) return;
    counted_ = true;
    ++server_->http_active_;
    Idle();
    timer_.expires_after(std::chrono::seconds(kRequestTimeoutSeconds));
    timer_.async_wait([self = shared_from_this()](error_code ec) {
      error_code ignored;
      if (!ec && !self->request_read_) self->socket_.close(ignored);
    });
    asio::async_read_until(
        socket_, asio::dynamic_buffer(head_, kMaxHttpHeaderBytes), "\r\n\r\n",
        [self = shared_from_this()](error_code ec, size_t) { self->OnHead(ec); });
  }

 private:
  void OnHead(error_code ec) {
    NotIdle();
    if (!socket_.is_open()) return;  // timed out, or pushed out by a newer connection
    if (ec == asio::error::not_found) return Respond("431 Request Header Fields Too Large", "");
    if (ec) {  // the peer closed: end now, not at the timeout
      timer_.cancel();
      return;
    }
    request_read_ = true;
    timer_.cancel();
    const std::string_view line(head_.data(), head_.find("\r\n"));
    const std::vector<std::string> words = SplitWords(line);
    if (words.size() != 3 || !words[2].starts_with("HTTP/1.")) {
      return Respond("400 Bad Request", "");
    }
    if (words[0] != "GET") return Respond("405 Method Not Allowed", "");
    if (words[1] != "/metrics") return Respond("404 Not Found", "");
    AdminRequest request;
    request.args = {"metrics"};
    server_->inbox_->Push(std::move(request), [self = shared_from_this(),
                                               io = &server_->io_](AdminReply reply) mutable {
      asio::post(*io, [self = std::move(self), reply = std::move(reply)]() mutable {
        if (!reply.status.ok()) {
          return self->Respond("503 Service Unavailable", reply.status.message() + "\n");
        }
        self->Respond("200 OK", std::move(reply.body));
      });
    });
  }

  void Respond(std::string_view status, std::string body) {
    out_ = "HTTP/1.1 " + std::string(status) +
           "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
    Idle();
    timer_.expires_after(std::chrono::seconds(kReplyTimeoutSeconds));
    timer_.async_wait([self = shared_from_this()](error_code ec) {
      error_code ignored;
      if (!ec) self->socket_.close(ignored);
    });
    asio::async_write(socket_, asio::buffer(out_), [self = shared_from_this()](error_code, size_t) {
      error_code ignored;
      self->socket_.shutdown(asio::socket_base::shutdown_both, ignored);
      self->socket_.close(ignored);
      self->timer_.cancel();
    });
  }

  // Closes a connection not waiting for the loop, to admit a newer one.
  void Evict() {
    NotIdle();
    --server_->http_active_;
    counted_ = false;
    error_code ignored;
    socket_.close(ignored);
    timer_.cancel();
  }

  void Idle() {
    if (!idle_) idle_at_ = server_->http_idle_.insert(server_->http_idle_.end(), this);
    idle_ = true;
  }

  void NotIdle() {
    if (idle_) server_->http_idle_.erase(idle_at_);
    idle_ = false;
  }

  AdminServer* server_;
  asio::ip::tcp::socket socket_;
  asio::steady_timer timer_;
  bool counted_ = false;  // in http_active_
  bool idle_ = false;     // in http_idle_, at idle_at_
  std::list<HttpConnection*>::iterator idle_at_;
  bool request_read_ = false;  // the request timeout no longer applies
  std::string head_;
  std::string out_;
};

AdminServer::AdminServer(const AdminConfig& config, AuditLog* audit, AdminInbox* inbox)
    : config_(config), audit_(audit), inbox_(inbox), admin_(io_) {}

Result<std::unique_ptr<AdminServer>> AdminServer::Open(const AdminConfig& config,
                                                       AuditLog* audit,
                                                       AdminInbox* inbox) {
  std::unique_ptr<AdminServer> server(new AdminServer(config, audit, inbox));
  const gid_t group = config.group.empty() ? static_cast<gid_t>(-1) : config.group_id;
  KVT_ASSIGN_OR_RETURN(
      UniqueFd fd, ListenUnix(config.socket.string(), SOCK_STREAM, config.socket_mode, group, 16));
  error_code ec;
  server->admin_.assign(asio::local::stream_protocol(), fd.get(), ec);
  if (ec) return Status(StatusCode::kInternal, "admin socket: " + ec.message());
  (void)fd.release();
  if (config.metrics_port != 0) {
    const auto address = asio::ip::make_address(config.metrics_address, ec);
    if (ec) return Status(StatusCode::kInvalidArgument, "admin.metrics_listen: " + ec.message());
    const asio::ip::tcp::endpoint endpoint(address, config.metrics_port);
    auto& http = server->http_.emplace(server->io_);
    if (http.open(endpoint.protocol(), ec); !ec) {
      http.set_option(asio::socket_base::reuse_address(true), ec);
      if (http.bind(endpoint, ec); !ec) http.listen(16, ec);
    }
    if (ec) {
      return Status(StatusCode::kUnavailable,
                    "metrics listener on " + config.metrics_listen + ": " + ec.message());
    }
    server->AcceptHttp();
  }
  server->AcceptAdmin();
  server->thread_ = std::thread([raw = server.get()] { raw->io_.run(); });
  return server;
}

AdminServer::~AdminServer() {
  asio::post(io_, [this] {
    error_code ignored;
    admin_.close(ignored);
    if (http_) http_->close(ignored);
    // Replies being written get a moment; then whatever is left is cut.
    deadline_.emplace(io_, std::chrono::seconds(2));
    deadline_->async_wait([this](error_code) { io_.stop(); });
    if (connections_ == 0) deadline_->cancel();
  });
  if (thread_.joinable()) thread_.join();
  stopped_ = true;
  // Only the socket: whatever else took its name is not kvtierd's to remove.
  struct stat st {};
  if (lstat(config_.socket.c_str(), &st) == 0 && S_ISSOCK(st.st_mode))
    unlink(config_.socket.c_str());
}

void AdminServer::ConnectionEnded() {
  if (--connections_ == 0 && !stopped_ && deadline_) deadline_->cancel();
}

Status AdminServer::Authorize(int fd, const AdminConfig& config) {
  auto peer = GetPeerCredentials(fd);
  if (!peer.ok()) return peer.status();
  if (peer->uid == geteuid() || peer->uid == 0) return Status::Ok();
  if (!config.group.empty()) {
    if (peer->gid == config.group_id) return Status::Ok();
    for (gid_t g : PeerGroups(fd)) {
      if (g == config.group_id) return Status::Ok();
    }
  }
  std::string who = "kvtierd's own uid (" + std::to_string(geteuid()) + ") or root";
  if (!config.group.empty()) who += ", or members of group '" + config.group + "'";
  return Status(StatusCode::kPermissionDenied,
                "uid " + std::to_string(peer->uid) +
                    " may not administer kvtierd; the admin socket serves " + who);
}

void AdminServer::AcceptAdmin() {
  admin_.async_accept([this](error_code ec, asio::local::stream_protocol::socket socket) {
    if (ec == asio::error::operation_aborted || !admin_.is_open()) return;
    if (!ec) std::make_shared<Connection>(this, std::move(socket))->Start();
    AcceptAdmin();
  });
}

void AdminServer::AcceptHttp() {
  http_->async_accept([this](error_code ec, asio::ip::tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !http_->is_open()) return;
    if (!ec) std::make_shared<HttpConnection>(this, std::move(socket))->Start();
    AcceptHttp();
  });
}

}  // namespace kvtier
