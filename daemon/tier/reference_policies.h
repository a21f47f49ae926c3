// Reference cache policies over a trace, for judging kvtier's own: Belady's MIN (the upper
// bound a policy that cannot see the future can approach) and plain LRU (the baseline it must
// beat). Both replay the trace's block accesses in order, in block units, no bytes, no tiers:
// a request looks up its hash_ids in order (a hit is a block in the cache; its usable prefix is
// the leading run of hits, what an engine can reuse), then every block it touched is in the
// cache (computed or reused), space permitting.
//
// MIN evicts the block whose next access is farthest away and, like the optimum, may decline
// to cache a block whose own next access is farther than every cached block's (bypass). It
// maximizes block hits; for the usable-prefix ratio it is the customary bound, not a proven
// optimum (a prefix-aware oracle could do slightly better on some traces).
// Pure functions: safe from any thread.
#pragma once

#include <cstdint>
#include <vector>

#include "daemon/tier/trace.h"

namespace kvtier::tier {

struct ReplayCounts {
  uint64_t requests = 0;
  uint64_t block_requests = 0;      // every hash id of every request
  uint64_t unique_blocks = 0;
  uint64_t block_hits = 0;
  uint64_t usable_prefix_hits = 0;  // hits in each request's leading run of hits

  double block_hit_ratio() const {
    return block_requests ? static_cast<double>(block_hits) / static_cast<double>(block_requests)
                          : 0;
  }
  double usable_prefix_hit_ratio() const {
    return block_requests
               ? static_cast<double>(usable_prefix_hits) / static_cast<double>(block_requests)
               : 0;
  }
};

// Belady's MIN with bypass at `capacity_blocks`.
ReplayCounts ReplayMin(const std::vector<TraceRequest>& trace, uint64_t capacity_blocks);

// Least recently used (every access, hit or miss, makes a block the most recent).
ReplayCounts ReplayLru(const std::vector<TraceRequest>& trace, uint64_t capacity_blocks);

// Distinct hash ids in the trace.
uint64_t UniqueBlocks(const std::vector<TraceRequest>& trace);

}  // namespace kvtier::tier
