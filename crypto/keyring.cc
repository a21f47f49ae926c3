#include "crypto/keyring.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <utility>

#include "crypto/aes_gcm.h"
#include "crypto/hkdf.h"
#include "crypto/secure_random.h"
#include "crypto/sha256.h"
#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"
#include "ipc/base/unique_fd.h"

namespace kvtier {
namespace {

constexpr char kMagic[8] = {'K', 'V', 'T', 'K', 'E', 'Y', 'R', '1'};
constexpr std::string_view kSalt = "kvtier/v1";
constexpr size_t kEntryFixedBytes = 1 + 8 + 1 + SecretKey::kBytes;  // len, epoch, flags, key
constexpr size_t kMaxEntryBytes = kEntryFixedBytes + kKeyringMaxTenantBytes + SecretKey::kBytes;
constexpr size_t kMaxBodyBytes = kKeyringMaxEntries * kMaxEntryBytes;
constexpr size_t kMaxFileBytes = kKeyringHeaderBytes + kMaxBodyBytes + kKeyringTrailerBytes;
constexpr uint8_t kFlagLegacy = 1;

// Plaintext key material in a heap buffer: wiped on every path out.
class WipedBytes {
 public:
  explicit WipedBytes(size_t n) : bytes_(n) {}
  ~WipedBytes() { SecureZero(bytes_.data(), bytes_.size()); }
  WipedBytes(const WipedBytes&) = delete;
  WipedBytes& operator=(const WipedBytes&) = delete;
  std::vector<std::byte>& get() { return bytes_; }

 private:
  std::vector<std::byte> bytes_;
};

void PutU32(std::byte* out, uint32_t v) {
  for (size_t i = 0; i < 4; ++i) out[i] = static_cast<std::byte>(v >> (8 * i));
}
void PutU64(std::byte* out, uint64_t v) {
  for (size_t i = 0; i < 8; ++i) out[i] = static_cast<std::byte>(v >> (8 * i));
}
uint32_t GetU32(const std::byte* in) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v |= uint32_t{static_cast<uint8_t>(in[i])} << (8 * i);
  return v;
}
uint64_t GetU64(const std::byte* in) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v |= uint64_t{static_cast<uint8_t>(in[i])} << (8 * i);
  return v;
}

Result<SecretKey> Derive(const SecretKey& master, std::string_view info) {
  return HkdfSha256(master.bytes(), std::as_bytes(std::span(kSalt.data(), kSalt.size())), info);
}

Status Corrupt(const std::string& why) {
  return Status(StatusCode::kDataLoss, "keyring is corrupt: " + why);
}

Status CheckEntries(const Keyring& keyring) {
  if (keyring.entries.size() > kKeyringMaxEntries) {
    return Status(StatusCode::kInvalidArgument,
                  "keyring holds " + std::to_string(keyring.entries.size()) +
                      " tenants; at most " + std::to_string(kKeyringMaxEntries));
  }
  std::set<std::string_view> names;
  for (const KeyringEntry& e : keyring.entries) {
    if (e.tenant.empty() || e.tenant.size() > kKeyringMaxTenantBytes ||
        e.tenant.find('\0') != std::string::npos) {
      return Status(StatusCode::kInvalidArgument,
                    "keyring tenant name of " + std::to_string(e.tenant.size()) +
                        " bytes: a name is 1 to " + std::to_string(kKeyringMaxTenantBytes) +
                        " bytes without NUL");
    }
    if (e.epoch == 0) {
      return Status(StatusCode::kInvalidArgument,
                    "keyring tenant '" + e.tenant + "': epoch 0 is the legacy key's, a current "
                                                    "key's epoch is at least 1");
    }
    if (!names.insert(e.tenant).second) {
      return Status(StatusCode::kInvalidArgument,
                    "keyring names tenant '" + e.tenant + "' twice");
    }
  }
  return Status::Ok();
}

