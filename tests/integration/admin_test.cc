// The operators' side through the real daemon and the real kvtierctl: who may use the admin
// socket (real uids), every command as a table and as JSON, reload (good, bad and restart-only
// configs, and SIGHUP), drain, the Prometheus listener, purge across both tiers with the
// segment keys destroyed, and quota refusals that say which quota.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "daemon/admin/admin_server.h"
#include "daemon/spill/spill_format.h"
#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kMiB = 1 << 20;
constexpr uid_t kOtherUid = 41003;

std::unique_ptr<Client> MustConnect(const DaemonProcess& d) {
  auto c = Client::Connect({.socket_path = d.socket_path(), .name_space = "admin"});
  if (!c.ok()) FAIL("connect: " << c.status().ToString());
  return std::move(*c);
}

// Tenant "test" with a `dram_bytes` pool and a 256 MiB SSD quota under `state`.
DaemonOptions WithSsd(const TempDir& state, uint64_t dram_bytes) {
  DaemonOptions o;
  o.dram_bytes = dram_bytes;
  o.spill_dir = state.path() / "spill";
  o.ssd_bytes = 256 * kMiB;
  return o;
}

void Store(Client& client, uint64_t owner, size_t count, uint64_t size) {
  for (size_t i = 0; i < count; ++i) {
    const Key key = TestKey(owner, i);
    auto r = client.Reserve(std::span(&key, 1), std::span(&size, 1));
    REQUIRE(r.ok());
    REQUIRE(r->code(0) == StatusCode::kOk);
    FillBlock(key, r->data(0));
    REQUIRE(r->Commit().ok());
  }
}

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

// A JSON object as kvtierd writes it: braces and brackets balance outside strings.
bool LooksLikeJsonObject(const std::string& text) {
  if (text.size() < 3 || text.front() != '{' || text.substr(text.size() - 2) != "}\n") return false;
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    if (c == '{' || c == '[') ++depth;
    if (c == '}' || c == ']') --depth;
    if (depth < 0) return false;
  }
  return depth == 0 && !in_string;
}

// The number after "key": in a flat JSON object; -1 if absent.
int64_t JsonNumber(const std::string& json, const std::string& key) {
  const std::string field = "\"" + key + "\": ";
  const size_t at = json.find(field);
  if (at == std::string::npos) return -1;
  return std::stoll(json.substr(at + field.size()));
}

// Waits until no demotion is in flight and DRAM's dirty bytes are at most `dirty_limit` (the
// tenant's demote_above), so the pool starts no more: what is on SSD then stays put.
bool DemotionsSettled(const DaemonProcess& daemon, uint64_t dirty_limit) {
  return WaitUntil([&] {
    const std::string json = RunCtl(daemon, {"--json", "stats"}).out;
    const int64_t dirty = JsonNumber(json, "dirty_bytes");
    return JsonNumber(json, "demotions_in_flight") == 0 && dirty >= 0 &&
           static_cast<uint64_t>(dirty) <= dirty_limit;
  });
}

// A child that drops to `uid`, sends an admin request line itself, and returns 0 if the reply
// starts with `expect`; 2 if it could not connect at all (errno in the low bits is lost, so
// EACCES gets 3).
int AdminAs(uid_t uid, const std::string& path, const std::string& expect) {
  return RunInChild([&] {
    if (setresgid(uid, uid, uid) != 0 || setresuid(uid, uid, uid) != 0) return 10;
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      return errno == EACCES ? 3 : 2;
    }
    const std::string line = "KVTIER-ADMIN 1 text status\n";
    // A refused peer may find the socket closed before its request is out.
    (void)!send(fd, line.data(), line.size(), MSG_NOSIGNAL);
    std::string reply;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
      reply.append(buf, static_cast<size_t>(n));
    return reply.starts_with(expect) ? 0 : 1;
  });
}

