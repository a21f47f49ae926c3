#include "daemon/spill/spill_store.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "crypto/master_key.h"
#include "tests/support/faulty_device.h"
#include "daemon/spill/io_probe.h"
#include "daemon/spill/spill_format.h"
#include "daemon/spill/thread_pool_device.h"
#include "daemon/spill/uring_device.h"
#include "ipc/base/units.h"
#include "tests/daemon/spill_test_devices.h"
#include "tests/support/test_support.h"

namespace kvtier {
namespace {

namespace fs = std::filesystem;

using testing::Kind;
using testing::KindName;

constexpr uint32_t kQueueDepth = 16;

std::unique_ptr<BlockDevice> MakeDevice(Kind kind) {
  return testing::OpenTestDevice(kind, kQueueDepth, /*max_files=*/64);
}

SecretKey TenantKey(const std::string& tenant) {
  std::array<std::byte, SecretKey::kBytes> master_bytes{};
  for (size_t i = 0; i < master_bytes.size(); ++i) master_bytes[i] = std::byte(0x40 + i);
  auto key = DeriveTenantKey(SecretKey::FromBytes(master_bytes), tenant);
  REQUIRE(key.ok());
  return std::move(*key);
}

SpillOptions Options(const fs::path& dir, const std::string& tenant = "alice") {
  SpillOptions options;
  options.dir = dir / tenant;
  options.tenant = tenant;
  options.segment_bytes = 4 * kMiB;
  options.quota_bytes = 64 * kMiB;
  options.max_record_payload_bytes = 256 * kKiB;
  options.staging_buffers = 8;
  return options;
}

std::unique_ptr<SpillStore> OpenStore(const SpillOptions& options, BlockDevice* device,
                                      std::vector<RecoveredRecord>* recovered = nullptr) {
  auto store = SpillStore::Open(options, device, TenantKey(options.tenant), recovered);
  INFO(store.status().ToString());
  REQUIRE(store.ok());
  return std::move(*store);
}

std::vector<std::byte> RandomBytes(std::mt19937_64& rng, size_t size) {
  std::vector<std::byte> out(size);
  for (auto& b : out) b = std::byte(static_cast<uint8_t>(rng()));
  return out;
}

struct Block {
  std::string name_space = "ns";
  std::vector<uint8_t> key;
  std::vector<std::byte> data;
  SpillLocation location;
  bool written = false;
};

std::vector<uint8_t> Key(uint64_t n) {
  std::vector<uint8_t> key(16);
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(n >> (8 * (i % 8)) ^ i);
  return key;
}

// Polls until no I/O is in flight, returning every completion.
std::vector<SpillCompletion> Drain(SpillStore& store) {
  std::vector<SpillCompletion> all;
  std::array<SpillCompletion, 8> out;
  for (int round = 0; round < 100000; ++round) {
    const size_t n = store.Poll(out, /*wait=*/true);
    for (size_t i = 0; i < n; ++i) all.push_back(std::move(out[i]));
    if (n == 0 && store.in_flight() == 0) break;
  }
  return all;
}

// Writes every block (cookie = index), retrying when the staging buffers are busy, and checks
// every completion is OK. Returns the first StartWrite error other than busy (or OK).
Status WriteBlocks(SpillStore& store, std::vector<Block>& blocks, size_t first = 0) {
  std::array<SpillCompletion, 8> out;
  Status error;
  size_t i = first;
  while (i < blocks.size()) {
    Block& block = blocks[i];
    auto location = store.StartWrite(block.name_space, block.key, block.data, i);
    if (location.status().message() == "staging buffers busy") {
      const size_t n = store.Poll(out, /*wait=*/true);
      for (size_t c = 0; c < n; ++c) {
        INFO(out[c].status.ToString());
        CHECK(out[c].is_write);
        CHECK(out[c].status.ok());
      }
      continue;
    }
    if (!location.ok()) {
      error = location.status();
      break;
    }
    block.location = *location;
    block.written = true;
    ++i;
  }
  REQUIRE(store.Flush().ok());
  for (const SpillCompletion& c : Drain(store)) {
    INFO(c.status.ToString());
    CHECK(c.status.ok());
  }
  return error;
}

// One read, waited for: the completion's status (or StartRead's error) and the bytes.
Status ReadBlock(SpillStore& store, const SpillLocation& location, const std::string& name_space,
                 std::span<const uint8_t> key, std::vector<std::byte>* bytes) {
  bytes->assign(location.payload_bytes, std::byte{0x5a});
  Status started = store.StartRead(location, name_space, key, *bytes, 777);
  if (!started.ok()) return started;
  std::vector<SpillCompletion> done = Drain(store);
  REQUIRE(done.size() == 1);
  CHECK(done[0].cookie == 777);
  CHECK_FALSE(done[0].is_write);
  return done[0].status;
}

// Index of the first byte that differs (the size, if only the sizes differ), or -1. Compared
// this way so a failure prints a number, not a 256 KiB vector.
int64_t FirstMismatch(std::span<const std::byte> a, std::span<const std::byte> b) {
  const auto [ia, ib] = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
  if (ia == a.end() && ib == b.end()) return -1;
  return static_cast<int64_t>(ia - a.begin());
}

bool AllZero(std::span<const std::byte> bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0}; });
}

void CheckReadsBack(SpillStore& store, const Block& block) {
  std::vector<std::byte> back;
  Status status = ReadBlock(store, block.location, block.name_space, block.key, &back);
  INFO(status.ToString());
  REQUIRE(status.ok());
  CHECK(FirstMismatch(back, block.data) == -1);
}

// Every byte is ReadBlock's filler: the store wrote nothing there.
bool Untouched(std::span<const std::byte> bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0x5a}; });
}

// A read that must fail as an integrity failure, with the destination left as it was.
void CheckDataLoss(SpillStore& store, const Block& block) {
  const uint64_t before = store.stats().integrity_failures;
  std::vector<std::byte> back;
  Status status = ReadBlock(store, block.location, block.name_space, block.key, &back);
  INFO(status.ToString());
  CHECK(status.code() == StatusCode::kDataLoss);
  CHECK(Untouched(back));
  CHECK(store.stats().integrity_failures == before + 1);
}

fs::path SegmentFile(const SpillOptions& options, uint32_t id) {
  char name[32];
  std::snprintf(name, sizeof(name), "seg-%08x.kvs", id);
  return options.dir / name;
}

std::vector<fs::path> SegmentFiles(const SpillOptions& options) {
  std::vector<fs::path> files;
  if (!fs::exists(options.dir)) return files;
  for (const auto& entry : fs::directory_iterator(options.dir)) {
    if (entry.path().extension() == ".kvs") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::byte> ReadFileBytes(const fs::path& path, uint64_t offset, uint64_t size) {
  std::vector<std::byte> out(size);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  const ssize_t n = ::pread(fd, out.data(), size, static_cast<off_t>(offset));
  ::close(fd);
  REQUIRE(n == static_cast<ssize_t>(size));
  return out;
}

// Buffered writes behind the store's back; direct reads see them (the kernel writes dirty
// pages back before an O_DIRECT read of the range), and the fsync makes sure.
void WriteFileBytes(const fs::path& path, uint64_t offset, std::span<const std::byte> bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  const ssize_t n = ::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset));
  CHECK(::fsync(fd) == 0);
  ::close(fd);
  REQUIRE(n == static_cast<ssize_t>(bytes.size()));
}

