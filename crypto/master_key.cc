#include "crypto/master_key.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <span>
#include <string>

#include "crypto/hkdf.h"
#include "crypto/secure_random.h"
#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"
#include "ipc/base/unique_fd.h"

namespace kvtier {
namespace {

constexpr size_t kRawKeyBytes = SecretKey::kBytes;
constexpr size_t kHexKeyChars = 2 * SecretKey::kBytes;
// Longest valid content (hex + '\n'); one byte more is read to tell "too long" apart.
constexpr size_t kMaxKeyFileBytes = kHexKeyChars + 1;

// Wipes a stack buffer on every path out of the scope that holds key material.
class ZeroOnExit {
 public:
  ZeroOnExit(void* data, size_t bytes) : data_(data), bytes_(bytes) {}
  ~ZeroOnExit() { SecureZero(data_, bytes_); }
  ZeroOnExit(const ZeroOnExit&) = delete;
  ZeroOnExit& operator=(const ZeroOnExit&) = delete;

 private:
  void* data_;
  size_t bytes_;
};

std::string ModeString(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof(text), "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// `what` is e.g. "master key file /etc/kvtier/master.key"; `content` is never put in a message.
Result<SecretKey> ParseKey(std::span<const char> content,
                           off_t file_bytes,
                           const std::string& what) {
  std::array<std::byte, kRawKeyBytes> raw{};
  ZeroOnExit wipe_raw(raw.data(), raw.size());
  if (content.size() == kRawKeyBytes) {
    for (size_t i = 0; i < kRawKeyBytes; ++i)
      raw[i] = static_cast<std::byte>(content[i]);
  } else if (content.size() == kHexKeyChars ||
             (content.size() == kHexKeyChars + 1 && content[kHexKeyChars] == '\n')) {
    for (size_t i = 0; i < kRawKeyBytes; ++i) {
      const int hi = HexValue(content[2 * i]);
      const int lo = HexValue(content[2 * i + 1]);
      if (hi < 0 || lo < 0) {
        return Status(StatusCode::kInvalidArgument,
                      what + " is not a key: " + std::to_string(file_bytes) +
                          " bytes that are not 64 hex digits (expected 32 raw bytes or 64 hex "
                          "digits, optionally followed by one newline)");
      }
      raw[i] = static_cast<std::byte>(hi << 4 | lo);
    }
  } else {
    return Status(StatusCode::kInvalidArgument,
                  what + " is not a key: it holds " + std::to_string(file_bytes) +
                      " bytes; expected 32 raw bytes or 64 hex digits, optionally followed by "
                      "one newline");
  }
  bool all_zero = true;
  for (std::byte b : raw)
    all_zero = all_zero && b == std::byte{0};
  if (all_zero) {
    return Status(StatusCode::kInvalidArgument, what + " is not a key: it is all zero bytes");
  }
  return SecretKey::FromBytes(raw);
}

Status CheckMasterKeyFileAccess(const struct stat& st,
                                const std::string& what,
                                const std::filesystem::path& path) {
  const uid_t euid = ::geteuid();
  if (st.st_uid != euid) {
    return Status(StatusCode::kPermissionDenied,
                  what + " is owned by uid " + std::to_string(st.st_uid) + ", not by uid " +
                      std::to_string(euid) + " that kvtierd runs as; chown it");
  }
  const mode_t mode = st.st_mode & 07777;
  if (mode != 0600 && mode != 0400) {
    return Status(StatusCode::kPermissionDenied,
                  what + " has mode " + ModeString(mode) +
                      "; a key file must be readable by its owner only (0600 or 0400): run "
                      "chmod 600 " +
                      path.string());
  }
  return Status::Ok();
}

Status CheckCredentialAccess(const struct stat& st,
                             const std::string& what,
                             const std::filesystem::path& path) {
  const uid_t euid = ::geteuid();
  if (st.st_uid != euid && st.st_uid != 0) {
    return Status(StatusCode::kPermissionDenied,
                  what + " is owned by uid " + std::to_string(st.st_uid) +
                      "; a credential must be owned by root or by uid " + std::to_string(euid) +
                      " that kvtierd runs as");
  }
  const mode_t mode = st.st_mode & 07777;
  constexpr mode_t kForbidden = S_ISUID | S_ISGID | S_ISVTX | S_IWGRP | S_IXGRP | S_IRWXO;
  if ((mode & kForbidden) != 0) {
    return Status(StatusCode::kPermissionDenied,
                  what + " has mode " + ModeString(mode) +
                      "; a credential must not be writable by its group nor accessible by "
                      "others (systemd writes 0400): run chmod 400 " +
                      path.string());
  }
  return Status::Ok();
}

using AccessCheck = Status (*)(const struct stat&,
                               const std::string&,
                               const std::filesystem::path&);

Result<SecretKey> LoadKeyFile(const std::filesystem::path& path,
                              std::string_view kind,
                              AccessCheck check_access) {
  const std::string what = std::string(kind) + " " + path.string();
  // O_NONBLOCK: opening a FIFO planted at the path must not hang start-up; it is then refused
  // as not a regular file. Checks run on the opened fd (fstat), so the file cannot be swapped
  // between the check and the read.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd.valid()) {
    const int err = errno;
    if (err == ENOENT) return Status(StatusCode::kNotFound, what + " does not exist");
    return ErrnoStatus("open " + what, err);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("fstat " + what, errno);
  if (!S_ISREG(st.st_mode)) {
    return Status(StatusCode::kInvalidArgument, what + " is not a regular file");
  }
  KVT_RETURN_IF_ERROR(check_access(st, what, path));

  std::array<char, kMaxKeyFileBytes + 1> content{};
  ZeroOnExit wipe_content(content.data(), content.size());
  size_t length = 0;
  while (length < content.size()) {
    const ssize_t n = ::read(fd.get(), content.data() + length, content.size() - length);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read " + what, errno);
    }
    if (n == 0) break;
    length += static_cast<size_t>(n);
  }
  return ParseKey(std::span<const char>(content.data(), length), st.st_size, what);
}

Status WriteNewKey(int fd, const std::string& what) {
  // The umask may have taken owner bits from the 0600 given to open(); set it outright.
  if (::fchmod(fd, 0600) != 0) return ErrnoStatus("chmod " + what, errno);
  KVT_ASSIGN_OR_RETURN(SecretKey key, SecretKey::Random());
  std::array<char, kHexKeyChars + 1> text{};
  ZeroOnExit wipe_text(text.data(), text.size());
  constexpr char kDigits[] = "0123456789abcdef";
  for (size_t i = 0; i < SecretKey::kBytes; ++i) {
    const auto b = static_cast<unsigned>(key.bytes()[i]);
    text[2 * i] = kDigits[b >> 4];
    text[2 * i + 1] = kDigits[b & 0xf];
  }
  text[kHexKeyChars] = '\n';
  for (size_t written = 0; written < text.size();) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write " + what, errno);
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) return ErrnoStatus("fsync " + what, errno);
  return Status::Ok();
}

}  // namespace

