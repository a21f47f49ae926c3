// The operators' side when things are not as they should be: bad kvtierctl arguments, unknown
// tenants, malformed, foreign-version and over-long admin request lines, a silent admin peer,
// the metrics listener's refusals, commands while a purge or a drain is under way, and audit
// records that stay one event per line whatever bytes reach them.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

namespace fs = std::filesystem;

struct Ctl {
  int code = -1;
  std::string out;
  std::string err;
};

Ctl RunCtl(const DaemonProcess& d, const std::vector<std::string>& args) {
  Ctl c;
  c.code = testing::RunCtl(d, args, &c.out, &c.err);
  return c;
}

std::unique_ptr<Client> MustConnect(const DaemonProcess& d) {
  auto c = Client::Connect({.socket_path = d.socket_path(), .name_space = "admin-failures"});
  if (!c.ok()) FAIL("connect: " << c.status().ToString());
  return std::move(*c);
}

// Sends `request` to the admin socket at `path` as this process (root) and returns everything
// the daemon writes back until it closes. The receive timeout only keeps a hung daemon from
// hanging the test. No assertions: it also runs on threads of the test's own.
std::string AdminLine(const std::string& path, const std::string& request) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::string("(socket: ") + std::strerror(errno) + ")";
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    close(fd);
    return "(connect " + path + ": " + std::strerror(err) + ")";
  }
  const timeval deadline{90, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &deadline, sizeof(deadline));
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the daemon may close before reading all of an over-long line
    sent += static_cast<size_t>(n);
  }
  std::string reply;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0)
    reply.append(buf, static_cast<size_t>(n));
  close(fd);
  return reply;
}

std::string Admin(const DaemonProcess& d, const std::string& command, bool json = false) {
  return AdminLine(d.admin_socket_path(),
                   std::string("KVTIER-ADMIN 1 ") + (json ? "json " : "text ") + command + "\n");
}

// The number after "key": in a flat JSON object; -1 if absent.
int64_t JsonNumber(const std::string& json, const std::string& key) {
  const std::string field = "\"" + key + "\": ";
  const size_t at = json.find(field);
  if (at == std::string::npos) return -1;
  return std::stoll(json.substr(at + field.size()));
}

constexpr char kCommands[] = "; commands: status | stats [--tenant T] | tenants | ";

