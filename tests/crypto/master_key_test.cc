#include "crypto/master_key.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>

#include <catch2/catch.hpp>

#include "crypto/secret_key.h"
#include "tests/crypto/crypto_test_util.h"
#include "tests/support/test_support.h"

namespace kvtier {
namespace {

namespace fs = std::filesystem;
using testing::SameKey;
using testing::TempDir;
using testing::ToHex;

constexpr std::string_view kHexKey =
    "8c2e4f1a9b7d3c5e6f0a1b2c3d4e5f60718293a4b5c6d7e8f9010203040506ff";

// Writes `content` to `path` with exactly `mode` (umask bypassed with chmod).
void WriteFile(const fs::path& path, std::string_view content, mode_t mode) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    REQUIRE(out.good());
  }
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

mode_t ModeOf(const fs::path& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

std::string RawOf(std::string_view hex) {
  const auto bytes = testing::FromHex(hex);
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// True if no 8-character run of `content` shows up in `message`.
bool LeaksNothingOf(std::string_view content, const std::string& message) {
  for (size_t i = 0; i + 8 <= content.size(); ++i) {
    if (message.find(content.substr(i, 8)) != std::string::npos) return false;
  }
  return true;
}

// Sets or unsets an environment variable for one scope, restoring the old value after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = ::getenv(name)) old_ = old;
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST_CASE("LoadMasterKey reads hex and raw key files as the same key", "[crypto][master_key]") {
  TempDir dir;
  WriteFile(dir.path() / "raw", RawOf(kHexKey), 0600);
  WriteFile(dir.path() / "hex", std::string(kHexKey) + "\n", 0600);
  WriteFile(dir.path() / "hex-no-newline", kHexKey, 0400);
  std::string upper(kHexKey);
  for (char& c : upper)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  WriteFile(dir.path() / "HEX", upper, 0600);

  auto raw = LoadMasterKey(dir.path() / "raw");
  REQUIRE(raw.ok());
  CHECK(ToHex(raw->bytes()) == kHexKey);
  for (const char* name : {"hex", "hex-no-newline", "HEX"}) {
    INFO(name);
    auto key = LoadMasterKey(dir.path() / name);
    REQUIRE(key.ok());
    CHECK(SameKey(*key, *raw));
  }

  SECTION("through a symlink to a valid file") {
    fs::create_symlink(dir.path() / "hex", dir.path() / "link");
    auto key = LoadMasterKey(dir.path() / "link");
    REQUIRE(key.ok());
    CHECK(SameKey(*key, *raw));
  }
}

TEST_CASE("LoadMasterKey refuses a key file that others may access", "[crypto][master_key]") {
  const mode_t mode = GENERATE(mode_t{0644}, mode_t{0640}, mode_t{0604}, mode_t{0660}, mode_t{0700},
                               mode_t{0601}, mode_t{0610}, mode_t{04600});
  TempDir dir;
  const fs::path path = dir.path() / "master.key";
  WriteFile(path, std::string(kHexKey) + "\n", mode);
  std::ostringstream mode_text;
  mode_text << std::oct << std::setfill('0') << std::setw(4) << mode;
  INFO("mode " << mode_text.str());

  auto key = LoadMasterKey(path);
  REQUIRE_FALSE(key.ok());
  CHECK(key.status().code() == StatusCode::kPermissionDenied);
  CHECK_THAT(key.status().message(), Catch::Contains("chmod 600"));
  CHECK_THAT(key.status().message(), Catch::Contains(path.string()));
  CHECK_THAT(key.status().message(), Catch::Contains(mode_text.str()));
  CHECK(LeaksNothingOf(kHexKey, key.status().message()));
}

TEST_CASE("LoadMasterKey refuses a key file owned by another user", "[crypto][master_key]") {
  if (::geteuid() != 0) {
    testing::Unavailable("root", "cannot chown a file to another user", /*whole_test=*/true);
    return;
  }
  TempDir dir;
  const fs::path path = dir.path() / "master.key";
  WriteFile(path, kHexKey, 0600);
  REQUIRE(::chown(path.c_str(), 65534, 65534) == 0);
  auto key = LoadMasterKey(path);
  CHECK(key.status().code() == StatusCode::kPermissionDenied);
  CHECK_THAT(key.status().message(), Catch::Contains("65534"));
}

TEST_CASE("LoadMasterKey refuses malformed content without echoing it", "[crypto][master_key]") {
  const std::string hex(kHexKey);
  const std::string content =
      GENERATE_COPY(std::string(), std::string("SENTINEL-this-is-not-a-key-SENTINEL\n"),
                    hex.substr(0, 63), hex + "a", hex.substr(0, 62) + "g1", hex + "\r\n", hex + " ",
                    " " + hex, hex + "\n\n", RawOf(kHexKey).substr(0, 31), RawOf(kHexKey) + "\n",
                    std::string(64, '0'), std::string(32, '\0'), std::string(4096, 'k'));
  INFO("content of " << content.size() << " bytes");
  TempDir dir;
  const fs::path path = dir.path() / "master.key";
  WriteFile(path, content, 0600);

  auto key = LoadMasterKey(path);
  REQUIRE_FALSE(key.ok());
  CHECK(key.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(key.status().message(), Catch::Contains(path.string()));
  CHECK(LeaksNothingOf(content, key.status().message()));
}

TEST_CASE("LoadMasterKey tells a missing file from one that is not a file",
          "[crypto][master_key]") {
  TempDir dir;
  CHECK(LoadMasterKey(dir.path() / "absent").status().code() == StatusCode::kNotFound);

  fs::create_directory(dir.path() / "a-directory");
  ::chmod((dir.path() / "a-directory").c_str(), 0600);
  CHECK(LoadMasterKey(dir.path() / "a-directory").status().code() == StatusCode::kInvalidArgument);

  // A FIFO must be refused, not block start-up waiting for a writer.
  REQUIRE(::mkfifo((dir.path() / "a-fifo").c_str(), 0600) == 0);
  CHECK(LoadMasterKey(dir.path() / "a-fifo").status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("CreateMasterKeyFile makes a 0600 key file that loads, and never overwrites",
          "[crypto][master_key]") {
  TempDir dir;
  const fs::path path = dir.path() / "master.key";
  REQUIRE(CreateMasterKeyFile(path).ok());
  CHECK(ModeOf(path) == 0600);
  const std::string content = ReadFile(path);
  REQUIRE(content.size() == 65);
  CHECK(content.back() == '\n');
  auto key = LoadMasterKey(path);
  REQUIRE(key.ok());
  CHECK(ToHex(key->bytes()) + "\n" == content);

  SECTION("a second call refuses and leaves the key alone") {
    const Status again = CreateMasterKeyFile(path);
    CHECK(again.code() == StatusCode::kAlreadyExists);
    CHECK(ReadFile(path) == content);
  }
  SECTION("a symlink at the path is not followed") {
    fs::create_symlink(dir.path() / "elsewhere", dir.path() / "link");
    CHECK(CreateMasterKeyFile(dir.path() / "link").code() == StatusCode::kAlreadyExists);
    CHECK_FALSE(fs::exists(dir.path() / "elsewhere"));
  }
  SECTION("each new file holds a new key") {
    REQUIRE(CreateMasterKeyFile(dir.path() / "second.key").ok());
    auto second = LoadMasterKey(dir.path() / "second.key");
    REQUIRE(second.ok());
    CHECK_FALSE(SameKey(*second, *key));
  }
  SECTION("the mode is 0600 whatever the umask") {
    const mode_t old_umask = ::umask(0277);
    const Status status = CreateMasterKeyFile(dir.path() / "umask.key");
    ::umask(old_umask);
    REQUIRE(status.ok());
    CHECK(ModeOf(dir.path() / "umask.key") == 0600);
  }
  SECTION("a missing directory is kNotFound") {
    CHECK(CreateMasterKeyFile(dir.path() / "no" / "such.key").code() == StatusCode::kNotFound);
  }
}

TEST_CASE("LoadCredential reads $CREDENTIALS_DIRECTORY/<name>", "[crypto][master_key]") {
  TempDir dir;
  const std::string hex_line = std::string(kHexKey) + "\n";

  SECTION("unset or empty $CREDENTIALS_DIRECTORY is kNotFound") {
    {
      ScopedEnv env("CREDENTIALS_DIRECTORY", nullptr);
      CHECK(LoadCredential("kvtier-master").status().code() == StatusCode::kNotFound);
    }
    ScopedEnv env("CREDENTIALS_DIRECTORY", "");
    CHECK(LoadCredential("kvtier-master").status().code() == StatusCode::kNotFound);
  }

  ScopedEnv env("CREDENTIALS_DIRECTORY", dir.path().c_str());
  SECTION("systemd's modes load, and give the same key as the key file") {
    const mode_t mode = GENERATE(mode_t{0400}, mode_t{0440}, mode_t{0600}, mode_t{0640});
    WriteFile(dir.path() / "kvtier-master", hex_line, mode);
    auto credential = LoadCredential("kvtier-master");
    REQUIRE(credential.ok());
    WriteFile(dir.path() / "file", hex_line, 0600);
    auto file = LoadMasterKey(dir.path() / "file");
    REQUIRE(file.ok());
    CHECK(SameKey(*credential, *file));
  }
  SECTION("a credential others can access or the group can write is refused") {
    const mode_t mode =
        GENERATE(mode_t{0644}, mode_t{0604}, mode_t{0460}, mode_t{0401}, mode_t{02440});
    WriteFile(dir.path() / "kvtier-master", hex_line, mode);
    auto credential = LoadCredential("kvtier-master");
    CHECK(credential.status().code() == StatusCode::kPermissionDenied);
    CHECK_THAT(credential.status().message(), Catch::Contains("chmod 400"));
  }
  SECTION("a credential owned by another user is refused") {
    if (::geteuid() != 0) {
      testing::Unavailable("root", "cannot chown a file to another user", /*whole_test=*/false);
      return;
    }
    WriteFile(dir.path() / "kvtier-master", hex_line, 0400);
    REQUIRE(::chown((dir.path() / "kvtier-master").c_str(), 65534, 65534) == 0);
    CHECK(LoadCredential("kvtier-master").status().code() == StatusCode::kPermissionDenied);
  }
  SECTION("malformed content is kInvalidArgument") {
    WriteFile(dir.path() / "kvtier-master", "SENTINEL-zzqx-garbage-bytes", 0400);
    auto credential = LoadCredential("kvtier-master");
    CHECK(credential.status().code() == StatusCode::kInvalidArgument);
    CHECK(LeaksNothingOf("SENTINEL-zzqx-garbage-bytes", credential.status().message()));
  }
  SECTION("a missing credential is kNotFound") {
    CHECK(LoadCredential("absent").status().code() == StatusCode::kNotFound);
  }
  SECTION("names that are not plain file names are refused") {
    WriteFile(dir.path() / "kvtier-master", hex_line, 0400);
    for (std::string_view name :
         {std::string_view(""), std::string_view("."), std::string_view(".."),
          std::string_view("../kvtier-master"), std::string_view("a/b"),
          std::string_view("kvtier-master\0x", 15)}) {
      INFO("name '" << std::string(name) << "'");
      CHECK(LoadCredential(name).status().code() == StatusCode::kInvalidArgument);
    }
  }
}

TEST_CASE("Tenant keys are stable per master and distinct per tenant", "[crypto][master_key]") {
  std::array<std::byte, 32> bytes{};
  for (size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = static_cast<std::byte>(i + 1);
  const SecretKey master = SecretKey::FromBytes(bytes);

  auto acme = DeriveTenantKey(master, "acme");
  auto acme_again = DeriveTenantKey(master, "acme");
  auto globex = DeriveTenantKey(master, "globex");
  REQUIRE((acme.ok() && acme_again.ok() && globex.ok()));
  CHECK(SameKey(*acme, *acme_again));
  CHECK_FALSE(SameKey(*acme, *globex));
  CHECK_FALSE(SameKey(*acme, master));

  SECTION("the derivation is pinned: spill files written before must stay readable") {
    // HKDF-SHA256(ikm = 01..20, salt = "kvtier/v1", info = "tenant-key:<tenant>"), computed
    // independently with Python's `cryptography` package.
    CHECK(ToHex(acme->bytes()) ==
          "31e76a763368c8e6126790d8e068c1682acfa2e5a0a0902ee9a0231999294286");
    CHECK(ToHex(globex->bytes()) ==
          "7f400c6439facc416cfa16512c868a208c9be4a921b65893d5b70d8164eacbae");
  }
  SECTION("another master gives other tenant keys") {
    bytes[0] ^= std::byte{1};
    auto other = DeriveTenantKey(SecretKey::FromBytes(bytes), "acme");
    REQUIRE(other.ok());
    CHECK_FALSE(SameKey(*other, *acme));
  }
  SECTION("an empty tenant name is refused") {
    CHECK(DeriveTenantKey(master, "").status().code() == StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace kvtier