TEST_CASE("the admin socket serves its owner and refuses other uids, and audits both",
          "[integration][admin]") {
  SECTION("mode 0600 by default: other uids cannot even connect") {
    auto daemon = DaemonProcess::Start();
    fs::permissions(daemon->dir(), fs::perms(0755));
    struct stat st {};
    REQUIRE(stat(daemon->admin_socket_path().c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0600);
    CHECK(AdminAs(kOtherUid, daemon->admin_socket_path(), "ERROR") == 3);
    CHECK(RunCtl(*daemon, {"status"}).code == 0);
  }
  SECTION("a socket opened to all still admits only the owner; refusals are audited") {
    DaemonOptions o;
    o.admin_toml = "socket_mode = \"0666\"\n";
    auto daemon = DaemonProcess::Start(o);
    fs::permissions(daemon->dir(), fs::perms(0755));
    CHECK(AdminAs(kOtherUid, daemon->admin_socket_path(), "ERROR permission_denied: uid 41003") ==
          0);
    const Ctl ok = RunCtl(*daemon, {"status"});
    INFO(ok.err);
    CHECK(ok.code == 0);
    const std::string audit = ReadFile(daemon->audit_log_path());
    INFO(audit);
    CHECK_THAT(audit, Catch::Contains("event=admin_refused") && Catch::Contains("uid=41003"));
    CHECK_THAT(audit, Catch::Contains("event=admin pid=") &&
                          Catch::Contains("uid=0 command=\"status\" result=ok"));
    struct stat st {};
    REQUIRE(stat(daemon->audit_log_path().c_str(), &st) == 0);
    CHECK((st.st_mode & 0077) == 0);  // the audit log is the daemon's alone
  }
}

TEST_CASE("every kvtierctl command answers as a table and as JSON", "[integration][admin]") {
  auto daemon = DaemonProcess::Start();
  auto client = MustConnect(*daemon);
  Store(*client, 1, 4, 64 * 1024);
  struct Case {
    std::vector<std::string> args;
    std::string in_text;
    std::string in_json;
  };
  const std::vector<Case> cases = {
      {{"status"}, "serving", "\"state\": \"serving\""},
      {{"stats"}, "committed_blocks", "\"committed_blocks\": 4"},
      {{"stats", "--tenant", "test"}, "committed_blocks", "\"tenant\": \"test\""},
      {{"tenants"}, "test", "\"dram_bytes\": 67108864"},
      {{"reload"}, "config", "\"changes\": []"},
  };
  for (const Case& c : cases) {
    const Ctl text = RunCtl(*daemon, c.args);
    INFO(c.args[0] << ": " << text.out << text.err);
    CHECK(text.code == 0);
    CHECK_THAT(text.out, Catch::Contains(c.in_text));
    std::vector<std::string> json_args = {"--json"};
    json_args.insert(json_args.end(), c.args.begin(), c.args.end());
    const Ctl json = RunCtl(*daemon, json_args);
    INFO(json.out << json.err);
    CHECK(json.code == 0);
    CHECK(LooksLikeJsonObject(json.out));
    CHECK_THAT(json.out, Catch::Contains(c.in_json));
  }
  // Without a CUDA device (or a CUDA build) the daemon says so plainly and serves on.
  const std::string status = RunCtl(*daemon, {"--json", "status"}).out;
  CHECK_THAT(status, Catch::Contains("\"gpu_devices\": "));
  if (status.find("\"gpu_devices\": 0,") != std::string::npos) {
    CHECK_THAT(status, Catch::Contains("\"gpu\": \"no CUDA device: "));
  }
  // Text tables line up the tenant's counters.
  CHECK_THAT(RunCtl(*daemon, {"stats"}).out,
             Catch::Matches("(.|\\n)*committed_blocks +4\\n(.|\\n)*"));

  // Metrics are Prometheus text, with or without --json.
  for (const bool json : {false, true}) {
    const Ctl metrics = RunCtl(*daemon, json ? std::vector<std::string>{"--json", "metrics"}
                                             : std::vector<std::string>{"metrics"});
    CHECK(metrics.code == 0);
    CHECK_THAT(metrics.out, Catch::Contains("# TYPE kvtier_hits_total counter") &&
                                Catch::Contains("kvtier_bytes{tenant=\"test\",tier=\"dram\"}"));
  }

  // Evicting DRAM in a tenant without an SSD tier drops the blocks.
  const Ctl evict = RunCtl(*daemon, {"--json", "evict", "--tenant", "test", "--tier", "dram"});
  INFO(evict.err);
  CHECK(evict.code == 0);
  CHECK_THAT(evict.out,
             Catch::Contains("\"dram_blocks\": 4") && Catch::Contains("\"dropped_blocks\": 4"));
  const Key first = TestKey(1, 0);
  auto found = client->MatchPrefix(std::span(&first, 1));
  REQUIRE(found.ok());
  CHECK(*found == 0);
  CHECK(RunCtl(*daemon, {"evict", "--tenant", "test"}).code == 0);

  const Ctl purge = RunCtl(*daemon, {"purge", "test"});
  INFO(purge.err);
  CHECK(purge.code == 0);
  CHECK_THAT(purge.out, Catch::Contains("sessions_closed") && Catch::Contains("segments_erased"));

  // Errors: named, on stderr, exit status 1.
  const Ctl unknown = RunCtl(*daemon, {"frobnicate"});
  CHECK(unknown.code == 1);
  CHECK_THAT(unknown.err, Catch::Contains("unknown command 'frobnicate'"));
  const Ctl nobody = RunCtl(*daemon, {"stats", "--tenant", "nobody"});
  CHECK(nobody.code == 1);
  CHECK_THAT(nobody.err, Catch::Contains("no tenant named 'nobody'"));
  const Ctl bad_tier = RunCtl(*daemon, {"evict", "--tenant", "test", "--tier", "gpu"});
  CHECK(bad_tier.code == 1);
  CHECK_THAT(bad_tier.err, Catch::Contains("--tier dram|ssd"));

  // Drain: answers, then the daemon exits cleanly and its socket is gone. Without an SSD tier
  // nothing can be flushed, and the reply says what is lost.
  auto last = MustConnect(*daemon);
  Store(*last, 9, 2, 4096);
  const Ctl drain = RunCtl(*daemon, {"--json", "drain"});
  INFO(drain.err);
  CHECK(drain.code == 0);
  CHECK_THAT(drain.out, Catch::Contains("\"sessions_closed\": 1") &&
                            Catch::Contains("\"not_flushed_blocks\": 2") &&
                            Catch::Contains("\"not_flushed_bytes\": 8192"));
  CHECK(WaitUntil([&] { return !daemon->Alive(); }));
  CHECK(daemon->Stop() == 0);
  CHECK(!fs::exists(daemon->socket_path()));
  const Ctl down = RunCtl(*daemon, {"status"});
  CHECK(down.code == 1);
  CHECK_THAT(down.err, Catch::Contains("not running"));
}

TEST_CASE("drain finishes the request in flight, flushes dirty blocks to SSD, and they survive",
          "[integration][admin]") {
  TempDir state;
  const DaemonOptions o = WithSsd(state, 64 * kMiB);
  auto daemon = DaemonProcess::Start(o);
  {
    auto client = MustConnect(*daemon);
    Store(*client, 2, 8, 256 * 1024);  // well under the dirty limit: nothing demoted yet
    REQUIRE(client->Stats()->ssd_blocks == 0);
    const Ctl drain = RunCtl(*daemon, {"drain"});  // the table form (--json: the test above)
    INFO(drain.err);
    INFO(daemon->Log());
    REQUIRE(drain.code == 0);
    CHECK_THAT(drain.out, Catch::Contains("flushed_blocks      8\n") &&
                              Catch::Contains("not_flushed_blocks  0\n"));
    CHECK(WaitUntil([&] { return !daemon->Alive(); }));
    CHECK(daemon->Stop() == 0);
    // The drained session is closed.
    CHECK(!client->Stats().ok());
  }
  auto again = DaemonProcess::Start(o);
  auto client = MustConnect(*again);
  for (size_t i = 0; i < 8; ++i) {
    const Key key = TestKey(2, i);
    auto lease = client->Acquire(std::span(&key, 1));
    REQUIRE(lease.ok());
    REQUIRE(lease->code(0) == StatusCode::kOk);
    CHECK(VerifyBlock(key, lease->data(0)));
  }
}

TEST_CASE(
    "reload applies TTL and mapping changes, and a bad or restart-only config keeps the "
    "running one",
    "[integration][admin]") {
  auto daemon = DaemonProcess::Start();
  const std::string original = ReadFile(daemon->config_path());
  auto rewrite = [&](const std::string& from, const std::string& to) {
    std::string text = original;
    const size_t at = text.find(from);
    REQUIRE(at != std::string::npos);
    text.replace(at, from.size(), to);
    std::ofstream(daemon->config_path()) << text;
  };

  rewrite("default_ttl_seconds = 0", "default_ttl_seconds = 7");
  const Ctl good = RunCtl(*daemon, {"reload"});
  INFO(good.err);
  CHECK(good.code == 0);
  CHECK_THAT(good.out, Catch::Contains("tenant.test.default_ttl_seconds") && Catch::Contains("7"));
  CHECK_THAT(RunCtl(*daemon, {"--json", "tenants"}).out,
             Catch::Contains("\"default_ttl_seconds\": 7"));

  rewrite("log_level = \"info\"", "log_level = \"loud\"");
  const Ctl bad = RunCtl(*daemon, {"reload"});
  CHECK(bad.code == 1);
  CHECK_THAT(bad.err,
             Catch::Contains("daemon.log_level") && Catch::Contains("the running one stays"));
  // SIGHUP with the same bad file: logged, and the daemon keeps serving.
  kill(daemon->pid(), SIGHUP);
  CHECK(WaitUntil(
      [&] { return daemon->Log().find("SIGHUP: config not reloaded") != std::string::npos; }));
  CHECK(daemon->Alive());
  auto client = MustConnect(*daemon);
  CHECK(client->Stats().ok());
  CHECK_THAT(RunCtl(*daemon, {"--json", "tenants"}).out,
             Catch::Contains("\"default_ttl_seconds\": 7"));

  rewrite("dram_bytes = 67108864", "dram_bytes = 134217728");
  const Ctl restart_only = RunCtl(*daemon, {"reload"});
  CHECK(restart_only.code == 1);
  CHECK_THAT(restart_only.err, Catch::Contains("dram_bytes") && Catch::Contains("restart"));
  const std::string audit = ReadFile(daemon->audit_log_path());
  CHECK_THAT(audit, Catch::Contains("event=reload") && Catch::Contains("result=refused") &&
                        Catch::Contains("result=ok changes=1"));
}

TEST_CASE("reload lowers a tenant's SSD quota at once and refuses to raise it past its start",
          "[integration][admin]") {
  TempDir state;
  const DaemonOptions o = WithSsd(state, 32 * kMiB);  // 16 MiB segments
  auto daemon = DaemonProcess::Start(o);
  auto client = MustConnect(*daemon);
  Store(*client, 6, 120, kMiB);
  // Let the demotions the stores started settle: a reclaim skips segments with I/O in flight.
  REQUIRE(DemotionsSettled(*daemon, 24 * kMiB));
  REQUIRE(client->Stats()->ssd_segments > 4);
  const std::string original = ReadFile(daemon->config_path());
  auto set_quota = [&](uint64_t bytes) {
    std::string text = original;
    const std::string from = "ssd_bytes = " + std::to_string(256 * kMiB);
    text.replace(text.find(from), from.size(), "ssd_bytes = " + std::to_string(bytes));
    std::ofstream(daemon->config_path()) << text;
  };
  set_quota(64 * kMiB);
  const Ctl lower = RunCtl(*daemon, {"reload"});
  INFO(lower.out << lower.err);
  CHECK(lower.code == 0);
  CHECK_THAT(lower.out, Catch::Contains("tenant.test.ssd_bytes"));
  CHECK(WaitUntil([&] { return client->Stats()->ssd_segments <= 4; }));
  const PoolStats after = *client->Stats();
  CHECK(after.ssd_quota_bytes == 64 * kMiB);
  CHECK(after.ssd_dropped > 0);
  CHECK(after.ssd_payload_bytes <= 64 * kMiB);

  set_quota(512 * kMiB);
  const Ctl raise = RunCtl(*daemon, {"reload"});
  CHECK(raise.code == 1);
  CHECK_THAT(raise.err, Catch::Contains("raising it above the 268435456 bytes"));
}

TEST_CASE("the reuse policy keeps blocks stored once off a full SSD tier and a reload to lru "
          "writes every block",
          "[integration][admin]") {
  TempDir state;
  auto daemon = DaemonProcess::Start(WithSsd(state, 32 * kMiB));
  auto client = MustConnect(*daemon);
  auto settle = [&] { REQUIRE(DemotionsSettled(*daemon, 24 * kMiB)); };
  auto declined = [&] {
    return JsonNumber(RunCtl(*daemon, {"--json", "stats"}).out, "ssd_declined");
  };
  CHECK_THAT(RunCtl(*daemon, {"--json", "tenants"}).out, Catch::Contains("\"policy\": \"reuse\""));
  // 400 blocks of 1 MiB, each stored once, through 32 MiB of DRAM and 256 MiB of SSD: the SSD
  // tier fills (records reclaimed), and from then on blocks nobody asked for again stay off it.
  Store(*client, 7, 400, kMiB);
  settle();
  const PoolStats full = *client->Stats();
  CHECK(full.ssd_dropped > 0);
  const int64_t declined_reuse = declined();
  CHECK(declined_reuse > 50);
  CHECK(full.demotions + static_cast<uint64_t>(declined_reuse) <= 400);

  std::string text = ReadFile(daemon->config_path());
  const std::string quota = "ssd_bytes = " + std::to_string(256 * kMiB) + "\n";
  REQUIRE(text.find(quota) != std::string::npos);
  text.replace(text.find(quota), quota.size(), quota + "policy = \"lru\"\n");
  std::ofstream(daemon->config_path()) << text;
  const Ctl reload = RunCtl(*daemon, {"reload"});
  INFO(reload.out << reload.err);
  REQUIRE(reload.code == 0);
  CHECK_THAT(reload.out, Catch::Contains("tenant.test.policy"));
  CHECK_THAT(RunCtl(*daemon, {"--json", "tenants"}).out, Catch::Contains("\"policy\": \"lru\""));
  Store(*client, 8, 100, kMiB);
  settle();
  CHECK(declined() == declined_reuse);
  CHECK(client->Stats()->demotions >= full.demotions + 100 - 32);
}

// GET `path` from 127.0.0.1:port; the whole response.
std::string HttpGet(uint16_t port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const timeval deadline{60, 0};  // only so that a broken listener cannot hang the test
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &deadline, sizeof(deadline));
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n";
  (void)!write(fd, request.data(), request.size());
  std::string response;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0)
    response.append(buf, static_cast<size_t>(n));
  close(fd);
  return response;
}

