#include "bench/daemon_spill_bench.h"

#include <unistd.h>

#include <algorithm>
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
#include "bench/daemon_process.h"
#include "bench/figures.h"
#include "bench/spill_limits.h"
#include "daemon/spill/spill_format.h"
#include "kvclient/client.h"
#include "kvclient/copy.h"

namespace kvtier::bench {
namespace {

constexpr uint64_t kBlock = kSpillBlock;
constexpr uint64_t kPutBatch = 16;
constexpr uint64_t kPromoteBatch = 8;  // = the daemon's staging buffers (I/Os in flight)
constexpr uint32_t kSpillThreads = 1;  // spill worker threads = crypto threads for the tenant
constexpr uint32_t kStagingBuffers = kRawQueueDepth;
constexpr uint64_t kSegmentBytes = 256 * kMiB;
constexpr double kDemoteAbove = 0.75;
constexpr uint32_t kTag = 0x5d;  // BenchKey tag of every block of this section
constexpr double kGoal = 0.8;

struct Plan {
  uint64_t pool_bytes;   // the daemon's tenant pool
  uint64_t total_bytes;  // put in all, far beyond the pool
  uint64_t aes_working_set;
  uint64_t aes_bytes_per_rep;
  int aes_reps;         // best of (per bracket side)
  int latency_samples;  // promotions of one block, and raw qd1 reads per bracket side
  uint64_t src_bytes;   // the client's source buffer (blocks cycle over it)

