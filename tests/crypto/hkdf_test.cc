#include "crypto/hkdf.h"

#include <cstddef>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <catch2/catch.hpp>

#include "tests/crypto/crypto_test_util.h"

namespace kvtier {
namespace {

using testing::FromHex;
using testing::SameBytes;
using testing::ToHex;

std::string AsString(const std::vector<std::byte>& bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

struct HkdfVector {
  const char* name;
  const char* ikm;
  const char* salt;
  const char* info;
  const char* okm_first_32;  // the RFC's OKM is longer; HkdfSha256 yields its first 32 bytes
};

// RFC 5869, appendix A, test cases 1-3 (HMAC-SHA-256).
constexpr HkdfVector kVectors[] = {
    {"RFC 5869 test case 1 (basic)", "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
     "000102030405060708090a0b0c", "f0f1f2f3f4f5f6f7f8f9",
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"},
    {"RFC 5869 test case 2 (longer inputs)",
     "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
     "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
     "404142434445464748494a4b4c4d4e4f",
     "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
     "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
     "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
     "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
     "d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef"
     "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
     "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"},
    {"RFC 5869 test case 3 (empty salt and info)", "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
     "", "", "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"},
};

TEST_CASE("HkdfSha256 matches the RFC 5869 test vectors", "[crypto][hkdf]") {
  const size_t index = GENERATE(range(size_t{0}, std::size(kVectors)));
  const HkdfVector& v = kVectors[index];
  INFO(v.name);
  auto okm = HkdfSha256(FromHex(v.ikm), FromHex(v.salt), AsString(FromHex(v.info)));
  REQUIRE(okm.ok());
  CHECK(ToHex(okm->bytes()) == v.okm_first_32);
}

TEST_CASE("HkdfSha256 output depends on every input", "[crypto][hkdf]") {
  const std::vector<std::byte> ikm = FromHex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
  const std::vector<std::byte> salt = FromHex("0001020304");
  auto base = HkdfSha256(ikm, salt, "info");
  REQUIRE(base.ok());

  auto other_ikm = ikm;
  other_ikm[0] ^= std::byte{1};
  auto other_salt = salt;
  other_salt[4] ^= std::byte{1};
  auto a = HkdfSha256(other_ikm, salt, "info");
  auto b = HkdfSha256(ikm, other_salt, "info");
  auto c = HkdfSha256(ikm, salt, "infp");
  auto d = HkdfSha256(ikm, salt, "info");
  REQUIRE((a.ok() && b.ok() && c.ok() && d.ok()));
  CHECK_FALSE(SameBytes(a->bytes(), base->bytes()));
  CHECK_FALSE(SameBytes(b->bytes(), base->bytes()));
  CHECK_FALSE(SameBytes(c->bytes(), base->bytes()));
  CHECK(SameBytes(d->bytes(), base->bytes()));
}

TEST_CASE("HkdfSha256 refuses empty key material and overlong info", "[crypto][hkdf]") {
  const std::vector<std::byte> ikm(32, std::byte{7});
  CHECK(HkdfSha256({}, {}, "info").status().code() == StatusCode::kInvalidArgument);
  CHECK(HkdfSha256(ikm, {}, std::string(kHkdfMaxInfoBytes, 'x')).ok());
  CHECK(HkdfSha256(ikm, {}, std::string(kHkdfMaxInfoBytes + 1, 'x')).status().code() ==
        StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
