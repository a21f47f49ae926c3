// Master key sources and per-tenant key derivation for the encrypted spill tier.
// The master key comes from a key file (LoadMasterKey; CreateMasterKeyFile makes one for dev
// setups) or from a systemd credential (LoadCredential). It seals the keyring of tenant keys
// (crypto/keyring.h); DeriveTenantKey is the tenant key of kvtier before the keyring, kept to
// read segments written then (the keyring's epoch-0 keys). File contents are never echoed into a Status: messages name the
// file, its size, owner and mode, and nothing it contains.
// Thread-safety: free functions, safe from any thread, except that LoadCredential reads the
// environment (getenv), so call it during start-up, not while another thread calls setenv.
#pragma once

#include <filesystem>
#include <string_view>

#include "crypto/secret_key.h"
#include "kvclient/status.h"

namespace kvtier {

// Key file format, for LoadMasterKey and LoadCredential: exactly 32 raw bytes, or exactly 64
// hex digits (either case) optionally followed by one '\n'. Nothing else: no other whitespace,
// no 32 raw bytes plus newline. An all-zero key (a `truncate -s 32` accident) is refused.
//
// LoadMasterKey: `file` must be a regular file (a symlink to one is followed), owned by this
// process's effective uid, with mode exactly 0600 or 0400.
//   kNotFound          the file does not exist
//   kPermissionDenied  wrong owner, or any other mode (the message names the path and mode and
//                      says `chmod 600`), or open() is refused
//   kInvalidArgument   not a regular file, or not in the format above (the message names the
//                      path and the size only)
//   kIoError           open or read failed otherwise
Result<SecretKey> LoadMasterKey(const std::filesystem::path& file);

// Reads the systemd credential `name` from $CREDENTIALS_DIRECTORY/<name> (a unit's
// LoadCredential=<name>:<source> or LoadCredentialEncrypted=), same format as above.
// Access rule, looser than for a key file because systemd, not the operator, writes it:
// systemd's service manager creates each credential with mode 0400, owned by itself (root)
// and readable by the service user through an ACL, whose mask then shows as group-read (0440);
// when ACLs are unavailable it chowns the file to the service user instead. So the owner must
// be this process's effective uid or root, and the mode may carry no set-id or sticky bit, no
// group write or execute, and no bits for others: 0400, 0440, 0600, 0640 pass; 0644, 0460 do
// not. Group read is tolerated because the credentials directory itself is private to the unit
// (mounted read-only, accessible to the service user only).
//   kNotFound          $CREDENTIALS_DIRECTORY unset or empty (not started by systemd with a
//                      credential), or no credential of that name
//   kInvalidArgument   `name` empty, ".", "..", or containing '/' or NUL; bad format
//   kPermissionDenied  wrong owner or mode (the message says `chmod 400`)
Result<SecretKey> LoadCredential(std::string_view name);

// Creates `file` with a fresh random key: O_CREAT|O_EXCL, mode 0600 (forced, whatever the
// umask), 64 lowercase hex digits and '\n', fsync'ed. For the dev config; production keys come
// from the operator or a credential. kAlreadyExists if anything is at `file` (never
// overwritten); kNotFound if its directory does not exist; errno-derived codes otherwise, and
// then no partial file is left behind.
Status CreateMasterKeyFile(const std::filesystem::path& file);

// The tenant's key as kvtier derived it before the keyring (now a migrated tenant's epoch-0
// key): HKDF-SHA256(ikm = master, salt = "kvtier/v1", info = "tenant-key:" + tenant).
// Deterministic; distinct tenants get independent keys. kInvalidArgument if `tenant` is empty or longer than the HKDF info limit allows.
Result<SecretKey> DeriveTenantKey(const SecretKey& master, std::string_view tenant);

}  // namespace kvtier