  // Blocks put before the timed demotion window: the pool fills, then one more pool's worth.
  uint64_t warmup_blocks() const { return 2 * pool_bytes / kBlock; }
  // Each raw pass moves as many bytes as the timed demotion window (and about as many as the
  // promotion figure reads), so limit and figure see this disk over the same volume: its speed
  // depends on how much has just been written (host-side caching, bursts).
  uint64_t raw_bytes() const { return total_bytes - warmup_blocks() * kBlock; }
};

Plan MakePlan(bool quick) {
  if (quick) return Plan{64 * kMiB, 256 * kMiB, 16 * kMiB, 64 * kMiB, 1, 20, 32 * kMiB};
  return Plan{256 * kMiB, 4 * kGiB, 64 * kMiB, 512 * kMiB, 3, 200, 64 * kMiB};
}

// Block i's bytes: slot (i % slots) of the source buffer, with Stamp(i) in its first 8 bytes
// and ~Stamp(i) in its last 8 (a promotion that returned another block, or a torn one, shows).
uint64_t Stamp(uint64_t i) {
  return (uint64_t{kTag} << 40) ^ i;
}

const std::byte* StampedSource(const PrivateBuffer& src, uint64_t i) {
  std::byte* p = src.data() + (i % (src.size() / kBlock)) * kBlock;
  const uint64_t head = Stamp(i);
  const uint64_t tail = ~head;
  std::memcpy(p, &head, sizeof(head));
  std::memcpy(p + kBlock - sizeof(tail), &tail, sizeof(tail));
  return p;
}

void CheckStamps(const std::byte* got, uint64_t i, const char* what) {
  uint64_t head = 0;
  uint64_t tail = 0;
  std::memcpy(&head, got, sizeof(head));
  std::memcpy(&tail, got + kBlock - sizeof(tail), sizeof(tail));
  if (head != Stamp(i) || tail != ~Stamp(i)) {
    Fail(std::string(what) + " of block " + std::to_string(i) + " returned other bytes (stamps " +
         std::to_string(head ^ (uint64_t{kTag} << 40)) + " / " +
         std::to_string(~tail ^ (uint64_t{kTag} << 40)) + ")");
  }
}

void CheckWhole(const std::byte* got, const PrivateBuffer& src, uint64_t i, const char* what) {
  const std::byte* want = src.data() + (i % (src.size() / kBlock)) * kBlock;
  if (std::memcmp(got + 8, want + 8, kBlock - 16) != 0) {
    Fail(std::string(what) + " of block " + std::to_string(i) + " returned wrong bytes");
  }
}

PoolStats GetStats(Client* client) {
  auto stats = client->Stats();
  CheckOk(stats.status(), "Stats");
  return *stats;
}

// Fails on any spill failure the daemon counted: a figure with failures measured a broken path.
void CheckNoSpillFailures(const PoolStats& s, const std::string& when) {
  if (s.demote_failures != 0 || s.promote_failures != 0 || s.integrity_failures != 0 ||
      s.ssd_dropped != 0) {
    Fail("kvtierd counted spill failures " + when + ": " + std::to_string(s.demote_failures) +
         " demote, " + std::to_string(s.promote_failures) + " promote, " +
         std::to_string(s.integrity_failures) + " integrity, " + std::to_string(s.ssd_dropped) +
         " SSD records dropped");
  }
}

// Stats once the daemon's spill worker is idle: demotions and promotions unchanged for 100 ms
// and dirty bytes within the demotion threshold (so no demotion is left to start). The limits
// measured next must not share the disk with the daemon.
PoolStats Settle(Client* client, uint64_t dirty_limit) {
  PoolStats prev = GetStats(client);
  for (int i = 0; i < 300; ++i) {  // 30 s
    usleep(100000);
    const PoolStats cur = GetStats(client);
    if (cur.demotions == prev.demotions && cur.promotions == prev.promotions &&
        cur.dirty_bytes <= dirty_limit) {
      return cur;
    }
    prev = cur;
  }
  Fail("kvtierd's demotions did not settle within 30 s");
}

std::vector<Key> KeysOf(std::span<const uint64_t> indexes) {
  std::vector<Key> keys(indexes.size());
  for (size_t j = 0; j < indexes.size(); ++j) {
    keys[j] = BenchKey(kTag, indexes[j]);
  }
  return keys;
}

// A limit measured just before and just after its figure; the figure's limit is the mean.
struct Bracket {
  double before = 0;
  double after = 0;
  double Mean() const { return (before + after) / 2; }
};

struct DemoteFigure {
  double gbps = 0;      // demotions over the window
  double put_gbps = 0;  // puts over the same window
  uint64_t warmup_blocks = 0;
  uint64_t window_blocks = 0;   // put in the window
  uint64_t window_demoted = 0;  // demoted in the window
  double seconds = 0;
};

// Puts blocks 0..n-1 in batches of kPutBatch (Reserve -> CopyToPool -> Commit). The window
// starts at the first batch after 2 pools' worth of blocks: by then the pool has filled (the
// first pool's worth goes in at memcpy speed), demotion runs in the background, and each
// reserve waits for a demotion to free a clean slot. Demoted bytes over the window, from
// Stats().demotions sampled at its ends, is the figure: it is the daemon's own count of what
// reached the SSD tier. The put rate over the same window must come out the same in steady
// state (each put waits for one demotion), give or take the up to 2 x 8 demotions in flight
// and the clean blocks left over at the window's start; it is printed beside it to show that.
DemoteFigure MeasureDemotion(Client* client,
                             const Plan& plan,
                             const PrivateBuffer& src,
                             uint64_t n) {
  DemoteFigure f;
  f.warmup_blocks = plan.warmup_blocks();
  if (n < f.warmup_blocks + 2 * kPutBatch || f.warmup_blocks % kPutBatch != 0) {
    Fail("the demotion plan leaves no timed window after the pool has filled");
  }
  const std::vector<uint64_t> sizes(kPutBatch, kBlock);
  std::vector<uint64_t> indexes;
  PoolStats start_stats;
  uint64_t start_ns = 0;
  for (uint64_t first = 0; first < n; first += kPutBatch) {
    if (first == f.warmup_blocks) {
      start_stats = GetStats(client);
      start_ns = NowNs();
      if (start_stats.evictions == 0 || start_stats.demotions == 0) {
        Fail("the timed demotion window would start before the pool is full (" +
             std::to_string(start_stats.evictions) + " evictions, " +
             std::to_string(start_stats.demotions) + " demotions after " + std::to_string(first) +
             " puts)");
      }
    }
    const uint64_t count = std::min(kPutBatch, n - first);
    indexes.resize(count);
    for (uint64_t j = 0; j < count; ++j) {
      indexes[j] = first + j;
    }
    const std::vector<Key> keys = KeysOf(indexes);
    auto reserved = client->Reserve(keys, std::span(sizes).first(count));
    CheckOk(reserved.status(), "Reserve of blocks " + std::to_string(first) + "..");
    for (uint64_t j = 0; j < count; ++j) {
      if (reserved->code(j) != StatusCode::kOk) {
        Fail("Reserve of block " + std::to_string(first + j) + " beyond the pool: " +
             std::string(StatusCodeName(reserved->code(j))) + " (it should wait for demotion)");
      }
      const std::span<std::byte> slot = reserved->data(j);
      if (slot.size() != kBlock) Fail("Reserve gave a slot of the wrong size");
      CopyToPool(slot.data(), StampedSource(src, first + j), kBlock);
    }
    CheckOk(reserved->Commit(), "Commit of blocks " + std::to_string(first) + "..");
  }
  const uint64_t ns = NowNs() - start_ns;
  const PoolStats end_stats = GetStats(client);
  f.window_blocks = n - f.warmup_blocks;
  f.window_demoted = end_stats.demotions - start_stats.demotions;
  f.seconds = Seconds(ns);
  f.gbps = Gbps(f.window_demoted * kBlock, ns);
  f.put_gbps = Gbps(f.window_blocks * kBlock, ns);
  CheckNoSpillFailures(end_stats, "while demoting");
  return f;
}

struct PromoteFigure {
  double gbps = 0;
  uint64_t blocks = 0;
  uint64_t verified_whole = 0;
  double seconds = 0;
};

// Acquire (batches of kPromoteBatch) -> stamps checked in place, one in 64 compared whole
// (untimed) -> Release. No copy out of the pool: the figure is the promotion (read + decrypt
// into a DRAM slot), which is complete when Acquire answers.
PromoteFigure MeasurePromotion(Client* client,
                               const PrivateBuffer& src,
                               std::span<const uint64_t> order) {
  PromoteFigure f;
  uint64_t untimed_ns = 0;
  const uint64_t start = NowNs();
  for (size_t first = 0; first < order.size(); first += kPromoteBatch) {
    const std::span<const uint64_t> batch =
        order.subspan(first, std::min<size_t>(kPromoteBatch, order.size() - first));
    const std::vector<Key> keys = KeysOf(batch);
    auto leases = client->Acquire(keys);
    CheckOk(leases.status(), "Acquire of SSD-only blocks " + std::to_string(batch[0]) + "..");
    for (size_t j = 0; j < batch.size(); ++j) {
      const uint64_t i = batch[j];
      if (leases->code(j) != StatusCode::kOk) {
        Fail("Acquire of SSD-only block " + std::to_string(i) + ": " +
             std::string(StatusCodeName(leases->code(j))));
      }
      if (leases->info(j).tier != Tier::kSsd) {
        Fail("Acquire of block " + std::to_string(i) + " found it in DRAM: not a promotion");
      }
      const std::span<const std::byte> block = leases->data(j);
      if (block.size() != kBlock) Fail("Acquire of block " + std::to_string(i) + ": wrong size");
      CheckStamps(block.data(), i, "promotion");
      if ((first + j) % 64 == 0) {
        const uint64_t v0 = NowNs();
        CheckWhole(block.data(), src, i, "promotion");
        ++f.verified_whole;
        untimed_ns += NowNs() - v0;
      }
    }
    CheckOk(leases->Release(), "Release of promoted blocks");
  }
  const uint64_t ns = NowNs() - start - untimed_ns;
  if (f.verified_whole == 0) Fail("promotion verified no block whole");
  f.blocks = order.size();
  f.seconds = Seconds(ns);
  f.gbps = Gbps(f.blocks * kBlock, ns);
  return f;
}

// Acquire of one SSD-only block per sample, timed to its reply; checked whole and released
// (untimed).
Latency MeasurePromoteLatency(Client* client,
                              const PrivateBuffer& src,
                              std::span<const uint64_t> keys) {
  std::vector<uint64_t> samples;
  for (const uint64_t i : keys) {
    const Key key = BenchKey(kTag, i);
    const uint64_t start = NowNs();
    auto leases = client->Acquire(std::span(&key, 1));
    samples.push_back(NowNs() - start);
    CheckOk(leases.status(), "Acquire of SSD-only block " + std::to_string(i));
    if (leases->code(0) != StatusCode::kOk) {
      Fail("Acquire of SSD-only block " + std::to_string(i) + ": " +
           std::string(StatusCodeName(leases->code(0))));
    }
    if (leases->info(0).tier != Tier::kSsd) {
      Fail("Acquire of block " + std::to_string(i) + " found it in DRAM: not a promotion");
    }
    const std::span<const std::byte> block = leases->data(0);
    if (block.size() != kBlock) Fail("Acquire of block " + std::to_string(i) + ": wrong size");
    CheckStamps(block.data(), i, "promotion");
    CheckWhole(block.data(), src, i, "promotion");
    CheckOk(leases->Release(), "Release of a promoted block");
  }
  Latency l;
  l.p50_us = static_cast<double>(Quantile(samples, 0.5)) * 1e-3;
  l.p99_us = static_cast<double>(Quantile(samples, 0.99)) * 1e-3;
  return l;
}

std::string SpillNote(const PoolStats& s) {
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "kvtierd spill counters (daemon section, at the end): %llu demotions, %llu "
                "promotions, %llu demote failures, %llu promote failures, %llu integrity "
                "failures, %llu SSD records dropped; %llu segments, %llu blocks on SSD (%llu "
                "SSD-only)",
                static_cast<unsigned long long>(s.demotions),
                static_cast<unsigned long long>(s.promotions),
                static_cast<unsigned long long>(s.demote_failures),
                static_cast<unsigned long long>(s.promote_failures),
                static_cast<unsigned long long>(s.integrity_failures),
                static_cast<unsigned long long>(s.ssd_dropped),
                static_cast<unsigned long long>(s.ssd_segments),
                static_cast<unsigned long long>(s.ssd_blocks),
                static_cast<unsigned long long>(s.ssd_only_blocks));
  return buf;
}

// The section's steps, in the order Run calls them; each leaves what the next needs.
class Section {
 public:
  Section(const DaemonSpillBenchOptions& options, const std::filesystem::path& scratch)
      : options_(options),
        plan_(MakePlan(options.quick)),
        n_(plan_.total_bytes / kBlock),
        dirty_limit_(static_cast<uint64_t>(kDemoteAbove * static_cast<double>(plan_.pool_bytes))),
        scratch_(scratch),
        raw_(std::make_unique<RawDisk>(scratch)),
        aes_(plan_.aes_working_set),
        src_(plan_.src_bytes) {}