TEST_CASE("kvtierctl and kvtierd refuse bad arguments and unknown tenants and name the problem",
          "[integration][admin][admin_failures]") {
  auto daemon = DaemonProcess::Start();
  auto client = MustConnect(*daemon);
  const std::vector<Key> keys = {TestKey(1, 0), TestKey(1, 1)};
  StoreBlocks(*client, keys, 4096);

  // kvtierctl's own checks: usage errors exit 2, before anything is sent.
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {}, {"--bogus"}, {"--json"}, {"--json", "--bogus", "status"}}) {
    const Ctl r = RunCtl(*daemon, args);
    INFO("kvtierctl " << (args.empty() ? "" : args[0]));
    CHECK(r.code == 2);
    CHECK_THAT(r.err, Catch::StartsWith("usage: kvtierctl"));
    CHECK(r.out.empty());
  }
  const Ctl spaced = RunCtl(*daemon, {"stats", "--tenant", "a b"});
  CHECK(spaced.code == 1);
  CHECK_THAT(spaced.err, Catch::Contains("argument 'a b' may not contain spaces"));

  // kvtierd's checks: exit 1, "kvtierctl: <status>: <why>" on stderr, nothing on stdout.
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"status", "now"}, "invalid_argument: 'status' takes no arguments"},
      {{"tenants", "all"}, "invalid_argument: 'tenants' takes no arguments"},
      {{"reload", "now"}, "invalid_argument: 'reload' takes no arguments"},
      {{"drain", "now"}, "invalid_argument: 'drain' takes no arguments"},
      {{"metrics", "all"}, "invalid_argument: 'metrics' takes no arguments"},
      {{"stats", "test"}, "invalid_argument: stats takes no argument but --tenant T"},
      {{"stats", "--tenant"}, "invalid_argument: stats takes no argument but --tenant T"},
      {{"stats", "--tenant", "test", "x"}, "invalid_argument: stats takes no argument but"},
      {{"purge"}, "invalid_argument: purge takes one TENANT"},
      {{"purge", "test", "test"}, "invalid_argument: purge takes one TENANT"},
      {{"evict"}, "invalid_argument: evict needs --tenant T"},
      {{"evict", "--tier", "dram"}, "invalid_argument: evict needs --tenant T"},
      {{"evict", "--tenant"}, "invalid_argument: '--tenant' needs a value"},
      {{"evict", "--tenant", "test", "--force", "yes"},
       "invalid_argument: evict takes --tenant T and optionally --tier dram|ssd, not '--force "
       "yes'"},
      {{"purge", "nobody"}, "not_found: no tenant named 'nobody' (tenants: test)"},
      {{"evict", "--tenant", "nobody"}, "not_found: no tenant named 'nobody' (tenants: test)"},
      {{"stats", "--tenant", "TEST"}, "not_found: no tenant named 'TEST' (tenants: test)"},
  };
  for (const Case& c : cases) {
    const Ctl r = RunCtl(*daemon, c.args);
    INFO("kvtierctl " << c.args[0] << " ... -> " << r.err);
    CHECK(r.code == 1);
    CHECK_THAT(r.err, Catch::StartsWith("kvtierctl: " + c.says));
    CHECK(r.out.empty());
    if (c.says.starts_with("invalid_argument")) CHECK_THAT(r.err, Catch::Contains(kCommands));
  }
  // None of them took effect: the blocks are there, the session is open, the daemon serves.
  CHECK(*client->MatchPrefix(keys) == keys.size());
  CHECK(client->Stats().ok());
  CHECK(daemon->Alive());
  // Each refusal that reached kvtierd is audited with its result.
  const std::string audit = ReadFile(daemon->audit_log_path());
  INFO(audit);
  CHECK_THAT(audit, Catch::Contains("command=\"purge test test\" result=invalid_argument "
                                    "reason=\"purge takes one TENANT; commands: "));
  CHECK_THAT(audit, Catch::Contains("command=\"purge nobody\" result=not_found "
                                    "reason=\"no tenant named 'nobody' (tenants: test)\""));
}

TEST_CASE(
    "the admin socket answers malformed and foreign-version and over-long lines with "
    "one error line",
    "[integration][admin][admin_failures]") {
  auto daemon = DaemonProcess::Start();
  const std::string path = daemon->admin_socket_path();
  const std::string malformed =
      "ERROR protocol_error: expected 'KVTIER-ADMIN 1 text|json COMMAND [ARG ...]'\n";
  CHECK(AdminLine(path, "HELLO\n") == malformed);
  CHECK(AdminLine(path, "\n") == malformed);
  CHECK(AdminLine(path, "KVTIER-ADMIN 1 text\n") == malformed);
  CHECK(AdminLine(path, "KVTIER-ADMIN 1 xml status\n") == malformed);
  CHECK(AdminLine(path, "kvtier-admin 1 text status\n") == malformed);
  CHECK(AdminLine(path, "KVTIER-ADMIN 2 text status\n") ==
        "ERROR version_mismatch: admin protocol version 2 is not supported; this kvtierd "
        "speaks version 1\n");
  CHECK_THAT(AdminLine(path, "KVTIER-ADMIN 1 text frobnicate\n"),
             Catch::StartsWith("ERROR invalid_argument: unknown command 'frobnicate'" +
                               std::string(kCommands)));
  // Words may be separated by several spaces.
  CHECK_THAT(AdminLine(path, "KVTIER-ADMIN  1   text  status\n"),
             Catch::StartsWith("OK\n") && Catch::Contains("serving"));

  // The limit is 1,024 bytes including the newline: a line of exactly that is read (and its
  // command run), one byte more is refused without being run.
  const std::string head = "KVTIER-ADMIN 1 text stats --tenant ";
  const std::string at_limit = head + std::string(1024 - head.size() - 1, 'a') + "\n";
  REQUIRE(at_limit.size() == 1024);
  CHECK_THAT(AdminLine(path, at_limit), Catch::StartsWith("ERROR not_found: no tenant named 'aaa"));
  const std::string over_limit = head + std::string(1024 - head.size(), 'b') + "\n";
  REQUIRE(over_limit.size() == 1025);
  const std::string too_long = "ERROR protocol_error: request line longer than 1024 bytes\n";
  CHECK(AdminLine(path, over_limit) == too_long);
  CHECK(AdminLine(path, std::string(64 * 1024, 'x')) == too_long);
  CHECK(AdminLine(path, "KVTIER-ADMIN 1 text status " + std::string(5000, ' ') + "\n") == too_long);

  // Frame-level refusals are not commands: only the line at the limit reached the audit log.
  const std::string audit = ReadFile(daemon->audit_log_path());
  INFO(audit);
  CHECK_THAT(audit, Catch::Contains("result=not_found"));
  CHECK_THAT(audit, !Catch::Contains("bbbb") && !Catch::Contains("frobnicate\" result=ok"));
  // The daemon serves on.
  CHECK_THAT(AdminLine(path, "KVTIER-ADMIN 1 json status\n"),
             Catch::StartsWith("OK\n{") && Catch::Contains("\"state\": \"serving\""));
}

