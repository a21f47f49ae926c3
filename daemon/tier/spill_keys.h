// SpillKeys: the SSD tier's keys while kvtierd runs: the master key in use and the keyring of
// tenant keys sealed under it (crypto/keyring.h) at spill.keyring_file. docs/spill-format.md,
// "Keys, the keyring and crypto-erase", explains the scheme; docs/operations.md, "Keys", the
// procedures.
//
// Open (start-up): loads the master key from spill.key_file or spill.key_credential, then the
// keyring:
//   - sealed under the master key: opened;
//   - sealed under spill.previous_key_file / previous_key_credential: opened with that key and
//     re-sealed under the current one (a rotation done while kvtierd was stopped);
//   - missing: created (the migration from derived tenant keys, and a lost keyring);
//   - sealed under another key, corrupt, or of an unknown version: logged as an error, moved
//     aside to <keyring>.unreadable-<UTC time>, and a new one created; the SSD tier starts
//     empty (recovery discards the segments whose keys it cannot unwrap), as kvtier is a cache.
// A created keyring gives every tenant a random key (epoch 1); a tenant whose directory holds
// segments then also gets its epoch-0 key, DeriveTenantKey(master, tenant), the key of kvtier
// before the keyring, used only to read those segments. A tenant with an SSD tier and no entry
// gets a random key. Entries of tenants no longer configured stay (their directory stays too,
// and re-adding the tenant recovers it, as before the keyring).
// Start-up fails, naming the setting, when a key cannot be loaded (the previous one included,
// when it is needed), when the keyring is not a regular file of kvtierd's with mode 0600, or
// when it cannot be written.
//
// After Open: NextEpoch (a purge) and Rotate (kvtierctl rotate-key) rewrite the keyring
// atomically before they return; on error nothing changed, in memory or on disk.
// Key bytes are never logged or put in a Status; key ids (crypto/keyring.h) are. The master key
// is not kept: only the keyring key derived from it (KeyringSealer).
// Not thread-safe: start-up, then the event loop only.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/keyring.h"
#include "crypto/secret_key.h"
#include "daemon/config/config.h"
#include "kvclient/status.h"

namespace kvtier {

class SpillKeys {
 public:
  // `ssd_tenants`: the tenants with an SSD tier now. The spill directory must exist (it is
  // read for segments to migrate). `log` gets one line per event ("warning: " and "error: "
  // prefixes for the daemon's levels).
  static Result<std::unique_ptr<SpillKeys>> Open(const SpillConfig& spill,
                                                 const std::vector<std::string>& ssd_tenants,
                                                 std::vector<std::string>* log);

  // The tenant's entry: there is one for every tenant of `ssd_tenants` after Open.
  const KeyringEntry* Find(std::string_view tenant) const { return keyring_.Find(tenant); }
  // The tenant's legacy (epoch-0) key unwrapped none of its segments at recovery: it goes from
  // the keyring at the next write (SaveIfChanged).
  void DropLegacy(std::string_view tenant);
  // Writes the keyring if DropLegacy changed it.
  Status SaveIfChanged();

  struct NewEpoch {
    uint64_t epoch = 0;
    std::shared_ptr<const SecretKey> key;  // for the tenant's spill store (SpillJob::tenant_key)
  };
  // A purge: the tenant's key is replaced by a random one of the next epoch, its legacy key
  // dropped, and the keyring rewritten, before this returns. kNotFound if the tenant has no
  // entry (it never had an SSD tier). Errors from writing: nothing changed.
  Result<NewEpoch> NextEpoch(std::string_view tenant);

  struct Rotation {
    bool rotated = false;     // false: the configured key is the one in use; nothing written
    std::string source;       // "key file PATH" or "credential NAME"
    std::string old_key_id;   // hex, 32 digits
    std::string new_key_id;
  };
  // kvtierctl rotate-key: reads the master key again from the configured source; if it is
  // another key, re-seals the keyring under it (atomically) and uses it from now on (the old
  // key is zeroed). Segment headers are not touched: they are wrapped under tenant keys, which
  // do not change. Errors (the key cannot be read, the keyring not written): the key in use
  // stays, and so does the keyring.
  Result<Rotation> Rotate();

  // The master key id in use, hex (32 digits, or a prefix).
  std::string key_id(size_t digits = 32) const { return KeyIdHex(sealer_.id, digits); }
  const std::filesystem::path& keyring_path() const { return spill_.keyring_file; }

 private:
  SpillKeys(const SpillConfig& spill, KeyringSealer sealer);
  Status Save();

  SpillConfig spill_;  // the key sources and keyring path the daemon started with
  // What the master key in use seals the keyring with; the master key itself is zeroed once
  // Open is done with it (a memory disclosure then reveals keys kvtierd holds anyway, not the
  // master key).
  KeyringSealer sealer_;
  Keyring keyring_;
  bool dirty_ = false;
};

}  // namespace kvtier
