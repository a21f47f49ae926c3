#include "daemon/tier/frequency_sketch.h"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <utility>

namespace kvtier {
namespace {

constexpr uint32_t kRows = 4;
constexpr uint64_t kSeeds[kRows] = {0x9e3779b97f4a7c15ull, 0xc2b2ae3d27d4eb4full,
                                    0x165667b19e3779f9ull, 0xd6e8feb86659fd93ull};

}  // namespace

FrequencySketch::FrequencySketch(uint64_t min_blocks) {
  const uint64_t width = std::bit_ceil(std::max<uint64_t>(16 * min_blocks, 16));
  row_words_ = width / 16;
  mask_ = width - 1;
  table_.assign(row_words_ * kRows, 0);
}

void FrequencySketch::Widen() {
  // A key's counter in a row of 2w is at (hash & (2w - 1)); in the row of w it was at that
  // index mod w. Each row's copy side by side with itself keeps every estimate as it was.
  std::vector<uint64_t> wider(table_.size() * 2);
  for (uint32_t row = 0; row < kRows; ++row) {
    const auto from = table_.begin() + static_cast<std::ptrdiff_t>(row * row_words_);
    const auto to = wider.begin() + static_cast<std::ptrdiff_t>(2 * row * row_words_);
    std::copy(from, from + static_cast<std::ptrdiff_t>(row_words_), to);
    std::copy(from, from + static_cast<std::ptrdiff_t>(row_words_),
              to + static_cast<std::ptrdiff_t>(row_words_));
  }
  table_ = std::move(wider);
  row_words_ *= 2;
  mask_ = mask_ * 2 + 1;
}

void FrequencySketch::Locate(uint64_t hash, uint32_t row, uint64_t* word, uint32_t* shift) const {
  // The pool's hash is already uniform; each row remixes it differently.
  uint64_t h = (hash ^ kSeeds[row]) * 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  const uint64_t i = h & mask_;
  *word = row * row_words_ + i / 16;
  *shift = static_cast<uint32_t>(i % 16) * 4;
}

uint32_t FrequencySketch::Estimate(uint64_t hash) const {
  uint32_t least = kMaxCount;
  for (uint32_t row = 0; row < kRows; ++row) {
    uint64_t word = 0;
    uint32_t shift = 0;
    Locate(hash, row, &word, &shift);
    least = std::min(least, static_cast<uint32_t>((table_[word] >> shift) & 0xf));
  }
  return least;
}

void FrequencySketch::Add(uint64_t hash, uint64_t resident) {
  // Outgrown: wider rows now, not at the next aging, or the test passes too often.
  while (16 * resident > mask_ + 1) Widen();
  // Conservative update: of the key's four counters only the smallest grow.
  uint64_t words[kRows];
  uint32_t shifts[kRows];
  uint32_t least = kMaxCount;
  for (uint32_t row = 0; row < kRows; ++row) {
    Locate(hash, row, &words[row], &shifts[row]);
    least = std::min(least, static_cast<uint32_t>((table_[words[row]] >> shifts[row]) & 0xf));
  }
  if (least < kMaxCount) {
    for (uint32_t row = 0; row < kRows; ++row) {
      if (((table_[words[row]] >> shifts[row]) & 0xf) == least) {
        table_[words[row]] += uint64_t{1} << shifts[row];
      }
    }
  }
  if (++additions_ >= 10 * std::max<uint64_t>(resident, 16)) Age();
}

void FrequencySketch::Age() {
  // Halves every counter at once: shift the word, drop the bit each counter took from its
  // neighbour.
  for (uint64_t& word : table_) word = (word >> 1) & 0x7777777777777777ull;
  additions_ /= 2;
}

}  // namespace kvtier