TEST_CASE("an admin peer that never finishes its request line is closed without a reply",
          "[integration][admin][admin_failures]") {
  auto daemon = DaemonProcess::Start();
  // AdminLine reads until the daemon closes: after its 5 s request timeout, with nothing sent.
  CHECK(AdminLine(daemon->admin_socket_path(), "KVTIER-ADMIN 1 text sta").empty());
  const Ctl status = RunCtl(*daemon, {"status"});
  CHECK(status.code == 0);
}

// --- The metrics listener ---

uint16_t FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// Sends `request` to 127.0.0.1:port; the whole response.
std::string Http(uint16_t port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  const timeval deadline{60, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &deadline, sizeof(deadline));
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0)
    response.append(buf, static_cast<size_t>(n));
  close(fd);
  return response;
}

TEST_CASE(
    "the metrics listener refuses other methods and malformed requests and oversized "
    "headers",
    "[integration][admin][admin_failures]") {
  const uint16_t port = FreePort();
  DaemonOptions o;
  o.admin_toml = "metrics_listen = \"127.0.0.1:" + std::to_string(port) + "\"\n";
  auto daemon = DaemonProcess::Start(o);
  for (const char* method : {"POST", "PUT", "DELETE", "HEAD"}) {
    INFO(method);
    const std::string r = Http(
        port, std::string(method) + " /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    CHECK_THAT(r, Catch::StartsWith("HTTP/1.1 405 Method Not Allowed\r\n") &&
                      Catch::Contains("Content-Length: 0\r\n") && !Catch::Contains("kvtier_"));
  }
  // Not an HTTP/1.x request line.
  for (const char* line : {"GET /metrics\r\n\r\n", "GET /metrics HTTP/2.0\r\n\r\n",
                           "GET  /metrics HTTP/1.1 extra\r\n\r\n"}) {
    INFO(line);
    CHECK_THAT(Http(port, line), Catch::StartsWith("HTTP/1.1 400 Bad Request\r\n"));
  }
  // Headers past 8 KiB without their end.
  const std::string big =
      "GET /metrics HTTP/1.1\r\nX-Filler: " + std::string(9000, 'a') + "\r\n\r\n";
  CHECK_THAT(Http(port, big),
             Catch::StartsWith("HTTP/1.1 431 Request Header Fields Too Large\r\n") &&
                 !Catch::Contains("kvtier_"));
  // Just under the limit is served.
  const std::string fits =
      "GET /metrics HTTP/1.1\r\nX-Filler: " + std::string(8000, 'a') + "\r\n\r\n";
  REQUIRE(fits.size() < 8192);
  CHECK_THAT(Http(port, fits),
             Catch::StartsWith("HTTP/1.1 200 OK\r\n") && Catch::Contains("kvtier_uptime_seconds"));
}

