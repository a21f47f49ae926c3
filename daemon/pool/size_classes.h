// SizeClasses: the slot sizes a slab may be carved into, from 4 KiB up to the slab size.
//
// Four classes per power of two from 16 KiB (p, 1.25p, 1.5p, 1.75p), so a block wastes at most
// 25% of its slot, and every power of two (the usual KV block sizes: 64 KiB, 2 MiB) fits exactly.
// Every slot size is a multiple of 4 KiB, so every slot is page-aligned. Blocks larger than a
// slab are "large": they take a run of whole slabs. Immutable after construction; thread-safe.
#pragma once

#include <cstdint>
#include <vector>

namespace kvtier {

class SizeClasses {
 public:
  static constexpr uint8_t kLarge = 255;
  static constexpr uint64_t kGranuleBytes = 4096;

  explicit SizeClasses(uint64_t slab_bytes);

  // The smallest class whose slots hold `bytes`, or kLarge if bytes > slab_bytes.
  uint8_t ClassFor(uint64_t bytes) const;
  uint64_t SlotBytes(uint8_t cls) const { return slot_bytes_[cls]; }
  uint32_t SlotsPerSlab(uint8_t cls) const {
    return static_cast<uint32_t>(slab_bytes_ / slot_bytes_[cls]);
  }
  uint8_t count() const { return static_cast<uint8_t>(slot_bytes_.size()); }
  uint64_t slab_bytes() const { return slab_bytes_; }

 private:
  uint64_t slab_bytes_;
  std::vector<uint64_t> slot_bytes_;
};

}  // namespace kvtier
