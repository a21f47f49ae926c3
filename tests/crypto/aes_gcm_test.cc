#include "crypto/aes_gcm.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "crypto/secret_key.h"
#include "crypto/secure_random.h"
#include "tests/crypto/crypto_test_util.h"

namespace kvtier {
namespace {

using testing::AllZero;
using testing::ArrayFromHex;
using testing::FromHex;
using testing::KeyFromHex;
using testing::SameBytes;

using Nonce = std::array<std::byte, AesGcm::kNonceBytes>;
using Tag = std::array<std::byte, AesGcm::kTagBytes>;

struct GcmVector {
  const char* name;
  const char* key;
  const char* nonce;
  const char* aad;
  const char* plaintext;
  const char* ciphertext;
  const char* tag;
};

// McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", test cases 13-16 (the 256-bit
// key cases with 96-bit IVs), as also used by NIST's GCM validation.
constexpr GcmVector kVectors[] = {
    {"GCM spec test case 13 (empty plaintext, no aad)",
     "0000000000000000000000000000000000000000000000000000000000000000", "000000000000000000000000",
     "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"},
    {"GCM spec test case 14 (one block)",
     "0000000000000000000000000000000000000000000000000000000000000000", "000000000000000000000000",
     "", "00000000000000000000000000000000", "cea7403d4d606b6e074ec5d3baf39d18",
     "d0d1c8a799996bf0265b98b5d48ab919"},
    {"GCM spec test case 15 (four blocks)",
     "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888",
     "",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
     "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
     "b094dac5d93471bdec1a502270e3cc6c"},
    {"GCM spec test case 16 (aad, partial last block)",
     "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888",
     "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
     "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
     "76fc6ece0f4e1768cddf8853bb2d551b"},
};

AesGcm MakeGcm(const SecretKey& key) {
  auto gcm = AesGcm::Create(key);
  REQUIRE(gcm.ok());
  return std::move(*gcm);
}

std::vector<std::byte> RandomBytes(size_t n) {
  std::vector<std::byte> out(n);
  REQUIRE(SecureRandom(out).ok());
  return out;
}

// Fills the output with a marker first, so "zeroed" is a real observation.
std::vector<std::byte> Garbage(size_t n) {
  return std::vector<std::byte>(n, std::byte{0xa5});
}

TEST_CASE("AesGcm matches the published AES-256-GCM test vectors", "[crypto][aes_gcm]") {
  const size_t index = GENERATE(range(size_t{0}, std::size(kVectors)));
  const GcmVector& v = kVectors[index];
  INFO(v.name);
  AesGcm gcm = MakeGcm(KeyFromHex(v.key));
  const Nonce nonce = ArrayFromHex<12>(v.nonce);
  const std::vector<std::byte> aad = FromHex(v.aad);
  const std::vector<std::byte> plaintext = FromHex(v.plaintext);
  const std::vector<std::byte> expected_ciphertext = FromHex(v.ciphertext);
  const Tag expected_tag = ArrayFromHex<16>(v.tag);

  std::vector<std::byte> ciphertext = Garbage(plaintext.size());
  Tag tag{};
  REQUIRE(gcm.Seal(nonce, aad, plaintext, ciphertext, tag).ok());
  CHECK(ciphertext == expected_ciphertext);
  CHECK(tag == expected_tag);

  std::vector<std::byte> opened = Garbage(plaintext.size());
  REQUIRE(gcm.Open(nonce, aad, expected_ciphertext, expected_tag, opened).ok());
  CHECK(opened == plaintext);
}

// Opens the vector with one input altered; it must fail with kDataLoss and zero the output.
void ExpectRejected(const SecretKey& key,
                    const Nonce& nonce,
                    std::span<const std::byte> aad,
                    std::span<const std::byte> ciphertext,
                    const Tag& tag) {
  AesGcm gcm = MakeGcm(key);
  std::vector<std::byte> out = Garbage(ciphertext.size());
  const Status status = gcm.Open(nonce, aad, ciphertext, tag, out);
  CHECK(status.code() == StatusCode::kDataLoss);
  CHECK(status.message() == "authentication failed");
  CHECK(AllZero(out));
}

TEST_CASE("AesGcm rejects a published vector with any one bit flipped", "[crypto][aes_gcm]") {
  const size_t index = GENERATE(range(size_t{0}, std::size(kVectors)));
  const GcmVector& v = kVectors[index];
  INFO(v.name);
  const auto key = ArrayFromHex<32>(v.key);
  const Nonce nonce = ArrayFromHex<12>(v.nonce);
  const std::vector<std::byte> aad = FromHex(v.aad);
  const std::vector<std::byte> ciphertext = FromHex(v.ciphertext);
  const Tag tag = ArrayFromHex<16>(v.tag);
  auto flip = [](std::span<std::byte> bytes, size_t i) {
    bytes[i] ^= std::byte{1} << (i % 8);
  };

  SECTION("in the key") {
    for (size_t i = 0; i < key.size(); ++i) {
      INFO("byte " << i);
      auto bad = key;
      flip(bad, i);
      ExpectRejected(SecretKey::FromBytes(bad), nonce, aad, ciphertext, tag);
    }
  }
  SECTION("in the nonce") {
    for (size_t i = 0; i < nonce.size(); ++i) {
      INFO("byte " << i);
      Nonce bad = nonce;
      flip(bad, i);
      ExpectRejected(SecretKey::FromBytes(key), bad, aad, ciphertext, tag);
    }
  }
  SECTION("in the associated data, or one byte more of it") {
    for (size_t i = 0; i < aad.size(); ++i) {
      INFO("byte " << i);
      auto bad = aad;
      flip(bad, i);
      ExpectRejected(SecretKey::FromBytes(key), nonce, bad, ciphertext, tag);
    }
    auto longer = aad;
    longer.push_back(std::byte{0});
    ExpectRejected(SecretKey::FromBytes(key), nonce, longer, ciphertext, tag);
  }
  SECTION("in the ciphertext") {
    for (size_t i = 0; i < ciphertext.size(); ++i) {
      INFO("byte " << i);
      auto bad = ciphertext;
      flip(bad, i);
      ExpectRejected(SecretKey::FromBytes(key), nonce, aad, bad, tag);
    }
  }
  SECTION("in the tag") {
    for (size_t i = 0; i < tag.size(); ++i) {
      INFO("byte " << i);
      Tag bad = tag;
      flip(bad, i);
      ExpectRejected(SecretKey::FromBytes(key), nonce, aad, ciphertext, bad);
    }
  }
}

TEST_CASE("AesGcm round-trips every size, out of place and in place", "[crypto][aes_gcm]") {
  const size_t size = GENERATE(size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{17},
                               size_t{4096}, size_t{2} << 20);
  INFO("size " << size);
  auto key = SecretKey::Random();
  REQUIRE(key.ok());
  AesGcm gcm = MakeGcm(*key);
  Nonce nonce{};
  REQUIRE(SecureRandom(nonce).ok());
  const std::vector<std::byte> aad = RandomBytes(13);
  const std::vector<std::byte> plaintext = RandomBytes(size);

  std::vector<std::byte> ciphertext = Garbage(size);
  Tag tag{};
  REQUIRE(gcm.Seal(nonce, aad, plaintext, ciphertext, tag).ok());
  if (size >= 16) CHECK_FALSE(SameBytes(ciphertext, plaintext));

  SECTION("out of place") {
    std::vector<std::byte> opened = Garbage(size);
    REQUIRE(gcm.Open(nonce, aad, ciphertext, tag, opened).ok());
    CHECK(SameBytes(opened, plaintext));
  }
  SECTION("in place gives the same ciphertext and tag, and opens in place") {
    std::vector<std::byte> buffer = plaintext;
    Tag in_place_tag{};
    REQUIRE(gcm.Seal(nonce, aad, buffer, buffer, in_place_tag).ok());
    CHECK(SameBytes(buffer, ciphertext));
    CHECK(in_place_tag == tag);
    REQUIRE(gcm.Open(nonce, aad, buffer, tag, buffer).ok());
    CHECK(SameBytes(buffer, plaintext));
  }
  SECTION("a flipped last ciphertext byte fails and zeroes the output") {
    if (size == 0) return;
    ciphertext.back() ^= std::byte{0x80};
    std::vector<std::byte> opened = Garbage(size);
    CHECK(gcm.Open(nonce, aad, ciphertext, tag, opened).code() == StatusCode::kDataLoss);
    CHECK(AllZero(opened));
  }
}

TEST_CASE("AesGcm opens in pieces exactly what it opens whole, and a tampered piece fails the end",
          "[crypto][aes_gcm]") {
  auto key = SecretKey::Random();
  REQUIRE(key.ok());
  AesGcm gcm = MakeGcm(*key);
  Nonce nonce{};
  REQUIRE(SecureRandom(nonce).ok());
  const std::vector<std::byte> aad = RandomBytes(216);
  const size_t size = (size_t{2} << 20) + 100;
  const std::vector<std::byte> plaintext = RandomBytes(size);
  std::vector<std::byte> ciphertext(size);
  Tag tag{};
  REQUIRE(gcm.Seal(nonce, aad, plaintext, ciphertext, tag).ok());
  // Pieces of uneven sizes (not multiples of the block size), in place.
  const size_t piece = GENERATE(size_t{1}, size_t{4095}, size_t{524288});
  INFO("piece " << piece);
  auto open_in_pieces = [&](std::vector<std::byte>& buffer) {
    REQUIRE(gcm.OpenBegin(nonce, aad, tag).ok());
    for (size_t at = 0; at < buffer.size(); at += piece) {
      const size_t n = std::min(piece, buffer.size() - at);
      const std::span<std::byte> part = std::span(buffer).subspan(at, n);
      REQUIRE(gcm.OpenPiece(part, part).ok());
      if (piece == 1 && at > 4096) break;  // byte-wise: a prefix is enough, then skip ahead
    }
  };
  if (piece != 1) {
    std::vector<std::byte> buffer = ciphertext;
    open_in_pieces(buffer);
    CHECK(gcm.OpenEnd().ok());
    CHECK(SameBytes(buffer, plaintext));
    // One flipped ciphertext byte in the last piece: the end says so.
    buffer = ciphertext;
    buffer.back() ^= std::byte{1};
    open_in_pieces(buffer);
    CHECK(gcm.OpenEnd().code() == StatusCode::kDataLoss);
  } else {
    // A stream cut short never verifies.
    std::vector<std::byte> buffer = ciphertext;
    open_in_pieces(buffer);
    CHECK(gcm.OpenEnd().code() == StatusCode::kDataLoss);
  }
  // The context serves a whole Open after either outcome.
  std::vector<std::byte> opened(size);
  REQUIRE(gcm.Open(nonce, aad, ciphertext, tag, opened).ok());
  CHECK(SameBytes(opened, plaintext));
}

TEST_CASE("One AesGcm serves many calls, and a failed Open does not poison it",
          "[crypto][aes_gcm]") {
  auto key = SecretKey::Random();
  REQUIRE(key.ok());
  AesGcm gcm = MakeGcm(*key);
  const std::vector<std::byte> plaintext = RandomBytes(1000);
  std::vector<std::byte> ciphertext(plaintext.size());
  std::vector<std::byte> opened(plaintext.size());
  for (uint8_t i = 0; i < 8; ++i) {
    INFO("call " << int{i});
    Nonce nonce{};
    nonce[0] = std::byte{i};
    Tag tag{};
    REQUIRE(gcm.Seal(nonce, {}, plaintext, ciphertext, tag).ok());
    Tag bad_tag = tag;
    bad_tag[15] ^= std::byte{1};
    REQUIRE(gcm.Open(nonce, {}, ciphertext, bad_tag, opened).code() == StatusCode::kDataLoss);
    REQUIRE(gcm.Open(nonce, {}, ciphertext, tag, opened).ok());
    CHECK(opened == plaintext);
  }

  SECTION("the same message under another nonce encrypts differently") {
    Nonce a{};
    Nonce b{};
    b[11] = std::byte{1};
    std::vector<std::byte> ca(plaintext.size());
    std::vector<std::byte> cb(plaintext.size());
    Tag ta{};
    Tag tb{};
    REQUIRE(gcm.Seal(a, {}, plaintext, ca, ta).ok());
    REQUIRE(gcm.Seal(b, {}, plaintext, cb, tb).ok());
    CHECK(ca != cb);
    CHECK(ta != tb);
  }
  SECTION("a moved-to AesGcm keeps the key") {
    Nonce nonce{};
    Tag tag{};
    REQUIRE(gcm.Seal(nonce, {}, plaintext, ciphertext, tag).ok());
    AesGcm moved = std::move(gcm);
    REQUIRE(moved.Open(nonce, {}, ciphertext, tag, opened).ok());
    CHECK(opened == plaintext);
    AesGcm assigned = MakeGcm(*SecretKey::Random());
    assigned = std::move(moved);
    REQUIRE(assigned.Open(nonce, {}, ciphertext, tag, opened).ok());
  }
}

TEST_CASE("AesGcm refuses mismatched or partly overlapping buffers", "[crypto][aes_gcm]") {
  AesGcm gcm = MakeGcm(*SecretKey::Random());
  const Nonce nonce{};
  Tag tag{};
  std::vector<std::byte> buffer(64);
  const std::span<std::byte> all(buffer);

  CHECK(gcm.Seal(nonce, {}, all.first(32), all.subspan(32, 31), tag).code() ==
        StatusCode::kInvalidArgument);
  CHECK(gcm.Seal(nonce, {}, all.first(32), all.subspan(16, 32), tag).code() ==
        StatusCode::kInvalidArgument);
  CHECK(gcm.Open(nonce, {}, all.subspan(16, 32), tag, all.first(32)).code() ==
        StatusCode::kInvalidArgument);
  // Adjacent but disjoint is fine.
  CHECK(gcm.Seal(nonce, {}, all.first(32), all.subspan(32, 32), tag).ok());
}

// Past INT_MAX bytes, EVP_CipherUpdate's int length forces pieces; this checks the pieces join
// up. Needs about 2 GiB of memory and a few seconds.
TEST_CASE("AesGcm handles a buffer larger than INT_MAX", "[crypto][aes_gcm][slow]") {
  const size_t size = (size_t{2} << 30) + 17;
  auto pattern = [](size_t i) {
    return static_cast<std::byte>((i * 131 + (i >> 20)) & 0xff);
  };
  std::vector<std::byte> buffer(size);
  for (size_t i = 0; i < size; ++i)
    buffer[i] = pattern(i);
  AesGcm gcm = MakeGcm(*SecretKey::Random());
  const Nonce nonce{};
  Tag tag{};
  REQUIRE(gcm.Seal(nonce, {}, buffer, buffer, tag).ok());

  // CTR mode: the first 4 KiB encrypt the same as a 4 KiB message under the same nonce.
  std::vector<std::byte> head(4096);
  for (size_t i = 0; i < head.size(); ++i)
    head[i] = pattern(i);
  Tag head_tag{};
  REQUIRE(gcm.Seal(nonce, {}, head, head, head_tag).ok());
  CHECK(SameBytes(head, std::span(buffer).first(head.size())));
  // The tail, past INT_MAX, was encrypted too.
  size_t unchanged = 0;
  for (size_t i = size - 4096; i < size; ++i)
    unchanged += buffer[i] == pattern(i) ? 1u : 0u;
  CHECK(unchanged < 64);

  REQUIRE(gcm.Open(nonce, {}, buffer, tag, buffer).ok());
  size_t wrong = 0;
  for (size_t i = 0; i < size; ++i)
    wrong += buffer[i] == pattern(i) ? 0u : 1u;
  CHECK(wrong == 0);
}

}  // namespace
}  // namespace kvtier
