// Restarts that keep the DRAM tier: a clean stop hands the pools and an index snapshot to the
// service manager's fd store, and the next kvtierd serves the same blocks at once. The tests
// play systemd: they collect the FDSTORE=1 fds from the notify socket and pass them to the next
// daemon as LISTEN_FDS, as a unit with FileDescriptorStoreMax= gets them.
#include <signal.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
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
  auto c = Client::Connect({.socket_path = d.socket_path(), .name_space = "warm"});
  if (!c.ok()) FAIL("connect: " << c.status().ToString());
  return std::move(*c);
}

struct Served {
  size_t exact = 0;
  size_t missing = 0;
  size_t wrong = 0;
};

// Reads every key back; also checks that every byte of the pool outside the blocks found is
// zero (nothing of the previous process shows but the blocks it kept).
Served ReadBack(Client& client, const std::vector<Key>& keys, bool check_rest_zero = true) {
  Served s;
  auto leases = client.Acquire(keys);
  REQUIRE(leases.ok());
  const std::span<std::byte> pool = client.pool();
  std::vector<bool> covered(pool.size() / 4096, false);
  for (size_t i = 0; i < keys.size(); ++i) {
    if (leases->code(i) != StatusCode::kOk) {
      ++s.missing;
      continue;
    }
    const std::span<const std::byte> data = leases->data(i);
    if (VerifyBlock(keys[i], data)) {
      ++s.exact;
    } else {
      ++s.wrong;
    }
    const auto first = static_cast<size_t>(data.data() - pool.data()) / 4096;
    for (size_t p = first; p < first + (data.size() + 4095) / 4096; ++p) covered[p] = true;
  }
  if (check_rest_zero) {
    size_t dirty_pages = 0;
    for (size_t p = 0; p < covered.size(); ++p) {
      if (covered[p]) continue;
      const std::span<const std::byte> page = pool.subspan(p * 4096, 4096);
      dirty_pages += std::any_of(page.begin(), page.end(), [](std::byte b) {
        return b != std::byte{0};
      });
    }
    CHECK(dirty_pages == 0);
  }
  return s;
}

bool HasFd(const std::vector<StoredFd>& fds, const std::string& name) {
  return std::any_of(fds.begin(), fds.end(), [&](const StoredFd& f) { return f.name == name; });
}

TEST_CASE("a clean restart hands the DRAM tier over and the next kvtierd serves it byte for byte",
          "[integration][warm-restart]") {
  DaemonOptions o;
  o.dram_bytes = 64 * kMiB;
  const std::vector<Key> kept = TestKeys(1, 24);
  const std::vector<Key> removed = TestKeys(2, 4);
  const std::vector<Key> uncommitted = TestKeys(3, 4);
  std::vector<StoredFd> fds;
  {
    auto daemon = DaemonProcess::Start(o);
    auto client = Connect(*daemon);
    StoreBlocks(*client, kept, kMiB);
    StoreBlocks(*client, removed, kMiB);
    REQUIRE(client->Remove(removed).ok());
    // A reservation written but never committed: its bytes must not come back either.
    auto pending = client->Reserve(uncommitted, std::vector<uint64_t>(uncommitted.size(), kMiB));
    REQUIRE(pending.ok());
    for (size_t i = 0; i < uncommitted.size(); ++i) FillBlock(uncommitted[i], pending->data(i));
    REQUIRE(daemon->Stop() == 0);
    fds = daemon->TakeStoredFds();
    CHECK_THAT(daemon->Log(), Catch::Contains("handed 1 tenant pool(s) and the index"));
  }
  REQUIRE(fds.size() == 2);
  CHECK(HasFd(fds, "kvtier-index"));
  CHECK(HasFd(fds, "kvtier-pool-test"));

  auto daemon = DaemonProcess::Start(o, std::move(fds));
  CHECK_THAT(daemon->Log(), Catch::Contains("tenant 'test': kept 24 DRAM blocks (24MiB)"));
  auto client = Connect(*daemon);
  const Served back = ReadBack(*client, kept);
  CHECK(back.exact == kept.size());
  CHECK(back.wrong == 0);
  CHECK(*client->MatchPrefix(removed) == 0);
  CHECK(*client->MatchPrefix(uncommitted) == 0);
  const auto stats = client->Stats();
  REQUIRE(stats.ok());
  CHECK(stats->committed_blocks == kept.size());
  CHECK(stats->used_bytes == kept.size() * kMiB);
  // The pool goes on as usual: the freed space is usable, and a new block reads back.
  const std::vector<Key> fresh = TestKeys(4, 32);
  StoreBlocks(*client, fresh, kMiB);
  CHECK(ReadBack(*client, fresh, false).exact == fresh.size());
  // And a second restart keeps the blocks again, the new ones included.
  REQUIRE(daemon->Stop() == 0);
  auto again = DaemonProcess::Start(o, daemon->TakeStoredFds());
  auto c2 = Connect(*again);
  CHECK(ReadBack(*c2, fresh, false).exact == fresh.size());
  CHECK(ReadBack(*c2, kept, false).exact == kept.size());
}

