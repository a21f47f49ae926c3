// Byte units. Sizes are bytes in uint64_t unless a name says otherwise.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace kvtier {

inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * kKiB;
inline constexpr uint64_t kGiB = 1024 * kMiB;
inline constexpr uint64_t kTiB = 1024 * kGiB;

constexpr bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
constexpr uint64_t AlignUp(uint64_t v, uint64_t align) { return (v + align - 1) / align * align; }

// Exact, in the largest unit that divides it, so it reads back through the config's sizes:
// "4MiB", "2GiB", "1000B".
inline std::string FormatSize(uint64_t bytes) {
  static constexpr std::pair<uint64_t, std::string_view> kUnits[] = {
      {kTiB, "TiB"}, {kGiB, "GiB"}, {kMiB, "MiB"}, {kKiB, "KiB"}};
  for (const auto& [scale, suffix] : kUnits) {
    if (bytes != 0 && bytes % scale == 0) return std::to_string(bytes / scale) + std::string(suffix);
  }
  return std::to_string(bytes) + "B";
}

}  // namespace kvtier