// --- Commands while a purge or a drain is under way ---
//
// A purge waits for the tenant's region copies to end, and a drain for sessions whose request
// waits; both are kept under way here by stopping kvtierd's copy thread with ptrace
// (PTRACE_INTERRUPT on that one thread) while an onload of its is posted, then letting it go.

// Stops (ptrace) every thread of `pid` but the main one that is waiting in futex(2): the
// threads that wait for work, such as the copy engine's. The main thread (the event loop) and
// the admin thread wait in epoll_wait and keep running. Detaches on destruction.
class WaitingThreadsStopped {
 public:
  explicit WaitingThreadsStopped(pid_t pid) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
      const pid_t tid = static_cast<pid_t>(std::stol(entry.path().filename().string()));
      if (tid == pid) continue;
      std::istringstream syscall(ReadFile(entry.path() / "syscall"));
      std::string number;
      syscall >> number;
      if (number != std::to_string(SYS_futex)) continue;
      if (ptrace(PTRACE_SEIZE, tid, nullptr, nullptr) != 0) {
        why_ = std::string("PTRACE_SEIZE: ") + std::strerror(errno);
        continue;
      }
      tids_.push_back(tid);
      int status = 0;
      if (ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0 ||
          waitpid(tid, &status, __WALL) != tid) {
        why_ = std::string("PTRACE_INTERRUPT: ") + std::strerror(errno);
      }
    }
    if (tids_.empty() && why_.empty()) why_ = "no thread of kvtierd waits in futex(2)";
  }
  ~WaitingThreadsStopped() { Release(); }
  WaitingThreadsStopped(const WaitingThreadsStopped&) = delete;
  WaitingThreadsStopped& operator=(const WaitingThreadsStopped&) = delete;

  bool ok() const { return !tids_.empty() && why_.empty(); }
  const std::string& why() const { return why_; }
  void Release() {
    for (pid_t tid : tids_)
      ptrace(PTRACE_DETACH, tid, nullptr, nullptr);
    tids_.clear();
  }

 private:
  std::vector<pid_t> tids_;
  std::string why_;
};

// A session with an onload posted that cannot run (its copy thread is stopped).
struct StuckCopy {
  std::unique_ptr<Client> client;
  HostMemory memory;
  std::vector<Key> keys;
};

StuckCopy PrepareCopy(const DaemonProcess& daemon) {
  StuckCopy s;
  s.client = MustConnect(daemon);
  for (uint64_t i = 0; i < 4; ++i)
    s.keys.push_back(TestKey(7, i));
  StoreBlocks(*s.client, s.keys, 64 * 1024);
  auto memory = HostMemory::Create(1 << 20);
  REQUIRE(memory.ok());
  s.memory = std::move(*memory);
  return s;
}

void StartStuckCopy(const DaemonProcess& daemon, StuckCopy& s) {
  auto region = s.client->RegisterHostRegion(s.memory);
  REQUIRE(region.ok());
  const std::vector<uint64_t> offsets = {0, 65536, 131072, 196608};
  REQUIRE(s.client->StartOnload(s.keys, *region, offsets, {}).ok());
  REQUIRE(WaitUntil(
      [&] { return JsonNumber(Admin(daemon, "status", true), "copies_in_flight") == 1; }));
}