  DaemonSpillBenchResult Run() {
    StartDaemon();
    Demote();
    Locate();
    Promote();
    PromoteOne();
    Stop();
    return Rows();
  }

 private:
  void StartDaemon();
  void Demote();
  void Locate();
  void Promote();
  void PromoteOne();
  void Stop();
  DaemonSpillBenchResult Rows() const;

  void RawLine(const char* op, const char* when, double gbps) const {
    std::printf("  raw %s %s 2MiB qd%u (%s%s) %s: %.2f GB/s\n", raw_device_.c_str(), op,
                kRawQueueDepth, SizeName(plan_.raw_bytes()).c_str(),
                std::string(op) == "write" ? ", fresh preallocated file" : "", when, gbps);
    std::fflush(stdout);
  }
  void AesLine(const char* op, const char* when, double gbps) const {
    std::printf("  AES-256-GCM %s 2MiB 1 core (best of %d, %s) %s: %.2f GB/s\n", op, plan_.aes_reps,
                SizeName(plan_.aes_bytes_per_rep).c_str(), when, gbps);
    std::fflush(stdout);
  }
  void Qd1Line(const char* when, const Latency& l) const {
    std::printf("  raw %s read 2MiB qd1 (%d reads) %s: p50 %.1f us  p99 %.1f us\n",
                raw_device_.c_str(), plan_.latency_samples, when, l.p50_us, l.p99_us);
    std::fflush(stdout);
  }