// A loopback port nobody listens on now.
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

double Sample(const std::string& exposition, const std::string& series) {
  const size_t at = exposition.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(exposition.substr(at + series.size() + 2));
}

TEST_CASE("the /metrics listener serves Prometheus text whose counters move",
          "[integration][admin]") {
  const uint16_t port = FreePort();
  DaemonOptions o;
  o.admin_toml = "metrics_listen = \"127.0.0.1:" + std::to_string(port) + "\"\n";
  auto daemon = DaemonProcess::Start(o);
  auto client = MustConnect(*daemon);
  Store(*client, 3, 2, 4096);
  const std::string hits = "kvtier_hits_total{tenant=\"test\",tier=\"dram\"}";
  const std::string acquires = "kvtier_request_duration_seconds_count{op=\"acquire\"}";
  const std::string before = HttpGet(port, "/metrics");
  INFO(before);
  REQUIRE_THAT(before, Catch::StartsWith("HTTP/1.1 200 OK\r\n") &&
                           Catch::Contains("text/plain; version=0.0.4"));
  const double hits_before = Sample(before, hits);
  const double acquires_before = Sample(before, acquires);
  CHECK(hits_before >= 0);
  CHECK(acquires_before >= 0);
  for (int i = 0; i < 3; ++i) {
    const Key key = TestKey(3, 1);
    auto lease = client->Acquire(std::span(&key, 1));
    REQUIRE(lease.ok());
  }
  const std::string after = HttpGet(port, "/metrics");
  CHECK(Sample(after, hits) == hits_before + 3);
  CHECK(Sample(after, acquires) == acquires_before + 3);
  CHECK_THAT(HttpGet(port, "/other"), Catch::StartsWith("HTTP/1.1 404"));
  // Anyone may connect to the listener; idle connections there never crowd out operators.
  std::vector<int> idle;
  for (int i = 0; i < AdminServer::kMaxConnections + 8; ++i) {
    idle.push_back(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connect(idle.back(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  }
  const Ctl status = RunCtl(*daemon, {"status"});
  INFO(status.err);
  CHECK(status.code == 0);
  for (int fd : idle)
    close(fd);
}

// A connection to the metrics listener (port) or the admin socket (path) that says nothing.
int ConnectIdle(uint16_t port, const std::string& path = "") {
  const int fd = socket(port != 0 ? AF_INET : AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_port = htons(port);
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::strncpy(un.sun_path, path.c_str(), sizeof(un.sun_path) - 1);
  const int rc = port != 0 ? connect(fd, reinterpret_cast<sockaddr*>(&in), sizeof(in))
                           : connect(fd, reinterpret_cast<sockaddr*>(&un), sizeof(un));
  REQUIRE(rc == 0);
  return fd;
}

TEST_CASE("idle connections lock out neither a scrape nor kvtierctl", "[integration][admin]") {
  const uint16_t port = FreePort();
  DaemonOptions o;
  o.admin_toml = "metrics_listen = \"127.0.0.1:" + std::to_string(port) + "\"\n";
  auto daemon = DaemonProcess::Start(o);
  // More than either cap, from uids the daemon serves (root), connected and silent.
  std::vector<int> idle;
  for (int i = 0; i < AdminServer::kMaxHttpConnections + 8; ++i)
    idle.push_back(ConnectIdle(port));
  for (int i = 0; i < AdminServer::kMaxConnections + 8; ++i)
    idle.push_back(ConnectIdle(0, daemon->admin_socket_path()));
  const std::string scrape = HttpGet(port, "/metrics");
  CHECK_THAT(scrape,
             Catch::StartsWith("HTTP/1.1 200 OK\r\n") && Catch::Contains("kvtier_uptime_seconds"));
  const Ctl status = RunCtl(*daemon, {"status"});
  INFO(status.err);
  CHECK(status.code == 0);
  CHECK_THAT(status.out, Catch::Contains("serving"));
  for (int fd : idle)
    close(fd);
}

// Sends `line` to the admin socket as this process (root); the whole reply.
std::string AdminLine(const std::string& path, const std::string& line) {
  const int fd = ConnectIdle(0, path);
  REQUIRE(write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
  std::string reply;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0)
    reply.append(buf, static_cast<size_t>(n));
  close(fd);
  return reply;
}

TEST_CASE("the audit log escapes control bytes and bytes that are not UTF-8, and keeps UTF-8",
          "[integration][admin]") {
  auto daemon = DaemonProcess::Start();
  // DEL, a C0 and a C1 control, a stray byte, a truncated sequence, a quote, a backslash, CR,
  // then UTF-8 of two, three and four bytes.
  const std::string name = "t\x7f\x01\xc2\x9b\xff\xc3(\"\\\r\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
  const std::string reply =
      AdminLine(daemon->admin_socket_path(), "KVTIER-ADMIN 1 text stats --tenant " + name + "\n");
  CHECK_THAT(reply, Catch::StartsWith("ERROR not_found"));
  const std::string audit = ReadFile(daemon->audit_log_path());
  INFO(audit);
  const std::string quoted = R"("stats --tenant t\x7f\x01\xc2\x9b\xff\xc3(\"\\\x0d)"
                             "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"";
  CHECK_THAT(audit, Catch::Contains("command=" + quoted + " result=not_found"));
}

TEST_CASE(
    "purge removes a tenant's blocks from both tiers, zeroes its pool and destroys its "
    "segment keys",
    "[integration][admin]") {
  TempDir state;
  DaemonOptions o = WithSsd(state, 32 * kMiB);
  o.more_tenants = {{"other", {kOtherUid}, 16 * kMiB}};
  auto daemon = DaemonProcess::Start(o);
  auto client = MustConnect(*daemon);
  // 64 MiB into a 32 MiB pool: the older blocks end up on SSD only.
  Store(*client, 4, 64, kMiB);
  REQUIRE(WaitUntil([&] { return client->Stats()->ssd_only_blocks > 0; }));
  const PoolStats before = *client->Stats();

  // Keep a second name for every segment file, as a thief with a copy of the directory would:
  // what the purge leaves in these files is what such a copy would hold.
  const fs::path kept = state.path() / "kept";
  fs::create_directories(kept);
  std::vector<fs::path> segments;
  for (const auto& entry : fs::recursive_directory_iterator(o.spill_dir)) {
    if (!entry.is_regular_file() || entry.file_size() < sizeof(spill::SegmentHeader)) continue;
    segments.push_back(kept / (std::to_string(segments.size()) + ".seg"));
    fs::create_hard_link(entry.path(), segments.back());
  }
  REQUIRE(!segments.empty());

  const Ctl purge = RunCtl(*daemon, {"--json", "purge", "test"});
  INFO(purge.out << purge.err);
  REQUIRE(purge.code == 0);
  CHECK_THAT(purge.out,
             Catch::Contains("\"tenant\": \"test\"") && Catch::Contains("\"sessions_closed\": 1"));
  // Demotions still running at the snapshot may have added blocks and segments since.
  CHECK(JsonNumber(purge.out, "ssd_blocks") >= static_cast<int64_t>(before.ssd_blocks));
  CHECK(JsonNumber(purge.out, "segments_erased") >= static_cast<int64_t>(before.ssd_segments));
  CHECK(JsonNumber(purge.out, "dram_blocks") > 0);
  // Its session was closed.
  CHECK(!client->Stats().ok());
  // Every segment file is gone from the spill directory...
  size_t files_left = 0;
  for (const auto& entry : fs::recursive_directory_iterator(o.spill_dir)) {
    if (entry.is_regular_file()) ++files_left;
  }
  CHECK(files_left == 0);
  // ...and the bytes a copy kept cannot be decrypted: each wrapped segment key is zeros.
  for (const fs::path& segment : segments) {
    const std::string bytes = ReadFile(segment);
    REQUIRE(bytes.size() >= sizeof(spill::SegmentHeader));
    spill::SegmentHeader header;
    std::memcpy(&header, bytes.data(), sizeof(header));
    const std::string zeros(sizeof(header.wrapped_key), '\0');
    CHECK(std::memcmp(&header.wrapped_key, zeros.data(), zeros.size()) == 0);
  }
  // A new session finds nothing and a pool of zeros.
  auto fresh = MustConnect(*daemon);
  const PoolStats after = *fresh->Stats();
  CHECK(after.committed_blocks == 0);
  CHECK(after.ssd_blocks == 0);
  CHECK(after.ssd_segments == 0);
  const std::span<std::byte> pool = fresh->pool();
  CHECK(std::all_of(pool.begin(), pool.end(), [](std::byte b) { return b == std::byte{0}; }));
  const std::string audit = ReadFile(daemon->audit_log_path());
  CHECK_THAT(audit, Catch::Contains("event=purge tenant=test by_uid=0"));

  // Even the master key recovers nothing from the kept copies: put them back and restart.
  CHECK(daemon->Stop() == 0);
  const fs::path tenant_dir = o.spill_dir / "test";
  fs::create_directories(tenant_dir);
  for (size_t i = 0; i < segments.size(); ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "seg-%08zx.kvs", i + 1);
    fs::copy_file(segments[i], tenant_dir / name);
  }
  auto restarted = DaemonProcess::Start(o);
  auto reader = MustConnect(*restarted);
  CHECK(reader->Stats()->ssd_blocks == 0);
  const Key first = TestKey(4, 0);
  auto found = reader->MatchPrefix(std::span(&first, 1));
  REQUIRE(found.ok());
  CHECK(*found == 0);
}

TEST_CASE("a reserve beyond the tenant's DRAM quota says which quota and by how much",
          "[integration][admin]") {
  DaemonOptions o;
  o.dram_bytes = 16 * kMiB;
  auto daemon = DaemonProcess::Start(o);
  auto client = MustConnect(*daemon);
  // Leases pin every block, so nothing can be evicted to make room.
  Store(*client, 5, 8, 2 * kMiB);
  std::vector<Key> keys;
  for (size_t i = 0; i < 8; ++i)
    keys.push_back(TestKey(5, i));
  auto leases = client->Acquire(keys);
  REQUIRE(leases.ok());
  const Key extra = TestKey(5, 100);
  const uint64_t size = 2 * kMiB;
  auto r = client->Reserve(std::span(&extra, 1), std::span(&size, 1));
  REQUIRE(r.ok());
  CHECK(r->code(0) == StatusCode::kResourceExhausted);
  INFO(r->refusal());
  CHECK_THAT(r->refusal(), Catch::StartsWith("tenant 'test': ") && Catch::Contains("16777216") &&
                               Catch::Contains("2097152"));
}

}  // namespace
}  // namespace kvtier::testing
