// Eviction under pool pressure, and lease stability under churn, with the real daemon.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

constexpr uint64_t kMiB = 1 << 20;

std::unique_ptr<Client> MustConnect(const DaemonProcess& d) {
  auto c = Client::Connect({.socket_path = d.socket_path(), .name_space = "evict"});
  if (!c.ok()) FAIL("connect: " << c.status().ToString());
  return std::move(*c);
}

bool Present(Client& client, const Key& key) {
  return *client.MatchPrefix(std::vector<Key>{key}) == 1;
}

TEST_CASE("filling past the reservation evicts only unleased committed blocks, oldest first",
          "[integration][eviction]") {
  DaemonOptions options;
  options.dram_bytes = 32 * kMiB;  // 32 blocks of 1 MiB
  auto daemon = DaemonProcess::Start(options);
  auto client = MustConnect(*daemon);
  auto other = MustConnect(*daemon);
  const std::vector<Key> old = TestKeys(1, 30, 0);
  StoreBlocks(*client, old, kMiB);  // committed in key order: old[0] is the oldest
  // Another session's reservation (not yet committed) holds one slot.
  const std::vector<Key> pending_key = TestKeys(9, 1, 0);
  auto pending = other->Reserve(pending_key, std::vector<uint64_t>{kMiB});
  REQUIRE(pending.ok());
  REQUIRE(pending->code(0) == StatusCode::kOk);
  FillBlock(pending_key[0], pending->data(0));
  // Lease the two oldest, and use old[2] so it becomes the most recent.
  auto leases = client->Acquire(std::span(old).first(2));
  REQUIRE(leases.ok());
  REQUIRE(leases->prefix() == 2);
  REQUIRE(Present(*client, old[2]));

  // One slot is free; five new blocks need four evictions.
  StoreBlocks(*client, TestKeys(2, 5, 0), kMiB);

  CHECK(client->Stats()->evictions == 4);
  CHECK(Present(*client, old[0]));  // leased
  CHECK(Present(*client, old[1]));  // leased
  CHECK(Present(*client, old[2]));  // recently used
  for (size_t i = 3; i < 7; ++i) CHECK_FALSE(Present(*client, old[i]));  // the oldest unleased
  for (size_t i = 7; i < old.size(); ++i) CHECK(Present(*client, old[i]));
  CHECK(VerifyBlock(old[0], leases->data(0)));
  CHECK(VerifyBlock(old[1], leases->data(1)));
  // The reservation survived and commits intact.
  REQUIRE(pending->Commit().ok());
  auto check = client->Acquire(pending_key);
  REQUIRE(check.ok());
  REQUIRE(check->code(0) == StatusCode::kOk);
  CHECK(VerifyBlock(pending_key[0], check->data(0)));
}

TEST_CASE("hints: a block an engine is done with leaves first, one it will reuse soon stays",
          "[integration][eviction][hints]") {
  DaemonOptions options;
  options.dram_bytes = 32 * kMiB;  // 32 blocks of 1 MiB
  auto daemon = DaemonProcess::Start(options);
  auto client = MustConnect(*daemon);
  REQUIRE(client->has_hints());
  const std::vector<Key> blocks = TestKeys(3, 32, 0);
  StoreBlocks(*client, blocks, kMiB);  // blocks[0] is the oldest
  // The newest is done with; the oldest will be reused soon. A missing key is not found.
  std::vector<StatusCode> codes(2);
  REQUIRE(client->DoneWith(std::vector<Key>{blocks[31], TestKey(3, 99)}, codes).ok());
  CHECK(codes[0] == StatusCode::kOk);
  CHECK(codes[1] == StatusCode::kNotFound);
  REQUIRE(client->ReuseSoon(std::vector<Key>{blocks[0]}, codes).ok());
  CHECK(codes[0] == StatusCode::kOk);
  const uint64_t hits = client->Stats()->hits;
  // Two new blocks need two evictions: the one done with, then the oldest not hinted.
  StoreBlocks(*client, TestKeys(4, 2, 0), kMiB);
  CHECK_FALSE(Present(*client, blocks[31]));
  CHECK_FALSE(Present(*client, blocks[1]));
  CHECK(Present(*client, blocks[0]));
  CHECK(Present(*client, blocks[2]));
  CHECK(client->Stats()->hits == hits + 2);  // the hints counted as no hit; the lookups did
}