TEST_CASE("a restart drops kept blocks that no longer fit the config and zeroes what they held",
          "[integration][warm-restart]") {
  DaemonOptions o;
  o.dram_bytes = 32 * kMiB;
  o.more_tenants.push_back({"other", {4242}, 16 * kMiB});
  const std::vector<Key> keys = TestKeys(5, 8);
  std::vector<StoredFd> fds;
  {
    auto daemon = DaemonProcess::Start(o);
    StoreBlocks(*Connect(*daemon), keys, kMiB);
    REQUIRE(daemon->Stop() == 0);
    fds = daemon->TakeStoredFds();
  }
  REQUIRE(fds.size() == 3);  // two pools and the index
  DaemonOptions next = o;
  std::string expect;
  SECTION("the tenant's pool size changed") {
    next.dram_bytes = 48 * kMiB;
    expect = "tenant 'test': dropped its kept DRAM blocks: dram_bytes changed";
  }
  SECTION("the slab size changed") {
    next.slab_bytes = 4 * kMiB;
    next.max_block_bytes = 4 * kMiB;
    expect = "slab_bytes changed";
  }
  SECTION("a tenant left the config") {
    next.more_tenants.clear();
    expect = "tenant 'other': dropped its kept DRAM blocks: it is no longer in the config";
  }
  auto daemon = DaemonProcess::Start(next, std::move(fds));
  INFO(daemon->Log());
  CHECK_THAT(daemon->Log(), Catch::Contains(expect));
  auto client = Connect(*daemon);
  const Served back = ReadBack(*client, keys);
  CHECK(back.wrong == 0);
  if (next.dram_bytes != o.dram_bytes || next.slab_bytes != o.slab_bytes) {
    CHECK(back.missing == keys.size());
  } else {
    CHECK(back.exact == keys.size());  // the tenant that stayed keeps its blocks
  }
}

// Copies a sealed memfd into a fresh one with the byte at `offset` flipped.
int CorruptCopy(int fd, size_t offset) {
  const off_t size = lseek(fd, 0, SEEK_END);
  std::vector<char> bytes(static_cast<size_t>(size));
  REQUIRE(pread(fd, bytes.data(), bytes.size(), 0) == size);
  bytes[offset] = static_cast<char>(bytes[offset] ^ 0x40);
  const int copy = memfd_create("kvtier-index", MFD_CLOEXEC);
  REQUIRE(write(copy, bytes.data(), bytes.size()) == size);
  return copy;
}

// A copy of the snapshot in `fd` (closed) changed by `change`, with its SHA-256 recomputed
// (sha256sum, from coreutils), as only someone forging it could make it.
int Forge(int fd, const std::function<void(std::vector<char>&)>& change) {
  const off_t size = lseek(fd, 0, SEEK_END);
  std::vector<char> bytes(static_cast<size_t>(size));
  REQUIRE(pread(fd, bytes.data(), bytes.size(), 0) == size);
  close(fd);
  change(bytes);
  TempDir t;
  const auto body = t.path() / "body";
  std::ofstream(body, std::ios::binary).write(bytes.data() + 64, size - 64);
  FILE* p = popen(("sha256sum " + body.string()).c_str(), "r");
  REQUIRE(p != nullptr);
  char hex[65] = {};
  REQUIRE(std::fread(hex, 1, 64, p) == 64);
  pclose(p);
  for (size_t i = 0; i < 32; ++i) {
    bytes[32 + i] = static_cast<char>(std::stoi(std::string(hex + 2 * i, 2), nullptr, 16));
  }
  const int forged = memfd_create("kvtier-index", MFD_CLOEXEC);
  REQUIRE(write(forged, bytes.data(), bytes.size()) == size);
  return forged;
}

