// Isolation under a hostile or careless neighbour (issue 11): with real uids, tenant "a" does
// what could crash, stall or starve the daemon, while another tenant keeps working. Each test
// asserts correctness and liveness (the other tenant's requests succeed, with the right bytes,
// while the noise goes on), never time; the latencies are kvtier-bench's "noisy neighbour".
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

constexpr uid_t kUidA = 41101;
constexpr uid_t kUidB = 41102;
constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

// Words shared by the children of one test (an anonymous shared mapping made before fork).
struct Shared {
  std::atomic<uint32_t> a_ready{0};  // tenant a has done its setup
  std::atomic<uint32_t> a_done{0};   // tenant a's noise is over
  std::atomic<uint64_t> b_rounds{0};  // tenant b's rounds that succeeded
  std::atomic<uint32_t> value{0};     // test-specific
};

class SharedWords {
 public:
  SharedWords() {
    void* p = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
    REQUIRE(p != MAP_FAILED);
    shared_ = new (p) Shared();
  }
  ~SharedWords() { munmap(shared_, sizeof(Shared)); }
  Shared* operator->() const { return shared_; }
  Shared* get() const { return shared_; }

 private:
  Shared* shared_;
};

DaemonOptions TwoTenants(uint64_t a_bytes, uint64_t b_bytes) {
  DaemonOptions options;
  options.default_tenant = false;
  options.tenant_uids = {getuid()};
  options.socket_mode = "0666";  // any uid may connect; the tenant map decides who it is
  options.more_tenants = {{"a", {kUidA}, a_bytes}, {"b", {kUidB}, b_bytes}};
  return options;
}

std::unique_ptr<DaemonProcess> Start(const DaemonOptions& options) {
  auto daemon = DaemonProcess::Start(options);
  REQUIRE(chmod(daemon->dir().c_str(), 0755) == 0);
  return daemon;
}

// In a child: becomes `uid` (so its tenant is the one of that uid).
bool BecomeUid(uid_t uid) {
  return setresgid(uid, uid, uid) == 0 && setresuid(uid, uid, uid) == 0;
}

std::unique_ptr<Client> Connect(const DaemonProcess& daemon, const char* ns = "iso") {
  auto c = Client::Connect({.socket_path = daemon.socket_path(), .name_space = ns});
  return c.ok() ? std::move(*c) : nullptr;
}

// Stores `keys` at `size` and reads every one back with its bytes; 0 or a step (11..16).
int StoreAndVerify(Client& client, const std::vector<Key>& keys, uint64_t size) {
  auto batch = client.Reserve(keys, std::vector<uint64_t>(keys.size(), size));
  if (!batch.ok()) return 11;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (batch->code(i) != StatusCode::kOk) return 12;
    FillBlock(keys[i], batch->data(i));
  }
  if (!batch->Commit().ok()) return 13;
  auto leases = client.Acquire(keys);
  if (!leases.ok()) return 14;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (leases->code(i) != StatusCode::kOk) return 15;
    if (!VerifyBlock(keys[i], leases->data(i))) return 16;
  }
  return 0;
}

// Tenant b: stores, reads back and verifies small blocks until tenant a is done; 0 or a step.
int TenantBRounds(const DaemonProcess& daemon, Shared* shared) {
  if (!BecomeUid(kUidB)) return 90;
  auto b = Connect(daemon);
  if (!b) return 91;
  for (uint64_t round = 0; shared->a_done.load() == 0 || round < 8; ++round) {
    std::vector<Key> keys;
    for (uint64_t i = 0; i < 4; ++i) keys.push_back(TestKey(round, i));
    if (int step = StoreAndVerify(*b, keys, 64 * kKiB); step != 0) return 100 + step;
    if (!b->Remove(keys).ok()) return 92;
    shared->b_rounds.fetch_add(1);
  }
  return 0;
}