TEST_CASE(
    "while a purge is under way a second purge and an evict and the tenant's clients "
    "are refused",
    "[integration][admin][admin_failures][purge]") {
  auto daemon = DaemonProcess::Start();
  StuckCopy stuck = PrepareCopy(*daemon);
  WaitingThreadsStopped stopped(daemon->pid());
  if (!stopped.ok()) {
    stopped.Release();
    Unavailable("ptrace", stopped.why(), false);
    return;
  }
  StartStuckCopy(*daemon, stuck);
  std::string first;
  std::thread purge([&] { first = Admin(*daemon, "purge test", true); });
  const bool under_way = WaitUntil(
      [&] { return JsonNumber(Admin(*daemon, "status", true), "purges_in_progress") == 1; });
  if (under_way) {
    CHECK(Admin(*daemon, "purge test") ==
          "ERROR failed_precondition: a purge of tenant 'test' is under way\n");
    CHECK(Admin(*daemon, "evict --tenant test") ==
          "ERROR failed_precondition: tenant 'test' is being purged\n");
    CHECK_THAT(Admin(*daemon, "tenants", true), Catch::Contains("\"state\": \"purging\""));
    auto refused = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "x"});
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.status().code() == StatusCode::kUnavailable);
    CHECK_THAT(refused.status().message(), Catch::Contains("tenant 'test' is being purged"));
    // Read-only commands are served meanwhile.
    CHECK_THAT(Admin(*daemon, "stats"), Catch::StartsWith("OK\n"));
  }
  // The copy ends, and with it the purge.
  stopped.Release();
  purge.join();
  REQUIRE(under_way);
  INFO(first);
  CHECK_THAT(first, Catch::StartsWith("OK\n") && Catch::Contains("\"sessions_closed\": 1") &&
                        Catch::Contains("\"copies_waited\": true") &&
                        Catch::Contains("\"dram_blocks\": 4"));
  CHECK(JsonNumber(Admin(*daemon, "status", true), "purges_in_progress") == 0);
  // The purged session is over; the tenant serves new ones, with nothing stored.
  CHECK(stuck.client->VerifyLeases().code() == StatusCode::kFailedPrecondition);
  auto fresh = MustConnect(*daemon);
  CHECK(*fresh->MatchPrefix(stuck.keys) == 0);
  const std::string audit = ReadFile(daemon->audit_log_path());
  INFO(audit);
  CHECK_THAT(audit, Catch::Contains("command=\"purge test\" result=failed_precondition "
                                    "reason=\"a purge of tenant 'test' is under way\""));
  CHECK_THAT(audit, Catch::Contains("event=purge tenant=test by_uid=0"));
}

TEST_CASE("purging a tenant twice in a row: the second purge finds nothing and both succeed",
          "[integration][admin][admin_failures][purge]") {
  auto daemon = DaemonProcess::Start();
  auto client = MustConnect(*daemon);
  StoreBlocks(*client, {TestKey(8, 0), TestKey(8, 1), TestKey(8, 2)}, 8192);
  const Ctl one = RunCtl(*daemon, {"--json", "purge", "test"});
  const Ctl two = RunCtl(*daemon, {"--json", "purge", "test"});
  INFO(one.out << one.err << two.out << two.err);
  REQUIRE(one.code == 0);
  REQUIRE(two.code == 0);
  CHECK(JsonNumber(one.out, "sessions_closed") == 1);
  CHECK(JsonNumber(one.out, "dram_blocks") == 3);
  CHECK(JsonNumber(one.out, "dram_bytes") == 3 * 8192);
  CHECK(JsonNumber(two.out, "sessions_closed") == 0);
  CHECK(JsonNumber(two.out, "dram_blocks") == 0);
  CHECK(JsonNumber(two.out, "dram_bytes") == 0);
  CHECK(JsonNumber(two.out, "pool_bytes_zeroed") == JsonNumber(one.out, "pool_bytes_zeroed"));
  const std::string audit = ReadFile(daemon->audit_log_path());
  size_t purges = 0;
  for (size_t at = audit.find("event=purge tenant=test"); at != std::string::npos;
       at = audit.find("event=purge tenant=test", at + 1)) {
    ++purges;
  }
  CHECK(purges == 2);
}

