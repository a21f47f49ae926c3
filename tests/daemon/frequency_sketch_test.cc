#include "daemon/tier/frequency_sketch.h"

#include <cstdint>
#include <random>

#include <catch2/catch.hpp>

namespace kvtier {
namespace {

uint64_t Hash(uint64_t n) {
  uint64_t z = n * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  return z ^ (z >> 31);
}

TEST_CASE("A frequency sketch never estimates below a key's count, up to 15") {
  // Rows of 16 counters (one block held) and 12 keys: counters are shared, and conservative
  // update must still never undercount. 1 + 2 + ... + 12 = 78 additions: no aging (at 160).
  FrequencySketch sketch(1);
  for (uint64_t n = 0; n < 12; ++n) {
    for (uint64_t i = 0; i <= n; ++i) sketch.Add(Hash(n), /*resident=*/1);
  }
  for (uint64_t n = 0; n < 12; ++n) {
    INFO("key " << n);
    CHECK(sketch.Estimate(Hash(n)) >= n + 1);
  }
  // Saturation at 15.
  for (int i = 0; i < 40; ++i) sketch.Add(Hash(100), 1);
  CHECK(sketch.Estimate(Hash(100)) <= 15);
}

TEST_CASE("A frequency sketch rarely says 'seen twice' of a key seen once as it widens") {
  // 10 x R keys, each seen once, in a sketch for R resident blocks: the absolute test the
  // reuse policy makes ("at least twice") must fail for nearly all of them. The rows widen
  // as R grows from 64 to 4096 on the way.
  FrequencySketch sketch(64);
  constexpr uint64_t kResident = 4096;
  constexpr uint64_t kKeys = 10 * kResident - 2;  // no aging yet, one addition to spare
  for (uint64_t n = 0; n < kKeys; ++n) sketch.Add(Hash(n), std::min<uint64_t>(64 + n, kResident));
  uint64_t twice = 0;
  for (uint64_t n = 0; n < kKeys; ++n) twice += sketch.Estimate(Hash(n)) >= 2;
  INFO(twice << " of " << kKeys << " keys seen once read as seen twice");
  CHECK(twice * 20 < kKeys);  // under 5%
  CHECK(sketch.MemoryBytes() <= 32 * kResident * 2);
  // A key seen twice says so.
  sketch.Add(Hash(7), kResident);
  CHECK(sketch.Estimate(Hash(7)) >= 2);
}

TEST_CASE("A frequency sketch forgets: every 10 x resident additions halve the counts") {
  FrequencySketch sketch(16);
  for (int i = 0; i < 8; ++i) sketch.Add(Hash(1), 100);
  REQUIRE(sketch.Estimate(Hash(1)) >= 8);
  // 1000 additions of other keys (10 x 100 resident) age the sketch once or more.
  for (uint64_t n = 0; n < 1000; ++n) sketch.Add(Hash(1'000 + n), 100);
  CHECK(sketch.Estimate(Hash(1)) <= 4);
  CHECK(sketch.Estimate(Hash(1)) >= 1);
}

}  // namespace
}  // namespace kvtier
