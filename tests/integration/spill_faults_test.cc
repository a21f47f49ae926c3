// Spill disk faults through the real daemon: kvtierd-faults (kvtierd with its spill devices
// wrapped in SwitchedDevice, tests/support/fault_switch.h) serves real clients over its real
// socket while the test switches the disk's faults on and off: every write failing with EIO or
// ENOSPC, every read failing, no space for new segments, a slow disk, a disk that holds its I/O.
// The I/O that does happen is real (io_uring, or the pread/pwrite fallback, on real files).
// No assertion is about time: waits are for conditions, with liveness bounds only.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/fault_plan.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kMiB = 1 << 20;

// The control and report files of one kvtierd-faults, and the plans written to them.
class Faults {
 public:
  fs::path control() const { return dir_.path() / "faults"; }
  fs::path report_path() const { return dir_.path() / "faults.report"; }

  // Writes `plan` and waits until the daemon reports it in force on every spill device.
  void Set(FaultPlan plan) {
    plan.seq = ++seq_;
    REQUIRE(WriteFaultPlan(control(), plan));
    const bool applied = WaitUntil([&] {
      const std::optional<FaultReport> r = Report();
      return r.has_value() && r->plan == plan.seq;
    });
    INFO("report: " << ReadFile(report_path()));
    REQUIRE(applied);
  }
  void Clear() { Set(FaultPlan{}); }

  std::optional<FaultReport> Report() const { return ParseFaultReport(ReadFile(report_path())); }
  FaultReport MustReport() const {
    const std::optional<FaultReport> r = Report();
    INFO("report: " << ReadFile(report_path()));
    REQUIRE(r.has_value());
    return *r;
  }
  // Waits until the report satisfies `condition` (a liveness bound of 60 s, not a timing check).
  FaultReport WaitFor(const std::function<bool(const FaultReport&)>& condition) const {
    const bool met = WaitUntil(
        [&] {
          const std::optional<FaultReport> r = Report();
          return r.has_value() && condition(*r);
        },
        60000);
    INFO("report: " << ReadFile(report_path()));
    REQUIRE(met);
    return MustReport();
  }

  // A 64 MiB pool (demotions start above 48 MiB dirty) and a 1 GiB SSD tier on this disk.
  DaemonOptions Options() const {
    DaemonOptions o;
    o.dram_bytes = 64 * kMiB;
    o.slab_bytes = 2 * kMiB;
    o.max_block_bytes = 2 * kMiB;
    o.spill_dir = dir_.path() / "spill";
    o.ssd_bytes = 1024 * kMiB;
    o.segment_bytes = 16 * kMiB;
    o.binary = KVTIERD_FAULTS_PATH;
    o.environment = {{"KVTIER_FAULT_CONTROL", control().string()},
                     {"KVTIER_FAULT_REPORT", report_path().string()}};
    return o;
  }

 private:
  TempDir dir_;
  uint64_t seq_ = 0;
};

std::unique_ptr<Client> MustConnect(const DaemonProcess& d) {
  auto c = Client::Connect({.socket_path = d.socket_path(), .name_space = "faults"});
  if (!c.ok()) FAIL("connect: " << c.status().ToString());
  return std::move(*c);
}

// Reserves, fills and commits `keys` (1 MiB each) in batches of 8, then acquires each batch
// back at once and checks it byte for byte: the work of an engine that stores and reads blocks.
// `reused`: each batch is also looked up while in DRAM, as an engine matching a prefix it
// stored before: evidence of reuse, which the default policy ("reuse") wants before it spends
// an SSD write once the SSD tier has counted as full (docs/cache-policy.md).
void StoreAndReadBack(Client& client, const std::vector<Key>& keys, bool reused = false) {
  constexpr size_t kBatch = 8;
  for (size_t at = 0; at < keys.size(); at += kBatch) {
    const size_t n = std::min(kBatch, keys.size() - at);
    const std::vector<Key> k(keys.begin() + static_cast<std::ptrdiff_t>(at),
                             keys.begin() + static_cast<std::ptrdiff_t>(at + n));
    StoreBlocks(client, k, kMiB);
    if (reused) REQUIRE(*client.MatchPrefix(k) == n);
    auto leases = client.Acquire(k);
    REQUIRE(leases.ok());
    for (size_t i = 0; i < n; ++i) {
      INFO("key " << at + i);
      REQUIRE(leases->code(i) == StatusCode::kOk);
      CHECK(VerifyBlock(k[i], leases->data(i)));
    }
  }
}