TEST_CASE("while kvtierd drains the read-only commands are served and every other is refused",
          "[integration][admin][admin_failures][drain]") {
  auto daemon = DaemonProcess::Start();
  StuckCopy stuck = PrepareCopy(*daemon);
  WaitingThreadsStopped stopped(daemon->pid());
  if (!stopped.ok()) {
    stopped.Release();
    Unavailable("ptrace", stopped.why(), false);
    return;
  }
  StartStuckCopy(*daemon, stuck);
  std::string drained;
  std::thread drain([&] { drained = Admin(*daemon, "drain", true); });
  const bool draining = WaitUntil([&] {
    return Admin(*daemon, "status", true).find("\"state\": \"draining\"") != std::string::npos;
  });
  if (draining) {
    const std::string refused =
        "ERROR unavailable: kvtierd is draining; it takes no more commands\n";
    for (const char* command : {"purge test", "evict --tenant test",
                                "evict --tenant test --tier dram", "reload", "drain"}) {
      INFO(command);
      CHECK(Admin(*daemon, command) == refused);
    }
    for (const char* command : {"status", "stats", "stats --tenant test", "tenants", "metrics"}) {
      INFO(command);
      CHECK_THAT(Admin(*daemon, command), Catch::StartsWith("OK\n"));
    }
    // Usage errors are still usage errors, and new engines learn that nobody serves.
    CHECK_THAT(Admin(*daemon, "status now"), Catch::StartsWith("ERROR invalid_argument"));
    auto late = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "x"});
    REQUIRE_FALSE(late.ok());
    CHECK(late.status().code() == StatusCode::kUnavailable);
  }
  // The stuck request finishes, its session closes, and the drain completes.
  stopped.Release();
  drain.join();
  REQUIRE(draining);
  INFO(drained);
  CHECK_THAT(drained, Catch::StartsWith("OK\n") && Catch::Contains("\"sessions_closed\": 1"));
  CHECK(WaitUntil([&] { return !daemon->Alive(); }));
  CHECK(daemon->Stop() == 0);
  const std::string audit = ReadFile(daemon->audit_log_path());
  INFO(audit);
  CHECK_THAT(audit, Catch::Contains("command=\"purge test\" result=unavailable "
                                    "reason=\"kvtierd is draining; it takes no more commands\""));
  CHECK_THAT(audit, !Catch::Contains("event=purge_started"));
}

// --- Audit records: one event per line, fields that cannot be forged ---

// One audit record: the fields after the timestamp, as key -> value with quoting undone.
// nullopt if the line is not `TIMESTAMP key=value key=value ...` with every value either bare
// (no space, quote or backslash) or a quoted string using only \" \\ and \xNN escapes.
std::optional<std::vector<std::pair<std::string, std::string>>> ParseRecord(
    const std::string& line) {
  const size_t space = line.find(' ');
  if (space != 24 || line[23] != 'Z' || line[10] != 'T') return std::nullopt;
  std::vector<std::pair<std::string, std::string>> fields;
  size_t at = space + 1;
  while (at < line.size()) {
    size_t eq = at;
    while (eq < line.size() && ((line[eq] >= 'a' && line[eq] <= 'z') || line[eq] == '_'))
      ++eq;
    if (eq == at || eq >= line.size() || line[eq] != '=') return std::nullopt;
    std::string key = line.substr(at, eq - at);
    std::string value;
    at = eq + 1;
    if (at < line.size() && line[at] == '"') {
      ++at;
      bool closed = false;
      while (at < line.size()) {
        const char c = line[at];
        if (c == '"') {
          closed = true;
          ++at;
          break;
        }
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return std::nullopt;
        if (c != '\\') {
          value += c;
          ++at;
          continue;
        }
        if (at + 1 >= line.size()) return std::nullopt;
        const char e = line[at + 1];
        if (e == '"' || e == '\\') {
          value += e;
          at += 2;
        } else if (e == 'x' && at + 3 < line.size()) {
          value += static_cast<char>(std::stoi(line.substr(at + 2, 2), nullptr, 16));
          at += 4;
        } else {
          return std::nullopt;
        }
      }
      if (!closed) return std::nullopt;
    } else {
      while (at < line.size() && line[at] != ' ') {
        if (line[at] == '"' || line[at] == '\\') return std::nullopt;
        value += line[at++];
      }
    }
    fields.emplace_back(std::move(key), std::move(value));
    if (at < line.size()) {
      if (line[at] != ' ') return std::nullopt;
      ++at;
    }
  }
  return fields;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    lines.push_back(line);
  return lines;
}

std::string FieldOf(const std::vector<std::pair<std::string, std::string>>& fields,
                    const std::string& key) {
  for (const auto& [k, v] : fields) {
    if (k == key) return v;
  }
  return "<absent>";
}