TEST_CASE("a corrupted or unknown index snapshot drops the kept DRAM tier loudly",
          "[integration][warm-restart]") {
  DaemonOptions o;
  const std::vector<Key> keys = TestKeys(6, 8);
  std::vector<StoredFd> fds;
  {
    auto daemon = DaemonProcess::Start(o);
    StoreBlocks(*Connect(*daemon), keys, kMiB);
    REQUIRE(daemon->Stop() == 0);
    fds = daemon->TakeStoredFds();
  }
  auto index = std::find_if(fds.begin(), fds.end(),
                            [](const StoredFd& f) { return f.name == "kvtier-index"; });
  REQUIRE(index != fds.end());
  std::string expect;
  SECTION("a flipped bit in a block record") {
    const int bad = CorruptCopy(index->fd, 64 + 64 + 8 + 40);  // past header, tenant, namespace
    close(index->fd);
    index->fd = bad;
    expect = "dropped the kept DRAM tier (1 pool(s)): index snapshot: checksum mismatch";
  }
  SECTION("another format version") {
    const int bad = CorruptCopy(index->fd, 8);  // the version's low byte
    close(index->fd);
    index->fd = bad;
    expect = "index snapshot: format version";
  }
  // Block records start after the 64-byte header, the 64-byte tenant record and the namespace
  // ("warm", with its 4-byte length); each is 72 bytes, its offset at byte 40.
  const size_t first = 64 + 64 + 8;
  SECTION("a checksum that matches a record outside the pool") {
    index->fd = Forge(index->fd, [&](std::vector<char>& bytes) {
      const uint64_t outside = 1ull << 40;
      std::memcpy(&bytes[first + 40], &outside, 8);
    });
    // One lie and the daemon trusts none of it.
    expect = "tenant 'test': the index snapshot is inconsistent (block 0 (1048576 bytes at "
             "offset 1099511627776) is outside the pool";
  }
  SECTION("a checksum that matches two records on one slot") {
    index->fd = Forge(index->fd, [&](std::vector<char>& bytes) {
      std::memcpy(&bytes[first + 2 * 72 + 40], &bytes[first + 72 + 40], 8);  // 2 on top of 1
    });
    expect = "tenant 'test': the index snapshot is inconsistent (block 2";
  }
  SECTION("no index at all") {
    close(index->fd);
    fds.erase(index);
    expect = "dropped the kept DRAM tier (1 pool(s)): no index snapshot came with them";
  }
  auto daemon = DaemonProcess::Start(o, std::move(fds));
  CHECK_THAT(daemon->Log(), Catch::Contains(expect));
  auto client = Connect(*daemon);
  const Served back = ReadBack(*client, keys);  // and every byte no block holds is zero
  CHECK(back.missing == keys.size());
  CHECK(back.wrong == 0);
}

TEST_CASE("a purge before the stop leaves nothing to keep", "[integration][warm-restart]") {
  DaemonOptions o;
  const std::vector<Key> keys = TestKeys(7, 8);
  auto daemon = DaemonProcess::Start(o);
  StoreBlocks(*Connect(*daemon), keys, kMiB);
  std::string out;
  REQUIRE(RunCtl(*daemon, {"purge", "test"}, &out) == 0);
  REQUIRE(daemon->Stop() == 0);
  auto next = DaemonProcess::Start(o, daemon->TakeStoredFds());
  CHECK_THAT(next->Log(), Catch::Contains("tenant 'test': kept 0 DRAM blocks"));
  auto client = Connect(*next);
  const Served back = ReadBack(*client, keys);
  CHECK(back.missing == keys.size());
}

// Duplicates of what a daemon stored, as a service manager that keeps every fd it ever passed
// (one without FDSTOREREMOVE) would hand over again.
std::vector<StoredFd> Dup(const std::vector<StoredFd>& fds) {
  std::vector<StoredFd> out;
  for (const StoredFd& f : fds) out.push_back({f.name, fcntl(f.fd, F_DUPFD_CLOEXEC, 3)});
  return out;
}

