// BlockKey: what names a block inside one tenant: (namespace id, up to 32 key bytes).
// Bytes past `len` are zero, so comparing all 32 bytes plus len is exact equality.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>

namespace kvtier {

struct BlockKey {
  uint32_t ns_id = 0;
  uint8_t len = 0;
  std::array<uint8_t, 32> bytes{};

  friend bool operator==(const BlockKey&, const BlockKey&) = default;
};

// Keyed 64-bit hash of a BlockKey (wyhash-style multiply-mix). The seed is random per daemon
// start, so a tenant cannot precompute keys that collide into one bucket.
inline uint64_t HashBlockKey(const BlockKey& key, uint64_t seed) {
  auto mix = [](uint64_t a, uint64_t b) {
    __extension__ using U128 = unsigned __int128;
    const U128 r = static_cast<U128>(a) * b;
    return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
  };
  uint64_t w[4];
  std::memcpy(w, key.bytes.data(), sizeof(w));
  const uint64_t meta = (uint64_t{key.ns_id} << 8) | key.len;
  uint64_t h = mix(w[0] ^ seed ^ 0xa0761d6478bd642full, w[1] ^ 0xe7037ed1a0b428dbull);
  h ^= mix(w[2] ^ seed ^ 0x8ebc6af09c88c6e3ull, w[3] ^ meta ^ 0x589965cc75374cc3ull);
  return mix(h ^ 0x1d8e4e27c47d124full, seed ^ meta);
}

}  // namespace kvtier
