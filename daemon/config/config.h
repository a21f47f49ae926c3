// kvtierd configuration: one TOML file (toml++), parsed and validated once at start.
//
// Every problem is reported as kInvalidArgument with "FILE:LINE: key 'a.b': what is wrong",
// naming the key and its line: unknown keys, wrong types, impossible sizes. Relative paths
// resolve against the directory of the config file, so a checkout can run without root.
// configs/kvtierd.toml lists every key at its default. Plain values; thread-compatible.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ipc/shm/shm_region.h"
#include "kvclient/status.h"

namespace kvtier {

// A tenant's tier policy (daemon/tier/tier_policy.h, docs/cache-policy.md).
enum class TierPolicy {
  kLru,    // "lru": every block to SSD before DRAM evicts it; kvtier's first policy
  kReuse,  // "reuse": SSD writes only for blocks with evidence of reuse (the default)
};

// "lru", "reuse"; nullopt for any other name.
inline std::optional<TierPolicy> ParseTierPolicy(std::string_view name) {
  if (name == "reuse") return TierPolicy::kReuse;
  if (name == "lru") return TierPolicy::kLru;
  return std::nullopt;
}
inline const char* TierPolicyName(TierPolicy policy) {
  return policy == TierPolicy::kLru ? "lru" : "reuse";
}

struct TenantConfig {
  std::string name;            // [a-zA-Z0-9_.-]{1,31}
  std::vector<uid_t> uids;     // peers with any of these uids map to this tenant
  std::vector<gid_t> gids;     // ... or with any of these primary gids
  uint64_t dram_bytes = 0;     // the tenant's pool: a multiple of pool.slab_bytes
  uint64_t ssd_bytes = 0;      // the tenant's SSD quota: 0 (no SSD tier for this tenant), or
                               // at least 2 spill.segment_bytes and a multiple of it; needs
                               // spill.dir
  uint64_t max_blocks = 0;     // index capacity; 0 in the file means
                               // dram_bytes / 16 KiB + ssd_bytes / 64 KiB (at most 2^31)
  bool max_blocks_derived = false;  // max_blocks was 0 (or absent) in the file
  // Expiry, in seconds: blocks stored without a TTL get default_ttl_seconds (0: never expire);
  // any TTL above max_ttl_seconds (0: no cap) is lowered to it.
  uint32_t default_ttl_seconds = 0;
  uint32_t max_ttl_seconds = 0;
  // Sessions (connections) this tenant may hold at once. All tenants' add up to at most
  // daemon.max_sessions; 0 in the file means an equal part of what the others' leave.
  uint32_t max_sessions = 0;
  TierPolicy policy = TierPolicy::kReuse;
};

// How the SSD tier does its I/O.
enum class SpillBackend {
  kAuto,     // io_uring where the kernel allows it, else the pread/pwrite threads
  kIoUring,  // io_uring or fail at start
  kThreads,  // always the pread/pwrite threads (the fallback)
};

// [spill]: the encrypted SSD spill tier (docs/spill-format.md). Off while dir is empty.
struct SpillConfig {
  std::filesystem::path dir;  // absolute; empty: no SSD tier at all
  uint64_t segment_bytes = uint64_t{256} << 20;  // multiple of 2 MiB, 2 MiB .. 64 GiB
  // Largest block that is spilled (bigger ones stay DRAM-only): 4 KiB .. 64 MiB, and a record
  // of it must fit in a segment after the segment header. Sizes the staging buffers.
  uint64_t max_block_bytes = uint64_t{4} << 20;
  uint32_t staging_buffers = 8;        // I/Os in flight per tenant, 1 .. 256
  uint32_t queue_depth = 16;           // io_uring entries per tenant, > staging_buffers, <= 4096
  uint32_t threads = 1;                // spill worker threads (each runs I/O and AES-GCM for its
                                       // tenants), 1 .. 64
  uint32_t fallback_io_threads = 4;    // pread/pwrite threads per tenant without io_uring, 1 .. 64
  SpillBackend backend = SpillBackend::kAuto;  // "auto" | "io_uring" | "threads"
  // The master key's source: with dir set, exactly one of key_file and key_credential.
  std::filesystem::path key_file;      // absolute, or empty
  std::string key_credential;          // systemd credential name (LoadCredential=), or empty
  bool create_key = false;             // create key_file with a fresh key if missing (dev setups)
  // The tenant keys, sealed under the master key (crypto/keyring.h); never inside dir. With dir
  // set it is never empty: the default is key_file with the extension ".keyring", or
  // "/var/lib/kvtier/keyring" (the unit's StateDirectory) with key_credential.
  std::filesystem::path keyring_file;
  // The master key before a rotation done while kvtierd was stopped: a keyring still sealed
  // under it is re-sealed under the current key at start. At most one; needs dir.
  std::filesystem::path previous_key_file;  // absolute, or empty
  std::string previous_key_credential;      // systemd credential name, or empty
  // Fraction of a tenant's pool that may hold blocks not yet on SSD before background demotion
  // starts: 0.05 .. 0.95.
  double demote_above = 0.75;
};

// [admin]: the operators' socket (kvtierctl), the audit log and the metrics listener.
struct AdminConfig {
  std::filesystem::path socket;        // absolute; default run_dir / "kvtierd-admin.sock"
  // Who may use the socket: the daemon's own uid, root, and members of `group` (by the peer's
  // primary or supplementary groups). The file mode is a first gate: default 0600, or 0660 with
  // the socket's group set to `group` when a group is configured. A peer that passes the mode
  // but not the check is refused by kvtierd and audited.
  mode_t socket_mode = 0600;
  std::string group;                   // admin group name; "" for none
  gid_t group_id = 0;                  // resolved at load time (valid when group is set)
  std::filesystem::path audit_log;     // absolute; default "/var/log/kvtier/audit.log"
  // Loopback HTTP listener for Prometheus (GET /metrics): "" (off, the default) or
  // "127.0.0.1:PORT" / "[::1]:PORT". Only loopback addresses are accepted.
  std::string metrics_listen;
  std::string metrics_address;         // parsed from metrics_listen
  uint16_t metrics_port = 0;
};

struct Config {
  static constexpr int64_t kVersion = 1;

