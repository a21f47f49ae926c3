// kvtierd at start refuses a run directory or a spill directory that another user could
// tamper with (owned by another uid, writable by group or others, not a directory): it exits
// with status 1 and a message naming the directory and the problem, and leaves it as it was.
// (The sockets' directories: daemon_cli_test.cc.)
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <catch2/catch.hpp>

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
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0)
    r.output.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// kvtierd with `config`; `timeout` ends one that would serve (status 124) instead of refusing.
CommandResult RunDaemon(const fs::path& config) {
  return RunCommand("timeout -k 5 30 " + std::string(KVTIERD_PATH) + " --config " +
                    config.string());
}

struct Damage {
  std::string problem;  // what kvtierd must say, after the directory's name
};

// Makes `dir` one of the things kvtierd must refuse, per the section being run.
Damage DamageDirectory(const fs::path& dir) {
  Damage d;
  SECTION("owned by another user") {
    REQUIRE(chown(dir.c_str(), kOtherUid, kOtherUid) == 0);  // the tests run as root
    d.problem = "is owned by uid 41003, not by kvtierd's uid " + std::to_string(geteuid());
  }
  SECTION("writable by its group") {
    fs::permissions(dir, fs::perms(0770));
    d.problem = "is writable by group or others";
  }
  SECTION("writable by others") {
    fs::permissions(dir, fs::perms(0703));
    d.problem = "is writable by group or others";
  }
  SECTION("writable by all, even sticky") {
    fs::permissions(dir, fs::perms(01777));
    d.problem = "is writable by group or others";
  }
  SECTION("not a directory") {
    fs::remove_all(dir);
    std::ofstream(dir) << "";
    d.problem = "is not a directory";
  }
  return d;
}

std::string ModeAndOwner(const fs::path& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return "missing";
  return std::to_string(st.st_mode) + ":" + std::to_string(st.st_uid);
}

TEST_CASE("kvtierd refuses to start in a run directory another user could tamper with",
          "[integration][cli][permissions]") {
  auto daemon = DaemonProcess::Start();
  REQUIRE(daemon->Stop() == 0);
  const fs::path run = daemon->dir() / "run";
  REQUIRE(fs::is_directory(run));
  const Damage damage = DamageDirectory(run);
  const std::string before = ModeAndOwner(run);
  const CommandResult r = RunDaemon(daemon->config_path());
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::Contains("run_dir " + run.string() + " " + damage.problem));
  // Refused as found: nothing changed or created in it.
  CHECK(ModeAndOwner(run) == before);
  CHECK_FALSE(fs::exists(run / "kvtierd.sock"));
  CHECK_FALSE(fs::exists(run / "kvtierd-admin.sock"));
}

TEST_CASE("kvtierd refuses to start with a spill directory another user could tamper with",
          "[integration][cli][permissions]") {
  TempDir state;
  DaemonOptions o;
  o.spill_dir = state.path() / "spill";
  o.ssd_bytes = 64ull << 20;
  auto daemon = DaemonProcess::Start(o);
  REQUIRE(daemon->Stop() == 0);
  REQUIRE(fs::is_directory(o.spill_dir));
  const Damage damage = DamageDirectory(o.spill_dir);
  const std::string before = ModeAndOwner(o.spill_dir);
  const std::string audit_before = ReadFile(daemon->audit_log_path());
  const CommandResult r = RunDaemon(daemon->config_path());
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::Contains("spill.dir " + o.spill_dir.string() + " " + damage.problem));
  CHECK(ModeAndOwner(o.spill_dir) == before);
  // It stopped before serving: no socket, no start record.
  CHECK_FALSE(fs::exists(daemon->socket_path()));
  CHECK(ReadFile(daemon->audit_log_path()) == audit_before);
}

TEST_CASE("kvtierd refuses a spill directory another user owns before creating its key",
          "[integration][cli][permissions]") {
  TempDir state;
  DaemonOptions o;
  o.spill_dir = state.path() / "spill";
  o.ssd_bytes = 64ull << 20;
  fs::create_directory(o.spill_dir);
  fs::permissions(o.spill_dir, fs::perms(0700));
  REQUIRE(chown(o.spill_dir.c_str(), kOtherUid, kOtherUid) == 0);
  CHECK_THROWS_WITH(DaemonProcess::Start(o), Catch::Contains("spill.dir " + o.spill_dir.string() +
                                                             " is owned by uid 41003") &&
                                                 Catch::Contains("chown it to kvtierd's user"));
  // The master key (beside the spill directory) was not created, nor anything inside.
  CHECK_FALSE(fs::exists(state.path() / "kvtier-test.key"));
  CHECK(fs::is_empty(o.spill_dir));
}

}  // namespace
}  // namespace kvtier::testing