PoolStats MustStats(Client& client) {
  auto s = client.Stats();
  REQUIRE(s.ok());
  return *s;
}

// Another engine, on a thread of its own and its own connection, acquiring `keys` once and
// checking what it gets. No Catch assertion runs on its thread (Catch2 v2's are not
// thread-safe): the test reads the outcome after join().
class OtherEngine {
 public:
  OtherEngine(const DaemonProcess& daemon, std::vector<Key> keys)
      : socket_(daemon.socket_path()), keys_(std::move(keys)), thread_([this] { Run(); }) {}
  ~OtherEngine() {
    if (thread_.joinable()) thread_.join();
  }
  bool done() const { return done_.load(); }
  // Waits for the acquire's answer.
  void Join() { thread_.join(); }
  // After Join(): how the acquire ended ("" if it was carried out) and what it brought.
  const std::string& error() const { return error_; }
  const ReadCounts& back() const { return back_; }

 private:
  void Run() {
    // Its wait lasts as long as the disk holds the reads, and that is the point.
    auto client = Client::Connect(
        {.socket_path = socket_, .name_space = "faults", .timeout_ms = 300000});
    if (!client.ok()) {
      error_ = client.status().ToString();
    } else if (auto leases = (*client)->Acquire(keys_); !leases.ok()) {
      error_ = leases.status().ToString();
    } else {
      for (size_t i = 0; i < keys_.size(); ++i) {
        if (leases->code(i) != StatusCode::kOk) {
          ++back_.missing;
        } else if (VerifyBlock(keys_[i], leases->data(i))) {
          ++back_.verified;
        } else {
          ++back_.wrong;
        }
      }
    }
    done_ = true;
  }

  const std::string socket_;
  const std::vector<Key> keys_;
  std::string error_;  // written by the thread, read after join
  ReadCounts back_;      // written by the thread, read after join
  std::atomic<bool> done_{false};
  std::thread thread_;
};

std::vector<Tier> TiersOf(Client& client, const std::vector<Key>& keys) {
  std::vector<Tier> tiers(keys.size(), Tier::kNone);
  REQUIRE(client.MatchPrefix(keys, tiers).ok());
  return tiers;
}

bool AllIn(const std::vector<Tier>& tiers, Tier tier) {
  return std::all_of(tiers.begin(), tiers.end(), [&](Tier t) { return t == tier; });
}

// The value of a counter series in `kvtierctl metrics` for tenant "test", or -1.
int64_t Metric(const DaemonProcess& daemon, const std::string& series) {
  std::string out;
  if (RunCtl(daemon, {"metrics"}, &out) != 0) return -1;
  const std::string prefix = series + "{tenant=\"test\"} ";
  const size_t at = out.find(prefix);
  if (at == std::string::npos) return -1;
  return std::stoll(out.substr(at + prefix.size()));
}

// A field of tenant "test" in `kvtierctl --json stats`, or -1.
int64_t CtlStat(const DaemonProcess& daemon, const std::string& field) {
  std::string out;
  if (RunCtl(daemon, {"--json", "stats"}, &out) != 0) return -1;
  const std::string prefix = "\"" + field + "\": ";
  const size_t at = out.find(prefix);
  if (at == std::string::npos) return -1;
  return std::stoll(out.substr(at + prefix.size()));
}

// Waits until the daemon has no demotion or promotion on its way and the disk no I/O: every
// write ordered so far has completed (the counters are final).
void WaitQuiet(const DaemonProcess& daemon, const Faults& faults) {
  const bool quiet = WaitUntil(
      [&] {
        const std::optional<FaultReport> r = faults.Report();
        return CtlStat(daemon, "demotions_in_flight") == 0 &&
               CtlStat(daemon, "promotions_in_flight") == 0 && r.has_value() &&
               r->in_flight == 0;
      },
      60000);
  INFO("report: " << ReadFile(faults.report_path()));
  REQUIRE(quiet);
}

// Demotes `keys` and leaves them on SSD only: 96 other blocks (owner `pusher`) through the 64 MiB
// pool demote the coldest dirty blocks, `keys` first; once every write has completed, the
// operator's `kvtierctl evict --tier dram` drops what DRAM holds (copies of SSD blocks stay on
// SSD; the rest, the newest pushers, is dropped). Eviction alone would not do: a block demoted
// later goes to the cold end, ahead of older untouched copies. StoreOnSsd stores `keys` first.
void PushOut(const DaemonProcess& daemon, const Faults& faults, Client& client,
             const std::vector<Key>& keys, uint64_t pusher) {
  StoreAndReadBack(client, TestKeys(pusher, 96));
  WaitQuiet(daemon, faults);
  std::string out;
  REQUIRE(RunCtl(daemon, {"evict", "--tenant", "test", "--tier", "dram"}, &out) == 0);
  INFO(out);
  REQUIRE(AllIn(TiersOf(client, keys), Tier::kSsd));
}

