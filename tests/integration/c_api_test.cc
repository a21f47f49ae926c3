// The C ABI against a real daemon: the same semantics as the C++ API, and misuse gets a status,
// never a crash or an exception through C frames.
#include <cstdint>
#include <cstring>
#include <string>
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
  // Released twice: the status and each code say so, with a message.
  CHECK(kvtier_release(c, ids.data(), 2, codes.data()) == KVTIER_NOT_FOUND);
  CHECK(codes[0] == KVTIER_NOT_FOUND);
  CHECK(std::string(kvtier_last_error(c)).find("not live leases") != std::string::npos);
  REQUIRE(kvtier_remove(c, keys.data(), 2, nullptr) == KVTIER_OK);
  REQUIRE(kvtier_stats_get(c, &stats) == KVTIER_OK);
  CHECK(stats.used_bytes == 0);
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
    CHECK(std::string(kvtier_status_name(KVTIER_UNAVAILABLE)) == "unavailable");
  }
  // After all that the client still works.
  REQUIRE(kvtier_reserve(c, &key, &size, 1, &offset, &code) == KVTIER_OK);
  CHECK(code == KVTIER_OK);
  kvtier_close(c);
}

}  // namespace
}  // namespace kvtier::testing
