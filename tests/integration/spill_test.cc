// The encrypted SSD tier through the real daemon: demotion under DRAM pressure, promotion on
// acquire and prefetch, no plaintext on disk, tampered records as misses, warm restart after
// SIGKILL, a full disk, and the pread/pwrite fallback.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "daemon/spill/spill_format.h"
#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kKiB = 1 << 10;

std::unique_ptr<Client> MustConnect(const DaemonProcess& d) {
  auto c = Client::Connect({.socket_path = d.socket_path(), .name_space = "spill"});
  if (!c.ok()) FAIL("connect: " << c.status().ToString());
  return std::move(*c);
}

DaemonOptions SpillOptions(const fs::path& spill_dir, uint64_t dram = 64 * kMiB,
                           uint64_t ssd = 1024 * kMiB) {
  DaemonOptions o;
  o.dram_bytes = dram;
  o.slab_bytes = 2 * kMiB;
  o.max_block_bytes = 2 * kMiB;
  o.spill_dir = spill_dir;
  o.ssd_bytes = ssd;
  o.segment_bytes = 16 * kMiB;
  return o;
}

// Stores `keys` with `sizes` in batches of `batch`, each block FillBlock'ed.
void StoreAll(Client& client, const std::vector<Key>& keys, const std::vector<uint64_t>& sizes,
              size_t batch = 16) {
  for (size_t at = 0; at < keys.size(); at += batch) {
    const size_t n = std::min(batch, keys.size() - at);
    const auto first = static_cast<std::ptrdiff_t>(at);
    const auto last = static_cast<std::ptrdiff_t>(at + n);
    std::vector<Key> k(keys.begin() + first, keys.begin() + last);
    std::vector<uint64_t> s(sizes.begin() + first, sizes.begin() + last);
    auto r = client.Reserve(k, s);
    INFO((r.ok() ? std::string() : r.status().ToString()));
    REQUIRE(r.ok());
    for (size_t i = 0; i < n; ++i) {
      REQUIRE(r->code(i) == StatusCode::kOk);
      FillBlock(k[i], r->data(i));
    }
    REQUIRE(r->Commit().ok());
  }
}

PoolStats MustStats(Client& client) {
  auto s = client.Stats();
  REQUIRE(s.ok());
  return *s;
}

// Every regular file under `dir`, read whole.
std::vector<std::pair<fs::path, std::string>> FilesUnder(const fs::path& dir) {
  std::vector<std::pair<fs::path, std::string>> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    // One read per file: byte-wise stream iterators take minutes for the tier's hundreds of
    // MiB in the sanitizer build.
    std::error_code gone;  // the daemon may reclaim a segment meanwhile
    const uintmax_t size = entry.file_size(gone);
    if (gone) continue;
    std::string bytes(static_cast<size_t>(size), '\0');
    std::ifstream in(entry.path(), std::ios::binary);
    in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    bytes.resize(static_cast<size_t>(in.gcount()));
    files.emplace_back(entry.path(), std::move(bytes));
  }
  return files;
}

struct RecordSpot {
  fs::path file;
  uint64_t offset = 0;
  spill::RecordHeader header{};
};

// Finds the record of each of `keys` in the spill files by its (plaintext) header, reading
// the files once.
std::vector<std::optional<RecordSpot>> FindRecords(const fs::path& dir,
                                                   const std::vector<Key>& keys) {
  std::vector<std::optional<RecordSpot>> spots(keys.size());
  for (const auto& [path, bytes] : FilesUnder(dir)) {
    for (uint64_t at = spill::kSegmentHeaderBytes; at + sizeof(spill::RecordHeader) <= bytes.size();
         at += spill::kAlignBytes) {
      spill::RecordHeader h;
      std::memcpy(&h, bytes.data() + at, sizeof(h));
      if (h.magic != spill::kRecordMagic) continue;
      for (size_t i = 0; i < keys.size(); ++i) {
        if (!spots[i] && h.key_len == keys[i].len &&
            std::memcmp(h.key, keys[i].bytes.data(), keys[i].len) == 0) {
          spots[i] = RecordSpot{path, at, h};
        }
      }
    }
  }
  return spots;
}