TEST_CASE("a tenant freeing 1 GiB in one request gets its slots back zeroed, while another "
          "tenant is served meanwhile",
          "[integration][isolation]") {
  DaemonOptions options = TwoTenants(1024 * kMiB, 64 * kMiB);
  options.max_block_bytes = 64 * kMiB;
  auto daemon = Start(options);
  SharedWords shared;
  const pid_t b = SpawnChild([&] { return TenantBRounds(*daemon, shared.get()); });
  const int a = RunInChild([&] {
    if (!BecomeUid(kUidA)) return 10;
    auto client = Connect(*daemon);
    if (!client) return 11;
    std::vector<Key> keys;
    for (uint64_t i = 0; i < 16; ++i) keys.push_back(TestKey(500, i));
    const std::vector<uint64_t> sizes(keys.size(), 64 * kMiB);
    // Tenant b is served while this goes on: its rounds go up in between.
    if (!WaitUntil([&] { return shared->b_rounds.load() > 0; })) return 30;
    const uint64_t b_before = shared->b_rounds.load();
    for (int pass = 0; pass < 3; ++pass) {
      auto batch = client->Reserve(keys, sizes);  // the whole 1 GiB pool
      if (!batch.ok()) return 12;
      for (size_t i = 0; i < keys.size(); ++i) {
        if (batch->code(i) != StatusCode::kOk) return 13;
        // Each pass finds the slots zeroed, however soon after the abort it asks.
        const std::span<std::byte> slot = batch->data(i);
        for (size_t at = 0; at < slot.size(); at += 4096) {
          if (slot[at] != std::byte{0} || slot[slot.size() - 1] != std::byte{0}) return 14;
        }
        std::memset(slot.data(), 0xab, slot.size());
      }
      if (!batch->Abort().ok()) return 15;  // 1 GiB freed in one request
    }
    // And a fourth time by hanging up with the whole pool reserved.
    auto batch = client->Reserve(keys, sizes);
    if (!batch.ok()) return 16;
    for (size_t i = 0; i < keys.size(); ++i) std::memset(batch->data(i).data(), 0xcd, 64 * kMiB);
    return shared->b_rounds.load() > b_before ? 0 : 31;
  });
  CHECK(a == 0);
  CHECK(RunInChild([&] {
          if (!BecomeUid(kUidA)) return 20;
          auto client = Connect(*daemon);
          if (!client) return 21;
          // The session that hung up gave everything back, and it reads as zeros.
          std::vector<Key> keys;
          for (uint64_t i = 0; i < 16; ++i) keys.push_back(TestKey(501, i));
          auto batch = client->Reserve(keys, std::vector<uint64_t>(keys.size(), 64 * kMiB));
          if (!batch.ok()) return 22;
          for (size_t i = 0; i < keys.size(); ++i) {
            if (batch->code(i) != StatusCode::kOk) return 23;
            for (std::byte x : batch->data(i)) {
              if (x != std::byte{0}) return 24;
            }
          }
          return 0;
        }) == 0);
  shared->a_done = 1;
  CHECK(WaitChild(b) == 0);
  CHECK(shared->b_rounds.load() >= 8);
}

TEST_CASE("a tenant holding all its sessions cannot keep another tenant from connecting",
          "[integration][isolation]") {
  DaemonOptions options = TwoTenants(16 * kMiB, 16 * kMiB);
  options.max_sessions = 30;  // three tenants ("test", a, b): 10 sessions each
  auto daemon = Start(options);
  SharedWords shared;
  const pid_t a = SpawnChild([&] {
    if (!BecomeUid(kUidA)) return 10;
    std::vector<std::unique_ptr<Client>> held;
    for (int i = 0; i < 40; ++i) {
      auto c = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "iso"});
      if (!c.ok()) {
        if (c.status().code() != StatusCode::kResourceExhausted) return 11;
        if (c.status().message().find("tenant 'a'") == std::string::npos ||
            c.status().message().find("max_sessions = 10") == std::string::npos) {
          return 12;
        }
        break;
      }
      held.push_back(std::move(*c));
    }
    shared->value = static_cast<uint32_t>(held.size());
    shared->a_ready = 1;
    while (shared->a_done.load() == 0) usleep(1000);
    return 0;  // the sessions close as it exits
  });
  REQUIRE(WaitUntil([&] { return shared->a_ready.load() != 0 || kill(a, 0) != 0; }));
  CHECK(shared->value.load() == 10);
  // Tenant b (and the owner's tenant) still connect and work, up to their own share.
  CHECK(RunInChild([&] {
          if (!BecomeUid(kUidB)) return 20;
          std::vector<std::unique_ptr<Client>> held;
          for (int i = 0; i < 10; ++i) {
            held.push_back(Connect(*daemon));
            if (!held.back()) return 21;
          }
          std::vector<Key> keys = {TestKey(7, 0), TestKey(7, 1)};
          return StoreAndVerify(*held.back(), keys, 4096);
        }) == 0);
  auto own = Connect(*daemon);
  CHECK(own != nullptr);
  shared->a_done = 1;
  CHECK(WaitChild(a) == 0);
}