void FlipFileByte(const fs::path& path, uint64_t offset) {
  std::vector<std::byte> byte = ReadFileBytes(path, offset, 1);
  byte[0] ^= std::byte{0xff};
  WriteFileBytes(path, offset, byte);
}

std::vector<Block> RandomBlocks(std::mt19937_64& rng, size_t count, size_t min_bytes,
                                size_t max_bytes, const std::string& name_space = "ns") {
  std::vector<Block> blocks(count);
  std::uniform_int_distribution<size_t> size(min_bytes, max_bytes);
  for (size_t i = 0; i < count; ++i) {
    blocks[i].name_space = name_space;
    blocks[i].key = Key(i);
    blocks[i].data = RandomBytes(rng, size(rng));
  }
  return blocks;
}

TEST_CASE("A spill store reads back 200 random-sized records byte-exact across segments",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;
  testing::TempDir dir;
  const SpillOptions options = Options(dir.path());
  auto store = OpenStore(options, device.get());
  CHECK(fs::status(options.dir).permissions() ==
        (fs::perms::owner_read | fs::perms::owner_write | fs::perms::owner_exec));

  std::mt19937_64 rng(42);
  std::vector<Block> blocks = RandomBlocks(rng, 200, 1, 256 * kKiB);
  REQUIRE(WriteBlocks(*store, blocks).ok());
  CHECK(store->stats().writes_started == 200);
  CHECK(store->stats().live_records == 200);
  CHECK(store->stats().segments_created >= 5);
  CHECK(SegmentFiles(options).size() == store->segment_count());

  // Reads pipelined through every staging buffer, completing in any order.
  std::vector<std::vector<std::byte>> back(blocks.size());
  std::array<SpillCompletion, 8> out;
  size_t next = 0;
  size_t completed = 0;
  while (completed < blocks.size()) {
    while (next < blocks.size()) {
      back[next].assign(blocks[next].data.size(), std::byte{0});
      Status status = store->StartRead(blocks[next].location, blocks[next].name_space,
                                       blocks[next].key, back[next], next);
      if (status.code() == StatusCode::kResourceExhausted) break;
      REQUIRE(status.ok());
      ++next;
    }
    REQUIRE(store->Flush().ok());
    const size_t n = store->Poll(out, /*wait=*/true);
    for (size_t i = 0; i < n; ++i) {
      INFO("record " << out[i].cookie << ": " << out[i].status.ToString());
      CHECK(out[i].status.ok());
      CHECK(FirstMismatch(back[out[i].cookie], blocks[out[i].cookie].data) == -1);
    }
    completed += n;
  }
  CHECK(store->stats().integrity_failures == 0);
  CHECK(store->stats().reads_started == 200);
}

TEST_CASE("A spill store leaves no plaintext on disk", "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;
  testing::TempDir dir;
  const SpillOptions options = Options(dir.path());
  auto store = OpenStore(options, device.get());

  std::array<std::byte, 64> pattern;
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = std::byte(static_cast<uint8_t>(i * 7 + 3));
  std::vector<Block> blocks(40);
  for (size_t i = 0; i < blocks.size(); ++i) {
    blocks[i].key = Key(i);
    for (size_t r = 0; r < (i % 4 + 1) * 1024; ++r) {
      blocks[i].data.insert(blocks[i].data.end(), pattern.begin(), pattern.end());
    }
  }
  REQUIRE(WriteBlocks(*store, blocks).ok());
  REQUIRE(store->Sync().ok());
  CheckReadsBack(*store, blocks[5]);

  const auto files = SegmentFiles(options);
  REQUIRE(files.size() >= 2);
  uint64_t scanned = 0;
  for (const fs::path& file : files) {
    std::ifstream in(file, std::ios::binary);
    std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    scanned += raw.size();
    const auto* needle = reinterpret_cast<const char*>(pattern.data());
    CHECK(std::search(raw.begin(), raw.end(), needle, needle + pattern.size()) == raw.end());
    // The search can fail: the same bytes in the clear are found.
    std::vector<char> clear(raw.begin(), raw.begin() + 100);
    clear.insert(clear.end(), needle, needle + pattern.size());
    CHECK(std::search(clear.begin(), clear.end(), needle, needle + pattern.size()) != clear.end());
  }
  CHECK(scanned == files.size() * options.segment_bytes);
}

TEST_CASE("A tampered, moved or foreign record reads as kDataLoss, never wrong bytes",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;
  testing::TempDir dir;
  const SpillOptions options = Options(dir.path());
  auto store = OpenStore(options, device.get());
  std::mt19937_64 rng(7);
  std::vector<Block> blocks = RandomBlocks(rng, 4, 64 * kKiB, 64 * kKiB);
  REQUIRE(WriteBlocks(*store, blocks).ok());
  const fs::path file = SegmentFile(options, blocks[1].location.segment_id);
  const uint64_t at = blocks[1].location.offset;
  const uint64_t record_bytes = spill::RecordBytes(blocks[1].data.size());
  for (const Block& block : blocks) CheckReadsBack(*store, block);

  SECTION("a flipped ciphertext byte") {
    FlipFileByte(file, at + spill::kRecordHeaderBytes + 1000);
    CheckDataLoss(*store, blocks[1]);
  }
  SECTION("a flipped tag byte") {
    FlipFileByte(file, at + offsetof(spill::RecordHeader, tag) + 3);
    CheckDataLoss(*store, blocks[1]);
  }
  SECTION("a flipped header byte that only the tag covers") {
    FlipFileByte(file, at + offsetof(spill::RecordHeader, reserved0));
    CheckDataLoss(*store, blocks[1]);
  }
  SECTION("a flipped header byte of the key") {
    FlipFileByte(file, at + offsetof(spill::RecordHeader, key));
    CheckDataLoss(*store, blocks[1]);
  }
  SECTION("a record copied over another's offset in the same segment") {
    REQUIRE(blocks[2].location.segment_id == blocks[1].location.segment_id);
    WriteFileBytes(file, blocks[2].location.offset, ReadFileBytes(file, at, record_bytes));
    CheckDataLoss(*store, blocks[2]);
    CheckReadsBack(*store, blocks[1]);
  }
  SECTION("a flipped byte on its way from the disk") {
    auto inner = MakeDevice(kind);
    FaultyDevice faulty(std::move(inner));
    testing::TempDir other;
    const SpillOptions faulty_options = Options(other.path());
    auto faulty_store = OpenStore(faulty_options, &faulty);
    std::vector<Block> mine = RandomBlocks(rng, 1, 10000, 10000);
    REQUIRE(WriteBlocks(*faulty_store, mine).ok());
    faulty.FlipByteOfNthRead(1, 5000);
    CheckDataLoss(*faulty_store, mine[0]);
    CheckReadsBack(*faulty_store, mine[0]);
  }
  CheckReadsBack(*store, blocks[0]);
  CheckReadsBack(*store, blocks[3]);
}

