// The DRAM tier end to end: real kvtierd, real client processes, every byte verified.
#include <signal.h>
#include <unistd.h>

#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

std::unique_ptr<Client> MustConnect(const DaemonProcess& d, const std::string& ns = "test/ns") {
  auto c = Client::Connect({.socket_path = d.socket_path(), .name_space = ns});
  if (!c.ok()) FAIL("connect: " << c.status().ToString());
  return std::move(*c);
}

// Child-process body: stores `count` random-sized blocks in random batches, then reads all
// back and verifies every byte. Exit code 0 = all good; otherwise what failed.
int StoreAndVerify(const std::string& socket, uint64_t owner, int count, uint64_t max_size) {
  auto client = Client::Connect({.socket_path = socket, .name_space = "test/ns"});
  if (!client.ok()) return 10;
  std::mt19937_64 rng(owner * 7919);
  std::vector<Key> keys;
  std::vector<uint64_t> sizes;
  for (int i = 0; i < count; ++i) {
    keys.push_back(TestKey(owner, static_cast<uint64_t>(i)));
    sizes.push_back(1 + rng() % max_size);
  }
  for (size_t base = 0; base < keys.size();) {
    const size_t n = std::min<size_t>(1 + rng() % 64, keys.size() - base);
    auto batch = (*client)->Reserve(std::span(keys).subspan(base, n),
                                    std::span(sizes).subspan(base, n));
    if (!batch.ok()) return 11;
    for (size_t i = 0; i < n; ++i) {
      if (batch->code(i) != StatusCode::kOk) return 12;
      FillBlock(keys[base + i], batch->data(i));
    }
    if (!batch->Commit().ok()) return 13;
    base += n;
  }
  for (size_t base = 0; base < keys.size();) {
    const size_t n = std::min<size_t>(1 + rng() % 64, keys.size() - base);
    auto leases = (*client)->Acquire(std::span(keys).subspan(base, n));
    if (!leases.ok()) return 14;
    for (size_t i = 0; i < n; ++i) {
      if (leases->code(i) != StatusCode::kOk) return 15;
      if (leases->data(i).size() != sizes[base + i]) return 16;
      if (!VerifyBlock(keys[base + i], leases->data(i))) return 17;
    }
    base += n;
  }
  return 0;
}

TEST_CASE("four client processes store and read back 1,000 random-sized blocks each",
          "[integration][data]") {
  DaemonOptions options;
  options.dram_bytes = 512ull << 20;  // room for all: 4 x 1000 x <=128 KiB (avg 64 KiB)
  auto daemon = DaemonProcess::Start(options);
  std::vector<pid_t> children;
  for (uint64_t owner = 1; owner <= 4; ++owner) {
    children.push_back(SpawnChild(
        [&, owner] { return StoreAndVerify(daemon->socket_path(), owner, 1000, 128 * 1024); }));
  }
  for (pid_t pid : children) CHECK(WaitChild(pid) == 0);
  // Each process also reads the others' blocks: nothing was evicted, everything verifies.
  auto client = MustConnect(*daemon);
  for (uint64_t owner = 1; owner <= 4; ++owner) {
    std::vector<Key> keys;
    for (uint64_t i = 0; i < 1000; ++i) keys.push_back(TestKey(owner, i));
    auto leases = client->Acquire(keys);
    REQUIRE(leases.ok());
    REQUIRE(leases->prefix() == 1000);
    for (size_t i = 0; i < keys.size(); ++i) CHECK(VerifyBlock(keys[i], leases->data(i)));
  }
  auto stats = client->Stats();
  REQUIRE(stats.ok());
  CHECK(stats->committed_blocks == 4000);
  CHECK(stats->evictions == 0);
  CHECK(daemon->Stop() == 0);
}

