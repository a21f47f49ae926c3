// Replays a request trace through the daemon's own tier code, without moving a byte: a
// DramPool (DRAM tier: index, eviction, demotion and promotion decisions; it never touches
// block bytes) with a simulated SSD tier that counts blocks. What an engine does per request:
// look its blocks up in order (the usable prefix is the leading run found), take the usable
// prefix (SSD blocks are promoted), compute and store the rest. Spill orders are answered at
// once, as if I/O took no time: what is measured is the policy, not the disks.
//
// The simulated SSD tier keeps `ssd_blocks` records and, when full, drops the oldest written
// (the spill store reclaims its oldest segment, at block granularity here), telling the pool
// through SsdCopyLost as the real one does. One trace block is one slot of one size class.
// Not thread-safe; one replay per call.
#pragma once

#include <cstdint>
#include <vector>

#include "daemon/config/config.h"
#include "daemon/tier/trace.h"
#include "kvclient/status.h"

namespace kvtier::tier {

struct ReplayOptions {
  uint64_t dram_blocks = 0;
  uint64_t ssd_blocks = 0;        // 0: no SSD tier
  double demote_above = 0.75;     // of the DRAM pool dirty before demotion starts (as kvtierd)
  TierPolicy policy = TierPolicy::kReuse;  // as a tenant's `policy` (kvtierd's default)
};

struct ReplayResult {
  uint64_t requests = 0;
  uint64_t block_requests = 0;
  uint64_t unique_blocks = 0;
  uint64_t block_hits = 0;          // found in any tier
  uint64_t usable_prefix_hits = 0;  // in each request's leading run of hits
  uint64_t dram_hits = 0;           // of block_hits: in DRAM at lookup
  uint64_t ssd_hits = 0;            // of block_hits: on SSD only at lookup
  uint64_t ssd_write_blocks = 0;    // demotions written
  uint64_t ssd_read_blocks = 0;     // promotions read
  uint64_t stores_refused = 0;      // blocks the pool had no room for (all pinned)

  double block_hit_ratio() const;
  double usable_prefix_hit_ratio() const;
};

// Errors: kInvalidArgument for a DRAM tier of no blocks.
[[nodiscard]] Status ReplayThroughPool(const std::vector<TraceRequest>& trace,
                                       const ReplayOptions& options, ReplayResult* out);

}  // namespace kvtier::tier