TEST_CASE("Large records read in pieces come back byte-exact, also several at once, and a fault "
          "in any piece is a miss that writes nothing",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto inner = MakeDevice(kind);
  if (!inner) return;
  FaultyDevice faulty(std::move(inner));
  testing::TempDir dir;
  SpillOptions options = Options(dir.path());
  options.segment_bytes = 16 * kMiB;
  options.max_record_payload_bytes = 2 * kMiB;
  auto store = OpenStore(options, &faulty);
  std::mt19937_64 rng(41);
  // 2 MiB records are read in four pieces (queue depth 16, 8 staging buffers).
  std::vector<Block> blocks = RandomBlocks(rng, 4, 2 * kMiB - 300, 2 * kMiB);
  REQUIRE(WriteBlocks(*store, blocks).ok());

  // All four at once: their pieces complete interleaved, each record decrypted on its own.
  std::vector<std::vector<std::byte>> back(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    back[i].assign(blocks[i].data.size(), std::byte{0x5a});
    REQUIRE(store->StartRead(blocks[i].location, blocks[i].name_space, blocks[i].key, back[i], i)
                .ok());
  }
  std::vector<SpillCompletion> done = Drain(*store);
  REQUIRE(done.size() == blocks.size());
  for (const SpillCompletion& c : done) {
    INFO("record " << c.cookie << ": " << c.status.ToString());
    CHECK(c.status.ok());
    CHECK(FirstMismatch(back[c.cookie], blocks[c.cookie].data) == -1);
  }

  // A fault in the first, a middle or the last piece: a miss, the destination untouched.
  SECTION("a flipped byte in the header's piece") { faulty.FlipByteOfNthRead(1, 100); }
  SECTION("a flipped byte in the third piece") { faulty.FlipByteOfNthRead(3, 1000); }
  SECTION("a flipped byte in the last piece") { faulty.FlipByteOfNthRead(4, 2000); }
  SECTION("the second piece fails with EIO") { faulty.FailNthRead(2, EIO); }
  SECTION("the fourth piece comes up short") { faulty.ShortenNthIo(4); }
  const uint64_t failures =
      store->stats().integrity_failures + store->stats().reads_failed;
  std::vector<std::byte> bytes;
  const Status status = ReadBlock(*store, blocks[1].location, blocks[1].name_space,
                                  blocks[1].key, &bytes);
  INFO(status.ToString());
  CHECK_FALSE(status.ok());
  CHECK(Untouched(bytes));
  CHECK(faulty.faults_fired() == 1);
  CHECK(store->stats().integrity_failures + store->stats().reads_failed == failures + 1);
  // The store goes on: the same record, whole, once the fault has fired.
  CheckReadsBack(*store, blocks[1]);
}

TEST_CASE("Reads in pieces leave the device room for every staging buffer and a segment's "
          "crypto-erase",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);  // queue depth 16, 8 staging buffers
  if (!device) return;
  testing::TempDir dir;
  SpillOptions options = Options(dir.path());
  options.segment_bytes = 8 * kMiB;
  options.max_record_payload_bytes = 2 * kMiB;
  auto store = OpenStore(options, device.get());
  std::mt19937_64 rng(43);
  // Segment 1: three records, all to be released (its crypto-erase is a blocking header
  // write). Segments 2 and 3: seven records to read at once, in pieces.
  std::vector<Block> doomed = RandomBlocks(rng, 3, 2 * kMiB, 2 * kMiB, "doomed");
  std::vector<Block> kept = RandomBlocks(rng, 7, 2 * kMiB, 2 * kMiB, "kept");
  REQUIRE(WriteBlocks(*store, doomed).ok());
  REQUIRE(WriteBlocks(*store, kept).ok());
  REQUIRE(doomed[2].location.segment_id == 1);
  REQUIRE(kept[0].location.segment_id != 1);
  // One small write left in an open batch (not submitted yet: it will need a place too).
  std::vector<std::byte> small(4 * kKiB, std::byte{7});
  const std::vector<uint8_t> small_key = {9, 9};
  REQUIRE(store->StartWrite("kept", small_key, small, 100).ok());
  std::vector<std::vector<std::byte>> back(kept.size());
  for (size_t i = 0; i < kept.size(); ++i) {
    back[i].assign(kept[i].data.size(), std::byte{0x5a});
    REQUIRE(store->StartRead(kept[i].location, kept[i].name_space, kept[i].key, back[i], i).ok());
  }
  CHECK(store->in_flight() > kept.size());  // some reads did go in pieces
  // The last release of segment 1 erases it at once, with a write that needs a device place.
  for (const Block& block : doomed) store->Release(block.location);
  CHECK(store->stats().segments_erased == 1);
  CHECK(store->stats().erase_failures == 0);
  REQUIRE(store->Flush().ok());
  std::vector<SpillCompletion> done = Drain(*store);
  REQUIRE(done.size() == kept.size() + 1);
  for (const SpillCompletion& c : done) {
    INFO("cookie " << c.cookie << ": " << c.status.ToString());
    CHECK(c.status.ok());
    if (!c.is_write) CHECK(FirstMismatch(back[c.cookie], kept[c.cookie].data) == -1);
  }
}

TEST_CASE("A record copied into another tenant's segment at the same offset fails there",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device_a = MakeDevice(kind);
  if (!device_a) return;
  auto device_b = MakeDevice(kind);
  testing::TempDir dir;
  const SpillOptions options_a = Options(dir.path(), "alice");
  const SpillOptions options_b = Options(dir.path(), "bob");
  auto store_a = OpenStore(options_a, device_a.get());
  auto store_b = OpenStore(options_b, device_b.get());
  // Same namespace, key and size in both, so only the crypto binding can tell them apart.
  std::mt19937_64 rng(9);
  std::vector<Block> a = RandomBlocks(rng, 1, 20000, 20000);
  std::vector<Block> b = RandomBlocks(rng, 1, 20000, 20000);
  REQUIRE(WriteBlocks(*store_a, a).ok());
  REQUIRE(WriteBlocks(*store_b, b).ok());
  REQUIRE(a[0].location.offset == b[0].location.offset);
  REQUIRE(a[0].location.segment_id == b[0].location.segment_id);
  const uint64_t at = a[0].location.offset;
  const uint64_t record_bytes = spill::RecordBytes(20000);
  const fs::path file_b = SegmentFile(options_b, b[0].location.segment_id);
  std::vector<std::byte> record = ReadFileBytes(SegmentFile(options_a, 1), at, record_bytes);
  // Give the copy bob's segment generation and sequence, as an attacker who read bob's file
  // could: its header then matches everything bob's store expects.
  const auto generation = ReadFileBytes(file_b, offsetof(spill::SegmentHeader, generation), 8);
  std::memcpy(record.data() + offsetof(spill::RecordHeader, segment_generation),
              generation.data(), 8);
  std::memcpy(record.data() + offsetof(spill::RecordHeader, sequence), &b[0].location.sequence,
              8);
  WriteFileBytes(file_b, at, record);
  CheckDataLoss(*store_b, b[0]);
  CheckReadsBack(*store_a, a[0]);
}

