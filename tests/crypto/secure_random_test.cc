#include "crypto/secure_random.h"

#include <algorithm>
#include <array>
#include <bitset>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <catch2/catch.hpp>

namespace kvtier {
namespace {

TEST_CASE("SecureRandom fills the whole buffer with fresh bytes", "[crypto][random]") {
  std::array<std::byte, 32> a{};
  std::array<std::byte, 32> b{};
  REQUIRE(SecureRandom(a).ok());
  REQUIRE(SecureRandom(b).ok());
  // Two 32-byte draws collide with probability 2^-256.
  CHECK(a != b);
  CHECK(a != std::array<std::byte, 32>{});

  SECTION("every byte is written, up to the last") {
    // A large buffer: each of the 256 byte values shows up, and neither end is left zero
    // (each 64-byte end being all zero has probability 2^-512).
    std::vector<std::byte> big(64 * 1024, std::byte{0});
    REQUIRE(SecureRandom(big).ok());
    std::bitset<256> seen;
    for (std::byte x : big)
      seen.set(static_cast<size_t>(x));
    CHECK(seen.all());
    auto zero = [](std::byte x) {
      return x == std::byte{0};
    };
    CHECK_FALSE(std::all_of(big.begin(), big.begin() + 64, zero));
    CHECK_FALSE(std::all_of(big.end() - 64, big.end(), zero));
  }
  SECTION("an empty span is fine") {
    CHECK(SecureRandom(std::span<std::byte>()).ok());
  }
}

TEST_CASE("SecureRandomU64 draws differ", "[crypto][random]") {
  auto a = SecureRandomU64();
  auto b = SecureRandomU64();
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(*a != *b);
}

TEST_CASE("SecureZero zeroes exactly the range it is given", "[crypto][random]") {
  std::array<uint8_t, 64> secret;
  secret.fill(0xA5);
  SecureZero(secret.data() + 8, 32);
  for (size_t i = 0; i < secret.size(); ++i) {
    INFO("byte " << i);
    CHECK(secret[i] == (i >= 8 && i < 40 ? 0 : 0xA5));
  }
  SecureZero(secret.data(), 0);
  CHECK(secret[0] == 0xA5);
}

}  // namespace
}  // namespace kvtier
