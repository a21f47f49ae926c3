// Keyring: the spill tier's tenant keys, one small file sealed under the master key
// (docs/spill-format.md, "Keys, the keyring and crypto-erase").
//
// Each tenant has a current key, random, numbered by an epoch that a purge increments (the old
// key's bytes are then gone from the file), and optionally its epoch-0 key: the key kvtier
// derived from the master key before the keyring existed (DeriveTenantKey), kept only so that
// segments written by that version can still be read. Segment data keys are wrapped under the
// tenant key, never under the master key, so replacing the master key re-seals this one file
// and rewrites no segment.
//
// File layout (integers little-endian), version 1:
//   [0, 8)        magic "KVTKEYR1"
//   [8, 12)       format version (1)
//   [12, 16)      entry count
//   [16, 32)      master key id: the first 16 bytes of HKDF-SHA256(master, salt "kvtier/v1",
//                 info "key-id"); names the master key the file is sealed under, not secret
//   [32, 44)      nonce, random for every write
//   [44, 48)      body size N
//   [48, 48+N)    body, AES-256-GCM under the keyring key HKDF-SHA256(master, salt
//                 "kvtier/v1", info "keyring-key"), associated data: bytes [0, 48)
//   [48+N, 64+N)  GCM tag
//   [64+N, 96+N)  SHA-256 of bytes [0, 64+N): a corruption check (not a MAC), so that a
//                 damaged file is called damaged and not "sealed under another master key"
// Body, per entry: name length (u8, 1..32), the name, epoch (u64, >= 1), flags (u8; bit 0: an
// epoch-0 key follows), the current key (32 bytes), [the epoch-0 key (32 bytes)].
//
// Pure functions over bytes (SealKeyring, OpenKeyring, KeyringKeyId) and two file helpers.
// Key material is held only in SecretKey; every buffer that held plaintext key bytes is wiped
// (SecureZero) before it is freed. No Status message carries key bytes.
// Thread-safety: free functions and plain values; safe from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/secret_key.h"
#include "kvclient/status.h"

namespace kvtier {

inline constexpr size_t kKeyringMaxTenantBytes = 32;  // a segment header's tenant field
inline constexpr size_t kKeyringMaxEntries = 4096;
inline constexpr uint32_t kKeyringVersion = 1;
inline constexpr size_t kKeyringHeaderBytes = 48;
inline constexpr size_t kKeyringTrailerBytes = 16 + 32;  // GCM tag, SHA-256

struct KeyringEntry {
  KeyringEntry(std::string tenant_name, uint64_t key_epoch, SecretKey current)
      : tenant(std::move(tenant_name)), epoch(key_epoch), key(std::move(current)) {}

  std::string tenant;               // 1..kKeyringMaxTenantBytes bytes, no NUL
  uint64_t epoch = 1;               // of `key`; >= 1
  SecretKey key;                    // the tenant key: wraps every new segment's data key
  std::optional<SecretKey> legacy;  // epoch 0 (the derived key of kvtier before the keyring):
                                    // unwraps old segments at recovery, never wraps a new one
};

struct Keyring {
  std::vector<KeyringEntry> entries;  // unique tenant names, in the order written

  KeyringEntry* Find(std::string_view tenant);
  const KeyringEntry* Find(std::string_view tenant) const;
};

using MasterKeyId = std::array<std::byte, 16>;

// HKDF-SHA256(master, salt "kvtier/v1", info "key-id"), first 16 bytes. kInternal if OpenSSL
// fails.
Result<MasterKeyId> KeyIdOf(const SecretKey& master);
// Lowercase hex, 32 digits; `digits` < 32 gives a prefix (for logs and the audit log).
std::string KeyIdHex(const MasterKeyId& id, size_t digits = 32);

// What sealing a keyring needs of a master key: the keyring key and the key id, both HKDF
// outputs. A daemon keeps this rather than the master key: neither reveals the master key.
struct KeyringSealer {
  static Result<KeyringSealer> From(const SecretKey& master);

  SecretKey keyring_key;  // HKDF-SHA256(master, salt "kvtier/v1", info "keyring-key")
  MasterKeyId id{};
};

// The file's bytes. kInvalidArgument: a tenant name empty, longer than 32 bytes or holding a
// NUL, two entries of one tenant, an epoch of 0, more than kKeyringMaxEntries entries.
// kInternal if the CSPRNG or OpenSSL fails.
Result<std::vector<std::byte>> SealKeyring(const Keyring& keyring, const KeyringSealer& sealer);
Result<std::vector<std::byte>> SealKeyring(const Keyring& keyring, const SecretKey& master);

// The master key id a keyring file names, checked against its SHA-256 first. kDataLoss
// ("corrupt: ...") when the file is too short, too long, has another magic, or fails the
// checksum; kFailedPrecondition for a format version this code does not read.
Result<MasterKeyId> KeyringKeyId(std::span<const std::byte> file);

// The keyring, if `file` was sealed by SealKeyring under `master`. Errors, never with key bytes:
//   kFailedPrecondition  sealed under a different master key (the message says so and gives
//                        both key ids), or an unknown format version
//   kDataLoss            corrupt: truncated, extended, any bit flipped (the checksum, or the
//                        GCM tag when the checksum was recomputed), a malformed body
Result<Keyring> OpenKeyring(std::span<const std::byte> file, const SecretKey& master);

// Reads a keyring file under the same rules as a master key file (LoadMasterKey), but never
// through a symlink: a regular file owned by this process's euid, mode 0600 or 0400.
//   kNotFound          nothing at `path`
//   kPermissionDenied  wrong owner or mode (the message says chmod 600 / chown)
//   kInvalidArgument   a symlink or not a regular file
//   kDataLoss          larger than any keyring can be
//   others             open/read failed (errno)
Result<std::vector<std::byte>> ReadKeyringFile(const std::filesystem::path& path);

// Replaces `path` atomically with `bytes`: writes `path`.tmp (O_CREAT|O_EXCL|O_NOFOLLOW, mode
// 0600; a stale .tmp from a crash is removed first), fsyncs it, renames it over `path` and
// fsyncs the directory. On failure `path` is as it was and no .tmp is left; once the rename
// is done the result is OK (the directory's fsync is tried, a failure of it ignored: the file
// has been replaced). kNotFound if the directory does not exist; errno-derived codes otherwise.
Status WriteKeyringFile(const std::filesystem::path& path, std::span<const std::byte> bytes);

}  // namespace kvtier