TEST_CASE("A reopened spill store recovers every record, the newest copy of each key winning",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;
  testing::TempDir dir;
  const SpillOptions options = Options(dir.path());
  std::mt19937_64 rng(11);
  std::vector<Block> blocks = RandomBlocks(rng, 60, 1, 200 * kKiB);
  // Keys 0..9 written again with new bytes, in another namespace for key 0 too.
  std::vector<Block> again = RandomBlocks(rng, 10, 1, 200 * kKiB);
  Block other_ns;
  other_ns.name_space = "other";
  other_ns.key = Key(0);
  other_ns.data = RandomBytes(rng, 5000);
  again.push_back(other_ns);
  uint64_t last_sequence = 0;
  {
    auto store = OpenStore(options, device.get());
    REQUIRE(WriteBlocks(*store, blocks).ok());
    REQUIRE(WriteBlocks(*store, again).ok());
    last_sequence = again.back().location.sequence;
  }
  std::map<std::pair<std::string, std::vector<uint8_t>>, const Block*> expected;
  for (const Block& block : blocks) expected[{block.name_space, block.key}] = &block;
  for (const Block& block : again) expected[{block.name_space, block.key}] = &block;

  auto reopened_device = MakeDevice(kind);
  std::vector<RecoveredRecord> recovered;
  auto store = OpenStore(options, reopened_device.get(), &recovered);
  const RecoveryStats& stats = store->recovery_stats();
  CHECK(stats.records_recovered == expected.size());
  CHECK(stats.records_superseded == 10);
  CHECK(stats.records_rejected == 0);
  CHECK(stats.segments_discarded == 0);
  REQUIRE(recovered.size() == expected.size());
  for (const RecoveredRecord& record : recovered) {
    auto it = expected.find({record.name_space, record.key});
    REQUIRE(it != expected.end());
    const Block& block = *it->second;
    CHECK(record.location == block.location);
    std::vector<std::byte> back;
    REQUIRE(ReadBlock(*store, record.location, record.name_space, record.key, &back).ok());
    CHECK(FirstMismatch(back, block.data) == -1);
  }
  CHECK(store->stats().live_records == expected.size());

  // New writes go to a new segment with later sequence numbers.
  std::vector<Block> more = RandomBlocks(rng, 3, 100, 100);
  REQUIRE(WriteBlocks(*store, more).ok());
  CHECK(more[0].location.sequence == last_sequence + 1);
  for (const RecoveredRecord& record : recovered) {
    CHECK(more[0].location.segment_id > record.location.segment_id);
  }
  for (const Block& block : more) CheckReadsBack(*store, block);
}

TEST_CASE("A released record stays dead across a reopen: its header is scrubbed on disk",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;
  testing::TempDir dir;
  const SpillOptions options = Options(dir.path());
  std::mt19937_64 rng(12);
  // 30 records of 200 KiB: two segments, the second still open.
  std::vector<Block> blocks = RandomBlocks(rng, 30, 200 * kKiB, 200 * kKiB);
  const bool clean_stop = GENERATE(true, false);
  INFO((clean_stop ? "released just before a clean stop" : "released and scrubbed before"));
  {
    auto store = OpenStore(options, device.get());
    REQUIRE(WriteBlocks(*store, blocks).ok());
    REQUIRE(blocks[2].location.segment_id != blocks[29].location.segment_id);
    // One from the sealed first segment, one from the open last one.
    store->Release(blocks[2].location);
    store->Release(blocks[29].location);
    if (!clean_stop) {
      REQUIRE(store->Flush().ok());
      Drain(*store);
      CHECK(store->stats().scrubs == 2);
    }
    // else: the destructor writes the pending scrubs.
  }
  auto reopened_device = MakeDevice(kind);
  std::vector<RecoveredRecord> recovered;
  auto store = OpenStore(options, reopened_device.get(), &recovered);
  CHECK(recovered.size() == blocks.size() - 2);
  for (const RecoveredRecord& record : recovered) {
    CHECK(record.key != blocks[2].key);
    CHECK(record.key != blocks[29].key);
  }
  CHECK(store->recovery_stats().records_rejected == 0);
}

TEST_CASE("Small records are batched into few writes, each completed and read back on its own",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto inner = MakeDevice(kind);
  if (!inner) return;
  testing::TempDir dir;
  const SpillOptions options = Options(dir.path());  // 256 KiB + a header per staging buffer
  std::mt19937_64 rng(14);
  // 40 records of 12..20 KiB: about 13 to a batch.
  std::vector<Block> blocks = RandomBlocks(rng, 40, 12 * kKiB, 20 * kKiB);
  FaultyDevice device(std::move(inner));
  auto store = OpenStore(options, &device);
  const bool short_batch = GENERATE(false, true);
  INFO((short_batch ? "the second batch is cut short" : "all batches whole"));
  // Write 1 is the segment header; the batches follow.
  if (short_batch) device.ShortenNthIo(3);
  std::map<uint64_t, Status> completed;
  for (size_t i = 0; i < blocks.size(); ++i) {
    REQUIRE(store->CanStartWrite(blocks[i].data.size()));
    auto location = store->StartWrite("ns", blocks[i].key, blocks[i].data, i);
    REQUIRE(location.ok());
    blocks[i].location = *location;
  }
  REQUIRE(store->Flush().ok());
  for (SpillCompletion& c : Drain(*store)) completed[c.cookie] = std::move(c.status);
  REQUIRE(completed.size() == blocks.size());  // one completion per record
  CHECK(store->stats().writes_started == blocks.size());
  size_t failed = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    INFO("record " << i << ": " << completed[i].ToString());
    if (!completed[i].ok()) {
      ++failed;
      continue;
    }
    CheckReadsBack(*store, blocks[i]);
  }
  if (short_batch) {
    // Half of the second batch reached the disk: its first records count, the rest failed.
    CHECK(failed > 0);
    CHECK(failed < 13);
    CHECK(completed[0].ok());            // the first batch is whole
    CHECK(completed[39].ok());           // and so are the later ones
  } else {
    CHECK(failed == 0);
  }
  CHECK(store->stats().writes_failed == failed);
  CHECK(store->stats().live_records == blocks.size() - failed);
}

