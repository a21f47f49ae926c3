// Helpers for the crypto tests: hex test vectors to bytes, and byte comparisons that never
// print key material.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/secret_key.h"

namespace kvtier::testing {

// "0a1B" -> {0x0a, 0x1b}. Test vectors are trusted input: a bad digit is a bug in the test.
inline std::vector<std::byte> FromHex(std::string_view hex) {
  auto nibble = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    std::abort();
  };
  if (hex.size() % 2 != 0) std::abort();
  std::vector<std::byte> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<std::byte>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  }
  return out;
}

template <size_t N>
std::array<std::byte, N> ArrayFromHex(std::string_view hex) {
  const std::vector<std::byte> bytes = FromHex(hex);
  if (bytes.size() != N) std::abort();
  std::array<std::byte, N> out{};
  std::copy(bytes.begin(), bytes.end(), out.begin());
  return out;
}

inline std::string ToHex(std::span<const std::byte> bytes) {
  constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (std::byte b : bytes) {
    out += kDigits[static_cast<unsigned>(b) >> 4];
    out += kDigits[static_cast<unsigned>(b) & 0xf];
  }
  return out;
}

inline SecretKey KeyFromHex(std::string_view hex) {
  return SecretKey::FromBytes(ArrayFromHex<32>(hex));
}

inline bool SameBytes(std::span<const std::byte> a, std::span<const std::byte> b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

inline bool SameKey(const SecretKey& a, const SecretKey& b) {
  return SameBytes(a.bytes(), b.bytes());
}

inline bool AllZero(std::span<const std::byte> bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0}; });
}

}  // namespace kvtier::testing