TEST_CASE("a crash after taking the DRAM tier over never lets its old snapshot be served again",
          "[integration][warm-restart]") {
  DaemonOptions o;
  const std::vector<Key> first = TestKeys(10, 16);
  const std::vector<Key> second = TestKeys(11, 16);
  std::vector<StoredFd> fds;
  {
    auto daemon = DaemonProcess::Start(o);
    StoreBlocks(*Connect(*daemon), first, kMiB);
    REQUIRE(daemon->Stop() == 0);
    fds = daemon->TakeStoredFds();
  }
  const std::vector<StoredFd> again = Dup(fds);
  // The next process takes them over, moves on (removes some blocks, stores others in their
  // slots) and dies without a clean stop.
  auto daemon = DaemonProcess::Start(o, std::move(fds));
  {
    auto client = Connect(*daemon);
    REQUIRE(client->Remove(std::vector<Key>(first.begin(), first.begin() + 8)).ok());
    StoreBlocks(*client, second, kMiB);
  }
  REQUIRE(kill(daemon->pid(), SIGKILL) == 0);
  CHECK(daemon->Stop() == -SIGKILL);
  SECTION("systemd's store holds nothing of it any more (FDSTOREREMOVE at the start)") {
    const std::vector<StoredFd> left = daemon->TakeStoredFds();
    CHECK(left.empty());
    for (const StoredFd& f : again) close(f.fd);
    auto next = DaemonProcess::Start(o, {});
    auto client = Connect(*next);
    CHECK(ReadBack(*client, first).missing == first.size());
  }
  SECTION("and a store that passed the old snapshot again gets it refused (burned at the start)") {
    for (StoredFd& f : daemon->TakeStoredFds()) close(f.fd);
    auto next = DaemonProcess::Start(o, again);
    CHECK_THAT(next->Log(),
               Catch::Contains("already taken over by an earlier start (a snapshot serves one"));
    auto client = Connect(*next);
    const Served back = ReadBack(*client, first);
    CHECK(back.missing == first.size());
    CHECK(back.wrong == 0);
    CHECK(ReadBack(*client, second).missing == second.size());
  }
}

TEST_CASE("with zero_freed off a kept pool is still zeroed wherever no kept block is",
          "[integration][warm-restart][secure-deletion]") {
  DaemonOptions o;
  o.zero_freed = false;
  const std::vector<Key> kept = TestKeys(12, 8);
  const std::vector<Key> pending = TestKeys(13, 8);
  std::vector<StoredFd> fds;
  {
    auto daemon = DaemonProcess::Start(o);
    auto client = Connect(*daemon);
    StoreBlocks(*client, kept, 3 * kMiB / 2);  // 1.5 MiB blocks in 2 MiB slots: tails too
    auto r = client->Reserve(pending, std::vector<uint64_t>(pending.size(), kMiB));
    REQUIRE(r.ok());
    for (size_t i = 0; i < pending.size(); ++i) FillBlock(pending[i], r->data(i));
    // The slots' tails past each kept block, written through the pool mapping.
    for (size_t i = 0; i < kept.size(); ++i) {
      auto leases = client->Acquire(std::vector<Key>{kept[i]});
      REQUIRE(leases.ok());
      const auto at = static_cast<size_t>(leases->data(0).data() - client->pool().data());
      std::memset(client->pool().data() + at + 3 * kMiB / 2, 0x5a, kMiB / 2);
    }
    REQUIRE(daemon->Stop() == 0);
    fds = daemon->TakeStoredFds();
  }
  auto daemon = DaemonProcess::Start(o, std::move(fds));
  auto client = Connect(*daemon);
  const Served back = ReadBack(*client, kept);  // also: every other byte of the pool is zero
  CHECK(back.exact == kept.size());
}

