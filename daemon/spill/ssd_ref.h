// SsdRef: where the spill store keeps a block's record, as an index entry holds it (8 bytes
// instead of a SpillLocation's 32). The one piece of spill vocabulary the DRAM pool's index
// needs; everything else about the spill store stays behind spill_worker.h.
#pragma once

#include <cstdint>

#include "daemon/spill/spill_format.h"

namespace kvtier {

struct SsdRef {
  uint32_t segment = 0;  // 0: none (segment ids start at 1)
  uint32_t page = 0;     // record offset / 4 KiB

  uint64_t offset() const { return uint64_t{page} * spill::kAlignBytes; }
  friend bool operator==(const SsdRef&, const SsdRef&) = default;
};

}  // namespace kvtier
