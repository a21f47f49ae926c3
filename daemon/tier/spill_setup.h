// OpenSpillTier: start-up of the SSD tier from the config: the spill directory, the keys (the
// master key and the keyring, spill_keys.h), each tenant's spill store (recovering what an
// earlier run left, into the tenant's index as SSD-only blocks), and the worker threads that
// run the stores.
// Thread-safety: call once at start-up, before the server runs.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/config/config.h"
#include "daemon/spill/spill_worker.h"
#include "daemon/tier/spill_keys.h"
#include "daemon/tenant/tenant_registry.h"
#include "kvclient/status.h"

namespace kvtier {

// Every segment file and every session holds a file descriptor: kFailedPrecondition when the
// tenants' segments, max_sessions and a margin exceed RLIMIT_NOFILE. Also checked at reload.
Status CheckFileBudget(const Config& config);

// Takes the device chosen for a tenant's store and returns the device the store uses instead
// (which owns the first). The fault-injection tests' daemon (tests/support/kvtierd_faults_main.cc)
// wraps each device in a test double this way; kvtierd itself never sets one.
using WrapSpillDevice = std::function<std::unique_ptr<BlockDevice>(
    std::unique_ptr<BlockDevice> device, std::string_view tenant)>;

// No workers when config.spill.dir is empty (no SSD tier). Otherwise every tenant with
// ssd_bytes > 0 gets a store under spill.dir/<tenant>/ and Tenant::spill set; `log` receives one
// line per tenant (device, recovery counts) and each degradation (the io_uring fallback).
// Errors name the directory, key source or tenant: the key missing or with loose permissions,
// a spill directory writable by others, io_uring refused while spill.backend = "io_uring".
// `wrap`, when set, is applied to each tenant's device before its store opens (recovery
// included). The master key and the keyring of tenant keys (SpillKeys::Open, which may create,
// re-seal or replace the keyring) are handed to `keys` (may be null), for purges and
// rotate-key; left null without an SSD tier.
Result<std::vector<std::unique_ptr<SpillWorker>>> OpenSpillTier(
    const Config& config, TenantRegistry& tenants, std::vector<std::string>* log,
    const WrapSpillDevice& wrap = {}, std::unique_ptr<SpillKeys>* keys = nullptr);

}  // namespace kvtier