TEST_CASE("a reserved block is invisible until committed", "[integration][data]") {
  auto daemon = DaemonProcess::Start();
  auto writer = MustConnect(*daemon);
  auto reader = MustConnect(*daemon);
  const std::vector<Key> keys = {TestKey(1, 0)};
  const std::vector<uint64_t> sizes = {4096};
  auto batch = writer->Reserve(keys, sizes);
  REQUIRE(batch.ok());
  REQUIRE(batch->code(0) == StatusCode::kOk);
  FillBlock(keys[0], batch->data(0));
  CHECK(*reader->MatchPrefix(keys) == 0);
  CHECK(reader->Acquire(keys)->code(0) == StatusCode::kNotFound);
  SECTION("another session cannot reserve, commit or abort it") {
    auto other = reader->Reserve(keys, sizes);
    REQUIRE(other.ok());
    CHECK(other->code(0) == StatusCode::kAlreadyExists);
    std::vector<StatusCode> codes(1);
    // Carried out, refused per key.
    REQUIRE(reader->CommitRaw(keys, codes).ok());
    CHECK(codes[0] == StatusCode::kNotFound);
    codes[0] = StatusCode::kOk;
    REQUIRE(reader->AbortRaw(keys, codes).ok());
    CHECK(codes[0] == StatusCode::kNotFound);
    REQUIRE(batch->Commit().ok());
    CHECK(*reader->MatchPrefix(keys) == 1);
  }
  SECTION("an aborted reservation never becomes visible and frees its slot") {
    REQUIRE(batch->Abort().ok());
    CHECK(*reader->MatchPrefix(keys) == 0);
    CHECK(reader->Stats()->used_bytes == 0);
  }
}

TEST_CASE("match_prefix counts leading present keys and reports their tier",
          "[integration][data]") {
  auto daemon = DaemonProcess::Start();
  auto client = MustConnect(*daemon);
  std::vector<Key> keys;
  for (uint64_t i = 0; i < 10; ++i) keys.push_back(TestKey(2, i));
  // Store 0..4 and 6..9: the prefix stops at the hole.
  std::vector<Key> stored(keys.begin(), keys.begin() + 5);
  stored.insert(stored.end(), keys.begin() + 6, keys.end());
  auto batch = client->Reserve(stored, std::vector<uint64_t>(stored.size(), 8192));
  REQUIRE(batch.ok());
  REQUIRE(batch->Commit().ok());
  std::vector<Tier> tiers(keys.size(), Tier::kNone);
  auto matched = client->MatchPrefix(keys, tiers);
  REQUIRE(matched.ok());
  CHECK(*matched == 5);
  for (size_t i = 0; i < 5; ++i) CHECK(tiers[i] == Tier::kDram);
  SECTION("namespaces never meet") {
    auto other_ns = MustConnect(*daemon, "another/model");
    CHECK(*other_ns->MatchPrefix(keys) == 0);
  }
}

TEST_CASE("a batch longer than one frame is split transparently", "[integration][data]") {
  DaemonOptions options;
  options.max_blocks = 8192;
  auto daemon = DaemonProcess::Start(options);
  auto client = MustConnect(*daemon);
  std::vector<Key> many;
  for (uint64_t i = 0; i < 5000; ++i) many.push_back(TestKey(3, i));
  auto big = client->Reserve(many, std::vector<uint64_t>(many.size(), 4096));
  REQUIRE(big.ok());
  for (size_t i = 0; i < many.size(); ++i) REQUIRE(big->code(i) == StatusCode::kOk);
  REQUIRE(big->Commit().ok());
  CHECK(*client->MatchPrefix(many) == 5000);
  auto leases = client->Acquire(many);
  REQUIRE(leases.ok());
  CHECK(leases->prefix() == 5000);
}

TEST_CASE("the index capacity bounds the blocks a tenant holds", "[integration][data]") {
  DaemonOptions options;
  options.max_blocks = 100;
  auto daemon = DaemonProcess::Start(options);
  auto client = MustConnect(*daemon);
  std::vector<Key> keys;
  for (uint64_t i = 0; i < 150; ++i) keys.push_back(TestKey(8, i));
  // All reserved at once: nothing is evictable, so the last 50 find no index entry.
  auto batch = client->Reserve(keys, std::vector<uint64_t>(keys.size(), 4096));
  REQUIRE(batch.ok());
  CHECK(batch->code(99) == StatusCode::kOk);
  CHECK(batch->code(100) == StatusCode::kResourceExhausted);
  REQUIRE(batch->Commit().ok());
  // Committed blocks are evictable: the next 50 push out the 50 oldest.
  auto more = client->Reserve(std::span(keys).subspan(100), std::vector<uint64_t>(50, 4096));
  REQUIRE(more.ok());
  for (size_t i = 0; i < 50; ++i) CHECK(more->code(i) == StatusCode::kOk);
  REQUIRE(more->Commit().ok());
  CHECK(*client->MatchPrefix(std::span(keys).first(50)) == 0);
  CHECK(*client->MatchPrefix(std::span(keys).subspan(50)) == 100);
}

