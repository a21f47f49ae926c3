// Tenant isolation with real uids: child processes drop to other uids (setresuid) and act as
// tenants "a" and "b" of one daemon. Equal keys in two tenants never meet; one tenant cannot
// read, release or see the other's blocks, pool or leases; a tenant's own quota binds only it.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

constexpr uid_t kUidA = 41001;
constexpr uid_t kUidB = 41002;
constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kSizeA = 256 * kKiB;  // equal keys, different sizes: different bytes
constexpr uint64_t kSizeB = 128 * kKiB;

std::unique_ptr<DaemonProcess> StartTwoTenants() {
  DaemonOptions options;
  options.default_tenant = false;
  options.tenant_uids = {getuid()};
  options.socket_mode = "0666";  // any uid may connect; the tenant map decides who it is
  options.more_tenants = {{"a", {kUidA}, 32 * kMiB}, {"b", {kUidB}, 16 * kMiB}};
  auto daemon = DaemonProcess::Start(options);
  REQUIRE(chmod(daemon->dir().c_str(), 0755) == 0);
  return daemon;
}

// In a child: becomes `uid` and connects in namespace "shared"; nullptr on failure.
std::unique_ptr<Client> ConnectAs(const DaemonProcess& daemon, uid_t uid) {
  if (setresgid(uid, uid, uid) != 0 || setresuid(uid, uid, uid) != 0) return nullptr;
  auto c = Client::Connect({.socket_path = daemon.socket_path(), .name_space = "shared"});
  return c.ok() ? std::move(*c) : nullptr;
}

std::vector<Key> SharedKeys() {
  std::vector<Key> keys;
  for (uint64_t i = 0; i < 8; ++i) keys.push_back(TestKey(77, i));
  return keys;
}

// Stores `keys` at `size`; 0 or a step number.
int StoreKeys(Client& client, const std::vector<Key>& keys, uint64_t size) {
  auto batch = client.Reserve(keys, std::vector<uint64_t>(keys.size(), size));
  if (!batch.ok()) return 20;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (batch->code(i) != StatusCode::kOk) return 21;
    FillBlock(keys[i], batch->data(i));
  }
  return batch->Commit().ok() ? 0 : 22;
}

// Every key present, with exactly its owner's bytes at `size`.
int VerifyKeys(Client& client, const std::vector<Key>& keys, uint64_t size) {
  auto leases = client.Acquire(keys);
  if (!leases.ok()) return 30;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (leases->code(i) != StatusCode::kOk) return 31;
    if (leases->data(i).size() != size || !VerifyBlock(keys[i], leases->data(i))) return 32;
  }
  return 0;
}

TEST_CASE("equal keys in two tenants never meet, and neither sees the other's bytes",
          "[integration][tenancy]") {
  auto daemon = StartTwoTenants();
  const std::vector<Key> keys = SharedKeys();
  // Tenant a stores the keys and leaves.
  CHECK(RunInChild([&] {
          auto a = ConnectAs(*daemon, kUidA);
          if (!a) return 10;
          if (a->tenant() != "a" || a->pool().size() != 32 * kMiB) return 11;
          return StoreKeys(*a, keys, kSizeA);
        }) == 0);
  // Tenant b: same namespace, same keys: nothing there; it stores its own, and its whole pool
  // never holds a byte pattern of a's blocks.
  CHECK(RunInChild([&] {
          auto b = ConnectAs(*daemon, kUidB);
          if (!b) return 10;
          if (b->tenant() != "b" || b->pool().size() != 16 * kMiB) return 11;
          auto matched = b->MatchPrefix(keys);
          if (!matched.ok() || *matched != 0) return 12;
          auto leases = b->Acquire(keys);
          if (!leases.ok()) return 13;
          for (size_t i = 0; i < keys.size(); ++i) {
            if (leases->code(i) != StatusCode::kNotFound) return 14;
          }
          if (int step = StoreKeys(*b, keys, kSizeB); step != 0) return step;
          if (int step = VerifyKeys(*b, keys, kSizeB); step != 0) return step;
          std::vector<std::byte> a_block(kSizeA);
          FillBlock(keys[0], a_block);
          const std::span<std::byte> pool = b->pool();
          const auto found = std::search(pool.begin(), pool.end(), a_block.begin(),
                                         a_block.begin() + 64);
          return found == pool.end() ? 0 : 15;
        }) == 0);
  // Tenant a still has exactly its own blocks.
  CHECK(RunInChild([&] {
          auto a = ConnectAs(*daemon, kUidA);
          if (!a) return 10;
          return VerifyKeys(*a, keys, kSizeA);
        }) == 0);
}

