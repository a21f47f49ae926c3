// Deterministic block contents for integration tests: every byte is a function of (key, size,
// position), so a reader can verify a block without the writer, and a block returned for the
// wrong key or with stale bytes never verifies.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/client.h"

namespace kvtier::testing {

inline Key TestKey(uint64_t owner, uint64_t index) {
  const std::string text = "k" + std::to_string(owner) + "/" + std::to_string(index);
  return Key::From(text);
}

inline uint64_t KeySeed(const Key& key, uint64_t size) {
  uint64_t h = 1469598103934665603ull ^ size;
  for (size_t i = 0; i < key.len; ++i) h = (h ^ key.bytes[i]) * 1099511628211ull;
  return h;
}

inline void FillBlock(const Key& key, std::span<std::byte> out) {
  uint64_t x = KeySeed(key, out.size());
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out.data() + i, &x, 8);
  }
  for (; i < out.size(); ++i) out[i] = static_cast<std::byte>(x >> (8 * (i % 8)));
}

// TestKey(owner, first) .. TestKey(owner, first + n - 1).
inline std::vector<Key> TestKeys(uint64_t owner, size_t n, size_t first = 0) {
  std::vector<Key> keys;
  for (size_t i = first; i < first + n; ++i) keys.push_back(TestKey(owner, i));
  return keys;
}

// Reserves `keys` at `size` bytes each, FillBlocks them and commits; fails the test otherwise.
inline void StoreBlocks(Client& client, const std::vector<Key>& keys, uint64_t size) {
  auto batch = client.Reserve(keys, std::vector<uint64_t>(keys.size(), size));
  INFO((batch.ok() ? std::string() : batch.status().ToString()));
  REQUIRE(batch.ok());
  for (size_t i = 0; i < keys.size(); ++i) {
    REQUIRE(batch->code(i) == StatusCode::kOk);
    FillBlock(keys[i], batch->data(i));
  }
  REQUIRE(batch->Commit().ok());
}

// True if `bytes` is exactly what FillBlock writes for `key` (and not empty).
inline bool VerifyBlock(const Key& key, std::span<const std::byte> bytes) {
  // No bytes is no block (a void lease's data() is empty): never counted as verified.
  if (bytes.empty()) return false;
  std::vector<std::byte> expected(bytes.size());
  FillBlock(key, expected);
  return std::memcmp(expected.data(), bytes.data(), bytes.size()) == 0;
}

// What ReadAll found: blocks present and byte-exact, absent, and present with other bytes.
struct ReadCounts {
  size_t verified = 0;
  size_t missing = 0;
  size_t wrong = 0;
};

// Acquires every key, `batch` at a time, and checks each present block byte for byte.
inline ReadCounts ReadAll(Client& client, const std::vector<Key>& keys, size_t batch = 8) {
  ReadCounts out;
  for (size_t at = 0; at < keys.size(); at += batch) {
    const size_t n = std::min(batch, keys.size() - at);
    const std::vector<Key> k(keys.begin() + static_cast<std::ptrdiff_t>(at),
                             keys.begin() + static_cast<std::ptrdiff_t>(at + n));
    auto leases = client.Acquire(k);
    REQUIRE(leases.ok());
    for (size_t i = 0; i < n; ++i) {
      if (leases->code(i) != StatusCode::kOk) {
        ++out.missing;
      } else if (VerifyBlock(k[i], leases->data(i))) {
        ++out.verified;
      } else {
        ++out.wrong;
      }
    }
  }
  return out;
}

// One store-then-read round of a well-behaved client in a child process: reserve, fill, commit,
// acquire, and verify whatever is present (other clients may have evicted some blocks).
// 0 if every present block verifies, else which step failed (11..14), as a child exit code.
inline int StoreAndVerifyRound(Client& client, const std::vector<Key>& keys,
                               const std::vector<uint64_t>& sizes) {
  auto batch = client.Reserve(keys, sizes);
  if (!batch.ok()) return 11;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (batch->code(i) == StatusCode::kOk) FillBlock(keys[i], batch->data(i));
  }
  if (!batch->Commit().ok()) return 12;
  auto leases = client.Acquire(keys);
  if (!leases.ok()) return 13;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (leases->code(i) == StatusCode::kOk && !VerifyBlock(keys[i], leases->data(i))) return 14;
  }
  return 0;
}

}  // namespace kvtier::testing