TEST_CASE("A torn record is not recovered and the others are", "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto inner = MakeDevice(kind);
  if (!inner) return;
  testing::TempDir dir;
  const SpillOptions options = Options(dir.path());
  std::mt19937_64 rng(13);
  std::vector<Block> blocks = RandomBlocks(rng, 12, 60 * kKiB, 120 * kKiB);
  size_t torn = 0;
  uint64_t rejected = 1;

  SECTION("the device wrote only half of one record") {
    FaultyDevice device(std::move(inner));
    auto store = OpenStore(options, &device);
    torn = 6;
    // The segment's header block is write 1, so record i is write i + 2.
    device.ShortenNthIo(static_cast<uint32_t>(torn + 2));
    std::array<SpillCompletion, 16> out;
    for (size_t i = 0; i < blocks.size(); ++i) {
      auto location = store->StartWrite(blocks[i].name_space, blocks[i].key, blocks[i].data, i);
      REQUIRE(location.ok());
      blocks[i].location = *location;
      REQUIRE(store->Flush().ok());
      const size_t n = store->Poll(out, /*wait=*/true);
      REQUIRE(n == 1);
      INFO("record " << i << ": " << out[0].status.ToString());
      CHECK(out[0].status.ok() == (i != torn));
    }
    CHECK(device.faults_fired() == 1);
    CHECK(store->stats().writes_failed == 1);
    CHECK(store->stats().live_records == blocks.size() - 1);
    std::vector<std::byte> back;
    CHECK(ReadBlock(*store, blocks[torn].location, "ns", blocks[torn].key, &back).code() ==
          StatusCode::kNotFound);
  }

  SECTION("a write that never reached the disk leaves a hole, and records after it count") {
    FaultyDevice device(std::move(inner));
    auto store = OpenStore(options, &device);
    torn = 3;
    rejected = 0;  // nothing plausible was written at its offset
    std::vector<Block> before(blocks.begin(), blocks.begin() + static_cast<ptrdiff_t>(torn));
    REQUIRE(WriteBlocks(*store, before).ok());
    device.FailNthWrite(1, EIO);  // the next write: the torn record's
    auto location = store->StartWrite("ns", blocks[torn].key, blocks[torn].data, torn);
    REQUIRE(location.ok());
    blocks[torn].location = *location;
    std::vector<SpillCompletion> done = Drain(*store);
    REQUIRE(done.size() == 1);
    CHECK(done[0].status.code() == StatusCode::kIoError);
    std::vector<Block> after(blocks.begin() + static_cast<ptrdiff_t>(torn) + 1, blocks.end());
    REQUIRE(WriteBlocks(*store, after).ok());
    std::copy(before.begin(), before.end(), blocks.begin());
    std::copy(after.begin(), after.end(), blocks.begin() + static_cast<ptrdiff_t>(torn) + 1);
    CHECK(blocks.back().location.segment_id == blocks[torn].location.segment_id);
  }

  SECTION("the tail of one record's ciphertext was zeroed in the file") {
    auto store = OpenStore(options, inner.get());
    REQUIRE(WriteBlocks(*store, blocks).ok());
    torn = 4;
    const uint64_t end = blocks[torn].location.offset + spill::kRecordHeaderBytes +
                         blocks[torn].data.size();
    std::vector<std::byte> zeros(8192, std::byte{0});
    WriteFileBytes(SegmentFile(options, blocks[torn].location.segment_id), end - zeros.size(),
                   zeros);
  }

  auto device = MakeDevice(kind);
  std::vector<RecoveredRecord> recovered;
  auto store = OpenStore(options, device.get(), &recovered);
  CHECK(store->recovery_stats().records_rejected == rejected);
  CHECK(recovered.size() == blocks.size() - 1);
  for (const RecoveredRecord& record : recovered) {
    CHECK(record.location != blocks[torn].location);
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (i != torn) CheckReadsBack(*store, blocks[i]);
  }
}

TEST_CASE("Crypto-erased segments are unreadable and removed", "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;
  testing::TempDir dir;
  const SpillOptions options = Options(dir.path());
  std::mt19937_64 rng(17);
  std::vector<Block> blocks = RandomBlocks(rng, 40, 200 * kKiB, 256 * kKiB);

  SECTION("a segment whose wrapped key was zeroed recovers nothing and is removed") {
    {
      auto store = OpenStore(options, device.get());
      REQUIRE(WriteBlocks(*store, blocks).ok());
      REQUIRE(store->segment_count() >= 2);
    }
    const fs::path first = SegmentFile(options, 1);
    const std::vector<std::byte> zeros(sizeof(spill::WrappedKeyBytes), std::byte{0});
    WriteFileBytes(first, offsetof(spill::SegmentHeader, wrapped_key), zeros);
    std::vector<RecoveredRecord> recovered;
    auto store = OpenStore(options, device.get(), &recovered);
    CHECK(store->recovery_stats().segments_discarded == 1);
    CHECK_FALSE(fs::exists(first));
    size_t in_first = 0;
    for (const Block& block : blocks) in_first += block.location.segment_id == 1 ? 1 : 0;
    CHECK(in_first > 0);
    CHECK(recovered.size() == blocks.size() - in_first);
    for (const RecoveredRecord& record : recovered) CHECK(record.location.segment_id != 1);
  }

  SECTION("releasing every record of a sealed segment erases its key, then removes it") {
    auto store = OpenStore(options, device.get());
    REQUIRE(WriteBlocks(*store, blocks).ok());
    const fs::path first = SegmentFile(options, 1);
    const fs::path link = dir.path() / "first-segment-link";
    fs::create_hard_link(first, link);  // keeps the blocks reachable after the removal
    const auto wrapped = ReadFileBytes(link, offsetof(spill::SegmentHeader, wrapped_key),
                                       sizeof(spill::WrappedKeyBytes));
    CHECK_FALSE(AllZero(wrapped));
    for (const Block& block : blocks) {
      if (block.location.segment_id == 1) store->Release(block.location);
    }
    CHECK_FALSE(fs::exists(first));
    CHECK(store->stats().segments_erased == 1);
    CHECK(AllZero(ReadFileBytes(link, offsetof(spill::SegmentHeader, wrapped_key),
                                sizeof(spill::WrappedKeyBytes))));
    for (const Block& block : blocks) {
      std::vector<std::byte> back;
      Status status = ReadBlock(*store, block.location, block.name_space, block.key, &back);
      CHECK(status.ok() == (block.location.segment_id != 1));
      if (status.ok()) CHECK(FirstMismatch(back, block.data) == -1);
      if (!status.ok()) CHECK(Untouched(back));
    }
  }

  SECTION("the segment being written, once empty and idle, can be retired and erased") {
    auto store = OpenStore(options, device.get());
    std::vector<Block> few = RandomBlocks(rng, 3, 100 * kKiB, 100 * kKiB);
    REQUIRE(WriteBlocks(*store, few).ok());
    REQUIRE(store->segment_count() == 1);
    const fs::path open = SegmentFile(options, 1);
    const fs::path link = dir.path() / "open-segment-link";
    fs::create_hard_link(open, link);
    store->Release(few[0].location);
    store->Release(few[1].location);
    CHECK_FALSE(store->RetireEmptyOpenSegment());  // one record still lives
    store->Release(few[2].location);
    REQUIRE(store->Flush().ok());  // the scrubs are in flight
    CHECK_FALSE(store->RetireEmptyOpenSegment());
    Drain(*store);
    CHECK(store->RetireEmptyOpenSegment());
    CHECK_FALSE(fs::exists(open));
    CHECK(store->segment_count() == 0);
    CHECK(AllZero(ReadFileBytes(link, offsetof(spill::SegmentHeader, wrapped_key),
                                sizeof(spill::WrappedKeyBytes))));
    // Writing goes on in a new segment.
    std::vector<Block> more = RandomBlocks(rng, 2, 100, 100);
    REQUIRE(WriteBlocks(*store, more).ok());
    CHECK(more[0].location.segment_id == 2);
    CheckReadsBack(*store, more[1]);
  }

  SECTION("CryptoEraseAll removes everything and the store keeps working") {
    auto store = OpenStore(options, device.get());
    REQUIRE(WriteBlocks(*store, blocks).ok());
    REQUIRE(store->CryptoEraseAll().ok());
    CHECK(SegmentFiles(options).empty());
    CHECK(store->segment_count() == 0);
    CHECK(store->stats().live_records == 0);
    std::vector<Block> more = RandomBlocks(rng, 2, 100, 100);
    REQUIRE(WriteBlocks(*store, more).ok());
    CheckReadsBack(*store, more[1]);
    store.reset();
    std::vector<RecoveredRecord> recovered;
    store = OpenStore(options, device.get(), &recovered);
    CHECK(recovered.size() == 2);
  }
}

