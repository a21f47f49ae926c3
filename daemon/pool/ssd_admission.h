// SsdAdmission: the admission side of a tenant's tier policy, which DramPool asks before it
// spends an SSD write. A DramPool without one writes every block it can to SSD (kvtier's first
// policy, "lru"). Implementations live with the tier coordinator (daemon/tier/tier_policy.h);
// the pool only reports what it sees and asks.
// Not thread-safe: called by one DramPool on the daemon's event-loop thread.
#pragma once

#include <cstdint>

namespace kvtier {

class SsdAdmission {
 public:
  virtual ~SsdAdmission() = default;
  // Demand for a key: a request stored it (it was computed) or found it (a lookup hit).
  // `key_hash` is the pool's hash of the key; `resident_blocks` how many blocks the tiers hold
  // now (what "recently" is measured against).
  virtual void Seen(uint64_t key_hash, uint64_t resident_blocks) = 0;
  // A dirty block (in DRAM only, not reused since it was stored) is due for demotion: true
  // writes it to SSD, false keeps it in DRAM only, where eviction drops it.
  virtual bool Admit(uint64_t key_hash) = 0;
  // The SSD tier reclaimed a live record to make room (or refused a write for its quota): it
  // is full, and every write now costs an older record.
  virtual void SsdFull() = 0;
  // The SSD tier was emptied (an operator's evict or a purge): it has room again.
  virtual void SsdEmptied() = 0;
};

}  // namespace kvtier
