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
#include <string>
#include <vector>

#include "ipc/shm/shm_region.h"
#include "kvclient/status.h"

namespace kvtier {

struct TenantConfig {
  std::string name;            // [a-zA-Z0-9_.-]{1,31}
  std::vector<uid_t> uids;     // peers with any of these uids map to this tenant
  std::vector<gid_t> gids;     // ... or with any of these primary gids
  uint64_t dram_bytes = 0;     // the tenant's pool: a multiple of pool.slab_bytes
  uint64_t max_blocks = 0;     // index capacity; 0 in the file means dram_bytes / 16 KiB
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
  // [pool]
  uint64_t slab_bytes = uint64_t{4} << 20;        // power of two, 2 MiB .. 1 GiB
  uint64_t max_block_bytes = uint64_t{64} << 20;  // <= the smallest tenant pool
  HugePages huge_pages = HugePages::kTry;        // "off" | "try" | "require"
  LockMemory lock_memory = LockMemory::kTry;     // "off" | "try" | "require"
  std::string default_tenant;          // [daemon]: tenant for peers no [[tenant]] matches; ""
                                       // refuses them
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