// vm.max_map_count, as kvtierd reads it.
uint64_t MaxMapCount() {
  uint64_t count = 65530;
  if (FILE* f = std::fopen("/proc/sys/vm/max_map_count", "r")) {
    unsigned long long value = 0;
    if (std::fscanf(f, "%llu", &value) == 1) count = value;
    std::fclose(f);
  }
  return count;
}

TEST_CASE("a tenant registering regions from many sessions is stopped at its share of "
          "vm.max_map_count, and the daemon and the other tenant go on",
          "[integration][isolation]") {
  // Two tenants: the test's own and a. Tenant a may hold 400 sessions of 64 regions each,
  // more than its share of the kernel's mapping limit: the share must stop it.
  const uint64_t share = MaxMapCount() / 2 / 2;
  const uint64_t sessions_needed = share / 64 + 2;
  DaemonOptions options;
  options.default_tenant = false;
  options.tenant_uids = {getuid()};
  options.socket_mode = "0666";
  options.more_tenants = {{"a", {kUidA}, 16 * kMiB}};
  options.max_sessions = static_cast<uint32_t>(2 * sessions_needed);
  auto daemon = Start(options);
  CHECK(RunInChild([&] {
          if (!BecomeUid(kUidA)) return 10;
          auto memory = HostMemory::Create(4096);
          if (!memory.ok()) return 11;
          std::vector<std::unique_ptr<Client>> sessions;
          uint64_t registered = 0;
          bool refused = false;
          while (!refused && sessions.size() < sessions_needed) {
            sessions.push_back(Connect(*daemon));
            if (!sessions.back()) return 12;
            for (int i = 0; i < 64; ++i) {
              auto id = sessions.back()->RegisterHostRegion(*memory);
              if (id.ok()) {
                ++registered;
                continue;
              }
              if (id.status().code() != StatusCode::kResourceExhausted ||
                  id.status().message().find("vm.max_map_count") == std::string::npos) {
                std::fprintf(stderr, "register: %s\n", id.status().ToString().c_str());
                return 13;
              }
              refused = true;
              break;
            }
          }
          if (!refused || registered != share) {
            std::fprintf(stderr, "registered %llu regions, share %llu\n",
                         static_cast<unsigned long long>(registered),
                         static_cast<unsigned long long>(share));
            return 14;
          }
          // At its limit, the tenant's other requests still work (a reserve, a store).
          std::vector<Key> keys = {TestKey(9, 0), TestKey(9, 1)};
          if (int step = StoreAndVerify(*sessions.front(), keys, 64 * kKiB); step != 0) {
            return 100 + step;
          }
          // A session that hangs up gives its 64 regions back: a new one registers 64 (then
          // reaches the per-session limit), and the next session is refused again.
          sessions.erase(sessions.begin());
          auto fresh = Connect(*daemon);
          if (!fresh) return 15;
          // (The daemon sees the hang-up at its own pace: the first register waits for it.)
          if (!WaitUntil([&] { return fresh->RegisterHostRegion(*memory).ok(); })) return 16;
          for (int i = 1; i < 64; ++i) {
            if (!fresh->RegisterHostRegion(*memory).ok()) return 17;
          }
          auto next = Connect(*daemon);
          if (!next) return 18;
          auto again = next->RegisterHostRegion(*memory);
          if (again.ok() ||
              again.status().message().find("vm.max_map_count") == std::string::npos) {
            return 19;
          }
          return 0;
        }) == 0);
  // The other tenant registers and copies through a region as usual.
  auto client = Connect(*daemon);
  REQUIRE(client != nullptr);
  auto memory = HostMemory::Create(256 * kKiB);
  REQUIRE(memory.ok());
  auto region = client->RegisterHostRegion(*memory);
  REQUIRE(region.ok());
  const std::vector<Key> keys = {TestKey(3, 0)};
  FillBlock(keys[0], memory->bytes().first(64 * kKiB));
  const std::vector<uint64_t> offsets = {0};
  const std::vector<uint64_t> sizes = {64 * kKiB};
  REQUIRE(client->Offload(keys, *region, offsets, sizes).ok());
  std::vector<OnloadInfo> infos(1);
  const std::vector<uint64_t> back = {128 * kKiB};
  REQUIRE(client->Onload(keys, *region, back, infos).ok());
  CHECK(infos[0].code == StatusCode::kOk);
  CHECK(VerifyBlock(keys[0], memory->bytes().subspan(128 * kKiB, 64 * kKiB)));
  CHECK(daemon->Alive());
}

