#include "bench/spill_bench.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "bench/bench_util.h"
#include "bench/spill_limits.h"
#include "crypto/master_key.h"
#include "crypto/secret_key.h"
#include "daemon/spill/block_device.h"
#include "daemon/spill/spill_format.h"
#include "daemon/spill/spill_store.h"

namespace kvtier::bench {
namespace {

constexpr uint64_t kBlock = kSpillBlock;
// The store's staging buffers (its I/Os in flight), as many as the raw limit's.
constexpr uint32_t kQueueDepth = kRawQueueDepth;
constexpr uint64_t kSegmentBytes = 256 * kMiB;
constexpr char kTenant[] = "kvtier-bench";
constexpr char kNamespace[] = "kvtier-bench";

struct SpillPlan {
  uint64_t pass_bytes;  // the raw file, and the bytes of every raw or store pass
  int disk_reps;        // best of, for raw and store passes alike
  uint64_t aes_working_set;
  uint64_t aes_bytes_per_rep;
  int aes_reps;
  int latency_reads;
};

SpillPlan MakeSpillPlan(bool quick) {
  if (quick) return SpillPlan{64 * kMiB, 1, 16 * kMiB, 64 * kMiB, 1, 20};
  return SpillPlan{1 * kGiB, 3, 64 * kMiB, 512 * kMiB, 3, 200};
}

double Us(uint64_t ns) { return static_cast<double>(ns) * 1e-3; }

// --- Raw disk ---

struct DiskLimits {
  std::string device;  // "io_uring", or the fallback's name
  bool direct = true;  // the file took O_DIRECT
  double write_gbps = 0;
  double read_gbps = 0;
  double qd1_read_p50_us = 0;
  double qd1_read_p99_us = 0;
};

DiskLimits MeasureDisk(const std::filesystem::path& dir, const SpillPlan& plan) {
  DiskLimits d;
  RawDisk raw(dir);
  d.device = raw.device();
  // Writes: a freshly preallocated file each time.
  for (int rep = 0; rep < plan.disk_reps; ++rep) {
    const double gbps = raw.Write(plan.pass_bytes);
    d.direct = raw.direct();
    d.write_gbps = std::max(d.write_gbps, gbps);
    std::printf("  raw %s write 2MiB qd%u (%s, fresh preallocated file): %.2f GB/s\n",
                d.device.c_str(), kRawQueueDepth, SizeName(plan.pass_bytes).c_str(), gbps);
    std::fflush(stdout);
  }
  for (int rep = 0; rep < plan.disk_reps; ++rep) {
    const double gbps = raw.Read(plan.pass_bytes);
    d.read_gbps = std::max(d.read_gbps, gbps);
    std::printf("  raw %s read 2MiB qd%u (%s): %.2f GB/s\n", d.device.c_str(), kRawQueueDepth,
                SizeName(plan.pass_bytes).c_str(), gbps);
    std::fflush(stdout);
  }
  // One 2 MiB read at a time, scattered over the file.
  const Latency qd1 = raw.ReadQd1(plan.latency_reads);
  d.qd1_read_p50_us = qd1.p50_us;
  d.qd1_read_p99_us = qd1.p99_us;
  std::printf("  raw %s read 2MiB qd1 (%d reads): p50 %.1f us  p99 %.1f us\n", d.device.c_str(),
              plan.latency_reads, d.qd1_read_p50_us, d.qd1_read_p99_us);
  return d;
}

// --- SpillStore ---

std::array<uint8_t, 16> RecordKey(uint64_t index) {
  std::array<uint8_t, 16> key{};
  std::memcpy(key.data(), "kvsb", 4);
  std::memcpy(key.data() + 8, &index, sizeof(index));
  return key;
}

struct StoreFigures {
  double write_gbps = 0;
  double read_gbps = 0;
  double latency_p50_us = 0;
  double latency_p99_us = 0;
  uint64_t verified_blocks = 0;
  uint64_t segments = 0;
};

// Record i's plaintext is block (i % slots) of `src` with i in its first 8 bytes (stamped just
// before StartWrite, which encrypts before returning).
std::span<const std::byte> StampedSource(const PrivateBuffer& src, uint64_t i) {
  const uint64_t slots = src.size() / kBlock;
  std::byte* p = src.data() + (i % slots) * kBlock;
  std::memcpy(p, &i, sizeof(i));
  return std::span<const std::byte>(p, kBlock);
}

// Stamp of every read block; whole block when `whole`.
void CheckRead(const PrivateBuffer& src, uint64_t i, const std::byte* got, bool whole) {
  uint64_t stamp = 0;
  std::memcpy(&stamp, got, sizeof(stamp));
  if (stamp != i) {
    Fail("spill read of record " + std::to_string(i) + " returned record " +
         std::to_string(stamp) + "'s stamp");
  }
  const uint64_t slots = src.size() / kBlock;
  if (whole && std::memcmp(got + 8, src.data() + (i % slots) * kBlock + 8, kBlock - 8) != 0) {
    Fail("spill read of record " + std::to_string(i) + " returned wrong bytes");
  }
}

StoreFigures MeasureStore(const std::filesystem::path& dir, const SpillPlan& plan,
                          const PrivateBuffer& src) {
  StoreFigures f;
  std::unique_ptr<BlockDevice> device = OpenSpillDevice();
  auto master = SecretKey::Random();
  CheckOk(master.status(), "random master key");
  auto tenant_key = DeriveTenantKey(*master, kTenant);
  CheckOk(tenant_key.status(), "deriving the tenant key");

  const uint64_t n = plan.pass_bytes / kBlock;
  const uint64_t per_segment = (kSegmentBytes - spill::kSegmentHeaderBytes) /
                               spill::RecordBytes(kBlock);
  f.segments = (n + per_segment - 1) / per_segment;
  SpillOptions options;
  options.dir = dir / "store";
  options.tenant = kTenant;
  options.segment_bytes = kSegmentBytes;
  options.quota_bytes = (f.segments + 1) * kSegmentBytes;
  options.max_record_payload_bytes = kBlock;
  options.staging_buffers = kQueueDepth;
  auto opened = SpillStore::Open(options, device.get(), *tenant_key, nullptr);
  CheckOk(opened.status(), "SpillStore::Open in " + options.dir.string());
  SpillStore& store = **opened;

  std::vector<SpillLocation> locations(n);
  std::array<SpillCompletion, kQueueDepth> completions{};
  // Writes: best of disk_reps; each pass after the first starts from CryptoEraseAll, so every
  // pass writes fresh segments (created, preallocated and their headers synced on the way).
  for (int rep = 0; rep < plan.disk_reps; ++rep) {
    if (rep > 0) CheckOk(store.CryptoEraseAll(), "CryptoEraseAll between write passes");
    uint32_t in_flight = 0;
    uint64_t next = 0;
    uint64_t done = 0;
    const uint64_t start = NowNs();
    while (done < n) {
      while (next < n && in_flight < kQueueDepth) {
        const auto key = RecordKey(next);
        auto location = store.StartWrite(kNamespace, key, StampedSource(src, next), next);
        CheckOk(location.status(), "spill StartWrite of record " + std::to_string(next));
        locations[next] = *location;
        CheckOk(store.Flush(), "spill Flush");
        ++in_flight;
        ++next;
      }
      const size_t got = store.Poll(completions, true);
      for (size_t k = 0; k < got; ++k) {
        const SpillCompletion& c = completions[k];
        if (!c.is_write) Fail("a read completion during the write pass");
        CheckOk(c.status, "spill write of record " + std::to_string(c.cookie));
        --in_flight;
        ++done;
      }
    }
    const uint64_t ns = NowNs() - start;
    f.write_gbps = std::max(f.write_gbps, Gbps(n * kBlock, ns));
    std::printf("  spill write 2MiB (%llu records, %llu segments of %s): %.2f GB/s\n",
                static_cast<unsigned long long>(n),
                static_cast<unsigned long long>(store.segment_count()),
                SizeName(kSegmentBytes).c_str(), Gbps(n * kBlock, ns));
    std::fflush(stdout);
  }
  {
    const uint64_t start = NowNs();
    CheckOk(store.Sync(), "spill Sync");
    std::printf("  spill Sync after the writes (untimed above): %.1f ms\n",
                static_cast<double>(NowNs() - start) * 1e-6);
  }

  // Reads: best of disk_reps, in write order, into kQueueDepth private buffers.
  const PrivateBuffer out(kQueueDepth * kBlock);
  for (int rep = 0; rep < plan.disk_reps; ++rep) {
    std::vector<uint32_t> free_out;
    for (uint32_t b = 0; b < kQueueDepth; ++b) free_out.push_back(b);
    uint64_t next = 0;
    uint64_t done = 0;
    uint64_t untimed_ns = 0;
    const uint64_t start = NowNs();
    while (done < n) {
      while (next < n && !free_out.empty()) {
        const uint32_t b = free_out.back();
        free_out.pop_back();
        const auto key = RecordKey(next);
        CheckOk(store.StartRead(locations[next], kNamespace, key,
                                std::span<std::byte>(out.data() + b * kBlock, kBlock),
                                next << 8 | b),
                "spill StartRead of record " + std::to_string(next));
        CheckOk(store.Flush(), "spill Flush");
        ++next;
      }
      const size_t got = store.Poll(completions, true);
      for (size_t k = 0; k < got; ++k) {
        const SpillCompletion& c = completions[k];
        const uint64_t i = c.cookie >> 8;
        const auto b = static_cast<uint32_t>(c.cookie & 0xff);
        if (c.is_write) Fail("a write completion during the read pass");
        CheckOk(c.status, "spill read of record " + std::to_string(i));
        const uint64_t check_start = NowNs();
        CheckRead(src, i, out.data() + b * kBlock, i % 64 == 0);
        untimed_ns += NowNs() - check_start;
        if (i % 64 == 0) ++f.verified_blocks;
        free_out.push_back(b);
        ++done;
      }
    }
    const uint64_t ns = NowNs() - start - untimed_ns;
    f.read_gbps = std::max(f.read_gbps, Gbps(n * kBlock, ns));
    std::printf("  spill read 2MiB (%llu records, stamps checked, 1 in 64 whole): %.2f GB/s\n",
                static_cast<unsigned long long>(n), Gbps(n * kBlock, ns));
    std::fflush(stdout);
  }

  // Latency: one record at a time, scattered, StartRead -> Poll(wait) -> its completion.
  std::vector<uint64_t> samples;
  const std::span<std::byte> one(out.data(), kBlock);
  for (int r = 0; r < plan.latency_reads; ++r) {
    const uint64_t i = static_cast<uint64_t>(r) * 7919 % n;
    const auto key = RecordKey(i);
    const uint64_t start = NowNs();
    CheckOk(store.StartRead(locations[i], kNamespace, key, one, i), "spill StartRead");
    size_t got = 0;
    while (got == 0) got = store.Poll(completions, true);
    samples.push_back(NowNs() - start);
    if (got != 1 || completions[0].cookie != i) Fail("spill latency read: unexpected completion");
    CheckOk(completions[0].status, "spill read of record " + std::to_string(i));
    CheckRead(src, i, one.data(), false);
  }
  f.latency_p50_us = Us(Quantile(samples, 0.5));
  f.latency_p99_us = Us(Quantile(samples, 0.99));
  std::printf("  spill read 2MiB 1 record (%d reads): p50 %.1f us  p99 %.1f us\n",
              plan.latency_reads, f.latency_p50_us, f.latency_p99_us);

  const SpillStats& s = store.stats();
  if (s.writes_failed != 0 || s.reads_failed != 0 || s.integrity_failures != 0) {
    Fail("spill store stats: " + std::to_string(s.writes_failed) + " failed writes, " +
         std::to_string(s.reads_failed) + " failed reads, " +
         std::to_string(s.integrity_failures) + " integrity failures");
  }
  for (const SpillLocation& l : locations) store.Release(l);
  std::printf("  spill store: %llu segments created, %llu crypto-erased, %llu live records left\n",
              static_cast<unsigned long long>(s.segments_created),
              static_cast<unsigned long long>(s.segments_erased),
              static_cast<unsigned long long>(s.live_records));
  return f;
}

Row Info(const std::string& metric, double value, const std::string& unit,
         const std::string& note) {
  Row r;
  r.metric = metric;
  r.value = value;
  r.unit = unit;
  r.limit_metric = note;
  r.limit = NAN;
  r.ratio = NAN;
  return r;
}

}  // namespace

std::vector<Row> RunSpillBench(const std::string& dir, bool quick) {
  const SpillPlan plan = MakeSpillPlan(quick);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) Fail("--spill: cannot create " + dir + ": " + ec.message());
  const std::filesystem::path scratch =
      std::filesystem::path(dir) / ("kvtier-bench-spill." + std::to_string(getpid()));
  std::filesystem::create_directory(scratch, ec);
  if (ec) Fail("--spill: cannot create " + scratch.string() + ": " + ec.message());
  AddDirToRemoveOnFailure(scratch.string());
  std::printf("\nspill section, store level, in %s (%s per pass, best of %d):\n",
              scratch.c_str(), SizeName(plan.pass_bytes).c_str(), plan.disk_reps);
  std::fflush(stdout);