void StoreOnSsd(const DaemonProcess& daemon, const Faults& faults, Client& client,
                const std::vector<Key>& keys, uint64_t pusher) {
  StoreAndReadBack(client, keys);
  PushOut(daemon, faults, client, keys, pusher);
}

// After StoreOnSsd (DRAM empty): 52 blocks (owner `owner`) in DRAM, 48 of them dirty (the limit)
// and 4 copies of SSD blocks, all writes completed; 12 slots stay free.
std::vector<Key> FillDram(const DaemonProcess& daemon, const Faults& faults, Client& client,
                          uint64_t owner) {
  const std::vector<Key> keys = TestKeys(owner, 52);
  StoreAndReadBack(client, keys);
  WaitQuiet(daemon, faults);
  REQUIRE(AllIn(TiersOf(client, keys), Tier::kDram));
  return keys;
}

// After the SSD tier counted as full (ENOSPC), the default policy writes only blocks with
// evidence of reuse: 64 such blocks (owner `owner`) and 96 others behind them go through a
// 64 MiB pool; the reused ones are demoted (their writes succeed) and every one reads back.
void CheckDemotionWorks(const DaemonProcess& daemon, const Faults& faults, Client& client,
                        uint64_t owner) {
  const PoolStats before = MustStats(client);
  const std::vector<Key> reused = TestKeys(owner, 64);
  StoreAndReadBack(client, reused, /*reused=*/true);
  StoreAndReadBack(client, TestKeys(owner + 1, 96));
  WaitQuiet(daemon, faults);
  const PoolStats after = MustStats(client);
  CHECK(after.demotions > before.demotions);
  CHECK(after.demote_failures == before.demote_failures);
  const ReadCounts back = ReadAll(client, reused);
  CHECK(back.verified == reused.size());
  CHECK(back.wrong == 0);
  CHECK(MustStats(client).promotions > before.promotions);
}

TEST_CASE("spill writes failing with EIO leave clients working from DRAM byte for byte and "
          "demotion works again once the disk recovers",
          "[integration][spill][faults]") {
  Faults faults;
  auto daemon = DaemonProcess::Start(faults.Options());
  CHECK_THAT(daemon->Log(), Catch::Contains("fault-switched"));
  auto client = MustConnect(*daemon);
  const std::vector<Key> before = TestKeys(1, 16);
  StoreOnSsd(*daemon, faults, *client, before, 2);
  const PoolStats healthy = MustStats(*client);
  REQUIRE(healthy.demote_failures == 0);

  faults.Set({.write_errno = EIO});
  // Twice DRAM's size through the pool while no write reaches the disk: every reserve, commit
  // and acquire goes on working, each block read back exact right after it was stored.
  const std::vector<Key> during = TestKeys(3, 128);
  StoreAndReadBack(*client, during);
  WaitQuiet(*daemon, faults);
  const PoolStats failing = MustStats(*client);
  CHECK(failing.demote_failures > 0);
  CHECK(failing.demotions == healthy.demotions);  // not one write reached the disk
  faults.WaitFor([](const FaultReport& r) { return r.failed_writes > 0; });
  CHECK(Metric(*daemon, "kvtier_demote_failures_total") ==
        static_cast<int64_t>(failing.demote_failures));
  CHECK_THAT(daemon->Log(), Catch::Contains("demotion to SSD failed"));
  // A block whose write failed stays in DRAM until evicted, then is gone: misses, never wrong
  // bytes. The newest blocks are all there.
  const ReadCounts all = ReadAll(*client, during);
  CHECK(all.wrong == 0);
  CHECK(all.verified >= 16);
  const ReadCounts newest = ReadAll(*client, std::vector<Key>(during.end() - 16, during.end()));
  CHECK(newest.verified == 16);
  // What reached the SSD before the fault is still served from it (reads were never faulted).
  const ReadCounts old = ReadAll(*client, before);
  CHECK(old.wrong == 0);
  CHECK(old.verified == before.size());
  CHECK(daemon->Alive());

  faults.Clear();
  const std::vector<Key> after = TestKeys(4, 16);
  StoreOnSsd(*daemon, faults, *client, after, 5);
  const PoolStats recovered = MustStats(*client);
  CHECK(recovered.demotions > failing.demotions);
  const ReadCounts back = ReadAll(*client, after);
  CHECK(back.verified == after.size());
  CHECK(back.wrong == 0);
  CHECK(MustStats(*client).promotions > failing.promotions);
  CHECK(daemon->Alive());
}