TEST_CASE("a restart with an SSD tier keeps DRAM copies and DRAM-only blocks and the SSD ones",
          "[integration][warm-restart][spill]") {
  TempDir state;
  DaemonOptions o;
  o.dram_bytes = 32 * kMiB;
  o.spill_dir = state.path() / "spill";
  o.ssd_bytes = 256 * kMiB;
  const std::vector<Key> keys = TestKeys(8, 96);  // 96 MiB through 32 MiB of DRAM
  std::vector<StoredFd> fds;
  uint64_t in_dram = 0;
  {
    auto daemon = DaemonProcess::Start(o);
    auto client = Connect(*daemon);
    for (size_t at = 0; at < keys.size(); at += 8) {
      StoreBlocks(*client, std::vector<Key>(keys.begin() + static_cast<std::ptrdiff_t>(at),
                                      keys.begin() + static_cast<std::ptrdiff_t>(at + 8)),
            kMiB);
    }
    const auto stats = client->Stats();
    REQUIRE(stats.ok());
    in_dram = stats->committed_blocks - stats->ssd_only_blocks;
    REQUIRE(in_dram > 0);
    REQUIRE(daemon->Stop() == 0);
    fds = daemon->TakeStoredFds();
  }
  auto daemon = DaemonProcess::Start(o, std::move(fds));
  INFO(daemon->Log());
  CHECK_THAT(daemon->Log(), Catch::Contains("tenant 'test': kept " + std::to_string(in_dram) +
                                            " DRAM blocks"));
  auto client = Connect(*daemon);
  const auto stats = client->Stats();
  REQUIRE(stats.ok());
  CHECK(stats->committed_blocks - stats->ssd_only_blocks == in_dram);
  // Every block is served exactly, from DRAM at once or from SSD; none is lost or wrong.
  size_t exact = 0, wrong = 0, missing = 0;
  for (size_t at = 0; at < keys.size(); at += 8) {
    {
      auto probe = client->Acquire(std::vector<Key>(keys.begin() + static_cast<std::ptrdiff_t>(at),
                                  keys.begin() + static_cast<std::ptrdiff_t>(at + 8)));
      if (!probe.ok()) {
        std::string out;
        RunCtl(*daemon, {"--json", "stats"}, &out);
        FAIL(probe.status().ToString() << "\n" << out << "\n" << daemon->Log());
      }
    }
    const Served s =
        ReadBack(*client,
                 std::vector<Key>(keys.begin() + static_cast<std::ptrdiff_t>(at),
                                  keys.begin() + static_cast<std::ptrdiff_t>(at + 8)),
                 false);
    exact += s.exact;
    wrong += s.wrong;
    missing += s.missing;
  }
  CHECK(wrong == 0);
  CHECK(exact + missing == keys.size());
  CHECK(exact == keys.size());
}

TEST_CASE("a client whose kvtierd restarts gets unavailable at once and a new session the kept blocks",
          "[integration][warm-restart]") {
  DaemonOptions o;
  const std::vector<Key> kept = TestKeys(9, 8);
  auto daemon = DaemonProcess::Start(o);
  StoreBlocks(*Connect(*daemon), kept, kMiB);
  int ready[2];
  REQUIRE(pipe(ready) == 0);
  // A client in a loop, with a timeout far beyond the test's bound: what ends its loop is the
  // daemon going away, not the timeout.
  const pid_t child = SpawnChild([&] {
    close(ready[0]);
    auto c = Client::Connect(
        {.socket_path = daemon->socket_path(), .name_space = "warm", .timeout_ms = 600000});
    if (!c.ok()) return 10;
    auto held = (*c)->Acquire(kept);
    if (!held.ok() || held->prefix() != kept.size()) return 11;
    (void)!write(ready[1], "r", 1);
    for (uint64_t round = 0;; ++round) {
      auto leases = (*c)->Acquire(kept);
      if (leases.ok()) continue;
      // The daemon went away: unavailable, naming kvtierd; the lease held across it is revoked,
      // and its mapping still reads (the old pool, never unmapped under the caller).
      if (leases.status().code() != StatusCode::kUnavailable) return 12;
      if (leases.status().message().find("kvtierd") == std::string::npos) {
        std::fprintf(stderr, "unavailable without naming kvtierd: %s\n", leases.status().ToString().c_str());
        return 13;
      }
      if ((*c)->VerifyLeases().ok()) return 14;
      volatile std::byte first = held->data(0)[0];
      (void)first;
      // Later calls fail at once the same way.
      if ((*c)->Stats().status().code() != StatusCode::kUnavailable) return 15;
      return 0;
    }
  });
  close(ready[1]);
  char byte;
  REQUIRE(read(ready[0], &byte, 1) == 1);
  close(ready[0]);
  REQUIRE(daemon->Stop() == 0);
  int code = -1;
  REQUIRE(WaitUntil([&] {
    siginfo_t info{};
    if (waitid(P_PID, static_cast<id_t>(child), &info, WEXITED | WNOHANG) != 0 ||
        info.si_pid != child) {
      return false;
    }
    code = info.si_code == CLD_EXITED ? info.si_status : 128 + info.si_status;
    return true;
  }));
  CHECK(code == 0);
  auto next = DaemonProcess::Start(o, daemon->TakeStoredFds());
  auto client = Connect(*next);
  CHECK(ReadBack(*client, kept).exact == kept.size());
}

}  // namespace
}  // namespace kvtier::testing