TEST_CASE("Past its quota a spill store says so, and reclaiming the oldest segment makes room",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;
  testing::TempDir dir;
  SpillOptions options = Options(dir.path());
  options.quota_bytes = 12 * kMiB;  // three segments
  auto store = OpenStore(options, device.get());
  std::mt19937_64 rng(19);
  CHECK(store->ReclaimOldestSegment(nullptr).code() == StatusCode::kNotFound);

  std::vector<Block> blocks = RandomBlocks(rng, 80, 256 * kKiB, 256 * kKiB);
  Status full = WriteBlocks(*store, blocks);
  CHECK(full.code() == StatusCode::kResourceExhausted);
  CHECK_THAT(full.message(), Catch::Contains("quota"));
  CHECK(store->segment_count() == 3);
  size_t written = 0;
  while (written < blocks.size() && blocks[written].written) ++written;
  CHECK(written > 30);

  std::vector<SpillLocation> dropped;
  REQUIRE(store->ReclaimOldestSegment(&dropped).ok());
  CHECK(store->segment_count() == 2);
  std::vector<SpillLocation> expected;
  for (size_t i = 0; i < written; ++i) {
    if (blocks[i].location.segment_id == 1) expected.push_back(blocks[i].location);
  }
  CHECK(dropped == expected);
  CHECK_FALSE(dropped.empty());
  for (size_t i = 0; i < written; ++i) {
    std::vector<std::byte> back;
    Status status = ReadBlock(*store, blocks[i].location, "ns", blocks[i].key, &back);
    if (blocks[i].location.segment_id == 1) {
      CHECK(status.code() == StatusCode::kNotFound);
      CHECK(Untouched(back));
    } else {
      CHECK(status.ok());
      CHECK(FirstMismatch(back, blocks[i].data) == -1);
    }
  }
  // Room for one more segment now.
  REQUIRE(written < blocks.size());
  CHECK(WriteBlocks(*store, blocks, written).code() == StatusCode::kResourceExhausted);
  CHECK(store->segment_count() == 3);
  CHECK(blocks[written].written);
}

TEST_CASE("A full disk is a clear status and the spill store stays usable", "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;
  std::mt19937_64 rng(23);

  SECTION("a 16 MiB tmpfs refuses the segment that does not fit") {
    testing::ScopedMount mount("tmpfs", "size=16m");
    if (!mount.ok()) {
      testing::Unavailable("tmpfs", mount.why(), /*whole_test=*/false);
      return;
    }
    const SpillOptions options = Options(mount.dir());  // quota 64 MiB: the disk fills first
    auto store = OpenStore(options, device.get());
    std::vector<Block> blocks = RandomBlocks(rng, 80, 256 * kKiB, 256 * kKiB);
    Status full = WriteBlocks(*store, blocks);
    INFO(full.ToString());
    CHECK(full.code() == StatusCode::kResourceExhausted);
    CHECK_THAT(full.message(), Catch::Contains(".kvs"));
    size_t written = 0;
    while (written < blocks.size() && blocks[written].written) ++written;
    CHECK(written >= 15);
    for (size_t i = 0; i < written; ++i) CheckReadsBack(*store, blocks[i]);

    // Freeing a segment makes room again.
    for (size_t i = 0; i < written; ++i) {
      if (blocks[i].location.segment_id == 1) store->Release(blocks[i].location);
    }
    std::vector<Block> more = RandomBlocks(rng, 10, 256 * kKiB, 256 * kKiB);
    CHECK(WriteBlocks(*store, more).ok());
    for (const Block& block : more) CheckReadsBack(*store, block);
  }

  SECTION("a write that fails with ENOSPC completes with a clear status and is forgotten") {
    FaultyDevice faulty(std::move(device));
    testing::TempDir dir;
    const SpillOptions options = Options(dir.path());
    auto store = OpenStore(options, &faulty);
    std::vector<Block> blocks = RandomBlocks(rng, 3, 5000, 5000);
    std::vector<Block> first(blocks.begin(), blocks.begin() + 1);
    REQUIRE(WriteBlocks(*store, first).ok());
    faulty.FailNthWrite(1, ENOSPC);
    auto location = store->StartWrite("ns", blocks[1].key, blocks[1].data, 1);
    REQUIRE(location.ok());
    std::vector<SpillCompletion> done = Drain(*store);
    REQUIRE(done.size() == 1);
    CHECK(done[0].status.code() == StatusCode::kResourceExhausted);
    CHECK_THAT(done[0].status.message(), Catch::Contains("No space"));
    std::vector<std::byte> back;
    CHECK(ReadBlock(*store, *location, "ns", blocks[1].key, &back).code() ==
          StatusCode::kNotFound);
    std::vector<Block> rest(blocks.begin() + 2, blocks.end());
    REQUIRE(WriteBlocks(*store, rest).ok());
    CheckReadsBack(*store, rest[0]);
  }
}

TEST_CASE("The spill store works end to end on the forced fallback device", "[daemon][spill]") {
  DeviceOptions device_options;
  device_options.queue_depth = 8;
  device_options.threads = 2;
  device_options.force_thread_pool = true;
  std::string why;
  auto device = OpenBestDevice(device_options, &why);
  REQUIRE(device.ok());
  CHECK_THAT(std::string((*device)->name()), Catch::Contains("thread pool"));
  testing::TempDir dir;
  SpillOptions options = Options(dir.path());
  options.staging_buffers = 7;
  std::mt19937_64 rng(29);
  std::vector<Block> blocks = RandomBlocks(rng, 40, 1, 256 * kKiB);
  {
    auto store = OpenStore(options, device->get());
    REQUIRE(WriteBlocks(*store, blocks).ok());
    for (const Block& block : blocks) CheckReadsBack(*store, block);
  }
  std::vector<RecoveredRecord> recovered;
  auto store = OpenStore(options, device->get(), &recovered);
  CHECK(recovered.size() == blocks.size());
  for (const Block& block : blocks) CheckReadsBack(*store, block);
}

