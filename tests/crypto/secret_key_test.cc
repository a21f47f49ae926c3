#include "crypto/secret_key.h"

#include <array>
#include <cstddef>
#include <utility>

#include <catch2/catch.hpp>

#include "tests/crypto/crypto_test_util.h"

namespace kvtier {
namespace {

using testing::AllZero;
using testing::SameBytes;

TEST_CASE("SecretKey holds exactly the bytes it was given", "[crypto][secret_key]") {
  std::array<std::byte, 32> bytes{};
  for (size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = static_cast<std::byte>(i + 1);
  const SecretKey key = SecretKey::FromBytes(bytes);
  CHECK(SameBytes(key.bytes(), bytes));
}

TEST_CASE("SecretKey::Random gives distinct non-zero keys", "[crypto][secret_key]") {
  auto a = SecretKey::Random();
  auto b = SecretKey::Random();
  REQUIRE((a.ok() && b.ok()));
  CHECK_FALSE(AllZero(a->bytes()));
  CHECK_FALSE(SameBytes(a->bytes(), b->bytes()));
}

TEST_CASE("A moved-from SecretKey is zeroed", "[crypto][secret_key]") {
  std::array<std::byte, 32> bytes{};
  bytes.fill(std::byte{0x5a});
  SecretKey source = SecretKey::FromBytes(bytes);

  SECTION("by move construction") {
    SecretKey target(std::move(source));
    CHECK(SameBytes(target.bytes(), bytes));
    CHECK(AllZero(source.bytes()));  // NOLINT(bugprone-use-after-move): the point of the test
  }
  SECTION("by move assignment") {
    SecretKey target = SecretKey::FromBytes(std::array<std::byte, 32>{});
    target = std::move(source);
    CHECK(SameBytes(target.bytes(), bytes));
    CHECK(AllZero(source.bytes()));  // NOLINT(bugprone-use-after-move): the point of the test
  }
}

}  // namespace
}  // namespace kvtier