TEST_CASE("a block removed while the spill disk refuses writes stays removed once the disk "
          "recovers and kvtierd restarts",
          "[integration][spill][faults]") {
  Faults faults;
  const std::vector<Key> removed = TestKeys(1, 8);
  {
    auto daemon = DaemonProcess::Start(faults.Options());
    auto client = MustConnect(*daemon);
    // On SSD only, in segments shared with blocks that stay: removing them takes a scrub (a
    // write zeroing each record's header), not the erase of a whole segment.
    StoreOnSsd(*daemon, faults, *client, removed, 2);
    faults.Set({.write_errno = EIO});
    REQUIRE(client->Remove(removed).ok());
    CHECK(*client->MatchPrefix(std::span(removed).first(1)) == 0);
    // Every scrub failed: the records are still readable on the disk.
    REQUIRE(WaitUntil([&] { return CtlStat(*daemon, "ssd_scrub_failures") >= 8; }, 60000));
    CHECK(Metric(*daemon, "kvtier_ssd_scrub_failures_total") >= 8);
    // The disk recovers; the clean stop writes the scrubs that failed.
    faults.Clear();
    REQUIRE(daemon->Stop() == 0);
  }
  auto daemon = DaemonProcess::Start(faults.Options());
  auto client = MustConnect(*daemon);
  const ReadCounts back = ReadAll(*client, removed);
  CHECK(back.verified == 0);
  CHECK(back.wrong == 0);
  CHECK(back.missing == removed.size());
  // The blocks that shared their segments are still served.
  const ReadCounts kept = ReadAll(*client, TestKeys(2, 8));
  CHECK(kept.wrong == 0);
}

TEST_CASE("spill reads failing with EIO make SSD blocks counted misses and never wrong bytes",
          "[integration][spill][faults]") {
  Faults faults;
  auto daemon = DaemonProcess::Start(faults.Options());
  auto client = MustConnect(*daemon);
  const std::vector<Key> on_ssd = TestKeys(1, 16);
  StoreOnSsd(*daemon, faults, *client, on_ssd, 2);
  const PoolStats healthy = MustStats(*client);

  faults.Set({.read_errno = EIO});
  const ReadCounts back = ReadAll(*client, on_ssd);
  CHECK(back.wrong == 0);
  CHECK(back.verified == 0);
  CHECK(back.missing == on_ssd.size());
  const PoolStats failed = MustStats(*client);
  CHECK(failed.promote_failures == healthy.promote_failures + on_ssd.size());
  CHECK(failed.integrity_failures == healthy.integrity_failures);  // an I/O error, not tampering
  CHECK(failed.promotions == healthy.promotions);
  faults.WaitFor([](const FaultReport& r) { return r.failed_reads > 0; });
  CHECK(Metric(*daemon, "kvtier_promote_failures_total") ==
        static_cast<int64_t>(failed.promote_failures));
  CHECK_THAT(daemon->Log(), Catch::Contains("promotion from SSD failed"));
  // Gone from every tier: a second look is a plain miss.
  CHECK(*client->MatchPrefix(std::span(on_ssd).first(1)) == 0);
  // DRAM work is untouched (writes still reach the disk meanwhile).
  StoreAndReadBack(*client, TestKeys(3, 32));
  CHECK(daemon->Alive());

  faults.Clear();
  const std::vector<Key> after = TestKeys(4, 16);
  StoreOnSsd(*daemon, faults, *client, after, 5);
  const ReadCounts again = ReadAll(*client, after);
  CHECK(again.verified == after.size());
  CHECK(MustStats(*client).promote_failures == failed.promote_failures);
}