TEST_CASE("A tampered record's read never writes its destination, which stays as it was",
          "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;
  testing::TempDir dir;
  const SpillOptions options = Options(dir.path());
  auto store = OpenStore(options, device.get());
  std::mt19937_64 rng(31);
  std::vector<Block> blocks = RandomBlocks(rng, 2, 200 * kKiB, 200 * kKiB);
  REQUIRE(WriteBlocks(*store, blocks).ok());
  // The last ciphertext byte: every byte before it decrypts to the true plaintext.
  const Block& tampered = blocks[0];
  FlipFileByte(SegmentFile(options, tampered.location.segment_id),
               tampered.location.offset + spill::kRecordHeaderBytes + tampered.data.size() - 1);

  // The destination stands for a pool slot that the tenant's processes map too: it is made
  // read-only before the read, so a single byte the store wrote there before (or without) the
  // tag verifying would fault here instead of going unseen.
  const size_t bytes = tampered.data.size();
  void* mapped = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mapped != MAP_FAILED);
  const std::span<std::byte> slot(static_cast<std::byte*>(mapped), bytes);
  std::memset(slot.data(), 0x5a, slot.size());
  REQUIRE(::mprotect(mapped, bytes, PROT_READ) == 0);
  REQUIRE(store->StartRead(tampered.location, tampered.name_space, tampered.key, slot, 1).ok());
  std::vector<SpillCompletion> done = Drain(*store);
  REQUIRE(::mprotect(mapped, bytes, PROT_READ | PROT_WRITE) == 0);
  REQUIRE(done.size() == 1);
  CHECK(done[0].status.code() == StatusCode::kDataLoss);
  CHECK(std::all_of(slot.begin(), slot.end(), [](std::byte b) { return b == std::byte{0x5a}; }));
  CHECK(store->stats().integrity_failures == 1);

  // An authentic record still lands in the same memory, whole.
  const std::span<std::byte> good = slot.first(blocks[1].data.size());
  REQUIRE(store->StartRead(blocks[1].location, blocks[1].name_space, blocks[1].key, good, 2).ok());
  done = Drain(*store);
  REQUIRE(done.size() == 1);
  CHECK(done[0].status.ok());
  CHECK(FirstMismatch(good, blocks[1].data) == -1);
  ::munmap(mapped, bytes);
}

// What an attacker with write access to the tenant's spill directory could plant at a segment
// name: each must be refused without following, blocking on or writing through it.
enum class Planted { kSymlink, kFifo, kDirectory };

const char* PlantedName(Planted planted) {
  switch (planted) {
    case Planted::kSymlink: return "a symlink to a file outside the directory";
    case Planted::kFifo: return "a FIFO";
    case Planted::kDirectory: return "a directory";
  }
  return "?";
}

// Plants `what` at `path`; a symlink points at `target`.
void Plant(Planted what, const fs::path& path, const fs::path& target) {
  switch (what) {
    case Planted::kSymlink: fs::create_symlink(target, path); break;
    case Planted::kFifo: REQUIRE(::mkfifo(path.c_str(), 0600) == 0); break;
    case Planted::kDirectory: fs::create_directory(path); break;
  }
}

std::string FileText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST_CASE("A file planted at the next segment name is never written through, and the store "
          "goes on with the next name", "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  const Planted planted = GENERATE(Planted::kSymlink, Planted::kFifo, Planted::kDirectory);
  INFO(KindName(kind) << ", " << PlantedName(planted));
  auto device = MakeDevice(kind);
  if (!device) return;
  testing::TempDir dir;
  const SpillOptions options = Options(dir.path());
  const fs::path victim = dir.path() / "victim";
  const std::string precious = "not kvtierd's to overwrite";
  std::ofstream(victim, std::ios::binary) << precious;
  auto store = OpenStore(options, device.get());
  const fs::path first = SegmentFile(options, 1);
  Plant(planted, first, victim);

  std::mt19937_64 rng(37);
  std::vector<Block> blocks = RandomBlocks(rng, 30, 100 * kKiB, 256 * kKiB);
  const Status refused = WriteBlocks(*store, blocks);
  INFO(refused.ToString());
  CHECK(refused.code() == StatusCode::kAlreadyExists);
  CHECK_THAT(refused.message(), Catch::Contains(first.string()));
  CHECK_FALSE(blocks[0].written);
  // The next write takes the next name.
  REQUIRE(WriteBlocks(*store, blocks).ok());
  CHECK(blocks[0].location.segment_id == 2);
  for (const Block& block : blocks) CheckReadsBack(*store, block);
  CHECK(FileText(victim) == precious);
  CHECK(fs::symlink_status(first).type() != fs::file_type::regular);

  // A restart leaves it alone too, with a warning, and recovers every record.
  store.reset();
  std::vector<RecoveredRecord> recovered;
  store = OpenStore(options, device.get(), &recovered);
  CHECK(recovered.size() == blocks.size());
  CHECK(store->recovery_stats().segments_skipped == 1);
  REQUIRE(store->recovery_stats().warnings.size() == 1);
  CHECK_THAT(store->recovery_stats().warnings[0], Catch::Contains(first.string()));
  CHECK(FileText(victim) == precious);
  CHECK(fs::symlink_status(first).type() != fs::file_type::regular);
  for (const Block& block : blocks) CheckReadsBack(*store, block);
}

TEST_CASE("Recovery skips a symlink, FIFO, directory or foreign file at a segment name, with a "
          "warning, and never blocks on it", "[daemon][spill]") {
  const Kind kind = GENERATE(Kind::kUring, Kind::kThreadPool);
  INFO(KindName(kind));
  auto device = MakeDevice(kind);
  if (!device) return;
  testing::TempDir dir;
  const SpillOptions options = Options(dir.path());
  std::mt19937_64 rng(41);
  std::vector<Block> blocks = RandomBlocks(rng, 10, 100 * kKiB, 200 * kKiB);
  {
    auto store = OpenStore(options, device.get());
    REQUIRE(WriteBlocks(*store, blocks).ok());
    REQUIRE(store->segment_count() == 1);
  }
  // The symlink points at a copy of the real segment: followed, it would even recover.
  const fs::path copy = dir.path() / "segment-copy";
  fs::copy_file(SegmentFile(options, 1), copy);
  const std::string copy_bytes = FileText(copy);
  Plant(Planted::kSymlink, SegmentFile(options, 5), copy);
  Plant(Planted::kFifo, SegmentFile(options, 6), {});
  Plant(Planted::kDirectory, SegmentFile(options, 7), {});
  // A segment of ours that someone opened up is used, and made private again.
  fs::permissions(SegmentFile(options, 1), fs::perms::group_read | fs::perms::others_read,
                  fs::perm_options::add);

  auto reopened = MakeDevice(kind);
  std::vector<RecoveredRecord> recovered;
  auto store = OpenStore(options, reopened.get(), &recovered);
  const RecoveryStats& stats = store->recovery_stats();
  CHECK(stats.segments_scanned == 4);
  CHECK(stats.segments_skipped == 3);
  REQUIRE(stats.warnings.size() == 3);
  CHECK_THAT(stats.warnings[0], Catch::Contains("seg-00000005.kvs") &&
                                    Catch::Contains("symbolic link"));
  CHECK_THAT(stats.warnings[1], Catch::Contains("seg-00000006.kvs") && Catch::Contains("FIFO"));
  CHECK_THAT(stats.warnings[2], Catch::Contains("seg-00000007.kvs") &&
                                    Catch::Contains("directory"));
  CHECK(stats.segments_discarded == 0);
  CHECK(recovered.size() == blocks.size());
  CHECK(fs::status(SegmentFile(options, 1)).permissions() ==
        (fs::perms::owner_read | fs::perms::owner_write));
  for (const Block& block : blocks) CheckReadsBack(*store, block);
  CHECK(FileText(copy) == copy_bytes);
  CHECK(fs::is_symlink(SegmentFile(options, 5)));
  CHECK(fs::is_fifo(SegmentFile(options, 6)));
  CHECK(fs::is_directory(SegmentFile(options, 7)));
  // New segments take names after every one found.
  std::vector<Block> more = RandomBlocks(rng, 2, 100, 100);
  REQUIRE(WriteBlocks(*store, more).ok());
  CHECK(more[0].location.segment_id == 8);
  for (const Block& block : more) CheckReadsBack(*store, block);
}