TEST_CASE("a pool full of pinned blocks reports resource exhaustion, not a wrong block",
          "[integration][eviction]") {
  DaemonOptions options;
  options.dram_bytes = 8 * kMiB;
  auto daemon = DaemonProcess::Start(options);
  auto client = MustConnect(*daemon);
  const std::vector<Key> keys = TestKeys(3, 8, 0);
  StoreBlocks(*client, keys, kMiB);
  auto leases = client->Acquire(keys);
  REQUIRE(leases->prefix() == 8);
  auto more = client->Reserve(TestKeys(3, 2, 100), std::vector<uint64_t>{kMiB, 4096});
  REQUIRE(more.ok());
  CHECK(more->code(0) == StatusCode::kResourceExhausted);
  CHECK(more->code(1) == StatusCode::kResourceExhausted);
  for (size_t i = 0; i < keys.size(); ++i) CHECK(VerifyBlock(keys[i], leases->data(i)));
}

TEST_CASE("blocks larger than a slab evict whole slab runs", "[integration][eviction]") {
  DaemonOptions options;
  options.dram_bytes = 16 * kMiB;
  options.slab_bytes = 2 * kMiB;
  options.max_block_bytes = 8 * kMiB;
  auto daemon = DaemonProcess::Start(options);
  auto client = MustConnect(*daemon);
  // Small blocks everywhere, then a 5 MiB block that needs three contiguous slabs.
  const std::vector<Key> small = TestKeys(4, 64, 0);
  StoreBlocks(*client, small, 256 * 1024);
  const std::vector<Key> large = TestKeys(5, 1, 0);
  StoreBlocks(*client, large, 5 * kMiB);
  auto leases = client->Acquire(large);
  REQUIRE(leases->code(0) == StatusCode::kOk);
  CHECK(VerifyBlock(large[0], leases->data(0)));
  CHECK(client->Stats()->evictions > 0);
  // Whatever small blocks remain are intact.
  auto rest = client->Acquire(small);
  REQUIRE(rest.ok());
  for (size_t i = 0; i < small.size(); ++i) {
    if (rest->code(i) == StatusCode::kOk) CHECK(VerifyBlock(small[i], rest->data(i)));
  }
}

// Child body: churns the pool with stores, reads and removes until it has done `rounds`.
int Churn(const std::string& socket, uint64_t owner, int rounds) {
  auto client = Client::Connect({.socket_path = socket, .name_space = "evict"});
  if (!client.ok()) return 10;
  std::mt19937_64 rng(owner);
  uint64_t next = 0;
  for (int r = 0; r < rounds; ++r) {
    std::vector<Key> keys = TestKeys(owner, 8, next);
    next += 8;
    std::vector<uint64_t> sizes;
    for (size_t i = 0; i < keys.size(); ++i) sizes.push_back(4096 + rng() % (1536 * 1024));
    if (const int failed = StoreAndVerifyRound(**client, keys, sizes); failed != 0) {
      return failed;
    }
    if (rng() % 2 == 0) (void)(*client)->Remove(std::span(keys).first(4));
  }
  return 0;
}

TEST_CASE("a held lease keeps its bytes stable while other clients churn the pool",
          "[integration][eviction]") {
  DaemonOptions options;
  options.dram_bytes = 32 * kMiB;
  auto daemon = DaemonProcess::Start(options);
  auto client = MustConnect(*daemon);
  const std::vector<Key> keys = TestKeys(7, 8, 0);
  StoreBlocks(*client, keys, kMiB);
  auto leases = client->Acquire(keys);
  REQUIRE(leases->prefix() == keys.size());
  std::vector<pid_t> churners;
  for (uint64_t owner = 100; owner < 102; ++owner) {
    churners.push_back(SpawnChild([&, owner] { return Churn(daemon->socket_path(), owner, 150); }));
  }
  // Check the leased bytes for as long as the churn runs, and after.
  auto running = [&] {
    for (pid_t pid : churners) {
      siginfo_t info{};
      if (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
          info.si_pid == 0) {
        return true;  // not exited yet
      }
    }
    return false;
  };
  bool stable = true;
  size_t checks = 0;
  while (stable && running()) {
    for (size_t k = 0; k < keys.size(); ++k) stable = stable && VerifyBlock(keys[k], leases->data(k));
    ++checks;
  }
  for (pid_t pid : churners) CHECK(WaitChild(pid) == 0);
  INFO(checks << " checks during the churn");
  CHECK(stable);
  for (size_t k = 0; k < keys.size(); ++k) CHECK(VerifyBlock(keys[k], leases->data(k)));
  CHECK(client->Stats()->evictions > 0);  // the churn really did push blocks out
}