TEST_CASE("spill writes failing with ENOSPC leave clients working from DRAM byte for byte and "
          "the SSD tier recovers",
          "[integration][spill][faults]") {
  Faults faults;
  auto daemon = DaemonProcess::Start(faults.Options());
  auto client = MustConnect(*daemon);
  const std::vector<Key> first = TestKeys(1, 32);
  StoreOnSsd(*daemon, faults, *client, first, 2);
  const PoolStats healthy = MustStats(*client);

  // A write into a preallocated segment that still finds no space (a thin or copy-on-write
  // volume). Blocks with evidence of reuse, so that the policy keeps writing them after the
  // first failure has marked the SSD tier full.
  faults.Set({.write_errno = ENOSPC});
  const std::vector<Key> during = TestKeys(3, 96);
  StoreAndReadBack(*client, during, /*reused=*/true);
  WaitQuiet(*daemon, faults);
  const PoolStats failing = MustStats(*client);
  CHECK(failing.demote_failures > healthy.demote_failures);
  CHECK(failing.demotions == healthy.demotions);
  faults.WaitFor([](const FaultReport& r) { return r.failed_writes > 0; });
  // Blocks whose write failed stay in DRAM (evictable): whatever is found is exact.
  const ReadCounts all = ReadAll(*client, during);
  CHECK(all.wrong == 0);
  CHECK(all.verified >= 16);
  // A new segment's header write failing with ENOSPC counts as a full disk: the store may have
  // reclaimed old segments for room. What is left of them is exact.
  const ReadCounts old = ReadAll(*client, first);
  CHECK(old.wrong == 0);
  CHECK(old.verified + old.missing == first.size());
  CHECK(daemon->Alive());

  faults.Clear();
  CheckDemotionWorks(*daemon, faults, *client, 4);
}

TEST_CASE("no space for a new spill segment reclaims the oldest segments while clients keep "
          "working from DRAM and the SSD tier recovers",
          "[integration][spill][faults]") {
  Faults faults;
  auto daemon = DaemonProcess::Start(faults.Options());
  auto client = MustConnect(*daemon);
  const std::vector<Key> first = TestKeys(1, 32);
  StoreOnSsd(*daemon, faults, *client, first, 2);
  const PoolStats healthy = MustStats(*client);
  REQUIRE(healthy.ssd_segments >= 3);
  REQUIRE(healthy.ssd_dropped == 0);

  // The usual full disk, as a new segment's preallocation finds it (injected, so that it stays
  // full however much the store frees; spill_test.cc fills a real tmpfs): the store reclaims its
  // oldest segments (crypto-erased, their blocks dropped) and then fails the write.
  faults.Set({.create_errno = ENOSPC});
  const std::vector<Key> during = TestKeys(3, 96);
  StoreAndReadBack(*client, during, /*reused=*/true);
  WaitQuiet(*daemon, faults);
  const PoolStats full = MustStats(*client);
  faults.WaitFor([](const FaultReport& r) { return r.failed_creates > 0; });
  CHECK(full.ssd_dropped > healthy.ssd_dropped);
  CHECK(full.demote_failures > healthy.demote_failures);
  CHECK(full.ssd_segments < healthy.ssd_segments);
  const ReadCounts lost = ReadAll(*client, first);
  CHECK(lost.wrong == 0);
  CHECK(lost.missing > 0);
  const ReadCounts all = ReadAll(*client, during);
  CHECK(all.wrong == 0);
  CHECK(all.verified >= 16);
  CHECK(daemon->Alive());

  faults.Clear();
  CheckDemotionWorks(*daemon, faults, *client, 4);
}

TEST_CASE("while the spill disk holds every I/O DRAM work completes and once released every "
          "held I/O completes and reads back exact",
          "[integration][spill][faults]") {
  Faults faults;
  auto daemon = DaemonProcess::Start(faults.Options());
  auto client = MustConnect(*daemon);
  const std::vector<Key> on_ssd = TestKeys(1, 4);
  StoreOnSsd(*daemon, faults, *client, on_ssd, 2);
  const std::vector<Key> in_dram = FillDram(*daemon, faults, *client, 5);

  faults.Set({.stall = true});
  const uint64_t completed_at_stall = faults.MustReport().completed;
  // Another engine asks for blocks only the SSD has: its request waits for reads the disk
  // holds. (A long client timeout: the wait is as long as the stall, and that is the point.)
  OtherEngine other(*daemon, on_ssd);
  faults.WaitFor([](const FaultReport& r) { return r.held > 0; });
  // Meanwhile this engine stores blocks (over the dirty limit: their demotions are held too)
  // and reads DRAM blocks, all byte for byte.
  const std::vector<Key> stored = TestKeys(3, 8);
  StoreAndReadBack(*client, stored);
  const ReadCounts dram = ReadAll(*client, in_dram);
  CHECK(dram.verified == in_dram.size());
  CHECK(AllIn(TiersOf(*client, stored), Tier::kDram));
  // ...and all of it happened while no spill I/O completed: the disk held it throughout.
  const FaultReport held = faults.MustReport();
  CHECK(held.completed == completed_at_stall);
  CHECK(held.held > 0);
  CHECK_FALSE(other.done());  // the other engine still waits for the disk
  CHECK(CtlStat(*daemon, "promotions_in_flight") > 0);

  faults.Clear();
  other.Join();
  CHECK(other.error().empty());
  CHECK(other.back().verified == on_ssd.size());
  const FaultReport done = faults.WaitFor([](const FaultReport& r) { return r.in_flight == 0; });
  CHECK(done.completed > completed_at_stall);
  // The demotions that were held completed: pushed out of DRAM now, the blocks come back
  // from SSD exact.
  PushOut(*daemon, faults, *client, stored, 4);
  const ReadCounts back = ReadAll(*client, stored);
  CHECK(back.verified == stored.size());
  const PoolStats stats_after = MustStats(*client);
  CHECK(stats_after.demote_failures == 0);
  CHECK(stats_after.promote_failures == 0);
}