TEST_CASE("remove hides a block at once but a lease keeps its bytes until release",
          "[integration][data]") {
  auto daemon = DaemonProcess::Start();
  auto client = MustConnect(*daemon);
  const std::vector<Key> keys = {TestKey(4, 0)};
  auto batch = client->Reserve(keys, std::vector<uint64_t>{100000});
  REQUIRE(batch.ok());
  FillBlock(keys[0], batch->data(0));
  REQUIRE(batch->Commit().ok());
  auto leases = client->Acquire(keys);
  REQUIRE(leases.ok());
  REQUIRE(leases->code(0) == StatusCode::kOk);
  std::vector<StatusCode> codes(1);
  REQUIRE(client->Remove(keys, codes).ok());
  CHECK(*client->MatchPrefix(keys) == 0);
  CHECK(client->Stats()->used_bytes > 0);  // still held by the lease
  CHECK(VerifyBlock(keys[0], leases->data(0)));
  REQUIRE(leases->Release().ok());
  CHECK(client->Stats()->used_bytes == 0);
  REQUIRE(client->Remove(keys, codes).ok());
  CHECK(codes[0] == StatusCode::kNotFound);
}

TEST_CASE("lease ids are only valid in the session that took them", "[integration][data]") {
  auto daemon = DaemonProcess::Start();
  auto owner = MustConnect(*daemon);
  auto other = MustConnect(*daemon);
  const std::vector<Key> keys = {TestKey(5, 0)};
  auto batch = owner->Reserve(keys, std::vector<uint64_t>{4096});
  REQUIRE(batch.ok());
  REQUIRE(batch->Commit().ok());
  auto leases = owner->Acquire(keys);
  REQUIRE(leases.ok());
  const uint64_t id = leases->info(0).lease_id;
  std::vector<StatusCode> codes(3);
  const std::vector<uint64_t> ids = {id, id + 1, 0};
  REQUIRE(other->ReleaseRaw(ids, codes).ok());
  CHECK(codes == std::vector<StatusCode>(3, StatusCode::kNotFound));
  CHECK(owner->Stats()->leased_blocks == 1);
  // Released once, the id is dead: a second release fails.
  REQUIRE(leases->Release().ok());
  codes[0] = StatusCode::kOk;
  REQUIRE(owner->ReleaseRaw(std::vector<uint64_t>{id}, codes).ok());
  CHECK(codes[0] == StatusCode::kNotFound);
}

TEST_CASE("clients get clear errors for bad keys and sizes", "[integration][data]") {
  auto daemon = DaemonProcess::Start();
  auto client = MustConnect(*daemon);
  Key too_long;
  too_long.len = 33;
  std::vector<Key> keys = {too_long};
  auto r = client->Reserve(keys, std::vector<uint64_t>{4096});
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(r.status().message(), Catch::Contains("1..32 bytes"));
  keys = {TestKey(6, 0)};
  auto big = client->Reserve(keys, std::vector<uint64_t>{client->max_block_bytes() + 1});
  REQUIRE_FALSE(big.ok());
  CHECK(big.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(big.status().message(), Catch::Contains("max_block_bytes"));
  // The session survives a rejected request.
  CHECK(client->Stats().ok());
}

TEST_CASE("connecting without a daemon says it is not running", "[integration][data]") {
  TempDir dir;
  auto c = Client::Connect({.socket_path = (dir.path() / "none.sock").string(),
                            .name_space = "x"});
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == StatusCode::kUnavailable);
  CHECK_THAT(c.status().message(), Catch::Contains("not running"));
}

TEST_CASE("a stopped daemon surfaces as unavailable, not a crash", "[integration][data]") {
  auto daemon = DaemonProcess::Start();
  auto client = MustConnect(*daemon);
  CHECK(daemon->Stop() == 0);
  auto stats = client->Stats();
  REQUIRE_FALSE(stats.ok());
  CHECK(stats.status().code() == StatusCode::kUnavailable);
}

}  // namespace
}  // namespace kvtier::testing