TEST_CASE("a tenant's 4,096-block onload does not hold up another tenant's copies",
          "[integration][isolation]") {
  constexpr uint64_t kBlock = 64 * kKiB;
  constexpr uint32_t kBlocks = 4096;  // 256 MiB, one layer per block
  auto daemon = Start(TwoTenants(320 * kMiB, 16 * kMiB));
  SharedWords shared;
  const pid_t a = SpawnChild([&] {
    if (!BecomeUid(kUidA)) return 10;
    auto client = Connect(*daemon);
    if (!client) return 11;
    auto memory = HostMemory::Create(kBlocks * kBlock + 4096);
    if (!memory.ok()) return 12;
    auto region = client->RegisterHostRegion(*memory);
    if (!region.ok()) return 13;
    std::vector<Key> keys;
    std::vector<uint64_t> offsets, sizes;
    for (uint32_t i = 0; i < kBlocks; ++i) {
      keys.push_back(TestKey(600, i));
      offsets.push_back(uint64_t{i} * kBlock);
      sizes.push_back(kBlock);
      FillBlock(keys.back(), memory->bytes().subspan(offsets.back(), kBlock));
    }
    if (!client->Offload(keys, *region, offsets, sizes).ok()) return 14;
    const uint64_t word = uint64_t{kBlocks} * kBlock;
    auto* progress = reinterpret_cast<std::atomic<uint32_t>*>(memory->data() + word);
    std::vector<OnloadInfo> infos(kBlocks);
    // Onload it again and again while b copies (b starts once the first one is under way).
    std::memset(memory->data(), 0, word);  // the first onload is checked below
    while (shared->a_done.load() == 0) {
      progress->store(0);
      const TransferOptions layered{.layers = kBlocks, .progress_region = *region,
                                    .progress_offset = word};
      if (!client->StartOnload(keys, *region, offsets, layered).ok()) return 15;
      shared->a_ready = 1;
      if (!client->FinishOnload(infos).ok()) return 16;
      for (uint32_t i = 0; i < kBlocks; i += 511) {
        if (!VerifyBlock(keys[i], memory->bytes().subspan(offsets[i], kBlock))) return 17;
      }
      shared->value.fetch_add(1);  // onloads done
    }
    return 0;
  });
  REQUIRE(WaitUntil([&] { return shared->a_ready.load() != 0 || kill(a, 0) != 0; }, 120000));
  CHECK(RunInChild([&] {
          if (!BecomeUid(kUidB)) return 20;
          auto client = Connect(*daemon);
          if (!client) return 21;
          auto memory = HostMemory::Create(2 * kBlock);
          if (!memory.ok()) return 22;
          auto region = client->RegisterHostRegion(*memory);
          if (!region.ok()) return 23;
          const std::vector<uint64_t> there = {0}, back = {kBlock}, sizes = {kBlock};
          std::vector<OnloadInfo> infos(1);
          const uint32_t a_before = shared->value.load();
          for (uint64_t round = 0; round < 50; ++round) {
            const std::vector<Key> keys = {TestKey(700, round)};
            FillBlock(keys[0], memory->bytes().first(kBlock));
            if (!client->Offload(keys, *region, there, sizes).ok()) return 24;
            if (!client->Onload(keys, *region, back, infos).ok()) return 25;
            if (infos[0].code != StatusCode::kOk) return 26;
            if (!VerifyBlock(keys[0], memory->bytes().subspan(kBlock, kBlock))) return 27;
            shared->b_rounds.fetch_add(1);
          }
          // Served in turns, b's 100 copies went by while a's big onload ran a few times.
          // Behind it in one queue, each would have waited for one of a's onloads to end.
          shared->b_rounds.store(shared->value.load() - a_before);
          return 0;
        }) == 0);
  shared->a_done = 1;
  CHECK(WaitChild(a) == 0);
  INFO("tenant a's 4,096-block onloads that ended during b's 100 copies");
  CHECK(shared->b_rounds.load() < 50);
}

}  // namespace
}  // namespace kvtier::testing
