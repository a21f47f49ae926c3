#include "daemon/tier/spill_keys.h"

#include <errno.h>
#include <stdio.h>
#include <time.h>

#include <algorithm>
#include <set>
#include <system_error>
#include <utility>

#include "crypto/master_key.h"
#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"

namespace kvtier {
namespace {

namespace fs = std::filesystem;

std::string SourceOf(const fs::path& file, const std::string& credential) {
  return credential.empty() ? "key file " + file.string() : "credential " + credential;
}

// The master key in use: spill.key_file (created first with spill.create_key, at start-up
// only) or spill.key_credential.
Result<SecretKey> LoadCurrentKey(const SpillConfig& spill, bool may_create,
                                 std::vector<std::string>* log) {
  if (!spill.key_credential.empty()) {
    auto key = LoadCredential(spill.key_credential);
    if (!key.ok()) {
      return Status(key.status().code(), "spill.key_credential: " + key.status().message());
    }
    return key;
  }
  auto key = LoadMasterKey(spill.key_file);
  if (key.status().code() == StatusCode::kNotFound && spill.create_key && may_create) {
    if (Status s = CreateMasterKeyFile(spill.key_file); !s.ok()) {
      return Status(s.code(), "spill.create_key: " + s.message());
    }
    log->push_back("created a new spill master key in " + spill.key_file.string() +
                   " (spill.create_key); keep it: without it the SSD tier cannot be read");
    key = LoadMasterKey(spill.key_file);
  }
  if (!key.ok()) return Status(key.status().code(), "spill.key_file: " + key.status().message());
  return key;
}

Result<SecretKey> LoadPreviousKey(const SpillConfig& spill) {
  if (!spill.previous_key_credential.empty()) {
    auto key = LoadCredential(spill.previous_key_credential);
    if (!key.ok()) {
      return Status(key.status().code(),
                    "spill.previous_key_credential: " + key.status().message());
    }
    return key;
  }
  auto key = LoadMasterKey(spill.previous_key_file);
  if (!key.ok()) {
    return Status(key.status().code(), "spill.previous_key_file: " + key.status().message());
  }
  return key;
}

bool HasPrevious(const SpillConfig& spill) {
  return !spill.previous_key_file.empty() || !spill.previous_key_credential.empty();
}

std::string PreviousSetting(const SpillConfig& spill) {
  return spill.previous_key_file.empty() ? "spill.previous_key_credential"
                                         : "spill.previous_key_file";
}

// A name kvtierd could have made a tenant directory of (config.cc's tenant name rule).
bool TenantDirName(const std::string& name) {
  if (name.empty() || name.size() > 31 || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-';
  });
}

// The directory holds something named like a segment ("seg-*.kvs").
bool HasSegments(const fs::path& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() == 16 && name.starts_with("seg-") && name.ends_with(".kvs")) return true;
  }
  return false;
}

std::string UtcStamp() {
  const time_t now = ::time(nullptr);
  tm utc{};
  ::gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y%m%dT%H%M%SZ", &utc);
  return text;
}

// Renames an unreadable keyring out of the way (never deleted: an operator who finds the old
// master key can still inspect it). Returns the new path.
Result<fs::path> MoveAside(const fs::path& path) {
  const std::string base = path.string() + ".unreadable-" + UtcStamp();
  for (int i = 0; i < 100; ++i) {
    const fs::path to = i == 0 ? fs::path(base) : fs::path(base + "." + std::to_string(i));
    std::error_code ec;
    if (fs::exists(fs::symlink_status(to, ec))) continue;
    if (::rename(path.c_str(), to.c_str()) != 0) {
      return ErrnoStatus("spill.keyring_file: move the unreadable keyring " + path.string() +
                             " aside to " + to.string(),
                         errno);
    }
    return to;
  }
  return Status(StatusCode::kAlreadyExists,
                "spill.keyring_file: no free name to move " + path.string() + " aside");
}

}  // namespace

SpillKeys::SpillKeys(const SpillConfig& spill, KeyringSealer sealer)
    : spill_(spill), sealer_(std::move(sealer)) {}

