#include "crypto/keyring.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "crypto/master_key.h"
#include "crypto/sha256.h"
#include "tests/crypto/crypto_test_util.h"
#include "tests/support/test_support.h"

namespace kvtier {
namespace {

namespace fs = std::filesystem;
using testing::KeyFromHex;
using testing::SameKey;
using testing::TempDir;

constexpr std::string_view kMasterHex =
    "8c2e4f1a9b7d3c5e6f0a1b2c3d4e5f60718293a4b5c6d7e8f9010203040506ff";
constexpr std::string_view kOtherHex =
    "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";

SecretKey Random() {
  auto key = SecretKey::Random();
  REQUIRE(key.ok());
  return std::move(*key);
}

// Two tenants, one with an epoch-0 (legacy) key.
Keyring Sample() {
  Keyring keyring;
  keyring.entries.emplace_back("alpha", 1, Random());
  keyring.entries.emplace_back("beta.team-2", 7, Random());
  keyring.entries.back().legacy.emplace(Random());
  return keyring;
}

std::vector<std::byte> MustSeal(const Keyring& keyring, const SecretKey& master) {
  auto sealed = SealKeyring(keyring, master);
  INFO((sealed.ok() ? std::string() : sealed.status().ToString()));
  REQUIRE(sealed.ok());
  return std::move(*sealed);
}

bool SameKeyring(const Keyring& a, const Keyring& b) {
  if (a.entries.size() != b.entries.size()) return false;
  for (size_t i = 0; i < a.entries.size(); ++i) {
    const KeyringEntry& x = a.entries[i];
    const KeyringEntry& y = b.entries[i];
    if (x.tenant != y.tenant || x.epoch != y.epoch || !SameKey(x.key, y.key)) return false;
    if (x.legacy.has_value() != y.legacy.has_value()) return false;
    if (x.legacy && !SameKey(*x.legacy, *y.legacy)) return false;
  }
  return true;
}

bool Contains(const std::vector<std::byte>& haystack, std::span<const std::byte> needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) !=
         haystack.end();
}

void WriteBytes(const fs::path& path, const std::vector<std::byte>& bytes, mode_t mode) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
  }
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

TEST_CASE("keyring: seal then open gives back every tenant's epoch and keys",
          "[crypto][keyring]") {
  const SecretKey master = KeyFromHex(kMasterHex);
  const Keyring keyring = Sample();
  const auto sealed = MustSeal(keyring, master);
  auto opened = OpenKeyring(sealed, master);
  REQUIRE(opened.ok());
  CHECK(SameKeyring(keyring, *opened));
  CHECK(opened->Find("beta.team-2") != nullptr);
  CHECK(opened->Find("beta.team-2")->epoch == 7);
  CHECK(opened->Find("gamma") == nullptr);

  // The file holds no key in the clear, and two seals differ (a fresh nonce each time).
  for (const KeyringEntry& e : keyring.entries) CHECK_FALSE(Contains(sealed, e.key.bytes()));
  CHECK_FALSE(Contains(sealed, master.bytes()));
  CHECK(MustSeal(keyring, master) != sealed);

  // Sealed with what a daemon keeps instead of the master key: the same file format.
  auto sealer = KeyringSealer::From(master);
  REQUIRE(sealer.ok());
  auto by_sealer = SealKeyring(keyring, *sealer);
  REQUIRE(by_sealer.ok());
  auto reopened = OpenKeyring(*by_sealer, master);
  REQUIRE(reopened.ok());
  CHECK(SameKeyring(keyring, *reopened));
  CHECK_FALSE(Contains(*by_sealer, sealer->keyring_key.bytes()));

  // An empty keyring is a keyring too.
  const auto empty = MustSeal(Keyring{}, master);
  auto opened_empty = OpenKeyring(empty, master);
  REQUIRE(opened_empty.ok());
  CHECK(opened_empty->entries.empty());
}

TEST_CASE("keyring: another master key is named as such and never called corruption",
          "[crypto][keyring]") {
  const SecretKey master = KeyFromHex(kMasterHex);
  const SecretKey other = KeyFromHex(kOtherHex);
  const auto sealed = MustSeal(Sample(), master);
  auto opened = OpenKeyring(sealed, other);
  REQUIRE_FALSE(opened.ok());
  CHECK(opened.status().code() == StatusCode::kFailedPrecondition);
  CHECK_THAT(opened.status().message(), Catch::Contains("different master key"));
  auto master_id = KeyIdOf(master);
  auto other_id = KeyIdOf(other);
  REQUIRE(master_id.ok());
  REQUIRE(other_id.ok());
  CHECK(*master_id != *other_id);
  CHECK_THAT(opened.status().message(), Catch::Contains(KeyIdHex(*master_id)));
  CHECK_THAT(opened.status().message(), Catch::Contains(KeyIdHex(*other_id)));
  // The file names its key without the key.
  auto named = KeyringKeyId(sealed);
  REQUIRE(named.ok());
  CHECK(*named == *master_id);
  CHECK(KeyIdHex(*master_id, 8).size() == 8);
  CHECK(KeyIdHex(*master_id).size() == 32);
}

