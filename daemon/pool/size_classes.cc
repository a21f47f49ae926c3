#include "daemon/pool/size_classes.h"

#include <algorithm>

#include "ipc/base/check.h"
#include "ipc/base/units.h"

namespace kvtier {

SizeClasses::SizeClasses(uint64_t slab_bytes) : slab_bytes_(slab_bytes) {
  KVT_CHECK(IsPowerOfTwo(slab_bytes) && slab_bytes >= 16 * kKiB);
  for (uint64_t s : {4 * kKiB, 8 * kKiB, 12 * kKiB}) slot_bytes_.push_back(s);
  for (uint64_t p = 16 * kKiB; p <= slab_bytes; p *= 2) {
    for (uint64_t quarters : {uint64_t{4}, uint64_t{5}, uint64_t{6}, uint64_t{7}}) {
      const uint64_t s = p / 4 * quarters;
      if (s <= slab_bytes) slot_bytes_.push_back(s);
    }
  }
  KVT_CHECK(slot_bytes_.size() < kLarge);
}

uint8_t SizeClasses::ClassFor(uint64_t bytes) const {
  if (bytes > slab_bytes_) return kLarge;
  auto it = std::lower_bound(slot_bytes_.begin(), slot_bytes_.end(), bytes);
  return static_cast<uint8_t>(it - slot_bytes_.begin());
}

}  // namespace kvtier
