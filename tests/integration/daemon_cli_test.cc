// kvtierd as operators run it: config checking, socket permissions, a second instance and
// clean stops (kvtierctl: admin_test.cc).
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <catch2/catch.hpp>

#include "kvclient/client.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

namespace fs = std::filesystem;
constexpr uid_t kOtherUid = 41003;

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

CommandResult RunCommand(const std::string& command) {
  CommandResult r;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST_CASE("kvtierd --check-config accepts the shipped configs", "[integration][cli]") {
  for (const char* file : {"configs/kvtierd.toml", "configs/kvtierd.dev.toml"}) {
    const CommandResult r = RunCommand(std::string(KVTIERD_PATH) + " --check-config " +
                                       KVT_SOURCE_DIR + "/" + file);
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.output, Catch::Contains("valid"));
  }
}

TEST_CASE("kvtierd refuses a bad config naming the key and line", "[integration][cli]") {
  TempDir dir;
  const auto path = dir.path() / "bad.toml";
  std::ofstream(path) << "config_version = 1\n[daemon]\nlog_level = \"loud\"\n"
                      << "[[tenant]]\nname = \"a\"\ndram_bytes = \"64MiB\"\n";
  for (const char* mode : {"--check-config", "--config"}) {
    const CommandResult r = RunCommand(std::string(KVTIERD_PATH) + " " + mode + " " +
                                       path.string());
    INFO(r.output);
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Catch::Contains("bad.toml:3:"));
    CHECK_THAT(r.output, Catch::Contains("daemon.log_level"));
  }
}

TEST_CASE("the control socket gets exactly the configured mode", "[integration][cli]") {
  auto daemon = DaemonProcess::Start();
  struct stat st {};
  REQUIRE(stat(daemon->socket_path().c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(daemon->Stop() == 0);
  // A clean stop removes the socket file.
  CHECK(stat(daemon->socket_path().c_str(), &st) != 0);
}

TEST_CASE("a second kvtierd on the same socket refuses to start", "[integration][cli]") {
  auto daemon = DaemonProcess::Start();
  // The first daemon's config is beside its run directory.
  const auto config = std::filesystem::path(daemon->socket_path()).parent_path().parent_path() /
                      "kvtierd.toml";
  const CommandResult r = RunCommand(std::string(KVTIERD_PATH) + " --config " + config.string());
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::Contains("already serving"));
  // The first one is unharmed.
  auto client = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "x"});
  REQUIRE(client.ok());
  CHECK((*client)->Stats().ok());
}

TEST_CASE("kvtierd refuses a socket directory where another user could replace the socket",
          "[integration][cli]") {
  const bool admin = GENERATE(false, true);  // which of the two sockets
  TempDir dir;
  const fs::path other = dir.path() / "other";
  fs::create_directory(other);
  const std::string path = (other / "kvtierd.sock").string();
  std::string problem;
  SECTION("writable by all, even sticky") {
    fs::permissions(other, fs::perms(01777));
    problem = "is writable by group or others (mode 1777)";
  }
  SECTION("owned by another user") {
    REQUIRE(chown(other.c_str(), kOtherUid, kOtherUid) == 0);  // the tests run as root
    problem = "is owned by uid 41003";
  }
  DaemonOptions o;
  (admin ? o.admin_toml : o.extra_toml) = "socket = \"" + path + "\"\n";
  CHECK_THROWS_WITH(DaemonProcess::Start(o), Catch::Contains(path) && Catch::Contains(problem));
  CHECK_FALSE(fs::exists(path));
}

