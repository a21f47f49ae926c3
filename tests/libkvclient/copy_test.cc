#include "kvclient/copy.h"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

namespace kvtier {
namespace {

using CopyFn = void (*)(void*, const void*, size_t);

struct Named {
  const char* name;
  CopyFn fn;
};

constexpr size_t kAlign = 64;    // misalignments 0..63 of source and destination
constexpr size_t kGuard = 64;    // bytes checked on each side of the destination
constexpr uint8_t kFill = 0xff;  // the destination's fill; source bytes are never 0xff

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// A 64-byte-aligned buffer, so "misalignment k" means exactly k bytes past a line boundary.
class Buffer {
 public:
  explicit Buffer(size_t bytes)
      : size_((bytes + kAlign - 1) / kAlign * kAlign),
        data_(static_cast<uint8_t*>(std::aligned_alloc(kAlign, size_))) {
    REQUIRE(data_ != nullptr);
  }
  uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  size_t size_;
  std::unique_ptr<uint8_t, FreeDeleter> data_;
};

struct Misalignment {
  size_t src;
  size_t dst;
};

// Copies each size at each (source, destination) misalignment and checks the copy and the
// guard bytes around it. Returns a description of the first failure, or "" if all were exact.
std::string CheckCopies(CopyFn copy,
                        const std::vector<size_t>& sizes,
                        const std::vector<Misalignment>& misalignments) {
  size_t max = 0;
  for (size_t s : sizes)
    max = std::max(max, s);
  Buffer src(max + kAlign);
  Buffer dst(max + kAlign + 2 * kGuard);
  std::mt19937_64 rng(max);
  for (size_t i = 0; i < src.size(); ++i)
    src.data()[i] = static_cast<uint8_t>(rng() % kFill);
  const std::vector<uint8_t> src_before(src.data(), src.data() + src.size());
  const std::vector<uint8_t> fill(max + 2 * kGuard + kAlign, kFill);
  std::memset(dst.data(), kFill, dst.size());

  for (size_t bytes : sizes) {
    for (const Misalignment& m : misalignments) {
      uint8_t* out = dst.data() + kGuard + m.dst;
      const uint8_t* in = src.data() + m.src;
      copy(out, in, bytes);
      const bool exact = std::memcmp(out, in, bytes) == 0;
      const bool before = std::memcmp(dst.data(), fill.data(), kGuard + m.dst) == 0;
      const bool after = std::memcmp(out + bytes, fill.data(), kGuard) == 0;
      if (!exact || !before || !after) {
        std::ostringstream what;
        what << bytes << " bytes, source +" << m.src << ", destination +" << m.dst << ": "
             << (!exact    ? "wrong bytes"
                 : !before ? "wrote before"
                           : "wrote after");
        return what.str();
      }
      std::memset(out, kFill, bytes);
    }
  }
  if (std::memcmp(src.data(), src_before.data(), src.size()) != 0) return "source modified";
  return "";
}

// Every (source, destination) pair of misalignments 0..63.
std::vector<Misalignment> AllPairs() {
  std::vector<Misalignment> out;
  for (size_t s = 0; s < kAlign; ++s) {
    for (size_t d = 0; d < kAlign; ++d)
      out.push_back({s, d});
  }
  return out;
}

// Each source and each destination misalignment once, in varied pairings (37 is odd, so
// d -> 37d mod 64 is a permutation), plus all destinations from an aligned source.
std::vector<Misalignment> EachOnce() {
  std::vector<Misalignment> out;
  for (size_t d = 0; d < kAlign; ++d)
    out.push_back({d * 37 % kAlign, d});
  for (size_t d = 0; d < kAlign; ++d)
    out.push_back({0, d});
  return out;
}

std::vector<size_t> Range(size_t first, size_t last) {
  std::vector<size_t> out;
  for (size_t i = first; i <= last; ++i)
    out.push_back(i);
  return out;
}

const Named kCopies[] = {{"CopyToPool", CopyToPool},
                         {"CopyFromPool", CopyFromPool},
                         {"CopyNonTemporal", CopyNonTemporal}};

TEST_CASE("Copy helpers copy 0..300 bytes exactly at every misalignment", "[libkvclient][copy]") {
  const Named c = GENERATE(values<Named>({kCopies[0], kCopies[1], kCopies[2]}));
  INFO(c.name);
  CHECK(CheckCopies(c.fn, Range(0, 300), AllPairs()) == "");
}

TEST_CASE("Copy helpers copy exactly around the streaming threshold and block sizes",
          "[libkvclient][copy]") {
  const Named c = GENERATE(values<Named>({kCopies[0], kCopies[1], kCopies[2]}));
  INFO(c.name);
  SECTION("16 KiB: every source and destination misalignment") {
    // 16 KiB is where CopyToPool switches to streaming stores.
    const std::vector<size_t> sizes = {16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 16 * 1024 + 127};
    CHECK(CheckCopies(c.fn, sizes, AllPairs()) == "");
  }
  SECTION("64 KiB and 2 MiB: every source and every destination misalignment") {
    // The streaming loop depends on the destination's alignment (its head) and the length
    // (its tail), not on the source's.
    CHECK(CheckCopies(c.fn, {64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1}, AllPairs()) == "");
    CHECK(CheckCopies(c.fn, {2 * 1024 * 1024 - 1, 2 * 1024 * 1024, 2 * 1024 * 1024 + 1},
                      EachOnce()) == "");
  }
}

}  // namespace
}  // namespace kvtier
