// The glue between a tenant's DRAM pool and the spill workers: a pool's spill order (what to
// demote, promote or release, decided by DramPool) becomes the SpillWorker job that carries it
// out. It lives above both (client -> server -> tier -> pool / spill): the pool knows nothing
// of spill jobs, the spill store nothing of pools.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "daemon/pool/dram_pool.h"
#include "daemon/spill/spill_worker.h"

namespace kvtier {

// The SpillWorker job that carries out `order` for the tenant whose pool memory starts at
// `pool` (of `pool_bytes`), in its store `store`; `name_space` is the name of the order key's
// namespace (unused for kRelease).
SpillJob ToSpillJob(const SpillOrder& order, uint32_t store, std::byte* pool, uint64_t pool_bytes,
                    std::string_view name_space);

}  // namespace kvtier