  const DaemonSpillBenchOptions& options_;
  const Plan plan_;
  const uint64_t n_;            // blocks put
  const uint64_t dirty_limit_;  // demote_above x pool
  const std::filesystem::path scratch_;
  std::unique_ptr<RawDisk> raw_;
  std::string raw_device_;
  bool raw_direct_ = true;
  AesMeter aes_;
  const PrivateBuffer src_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<Client> client_;
  // Limits around each figure.
  Bracket write_, encrypt_, read_, decrypt_, qd1_p50_, qd1_p99_;
  // Figures.
  DemoteFigure demote_;
  PromoteFigure promote_;
  Latency one_;
  // Blocks by what happens to them after the puts.
  std::vector<uint64_t> promote_keys_;  // promoted in batches, oldest first
  std::vector<uint64_t> latency_keys_;  // promoted one at a time
  PoolStats after_promote_;
  PoolStats end_;
};

void Section::StartDaemon() {
  // The SSD quota holds every block put (records of 2 MiB + header, 4 KiB aligned) with two
  // segments to spare, so no segment is reclaimed and no block lost.
  const uint64_t per_segment =
      (kSegmentBytes - spill::kSegmentHeaderBytes) / spill::RecordBytes(kBlock);
  const uint64_t segments = (n_ + per_segment - 1) / per_segment + 2;
  DaemonOptions d;
  d.binary = options_.kvtierd;
  d.dram_bytes = plan_.pool_bytes;
  d.max_blocks = 0;  // the daemon's default for dram_bytes + ssd_bytes
  d.poll_spin_us = options_.poll_spin_us;
  DaemonSpillOptions sp;
  sp.dir = (scratch_ / "spill").string();
  sp.ssd_bytes = segments * kSegmentBytes;
  sp.segment_bytes = kSegmentBytes;
  sp.threads = kSpillThreads;
  sp.staging_buffers = kStagingBuffers;
  sp.queue_depth = kDeviceQueue;
  sp.demote_above = kDemoteAbove;
  d.spill = sp;
  std::printf(
      "\nspill section, through kvtierd, in %s (pool %s, SSD quota %s in %s segments, "
      "%u spill thread, %u staging buffers, demote_above %.2f; %s of 2 MiB blocks put):\n",
      scratch_.c_str(), SizeName(plan_.pool_bytes).c_str(), SizeName(sp.ssd_bytes).c_str(),
      SizeName(kSegmentBytes).c_str(), sp.threads, sp.staging_buffers, sp.demote_above,
      SizeName(plan_.total_bytes).c_str());
  std::fflush(stdout);
  raw_device_ = raw_->device();

  daemon_ = DaemonProcess::Start(d);
  ClientOptions co;
  co.socket_path = daemon_->socket_path();
  co.name_space = "kvtier-bench-spill";
  co.spin_us = options_.client_spin_us;
  auto connected = Client::Connect(co);
  CheckOk(connected.status(), "connecting to the spill kvtierd at " + co.socket_path);
  client_ = std::move(*connected);
  if (client_->pool().size() != plan_.pool_bytes) {
    Fail("the spill kvtierd's pool has the wrong size");
  }
  const PoolStats s = GetStats(client_.get());
  if (s.ssd_quota_bytes != sp.ssd_bytes) {
    Fail("the spill kvtierd reports an SSD quota of " + std::to_string(s.ssd_quota_bytes) +
         " bytes, not " + std::to_string(sp.ssd_bytes));
  }
  std::printf("  kvtierd pid %d up in %.1f s; raw limits through %s on the same filesystem\n",
              static_cast<int>(daemon_->pid()), daemon_->startup_seconds(), raw_device_.c_str());
  std::fflush(stdout);
}

// Demotion, between raw writes and AES encrypts.
void Section::Demote() {
  write_.before = raw_->Write(plan_.raw_bytes());
  raw_direct_ = raw_->direct();
  RawLine("write", "before demotion", write_.before);
  encrypt_.before = aes_.Encrypt(plan_.aes_bytes_per_rep, plan_.aes_reps);
  AesLine("encrypt", "before demotion", encrypt_.before);
  demote_ = MeasureDemotion(client_.get(), plan_, src_, n_);
  std::printf(
      "  demote 2MiB batch%llu (kvtierd): %.2f GB/s demoted (%llu blocks in %.2f s, "
      "after %llu blocks put to fill the pool and settle); puts over the same window "
      "%.2f GB/s (%llu blocks)\n",
      static_cast<unsigned long long>(kPutBatch), demote_.gbps,
      static_cast<unsigned long long>(demote_.window_demoted), demote_.seconds,
      static_cast<unsigned long long>(demote_.warmup_blocks), demote_.put_gbps,
      static_cast<unsigned long long>(demote_.window_blocks));
  std::fflush(stdout);
  Settle(client_.get(), dirty_limit_);
  encrypt_.after = aes_.Encrypt(plan_.aes_bytes_per_rep, plan_.aes_reps);
  AesLine("encrypt", "after demotion", encrypt_.after);
  write_.after = raw_->Write(plan_.raw_bytes());
  raw_direct_ = raw_direct_ && raw_->direct();
  RawLine("write", "after demotion", write_.after);
}

// Where each block is: MatchPrefix over every key (and the count Stats gives). The blocks still
// in DRAM (the newest, the dirty ones among them) are removed, so that every promotion finds a
// free or clean slot and none waits for a demotion (demote_above of the pool would otherwise
// stay dirty and pinned). Of the SSD-only blocks, latency_samples spread over the set are kept
// for single promotions; the rest are promoted in batches in key order (oldest first, the
// order they were demoted in).
void Section::Locate() {
  const PoolStats settled = Settle(client_.get(), dirty_limit_);
  if (settled.committed_blocks != n_) {
    Fail("kvtierd holds " + std::to_string(settled.committed_blocks) + " blocks, not the " +
         std::to_string(n_) + " put (evictions: " + std::to_string(settled.evictions) + ")");
  }
  std::vector<uint64_t> all(n_);
  for (uint64_t i = 0; i < n_; ++i) {
    all[i] = i;
  }
  std::vector<Tier> tiers(n_);
  auto matched = client_->MatchPrefix(KeysOf(all), tiers);
  CheckOk(matched.status(), "MatchPrefix over every block");
  if (*matched != n_) {
    Fail("MatchPrefix matched " + std::to_string(*matched) + " of " + std::to_string(n_) +
         " blocks put");
  }
  std::vector<uint64_t> ssd_only;
  std::vector<uint64_t> in_dram;
  for (uint64_t i = 0; i < n_; ++i) {
    if (tiers[i] == Tier::kSsd) {
      ssd_only.push_back(i);
    } else if (tiers[i] == Tier::kDram) {
      in_dram.push_back(i);
    } else {
      Fail("MatchPrefix gave block " + std::to_string(i) + " tier " +
           std::to_string(static_cast<int>(tiers[i])));
    }
  }
  if (ssd_only.size() != settled.ssd_only_blocks) {
    Fail("MatchPrefix finds " + std::to_string(ssd_only.size()) + " SSD-only blocks, Stats " +
         std::to_string(settled.ssd_only_blocks));
  }
  std::vector<StatusCode> codes(in_dram.size());
  CheckOk(client_->Remove(KeysOf(in_dram), codes), "Remove of the blocks in DRAM");
  for (size_t j = 0; j < in_dram.size(); ++j) {
    if (codes[j] != StatusCode::kOk) {
      Fail("Remove of block " + std::to_string(in_dram[j]) + ": " +
           std::string(StatusCodeName(codes[j])));
    }
  }

  const auto latency_n = static_cast<size_t>(plan_.latency_samples);
  if (ssd_only.size() < latency_n + 8 * kPromoteBatch) {
    Fail("only " + std::to_string(ssd_only.size()) + " SSD-only blocks to promote");
  }
  std::vector<bool> for_latency(ssd_only.size(), false);
  const size_t stride = ssd_only.size() / latency_n;
  for (size_t j = 0; j < latency_n; ++j) {
    for_latency[j * stride + stride / 2] = true;
  }
  for (size_t k = 0; k < ssd_only.size(); ++k) {
    (for_latency[k] ? latency_keys_ : promote_keys_).push_back(ssd_only[k]);
  }
  std::printf(
      "  after the puts: %zu blocks SSD-only, %zu in DRAM (removed), %llu demotions, "
      "%llu evictions; %zu to promote in batches of %llu, %zu one at a time\n",
      ssd_only.size(), in_dram.size(), static_cast<unsigned long long>(settled.demotions),
      static_cast<unsigned long long>(settled.evictions), promote_keys_.size(),
      static_cast<unsigned long long>(kPromoteBatch), latency_keys_.size());
  std::fflush(stdout);
}

// Promotion, between raw reads and AES decrypts.
void Section::Promote() {
  read_.before = raw_->Read(plan_.raw_bytes());
  RawLine("read", "before promotion", read_.before);
  decrypt_.before = aes_.Decrypt(plan_.aes_bytes_per_rep, plan_.aes_reps);
  AesLine("decrypt", "before promotion", decrypt_.before);
  const PoolStats before = GetStats(client_.get());
  promote_ = MeasurePromotion(client_.get(), src_, promote_keys_);
  after_promote_ = Settle(client_.get(), dirty_limit_);
  const uint64_t promotions = after_promote_.promotions - before.promotions;
  std::printf(
      "  promote 2MiB batch%llu (kvtierd): %.2f GB/s (%llu blocks in %.2f s, %llu "
      "checked whole; %llu promotions and %llu demotions counted meanwhile)\n",
      static_cast<unsigned long long>(kPromoteBatch), promote_.gbps,
      static_cast<unsigned long long>(promote_.blocks), promote_.seconds,
      static_cast<unsigned long long>(promote_.verified_whole),
      static_cast<unsigned long long>(promotions),
      static_cast<unsigned long long>(after_promote_.demotions - before.demotions));
  std::fflush(stdout);
  if (promotions != promote_.blocks) {
    Fail("kvtierd counted " + std::to_string(promotions) + " promotions for " +
         std::to_string(promote_.blocks) + " SSD-only blocks acquired");
  }
  CheckNoSpillFailures(after_promote_, "while promoting");
  decrypt_.after = aes_.Decrypt(plan_.aes_bytes_per_rep, plan_.aes_reps);
  AesLine("decrypt", "after promotion", decrypt_.after);
  read_.after = raw_->Read(plan_.raw_bytes());
  RawLine("read", "after promotion", read_.after);
}

// One promotion at a time, between raw reads at queue depth 1.
void Section::PromoteOne() {
  const Latency before = raw_->ReadQd1(plan_.latency_samples);
  Qd1Line("before", before);
  one_ = MeasurePromoteLatency(client_.get(), src_, latency_keys_);
  std::printf(
      "  promote 1x2MiB (kvtierd, %zu acquires of one SSD-only block): p50 %.1f us  "
      "p99 %.1f us\n",
      latency_keys_.size(), one_.p50_us, one_.p99_us);
  const Latency after = raw_->ReadQd1(plan_.latency_samples);
  Qd1Line("after", after);
  qd1_p50_ = {before.p50_us, after.p50_us};
  qd1_p99_ = {before.p99_us, after.p99_us};
}

void Section::Stop() {
  end_ = Settle(client_.get(), dirty_limit_);
  if (end_.promotions - after_promote_.promotions != latency_keys_.size()) {
    Fail("kvtierd counted " + std::to_string(end_.promotions - after_promote_.promotions) +
         " promotions for " + std::to_string(latency_keys_.size()) + " single acquires");
  }
  CheckNoSpillFailures(end_, "at the end");
  client_.reset();
  if (!daemon_->Stop()) Fail("the spill kvtierd did not stop cleanly");
  daemon_.reset();
  raw_.reset();  // closes and removes the raw file
}

DaemonSpillBenchResult Section::Rows() const {
  DaemonSpillBenchResult result;
  result.note = SpillNote(end_);
  const std::string disk_note = raw_direct_ ? "" : " [BUFFERED: no O_DIRECT!]";
  auto throughput = [&](const std::string& metric, double value, double disk, double crypt,
                        const std::string& limit_metric) {
    Row r;
    r.metric = metric;
    r.value = value;
    r.unit = "GB/s";
    r.limit_metric = limit_metric + disk_note;
    r.limit = std::min(disk, crypt * kSpillThreads);
    r.ratio = value / r.limit;
    r.target = ">= " + Fixed(kGoal, 1) + "x";
    r.pass = r.ratio >= kGoal;
    result.rows.push_back(r);
  };
  throughput("demote 2MiB batch" + std::to_string(kPutBatch) + " (kvtierd)", demote_.gbps,
             write_.Mean(), encrypt_.Mean(), "mean before/after: min(raw write qd8, AES x1)");
  throughput("promote 2MiB batch" + std::to_string(kPromoteBatch) + " (kvtierd)", promote_.gbps,
             read_.Mean(), decrypt_.Mean(), "mean before/after: min(raw read qd8, AES x1)");
  // One promotion cannot beat one raw read plus decrypting it (as the store-level rows).
  const double decrypt_us = static_cast<double>(kBlock) / decrypt_.Mean() * 1e-3;
  auto latency = [&](const std::string& q, double value, const Bracket& raw) {
    Row r;
    r.metric = "promote 1x2MiB " + q + " (kvtierd)";
    r.value = value;
    r.unit = "us";
    r.limit_metric = "mean before/after: raw qd1 read " + q + " + AES" + disk_note;
    r.limit = raw.Mean() + decrypt_us;
    r.ratio = value / r.limit;
    result.rows.push_back(r);
  };
  latency("p50", one_.p50_us, qd1_p50_);
  latency("p99", one_.p99_us, qd1_p99_);
  return result;
}

}  // namespace

DaemonSpillBenchResult RunDaemonSpillBench(const DaemonSpillBenchOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) Fail("--spill: cannot create " + options.dir + ": " + ec.message());
  const std::filesystem::path scratch =
      std::filesystem::absolute(options.dir) / ("kvtier-bench-dspill." + std::to_string(getpid()));
  std::filesystem::create_directory(scratch, ec);
  if (ec) Fail("--spill: cannot create " + scratch.string() + ": " + ec.message());
  AddDirToRemoveOnFailure(scratch.string());
  DaemonSpillBenchResult result = Section(options, scratch).Run();
  std::filesystem::remove_all(scratch, ec);
  if (ec) Fail("removing " + scratch.string() + ": " + ec.message());
  ForgetDirToRemoveOnFailure(scratch.string());
  return result;
}

}  // namespace kvtier::bench
