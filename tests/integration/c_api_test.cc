// The C ABI against a real daemon: the same semantics as the C++ API, and misuse gets a status,
// never a crash or an exception through C frames.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/c_api.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

kvtier_key CKey(const std::string& text) {
  kvtier_key k{};
  k.len = static_cast<uint8_t>(text.size());
  std::memcpy(k.bytes, text.data(), text.size());
  return k;
}

TEST_CASE("the C ABI stores, finds, leases and releases blocks", "[integration][c_api]") {
  auto daemon = DaemonProcess::Start();
  char error[256] = {};
  kvtier_client* c = nullptr;
  REQUIRE(kvtier_connect(daemon->socket_path().c_str(), "c/ns", &c, error, sizeof(error)) ==
          KVTIER_OK);
  REQUIRE(c != nullptr);
  const std::vector<kvtier_key> keys = {CKey("a"), CKey("b")};
  const std::vector<uint64_t> sizes = {4096, 70000};
  std::vector<uint64_t> offsets(2);
  std::vector<uint16_t> codes(2, 99);
  REQUIRE(kvtier_reserve(c, keys.data(), sizes.data(), 2, offsets.data(), codes.data()) ==
          KVTIER_OK);
  auto* base = static_cast<unsigned char*>(kvtier_pool_base(c));
  for (size_t i = 0; i < 2; ++i) {
    REQUIRE(codes[i] == KVTIER_OK);
    REQUIRE(offsets[i] + sizes[i] <= kvtier_pool_size(c));
    std::memset(base + offsets[i], 'A' + static_cast<int>(i), sizes[i]);
  }
  REQUIRE(kvtier_commit(c, keys.data(), 2, codes.data()) == KVTIER_OK);
  size_t matched = 0;
  std::vector<uint8_t> tiers(3);
  const std::vector<kvtier_key> probe = {CKey("a"), CKey("b"), CKey("c")};
  REQUIRE(kvtier_match_prefix(c, probe.data(), 3, &matched, tiers.data()) == KVTIER_OK);
  CHECK(matched == 2);
  CHECK(tiers[0] == KVTIER_TIER_DRAM);
  std::vector<kvtier_lease> leases(2);
  REQUIRE(kvtier_acquire(c, keys.data(), 2, leases.data()) == KVTIER_OK);
  for (size_t i = 0; i < 2; ++i) {
    REQUIRE(leases[i].code == KVTIER_OK);
    CHECK(leases[i].size == sizes[i]);
    CHECK(base[leases[i].offset] == 'A' + i);
    CHECK(base[leases[i].offset + leases[i].size - 1] == 'A' + i);
  }
  kvtier_stats stats{};
  REQUIRE(kvtier_stats_get(c, &stats) == KVTIER_OK);
  CHECK(stats.committed_blocks == 2);
  CHECK(stats.leased_blocks == 2);
  const std::vector<uint64_t> ids = {leases[0].lease_id, leases[1].lease_id};
  REQUIRE(kvtier_release(c, ids.data(), 2, codes.data()) == KVTIER_OK);
  // Released twice: the call is carried out, and each code says the lease was not live.
  CHECK(kvtier_release(c, ids.data(), 2, codes.data()) == KVTIER_OK);
  CHECK(codes[0] == KVTIER_NOT_FOUND);
  CHECK(codes[1] == KVTIER_NOT_FOUND);
  CHECK(std::string(kvtier_error()).empty());
  REQUIRE(kvtier_remove(c, keys.data(), 2, nullptr) == KVTIER_OK);
  REQUIRE(kvtier_stats_get(c, &stats) == KVTIER_OK);
  CHECK(stats.used_bytes == 0);
  kvtier_close(c);
}

