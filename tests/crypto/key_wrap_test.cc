#include "crypto/key_wrap.h"

#include <cstddef>
#include <cstring>
#include <span>
#include <string_view>
#include <utility>

#include <catch2/catch.hpp>

#include "crypto/secret_key.h"
#include "tests/crypto/crypto_test_util.h"

namespace kvtier {
namespace {

using testing::SameKey;

std::span<const std::byte> Aad(std::string_view text) {
  return std::as_bytes(std::span(text.data(), text.size()));
}

SecretKey RandomKey() {
  auto key = SecretKey::Random();
  REQUIRE(key.ok());
  return std::move(*key);
}

TEST_CASE("UnwrapKey returns the wrapped key under the right kek and aad", "[crypto][key_wrap]") {
  const SecretKey kek = RandomKey();
  const SecretKey data_key = RandomKey();
  auto wrapped = WrapKey(kek, data_key, Aad("segment 7"));
  REQUIRE(wrapped.ok());

  auto unwrapped = UnwrapKey(kek, *wrapped, Aad("segment 7"));
  REQUIRE(unwrapped.ok());
  CHECK(SameKey(*unwrapped, data_key));

  SECTION("the ciphertext is not the key in the clear") {
    CHECK(std::memcmp(wrapped->ciphertext, data_key.bytes().data(), 32) != 0);
  }
  SECTION("empty aad works too") {
    auto w = WrapKey(kek, data_key, {});
    REQUIRE(w.ok());
    auto u = UnwrapKey(kek, *w, {});
    REQUIRE(u.ok());
    CHECK(SameKey(*u, data_key));
  }
}

TEST_CASE("UnwrapKey reports kDataLoss for a wrong kek, wrong aad or altered bytes",
          "[crypto][key_wrap]") {
  const SecretKey kek = RandomKey();
  const SecretKey data_key = RandomKey();
  auto wrapped = WrapKey(kek, data_key, Aad("tenant a / segment 1"));
  REQUIRE(wrapped.ok());

  SECTION("wrong kek") {
    CHECK(UnwrapKey(RandomKey(), *wrapped, Aad("tenant a / segment 1")).status().code() ==
          StatusCode::kDataLoss);
  }
  SECTION("wrong aad") {
    CHECK(UnwrapKey(kek, *wrapped, Aad("tenant b / segment 1")).status().code() ==
          StatusCode::kDataLoss);
    CHECK(UnwrapKey(kek, *wrapped, {}).status().code() == StatusCode::kDataLoss);
  }
  SECTION("each of the 60 bytes flipped") {
    for (size_t i = 0; i < sizeof(WrappedKey); ++i) {
      INFO("byte " << i);
      WrappedKey bad = *wrapped;
      auto bytes = std::as_writable_bytes(std::span(&bad, 1));
      bytes[i] ^= std::byte{0x01};
      auto result = UnwrapKey(kek, bad, Aad("tenant a / segment 1"));
      CHECK(result.status().code() == StatusCode::kDataLoss);
      CHECK(result.status().message() == "authentication failed");
    }
  }
}

TEST_CASE("Two wraps of the same key differ", "[crypto][key_wrap]") {
  const SecretKey kek = RandomKey();
  const SecretKey data_key = RandomKey();
  auto a = WrapKey(kek, data_key, Aad("x"));
  auto b = WrapKey(kek, data_key, Aad("x"));
  REQUIRE((a.ok() && b.ok()));
  // Fresh random nonces, hence different ciphertexts and tags; both unwrap.
  CHECK(std::memcmp(a->nonce, b->nonce, sizeof(a->nonce)) != 0);
  CHECK(std::memcmp(a->ciphertext, b->ciphertext, sizeof(a->ciphertext)) != 0);
  CHECK(std::memcmp(a->tag, b->tag, sizeof(a->tag)) != 0);
  auto ua = UnwrapKey(kek, *a, Aad("x"));
  auto ub = UnwrapKey(kek, *b, Aad("x"));
  REQUIRE((ua.ok() && ub.ok()));
  CHECK(SameKey(*ua, *ub));
}

}  // namespace
}  // namespace kvtier