std::optional<RecordSpot> FindRecord(const fs::path& dir, const Key& key) {
  return FindRecords(dir, {key})[0];
}

void PatchFile(const fs::path& file, uint64_t offset, const void* data, size_t n) {
  const int fd = open(file.c_str(), O_WRONLY);
  REQUIRE(fd >= 0);
  REQUIRE(pwrite(fd, data, n, static_cast<off_t>(offset)) == static_cast<ssize_t>(n));
  REQUIRE(fsync(fd) == 0);
  close(fd);
}

void FlipByte(const fs::path& file, uint64_t offset) {
  std::ifstream in(file, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  in.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  PatchFile(file, offset, &c, 1);
}

// Fills DRAM with `n` other 1 MiB blocks so that earlier blocks move to SSD only.
void PushOut(Client& client, uint64_t owner, size_t n) {
  StoreAll(client, TestKeys(owner, n), std::vector<uint64_t>(n, kMiB));
}

TEST_CASE("512 MiB through a 64 MiB pool and a 1 GiB SSD tier reads back byte for byte",
          "[integration][spill]") {
  TempDir spill;
  auto daemon = DaemonProcess::Start(SpillOptions(spill.path() / "spill"));
  auto client = MustConnect(*daemon);
  std::mt19937_64 rng(42);
  std::vector<Key> keys;
  std::vector<uint64_t> sizes;
  uint64_t total = 0;
  while (total < 512 * kMiB) {
    const uint64_t size = 64 * kKiB + rng() % (2 * kMiB - 64 * kKiB + 1);
    keys.push_back(TestKey(1, keys.size()));
    sizes.push_back(size);
    total += size;
  }
  StoreAll(*client, keys, sizes);
  const PoolStats stored = MustStats(*client);
  CHECK(stored.demotions > 0);
  CHECK(stored.ssd_only_blocks > 0);
  CHECK(stored.demote_failures == 0);
  CHECK(stored.ssd_dropped == 0);  // 512 MiB fit the 1 GiB quota

  // match_prefix tells the tier: the first blocks are long gone from DRAM.
  std::vector<Tier> tiers(4);
  REQUIRE(*client->MatchPrefix(std::span(keys).first(4), tiers) == 4);
  CHECK(tiers[0] == Tier::kSsd);

  const ReadCounts back = ReadAll(*client, keys);
  CHECK(back.wrong == 0);
  CHECK(back.missing == 0);
  CHECK(back.verified == keys.size());
  const PoolStats after = MustStats(*client);
  CHECK(after.promotions > 0);
  CHECK(after.promote_failures == 0);
  CHECK(after.integrity_failures == 0);
  CHECK(after.ssd_quota_bytes == 1024 * kMiB);
  CHECK(after.ssd_segments > 0);
  CHECK(daemon->Alive());
}

TEST_CASE("prefetch brings SSD blocks back into DRAM before the acquire",
          "[integration][spill]") {
  TempDir spill;
  auto daemon = DaemonProcess::Start(SpillOptions(spill.path() / "spill"));
  auto client = MustConnect(*daemon);
  const std::vector<Key> keys = TestKeys(2, 8);
  StoreAll(*client, keys, std::vector<uint64_t>(keys.size(), kMiB));
  PushOut(*client, 3, 160);
  std::vector<Tier> tiers(keys.size());
  REQUIRE(*client->MatchPrefix(keys, tiers) == keys.size());
  REQUIRE(std::all_of(tiers.begin(), tiers.end(), [](Tier t) { return t == Tier::kSsd; }));

  std::vector<StatusCode> codes(keys.size() + 1);
  std::vector<Key> with_missing = keys;
  with_missing.push_back(TestKey(2, 999));  // never stored
  REQUIRE(client->Prefetch(with_missing, codes).ok());
  for (size_t i = 0; i < keys.size(); ++i) CHECK(codes[i] == StatusCode::kOk);
  CHECK(codes.back() == StatusCode::kNotFound);
  REQUIRE(*client->MatchPrefix(keys, tiers) == keys.size());
  CHECK(std::all_of(tiers.begin(), tiers.end(), [](Tier t) { return t == Tier::kDram; }));
  const ReadCounts back = ReadAll(*client, keys);
  CHECK(back.verified == keys.size());
}

TEST_CASE("match_prefix's estimate counts each tier's blocks and bytes and prices a prefix on SSD "
          "above the same prefix in DRAM",
          "[integration][spill]") {
  TempDir spill;
  auto daemon = DaemonProcess::Start(SpillOptions(spill.path() / "spill"));
  auto client = MustConnect(*daemon);
  const std::vector<Key> keys = TestKeys(4, 8);
  StoreAll(*client, keys, std::vector<uint64_t>(keys.size(), kMiB));
  PushOut(*client, 5, 160);
  std::vector<Key> with_missing = keys;
  with_missing.push_back(TestKey(4, 999));  // never stored: ends the prefix
  PrefixEstimate on_ssd;
  REQUIRE(*client->MatchPrefix(with_missing, {}, &on_ssd) == keys.size());
  REQUIRE(on_ssd.valid);
  CHECK(on_ssd.ssd_blocks == keys.size());
  CHECK(on_ssd.dram_blocks == 0);
  CHECK(on_ssd.ssd_bytes == keys.size() * kMiB);
  CHECK(on_ssd.dram_bytes == 0);
  CHECK(on_ssd.ssd_mb_per_s > 0);
  CHECK(on_ssd.dram_mb_per_s > 0);
  CHECK(on_ssd.load_us >= on_ssd.ssd_queue_us);
  CHECK(on_ssd.load_us > 0);

  REQUIRE(client->Prefetch(keys).ok());
  PrefixEstimate in_dram;
  REQUIRE(*client->MatchPrefix(keys, {}, &in_dram) == keys.size());
  CHECK(in_dram.dram_blocks == keys.size());
  CHECK(in_dram.ssd_blocks == 0);
  CHECK(in_dram.dram_bytes == keys.size() * kMiB);
  CHECK(in_dram.ssd_queue_us == 0);  // no SSD block: no wait behind the SSD
  CHECK(in_dram.load_us < on_ssd.load_us);
  // Without an estimate asked for, the plain op; and nothing matched costs nothing.
  CHECK(*client->MatchPrefix(keys) == keys.size());
  PrefixEstimate none;
  REQUIRE(*client->MatchPrefix(std::vector<Key>{TestKey(4, 998)}, {}, &none) == 0);
  CHECK(none.valid);
  CHECK(none.load_us == 0);
}

TEST_CASE("no plaintext of a demoted block reaches the spill files", "[integration][spill]") {
  TempDir spill;
  const fs::path dir = spill.path() / "spill";
  const std::string canary = "KVTIER-PLAINTEXT-CANARY-0123456789";
  {
    auto daemon = DaemonProcess::Start(SpillOptions(dir));
    auto client = MustConnect(*daemon);
    const std::vector<Key> keys = TestKeys(4, 16);
    auto r = client->Reserve(keys, std::vector<uint64_t>(keys.size(), kMiB));
    REQUIRE(r.ok());
    for (size_t i = 0; i < keys.size(); ++i) {
      std::span<std::byte> data = r->data(i);
      for (size_t at = 0; at + canary.size() <= data.size(); at += canary.size()) {
        std::memcpy(data.data() + at, canary.data(), canary.size());
      }
    }
    REQUIRE(r->Commit().ok());
    PushOut(*client, 5, 160);
    REQUIRE(MustStats(*client).demotions >= keys.size());
    REQUIRE(daemon->Stop() == 0);
  }
  size_t bytes = 0;
  for (const auto& [path, contents] : FilesUnder(dir)) {
    bytes += contents.size();
    INFO(path);
    CHECK(contents.find(canary.substr(0, 16)) == std::string::npos);
  }
  CHECK(bytes > 16 * kMiB);  // the test looked at real spill files
}

TEST_CASE("a tampered or moved SSD record is a miss counted as an integrity failure",
          "[integration][spill]") {
  TempDir spill;
  const fs::path dir = spill.path() / "spill";
  auto daemon = DaemonProcess::Start(SpillOptions(dir));
  auto client = MustConnect(*daemon);
  const std::vector<Key> keys = TestKeys(6, 5);
  StoreAll(*client, keys, std::vector<uint64_t>(keys.size(), 256 * kKiB));
  PushOut(*client, 7, 160);
  std::vector<RecordSpot> spots;
  for (const auto& spot : FindRecords(dir, keys)) {
    REQUIRE(spot.has_value());
    spots.push_back(*spot);
  }
  // 0: ciphertext byte, 1: tag byte, 2: header byte (payload size), 3: record 4's bytes copied
  // over record 3 (a moved record), 4: untouched.
  FlipByte(spots[0].file, spots[0].offset + spill::kRecordHeaderBytes + 1000);
  FlipByte(spots[1].file, spots[1].offset + offsetof(spill::RecordHeader, tag) + 3);
  FlipByte(spots[2].file, spots[2].offset + offsetof(spill::RecordHeader, sequence));
  {
    std::ifstream in(spots[4].file, std::ios::binary);
    std::string record(spots[4].header.record_bytes, '\0');
    in.seekg(static_cast<std::streamoff>(spots[4].offset));
    in.read(record.data(), static_cast<std::streamsize>(record.size()));
    PatchFile(spots[3].file, spots[3].offset, record.data(), record.size());
  }
  auto leases = client->Acquire(keys);
  REQUIRE(leases.ok());
  for (size_t i = 0; i < 4; ++i) {
    INFO("record " << i);
    CHECK(leases->code(i) == StatusCode::kNotFound);
  }
  REQUIRE(leases->code(4) == StatusCode::kOk);
  CHECK(VerifyBlock(keys[4], leases->data(4)));
  const PoolStats stats = MustStats(*client);
  CHECK(stats.integrity_failures == 4);
  // Gone for good: a second look is a plain miss.
  CHECK(*client->MatchPrefix(std::span(keys).first(1)) == 0);
  CHECK(daemon->Alive());
}

TEST_CASE("a tampered SSD record's bytes never show in the shared pool, even while it is checked",
          "[integration][spill]") {
  TempDir spill;
  const fs::path dir = spill.path() / "spill";
  auto daemon = DaemonProcess::Start(SpillOptions(dir));
  auto client = MustConnect(*daemon);
  constexpr uint64_t kBlockBytes = 2 * kMiB;
  const std::vector<Key> keys = TestKeys(14, 24);
  StoreAll(*client, keys, std::vector<uint64_t>(keys.size(), kBlockBytes));
  PushOut(*client, 15, 160);
  std::vector<Tier> tiers(keys.size());
  REQUIRE(*client->MatchPrefix(keys, tiers) == keys.size());
  REQUIRE(std::all_of(tiers.begin(), tiers.end(), [](Tier t) { return t == Tier::kSsd; }));
  // Each record loses only its last ciphertext byte, so all its other bytes would decrypt to
  // the true plaintext; the first 8 of them are what a reader of the pool would spot.
  std::vector<uint64_t> stamps;
  std::vector<std::byte> plain(kBlockBytes);
  const auto spots = FindRecords(dir, keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    FillBlock(keys[i], plain);
    uint64_t stamp = 0;
    std::memcpy(&stamp, plain.data(), sizeof(stamp));
    stamps.push_back(stamp);
    REQUIRE(spots[i].has_value());
    FlipByte(spots[i]->file, spots[i]->offset + spill::kRecordHeaderBytes + kBlockBytes - 1);
  }
  // A process of the tenant reading the shared pool: every 64 KiB (2 MiB blocks start on
  // slab boundaries), again and again while the daemon promotes the records.
  const std::span<std::byte> pool = client->pool();
  const auto sightings = [&] {
    size_t seen = 0;
    for (size_t at = 0; at + sizeof(uint64_t) <= pool.size(); at += 64 * kKiB) {
      const uint64_t word = *reinterpret_cast<const volatile uint64_t*>(pool.data() + at);
      seen += static_cast<size_t>(std::count(stamps.begin(), stamps.end(), word));
    }
    return seen;
  };
  REQUIRE(sightings() == 0);
  std::atomic<bool> stop{false};
  std::atomic<size_t> seen{0};
  std::thread reader([&] {
    while (!stop.load()) seen += sightings();
  });
  for (const Key& key : keys) {
    auto leases = client->Acquire(std::vector<Key>{key});
    REQUIRE(leases.ok());
    CHECK(leases->code(0) == StatusCode::kNotFound);
  }
  stop = true;
  reader.join();
  CHECK(seen.load() == 0);
  CHECK(sightings() == 0);  // and the slots they were read into are zero again
  CHECK(MustStats(*client).integrity_failures == keys.size());
  CHECK(daemon->Alive());
}

TEST_CASE("files planted at segment names are never followed, blocked on or written through, "
          "and the SSD tier keeps working", "[integration][spill]") {
  TempDir spill;
  const fs::path dir = spill.path() / "spill";
  const fs::path tenant_dir = dir / "test";
  fs::create_directories(tenant_dir);
  fs::permissions(tenant_dir, fs::perms::owner_all, fs::perm_options::replace);
  const fs::path victim = spill.path() / "victim";
  const std::string precious(4096, 'v');
  std::ofstream(victim, std::ios::binary) << precious;
  const auto text = [](const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  // Found at start: a FIFO where recovery opens segment 1.
  REQUIRE(mkfifo((tenant_dir / "seg-00000001.kvs").c_str(), 0600) == 0);
  auto daemon = DaemonProcess::Start(SpillOptions(dir));
  CHECK_THAT(daemon->Log(),
             Catch::Contains("seg-00000001.kvs as a spill file: it is a FIFO; skipped"));
  // Planted while it runs: a symlink at the name its first segment will take.
  fs::create_symlink(victim, tenant_dir / "seg-00000002.kvs");
  auto client = MustConnect(*daemon);
  const std::vector<Key> keys = TestKeys(16, 100);
  StoreAll(*client, keys, std::vector<uint64_t>(keys.size(), kMiB));
  const PoolStats stats = MustStats(*client);
  CHECK(stats.demotions > 0);
  CHECK(stats.demote_failures >= 1);  // the demotion that met the symlink
  CHECK_THAT(daemon->Log(), Catch::Contains("seg-00000002.kvs: a file of that name exists"));
  CHECK(text(victim) == precious);
  CHECK(fs::is_symlink(tenant_dir / "seg-00000002.kvs"));
  CHECK(fs::is_fifo(tenant_dir / "seg-00000001.kvs"));
  CHECK(fs::is_regular_file(fs::symlink_status(tenant_dir / "seg-00000003.kvs")));
  // Every block still stored is exact; only a block whose demotion failed can be gone.
  const ReadCounts back = ReadAll(*client, keys);
  CHECK(back.wrong == 0);
  CHECK(back.missing <= stats.demote_failures);
  CHECK(MustStats(*client).promotions > 0);
  CHECK(text(victim) == precious);
  CHECK(daemon->Alive());
}

TEST_CASE("after SIGKILL in the middle of demotion, a restart serves what reached the SSD",
          "[integration][spill]") {
  TempDir spill;
  const fs::path dir = spill.path() / "spill";
  const std::vector<Key> first = TestKeys(8, 100);
  const std::vector<Key> second = TestKeys(10, 100);
  std::vector<Key> durable;  // blocks known to be on SSD before the kill
  {
    auto daemon = DaemonProcess::Start(SpillOptions(dir));
    auto client = MustConnect(*daemon);
    StoreAll(*client, first, std::vector<uint64_t>(first.size(), kMiB));
    // Drop DRAM's copies: what is left of `first` is on SSD, and its writes have completed.
    REQUIRE(RunCtl(*daemon, {"evict", "--tenant", "test", "--tier", "dram"}, nullptr) == 0);
    for (const Key& key : first) {
      Tier tier = Tier::kNone;
      REQUIRE(client->MatchPrefix(std::vector<Key>{key}, std::span(&tier, 1)).ok());
      if (tier == Tier::kSsd) durable.push_back(key);
    }
    REQUIRE(durable.size() >= 2);
    // 100 MiB more through 64 MiB: demotions are queued or in flight at the kill.
    StoreAll(*client, second, std::vector<uint64_t>(second.size(), kMiB));
    REQUIRE(MustStats(*client).demotions > durable.size());
    kill(daemon->pid(), SIGKILL);
    CHECK(daemon->Stop() == -SIGKILL);
  }
  // Tear one durable record as a crash inside a write would have left it.
  const Key torn_key = durable.back();
  durable.pop_back();
  std::optional<RecordSpot> torn = FindRecord(dir, torn_key);
  REQUIRE(torn.has_value());
  const std::string zeros(torn->header.record_bytes / 2, '\0');
  PatchFile(torn->file, torn->offset + torn->header.record_bytes / 2, zeros.data(), zeros.size());

  auto daemon = DaemonProcess::Start(SpillOptions(dir));
  auto client = MustConnect(*daemon);
  // Every record that was durable before the kill is served, byte for byte.
  const ReadCounts kept = ReadAll(*client, durable);
  CHECK(kept.verified == durable.size());
  CHECK(kept.wrong == 0);
  // Of the blocks in flight at the kill, some made it and some did not; none is wrong.
  const ReadCounts racing = ReadAll(*client, second);
  CHECK(racing.wrong == 0);
  CHECK(racing.verified + racing.missing == second.size());
  // The torn record is gone, not served.
  CHECK(*client->MatchPrefix(std::vector<Key>{torn_key}) == 0);
  CHECK(daemon->Log().find("rejected 1 torn or tampered records") != std::string::npos);
}

TEST_CASE("a clean stop keeps the SSD tier for the next start", "[integration][spill]") {
  TempDir spill;
  const fs::path dir = spill.path() / "spill";
  const std::vector<Key> keys = TestKeys(9, 100);
  uint64_t on_ssd = 0;
  {
    auto daemon = DaemonProcess::Start(SpillOptions(dir));
    auto client = MustConnect(*daemon);
    StoreAll(*client, keys, std::vector<uint64_t>(keys.size(), kMiB));
    on_ssd = MustStats(*client).ssd_blocks;
    REQUIRE(on_ssd > 0);
    REQUIRE(daemon->Stop() == 0);
  }
  auto daemon = DaemonProcess::Start(SpillOptions(dir));
  auto client = MustConnect(*daemon);
  // Demotions in flight at the stop finished before it; ones not yet started did not.
  const uint64_t recovered = MustStats(*client).ssd_only_blocks;
  CHECK(recovered >= on_ssd);
  const ReadCounts back = ReadAll(*client, keys);
  CHECK(back.wrong == 0);
  CHECK(back.verified == recovered);
  CHECK(back.verified + back.missing == keys.size());
}

TEST_CASE("a removed SSD block stays removed after a restart, also when its key was reused",
          "[integration][spill]") {
  TempDir spill;
  const fs::path dir = spill.path() / "spill";
  const std::vector<Key> keys = TestKeys(13, 8);
  {
    auto daemon = DaemonProcess::Start(SpillOptions(dir));
    auto client = MustConnect(*daemon);
    StoreAll(*client, keys, std::vector<uint64_t>(keys.size(), kMiB));
    PushOut(*client, 14, 160);
    std::vector<Tier> tiers(keys.size());
    REQUIRE(*client->MatchPrefix(keys, tiers) == keys.size());
    REQUIRE(tiers[0] == Tier::kSsd);
    REQUIRE(client->Remove(std::span(keys).first(4)).ok());
    // Key 1 again, with other bytes (another size), still only in DRAM when the daemon stops.
    StoreAll(*client, {keys[1]}, {512 * kKiB});
    REQUIRE(daemon->Stop() == 0);
  }
  auto daemon = DaemonProcess::Start(SpillOptions(dir));
  auto client = MustConnect(*daemon);
  for (size_t i : {0u, 2u, 3u}) CHECK(*client->MatchPrefix(std::vector<Key>{keys[i]}) == 0);
  auto leases = client->Acquire(keys);
  REQUIRE(leases.ok());
  // The old 1 MiB block of key 1 must not come back in place of the new one.
  CHECK(leases->code(1) == StatusCode::kNotFound);
  for (size_t i = 4; i < keys.size(); ++i) {
    REQUIRE(leases->code(i) == StatusCode::kOk);
    CHECK(VerifyBlock(keys[i], leases->data(i)));
  }
}

TEST_CASE("over its SSD quota a tenant loses its oldest segments whole, crypto-erased",
          "[integration][spill]") {
  TempDir spill;
  const fs::path dir = spill.path() / "spill";
  // Four 16 MiB segments of quota for 200 MiB of blocks.
  auto daemon = DaemonProcess::Start(SpillOptions(dir, 64 * kMiB, 64 * kMiB));
  auto client = MustConnect(*daemon);
  const std::vector<Key> keys = TestKeys(12, 200);
  StoreAll(*client, keys, std::vector<uint64_t>(keys.size(), kMiB));
  const PoolStats stats = MustStats(*client);
  CHECK(stats.ssd_dropped > 0);
  CHECK(stats.ssd_segments <= 4);
  CHECK(stats.ssd_payload_bytes <= 64 * kMiB);
  size_t segment_files = 0;
  for (const auto& [path, contents] : FilesUnder(dir)) segment_files += contents.size() > 0;
  CHECK(segment_files <= 4);
  // The oldest blocks went with their segments; what is left reads back exactly.
  CHECK(*client->MatchPrefix(std::span(keys).first(1)) == 0);
  const ReadCounts back = ReadAll(*client, keys);
  CHECK(back.wrong == 0);
  CHECK(back.verified > 0);
  CHECK(back.missing > 0);
}

TEST_CASE("a full spill filesystem degrades to reclaiming old segments while DRAM keeps serving",
          "[integration][spill]") {
  ScopedMount small("tmpfs", "size=40m,mode=0700");
  if (!small.ok()) {
    Unavailable("tmpfs", small.why() + "; ENOSPC is covered by the spill store tests through "
                                       "the fault seam", /*whole_test=*/true);
    return;
  }
  // The quota (1 GiB) is far above what the filesystem holds (two 16 MiB segments and a bit).
  auto daemon = DaemonProcess::Start(SpillOptions(small.dir() / "spill"));
  // Start-up said so.
  CHECK_THAT(daemon->Log(), Catch::Contains("ssd_bytes add up to 1024 MiB"));
  auto client = MustConnect(*daemon);
  const std::vector<Key> keys = TestKeys(10, 160);
  StoreAll(*client, keys, std::vector<uint64_t>(keys.size(), kMiB));
  const PoolStats stats = MustStats(*client);
  CHECK(stats.demotions > 0);
  CHECK(stats.ssd_dropped + stats.demote_failures > 0);  // the disk ran out
  // Whatever is still stored reads back exactly, and the newest blocks are all there.
  const ReadCounts back = ReadAll(*client, keys);
  CHECK(back.wrong == 0);
  const ReadCounts newest = ReadAll(*client, std::vector<Key>(keys.end() - 16, keys.end()));
  CHECK(newest.verified == 16);
  CHECK(daemon->Alive());
}

TEST_CASE("the pread/pwrite fallback serves the SSD tier when io_uring is switched off",
          "[integration][spill]") {
  TempDir spill;
  DaemonOptions options = SpillOptions(spill.path() / "spill");
  options.spill_toml = "backend = \"threads\"\n";
  auto daemon = DaemonProcess::Start(options);
  CHECK(daemon->Log().find("pread/pwrite threads") != std::string::npos);
  auto client = MustConnect(*daemon);
  const std::vector<Key> keys = TestKeys(11, 120);
  StoreAll(*client, keys, std::vector<uint64_t>(keys.size(), kMiB));
  const ReadCounts back = ReadAll(*client, keys);
  CHECK(back.wrong == 0);
  CHECK(back.verified == keys.size());
  CHECK(MustStats(*client).promotions > 0);
}

}  // namespace
}  // namespace kvtier::testing
