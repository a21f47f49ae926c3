// Fuzzes the admin protocol parsers of daemon/admin/admin_server.cc: the admin socket's request
// line ("KVTIER-ADMIN 1 text|json COMMAND [ARG ...]\n") and the metrics listener's HTTP request
// head. Both are parsed inside AdminServer's connection handlers, tangled with Asio socket I/O,
// with no pure function to call; so this target runs a real AdminServer (its own thread, a
// private admin socket, a loopback metrics port) and plays the client and the event loop: it
// sends the input on a fresh connection, answers whatever command reaches the AdminInbox, and
// reads the reply.
//
// Input: the first byte picks the listener (odd: the admin socket, even: HTTP); the rest is
// sent as is, then the write side is shut down.
//
// Checked besides "no crash" and "no hang": the outcome matches the protocol as
// admin_server.h states it, modelled here independently: which inputs reach the inbox and with
// which arguments, and the exact reply (OK and the body, one ERROR line, or the HTTP status).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/admin/admin_inbox.h"
#include "daemon/admin/admin_server.h"
#include "daemon/admin/audit_log.h"
#include "daemon/config/config.h"
#include "ipc/base/unique_fd.h"
#include "tests/fuzz/fuzz_check.h"

namespace kvtier::fuzz {
namespace {

constexpr int kHangMs = 10000;  // no reply within this is a finding
constexpr uint64_t kTruncateAuditEvery = 4096;

struct World {
  std::filesystem::path dir;
  AdminConfig config;
  std::unique_ptr<AuditLog> audit;
  AdminInbox inbox;
  std::unique_ptr<AdminServer> server;
  uint64_t runs = 0;
};

// A loopback port nothing listens on right now.
uint16_t FreePort() {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  KVT_FUZZ_CHECK(fd.valid(), "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  KVT_FUZZ_CHECK(bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0, "bind");
  socklen_t len = sizeof(addr);
  KVT_FUZZ_CHECK(getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0,
                 "getsockname");
  return ntohs(addr.sin_port);
}

World& TheWorld() {
  static World* world = [] {
    auto* w = new World();
    w->dir = MakeScratchDir("admin");
    KVT_FUZZ_CHECK(w->inbox.valid(), "eventfd");
    w->config.socket = w->dir / "admin.sock";
    w->config.socket_mode = 0600;
    w->config.audit_log = w->dir / "audit.log";
    auto audit = AuditLog::Open(w->config.audit_log);
    KVT_FUZZ_CHECK(audit.ok(), audit.status().ToString());
    w->audit = std::move(*audit);
    // The port may be taken between FreePort and the listener's bind: try a few.
    Status last;
    for (int attempt = 0; attempt < 5 && w->server == nullptr; ++attempt) {
      w->config.metrics_port = FreePort();
      w->config.metrics_address = "127.0.0.1";
      w->config.metrics_listen = "127.0.0.1:" + std::to_string(w->config.metrics_port);
      auto server = AdminServer::Open(w->config, w->audit.get(), &w->inbox);
      if (server.ok()) {
        w->server = std::move(*server);
      } else {
        last = server.status();
      }
    }
    KVT_FUZZ_CHECK(w->server != nullptr, "AdminServer::Open: " + last.ToString());
    return w;
  }();
  return *world;
}

UniqueFd ConnectAdmin(const World& w) {
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  KVT_FUZZ_CHECK(fd.valid(), "socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string& path = w.config.socket.native();
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  KVT_FUZZ_CHECK(connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0,
                 std::string("connect to the admin socket: ") + std::strerror(errno));
  return fd;
}

UniqueFd ConnectHttp(const World& w) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  KVT_FUZZ_CHECK(fd.valid(), "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(w.config.metrics_port);
  // Loopback connections at this rate can run out of ephemeral ports for a moment (each
  // closed one waits in TIME-WAIT): that is the host, not the server, so wait and retry.
  for (int attempt = 0;; ++attempt) {
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) return fd;
    if (errno == EINTR) {
      // A signal (libFuzzer's -timeout alarm) interrupted it; the connect goes on by itself.
      pollfd p{fd.get(), POLLOUT, 0};
      while (poll(&p, 1, -1) < 0 && errno == EINTR) {
      }
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      KVT_FUZZ_CHECK(err == 0, std::string("connect to the metrics listener: ") +
                                   std::strerror(err));
      return fd;
    }
    KVT_FUZZ_CHECK(errno == EADDRNOTAVAIL && attempt < 1000,
                   std::string("connect to the metrics listener: ") + std::strerror(errno));
    usleep(10000);
  }
}

// What the loop answers to a command: its arguments, so the reply proves which ones arrived.
std::string BodyFor(const AdminRequest& request) {
  std::string body = "fuzz-reply args=" + std::to_string(request.args.size()) + "\n";
  for (const std::string& arg : request.args)
    body += arg + "\n";
  return body;
}

struct Exchange {
  std::vector<AdminRequest> requests;  // what reached the inbox
  std::string reply;                   // what came back before EOF
  bool reset = false;                  // the connection ended with ECONNRESET
};

// Sends `payload`, shuts the write side, answers commands and reads the reply to EOF.
Exchange Talk(World& w, int fd, std::string_view payload) {
  Exchange out;
  timeval timeout{.tv_sec = kHangMs / 1000, .tv_usec = 0};
  KVT_FUZZ_CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout)) == 0,
                 "SO_SNDTIMEO");
  for (size_t sent = 0; sent < payload.size();) {
    const ssize_t n = send(fd, payload.data() + sent, payload.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    // The server may stop reading once it has its line, and close with our bytes unread.
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) break;
    KVT_FUZZ_CHECK(n > 0, std::string("send: ") + std::strerror(errno));
    sent += static_cast<size_t>(n);
  }
  (void)shutdown(fd, SHUT_WR);
  char buffer[16384];
  for (;;) {
    pollfd fds[2] = {{fd, POLLIN, 0}, {w.inbox.event_fd(), POLLIN, 0}};
    const int ready = poll(fds, 2, kHangMs);
    if (ready < 0 && errno == EINTR) continue;
    KVT_FUZZ_CHECK(ready > 0, "the admin server neither replied nor closed within " +
                                  std::to_string(kHangMs) + " ms; got so far: " + out.reply);
    if ((fds[1].revents & POLLIN) != 0) {
      for (auto& [request, done] : w.inbox.Take()) {
        AdminReply reply{Status::Ok(), BodyFor(request)};
        out.requests.push_back(std::move(request));
        done(std::move(reply));
      }
    }
    if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == ECONNRESET) {
        out.reset = true;
        break;
      }
      KVT_FUZZ_CHECK(n >= 0, std::string("recv: ") + std::strerror(errno));
      if (n == 0) break;
      out.reply.append(buffer, static_cast<size_t>(n));
    }
  }
  return out;
}

