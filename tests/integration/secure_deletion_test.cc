// Secure deletion of DRAM slots beyond remove and eviction (eviction_test.cc): a slot whose
// block's TTL ran out, and a slot whose reservation ended without a commit (aborted, dropped
// unwritten, or given back when the reserving client went away), reads as zeros when the next
// reservation lands in it. With pool.zero_freed off the same checks see the old bytes, which
// shows that they would notice a slot left dirty.
#include <algorithm>
#include <cstdlib>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr size_t kSlots = 32;  // a 32 MiB pool of 1 MiB slots

std::unique_ptr<Client> MustConnect(const DaemonProcess& d) {
  auto c = Client::Connect({.socket_path = d.socket_path(), .name_space = "zeroing"});
  if (!c.ok()) FAIL("connect: " << c.status().ToString());
  return std::move(*c);
}

DaemonOptions FullPoolOptions(bool zero_freed) {
  DaemonOptions o;
  o.dram_bytes = kSlots * kMiB;
  o.zero_freed = zero_freed;
  return o;
}

// Reserves a 1 MiB block for each key, every one of which must land in a slot that held
// something before (the pool has exactly kSlots of them), and returns how many of those slots
// do not read as all zeros before anything is written.
size_t DirtySlotsOfNextReservations(Client& client, const std::vector<Key>& keys) {
  auto batch = client.Reserve(keys, std::vector<uint64_t>(keys.size(), kMiB));
  REQUIRE(batch.ok());
  size_t dirty = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    REQUIRE(batch->code(i) == StatusCode::kOk);
    const std::span<const std::byte> data = batch->data(i);
    const bool zeros =
        std::all_of(data.begin(), data.end(), [](std::byte b) { return b == std::byte{0}; });
    dirty += zeros ? 0u : 1u;
  }
  return dirty;
}

void CheckZeroed(bool zero_freed, size_t dirty, size_t slots) {
  if (zero_freed) {
    CHECK(dirty == 0);
  } else {
    CHECK(dirty == slots);  // the check sees old bytes where they are left
  }
}

TEST_CASE("a slot freed by a block's expiry reads as zeros when it is handed out again",
          "[integration][secure-deletion][expiry]") {
  const bool zero_freed = GENERATE(true, false);
  INFO("zero_freed = " << zero_freed);
  auto daemon = DaemonProcess::Start(FullPoolOptions(zero_freed));
  auto client = MustConnect(*daemon);
  const std::vector<Key> expiring = TestKeys(40, kSlots);
  {
    // Every slot holds a block that expires one second after its commit.
    auto batch = client->Reserve(expiring, std::vector<uint64_t>(kSlots, kMiB),
                                 std::vector<uint32_t>(kSlots, 1));
    REQUIRE(batch.ok());
    for (size_t i = 0; i < kSlots; ++i) {
      REQUIRE(batch->code(i) == StatusCode::kOk);
      FillBlock(expiring[i], batch->data(i));
    }
    REQUIRE(batch->Commit().ok());
  }
  SECTION("reclaimed by the reaper, nobody looking the keys up") {
    REQUIRE(WaitUntil([&] {
      const PoolStats s = *client->Stats();
      return s.expirations == kSlots && s.used_bytes == 0;
    }));
    CheckZeroed(zero_freed, DirtySlotsOfNextReservations(*client, TestKeys(41, kSlots)), kSlots);
  }
  SECTION("found expired by a reserve of the same keys") {
    REQUIRE(WaitUntil([&] { return *client->MatchPrefix(std::span(expiring).first(1)) == 0; }));
    CheckZeroed(zero_freed, DirtySlotsOfNextReservations(*client, expiring), kSlots);
  }
  SECTION("expired while leased: the bytes stay until the release, then are zeroed") {
    auto leases = client->Acquire(expiring);
    REQUIRE(leases.ok());
    REQUIRE(leases->prefix() == kSlots);
    REQUIRE(WaitUntil([&] { return *client->MatchPrefix(std::span(expiring).first(1)) == 0; }));
    for (size_t i = 0; i < kSlots; ++i)
      CHECK(VerifyBlock(expiring[i], leases->data(i)));
    REQUIRE(leases->Release().ok());
    CheckZeroed(zero_freed, DirtySlotsOfNextReservations(*client, TestKeys(42, kSlots)), kSlots);
  }
}

// Reserves every slot for `keys` and fills each with its block, without committing.
Reservations FillUncommitted(Client& client, const std::vector<Key>& keys) {
  auto batch = client.Reserve(keys, std::vector<uint64_t>(keys.size(), kMiB));
  REQUIRE(batch.ok());
  for (size_t i = 0; i < keys.size(); ++i) {
    REQUIRE(batch->code(i) == StatusCode::kOk);
    FillBlock(keys[i], batch->data(i));
  }
  return std::move(*batch);
}

TEST_CASE(
    "a slot given back by an aborted reservation reads as zeros when it is handed out "
    "again",
    "[integration][secure-deletion][abort]") {
  const bool zero_freed = GENERATE(true, false);
  INFO("zero_freed = " << zero_freed);
  auto daemon = DaemonProcess::Start(FullPoolOptions(zero_freed));
  auto client = MustConnect(*daemon);
  const std::vector<Key> written = TestKeys(50, kSlots);
  SECTION("aborted with Abort()") {
    Reservations batch = FillUncommitted(*client, written);
    REQUIRE(batch.Abort().ok());
  }
  SECTION("dropped before its commit") {
    (void)FillUncommitted(*client, written);  // the destructor aborts
  }
  SECTION("aborted with AbortRaw, key by key") {
    Reservations batch = FillUncommitted(*client, written);
    std::vector<StatusCode> codes(kSlots, StatusCode::kInternal);
    REQUIRE(client->AbortRaw(written, codes).ok());
    CHECK(codes == std::vector<StatusCode>(kSlots, StatusCode::kOk));
    // Its own Abort() now finds nothing left to do.
  }
  SECTION("given back when the reserving client exits without committing") {
    const int exit_code = RunInChild([&] {
      auto other = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "zeroing"});
      if (!other.ok()) return 10;
      auto batch = (*other)->Reserve(written, std::vector<uint64_t>(kSlots, kMiB));
      if (!batch.ok()) return 11;
      for (size_t i = 0; i < kSlots; ++i) {
        if (batch->code(i) != StatusCode::kOk) return 12;
        FillBlock(written[i], batch->data(i));
      }
      std::_Exit(0);  // no destructor runs: the daemon learns from the hang-up alone
    });
    REQUIRE(exit_code == 0);
  }
  REQUIRE(WaitUntil([&] { return client->Stats()->reserved_blocks == 0; }));
  // Nothing of it was ever visible.
  CHECK(*client->MatchPrefix(std::span(written).first(1)) == 0);
  CheckZeroed(zero_freed, DirtySlotsOfNextReservations(*client, TestKeys(51, kSlots)), kSlots);
}

}  // namespace
}  // namespace kvtier::testing