TEST_CASE("a slow spill disk (1 to 2 s per I/O) delays only what waits for it and SIGTERM still "
          "stops the daemon cleanly",
          "[integration][spill][faults]") {
  Faults faults;
  auto daemon = DaemonProcess::Start(faults.Options());
  auto client = MustConnect(*daemon);
  const std::vector<Key> on_ssd = TestKeys(1, 4);
  StoreOnSsd(*daemon, faults, *client, on_ssd, 2);
  const std::vector<Key> in_dram = FillDram(*daemon, faults, *client, 5);

  faults.Set({.delay_ms = 1000, .jitter_ms = 1000});
  const uint64_t submitted = faults.MustReport().submitted;
  OtherEngine other(*daemon, on_ssd);
  faults.WaitFor([&](const FaultReport& r) { return r.submitted > submitted; });
  const std::vector<Key> stored = TestKeys(3, 8);
  StoreAndReadBack(*client, stored);
  const ReadCounts dram = ReadAll(*client, in_dram);
  CHECK(dram.verified == in_dram.size());
  other.Join();
  CHECK(other.error().empty());
  CHECK(other.back().verified == on_ssd.size());

  // Demotions in flight on the slow disk at the SIGTERM: the daemon waits for them, syncs and
  // exits 0 (the stop is bounded by DaemonProcess::Stop's 120 s, as systemd's TimeoutStopSec).
  StoreAndReadBack(*client, TestKeys(4, 24));
  faults.WaitFor([](const FaultReport& r) { return r.in_flight > 0; });
  client.reset();
  CHECK(daemon->Stop() == 0);
  CHECK_THAT(daemon->Log(), Catch::Contains("stopped cleanly"));
}

TEST_CASE("a SIGTERM while the spill disk holds its I/O stops the daemon cleanly once the disk "
          "lets the I/O complete",
          "[integration][spill][faults]") {
  Faults faults;
  auto daemon = DaemonProcess::Start(faults.Options());
  auto client = MustConnect(*daemon);
  const std::vector<Key> on_ssd = TestKeys(1, 4);
  StoreOnSsd(*daemon, faults, *client, on_ssd, 2);
  FillDram(*daemon, faults, *client, 5);

  faults.Set({.stall = true});
  OtherEngine other(*daemon, on_ssd);
  StoreAndReadBack(*client, TestKeys(3, 8));
  faults.WaitFor([](const FaultReport& r) { return r.held > 0; });
  client.reset();

  REQUIRE(kill(daemon->pid(), SIGTERM) == 0);
  const bool stopping = WaitUntil([&] {
    const auto& notes = daemon->Notifications();
    return std::any_of(notes.begin(), notes.end(), [](const std::string& n) {
      return n.find("STOPPING=1") != std::string::npos;
    });
  });
  REQUIRE(stopping);
  // The spill workers wait for their I/O (its buffers are the kernel's until it completes):
  // the daemon cannot have exited while the disk holds it.
  CHECK(daemon->Alive());
  CHECK(faults.MustReport().held > 0);
  faults.Clear();
  CHECK(daemon->Stop() == 0);
  CHECK_THAT(daemon->Log(), Catch::Contains("stopped cleanly"));
  // The stop ended the other engine's session: its acquire failed, or (had the reads been
  // let go first) it brought exact bytes.
  other.Join();
  CHECK(other.back().wrong == 0);
}

}  // namespace
}  // namespace kvtier::testing
