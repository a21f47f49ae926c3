// Keeping the DRAM tier across a restart or an upgrade (docs/design.md, decision 21).
//
// At a clean stop kvtierd hands the service manager's file descriptor store (systemd,
// FileDescriptorStoreMax=) each tenant's pool memfd, named "kvtier-pool-TENANT", and a snapshot
// of its index in a memfd named "kvtier-index": which block (namespace and key) sits at which
// offset, its size, the seconds it has left to live and its SSD record. systemd passes them to
// the next kvtierd (LISTEN_FDS), which verifies the snapshot (format version, SHA-256, bounds,
// the tenant's pool geometry against its config), takes the pools over and adopts the blocks
// after the SSD tier's recovery: a restart or an upgraded binary serves the same blocks at once.
// What does not verify is dropped, never served: a pool of a tenant no longer in the config or
// whose geometry changed is closed (the kernel frees and zeroes its pages), a block that does not
// fit is zeroed, and so is every byte of a kept pool that no adopted block holds.
//
// Only a clean stop hands anything over: after SIGKILL or a crash the index is gone, the next
// process starts with empty DRAM and serves what the SSD tier holds. A tenant being purged at
// the stop is not handed over.
//
// Snapshot format (native byte order: it never leaves the host), all bounds-checked on read:
//   SnapshotHeader (64 bytes): "KVTWARM1", version, tenant count, body bytes, wall-clock
//   seconds when written, SHA-256 of the body.
//   Body, per tenant: SnapshotTenant (name, pool geometry, counts), then each namespace as a
//   uint32 length and its bytes, then SnapshotBlock records (64 bytes each), coldest first.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "daemon/pool/dram_pool.h"
#include "daemon/sd_notify.h"
#include "daemon/tenant/tenant_registry.h"
#include "ipc/base/unique_fd.h"
#include "kvclient/status.h"

namespace kvtier {

inline constexpr char kKeptIndexFdName[] = "kvtier-index";
inline constexpr char kKeptPoolFdPrefix[] = "kvtier-pool-";

// One tenant's part of a verified snapshot.
struct KeptTenant {
  std::string name;
  uint64_t pool_bytes = 0;
  uint64_t slab_bytes = 0;
  uint64_t max_block_bytes = 0;
  std::vector<std::string> namespaces;
  std::vector<KeptBlock> blocks;  // key.ns_id: an index into `namespaces`; coldest first
  bool too_many_blocks = false;   // more than the tenant's max_blocks: `blocks` left empty
};

// What the previous process handed over, as far as it verified.
struct KeptState {
  std::vector<KeptTenant> tenants;
  // By tenant name: the pool memfds that go with `tenants` (TenantRegistry::Create takes them).
  std::unordered_map<std::string, UniqueFd> pools;
  uint64_t age_s = 0;  // seconds since the snapshot was written
};

// Start-up, first thing: takes what the service manager passed (SdListenFds) and keeps the
// tenants whose snapshot part verifies and fits `config` (same pool bytes, slab bytes and
// max_block_bytes, at most max_blocks blocks) and whose pool fd is there. Everything else is
// closed; `log` says what and why (one line each). Fds it does not know are closed too. The
// snapshot is burned (its header zeroed) and every fd of ours leaves systemd's store
// (FDSTOREREMOVE), so that a later start, after a crash of this one, can never take over a
// snapshot that no longer describes the pools, and a dropped pool's memory is freed.
KeptState TakeKeptState(std::vector<ListenFd> fds, const Config& config,
                        std::vector<std::string>* log);
// keep_dram_on_restart = false: the same burning and removal, keeping nothing.
void ReleaseKeptState(std::vector<ListenFd> fds, std::vector<std::string>* log);

// After TenantRegistry::Create (with kept.pools) and the SSD tier's recovery: each tenant that
// took its pool over (Tenant::kept_pool) adopts its blocks (DramPool::Adopt), then every byte of
// its pool no block holds is zeroed. A block whose TTL ran out while no process served it is
// left out. `log` gets a line per tenant.
void AdoptKeptBlocks(TenantRegistry& tenants, KeptState& kept, std::vector<std::string>* log);

// At a clean stop, after the spill workers have stopped (no I/O reads or writes a pool): sends
// every tenant's pool and the index snapshot to the service manager's fd store. A tenant being
// purged is left out. Returns a line for the log, or an error (no $NOTIFY_SOCKET, a full store:
// then the next start is cold, as after a crash).
Result<std::string> HandOverKeptState(const TenantRegistry& tenants, const Config& config);

// `kvtierctl upgrade`, after the same clean stop: replaces this process (execv, so the pid, and
// with it systemd's MainPID, stays) with `argv[0]`, passing it each tenant's pool and the index
// snapshot as fds 3 on with LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, exactly as systemd would
// pass its fd store: the new binary takes them over with TakeKeptState. With `keep` false it
// passes nothing (a cold start), and so it does when the snapshot or placing the fds fails:
// `*cold_reason` says why, and the new process gets it in $KVTIER_UPGRADE_COLD to log.
// Returns only when execv failed; by then fds 3 on are reassigned, so the caller must exit
// without using any fd it held.
Status ExecWithKeptState(const TenantRegistry& tenants, const Config& config, bool keep,
                         const std::vector<std::string>& argv, std::string* cold_reason);

// The snapshot itself, for tests and the two functions above: `Write` serializes the tenants'
// exportable blocks (DramPool::ExportKept) into a sealed memfd; `Read` parses and verifies one.
Result<UniqueFd> WriteKeptSnapshot(const TenantRegistry& tenants, const Config& config,
                                   std::vector<std::string>* tenant_names);
// Tenants not in `config` are listed without their blocks.
Result<std::vector<KeptTenant>> ReadKeptSnapshot(int fd, const Config& config, uint64_t* age_s);

}  // namespace kvtier
