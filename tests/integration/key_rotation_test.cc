// The SSD tier's keys through the real daemon (docs/spill-format.md, "Keys, the keyring and
// crypto-erase"): master key rotation online (kvtierctl rotate-key) and across a restart
// (spill.previous_key_file), a keyring sealed under an unknown key, a purge that revokes copies
// of the spill directory taken before it, a lost keyring, and the migration of segments
// written before the keyring existed.
#include <fcntl.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kMiB = 1 << 20;

// The layout DaemonProcess uses: the key file beside the spill directory; the keyring is the
// default next to it.
struct SpillPaths {
  TempDir root;
  fs::path dir = root.path() / "spill";
  fs::path key = root.path() / "kvtier-test.key";
  fs::path keyring = root.path() / "kvtier-test.keyring";
};

DaemonOptions Options(const SpillPaths& paths, const std::string& spill_toml = "") {
  DaemonOptions o;
  o.dram_bytes = 64 * kMiB;
  o.slab_bytes = 2 * kMiB;
  o.max_block_bytes = 2 * kMiB;
  o.spill_dir = paths.dir;
  o.ssd_bytes = 512 * kMiB;
  o.segment_bytes = 16 * kMiB;
  o.spill_toml = spill_toml;
  return o;
}

std::unique_ptr<Client> MustConnect(const DaemonProcess& d) {
  auto c = Client::Connect({.socket_path = d.socket_path(), .name_space = "spill"});
  if (!c.ok()) FAIL("connect: " << c.status().ToString());
  return std::move(*c);
}

std::string RandomKeyHex() {
  std::random_device rd;
  std::string hex;
  constexpr char kDigits[] = "0123456789abcdef";
  for (int i = 0; i < 64; ++i) hex += kDigits[rd() % 16];
  return hex;
}

// As an operator replaces a key file: the new file written beside it, then renamed over it.
void WriteKeyFile(const fs::path& path, const std::string& hex) {
  const fs::path tmp = path.string() + ".new";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << hex << "\n";
    REQUIRE(out.good());
  }
  REQUIRE(::chmod(tmp.c_str(), 0600) == 0);
  fs::rename(tmp, path);
}

void StoreAll(Client& client, const std::vector<Key>& keys) {
  for (size_t at = 0; at < keys.size(); at += 16) {
    const size_t n = std::min<size_t>(16, keys.size() - at);
    StoreBlocks(client, std::vector<Key>(keys.begin() + static_cast<std::ptrdiff_t>(at),
                                         keys.begin() + static_cast<std::ptrdiff_t>(at + n)),
                kMiB);
  }
}

// Stores 100 blocks of 1 MiB through the 64 MiB pool, drops DRAM's copies and returns the
// blocks the SSD tier alone holds now (their writes have completed).
std::vector<Key> StoreOnSsd(const DaemonProcess& daemon, Client& client, uint64_t owner) {
  const std::vector<Key> keys = TestKeys(owner, 100);
  StoreAll(client, keys);
  REQUIRE(RunCtl(daemon, {"evict", "--tenant", "test", "--tier", "dram"}, nullptr) == 0);
  std::vector<Key> on_ssd;
  for (const Key& key : keys) {
    Tier tier = Tier::kNone;
    REQUIRE(client.MatchPrefix(std::vector<Key>{key}, std::span(&tier, 1)).ok());
    if (tier == Tier::kSsd) on_ssd.push_back(key);
  }
  REQUIRE(on_ssd.size() >= 8);
  return on_ssd;
}

bool Has(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

// The line of `text` that holds `what`, or "".
std::string LineWith(const std::string& text, const std::string& what) {
  const size_t at = text.find(what);
  if (at == std::string::npos) return "";
  const size_t begin = text.rfind('\n', at);
  const size_t end = text.find('\n', at);
  return text.substr(begin == std::string::npos ? 0 : begin + 1,
                     end == std::string::npos ? std::string::npos : end - begin - 1);
}

// Files in `dir` whose names start with `prefix`.
std::vector<fs::path> Named(const fs::path& dir, const std::string& prefix) {
  std::vector<fs::path> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().filename().string().starts_with(prefix)) out.push_back(entry.path());
  }
  return out;
}