Result<SecretKey> LoadMasterKey(const std::filesystem::path& file) {
  return LoadKeyFile(file, "master key file", &CheckMasterKeyFileAccess);
}

Result<SecretKey> LoadCredential(std::string_view name) {
  const char* dir = ::getenv("CREDENTIALS_DIRECTORY");
  if (dir == nullptr || *dir == '\0') {
    return Status(StatusCode::kNotFound,
                  "$CREDENTIALS_DIRECTORY is not set: kvtierd was not started by systemd with "
                  "LoadCredential=" +
                      std::string(name) + ":<key file>");
  }
  if (name.empty() || name == "." || name == ".." ||
      name.find_first_of(std::string_view("/\0", 2)) != std::string_view::npos) {
    return Status(StatusCode::kInvalidArgument,
                  "credential name must be a plain file name, not '" + std::string(name) + "'");
  }
  return LoadKeyFile(std::filesystem::path(dir) / std::string(name), "credential",
                     &CheckCredentialAccess);
}

Status CreateMasterKeyFile(const std::filesystem::path& file) {
  const std::string what = "master key file " + file.string();
  // O_EXCL: never overwrite (an existing key may be the only way to read existing spill data),
  // and never follow a symlink planted at the path.
  UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd.valid()) {
    const int err = errno;
    if (err == EEXIST) {
      return Status(StatusCode::kAlreadyExists, what + " already exists; not overwriting it");
    }
    if (err == ENOENT) {
      return Status(StatusCode::kNotFound, "cannot create " + what + ": no such directory");
    }
    return ErrnoStatus("create " + what, err);
  }
  Status status = WriteNewKey(fd.get(), what);
  if (!status.ok()) ::unlink(file.c_str());  // we created it (O_EXCL): leave no half key
  return status;
}

Result<SecretKey> DeriveTenantKey(const SecretKey& master, std::string_view tenant) {
  if (tenant.empty()) return Status(StatusCode::kInvalidArgument, "tenant name is empty");
  constexpr std::string_view kSalt = "kvtier/v1";
  // "tenant-key:" + tenant is prefix-free across tenants: the tenant is the whole remainder.
  const std::string info = "tenant-key:" + std::string(tenant);
  return HkdfSha256(master.bytes(), std::as_bytes(std::span(kSalt.data(), kSalt.size())), info);
}

}  // namespace kvtier
