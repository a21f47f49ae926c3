// Clients that die: a client killed with SIGKILL gives back its reservations and leases at
// once, and no partially written block ever becomes visible.
#include <signal.h>
#include <unistd.h>

#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

// A child that runs `work`; work calls park() with its state still alive, which tells the
// parent through a pipe and sleeps until the parent kills the child. If work returns instead,
// it failed.
using Park = std::function<void()>;
pid_t SpawnAndPark(const std::function<void(const Park&)>& work, int* ready_fd) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const pid_t pid = SpawnChild([&] {
    close(fds[0]);
    work([&] {
      (void)!write(fds[1], "1", 1);
      for (;;) pause();
    });
    (void)!write(fds[1], "0", 1);
    return 1;
  });
  close(fds[1]);
  *ready_fd = fds[0];
  return pid;
}

bool ChildReady(int fd) {
  char c = 0;
  const bool ok = read(fd, &c, 1) == 1 && c == '1';
  close(fd);
  return ok;
}

TEST_CASE("a client killed between reserve and commit leaves nothing behind",
          "[integration][crash]") {
  auto daemon = DaemonProcess::Start();
  auto observer = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "t"});
  REQUIRE(observer.ok());
  const PoolStats baseline = *(*observer)->Stats();
  const std::vector<Key> keys = TestKeys(1, 64);
  int ready = -1;
  const pid_t child = SpawnAndPark(
      [&](const Park& park) {
        auto c = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "t"});
        if (!c.ok()) return;
        auto batch = (*c)->Reserve(keys, std::vector<uint64_t>(keys.size(), 256 * 1024));
        if (!batch.ok()) return;
        // Half-written blocks: the first half of each.
        for (size_t i = 0; i < keys.size(); ++i) {
          FillBlock(keys[i], batch->data(i).first(128 * 1024));
        }
        park();
      },
      &ready);
  REQUIRE(ChildReady(ready));
  REQUIRE((*observer)->Stats()->reserved_blocks == 64);
  CHECK(*(*observer)->MatchPrefix(keys) == 0);
  kill(child, SIGKILL);
  CHECK(WaitChild(child) == 128 + SIGKILL);
  // Freed slots count as used until they are zeroed, a budget per loop round.
  REQUIRE(WaitUntil([&] {
    const PoolStats s = *(*observer)->Stats();
    return s.reserved_blocks == 0 && s.used_bytes == baseline.used_bytes;
  }));
  const PoolStats after = *(*observer)->Stats();
  CHECK(after.used_bytes == baseline.used_bytes);
  CHECK(after.slab_bytes_in_use == baseline.slab_bytes_in_use);
  CHECK(after.committed_blocks == baseline.committed_blocks);
  CHECK(*(*observer)->MatchPrefix(keys) == 0);
  // The keys are free again: a live client stores them properly.
  auto batch = (*observer)->Reserve(keys, std::vector<uint64_t>(keys.size(), 4096));
  REQUIRE(batch.ok());
  for (size_t i = 0; i < keys.size(); ++i) CHECK(batch->code(i) == StatusCode::kOk);
}

TEST_CASE("a client killed while holding leases releases them", "[integration][crash]") {
  DaemonOptions options;
  options.dram_bytes = 32ull << 20;
  auto daemon = DaemonProcess::Start(options);
  auto observer = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "t"});
  REQUIRE(observer.ok());
  const std::vector<Key> keys = TestKeys(2, 16);  // 16 x 1 MiB = half the pool
  auto batch = (*observer)->Reserve(keys, std::vector<uint64_t>(keys.size(), 1 << 20));
  REQUIRE(batch.ok());
  for (size_t i = 0; i < keys.size(); ++i) FillBlock(keys[i], batch->data(i));
  REQUIRE(batch->Commit().ok());
  int ready = -1;
  const pid_t child = SpawnAndPark(
      [&](const Park& park) {
        auto c = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "t"});
        if (!c.ok()) return;
        auto leases = (*c)->Acquire(keys);
        if (!leases.ok() || leases->prefix() != keys.size()) return;
        park();
      },
      &ready);
  REQUIRE(ChildReady(ready));
  REQUIRE((*observer)->Stats()->leased_blocks == 16);
  // While leased, the blocks cannot be evicted: a fill of the whole pool fails for lack of room.
  const std::vector<Key> filler = TestKeys(3, 32);
  {
    auto fill = (*observer)->Reserve(filler, std::vector<uint64_t>(filler.size(), 1 << 20));
    REQUIRE(fill.ok());
    size_t exhausted = 0;
    for (size_t i = 0; i < filler.size(); ++i) {
      if (fill->code(i) == StatusCode::kResourceExhausted) ++exhausted;
    }
    CHECK(exhausted == 16);
  }  // aborted
  kill(child, SIGKILL);
  CHECK(WaitChild(child) == 128 + SIGKILL);
  REQUIRE(WaitUntil([&] { return (*observer)->Stats()->leased_blocks == 0; }));
  // The blocks are intact and, unleased, evictable again.
  auto leases = (*observer)->Acquire(keys);
  REQUIRE(leases.ok());
  REQUIRE(leases->prefix() == keys.size());
  for (size_t i = 0; i < keys.size(); ++i) CHECK(VerifyBlock(keys[i], leases->data(i)));
  REQUIRE(leases->Release().ok());
  auto fill = (*observer)->Reserve(filler, std::vector<uint64_t>(filler.size(), 1 << 20));
  REQUIRE(fill.ok());
  for (size_t i = 0; i < filler.size(); ++i) CHECK(fill->code(i) == StatusCode::kOk);
}

}  // namespace
}  // namespace kvtier::testing
