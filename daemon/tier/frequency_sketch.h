// FrequencySketch: how often each key was seen recently, approximately, in bounded memory: a
// count-min sketch of 4-bit counters (TinyLFU, Einziger et al., "TinyLFU: A Highly Efficient
// Cache Admission Policy", 2017). A key's estimate is the smallest of its four counters (one
// per row), never below its true count since the last aging; conservative update (only the
// smallest counters grow) keeps collisions from inflating it.
//
// Once additions reach 10 x the blocks the cache holds (Caffeine's default sample), every
// counter is halved ("aging"), so the sketch forgets at the cache's own pace. A tier's
// capacity in blocks depends on the blocks' sizes, which only use tells, so what the cache
// holds comes with each addition.
//
// Width: the policy asks "seen at least twice?", an absolute test, so a key seen once must
// rarely find all four counters raised by others. Up to 10 x R keys (R blocks held) land in a
// sample; rows of 16 x R counters keep each counter's load under 0.64 and such false
// positives under 5%. Rows of R, TinyLFU's relative test's width, let nearly every key pass
// on the mooncake trace (measured: 79k SSD writes against 34k). So the rows follow R's high
// water mark: they double as R grows, each row copied beside itself, which keeps every
// estimate (a key's counter in a row of 2w sits at its index mod w in the row of w). 32 to 64
// bytes per block held (rows are powers of two); they never shrink.
// Not thread-safe.
#pragma once

#include <cstdint>
#include <vector>

namespace kvtier {

class FrequencySketch {
 public:
  static constexpr uint32_t kMaxCount = 15;

  // The rows' width follows the blocks held (above), from 16 x `min_blocks`.
  explicit FrequencySketch(uint64_t min_blocks = 64);

  // One more sighting of `hash`; `resident` is how many blocks the cache holds now.
  void Add(uint64_t hash, uint64_t resident);
  uint32_t Estimate(uint64_t hash) const;
  uint64_t MemoryBytes() const { return table_.size() * sizeof(uint64_t); }

 private:
  // Counter `i` of row `row` for `hash`: its word and its shift within the word.
  void Locate(uint64_t hash, uint32_t row, uint64_t* word, uint32_t* shift) const;
  void Age();
  void Widen();

  std::vector<uint64_t> table_;  // 16 counters of 4 bits a word; rows side by side
  uint64_t row_words_ = 0;
  uint64_t mask_ = 0;  // width - 1
  uint64_t additions_ = 0;
};

}  // namespace kvtier