mode_t ModeOf(const fs::path& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

std::string Ctl(const DaemonProcess& daemon, const std::vector<std::string>& args,
                int expect = 0) {
  std::string out;
  std::string err;
  const int rc = RunCtl(daemon, args, &out, &err);
  INFO(out << err);
  CHECK(rc == expect);
  return out + err;
}

TEST_CASE("rotate-key re-seals the keyring under a replaced key file and the SSD tier survives "
          "it and a restart",
          "[integration][spill][keys]") {
  SpillPaths paths;
  std::vector<Key> on_ssd;
  const std::string new_key = RandomKeyHex();
  {
    auto daemon = DaemonProcess::Start(Options(paths));
    auto client = MustConnect(*daemon);
    on_ssd = StoreOnSsd(*daemon, *client, 1);
    REQUIRE(fs::exists(paths.keyring));
    CHECK(ModeOf(paths.keyring) == 0600);
    const std::string status_before = Ctl(*daemon, {"status"});
    CHECK(Has(status_before, paths.keyring.string()));

    // The key file is replaced while kvtierd runs: nothing changes until rotate-key.
    const std::string old_key = ReadFile(paths.key);
    WriteKeyFile(paths.key, new_key);
    const std::string rotated = Ctl(*daemon, {"rotate-key"});
    CHECK(Has(rotated, "segments_rewritten"));
    CHECK(Has(rotated, "the keyring is sealed under the new key"));
    const std::string status_after = Ctl(*daemon, {"status"});
    CHECK(LineWith(status_after, "spill_key_id") != LineWith(status_before, "spill_key_id"));
    CHECK_FALSE(LineWith(status_after, "spill_key_id").empty());

    // Same key again: a clear answer, nothing written.
    const auto keyring_bytes = ReadFile(paths.keyring);
    const std::string again = Ctl(*daemon, {"rotate-key"});
    CHECK(Has(again, "is the one in use"));
    CHECK(ReadFile(paths.keyring) == keyring_bytes);

    // Every SSD-only block reads back byte for byte, from the SSD.
    const ReadCounts back = ReadAll(*client, on_ssd);
    CHECK(back.verified == on_ssd.size());
    CHECK(back.wrong == 0);

    const std::string audit = ReadFile(daemon->audit_log_path());
    CHECK(Has(audit, "rotate_key"));
    CHECK(Has(audit, "result=ok key_id="));
    CHECK(Has(audit, "result=unchanged"));
    CHECK(Has(audit, "by_uid="));
    // Key ids only: neither key's bytes reach the audit log or the log.
    CHECK_FALSE(Has(audit, new_key.substr(0, 16)));
    CHECK_FALSE(Has(audit, old_key.substr(0, 16)));
    CHECK_FALSE(Has(daemon->Log(), new_key.substr(0, 16)));
    CHECK_FALSE(Has(daemon->Log(), old_key.substr(0, 16)));
    REQUIRE(daemon->Stop() == 0);
  }
  // A restart with the new key (and no previous key) keeps the SSD tier.
  auto daemon = DaemonProcess::Start(Options(paths));
  auto client = MustConnect(*daemon);
  const ReadCounts back = ReadAll(*client, on_ssd);
  CHECK(back.verified == on_ssd.size());
  CHECK(back.wrong == 0);
  CHECK_FALSE(Has(daemon->Log(), "different master key"));
  CHECK(Named(paths.root.path(), "kvtier-test.keyring.unreadable").empty());
}

TEST_CASE("rotate-key that cannot read the key file keeps the key in use",
          "[integration][spill][keys]") {
  SpillPaths paths;
  auto daemon = DaemonProcess::Start(Options(paths));
  auto client = MustConnect(*daemon);
  const std::vector<Key> on_ssd = StoreOnSsd(*daemon, *client, 2);
  const auto keyring_bytes = ReadFile(paths.keyring);
  REQUIRE(::chmod(paths.key.c_str(), 0644) == 0);
  const std::string refused = Ctl(*daemon, {"rotate-key"}, 1);
  CHECK(Has(refused, "chmod 600"));
  CHECK(ReadFile(paths.keyring) == keyring_bytes);
  REQUIRE(::chmod(paths.key.c_str(), 0600) == 0);
  CHECK(Has(ReadFile(daemon->audit_log_path()), "result=refused"));
  CHECK(ReadAll(*client, on_ssd).verified == on_ssd.size());
}

TEST_CASE("a restart with a new key file keeps the SSD tier with previous_key_file and starts "
          "it empty without",
          "[integration][spill][keys]") {
  for (const bool with_previous : {true, false}) {
    DYNAMIC_SECTION((with_previous ? "with" : "without") << " previous_key_file") {
      SpillPaths paths;
      std::vector<Key> on_ssd;
      {
        auto daemon = DaemonProcess::Start(Options(paths));
        auto client = MustConnect(*daemon);
        on_ssd = StoreOnSsd(*daemon, *client, 3);
        REQUIRE(daemon->Stop() == 0);
      }
      // Rotated while kvtierd was down: the old key kept aside, a new one in its place.
      const fs::path old_key = paths.root.path() / "old.key";
      fs::rename(paths.key, old_key);
      WriteKeyFile(paths.key, RandomKeyHex());
      const std::string toml =
          with_previous ? "previous_key_file = \"" + old_key.string() + "\"\n" : "";
      auto daemon = DaemonProcess::Start(Options(paths, toml));
      auto client = MustConnect(*daemon);
      const ReadCounts back = ReadAll(*client, on_ssd);
      CHECK(back.wrong == 0);  // nothing wrong is ever served
      const std::string log = daemon->Log();
      INFO(log);
      if (with_previous) {
        CHECK(back.verified == on_ssd.size());
        CHECK(Has(log, "re-sealed under the current one"));
        CHECK(Has(log, "The previous key is no longer needed"));
        CHECK(Named(paths.root.path(), "kvtier-test.keyring.unreadable").empty());
        REQUIRE(daemon->Stop() == 0);
        // Once re-sealed, the previous key is not needed (and may be gone).
        fs::remove(old_key);
        auto again = DaemonProcess::Start(Options(paths));
        auto client2 = MustConnect(*again);
        CHECK(ReadAll(*client2, on_ssd).verified == on_ssd.size());
      } else {
        CHECK(back.verified == 0);
        CHECK(back.missing == on_ssd.size());
        CHECK(Has(log, "was sealed under a different master key"));
        CHECK(Has(log, "the SSD tier starts empty"));
        CHECK(Has(log, "previous_key_file"));
        CHECK(Has(log, "not unwrappable with the tenant's keys"));
        const auto aside = Named(paths.root.path(), "kvtier-test.keyring.unreadable-");
        CHECK(aside.size() == 1);
        CHECK(fs::exists(paths.keyring));  // a fresh one
        auto stats = client->Stats();
        REQUIRE(stats.ok());
        CHECK(stats->ssd_only_blocks == 0);
      }
    }
  }
}

// Starts kvtierd by hand (DaemonProcess::Start requires READY=1) with the SSD tier of `paths`
// and `spill_toml`; it must exit with `status` (1: start-up failed; 2: invalid config). Returns
// what it wrote.
std::string StartExpectingFailure(const SpillPaths& paths, const std::string& spill_toml,
                                  int status = 1) {
  const fs::path config = paths.root.path() / "kvtierd.toml";
  {
    std::ofstream out(config);
    out << "config_version = 1\n[daemon]\nrun_dir = \"run\"\n"
        << "default_tenant = \"test\"\n[spill]\ndir = \"" << paths.dir.string()
        << "\"\nkey_file = \"" << paths.key.string() << "\"\nsegment_bytes = \"16MiB\"\n"
        << spill_toml << "[admin]\naudit_log = \"run/audit.log\"\n"
        << "[[tenant]]\nname = \"test\"\ndram_bytes = \"64MiB\"\nssd_bytes = \"512MiB\"\n";
  }
  const fs::path err = paths.root.path() / "stderr";
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, STDERR_FILENO);
    dup2(fd, STDOUT_FILENO);
    execl(KVTIERD_PATH, "kvtierd", "--config", config.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // A regression that lets kvtierd start must fail the test, not hang it: a liveness bound.
  int code = -1;
  if (!WaitUntil([&] {
        int st = 0;
        if (waitpid(pid, &st, WNOHANG) != pid) return false;
        code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return true;
      }, 60000)) {
    kill(pid, SIGKILL);
    WaitChild(pid);
    FAIL("kvtierd started (or hung) although it should have refused to: " << ReadFile(err));
  }
  CHECK(code == status);
  return ReadFile(err);
}

TEST_CASE("a previous key that is set but cannot be read fails the start naming it",
          "[integration][spill][keys]") {
  SpillPaths paths;
  {
    auto daemon = DaemonProcess::Start(Options(paths));
    auto client = MustConnect(*daemon);
    StoreOnSsd(*daemon, *client, 4);
    REQUIRE(daemon->Stop() == 0);
  }
  WriteKeyFile(paths.key, RandomKeyHex());
  const fs::path missing = paths.root.path() / "no-such.key";
  const std::string log =
      StartExpectingFailure(paths, "previous_key_file = \"" + missing.string() + "\"\n");
  INFO(log);
  CHECK(Has(log, "spill.previous_key_file"));
  CHECK(Has(log, "does not exist"));
  // Nothing was moved aside or replaced: with the key fixed, the SSD tier is still there.
  CHECK(Named(paths.root.path(), "kvtier-test.keyring.unreadable").empty());
}

// Stores blocks, copies the tenant's segment files while kvtierd is stopped, starts it again,
// purges the tenant (or not), stops it, puts the copies back and starts it once more.
struct CopyOutcome {
  ReadCounts back;
  std::string log;
  std::string purge_reply;
  std::string audit;
  size_t blocks = 0;
};

CopyOutcome RestoreCopyAfter(bool purge) {
  SpillPaths paths;
  std::vector<Key> on_ssd;
  {
    auto daemon = DaemonProcess::Start(Options(paths));
    auto client = MustConnect(*daemon);
    on_ssd = StoreOnSsd(*daemon, *client, 5);
    REQUIRE(daemon->Stop() == 0);
  }
  const fs::path tenant_dir = paths.dir / "test";
  const fs::path copy = paths.root.path() / "copy";
  fs::create_directory(copy);
  size_t copied = 0;
  for (const fs::path& seg : Named(tenant_dir, "seg-")) {
    fs::copy_file(seg, copy / seg.filename());
    ++copied;
  }
  REQUIRE(copied > 0);
  CopyOutcome outcome;
  outcome.blocks = on_ssd.size();
  {
    auto daemon = DaemonProcess::Start(Options(paths));
    if (purge) {
      outcome.purge_reply = Ctl(*daemon, {"purge", "test"});
      outcome.audit = ReadFile(daemon->audit_log_path());
    }
    REQUIRE(daemon->Stop() == 0);
  }
  for (const fs::path& seg : Named(tenant_dir, "seg-")) fs::remove(seg);
  for (const fs::path& seg : Named(copy, "seg-")) fs::copy_file(seg, tenant_dir / seg.filename());
  auto daemon = DaemonProcess::Start(Options(paths));
  auto client = MustConnect(*daemon);
  outcome.back = ReadAll(*client, on_ssd);
  outcome.log = daemon->Log();
  return outcome;
}

TEST_CASE("a purge revokes copies of the spill directory taken before it",
          "[integration][spill][keys]") {
  SECTION("restored after a purge: nothing is served and recovery names the key") {
    const CopyOutcome o = RestoreCopyAfter(/*purge=*/true);
    INFO(o.log);
    CHECK(o.back.verified == 0);
    CHECK(o.back.wrong == 0);
    CHECK(o.back.missing == o.blocks);
    CHECK(Has(o.purge_reply, "key_epoch"));
    CHECK(Has(o.audit, "key_epoch=2"));
    CHECK(Has(o.log, "were wrapped under a tenant key the keyring does not hold"));
    CHECK(Has(o.log, "tenant key epoch 2"));
    CHECK_FALSE(Has(o.log, "(0 not unwrappable"));
  }
  SECTION("the same without the purge serves every block (the control)") {
    const CopyOutcome o = RestoreCopyAfter(/*purge=*/false);
    INFO(o.log);
    CHECK(o.back.verified == o.blocks);
    CHECK(o.back.wrong == 0);
    CHECK(Has(o.log, "tenant key epoch 1"));
  }
}

TEST_CASE("after a purge new blocks use the new key and survive a restart",
          "[integration][spill][keys]") {
  SpillPaths paths;
  std::vector<Key> after;
  {
    auto daemon = DaemonProcess::Start(Options(paths));
    auto client = MustConnect(*daemon);
    StoreOnSsd(*daemon, *client, 6);
    const std::string reply = Ctl(*daemon, {"purge", "test"});
    CHECK(Has(reply, "key_epoch"));
    auto fresh = MustConnect(*daemon);
    after = StoreOnSsd(*daemon, *fresh, 7);
    REQUIRE(daemon->Stop() == 0);
  }
  auto daemon = DaemonProcess::Start(Options(paths));
  auto client = MustConnect(*daemon);
  const ReadCounts back = ReadAll(*client, after);
  CHECK(back.verified == after.size());
  CHECK(Has(daemon->Log(), "tenant key epoch 2"));
  CHECK_FALSE(Has(daemon->Log(), "were wrapped under a tenant key the keyring does not hold"));
}

TEST_CASE("a lost keyring is a cold start of the SSD tier", "[integration][spill][keys]") {
  SpillPaths paths;
  std::vector<Key> on_ssd;
  {
    auto daemon = DaemonProcess::Start(Options(paths));
    auto client = MustConnect(*daemon);
    on_ssd = StoreOnSsd(*daemon, *client, 8);
    REQUIRE(daemon->Stop() == 0);
  }
  fs::remove(paths.keyring);
  auto daemon = DaemonProcess::Start(Options(paths));
  auto client = MustConnect(*daemon);
  const ReadCounts back = ReadAll(*client, on_ssd);
  INFO(daemon->Log());
  CHECK(back.verified == 0);
  CHECK(back.wrong == 0);
  CHECK(Has(daemon->Log(), "no keyring at"));
  CHECK(fs::exists(paths.keyring));
}

TEST_CASE("segments written before the keyring existed are served after the upgrade",
          "[integration][spill][keys]") {
  SpillPaths paths;
  fs::create_directory(paths.dir);
  REQUIRE(::chmod(paths.dir.c_str(), 0700) == 0);
  WriteKeyFile(paths.key, RandomKeyHex());
  // As the previous kvtier wrote them: tenant key = HKDF(master, "tenant-key:test").
  const pid_t pid = fork();
  if (pid == 0) {
    execl(KVT_LEGACY_SPILL_PATH, "kvt-legacy-spill", paths.dir.c_str(), paths.key.c_str(),
          "test", "spill", "9", "40", std::to_string(kMiB).c_str(),
          std::to_string(16 * kMiB).c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  REQUIRE(WaitChild(pid) == 0);
  REQUIRE_FALSE(fs::exists(paths.keyring));
  const std::vector<Key> keys = TestKeys(9, 40);
  {
    auto daemon = DaemonProcess::Start(Options(paths));
    auto client = MustConnect(*daemon);
    const std::string log = daemon->Log();
    INFO(log);
    CHECK(Has(log, "no keyring at"));
    CHECK(Has(log, "1 with segments from before the keyring"));
    const ReadCounts back = ReadAll(*client, keys);
    CHECK(back.verified == keys.size());
    CHECK(back.wrong == 0);
    // New blocks go into segments under the keyring's random key.
    StoreOnSsd(*daemon, *client, 10);
    REQUIRE(daemon->Stop() == 0);
  }
  {
    // The old segments still need the epoch-0 key: it is kept.
    auto daemon = DaemonProcess::Start(Options(paths));
    auto client = MustConnect(*daemon);
    INFO(daemon->Log());
    CHECK(Has(daemon->Log(), "read with the epoch-0 (derived) key"));
    const ReadCounts back = ReadAll(*client, keys);
    CHECK(back.verified == keys.size());
    CHECK(back.wrong == 0);
    // A purge retires the epoch-0 key with the rest.
    Ctl(*daemon, {"purge", "test"});
    REQUIRE(daemon->Stop() == 0);
  }
  auto daemon = DaemonProcess::Start(Options(paths));
  CHECK_FALSE(Has(daemon->Log(), "epoch-0"));
  CHECK(Has(daemon->Log(), "tenant key epoch 2"));
}

TEST_CASE("a keyring open to others or a symlink at its path stops the start",
          "[integration][spill][keys]") {
  SpillPaths paths;
  {
    auto daemon = DaemonProcess::Start(Options(paths));
    REQUIRE(daemon->Stop() == 0);
  }
  REQUIRE(::chmod(paths.keyring.c_str(), 0644) == 0);
  std::string log = StartExpectingFailure(paths, "");
  CHECK(Has(log, "spill.keyring_file"));
  CHECK(Has(log, "chmod 600"));
  REQUIRE(::chmod(paths.keyring.c_str(), 0600) == 0);
  const fs::path real = paths.root.path() / "real.keyring";
  fs::rename(paths.keyring, real);
  fs::create_symlink(real, paths.keyring);
  log = StartExpectingFailure(paths, "");
  CHECK(Has(log, "symlink"));
  // Neither was replaced or moved aside.
  CHECK(fs::is_symlink(paths.keyring));
  CHECK(Named(paths.root.path(), "kvtier-test.keyring.unreadable").empty());
}

TEST_CASE("a keyring inside the spill directory is refused by the config check",
          "[integration][spill][keys]") {
  SpillPaths paths;
  const std::string log = StartExpectingFailure(
      paths, "keyring_file = \"" + (paths.dir / "keyring").string() + "\"\n", /*status=*/2);
  CHECK(Has(log, "is inside spill.dir"));
  CHECK_FALSE(fs::exists(paths.dir / "keyring"));
}

}  // namespace
}  // namespace kvtier::testing