// Checks what can be checked without the key: size, magic, checksum, version.
Status CheckFrame(std::span<const std::byte> file) {
  if (file.size() < kKeyringHeaderBytes + kKeyringTrailerBytes) {
    return Corrupt(std::to_string(file.size()) + " bytes, shorter than any keyring");
  }
  if (file.size() > kMaxFileBytes) {
    return Corrupt(std::to_string(file.size()) + " bytes, longer than any keyring");
  }
  if (std::memcmp(file.data(), kMagic, sizeof(kMagic)) != 0) {
    return Corrupt("it does not start with KVTKEYR1");
  }
  const size_t body_bytes = GetU32(file.data() + 44);
  if (kKeyringHeaderBytes + body_bytes + kKeyringTrailerBytes != file.size()) {
    return Corrupt("its size (" + std::to_string(file.size()) +
                   " bytes) disagrees with its header (truncated or extended)");
  }
  const size_t sum_at = file.size() - 32;
  const auto sum = Sha256(file.first(sum_at));
  if (std::memcmp(sum.data(), file.data() + sum_at, sum.size()) != 0) {
    return Corrupt("its SHA-256 checksum does not match (damaged on disk or altered)");
  }
  const uint32_t version = GetU32(file.data() + 8);
  if (version != kKeyringVersion) {
    return Status(StatusCode::kFailedPrecondition,
                  "keyring format version " + std::to_string(version) +
                      " is not one this kvtierd reads (" + std::to_string(kKeyringVersion) +
                      "): written by a newer kvtier?");
  }
  return Status::Ok();
}

}  // namespace

KeyringEntry* Keyring::Find(std::string_view tenant) {
  for (KeyringEntry& e : entries) {
    if (e.tenant == tenant) return &e;
  }
  return nullptr;
}

const KeyringEntry* Keyring::Find(std::string_view tenant) const {
  for (const KeyringEntry& e : entries) {
    if (e.tenant == tenant) return &e;
  }
  return nullptr;
}

Result<MasterKeyId> KeyIdOf(const SecretKey& master) {
  KVT_ASSIGN_OR_RETURN(const SecretKey derived, Derive(master, "key-id"));
  MasterKeyId id{};
  std::copy_n(derived.bytes().begin(), id.size(), id.begin());
  return id;
}

std::string KeyIdHex(const MasterKeyId& id, size_t digits) {
  constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (std::byte b : id) {
    out += kDigits[static_cast<unsigned>(b) >> 4];
    out += kDigits[static_cast<unsigned>(b) & 0xf];
  }
  out.resize(std::min(digits, out.size()));
  return out;
}

Result<KeyringSealer> KeyringSealer::From(const SecretKey& master) {
  KVT_ASSIGN_OR_RETURN(SecretKey keyring_key, Derive(master, "keyring-key"));
  KVT_ASSIGN_OR_RETURN(const MasterKeyId id, KeyIdOf(master));
  return KeyringSealer{std::move(keyring_key), id};
}

Result<std::vector<std::byte>> SealKeyring(const Keyring& keyring, const SecretKey& master) {
  KVT_ASSIGN_OR_RETURN(const KeyringSealer sealer, KeyringSealer::From(master));
  return SealKeyring(keyring, sealer);
}

Result<std::vector<std::byte>> SealKeyring(const Keyring& keyring, const KeyringSealer& sealer) {
  KVT_RETURN_IF_ERROR(CheckEntries(keyring));
  size_t body_bytes = 0;
  for (const KeyringEntry& e : keyring.entries) {
    body_bytes += kEntryFixedBytes + e.tenant.size() + (e.legacy ? SecretKey::kBytes : 0);
  }
  WipedBytes plain(body_bytes);
  std::byte* p = plain.get().data();
  for (const KeyringEntry& e : keyring.entries) {
    *p++ = static_cast<std::byte>(e.tenant.size());
    std::memcpy(p, e.tenant.data(), e.tenant.size());
    p += e.tenant.size();
    PutU64(p, e.epoch);
    p += 8;
    *p++ = static_cast<std::byte>(e.legacy ? kFlagLegacy : 0);
    std::memcpy(p, e.key.bytes().data(), SecretKey::kBytes);
    p += SecretKey::kBytes;
    if (e.legacy) {
      std::memcpy(p, e.legacy->bytes().data(), SecretKey::kBytes);
      p += SecretKey::kBytes;
    }
  }
  KVT_CHECK(p == plain.get().data() + body_bytes);

  std::vector<std::byte> file(kKeyringHeaderBytes + body_bytes + kKeyringTrailerBytes);
  std::memcpy(file.data(), kMagic, sizeof(kMagic));
  PutU32(file.data() + 8, kKeyringVersion);
  PutU32(file.data() + 12, static_cast<uint32_t>(keyring.entries.size()));
  std::memcpy(file.data() + 16, sealer.id.data(), sealer.id.size());
  const std::span<std::byte> nonce = std::span(file).subspan(32, AesGcm::kNonceBytes);
  KVT_RETURN_IF_ERROR(SecureRandom(nonce));
  PutU32(file.data() + 44, static_cast<uint32_t>(body_bytes));
  KVT_ASSIGN_OR_RETURN(AesGcm gcm, AesGcm::Create(sealer.keyring_key));
  const std::span<std::byte> body = std::span(file).subspan(kKeyringHeaderBytes, body_bytes);
  const std::span<std::byte, AesGcm::kTagBytes> tag =
      std::span(file).subspan(kKeyringHeaderBytes + body_bytes).first<AesGcm::kTagBytes>();
  KVT_RETURN_IF_ERROR(gcm.Seal(std::span<const std::byte, AesGcm::kNonceBytes>(
                                   nonce.data(), AesGcm::kNonceBytes),
                               std::span(file).first(kKeyringHeaderBytes), plain.get(), body,
                               tag));
  const size_t sum_at = file.size() - 32;
  const auto sum = Sha256(std::span(file).first(sum_at));
  std::memcpy(file.data() + sum_at, sum.data(), sum.size());
  return file;
}