TEST_CASE("a tenant cannot release another tenant's leases, even with their exact ids",
          "[integration][tenancy]") {
  auto daemon = StartTwoTenants();
  const std::vector<Key> keys = SharedKeys();
  int to_b[2];
  int to_a[2];
  REQUIRE(pipe(to_b) == 0);
  REQUIRE(pipe(to_a) == 0);
  // a holds leases and hands their ids over; b tries them; then a checks they still hold.
  const pid_t a = SpawnChild([&] {
    auto client = ConnectAs(*daemon, kUidA);
    if (!client) return 10;
    if (int step = StoreKeys(*client, keys, kSizeA); step != 0) return step;
    std::vector<LeaseInfo> infos(keys.size());
    if (!client->AcquireRaw(keys, infos).ok()) return 40;
    std::vector<uint64_t> ids;
    for (const LeaseInfo& info : infos) ids.push_back(info.lease_id);
    const auto bytes = static_cast<ssize_t>(ids.size() * sizeof(uint64_t));
    if (write(to_b[1], ids.data(), ids.size() * sizeof(uint64_t)) != bytes) return 41;
    char done = 0;
    if (read(to_a[0], &done, 1) != 1) return 42;
    std::vector<StatusCode> codes(ids.size());
    if (!client->ReleaseRaw(ids, codes).ok()) return 43;  // each still a live lease of a's
    return 0;
  });
  // Only the child keeps these ends: if it fails early, the reads below see end of file.
  close(to_b[1]);
  close(to_a[0]);
  std::vector<uint64_t> ids(keys.size());
  const bool got_ids = read(to_b[0], ids.data(), ids.size() * sizeof(uint64_t)) ==
                       static_cast<ssize_t>(ids.size() * sizeof(uint64_t));
  CHECK(got_ids);
  if (got_ids) {
    const int b = RunInChild([&] {
      auto client = ConnectAs(*daemon, kUidB);
      if (!client) return 10;
      std::vector<StatusCode> codes(ids.size());
      (void)client->ReleaseRaw(ids, codes);
      for (StatusCode code : codes) {
        if (code != StatusCode::kNotFound) return 50;
      }
      return 0;
    });
    CHECK(b == 0);
  }
  CHECK(write(to_a[1], "x", 1) == 1);
  close(to_a[1]);
  close(to_b[0]);
  CHECK(WaitChild(a) == 0);
}

TEST_CASE("a tenant that fills its own pool evicts only its own blocks",
          "[integration][tenancy]") {
  auto daemon = StartTwoTenants();
  const std::vector<Key> keys = SharedKeys();
  CHECK(RunInChild([&] {
          auto a = ConnectAs(*daemon, kUidA);
          return a ? StoreKeys(*a, keys, kSizeA) : 10;
        }) == 0);
  // b writes 64 MiB through its 16 MiB pool: its own blocks are evicted, a's are not.
  CHECK(RunInChild([&] {
          auto b = ConnectAs(*daemon, kUidB);
          if (!b) return 10;
          for (uint64_t round = 0; round < 16; ++round) {
            std::vector<Key> batch;
            for (uint64_t i = 0; i < 4; ++i) batch.push_back(TestKey(88, round * 4 + i));
            if (int step = StoreKeys(*b, batch, kMiB); step != 0) return step;
          }
          auto stats = b->Stats();
          if (!stats.ok() || stats->evictions == 0) return 60;
          return 0;
        }) == 0);
  CHECK(RunInChild([&] {
          auto a = ConnectAs(*daemon, kUidA);
          if (!a) return 10;
          auto stats = a->Stats();
          if (!stats.ok() || stats->evictions != 0) return 61;
          return VerifyKeys(*a, keys, kSizeA);
        }) == 0);
}

TEST_CASE("a tenant's quota is hard: past it a reserve is refused, naming the quota",
          "[integration][tenancy]") {
  auto daemon = StartTwoTenants();
  // b leases its whole 16 MiB pool, so nothing of it can be evicted, then asks for more.
  CHECK(RunInChild([&] {
          auto b = ConnectAs(*daemon, kUidB);
          if (!b) return 10;
          std::vector<Key> keys;
          for (uint64_t i = 0; i < 8; ++i) keys.push_back(TestKey(99, i));
          if (int step = StoreKeys(*b, keys, 2 * kMiB); step != 0) return step;
          auto leases = b->Acquire(keys);
          if (!leases.ok()) return 40;
          const Key extra = TestKey(99, 100);
          const uint64_t size = 2 * kMiB;
          auto more = b->Reserve(std::span(&extra, 1), std::span(&size, 1));
          if (!more.ok() || more->code(0) != StatusCode::kResourceExhausted) return 41;
          // Which quota, and by how much: the pool's size and the block that did not fit.
          const std::string& why = more->refusal();
          if (why.find("tenant 'b'") != 0 || why.find("16777216") == std::string::npos ||
              why.find("2097152") == std::string::npos) {
            return 42;
          }
          return 0;
        }) == 0);
  // a's quota is its own: it stores 24 MiB, more than b's whole pool.
  CHECK(RunInChild([&] {
          auto a = ConnectAs(*daemon, kUidA);
          if (!a) return 10;
          std::vector<Key> keys;
          for (uint64_t i = 0; i < 12; ++i) keys.push_back(TestKey(98, i));
          return StoreKeys(*a, keys, 2 * kMiB);
        }) == 0);
}

}  // namespace
}  // namespace kvtier::testing