TEST_CASE("keyring: the key id is deterministic and reveals no key bytes", "[crypto][keyring]") {
  const SecretKey master = KeyFromHex(kMasterHex);
  auto a = KeyIdOf(master);
  auto b = KeyIdOf(KeyFromHex(kMasterHex));
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(*a == *b);
  CHECK_FALSE(testing::SameBytes(*a, master.bytes().first(16)));
  // Not the key that seals the keyring, nor a tenant key.
  auto tenant = DeriveTenantKey(master, "alpha");
  REQUIRE(tenant.ok());
  CHECK_FALSE(testing::SameBytes(*a, tenant->bytes().first(16)));
}

TEST_CASE("keyring: one flipped bit anywhere is refused as corrupt", "[crypto][keyring]") {
  const SecretKey master = KeyFromHex(kMasterHex);
  const auto sealed = MustSeal(Sample(), master);
  for (size_t byte = 0; byte < sealed.size(); ++byte) {
    for (int bit = 0; bit < 8; bit += 3) {
      std::vector<std::byte> bad = sealed;
      bad[byte] ^= static_cast<std::byte>(1u << bit);
      auto opened = OpenKeyring(bad, master);
      INFO("byte " << byte << " bit " << bit);
      REQUIRE_FALSE(opened.ok());
      const bool corrupt = opened.status().code() == StatusCode::kDataLoss;
      CHECK(corrupt);
      CHECK_THAT(opened.status().message(), Catch::Contains("corrupt"));
    }
  }
}

TEST_CASE("keyring: an altered file with a recomputed checksum fails authentication",
          "[crypto][keyring]") {
  const SecretKey master = KeyFromHex(kMasterHex);
  auto sealed = MustSeal(Sample(), master);
  // The body's first byte altered...
  sealed[kKeyringHeaderBytes] ^= std::byte{0x01};
  // The checksum (SHA-256 of everything before it) recomputed, as someone rewriting it would.
  const size_t sum_at = sealed.size() - 32;
  std::vector<std::byte> head(sealed.begin(), sealed.begin() + static_cast<std::ptrdiff_t>(sum_at));
  const auto sum = Sha256(head);
  std::memcpy(sealed.data() + sum_at, sum.data(), sum.size());
  auto opened = OpenKeyring(sealed, master);
  REQUIRE_FALSE(opened.ok());
  CHECK(opened.status().code() == StatusCode::kDataLoss);
  CHECK_THAT(opened.status().message(), Catch::Contains("does not authenticate"));
}

TEST_CASE("keyring: truncated extended or foreign files are corrupt", "[crypto][keyring]") {
  const SecretKey master = KeyFromHex(kMasterHex);
  const auto sealed = MustSeal(Sample(), master);
  for (size_t size : {size_t{0}, size_t{7}, size_t{47}, size_t{95}, sealed.size() - 1}) {
    std::vector<std::byte> cut(sealed.begin(), sealed.begin() + static_cast<std::ptrdiff_t>(size));
    auto opened = OpenKeyring(cut, master);
    INFO("size " << size);
    REQUIRE_FALSE(opened.ok());
    CHECK(opened.status().code() == StatusCode::kDataLoss);
  }
  std::vector<std::byte> longer = sealed;
  longer.push_back(std::byte{0});
  CHECK(OpenKeyring(longer, master).status().code() == StatusCode::kDataLoss);
  std::vector<std::byte> garbage(200, std::byte{0x41});
  auto opened = OpenKeyring(garbage, master);
  CHECK(opened.status().code() == StatusCode::kDataLoss);
  CHECK_THAT(opened.status().message(), Catch::Contains("KVTKEYR1"));
}