std::vector<std::string> KeysOf(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::vector<std::string> keys;
  for (const auto& field : fields)
    keys.push_back(field.first);
  return keys;
}

TEST_CASE("audit records stay one per line and their fields cannot be forged",
          "[integration][admin][audit]") {
  auto daemon = DaemonProcess::Start();
  // 1. A command whose words look like fields and quotes.
  const std::string forged_command = "stats --tenant a\"_result=ok_uid=0 uid=0 result=ok";
  CHECK_THAT(Admin(*daemon, forged_command), Catch::StartsWith("ERROR invalid_argument"));
  const std::string forged_tenant = "stats --tenant x\"=\\\"event=forged";
  CHECK_THAT(Admin(*daemon, forged_tenant), Catch::StartsWith("ERROR not_found"));
  // 2. A reason with a newline, quotes, '=' and spaces: a reload whose log_level is such a
  // string (TOML's \n is a real newline in the value), refused with the value in its reason.
  const std::string original = ReadFile(daemon->config_path());
  std::string text = original;
  const std::string from = "log_level = \"info\"";
  REQUIRE(text.find(from) != std::string::npos);
  text.replace(text.find(from), from.size(),
               R"(log_level = "info\n2026-01-01T00:00:00.000Z event=forged result=ok \"q\" a=b")");
  std::ofstream(daemon->config_path()) << text;
  const Ctl reload = RunCtl(*daemon, {"reload"});
  CHECK(reload.code == 1);
  // kvtierctl prints the refusal as one line too.
  CHECK(reload.err.find('\n') == reload.err.size() - 1);
  CHECK_THAT(reload.err, Catch::Contains("daemon.log_level"));
  std::ofstream(daemon->config_path()) << original;

  const std::string audit = ReadFile(daemon->audit_log_path());
  INFO(audit);
  const std::vector<std::string> lines = Lines(audit);
  REQUIRE(lines.size() >= 4);  // start, two admin commands, a reload and its admin record
  size_t admin_records = 0;
  size_t reload_records = 0;
  for (const std::string& line : lines) {
    INFO(line);
    const auto fields = ParseRecord(line);
    REQUIRE(fields.has_value());
    const std::string event = FieldOf(*fields, "event");
    CHECK(event != "forged");
    REQUIRE(!fields->empty());
    CHECK(fields->front().first == "event");  // the event always comes first
    if (event == "admin") {
      ++admin_records;
      const std::string command = FieldOf(*fields, "command");
      CHECK(KeysOf(*fields) ==
            std::vector<std::string>{"event", "pid", "uid", "command", "result", "reason"});
      CHECK(FieldOf(*fields, "uid") == "0");
      if (command == forged_command) {
        CHECK(FieldOf(*fields, "result") == "invalid_argument");
      } else if (command == forged_tenant) {
        CHECK(FieldOf(*fields, "result") == "not_found");
        CHECK_THAT(FieldOf(*fields, "reason"),
                   Catch::StartsWith("no tenant named 'x\"=\\\"event=forged'"));
      } else {
        CHECK(command == "reload");
        CHECK(FieldOf(*fields, "result") == "invalid_argument");
        CHECK_THAT(FieldOf(*fields, "reason"),
                   Catch::Contains("\"info\n2026-01-01T00:00:00.000Z event=forged result=ok "
                                   "\"q\" a=b\" is not one of"));
      }
    }
    if (event == "reload") {
      ++reload_records;
      CHECK(KeysOf(*fields) == std::vector<std::string>{"event", "origin", "result", "reason"});
      CHECK(FieldOf(*fields, "result") == "refused");
      CHECK_THAT(FieldOf(*fields, "reason"), Catch::Contains("\"info\n2026-01-01T00:00:00.000Z"));
    }
  }
  CHECK(admin_records == 3);
  CHECK(reload_records == 1);
  CHECK(audit.find("\nevent=forged") == std::string::npos);
  CHECK(audit.find("\n2026-01-01T00:00:00.000Z") == std::string::npos);
}

}  // namespace
}  // namespace kvtier::testing