TEST_CASE("kvtierd refuses an audit log that is not its own private regular file",
          "[integration][cli]") {
  auto daemon = DaemonProcess::Start();
  REQUIRE(daemon->Stop() == 0);
  const fs::path audit = daemon->audit_log_path();
  const fs::path elsewhere = daemon->dir() / "elsewhere.log";
  std::ofstream(elsewhere) << "";
  std::string problem;
  SECTION("a symlink") {
    fs::remove(audit);
    fs::create_symlink(elsewhere, audit);
    problem = "is a symbolic link";
  }
  SECTION("a FIFO") {
    fs::remove(audit);
    REQUIRE(mkfifo(audit.c_str(), 0600) == 0);
    problem = "is not a regular file";
  }
  SECTION("mode 0666") {
    fs::permissions(audit, fs::perms(0666));
    problem = "has mode 0666";
  }
  SECTION("owned by another user") {
    REQUIRE(chown(audit.c_str(), kOtherUid, kOtherUid) == 0);
    problem = "is owned by uid 41003";
  }
  // `timeout`: a kvtierd that took the file would serve, or block opening the FIFO with
  // SIGTERM blocked, for good.
  const CommandResult r = RunCommand("timeout -k 5 30 " + std::string(KVTIERD_PATH) +
                                     " --config " + daemon->config_path().string());
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::Contains(audit.string() + " " + problem));
  CHECK(ReadFile(elsewhere).empty());
}

TEST_CASE("kvtierd takes the hard open-file limit, and refuses max_sessions beyond it",
          "[integration][cli]") {
  DaemonOptions options;
  options.max_sessions = 200;
  auto daemon = DaemonProcess::Start(options);
  REQUIRE(daemon->Stop() == 0);
  const std::string run = std::string(KVTIERD_PATH) + " --config " +
                          daemon->config_path().string();
  // Soft 100, hard 300: 200 sessions fit once the soft limit is raised (kvtierd serves until
  // `timeout` stops it with SIGTERM, status 124).
  const CommandResult raised = RunCommand("prlimit --nofile=100:300 timeout -k 5 3 " + run);
  INFO(raised.output);
  CHECK(raised.exit_code == 124);
  CHECK_THAT(raised.output, !Catch::Contains("RLIMIT_NOFILE"));
  // Hard 150: they do not, and the refusal names the setting and the limit.
  const CommandResult refused = RunCommand("prlimit --nofile=100:150 timeout -k 5 30 " + run);
  INFO(refused.output);
  CHECK(refused.exit_code == 1);
  CHECK_THAT(refused.output, Catch::Contains("daemon.max_sessions = 200 needs 264 open files, "
                                             "but RLIMIT_NOFILE is 150"));
}


TEST_CASE("under a systemd watchdog kvtierd pings from its event loop and keeps STATUS current",
          "[integration][cli][systemd]") {
  DaemonOptions o;
  o.watchdog_usec = 200000;  // WatchdogSec=200ms: a ping every 100 ms
  auto daemon = DaemonProcess::Start(o);
  auto sent = [&](const std::string& what) {
    size_t n = 0;
    for (const std::string& m : daemon->Notifications()) n += m.find(what) != std::string::npos;
    return n;
  };
  CHECK(daemon->Notifications().front().find("READY=1") != std::string::npos);
  CHECK(WaitUntil([&] { return sent("WATCHDOG=1") >= 3; }));
  CHECK(WaitUntil([&] { return sent("STATUS=serving: 0 sessions") >= 1; }));
  {
    auto client = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "ns"});
    REQUIRE(client.ok());
    CHECK(WaitUntil([&] { return sent("STATUS=serving: 1 session") >= 1; }));
  }
  CHECK(daemon->Stop() == 0);
}

TEST_CASE("without a watchdog for its own pid kvtierd sends no pings", "[integration][cli][systemd]") {
  auto daemon = DaemonProcess::Start();
  // A second each: STATUS lines come from the same once-a-second tick a ping would.
  REQUIRE(WaitUntil([&] {
    for (const std::string& m : daemon->Notifications()) {
      if (m.find("STATUS=serving") != std::string::npos) return true;
    }
    return false;
  }));
  for (const std::string& m : daemon->Notifications()) CHECK(m.find("WATCHDOG") == std::string::npos);
}

}  // namespace
}  // namespace kvtier::testing