TEST_CASE("keyring: bad entries are refused when sealing", "[crypto][keyring]") {
  const SecretKey master = KeyFromHex(kMasterHex);
  {
    Keyring k;
    k.entries.emplace_back(std::string(33, 'a'), 1, Random());
    auto sealed = SealKeyring(k, master);
    CHECK(sealed.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(sealed.status().message(), Catch::Contains("1 to 32 bytes"));
  }
  {
    Keyring k;
    k.entries.emplace_back(std::string(32, 'a'), 1, Random());  // the longest name is fine
    CHECK(SealKeyring(k, master).ok());
  }
  {
    Keyring k;
    k.entries.emplace_back("", 1, Random());
    CHECK(SealKeyring(k, master).status().code() == StatusCode::kInvalidArgument);
  }
  {
    Keyring k;
    k.entries.emplace_back(std::string("a\0b", 3), 1, Random());
    CHECK(SealKeyring(k, master).status().code() == StatusCode::kInvalidArgument);
  }
  {
    Keyring k;
    k.entries.emplace_back("a", 1, Random());
    k.entries.emplace_back("a", 2, Random());
    auto sealed = SealKeyring(k, master);
    CHECK(sealed.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(sealed.status().message(), Catch::Contains("twice"));
  }
  {
    Keyring k;
    k.entries.emplace_back("a", 0, Random());
    CHECK(SealKeyring(k, master).status().code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("keyring: an unknown format version is named as such", "[crypto][keyring]") {
  const SecretKey master = KeyFromHex(kMasterHex);
  auto sealed = MustSeal(Sample(), master);
  sealed[8] = std::byte{2};
  const size_t sum_at = sealed.size() - 32;
  const auto sum = Sha256(std::span(sealed).first(sum_at));
  std::memcpy(sealed.data() + sum_at, sum.data(), sum.size());
  auto opened = OpenKeyring(sealed, master);
  CHECK(opened.status().code() == StatusCode::kFailedPrecondition);
  CHECK_THAT(opened.status().message(), Catch::Contains("version 2"));
}

TEST_CASE("keyring file: written atomically with mode 0600 and read back", "[crypto][keyring]") {
  TempDir dir;
  const fs::path path = dir.path() / "spill.keyring";
  const SecretKey master = KeyFromHex(kMasterHex);
  const Keyring keyring = Sample();
  const auto sealed = MustSeal(keyring, master);
  CHECK(ReadKeyringFile(path).status().code() == StatusCode::kNotFound);
  REQUIRE(WriteKeyringFile(path, sealed).ok());
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  CHECK_FALSE(fs::exists(path.string() + ".tmp"));
  auto read = ReadKeyringFile(path);
  REQUIRE(read.ok());
  CHECK(*read == sealed);

  // Replaced whole, and a stale .tmp from a crash does not stop the next write.
  WriteBytes(path.string() + ".tmp", {std::byte{1}, std::byte{2}}, 0600);
  const auto resealed = MustSeal(keyring, master);
  REQUIRE(WriteKeyringFile(path, resealed).ok());
  read = ReadKeyringFile(path);
  REQUIRE(read.ok());
  CHECK(*read == resealed);
  CHECK_FALSE(fs::exists(path.string() + ".tmp"));

  // A missing directory is named.
  auto missing = WriteKeyringFile(dir.path() / "nope" / "keyring", sealed);
  CHECK(missing.code() == StatusCode::kNotFound);
  CHECK_THAT(missing.message(), Catch::Contains("does not exist"));
}

TEST_CASE("keyring file: loose modes symlinks and non-files are refused", "[crypto][keyring]") {
  TempDir dir;
  const fs::path path = dir.path() / "keyring";
  const auto sealed = MustSeal(Sample(), KeyFromHex(kMasterHex));
  WriteBytes(path, sealed, 0644);
  auto read = ReadKeyringFile(path);
  CHECK(read.status().code() == StatusCode::kPermissionDenied);
  CHECK_THAT(read.status().message(), Catch::Contains("chmod 600"));
  WriteBytes(path, sealed, 0400);
  CHECK(ReadKeyringFile(path).ok());
  REQUIRE(::chmod(path.c_str(), 0600) == 0);

  const fs::path link = dir.path() / "link";
  fs::create_symlink(path, link);
  read = ReadKeyringFile(link);
  CHECK(read.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(read.status().message(), Catch::Contains("symlink"));

  const fs::path fifo = dir.path() / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  CHECK(ReadKeyringFile(fifo).status().code() == StatusCode::kInvalidArgument);
  fs::create_directory(dir.path() / "d");
  CHECK(ReadKeyringFile(dir.path() / "d").status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("keyring: re-sealed under a new master key it opens only with the new key",
          "[crypto][keyring]") {
  const SecretKey old_master = KeyFromHex(kMasterHex);
  const SecretKey new_master = KeyFromHex(kOtherHex);
  const Keyring keyring = Sample();
  auto opened = OpenKeyring(MustSeal(keyring, old_master), old_master);
  REQUIRE(opened.ok());
  const auto resealed = MustSeal(*opened, new_master);
  auto again = OpenKeyring(resealed, new_master);
  REQUIRE(again.ok());
  CHECK(SameKeyring(keyring, *again));
  CHECK(OpenKeyring(resealed, old_master).status().code() == StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace kvtier