Result<std::unique_ptr<SpillKeys>> SpillKeys::Open(const SpillConfig& spill,
                                                   const std::vector<std::string>& ssd_tenants,
                                                   std::vector<std::string>* log) {
  KVT_CHECK(!spill.keyring_file.empty());  // the config fills in its default
  // The master key lives in this scope only; the keys object keeps what seals the keyring.
  KVT_ASSIGN_OR_RETURN(const SecretKey master, LoadCurrentKey(spill, /*may_create=*/true, log));
  KVT_ASSIGN_OR_RETURN(KeyringSealer sealer, KeyringSealer::From(master));
  const MasterKeyId id = sealer.id;
  std::unique_ptr<SpillKeys> keys(new SpillKeys(spill, std::move(sealer)));
  const fs::path& path = spill.keyring_file;
  const std::string where = "the keyring " + path.string();
  const std::string current_source = SourceOf(spill.key_file, spill.key_credential);

  // The keyring must stay out of copies of the spill directory: checked on the real paths
  // too (the config compared them as written; a symlink could still put it inside).
  std::error_code ec;
  const fs::path real_dir = fs::weakly_canonical(spill.dir, ec);
  const fs::path real_keyring = ec ? fs::path() : fs::weakly_canonical(path, ec);
  if (!ec) {
    const fs::path inside = real_keyring.lexically_relative(real_dir);
    if (!inside.empty() && *inside.begin() != "..") {
      return Status(StatusCode::kInvalidArgument,
                    "spill.keyring_file: " + path.string() + " resolves to " +
                        real_keyring.string() + ", inside spill.dir (" + real_dir.string() +
                        "): a copy of the spill directory must not hold its keys");
    }
  }

  bool create = false;
  std::string unreadable;  // why the keyring on disk cannot be used
  std::string hint;        // what would have kept it
  auto file = ReadKeyringFile(path);
  if (file.status().code() == StatusCode::kNotFound) {
    create = true;
  } else if (file.status().code() == StatusCode::kDataLoss) {
    unreadable = file.status().message();
  } else if (!file.ok()) {
    return Status(file.status().code(), "spill.keyring_file: " + file.status().message());
  } else if (auto file_id = KeyringKeyId(*file); !file_id.ok()) {
    unreadable = file_id.status().message();
  } else if (*file_id == id) {
    auto opened = OpenKeyring(*file, master);
    if (opened.ok()) {
      keys->keyring_ = std::move(*opened);
      if (HasPrevious(spill)) {
        log->push_back("warning: " + PreviousSetting(spill) +
                       " is set but not needed: " + where + " is sealed under the current " +
                       "master key (id " + KeyIdHex(id, 8) +
                       "); remove the setting and the old key");
      }
    } else {
      unreadable = opened.status().message();
    }
  } else if (HasPrevious(spill)) {
    // The previous key is loaded only now, when it is needed: a missing or unreadable one is
    // then a configuration error (it was set to keep the SSD tier), and start-up fails.
    KVT_ASSIGN_OR_RETURN(const SecretKey previous, LoadPreviousKey(spill));
    KVT_ASSIGN_OR_RETURN(const MasterKeyId previous_id, KeyIdOf(previous));
    if (*file_id == previous_id) {
      auto opened = OpenKeyring(*file, previous);
      if (!opened.ok()) {
        unreadable = opened.status().message();
      } else {
        keys->keyring_ = std::move(*opened);
        keys->dirty_ = true;
        log->push_back("warning: " + where + " was sealed under the previous master key (" +
                       PreviousSetting(spill) + ", id " + KeyIdHex(previous_id, 8) +
                       "): re-sealed under the current one (" + current_source + ", id " +
                       KeyIdHex(id, 8) + "); the SSD tier is kept. The previous key is no " +
                       "longer needed: remove " + PreviousSetting(spill) + " and the old key");
      }
    } else {
      unreadable = "is sealed under a different master key (id " + KeyIdHex(*file_id) +
                   "), neither the current one (" + current_source + ", id " + KeyIdHex(id) +
                   ") nor the previous one (" + PreviousSetting(spill) + ", id " +
                   KeyIdHex(previous_id) + ")";
    }
  } else {
    unreadable = "was sealed under a different master key (id " + KeyIdHex(*file_id) +
                 ") than the one in use (" + current_source + ", id " + KeyIdHex(id) + ")";
    hint = " (to keep the SSD tier across a change of master key, set "
           "spill.previous_key_file or previous_key_credential to the old key before starting "
           "kvtierd with the new one, or run kvtierctl rotate-key while it runs)";
  }
  if (!unreadable.empty()) {
    KVT_ASSIGN_OR_RETURN(const fs::path aside, MoveAside(path));
    // Said once, whole: the cause, the consequence, where the old file went.
    if (!unreadable.starts_with("is ") && !unreadable.starts_with("was ")) {
      unreadable = "cannot be used: " + unreadable;
    }
    log->push_back("error: " + where + " " + unreadable +
                   "; the SSD tier starts empty: segments whose keys cannot be unwrapped are "
                   "discarded" + hint + ". The old keyring was moved to " + aside.string());
    create = true;
  }

  if (create) {
    // Tenants with segments written before the keyring existed (kvtier deriving tenant keys
    // from the master key) keep them readable through their epoch-0 key; every new segment is
    // wrapped under a random key. Directories of tenants no longer configured count too: their
    // data is recovered if they come back, as before.
    std::set<std::string> names(ssd_tenants.begin(), ssd_tenants.end());
    for (fs::directory_iterator it(spill.dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (TenantDirName(name) && it->is_directory(ec)) names.insert(name);
    }
    size_t migrated = 0;
    for (const std::string& name : names) {
      const bool configured =
          std::find(ssd_tenants.begin(), ssd_tenants.end(), name) != ssd_tenants.end();
      const bool old_segments = HasSegments(spill.dir / name);
      if (!configured && !old_segments) continue;
      KVT_ASSIGN_OR_RETURN(SecretKey current, SecretKey::Random());
      KeyringEntry entry(name, 1, std::move(current));
      if (old_segments) {
        KVT_ASSIGN_OR_RETURN(SecretKey derived, DeriveTenantKey(master, name));
        entry.legacy.emplace(std::move(derived));
        ++migrated;
      }
      keys->keyring_.entries.push_back(std::move(entry));
    }
    keys->dirty_ = true;
    if (unreadable.empty()) {
      log->push_back("no keyring at " + path.string() + ": created it (" +
                     std::to_string(keys->keyring_.entries.size()) +
                     " tenant(s), random keys, epoch 1" +
                     (migrated > 0 ? "; " + std::to_string(migrated) +
                                         " with segments from before the keyring, read with "
                                         "the tenant keys derived from the master key (epoch 0) "
                                         "until they are gone or the tenant is purged"
                                   : std::string()) +
                     ")");
    }
  }
  for (const std::string& name : ssd_tenants) {
    if (keys->keyring_.Find(name) != nullptr) continue;
    KVT_ASSIGN_OR_RETURN(SecretKey current, SecretKey::Random());
    keys->keyring_.entries.emplace_back(name, 1, std::move(current));
    keys->dirty_ = true;
  }
  if (keys->dirty_) KVT_RETURN_IF_ERROR(keys->Save());
  return keys;
}

Status SpillKeys::Save() {
  KVT_ASSIGN_OR_RETURN(const std::vector<std::byte> sealed, SealKeyring(keyring_, sealer_));
  if (Status s = WriteKeyringFile(spill_.keyring_file, sealed); !s.ok()) {
    return Status(s.code(), "spill.keyring_file: " + s.message() +
                                " (kvtierd must be able to write the keyring's directory; set "
                                "spill.keyring_file to another path if it cannot)");
  }
  dirty_ = false;
  return Status::Ok();
}

void SpillKeys::DropLegacy(std::string_view tenant) {
  KeyringEntry* entry = keyring_.Find(tenant);
  if (entry == nullptr || !entry->legacy) return;
  entry->legacy.reset();
  dirty_ = true;
}

Status SpillKeys::SaveIfChanged() { return dirty_ ? Save() : Status::Ok(); }

Result<SpillKeys::NewEpoch> SpillKeys::NextEpoch(std::string_view tenant) {
  KeyringEntry* entry = keyring_.Find(tenant);
  if (entry == nullptr) {
    return Status(StatusCode::kNotFound,
                  "tenant '" + std::string(tenant) + "' has no key in the keyring");
  }
  KVT_ASSIGN_OR_RETURN(SecretKey fresh, SecretKey::Random());
  auto for_store = std::make_shared<const SecretKey>(SecretKey::FromBytes(fresh.bytes()));
  // Written first: the keyring in memory changes only once the file has.
  Keyring next;
  for (const KeyringEntry& e : keyring_.entries) {
    if (e.tenant == tenant) {
      next.entries.emplace_back(e.tenant, e.epoch + 1, std::move(fresh));
    } else {
      KeyringEntry copy(e.tenant, e.epoch, SecretKey::FromBytes(e.key.bytes()));
      if (e.legacy) copy.legacy.emplace(SecretKey::FromBytes(e.legacy->bytes()));
      next.entries.push_back(std::move(copy));
    }
  }
  KVT_ASSIGN_OR_RETURN(const std::vector<std::byte> sealed, SealKeyring(next, sealer_));
  if (Status s = WriteKeyringFile(spill_.keyring_file, sealed); !s.ok()) {
    return Status(s.code(), "spill.keyring_file: " + s.message());
  }
  // The retired key's bytes are overwritten in memory (SecretKey's move-assignment and
  // destructor), as the file no longer holds them.
  keyring_ = std::move(next);
  dirty_ = false;
  return NewEpoch{keyring_.Find(tenant)->epoch, std::move(for_store)};
}

Result<SpillKeys::Rotation> SpillKeys::Rotate() {
  Rotation rotation;
  rotation.source = SourceOf(spill_.key_file, spill_.key_credential);
  rotation.old_key_id = KeyIdHex(sealer_.id);
  std::vector<std::string> unused_log;
  KVT_ASSIGN_OR_RETURN(KeyringSealer fresh, [&]() -> Result<KeyringSealer> {
    // The new master key lives in this scope only.
    KVT_ASSIGN_OR_RETURN(const SecretKey key,
                         LoadCurrentKey(spill_, /*may_create=*/false, &unused_log));
    return KeyringSealer::From(key);
  }());
  rotation.new_key_id = KeyIdHex(fresh.id);
  if (fresh.id == sealer_.id) return rotation;  // the key in use: nothing to write
  KVT_ASSIGN_OR_RETURN(const std::vector<std::byte> sealed, SealKeyring(keyring_, fresh));
  if (Status s = WriteKeyringFile(spill_.keyring_file, sealed); !s.ok()) {
    return Status(s.code(), "the keyring was not re-sealed, the master key in use (id " +
                                KeyIdHex(sealer_.id, 8) +
                                ") stays: spill.keyring_file: " + s.message());
  }
  sealer_ = std::move(fresh);  // the old keyring key's bytes are overwritten
  rotation.rotated = true;
  return rotation;
}

}  // namespace kvtier
