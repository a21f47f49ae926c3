// The tier policies a tenant can run (its `policy` setting; docs/cache-policy.md says what each
// gains and why). The policy decides; DramPool carries the decisions out.
//
//   lru    Every block is stored in DRAM and every block written to SSD before DRAM evicts it;
//          eviction by recency. kvtier's first policy, kept for comparison.
//   reuse  Like lru in DRAM, but an SSD write is spent only on a block with evidence of reuse:
//          it was found again while in DRAM, or its key was stored or found in an earlier
//          request too (a frequency sketch remembers keys after their blocks are gone: the
//          "ghost" of a dropped block earns its next copy a place on SSD). Until the SSD tier
//          first fills, every block is written (free space costs nothing). On request traces
//          most blocks are never reused; lru writes them all, each write costing an older
//          record that might have been.
#pragma once

#include <memory>

#include "daemon/config/config.h"
#include "daemon/pool/ssd_admission.h"
#include "daemon/tier/frequency_sketch.h"

namespace kvtier {

// "reuse": SSD admission on evidence of reuse.
class ReuseAdmission final : public SsdAdmission {
 public:
  ReuseAdmission() = default;
  void Seen(uint64_t key_hash, uint64_t resident_blocks) override {
    sketch_.Add(key_hash, resident_blocks);
  }
  bool Admit(uint64_t key_hash) override { return !ssd_full_ || sketch_.Estimate(key_hash) >= 2; }
  void SsdFull() override { ssd_full_ = true; }
  void SsdEmptied() override { ssd_full_ = false; }

 private:
  FrequencySketch sketch_;
  bool ssd_full_ = false;
};

// The admission object for `policy`, or null for lru (DramPool's default: admit every block).
std::unique_ptr<SsdAdmission> MakeSsdAdmission(TierPolicy policy);

}  // namespace kvtier