TEST_CASE("the C ABI offloads from and onloads into a host region, layer by layer",
          "[integration][c_api]") {
  auto daemon = DaemonProcess::Start();
  kvtier_client* c = nullptr;
  REQUIRE(kvtier_connect(daemon->socket_path().c_str(), "c/ns", &c, nullptr, 0) == KVTIER_OK);
  constexpr uint64_t kBytes = 1 << 20;
  const int fd = memfd_create("c-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  REQUIRE(fd >= 0);
  REQUIRE(ftruncate(fd, kBytes) == 0);
  REQUIRE(posix_fallocate(fd, 0, kBytes) == 0);
  REQUIRE(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
  void* mapped = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  REQUIRE(mapped != MAP_FAILED);
  auto* mem = static_cast<unsigned char*>(mapped);
  uint32_t region = 0;
  REQUIRE(kvtier_register_host_region(c, fd, kBytes, mem, &region) == KVTIER_OK);
  const std::vector<kvtier_key> keys = {CKey("x0"), CKey("x1"), CKey("x2"), CKey("x3")};
  const std::vector<uint64_t> sizes = {1000, 2000, 3000, 4000};
  const std::vector<uint64_t> from = {0, 4096, 8192, 12288};
  for (size_t i = 0; i < 4; ++i) std::memset(mem + from[i], 'a' + static_cast<int>(i), sizes[i]);
  std::vector<uint16_t> codes(4, 99);
  REQUIRE(kvtier_offload(c, keys.data(), from.data(), sizes.data(), 4, region, nullptr,
                         codes.data()) == KVTIER_OK);
  for (uint16_t code : codes) CHECK(code == KVTIER_OK);

  std::memset(mem, 0, kBytes);
  const std::vector<uint64_t> to = {65536, 131072, 196608, 262144};
  const kvtier_transfer_options options{2, region, kBytes - 4, KVTIER_NO_EVENT, KVTIER_NO_EVENT};
  REQUIRE(kvtier_start_onload(c, keys.data(), to.data(), 4, region, &options) == KVTIER_OK);
  REQUIRE(kvtier_wait_layer(c, 0) == KVTIER_OK);
  CHECK(mem[to[1] + sizes[1] - 1] == 'b');  // layer 0 is keys 0 and 1
  REQUIRE(kvtier_wait_layer(c, 1) == KVTIER_OK);
  std::vector<kvtier_onload_result> out(4);
  REQUIRE(kvtier_finish_onload(c, out.data(), 4) == KVTIER_OK);
  for (size_t i = 0; i < 4; ++i) {
    CHECK(out[i].code == KVTIER_OK);
    CHECK(out[i].size == sizes[i]);
    CHECK(out[i].tier == KVTIER_TIER_DRAM);
    CHECK(mem[to[i]] == 'a' + i);
    CHECK(mem[to[i] + sizes[i] - 1] == 'a' + i);
    CHECK(mem[to[i] + sizes[i]] == 0);
  }
  // The blocking form, and a CUDA region on a host without a CUDA device.
  std::memset(mem, 0, kBytes);
  REQUIRE(kvtier_onload(c, keys.data(), from.data(), 4, region, nullptr, out.data()) == KVTIER_OK);
  CHECK(mem[from[3] + sizes[3] - 1] == 'd');
  unsigned char handle[64] = {1};
  uint32_t gpu = 0;
  CHECK(kvtier_register_cuda_region(c, 0, handle, kBytes, nullptr, 0, &gpu) == KVTIER_UNAVAILABLE);
  CHECK(std::string(kvtier_last_error(c)).find("no CUDA device") != std::string::npos);
  REQUIRE(kvtier_deregister_region(c, region) == KVTIER_OK);
  CHECK(kvtier_deregister_region(c, region) == KVTIER_NOT_FOUND);
  munmap(mapped, kBytes);
  close(fd);
  kvtier_close(c);
}

TEST_CASE("the C ABI turns misuse into statuses", "[integration][c_api]") {
  auto daemon = DaemonProcess::Start();
  kvtier_client* c = nullptr;
  REQUIRE(kvtier_connect(daemon->socket_path().c_str(), "c/ns", &c, nullptr, 0) == KVTIER_OK);
  const kvtier_key key = CKey("k");
  uint64_t size = 4096, offset = 0;
  uint16_t code = 0;
  SECTION("NULL arrays") {
    CHECK(kvtier_reserve(c, nullptr, &size, 1, &offset, &code) == KVTIER_INVALID_ARGUMENT);
    CHECK(std::string(kvtier_last_error(c)) == "keys is NULL");
    CHECK(kvtier_reserve(nullptr, &key, &size, 1, &offset, &code) == KVTIER_INVALID_ARGUMENT);
    CHECK(kvtier_connect("x", "y", nullptr, nullptr, 0) == KVTIER_INVALID_ARGUMENT);
  }
  SECTION("an absurd count is refused, not an exception or a huge allocation") {
    CHECK(kvtier_commit(c, &key, SIZE_MAX / 4, nullptr) == KVTIER_INVALID_ARGUMENT);
    CHECK(std::string(kvtier_last_error(c)).find("keys per call") != std::string::npos);
  }
  SECTION("an oversized key is rejected with a message") {
    kvtier_key bad = key;
    bad.len = 40;
    CHECK(kvtier_reserve(c, &bad, &size, 1, &offset, &code) == KVTIER_INVALID_ARGUMENT);
    CHECK(std::string(kvtier_last_error(c)).find("1..32 bytes") != std::string::npos);
  }
  SECTION("connecting to nothing names the problem") {
    char error[256] = {};
    kvtier_client* none = nullptr;
    CHECK(kvtier_connect("/nonexistent/kvtierd.sock", "x", &none, error, sizeof(error)) ==
          KVTIER_UNAVAILABLE);
    CHECK(none == nullptr);
    CHECK(std::string(error).find("not running") != std::string::npos);
    CHECK(std::string(kvtier_error()).find("not running") != std::string::npos);
    CHECK(std::string(kvtier_status_name(KVTIER_UNAVAILABLE)) == "unavailable");
    // The next call that succeeds clears the message.
    kvtier_stats stats{};
    REQUIRE(kvtier_stats_get(c, &stats) == KVTIER_OK);
    CHECK(std::string(kvtier_error()).empty());
  }
  SECTION("a failed call leaves no per-key OK behind") {
    // The whole call is refused (65 MiB is over max_block_bytes): no code may say OK, nor may
    // the 4 KiB block have been reserved.
    const std::vector<kvtier_key> keys = {CKey("small"), CKey("huge")};
    const std::vector<uint64_t> sizes = {4096, 65ull << 20};
    std::vector<uint64_t> offsets(2, 7);
    std::vector<uint16_t> codes(2, KVTIER_OK);
    CHECK(kvtier_reserve(c, keys.data(), sizes.data(), 2, offsets.data(), codes.data()) ==
          KVTIER_INVALID_ARGUMENT);
    CHECK(codes == std::vector<uint16_t>(2, KVTIER_INVALID_ARGUMENT));
    CHECK(std::string(kvtier_error()).find("max_block_bytes") != std::string::npos);
    kvtier_stats stats{};
    REQUIRE(kvtier_stats_get(c, &stats) == KVTIER_OK);
    CHECK(stats.reserved_blocks == 0);
    // NULL arrays: each code says invalid_argument too, and so does each lease and result.
    codes.assign(2, KVTIER_OK);
    CHECK(kvtier_commit(c, nullptr, 2, codes.data()) == KVTIER_INVALID_ARGUMENT);
    CHECK(codes == std::vector<uint16_t>(2, KVTIER_INVALID_ARGUMENT));
    std::vector<kvtier_lease> leases(2, kvtier_lease{1, 0, 1, KVTIER_OK, 0});
    CHECK(kvtier_acquire(c, nullptr, 2, leases.data()) == KVTIER_INVALID_ARGUMENT);
    CHECK(leases[0].code != KVTIER_OK);
    CHECK(leases[1].code != KVTIER_OK);
    const kvtier_transfer_options three_layers{3, 0, 0, KVTIER_NO_EVENT, KVTIER_NO_EVENT};
    std::vector<kvtier_onload_result> results(2, kvtier_onload_result{1, KVTIER_OK, 0});
    std::vector<uint64_t> region_offsets = {0, 4096};
    CHECK(kvtier_onload(c, keys.data(), region_offsets.data(), 2, 1, &three_layers,
                        results.data()) == KVTIER_INVALID_ARGUMENT);
    CHECK(results[0].code == KVTIER_INVALID_ARGUMENT);
    CHECK(results[1].code == KVTIER_INVALID_ARGUMENT);
  }
  SECTION("calls carried out report per-key refusals only per key") {
    const kvtier_key missing = CKey("never stored");
    code = KVTIER_OK;
    CHECK(kvtier_remove(c, &missing, 1, &code) == KVTIER_OK);
    CHECK(code == KVTIER_NOT_FOUND);
    code = KVTIER_OK;
    CHECK(kvtier_commit(c, &missing, 1, &code) == KVTIER_OK);
    CHECK(code == KVTIER_NOT_FOUND);
    kvtier_lease lease{};
    CHECK(kvtier_acquire(c, &missing, 1, &lease) == KVTIER_OK);
    CHECK(lease.code == KVTIER_NOT_FOUND);
  }
  SECTION("limits, version, TTLs and connect options") {
    CHECK(kvtier_max_block_bytes(c) == DaemonOptions{}.max_block_bytes);
    CHECK(kvtier_spill_max_block_bytes(c) == 0);  // this daemon has no SSD tier
    CHECK(std::string(kvtier_version()).find('.') != std::string::npos);
    CHECK(kvtier_protocol_version() >= 1);
    kvtier_client* quick = nullptr;
    const kvtier_connect_options options{5000, 0};
    REQUIRE(kvtier_connect_ex(daemon->socket_path().c_str(), "c/ns", &options, &quick) ==
            KVTIER_OK);
    const kvtier_key k = CKey("ttl");
    const uint32_t ttl = 3600;
    REQUIRE(kvtier_reserve_ex(quick, &k, &size, &ttl, 1, &offset, &code) == KVTIER_OK);
    REQUIRE(code == KVTIER_OK);
    REQUIRE(kvtier_commit(quick, &k, 1, &code) == KVTIER_OK);
    CHECK(code == KVTIER_OK);
    int fd = -1;
    void* data = nullptr;
    REQUIRE(kvtier_host_memory_create(1 << 20, &fd, &data) == KVTIER_OK);
    uint32_t region = 0;
    REQUIRE(kvtier_register_host_region(quick, fd, 1 << 20, data, &region) == KVTIER_OK);
    const uint64_t zero = 0;
    kvtier_onload_result result{};
    REQUIRE(kvtier_onload(quick, &k, &zero, 1, region, nullptr, &result) == KVTIER_OK);
    CHECK(result.code == KVTIER_OK);
    CHECK(result.size == size);
    kvtier_close(quick);
    kvtier_host_memory_free(fd, data, 1 << 20);
  }
  // After all that the client still works.
  REQUIRE(kvtier_reserve(c, &key, &size, 1, &offset, &code) == KVTIER_OK);
  CHECK(code == KVTIER_OK);
  kvtier_close(c);
}

// Stores `size` bytes of 0x5a under `key` and leases the block.
kvtier_lease LeaseNewBlock(kvtier_client* c, const kvtier_key& key, uint64_t size) {
  uint64_t offset = 0;
  uint16_t code = 0;
  REQUIRE(kvtier_reserve(c, &key, &size, 1, &offset, &code) == KVTIER_OK);
  REQUIRE(code == KVTIER_OK);
  std::memset(static_cast<unsigned char*>(kvtier_pool_base(c)) + offset, 0x5a, size);
  REQUIRE(kvtier_commit(c, &key, 1, &code) == KVTIER_OK);
  REQUIRE(code == KVTIER_OK);
  kvtier_lease lease{};
  REQUIRE(kvtier_acquire(c, &key, 1, &lease) == KVTIER_OK);
  REQUIRE(lease.code == KVTIER_OK);
  return lease;
}

TEST_CASE("a purge during a read is caught by kvtier_verify_leases", "[integration][c_api]") {
  auto daemon = DaemonProcess::Start();
  kvtier_client* c = nullptr;
  REQUIRE(kvtier_connect(daemon->socket_path().c_str(), "c/ns", &c, nullptr, 0) == KVTIER_OK);
  const uint64_t size = 1 << 20;
  const kvtier_lease lease = LeaseNewBlock(c, CKey("block"), size);
  const auto* base = static_cast<const unsigned char*>(kvtier_pool_base(c));
  std::vector<unsigned char> copy(size);
  // The first half is read while the lease holds...
  std::memcpy(copy.data(), base + lease.offset, size / 2);
  CHECK(kvtier_verify_leases(c) == KVTIER_OK);
  // ...then the operator purges the tenant, and the rest is read: it is zeroes now.
  std::string out, err;
  REQUIRE(RunCtl(*daemon, {"purge", "test"}, &out, &err) == 0);
  std::memcpy(copy.data() + size / 2, base + lease.offset + size / 2, size / 2);
  CHECK(copy[size - 1] == 0);
  // The reader learns before it uses the bytes.
  CHECK(kvtier_verify_leases(c) == KVTIER_FAILED_PRECONDITION);
  CHECK(std::string(kvtier_error()).find("revoked") != std::string::npos);
  kvtier_close(c);
}

TEST_CASE("the first wiped byte a reader sees comes after its session's hang-up",
          "[integration][c_api]") {
  // A reader spinning on its leased block while the tenant is purged: whenever the wipe
  // reaches the block, the session must already be ended as the reader sees it. (That the
  // hang-up comes before anything is given back is tested on Session itself, session_test.cc.)
  auto daemon = DaemonProcess::Start();
  kvtier_client* c = nullptr;
  REQUIRE(kvtier_connect(daemon->socket_path().c_str(), "c/ns", &c, nullptr, 0) == KVTIER_OK);
  const uint64_t size = 64 << 10;
  const kvtier_lease lease = LeaseNewBlock(c, CKey("block"), size);
  REQUIRE(lease.offset + size <= (4u << 20));  // inside the first chunk a purge wipes
  const auto* base = static_cast<const unsigned char*>(kvtier_pool_base(c));
  std::atomic<bool> purged{false};
  std::thread purge([&] {
    std::string out, err;
    (void)RunCtl(*daemon, {"purge", "test"}, &out, &err);
    purged = true;
  });
  // Read the block's last byte until the wipe reaches it (or the purge is over).
  const volatile unsigned char* last = base + lease.offset + size - 1;
  while (*last != 0 && !purged.load()) {
  }
  const bool saw_wipe = *last == 0;
  const kvtier_status verdict = kvtier_verify_leases(c);
  purge.join();
  REQUIRE(saw_wipe);
  CHECK(verdict == KVTIER_FAILED_PRECONDITION);
  kvtier_close(c);
}

// --- The rest of the C ABI: abort, prefetch, hints, CUDA pinning, the copy helpers, and one
// kvtier_client shared by several threads. ---

kvtier_client* MustConnectC(const DaemonProcess& daemon, const char* name_space = "c/ns") {
  kvtier_client* c = nullptr;
  char error[256] = {};
  const kvtier_status s =
      kvtier_connect(daemon.socket_path().c_str(), name_space, &c, error, sizeof(error));
  if (s != KVTIER_OK) FAIL("kvtier_connect: " << error);
  return c;
}

kvtier_stats StatsOfC(kvtier_client* c) {
  kvtier_stats stats{};
  REQUIRE(kvtier_stats_get(c, &stats) == KVTIER_OK);
  return stats;
}

// Stores `size` bytes of `fill` under `key` through the C ABI.
void StoreC(kvtier_client* c, const kvtier_key& key, uint64_t size, unsigned char fill) {
  uint64_t offset = 0;
  uint16_t code = 99;
  REQUIRE(kvtier_reserve(c, &key, &size, 1, &offset, &code) == KVTIER_OK);
  REQUIRE(code == KVTIER_OK);
  std::memset(static_cast<unsigned char*>(kvtier_pool_base(c)) + offset, fill, size);
  REQUIRE(kvtier_commit(c, &key, 1, &code) == KVTIER_OK);
  REQUIRE(code == KVTIER_OK);
}

// The tier kvtier_match_prefix reports for `key` alone; KVTIER_TIER_NONE if it is missing.
uint8_t TierOfC(kvtier_client* c, const kvtier_key& key) {
  size_t matched = 0;
  uint8_t tier = KVTIER_TIER_NONE;
  REQUIRE(kvtier_match_prefix(c, &key, 1, &matched, &tier) == KVTIER_OK);
  return matched == 1 ? tier : uint8_t{KVTIER_TIER_NONE};
}

// True if the block leased under `key` is `size` bytes of `fill` (the lease is released).
bool LeasedBytesAre(kvtier_client* c,
                    const kvtier_key& key,
                    uint64_t size,
                    unsigned char fill,
                    uint8_t* tier = nullptr) {
  kvtier_lease lease{};
  if (kvtier_acquire(c, &key, 1, &lease) != KVTIER_OK || lease.code != KVTIER_OK) return false;
  if (tier != nullptr) *tier = lease.tier;
  const auto* bytes = static_cast<const unsigned char*>(kvtier_pool_base(c)) + lease.offset;
  bool same = lease.size == size;
  for (uint64_t i = 0; same && i < size; ++i)
    same = bytes[i] == fill;
  uint16_t code = 0;
  (void)kvtier_release(c, &lease.lease_id, 1, &code);
  return same && kvtier_verify_leases(c) == KVTIER_OK;
}

kvtier_key NumberedCKey(const char* prefix, size_t i) {
  return CKey(std::string(prefix) + std::to_string(i));
}

TEST_CASE("kvtier_abort drops only this session's reservations and frees their keys",
          "[integration][c_api][c_abort]") {
  auto daemon = DaemonProcess::Start();
  kvtier_client* a = MustConnectC(*daemon);
  kvtier_client* b = MustConnectC(*daemon);
  const std::vector<kvtier_key> keys = {CKey("r0"), CKey("r1"), CKey("r2")};
  const std::vector<uint64_t> sizes(3, 4096);
  std::vector<uint64_t> offsets(3);
  std::vector<uint16_t> codes(3, 99);
  REQUIRE(kvtier_reserve(a, keys.data(), sizes.data(), 3, offsets.data(), codes.data()) ==
          KVTIER_OK);
  REQUIRE(codes == std::vector<uint16_t>(3, KVTIER_OK));
  REQUIRE(StatsOfC(a).reserved_blocks == 3);

  // Another session cannot abort a's reservation: the call is carried out, the key is not its.
  uint16_t code = KVTIER_OK;
  CHECK(kvtier_abort(b, &keys[0], 1, &code) == KVTIER_OK);
  CHECK(code == KVTIER_NOT_FOUND);
  CHECK(StatsOfC(a).reserved_blocks == 3);

  // a aborts two: each is OK, and they were never visible.
  codes.assign(2, 99);
  REQUIRE(kvtier_abort(a, keys.data(), 2, codes.data()) == KVTIER_OK);
  CHECK(codes == std::vector<uint16_t>(2, KVTIER_OK));
  CHECK(StatsOfC(a).reserved_blocks == 1);
  CHECK(TierOfC(b, keys[0]) == KVTIER_TIER_NONE);
  // A second abort of the same key finds nothing.
  code = KVTIER_OK;
  CHECK(kvtier_abort(a, &keys[1], 1, &code) == KVTIER_OK);
  CHECK(code == KVTIER_NOT_FOUND);
  // An aborted key is free: another session reserves, writes and commits it.
  StoreC(b, keys[0], 8192, 0x3c);
  CHECK(LeasedBytesAre(a, keys[0], 8192, 0x3c));

  // A committed key is no reservation any more: abort leaves it stored.
  REQUIRE(kvtier_commit(a, &keys[2], 1, &code) == KVTIER_OK);
  REQUIRE(code == KVTIER_OK);
  code = KVTIER_OK;
  CHECK(kvtier_abort(a, &keys[2], 1, &code) == KVTIER_OK);
  CHECK(code == KVTIER_NOT_FOUND);
  CHECK(TierOfC(b, keys[2]) == KVTIER_TIER_DRAM);
  CHECK(StatsOfC(a).reserved_blocks == 0);

  // codes may be NULL.
  REQUIRE(kvtier_reserve(a, &keys[1], &sizes[1], 1, &offsets[1], &code) == KVTIER_OK);
  REQUIRE(code == KVTIER_OK);
  CHECK(kvtier_abort(a, &keys[1], 1, nullptr) == KVTIER_OK);
  CHECK(StatsOfC(a).reserved_blocks == 0);

  // Misuse: refused before anything is sent, each code saying so.
  codes.assign(2, KVTIER_OK);
  CHECK(kvtier_abort(a, nullptr, 2, codes.data()) == KVTIER_INVALID_ARGUMENT);
  CHECK(codes == std::vector<uint16_t>(2, KVTIER_INVALID_ARGUMENT));
  CHECK(std::string(kvtier_error()) == "keys is NULL");
  CHECK(kvtier_abort(nullptr, keys.data(), 1, &code) == KVTIER_INVALID_ARGUMENT);
  CHECK(std::string(kvtier_error()) == "c is NULL");
  kvtier_key empty = CKey("x");
  empty.len = 0;
  code = KVTIER_OK;
  CHECK(kvtier_abort(a, &empty, 1, &code) == KVTIER_INVALID_ARGUMENT);
  CHECK(code == KVTIER_INVALID_ARGUMENT);
  CHECK(kvtier_abort(a, keys.data(), (size_t{1} << 24) + 1, nullptr) == KVTIER_INVALID_ARGUMENT);
  CHECK(std::string(kvtier_error()).find("keys per call") != std::string::npos);
  // Both sessions still work.
  CHECK(StatsOfC(a).committed_blocks == 2);
  CHECK(StatsOfC(b).committed_blocks == 2);
  kvtier_close(a);
  kvtier_close(b);
}

TEST_CASE("kvtier_prefetch brings SSD-only blocks into DRAM and reports misses per key",
          "[integration][c_api][c_prefetch]") {
  TempDir state;
  DaemonOptions o;
  o.dram_bytes = 32ull << 20;  // 32 blocks of 1 MiB
  o.spill_dir = state.path() / "spill";
  o.ssd_bytes = 256ull << 20;
  auto daemon = DaemonProcess::Start(o);
  kvtier_client* c = MustConnectC(*daemon);
  constexpr uint64_t kBlock = 1 << 20;
  // 64 MiB through a 32 MiB pool: the older blocks end up on SSD only.
  for (size_t i = 0; i < 64; ++i) {
    StoreC(c, NumberedCKey("p", i), kBlock, static_cast<unsigned char>(1 + i));
  }
  std::vector<size_t> on_ssd;
  REQUIRE(WaitUntil([&] {
    on_ssd.clear();
    for (size_t i = 0; i < 64 && on_ssd.size() < 4; ++i) {
      if (TierOfC(c, NumberedCKey("p", i)) == KVTIER_TIER_SSD) on_ssd.push_back(i);
    }
    return on_ssd.size() == 4;
  }));
  // Four SSD-only blocks, one never stored, and the newest (in DRAM).
  std::vector<kvtier_key> keys;
  for (size_t i : on_ssd)
    keys.push_back(NumberedCKey("p", i));
  keys.push_back(CKey("never stored"));
  keys.push_back(NumberedCKey("p", 63));
  REQUIRE(TierOfC(c, keys[5]) == KVTIER_TIER_DRAM);
  const uint64_t promotions = StatsOfC(c).promotions;
  std::vector<uint16_t> codes(keys.size(), 99);
  REQUIRE(kvtier_prefetch(c, keys.data(), keys.size(), codes.data()) == KVTIER_OK);
  CHECK(codes == std::vector<uint16_t>{KVTIER_OK, KVTIER_OK, KVTIER_OK, KVTIER_OK, KVTIER_NOT_FOUND,
                                       KVTIER_OK});
  CHECK(StatsOfC(c).promotions == promotions + 4);
  // They are in DRAM now: an acquire finds them there (no promotion of its own), intact.
  for (size_t k = 0; k < 4; ++k) {
    INFO("block p" << on_ssd[k]);
    CHECK(TierOfC(c, keys[k]) == KVTIER_TIER_DRAM);
    uint8_t tier = KVTIER_TIER_NONE;
    CHECK(LeasedBytesAre(c, keys[k], kBlock, static_cast<unsigned char>(1 + on_ssd[k]), &tier));
    CHECK(tier == KVTIER_TIER_DRAM);
  }
  CHECK(StatsOfC(c).promotions == promotions + 4);
  // No leases are left behind by the prefetch.
  CHECK(StatsOfC(c).leased_blocks == 0);
  // codes may be NULL; NULL keys are refused with each code saying so.
  CHECK(kvtier_prefetch(c, keys.data(), 1, nullptr) == KVTIER_OK);
  codes.assign(2, KVTIER_OK);
  CHECK(kvtier_prefetch(c, nullptr, 2, codes.data()) == KVTIER_INVALID_ARGUMENT);
  CHECK(codes == std::vector<uint16_t>(2, KVTIER_INVALID_ARGUMENT));
  kvtier_close(c);
}

TEST_CASE("kvtier_reuse_soon and kvtier_done_with reach the eviction policy",
          "[integration][c_api][c_hints]") {
  DaemonOptions o;
  o.dram_bytes = 32ull << 20;  // 32 blocks of 1 MiB
  auto daemon = DaemonProcess::Start(o);
  kvtier_client* c = MustConnectC(*daemon);
  REQUIRE(kvtier_has_hints(c) == 1);
  CHECK(kvtier_has_hints(nullptr) == 0);
  constexpr uint64_t kBlock = 1 << 20;
  for (size_t i = 0; i < 32; ++i)
    StoreC(c, NumberedCKey("h", i), kBlock, 0x11);  // h0 oldest
  // The newest is done with, the oldest will be reused soon; a key never stored is not found.
  const std::vector<kvtier_key> done = {NumberedCKey("h", 31), CKey("never stored")};
  std::vector<uint16_t> codes(2, 99);
  REQUIRE(kvtier_done_with(c, done.data(), 2, codes.data()) == KVTIER_OK);
  CHECK(codes == std::vector<uint16_t>{KVTIER_OK, KVTIER_NOT_FOUND});
  const kvtier_key soon = NumberedCKey("h", 0);
  codes.assign(1, 99);
  REQUIRE(kvtier_reuse_soon(c, &soon, 1, codes.data()) == KVTIER_OK);
  CHECK(codes[0] == KVTIER_OK);
  // Two new blocks need two evictions: the block done with, then the oldest not hinted.
  StoreC(c, CKey("new0"), kBlock, 0x22);
  StoreC(c, CKey("new1"), kBlock, 0x22);
  CHECK(StatsOfC(c).evictions == 2);
  CHECK(TierOfC(c, NumberedCKey("h", 31)) == KVTIER_TIER_NONE);
  CHECK(TierOfC(c, NumberedCKey("h", 1)) == KVTIER_TIER_NONE);
  CHECK(TierOfC(c, NumberedCKey("h", 0)) == KVTIER_TIER_DRAM);
  CHECK(TierOfC(c, NumberedCKey("h", 2)) == KVTIER_TIER_DRAM);
  // Misuse: NULL keys, a NULL client.
  codes.assign(2, KVTIER_OK);
  CHECK(kvtier_reuse_soon(c, nullptr, 2, codes.data()) == KVTIER_INVALID_ARGUMENT);
  CHECK(codes == std::vector<uint16_t>(2, KVTIER_INVALID_ARGUMENT));
  codes.assign(2, KVTIER_OK);
  CHECK(kvtier_done_with(nullptr, done.data(), 2, codes.data()) == KVTIER_INVALID_ARGUMENT);
  CHECK(codes == std::vector<uint16_t>(2, KVTIER_INVALID_ARGUMENT));
  kvtier_close(c);
}

TEST_CASE(
    "kvtier_pin_pool_for_cuda pins where kvtierd sees a CUDA device and else fails "
    "cleanly",
    "[integration][c_api][c_pin]") {
  auto daemon = DaemonProcess::Start();
  std::string status;
  REQUIRE(RunCtl(*daemon, {"--json", "status"}, &status) == 0);
  const bool has_gpu = status.find("\"gpu_devices\": 0,") == std::string::npos;
  INFO(status);
  kvtier_client* c = MustConnectC(*daemon);
  CHECK(kvtier_pin_pool_for_cuda(nullptr) == KVTIER_INVALID_ARGUMENT);
  CHECK(std::string(kvtier_error()) == "c is NULL");
  const kvtier_status pinned = kvtier_pin_pool_for_cuda(c);
  const std::string why = kvtier_error();
  INFO("kvtier_pin_pool_for_cuda: " << kvtier_status_name(pinned) << ": " << why);
  if (has_gpu) {
    CHECK(pinned == KVTIER_OK);
    CHECK(why.empty());
    CHECK(kvtier_pin_pool_for_cuda(c) == KVTIER_OK);  // once pinned, again is a no-op
  } else {
    // Documented: UNAVAILABLE without CUDA, with the reason.
    CHECK(pinned == KVTIER_UNAVAILABLE);
    CHECK(why.find("no CUDA device") != std::string::npos);
    CHECK(kvtier_pin_pool_for_cuda(c) == KVTIER_UNAVAILABLE);
  }
  // Either way the client and its pool mapping keep working.
  StoreC(c, CKey("after pin"), 65536, 0x7e);
  CHECK(LeasedBytesAre(c, CKey("after pin"), 65536, 0x7e));
  kvtier_close(c);  // unpins a pinned pool
}

TEST_CASE("kvtier_copy_to_pool and kvtier_copy_from_pool move exactly the bytes asked for",
          "[integration][c_api][c_copy]") {
  auto daemon = DaemonProcess::Start();
  kvtier_client* writer = MustConnectC(*daemon);
  kvtier_client* reader = MustConnectC(*daemon);
  // Below, at and above the 16 KiB streaming threshold, odd lengths, up to a whole 2 MiB block.
  const std::vector<uint64_t> sizes = {1, 63, 4096, 16383, 16384, 16385, 70001, 2u << 20};
  std::vector<kvtier_key> keys;
  for (size_t i = 0; i < sizes.size(); ++i)
    keys.push_back(NumberedCKey("copy", i));
  std::vector<uint64_t> offsets(sizes.size());
  std::vector<uint16_t> codes(sizes.size(), 99);
  REQUIRE(kvtier_reserve(writer, keys.data(), sizes.data(), sizes.size(), offsets.data(),
                         codes.data()) == KVTIER_OK);
  auto* pool = static_cast<unsigned char*>(kvtier_pool_base(writer));
  const uint64_t pool_bytes = kvtier_pool_size(writer);
  std::vector<std::vector<unsigned char>> sources;
  for (size_t i = 0; i < sizes.size(); ++i) {
    REQUIRE(codes[i] == KVTIER_OK);
    REQUIRE(offsets[i] + sizes[i] <= pool_bytes);
    std::vector<unsigned char> src(sizes[i]);
    for (size_t j = 0; j < src.size(); ++j) {
      src[j] = static_cast<unsigned char>(1 + (j * 7 + i) % 251);
    }
    // The slot's bytes right after the block are zeros (a fresh pool); the copy must leave them.
    const bool has_tail = offsets[i] + sizes[i] < pool_bytes;
    const unsigned char tail_before = has_tail ? pool[offsets[i] + sizes[i]] : 0;
    kvtier_copy_to_pool(pool + offsets[i], src.data(), src.size());
    CHECK(std::memcmp(pool + offsets[i], src.data(), src.size()) == 0);
    if (has_tail) CHECK(pool[offsets[i] + sizes[i]] == tail_before);
    sources.push_back(std::move(src));
  }
  REQUIRE(kvtier_commit(writer, keys.data(), keys.size(), codes.data()) == KVTIER_OK);
  std::vector<kvtier_lease> leases(keys.size());
  REQUIRE(kvtier_acquire(reader, keys.data(), keys.size(), leases.data()) == KVTIER_OK);
  const auto* view = static_cast<const unsigned char*>(kvtier_pool_base(reader));
  for (size_t i = 0; i < sizes.size(); ++i) {
    INFO(sizes[i] << " bytes");
    REQUIRE(leases[i].code == KVTIER_OK);
    REQUIRE(leases[i].size == sizes[i]);
    // Out of the pool into a buffer with guard bytes on both sides, at an odd offset.
    constexpr size_t kGuard = 64;
    std::vector<unsigned char> out(sizes[i] + 2 * kGuard + 1, 0xee);
    unsigned char* dst = out.data() + kGuard + 1;
    kvtier_copy_from_pool(dst, view + leases[i].offset, sizes[i]);
    CHECK(std::memcmp(dst, sources[i].data(), sizes[i]) == 0);
    size_t guards_changed = 0;
    for (size_t j = 0; j < kGuard + 1; ++j)
      guards_changed += out[j] != 0xee ? 1u : 0u;
    for (size_t j = out.size() - kGuard; j < out.size(); ++j) {
      guards_changed += out[j] != 0xee ? 1u : 0u;
    }
    CHECK(guards_changed == 0);
  }
  CHECK(kvtier_verify_leases(reader) == KVTIER_OK);
  // A zero-length copy writes nothing.
  unsigned char untouched = 0x5a;
  const unsigned char one = 0x01;
  kvtier_copy_to_pool(&untouched, &one, 0);
  kvtier_copy_from_pool(&untouched, &one, 0);
  CHECK(untouched == 0x5a);
  kvtier_close(reader);
  kvtier_close(writer);
}

TEST_CASE("one kvtier_client serves several threads and each keeps its own last error",
          "[integration][c_api][c_threads]") {
  auto daemon = DaemonProcess::Start();
  kvtier_client* c = MustConnectC(*daemon);
  constexpr int kThreads = 4;
  constexpr int kRounds = 150;
  std::atomic<int> failures{0};
  std::atomic<int> wrong_errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r) {
        const kvtier_key key = CKey("t" + std::to_string(t) + "/" + std::to_string(r));
        const uint64_t size = 1024 + static_cast<uint64_t>(t) * 512;
        uint64_t offset = 0;
        uint16_t code = 99;
        if (kvtier_reserve(c, &key, &size, 1, &offset, &code) != KVTIER_OK || code != KVTIER_OK) {
          ++failures;
          continue;
        }
        std::memset(static_cast<unsigned char*>(kvtier_pool_base(c)) + offset, 'a' + t, size);
        if (kvtier_commit(c, &key, 1, &code) != KVTIER_OK || code != KVTIER_OK) ++failures;
        if (!LeasedBytesAre(c, key, size, static_cast<unsigned char>('a' + t))) ++failures;
        if (kvtier_remove(c, &key, 1, &code) != KVTIER_OK || code != KVTIER_OK) ++failures;
        // A refused call sets this thread's message; a later call of another thread must not
        // change it, and this thread's next successful call clears it.
        kvtier_key bad = key;
        bad.len = 33;
        if (kvtier_commit(c, &bad, 1, &code) != KVTIER_INVALID_ARGUMENT) ++failures;
        if (std::string(kvtier_error()).find("1..32 bytes") == std::string::npos) ++wrong_errors;
        kvtier_stats stats{};
        if (kvtier_stats_get(c, &stats) != KVTIER_OK) ++failures;
        if (!std::string(kvtier_error()).empty()) ++wrong_errors;
      }
    });
  }
  for (std::thread& t : threads)
    t.join();
  CHECK(failures == 0);
  CHECK(wrong_errors == 0);
  const kvtier_stats stats = StatsOfC(c);
  CHECK(stats.committed_blocks == 0);
  CHECK(stats.reserved_blocks == 0);
  CHECK(stats.leased_blocks == 0);
  kvtier_close(c);
}

}  // namespace
}  // namespace kvtier::testing