Result<MasterKeyId> KeyringKeyId(std::span<const std::byte> file) {
  KVT_RETURN_IF_ERROR(CheckFrame(file));
  MasterKeyId id{};
  std::memcpy(id.data(), file.data() + 16, id.size());
  return id;
}

Result<Keyring> OpenKeyring(std::span<const std::byte> file, const SecretKey& master) {
  KVT_ASSIGN_OR_RETURN(const MasterKeyId file_id, KeyringKeyId(file));
  KVT_ASSIGN_OR_RETURN(const MasterKeyId our_id, KeyIdOf(master));
  if (file_id != our_id) {
    return Status(StatusCode::kFailedPrecondition,
                  "the keyring is sealed under a different master key (key id " +
                      KeyIdHex(file_id) + "; the key given has id " + KeyIdHex(our_id) + ")");
  }
  const size_t body_bytes = GetU32(file.data() + 44);
  const size_t count = GetU32(file.data() + 12);
  KVT_ASSIGN_OR_RETURN(const SecretKey keyring_key, Derive(master, "keyring-key"));
  KVT_ASSIGN_OR_RETURN(AesGcm gcm, AesGcm::Create(keyring_key));
  WipedBytes plain(body_bytes);
  const Status opened = gcm.Open(
      file.subspan(32).first<AesGcm::kNonceBytes>(), file.first(kKeyringHeaderBytes),
      file.subspan(kKeyringHeaderBytes, body_bytes),
      file.subspan(kKeyringHeaderBytes + body_bytes).first<AesGcm::kTagBytes>(), plain.get());
  if (opened.code() == StatusCode::kDataLoss) {
    // The checksum matched, so this is no accident of the disk: someone rewrote the file and
    // its checksum (or a bug did). Either way it is not to be trusted.
    return Corrupt("it does not authenticate under its master key (altered)");
  }
  KVT_RETURN_IF_ERROR(opened);

  Keyring keyring;
  const std::byte* p = plain.get().data();
  const std::byte* const end = p + body_bytes;
  for (size_t i = 0; i < count; ++i) {
    if (end - p < 1) return Corrupt("its body ends inside entry " + std::to_string(i));
    const size_t name_len = static_cast<uint8_t>(*p++);
    if (name_len == 0 || name_len > kKeyringMaxTenantBytes ||
        static_cast<size_t>(end - p) < name_len + 9 + SecretKey::kBytes) {
      return Corrupt("entry " + std::to_string(i) + " is malformed");
    }
    std::string name(reinterpret_cast<const char*>(p), name_len);
    p += name_len;
    const uint64_t epoch = GetU64(p);
    p += 8;
    const auto flags = static_cast<uint8_t>(*p++);
    if ((flags & ~kFlagLegacy) != 0) {
      return Corrupt("entry " + std::to_string(i) + " has unknown flags");
    }
    KeyringEntry entry(std::move(name), epoch,
                       SecretKey::FromBytes(std::span<const std::byte, SecretKey::kBytes>(
                           p, SecretKey::kBytes)));
    p += SecretKey::kBytes;
    if ((flags & kFlagLegacy) != 0) {
      if (static_cast<size_t>(end - p) < SecretKey::kBytes) {
        return Corrupt("entry " + std::to_string(i) + " is malformed");
      }
      entry.legacy.emplace(
          SecretKey::FromBytes(std::span<const std::byte, SecretKey::kBytes>(p, SecretKey::kBytes)));
      p += SecretKey::kBytes;
    }
    keyring.entries.push_back(std::move(entry));
  }
  if (p != end) return Corrupt("its body has bytes after the last entry");
  if (Status s = CheckEntries(keyring); !s.ok()) return Corrupt(s.message());
  return keyring;
}