// admin_server.cc splits on single spaces and drops empty words; nothing else separates.
std::vector<std::string> Words(std::string_view line) {
  std::vector<std::string> words;
  std::string word;
  for (char c : line) {
    if (c == ' ') {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    } else {
      word.push_back(c);
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

std::string OneLine(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return text;
}

// `got` is the reply we expected, or (when the server may have reset the connection because
// it left part of the request unread) a prefix of it.
void CheckReply(const Exchange& got,
                const std::string& expected,
                bool may_reset,
                std::string_view payload) {
  const std::string what = "payload of " + std::to_string(payload.size()) + " bytes: expected\n  " +
                           expected + "\ngot\n  " + got.reply;
  if (may_reset || got.reset) {
    KVT_FUZZ_CHECK(may_reset, "connection reset though the whole request was read: " + what);
    KVT_FUZZ_CHECK(expected.starts_with(got.reply), what);
  } else {
    KVT_FUZZ_CHECK(got.reply == expected, what);
  }
}

void RunAdmin(World& w, std::string_view payload) {
  UniqueFd fd = ConnectAdmin(w);
  const Exchange got = Talk(w, fd.get(), payload);
  const size_t newline = payload.find('\n');
  // The line is read into a buffer of kMaxRequestBytes: its '\n' must be among those bytes.
  const size_t limit = AdminServer::kMaxRequestBytes;
  std::optional<AdminRequest> expected_request;
  std::string expected;
  if (newline == std::string_view::npos || newline >= limit) {
    if (payload.size() >= limit) {
      expected =
          "ERROR protocol_error: request line longer than " + std::to_string(limit) + " bytes\n";
    }  // else: EOF before a line; the server closes without a word
  } else {
    const std::vector<std::string> words = Words(payload.substr(0, newline));
    if (words.size() < 4 || words[0] != "KVTIER-ADMIN" ||
        (words[2] != "text" && words[2] != "json")) {
      expected = "ERROR protocol_error: expected 'KVTIER-ADMIN 1 text|json COMMAND [ARG ...]'\n";
    } else if (words[1] != "1") {
      expected = "ERROR version_mismatch: " +
                 OneLine("admin protocol version " + words[1] +
                         " is not supported; this kvtierd speaks version 1") +
                 "\n";
    } else {
      AdminRequest request;
      request.json = words[2] == "json";
      request.args.assign(words.begin() + 3, words.end());
      expected = "OK\n" + BodyFor(request);
      expected_request = std::move(request);
    }
  }
  const std::string what = "admin request line: " + std::string(payload.substr(0, newline));
  KVT_FUZZ_CHECK(got.requests.size() == (expected_request ? 1u : 0u),
                 std::to_string(got.requests.size()) + " commands reached the loop; " + what);
  if (expected_request) {
    const AdminRequest& request = got.requests.front();
    KVT_FUZZ_CHECK(request.args == expected_request->args, "arguments differ; " + what);
    KVT_FUZZ_CHECK(request.json == expected_request->json, "text|json differs; " + what);
    KVT_FUZZ_CHECK(request.peer.uid == geteuid() && request.peer.pid == getpid(),
                   "peer credentials; " + what);
  }
  // Bytes the server did not read may make it reset the connection after its reply.
  const bool line_read = newline != std::string_view::npos && newline < limit;
  const bool unread = line_read ? payload.size() > newline + 1 : payload.size() > limit;
  CheckReply(got, expected, unread, payload);
}

std::string HttpResponse(std::string_view status, const std::string& body) {
  return "HTTP/1.1 " + std::string(status) +
         "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

void RunHttp(World& w, std::string_view payload) {
  UniqueFd fd = ConnectHttp(w);
  const Exchange got = Talk(w, fd.get(), payload);
  const size_t limit = AdminServer::kMaxHttpHeaderBytes;
  const size_t end = payload.find("\r\n\r\n");
  std::string expected;
  bool metrics = false;
  if (end == std::string_view::npos || end + 4 > limit) {
    if (payload.size() >= limit) expected = HttpResponse("431 Request Header Fields Too Large", "");
  } else {
    const std::vector<std::string> words = Words(payload.substr(0, payload.find("\r\n")));
    if (words.size() != 3 || !words[2].starts_with("HTTP/1.")) {
      expected = HttpResponse("400 Bad Request", "");
    } else if (words[0] != "GET") {
      expected = HttpResponse("405 Method Not Allowed", "");
    } else if (words[1] != "/metrics") {
      expected = HttpResponse("404 Not Found", "");
    } else {
      metrics = true;
      AdminRequest request;
      request.args = {"metrics"};
      expected = HttpResponse("200 OK", BodyFor(request));
    }
  }
  const std::string what = "HTTP head of " + std::to_string(payload.size()) + " bytes";
  KVT_FUZZ_CHECK(got.requests.size() == (metrics ? 1u : 0u),
                 std::to_string(got.requests.size()) + " commands reached the loop; " + what);
  if (metrics) {
    const AdminRequest& request = got.requests.front();
    KVT_FUZZ_CHECK(request.args == std::vector<std::string>{"metrics"} && !request.json, what);
    KVT_FUZZ_CHECK(request.peer.uid == 0 && request.peer.pid == 0, what);
  }
  const bool head_read = end != std::string_view::npos && end + 4 <= limit;
  const bool unread = head_read ? payload.size() > end + 4 : payload.size() > limit;
  CheckReply(got, expected, unread, payload);
}

}  // namespace
}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier::fuzz;
  if (size == 0) return 0;
  World& w = TheWorld();
  const std::string_view payload = Text(data + 1, size - 1);
  if ((data[0] & 1) != 0) {
    RunAdmin(w, payload);
  } else {
    RunHttp(w, payload);
  }
  // Each command run is audited; keep the log from growing for the whole run.
  if (++w.runs % kTruncateAuditEvery == 0) (void)truncate(w.config.audit_log.c_str(), 0);
  return 0;
}