  // Limits: the disk, then AES-GCM; both again after the store, and the better of the two
  // taken (this VM's speed drifts within a run, and its disk is faster after idle periods, so
  // a limit measured only once can sit below what the store then reaches).
  const DiskLimits disk_before = MeasureDisk(scratch, plan);
  AesMeter aes(plan.aes_working_set);
  AesLimits aes_before;
  aes_before.encrypt_gbps = aes.Encrypt(plan.aes_bytes_per_rep, plan.aes_reps);
  aes_before.decrypt_gbps = aes.Decrypt(plan.aes_bytes_per_rep, plan.aes_reps);
  std::printf("  AES-256-GCM 2MiB 1 core (best of %d, %s each): encrypt %.2f GB/s  decrypt "
              "%.2f GB/s\n",
              plan.aes_reps, SizeName(plan.aes_bytes_per_rep).c_str(), aes_before.encrypt_gbps,
              aes_before.decrypt_gbps);
  std::fflush(stdout);

  const StoreFigures store = [&] {
    const PrivateBuffer src(plan.aes_working_set);
    return MeasureStore(scratch, plan, src);
  }();

  AesLimits aes_after;
  aes_after.encrypt_gbps = aes.Encrypt(plan.aes_bytes_per_rep, plan.aes_reps);
  aes_after.decrypt_gbps = aes.Decrypt(plan.aes_bytes_per_rep, plan.aes_reps);
  std::printf("  AES-256-GCM 2MiB 1 core, after the store: encrypt %.2f GB/s  decrypt %.2f "
              "GB/s\n",
              aes_after.encrypt_gbps, aes_after.decrypt_gbps);
  const DiskLimits disk_after = MeasureDisk(scratch, plan);
  DiskLimits disk = disk_before;
  disk.write_gbps = std::max(disk_before.write_gbps, disk_after.write_gbps);
  disk.read_gbps = std::max(disk_before.read_gbps, disk_after.read_gbps);
  disk.qd1_read_p50_us = std::min(disk_before.qd1_read_p50_us, disk_after.qd1_read_p50_us);
  disk.qd1_read_p99_us = std::min(disk_before.qd1_read_p99_us, disk_after.qd1_read_p99_us);
  const double encrypt = std::max(aes_before.encrypt_gbps, aes_after.encrypt_gbps);
  const double decrypt = std::max(aes_before.decrypt_gbps, aes_after.decrypt_gbps);