Result<std::vector<std::byte>> ReadKeyringFile(const std::filesystem::path& path) {
  const std::string what = "keyring " + path.string();
  // O_NOFOLLOW: the file is replaced by rename, which would replace a symlink and not its
  // target, so a symlink here is not ours. O_NONBLOCK: a FIFO cannot hang start-up.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW));
  if (!fd.valid()) {
    const int err = errno;
    if (err == ENOENT) return Status(StatusCode::kNotFound, what + " does not exist");
    if (err == ELOOP) {
      return Status(StatusCode::kInvalidArgument,
                    what + " is a symlink; kvtierd reads and replaces only a regular file there");
    }
    return ErrnoStatus("open " + what, err);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("fstat " + what, errno);
  if (!S_ISREG(st.st_mode)) {
    return Status(StatusCode::kInvalidArgument, what + " is not a regular file");
  }
  const uid_t euid = ::geteuid();
  if (st.st_uid != euid) {
    return Status(StatusCode::kPermissionDenied,
                  what + " is owned by uid " + std::to_string(st.st_uid) + ", not by uid " +
                      std::to_string(euid) + " that kvtierd runs as; chown it");
  }
  const mode_t mode = st.st_mode & 07777;
  if (mode != 0600 && mode != 0400) {
    char text[8];
    std::snprintf(text, sizeof(text), "%04o", static_cast<unsigned>(mode));
    return Status(StatusCode::kPermissionDenied,
                  what + " has mode " + text +
                      "; a keyring must be readable by its owner only (0600): run chmod 600 " +
                      path.string());
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxFileBytes) {
    return Corrupt(what + " holds " + std::to_string(st.st_size) +
                   " bytes, more than any keyring");
  }
  std::vector<std::byte> bytes(static_cast<size_t>(st.st_size) + 1);
  size_t length = 0;
  while (length < bytes.size()) {
    const ssize_t n = ::read(fd.get(), bytes.data() + length, bytes.size() - length);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read " + what, errno);
    }
    if (n == 0) break;
    length += static_cast<size_t>(n);
  }
  bytes.resize(length);  // ciphertext only: nothing secret to wipe
  return bytes;
}

Status WriteKeyringFile(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  const std::string what = "keyring " + tmp.string();
  // A .tmp left by a crash mid-write is ours and incomplete; unlink removes a symlink itself.
  if (::unlink(tmp.c_str()) != 0 && errno != ENOENT) return ErrnoStatus("remove " + what, errno);
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    const int err = errno;
    if (err == ENOENT) {
      return Status(StatusCode::kNotFound,
                    "cannot create " + what + ": directory " + path.parent_path().string() +
                        " does not exist");
    }
    return ErrnoStatus("create " + what, err);
  }
  auto fail = [&](const Status& s) {
    fd.reset();
    ::unlink(tmp.c_str());
    return s;
  };
  if (::fchmod(fd.get(), 0600) != 0) return fail(ErrnoStatus("chmod " + what, errno));
  for (size_t written = 0; written < bytes.size();) {
    const ssize_t n = ::write(fd.get(), bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(ErrnoStatus("write " + what, errno));
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return fail(ErrnoStatus("fsync " + what, errno));
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return fail(ErrnoStatus("rename " + what + " to " + path.filename().string(), errno));
  }
  // From here `path` holds the new bytes: a failure to make the rename durable must not be
  // reported as "not replaced" (callers would keep the old keys while the file has the new
  // ones). A crash before the directory reaches the disk can still bring the old file back,
  // which a power loss between any two writes could do anyway.
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : ".";
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.valid()) (void)::fsync(dir_fd.get());
  return Status::Ok();
}

}  // namespace kvtier