TEST_CASE("a slot freed by remove or eviction reads as zeros when it is handed out again",
          "[integration][eviction][secure-deletion]") {
  DaemonOptions options;
  options.dram_bytes = 32 * kMiB;  // 32 slots of 1 MiB
  const bool zero_freed = GENERATE(true, false);
  options.zero_freed = zero_freed;
  INFO("zero_freed = " << zero_freed);
  auto daemon = DaemonProcess::Start(options);
  auto client = MustConnect(*daemon);
  // Fill every slot, then free half of them by remove and make room for the rest by eviction.
  const std::vector<Key> first = TestKeys(20, 32, 0);
  StoreBlocks(*client, first, kMiB);
  REQUIRE(client->Remove(std::span(first).first(16)).ok());
  const std::vector<Key> second = TestKeys(21, 32, 0);  // 16 into removed slots, 16 by eviction
  auto batch = client->Reserve(second, std::vector<uint64_t>(second.size(), kMiB));
  REQUIRE(batch.ok());
  size_t dirty_slots = 0;
  for (size_t i = 0; i < second.size(); ++i) {
    REQUIRE(batch->code(i) == StatusCode::kOk);
    std::span<const std::byte> data = batch->data(i);
    const bool zeros =
        std::all_of(data.begin(), data.end(), [](std::byte b) { return b == std::byte{0}; });
    dirty_slots += zeros ? 0 : 1;
  }
  if (zero_freed) {
    CHECK(dirty_slots == 0);
  } else {
    CHECK(dirty_slots == second.size());  // the check sees old bytes where they are left
  }
}

TEST_CASE("a block whose TTL runs out becomes a miss and gives its space back, and a TTL above "
          "the tenant's cap is lowered to it", "[integration][expiry]") {
  DaemonOptions options;
  options.max_ttl_seconds = 2;  // the cap
  auto daemon = DaemonProcess::Start(options);
  auto client = MustConnect(*daemon);
  const std::vector<Key> keys = TestKeys(30, 3, 0);
  // 1 s; far above the cap (so 2 s); none (so the cap, 2 s).
  const std::vector<uint32_t> ttls = {1, 3600, 0};
  auto batch = client->Reserve(keys, std::vector<uint64_t>(keys.size(), kMiB), ttls);
  REQUIRE(batch.ok());
  for (size_t i = 0; i < keys.size(); ++i) {
    REQUIRE(batch->code(i) == StatusCode::kOk);
    FillBlock(keys[i], batch->data(i));
  }
  REQUIRE(batch->Commit().ok());
  const uint64_t used = client->Stats()->used_bytes;
  REQUIRE(used >= 3 * kMiB);
  // Each one goes (the wait bounds a hung test; it is not a timing assertion), and the reaper
  // frees the space without anyone looking the keys up.
  // (Freed slots count as used until they are zeroed, a budget per loop round.)
  REQUIRE(WaitUntil([&] {
    const PoolStats s = *client->Stats();
    return s.expirations == 3 && s.used_bytes == used - 3 * kMiB;
  }));
  const PoolStats stats = *client->Stats();
  CHECK(stats.used_bytes == used - 3 * kMiB);
  CHECK(stats.committed_blocks == 0);
  CHECK(*client->MatchPrefix(std::span(keys).first(1)) == 0);
  // The keys are free to be stored again.
  StoreBlocks(*client, keys, kMiB);
}

}  // namespace
}  // namespace kvtier::testing