TEST_CASE("A spill store checks its options and its arguments", "[daemon][spill]") {
  auto device = MakeDevice(Kind::kThreadPool);
  testing::TempDir dir;
  SpillOptions options = Options(dir.path());
  const auto open_code = [&](const SpillOptions& o) {
    return SpillStore::Open(o, device.get(), TenantKey("alice"), nullptr).status().code();
  };
  SpillOptions bad = options;
  bad.staging_buffers = kQueueDepth;
  CHECK(open_code(bad) == StatusCode::kInvalidArgument);
  bad = options;
  bad.segment_bytes = 3 * kMiB;
  CHECK(open_code(bad) == StatusCode::kInvalidArgument);
  bad = options;
  bad.tenant = std::string(33, 't');
  CHECK(open_code(bad) == StatusCode::kInvalidArgument);
  bad = options;
  bad.quota_bytes = options.segment_bytes - 1;
  CHECK(open_code(bad) == StatusCode::kInvalidArgument);

  options.staging_buffers = 2;
  auto store = OpenStore(options, device.get());
  std::vector<std::byte> data(300 * kKiB);
  const std::vector<uint8_t> key = Key(1);
  CHECK(store->StartWrite("ns", key, data, 0).status().code() == StatusCode::kInvalidArgument);
  CHECK(store->StartWrite("", key, std::span(data).first(10), 0).status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(store->StartWrite("ns", {}, std::span(data).first(10), 0).status().code() ==
        StatusCode::kInvalidArgument);
  // 200 KiB records: one per staging buffer (256 KiB), so two buffers take two records.
  const auto big = std::span(data).first(200 * kKiB);
  REQUIRE(store->StartWrite("ns", key, big, 1).ok());
  REQUIRE(store->StartWrite("ns", key, big, 2).ok());
  CHECK_FALSE(store->CanStartWrite(big.size()));
  auto busy = store->StartWrite("ns", key, big, 3);
  CHECK(busy.status().code() == StatusCode::kResourceExhausted);
  CHECK(busy.status().message() == "staging buffers busy");
  CHECK(Drain(*store).size() == 2);
  CHECK(store->StartWrite("ns", key, big, 3).ok());
  CHECK(Drain(*store).size() == 1);
}

SecretKey RandomKey() {
  auto key = SecretKey::Random();
  REQUIRE(key.ok());
  return std::move(*key);
}

SecretKey CopyKey(const SecretKey& key) { return SecretKey::FromBytes(key.bytes()); }

TEST_CASE("Segments wrapped under a key the store does not hold are discarded and counted while "
          "a legacy key reads old segments without wrapping new ones",
          "[daemon][spill][keys]") {
  auto device = MakeDevice(Kind::kThreadPool);
  testing::TempDir dir;
  const SpillOptions options = Options(dir.path());
  std::mt19937_64 rng(7);
  const SecretKey legacy = RandomKey();
  const SecretKey current = RandomKey();
  std::vector<Block> old_blocks = RandomBlocks(rng, 6, 1 * kKiB, 64 * kKiB, "old");
  {
    auto store = SpillStore::Open(options, device.get(), legacy, nullptr);
    REQUIRE(store.ok());
    REQUIRE(WriteBlocks(**store, old_blocks).ok());
  }
  std::vector<Block> new_blocks = RandomBlocks(rng, 6, 1 * kKiB, 64 * kKiB, "new");
  {
    // The current key with the legacy one: the old segments are read, new ones are wrapped
    // under the current key.
    std::vector<RecoveredRecord> recovered;
    auto store = SpillStore::Open(options, device.get(), current, &recovered, &legacy);
    REQUIRE(store.ok());
    CHECK(recovered.size() == old_blocks.size());
    CHECK((*store)->recovery_stats().segments_legacy_key == 1);
    CHECK((*store)->recovery_stats().segments_key_rejected == 0);
    CHECK((*store)->recovery_stats().segments_discarded == 0);
    REQUIRE(WriteBlocks(**store, new_blocks).ok());
  }
  {
    // Without the legacy key the old segment is discarded as not unwrappable; the new one stays.
    std::vector<RecoveredRecord> recovered;
    auto store = SpillStore::Open(options, device.get(), current, &recovered);
    REQUIRE(store.ok());
    CHECK(recovered.size() == new_blocks.size());
    CHECK((*store)->recovery_stats().segments_key_rejected == 1);
    CHECK((*store)->recovery_stats().segments_discarded == 1);
    CHECK((*store)->recovery_stats().segments_legacy_key == 0);
  }
  {
    // A key that unwraps nothing: every segment is discarded, none of them read.
    std::vector<RecoveredRecord> recovered;
    auto store = SpillStore::Open(options, device.get(), RandomKey(), &recovered);
    REQUIRE(store.ok());
    CHECK(recovered.empty());
    CHECK((*store)->recovery_stats().segments_key_rejected == 1);
  }
  CHECK(SegmentFiles(options).empty());
}

TEST_CASE("After CryptoEraseAll and SetTenantKey new segments are wrapped under the new key "
          "only",
          "[daemon][spill][keys]") {
  auto device = MakeDevice(Kind::kThreadPool);
  testing::TempDir dir;
  const SpillOptions options = Options(dir.path());
  std::mt19937_64 rng(8);
  const SecretKey before = RandomKey();
  const SecretKey after = RandomKey();
  std::vector<Block> blocks = RandomBlocks(rng, 4, 1 * kKiB, 32 * kKiB);
  std::vector<Block> later = RandomBlocks(rng, 4, 1 * kKiB, 32 * kKiB, "later");
  {
    auto store = SpillStore::Open(options, device.get(), before, nullptr);
    REQUIRE(store.ok());
    REQUIRE(WriteBlocks(**store, blocks).ok());
    REQUIRE((*store)->CryptoEraseAll().ok());
    (*store)->SetTenantKey(CopyKey(after));
    REQUIRE(WriteBlocks(**store, later).ok());
    for (const Block& b : later) CheckReadsBack(**store, b);
  }
  {
    // The new key recovers every block written after the erase.
    std::vector<RecoveredRecord> recovered;
    auto store = SpillStore::Open(options, device.get(), after, &recovered);
    REQUIRE(store.ok());
    CHECK(recovered.size() == later.size());
    CHECK((*store)->recovery_stats().segments_key_rejected == 0);
  }
  {
    std::vector<RecoveredRecord> recovered;
    auto store = SpillStore::Open(options, device.get(), before, &recovered);
    REQUIRE(store.ok());
    CHECK(recovered.empty());  // the retired key unwraps nothing written after the erase
    CHECK((*store)->recovery_stats().segments_key_rejected == 1);
  }
}

}  // namespace
}  // namespace kvtier