  std::filesystem::remove_all(scratch, ec);
  if (ec) Fail("removing " + scratch.string() + ": " + ec.message());
  ForgetDirToRemoveOnFailure(scratch.string());

  std::vector<Row> rows;
  const std::string how =
      "this disk, " + disk.device + (disk.direct ? ", O_DIRECT" : ", BUFFERED (no O_DIRECT!)");
  rows.push_back(Info("raw O_DIRECT write 2MiB qd8", disk.write_gbps, "GB/s", how));
  rows.push_back(Info("raw O_DIRECT read 2MiB qd8", disk.read_gbps, "GB/s", how));
  rows.push_back(Info("raw O_DIRECT read 2MiB qd1 p50", disk.qd1_read_p50_us, "us", how));
  rows.push_back(Info("raw O_DIRECT read 2MiB qd1 p99", disk.qd1_read_p99_us, "us", how));
  rows.push_back(Info("AES-256-GCM encrypt 2MiB 1 core", encrypt, "GB/s", "kvtier::AesGcm"));
  rows.push_back(Info("AES-256-GCM decrypt 2MiB 1 core", decrypt, "GB/s", "kvtier::AesGcm"));
  auto throughput = [&](const std::string& metric, double value, double raw, double crypt,
                        const std::string& limit_metric) {
    Row r;
    r.metric = metric;
    r.value = value;
    r.unit = "GB/s";
    r.limit_metric = limit_metric;
    r.limit = std::min(raw, crypt);
    r.ratio = value / r.limit;
    r.target = ">= 0.8x";
    r.pass = r.ratio >= 0.8;
    rows.push_back(r);
  };
  throughput("spill write 2MiB", store.write_gbps, disk.write_gbps, encrypt,
             "min(raw write qd8, AES-GCM encrypt x 1 thread)");
  throughput("spill read 2MiB", store.read_gbps, disk.read_gbps, decrypt,
             "min(raw read qd8, AES-GCM decrypt x 1 thread)");
  // One record's read cannot beat one raw read plus decrypting it.
  const double decrypt_us = static_cast<double>(kBlock) / decrypt * 1e-3;
  auto latency = [&](const std::string& metric, double value, double raw,
                     const std::string& q) {
    Row r;
    r.metric = metric;
    r.value = value;
    r.unit = "us";
    r.limit_metric = "raw read qd1 " + q + " + AES-GCM decrypt 2MiB";
    r.limit = raw + decrypt_us;
    r.ratio = value / r.limit;
    rows.push_back(r);
  };
  latency("spill read 2MiB 1 record p50", store.latency_p50_us, disk.qd1_read_p50_us, "p50");
  latency("spill read 2MiB 1 record p99", store.latency_p99_us, disk.qd1_read_p99_us, "p99");
  return rows;
}

}  // namespace kvtier::bench
