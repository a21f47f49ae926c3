// `kvtierctl upgrade`: kvtierd checks the binary at its own path against the running config,
// stops cleanly and re-executes it in place (same pid), handing it the DRAM tier as systemd's fd
// store would. The tests "install" a new build the way a package does: a new file renamed over
// the old path while the old one runs. The new build is a script that notes how it was called
// and then runs the real kvtierd.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kMiB = 1ull << 20;

std::unique_ptr<Client> Connect(const DaemonProcess& d) {
  auto c = Client::Connect({.socket_path = d.socket_path(), .name_space = "upgrade"});
  if (!c.ok()) FAIL("connect: " << c.status().ToString());
  return std::move(*c);
}

// How many of `keys` come back byte-exact; `wrong` counts those that come back different.
size_t Exact(Client& client, const std::vector<Key>& keys, size_t* wrong) {
  auto leases = client.Acquire(keys);
  REQUIRE(leases.ok());
  size_t exact = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (leases->code(i) != StatusCode::kOk) continue;
    if (VerifyBlock(keys[i], leases->data(i))) {
      ++exact;
    } else {
      ++*wrong;
    }
  }
  REQUIRE(leases->Release().ok());
  return exact;
}

// A directory with a copy of kvtierd in it, which the daemon under test runs from; Install
// replaces it as a package upgrade does (a new inode renamed over the path).
class Installed {
 public:
  Installed() {
    fs::copy_file(KVTIERD_PATH, path());
    chmod(path().c_str(), 0755);
  }
  fs::path path() const { return dir_.path() / "kvtierd"; }
  fs::path calls() const { return dir_.path() / "calls"; }
  // A build that records its arguments in calls() and then is the real kvtierd.
  void InstallWrapper() {
    Install("#!/bin/sh\necho \"$@\" >> '" + calls().string() + "'\nexec '" KVTIERD_PATH
            "' \"$@\"\n");
  }
  void Install(const std::string& script) {
    const fs::path next = dir_.path() / "kvtierd.new";
    std::ofstream(next) << script;
    chmod(next.c_str(), 0755);
    fs::rename(next, path());
  }
  void Remove() { fs::remove(path()); }

 private:
  TempDir dir_;
};

size_t Count(const std::vector<std::string>& notes, const std::string& what) {
  size_t n = 0;
  for (const std::string& m : notes) n += m.find(what) != std::string::npos;
  return n;
}

TEST_CASE("kvtierctl upgrade re-executes the installed kvtierd in place and it serves the DRAM "
          "tier byte for byte",
          "[integration][upgrade]") {
  Installed bin;
  DaemonOptions o;
  o.binary = bin.path().string();
  auto daemon = DaemonProcess::Start(o);
  const pid_t pid = daemon->pid();
  auto old_client = Connect(*daemon);
  const std::vector<Key> keys = TestKeys(1, 24);
  StoreBlocks(*old_client, keys, kMiB);
  bin.InstallWrapper();

  std::string out, err;
  REQUIRE(RunCtl(*daemon, {"upgrade"}, &out, &err) == 0);
  CHECK_THAT(out, Catch::Contains("dram_tier") && Catch::Contains("kept") &&
                      Catch::Contains("kvtierd serves again") && Catch::Contains("serving"));
  // The new build was asked to check the config, then ran it, in the same process.
  const std::string calls = ReadFile(bin.calls());
  CHECK_THAT(calls, Catch::Contains("--check-config " + daemon->config_path().string()));
  CHECK_THAT(calls, Catch::Contains("--config " + daemon->config_path().string()));
  CHECK(daemon->pid() == pid);
  CHECK(daemon->Alive());
  const std::vector<std::string>& notes = daemon->Notifications();
  CHECK(Count(notes, "RELOADING=1") == 1);
  CHECK(Count(notes, "READY=1") == 2);

  // The old session ended with the old process; its next call says so at once.
  CHECK(old_client->Acquire(keys).status().code() == StatusCode::kUnavailable);
  auto client = Connect(*daemon);
  size_t wrong = 0;
  CHECK(Exact(*client, keys, &wrong) == keys.size());
  CHECK(wrong == 0);
  // Nothing went through the service manager's store.
  CHECK(daemon->TakeStoredFds().empty());
  const std::string audit = ReadFile(daemon->audit_log_path());
  CHECK_THAT(audit, Catch::Contains("upgrade") && Catch::Contains("result=ok"));
  CHECK_THAT(audit, Catch::Contains("result=upgrade"));
  CHECK_THAT(daemon->Log(), Catch::Contains("tenant 'test': kept 24 DRAM blocks"));
}

TEST_CASE("an upgrade to a binary that does not start leaves kvtierd serving what it held",
          "[integration][upgrade]") {
  Installed bin;
  DaemonOptions o;
  o.binary = bin.path().string();
  auto daemon = DaemonProcess::Start(o);
  auto client = Connect(*daemon);
  const std::vector<Key> keys = TestKeys(2, 8);
  StoreBlocks(*client, keys, kMiB);
  std::string out, err;

  SECTION("a build that refuses the config") {
    bin.Install("#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n");
    CHECK(RunCtl(*daemon, {"upgrade"}, &out, &err) == 1);
    CHECK_THAT(err, Catch::Contains("refused to start") && Catch::Contains("exited with status 3") &&
                        Catch::Contains("this build is broken"));
    CHECK_THAT(ReadFile(daemon->audit_log_path()), Catch::Contains("result=refused"));
  }
  SECTION("no binary at kvtierd's path") {
    bin.Remove();
    CHECK(RunCtl(*daemon, {"upgrade"}, &out, &err) == 1);
    CHECK_THAT(err, Catch::Contains("does not run"));
  }
  // The same session goes on, and so does everything it stored.
  size_t wrong = 0;
  CHECK(Exact(*client, keys, &wrong) == keys.size());
  CHECK(wrong == 0);
  REQUIRE(RunCtl(*daemon, {"status"}, &out, &err) == 0);
  CHECK_THAT(out, Catch::Contains("serving"));
  CHECK(Count(daemon->Notifications(), "READY=1") == 1);
}

TEST_CASE("with keep_dram_on_restart off an upgrade starts the new kvtierd with an empty DRAM tier",
          "[integration][upgrade]") {
  Installed bin;
  DaemonOptions o;
  o.binary = bin.path().string();
  o.extra_toml = "keep_dram_on_restart = false\n";
  auto daemon = DaemonProcess::Start(o);
  {
    auto client = Connect(*daemon);
    StoreBlocks(*client, TestKeys(3, 8), kMiB);
  }
  bin.InstallWrapper();
  std::string out, err;
  REQUIRE(RunCtl(*daemon, {"upgrade"}, &out, &err) == 0);
  CHECK_THAT(out, Catch::Contains("not kept"));
  auto client = Connect(*daemon);
  size_t wrong = 0;
  CHECK(Exact(*client, TestKeys(3, 8), &wrong) == 0);
  CHECK(wrong == 0);
  // A cold pool: nothing of the previous process shows anywhere in it.
  const std::span<std::byte> pool = client->pool();
  CHECK(std::all_of(pool.begin(), pool.end(), [](std::byte b) { return b == std::byte{0}; }));
}

}  // namespace
}  // namespace kvtier::testing