  std::filesystem::path source;        // the file this came from (absolute)
  // [daemon]
  std::filesystem::path run_dir;       // absolute; created 0700 if missing. default "/run/kvtier"
  std::filesystem::path socket_path;   // absolute; default run_dir / "kvtierd.sock"
  mode_t socket_mode = 0660;           // written as a string "0660"
  std::string log_level = "info";      // trace, debug, info, warn, error, critical, off
  uint32_t max_sessions = 1024;
  uint32_t max_leases_per_session = 65536;
  uint32_t poll_spin_us = 50;          // busy-poll this long after activity before sleeping
  // At a clean stop, hand the DRAM tier to the service manager's fd store for the next start
  // (daemon/tier/warm_restart.h); and take over what a previous process handed over.
  bool keep_dram_on_restart = true;
  // [pool]
  uint64_t slab_bytes = uint64_t{4} << 20;        // power of two, 2 MiB .. 1 GiB
  uint64_t max_block_bytes = uint64_t{64} << 20;  // <= the smallest tenant pool
  HugePages huge_pages = HugePages::kTry;        // "off" | "try" | "require"
  LockMemory lock_memory = LockMemory::kTry;     // "off" | "try" | "require"
  bool zero_freed = true;                         // zero a block's slot when it is freed
  std::string default_tenant;          // [daemon]: tenant for peers no [[tenant]] matches; ""
                                       // refuses them
  SpillConfig spill;                   // [spill]
  AdminConfig admin;                   // [admin]
  // [[tenant]] entries, at least one.
  std::vector<TenantConfig> tenants;
};

// Reads and validates `path`. Sizes may be integers (bytes) or strings with a unit:
// "512KiB", "64MiB", "1GiB" (KiB/MiB/GiB/TiB, or plain B).
Result<Config> LoadConfig(const std::filesystem::path& path);
// Same, from text (for tests); `source_name` is used in messages and to resolve relative paths.
Result<Config> ParseConfig(std::string_view text, const std::filesystem::path& source_name);

// "64MiB" -> 67108864. kInvalidArgument naming the text when it is not a size.
Result<uint64_t> ParseSize(std::string_view text);

}  // namespace kvtier
