// kvtier-bench: kvtier's figures beside this machine's limits, measured in the same run.
//
// It starts its own kvtierd from a temporary config (or uses --socket), then measures in order:
// the copy limits into / out of a shared memfd mapping and a bare SOCK_SEQPACKET round trip;
// put and get GB/s through libkvclient at 2 MiB and 64 KiB, batch 1 and 64; match_prefix keys/s
// at batch 256; offload and onload through a host region at 2 MiB and 64 KiB, batch 64; the 1-key round trip; index bytes per block at 1M blocks; and with --spill DIR,
// after kvtierd has stopped, the spill store's figures beside the disk's and AES-GCM's limits
// (bench/spill_bench.h, store level), then demotion and promotion through a second kvtierd
// with a small pool and an SSD tier in DIR, each beside limits measured just before and after
// it (bench/daemon_spill_bench.h). It prints one table row per figure with its limit, the
// ratio, the target and PASS/MISS, and with --json writes the same rows as JSON lines. Exit
// status: 0 when it ran (targets missed or not), 1 on any error, 2 on a usage error.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "bench/bench_util.h"
#include "bench/daemon_process.h"
#include "bench/daemon_spill_bench.h"
#include "bench/figures.h"
#include "bench/limits.h"
#include "bench/noisy_bench.h"
#include "bench/report.h"
#include "bench/spill_bench.h"
#include "kvclient/client.h"

namespace kvtier::bench {
namespace {

constexpr char kUsage[] =
    "usage: kvtier-bench [options]\n"
    "  --kvtierd PATH        kvtierd binary to start (default: the one built with this bench)\n"
    "  --socket PATH         use an already-running kvtierd at PATH instead of starting one\n"
    "  --spin-us N           poll_spin_us of the started daemon (default 50)\n"
    "  --client-spin-us N    ClientOptions::spin_us of the benchmark's client (default 50)\n"
    "  --pool-gib N          dram_bytes of the started daemon's tenant (default 8)\n"
    "  --pin off|apart|same  CPUs of the benchmark's client and the started daemon: the\n"
    "                        scheduler's choice (default), two different CPUs, or one CPU\n"
    "  --json FILE           also write one JSON line per figure to FILE\n"
    "  --spill DIR           also measure the SSD tier in DIR (a directory on the spill\n"
    "                        disk; scratch subdirectories are made there and removed): raw\n"
    "                        O_DIRECT disk and AES-256-GCM limits, SpillStore write / read\n"
    "                        GB/s and 2 MiB read latency, then through a kvtierd with a\n"
    "                        small pool: demotion and promotion GB/s and the latency of\n"
    "                        promoting one 2 MiB block (default: off)\n"
    "  --quick               small totals: a smoke run that checks every path (< 30 s)\n"
    "  --help                this text\n"
    "GB/s = 1e9 bytes/s. Limits are single-core, best of several repetitions, this run.\n";

struct Options {
  std::string kvtierd = KVTIERD_PATH;
  std::string socket;
  uint32_t spin_us = 50;
  uint32_t client_spin_us = 50;
  uint64_t pool_gib = 8;
  std::string json;
  bool quick = false;
  std::string pin = "off";
  std::string spill;  // --spill DIR; "" for none
};

uint32_t ParseU32(const char* flag, const char* text) {
  char* end = nullptr;
  const unsigned long v = std::strtoul(text, &end, 10);
  if (end == text || *end != '\0' || v > 1000000) {
    std::fprintf(stderr, "kvtier-bench: %s wants a number, got '%s'\n%s", flag, text, kUsage);
    std::exit(2);
  }
  return static_cast<uint32_t>(v);
}

Options ParseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (arg == "--quick") {
      o.quick = true;
    } else if (arg == "--kvtierd" && has_value) {
      o.kvtierd = argv[++i];
    } else if (arg == "--socket" && has_value) {
      o.socket = argv[++i];
    } else if (arg == "--spin-us" && has_value) {
      o.spin_us = ParseU32("--spin-us", argv[++i]);
    } else if (arg == "--client-spin-us" && has_value) {
      o.client_spin_us = ParseU32("--client-spin-us", argv[++i]);
    } else if (arg == "--pool-gib" && has_value) {
      o.pool_gib = ParseU32("--pool-gib", argv[++i]);
    } else if (arg == "--pin" && has_value) {
      o.pin = argv[++i];
      if (o.pin != "off" && o.pin != "apart" && o.pin != "same") {
        std::fprintf(stderr, "kvtier-bench: --pin takes off, apart or same\n%s", kUsage);
        std::exit(2);
      }
    } else if (arg == "--spill" && has_value) {
      o.spill = argv[++i];
      if (o.spill.empty()) {
        std::fprintf(stderr, "kvtier-bench: --spill wants a directory\n%s", kUsage);
        std::exit(2);
      }
    } else if (arg == "--json" && has_value) {
      o.json = argv[++i];
    } else {
      std::fprintf(stderr, "kvtier-bench: unknown or incomplete option '%s'\n%s", arg.c_str(),
                   kUsage);
      std::exit(2);
    }
  }
  return o;
}

// What one run measures; --quick shrinks it.
struct Plan {
  uint64_t working_set_bytes;  // limits and the client's private buffers
  uint64_t limit_bytes_per_rep;
  int limit_reps;
  int rtt_round_trips;
  int rtt_reps;
  int match_calls;
  int one_key_calls;
  uint64_t index_blocks;
};

Plan MakePlan(bool quick) {
  if (quick) return Plan{64 * kMiB, 128 * kMiB, 2, 5000, 1, 2000, 5000, 65536};
  return Plan{256 * kMiB, 512 * kMiB, 5, 20000, 3, 20000, 20000, 1048576};
}

void Progress(const char* op, uint64_t block_bytes, int batch, const Throughput& t,
              double limit) {
  std::printf("  %s %s batch%d: %.2f GB/s, best copy around it %.2f GB/s (%s in %llu blocks, "
              "%.2f s, %.1f us per call)\n",
              op, SizeName(block_bytes).c_str(), batch, t.gbps, limit, SizeName(t.bytes).c_str(),
              static_cast<unsigned long long>(t.blocks), t.seconds,
              t.seconds * 1e6 / static_cast<double>((t.blocks + static_cast<uint64_t>(batch) - 1) /
                                                    static_cast<uint64_t>(batch)));
  std::fflush(stdout);
}

int Run(const Options& options) {
  const Plan plan = MakePlan(options.quick);
  std::vector<Row> rows;

  // --- Limits: before the daemon exists, so nothing else runs. ---
  struct SizeLimits {
    uint64_t block_bytes;
    CopyLimits copy;
  };
  std::vector<SizeLimits> limits;
  CopyMeter meter(plan.working_set_bytes);
  auto limit_options = [&](uint64_t block_bytes, int reps) {
    CopyLimitOptions o;
    o.block_bytes = block_bytes;
    o.working_set_bytes = plan.working_set_bytes;
    o.bytes_per_rep = plan.limit_bytes_per_rep;
    o.reps = reps;
    return o;
  };
  for (uint64_t block_bytes : {2 * kMiB, 64 * kKiB}) {
    limits.push_back({block_bytes, meter.Measure(limit_options(block_bytes, plan.limit_reps))});
  }
  // The bare round trip between processes on two CPUs (how shared/BASELINES.md defines it) and
  // on one CPU, where a wake-up is only a context switch.
  const CpuMask cpus = GetCpuMask();
  const int cpu_a = cpus[0];
  const int cpu_b = cpus.size() > 1 ? cpus[1] : cpus[0];
  const RttLimit rtt_apart = MeasureSocketRtt(plan.rtt_round_trips, plan.rtt_reps, cpu_a, cpu_b);
  const RttLimit rtt_same = MeasureSocketRtt(plan.rtt_round_trips, plan.rtt_reps, cpu_a, cpu_a);
  const bool same = options.pin == "same" || cpus.size() == 1;
  const RttLimit rtt = same ? rtt_same : rtt_apart;
  const std::string rtt_name = same ? "bare RTT 1 CPU" : "bare RTT 2 CPUs";
  std::printf("limits (1 core, best of %d, working set %s per side):\n", plan.limit_reps,
              SizeName(plan.working_set_bytes).c_str());
  for (const SizeLimits& l : limits) {
    const std::string size = SizeName(l.block_bytes);
    std::printf("  copy into shm %-6s memcpy %6.2f  NT %6.2f GB/s   out of shm: memcpy %6.2f  "
                "NT %6.2f GB/s%s\n",
                size.c_str(), l.copy.into_shm.memcpy_gbps, l.copy.into_shm.nt_gbps,
                l.copy.out_of_shm.memcpy_gbps, l.copy.out_of_shm.nt_gbps,
                l.copy.huge_pages ? "  (hugetlb)" : "  (4 KiB pages)");
  }
  std::printf("  bare SOCK_SEQPACKET round trip, 64 B, blocking, %d x %d: processes on CPUs %d+%d: "
              "p50 %.1f us  p99 %.1f us; both on CPU %d: p50 %.1f us  p99 %.1f us\n",
              plan.rtt_reps, plan.rtt_round_trips, cpu_a, cpu_b, rtt_apart.p50_us,
              rtt_apart.p99_us, cpu_a, rtt_same.p50_us, rtt_same.p99_us);
  if (options.pin != "off") {
    PinToCpu(cpu_a);
    std::printf("pinned: client on CPU %d, kvtierd on CPU %d\n", cpu_a, same ? cpu_a : cpu_b);
  }
  std::fflush(stdout);

  // --- The daemon and the client. ---
  std::unique_ptr<DaemonProcess> daemon;
  std::string socket_path = options.socket;
  if (socket_path.empty()) {
    DaemonOptions d;
    d.binary = options.kvtierd;
    d.dram_bytes = options.quick ? 512 * kMiB : options.pool_gib * kGiB;
    d.max_blocks = plan.index_blocks;
    d.poll_spin_us = options.spin_us;
    if (options.pin != "off") d.cpu = same ? cpu_a : cpu_b;
    daemon = DaemonProcess::Start(d);
    socket_path = daemon->socket_path();
    std::printf("kvtierd pid %d: pool %s, max_blocks %llu, poll_spin_us %u; up in %.1f s\n",
                static_cast<int>(daemon->pid()), SizeName(d.dram_bytes).c_str(),
                static_cast<unsigned long long>(d.max_blocks), d.poll_spin_us,
                daemon->startup_seconds());
  }
  ClientOptions co;
  co.socket_path = socket_path;
  co.name_space = "kvtier-bench";
  co.spin_us = options.client_spin_us;
  const uint64_t connect_start = NowNs();
  auto client = Client::Connect(co);
  CheckOk(client.status(), "connecting to kvtierd at " + socket_path);
  const double connect_s = Seconds(NowNs() - connect_start);
  const uint64_t pool = (*client)->pool().size();
  if ((*client)->max_block_bytes() < 2 * kMiB) Fail("the daemon's max_block_bytes is below 2 MiB");
  if (pool < 256 * kMiB) Fail("the tenant pool is " + SizeName(pool) + "; need >= 256 MiB");
  std::printf("client spin_us %u, tenant '%s': Connect (hello + map the %s pool) took %.2f s\n",
              co.spin_us, (*client)->tenant().c_str(), SizeName(pool).c_str(), connect_s);
  std::fflush(stdout);

  PrivateBuffer src(plan.working_set_bytes);
  PrivateBuffer dst(plan.working_set_bytes);
  Figures fig(client->get(), &src, &dst);
  {
    const PoolStats s = fig.Stats();
    if (s.committed_blocks + s.reserved_blocks != 0) {
      std::printf("note: the pool already holds %llu blocks\n",
                  static_cast<unsigned long long>(s.committed_blocks + s.reserved_blocks));
    }
  }

  // Pool budget: 2 MiB figures use pool/2 each; 64 KiB ones pool/4 (batch 1) and 3*pool/8
  // (batch 64). Kept sets: 2 MiB b64 + 64 KiB b64 = 7/8 of the pool, so no put evicts.
  struct Sizes {
    uint64_t block_bytes;
    uint64_t b1_blocks;
    uint64_t b64_blocks;
    uint32_t tag;
  };
  const std::vector<Sizes> sizes = {
      {2 * kMiB, pool / 2 / (2 * kMiB), pool / 2 / (2 * kMiB) / 64 * 64, 2},
      {64 * kKiB, pool / 4 / (64 * kKiB), pool * 3 / 8 / (64 * kKiB) / 64 * 64, 64}};
  struct Measured {
    Throughput put_b1, put_b64, get_b1, get_b64;
    // The best copy limit measured just before and just after each figure.
    double put_b1_limit, put_b64_limit, get_b1_limit, get_b64_limit;
  };
  const int bracket_reps = options.quick ? 1 : 3;
  auto bracketed = [&](bool into_shm, uint64_t block_bytes, auto&& figure, double* limit) {
    const CopyLimit before = meter.MeasureOne(into_shm, limit_options(block_bytes, bracket_reps));
    auto result = figure();
    const CopyLimit after = meter.MeasureOne(into_shm, limit_options(block_bytes, bracket_reps));
    *limit = std::max(before.best(), after.best());
    return result;
  };
  std::vector<Measured> measured(sizes.size());
  for (size_t k = 0; k < sizes.size(); ++k) {
    const Sizes& s = sizes[k];
    Measured& m = measured[k];
    m.put_b1 = bracketed(true, s.block_bytes, [&] {
      return fig.Put(s.tag * 10 + 1, s.block_bytes, s.b1_blocks, 1);
    }, &m.put_b1_limit);
    Progress("put", s.block_bytes, 1, m.put_b1, m.put_b1_limit);
    fig.Remove(s.tag * 10 + 1, s.b1_blocks);
    m.put_b64 = bracketed(true, s.block_bytes, [&] {
      return fig.Put(s.tag * 10 + 2, s.block_bytes, s.b64_blocks, 64);
    }, &m.put_b64_limit);
    Progress("put", s.block_bytes, 64, m.put_b64, m.put_b64_limit);
  }
  for (size_t k = 0; k < sizes.size(); ++k) {
    const Sizes& s = sizes[k];
    Measured& m = measured[k];
    m.get_b1 = bracketed(false, s.block_bytes, [&] {
      return fig.Get(s.tag * 10 + 2, s.block_bytes, s.b64_blocks, s.b1_blocks, 1);
    }, &m.get_b1_limit);
    Progress("get", s.block_bytes, 1, m.get_b1, m.get_b1_limit);
    m.get_b64 = bracketed(false, s.block_bytes, [&] {
      return fig.Get(s.tag * 10 + 2, s.block_bytes, s.b64_blocks, s.b64_blocks, 64);
    }, &m.get_b64_limit);
    Progress("get", s.block_bytes, 64, m.get_b64, m.get_b64_limit);
  }
  for (size_t k = 0; k < sizes.size(); ++k) {
    const Sizes& s = sizes[k];
    const std::string size = SizeName(s.block_bytes);
    const double goal = s.block_bytes >= 2 * kMiB ? 0.9 : 0.7;
    const std::string target = ">= " + Fixed(goal, 1) + "x";
    auto add = [&](const std::string& op, int batch, const Throughput& t, double limit,
                   const std::string& dir) {
      Row r;
      r.metric = op + " " + size + " batch" + std::to_string(batch);
      r.value = t.gbps;
      r.unit = "GB/s";
      r.limit_metric = "best copy " + dir + " shm " + size;
      r.limit = limit;
      r.ratio = t.gbps / limit;
      if (batch == 64) {
        r.target = target;
        r.pass = r.ratio >= goal;
      }
      if (t.evictions != 0) r.limit_metric += " [" + std::to_string(t.evictions) + " evictions!]";
      rows.push_back(r);
    };
    add("put", 1, measured[k].put_b1, measured[k].put_b1_limit, "into");
    add("put", 64, measured[k].put_b64, measured[k].put_b64_limit, "into");
  }
  for (size_t k = 0; k < sizes.size(); ++k) {
    const Sizes& s = sizes[k];
    const std::string size = SizeName(s.block_bytes);
    const double goal = s.block_bytes >= 2 * kMiB ? 0.9 : 0.7;
    for (int batch : {1, 64}) {
      const Throughput& t = batch == 1 ? measured[k].get_b1 : measured[k].get_b64;
      Row r;
      r.metric = "get " + size + " batch" + std::to_string(batch);
      r.value = t.gbps;
      r.unit = "GB/s";
      r.limit_metric = "best copy out of shm " + size;
      r.limit = batch == 1 ? measured[k].get_b1_limit : measured[k].get_b64_limit;
      r.ratio = t.gbps / r.limit;
      if (batch == 64) {
        r.target = ">= " + Fixed(goal, 1) + "x";
        r.pass = r.ratio >= goal;
      }
      rows.push_back(r);
    }
  }

  // match_prefix and the 1-key round trip over the kept 64 KiB set.
  const Sizes& small = sizes[1];
  const uint32_t small_tag = small.tag * 10 + 2;
  {
    const double keys_per_s =
        fig.MatchPrefixKeysPerSecond(small_tag, small.b64_blocks, 256, plan.match_calls);
    Row r;
    r.metric = "match_prefix batch256";
    r.value = keys_per_s;
    r.unit = "keys/s";
    r.limit_metric = "256 keys per " + rtt_name + " p50";
    r.limit = 256.0 / (rtt.p50_us * 1e-6);
    r.ratio = keys_per_s / r.limit;
    r.target = ">= 5M keys/s";
    r.pass = keys_per_s >= 5e6;
    rows.push_back(r);
    // The same with each tier's share and the load estimate (what a scheduler asks).
    const double with_estimate = fig.MatchPrefixKeysPerSecond(small_tag, small.b64_blocks, 256,
                                                              plan.match_calls, true);
    r.metric = "match_prefix+estimate batch256";
    r.value = with_estimate;
    r.ratio = with_estimate / r.limit;
    r.pass = with_estimate >= 5e6;
    rows.push_back(r);
  }
  {
    const Latency lat = fig.OneKeyRoundTrip(small_tag, small.b64_blocks, plan.one_key_calls);
    Row p50;
    p50.metric = "match_prefix 1key rtt p50";
    p50.value = lat.p50_us;
    p50.unit = "us";
    p50.limit_metric = rtt_name + " p50";
    p50.limit = rtt.p50_us;
    p50.ratio = lat.p50_us / rtt.p50_us;
    p50.target = "<= 1.5x";
    p50.pass = p50.ratio <= 1.5;
    rows.push_back(p50);
    Row p99 = p50;
    p99.metric = "match_prefix 1key rtt p99";
    p99.value = lat.p99_us;
    p99.limit_metric = rtt_name + " p99";
    p99.limit = rtt.p99_us;
    p99.ratio = lat.p99_us / rtt.p99_us;
    p99.target.clear();
    rows.push_back(p99);
  }
  for (const Sizes& s : sizes) fig.Remove(s.tag * 10 + 2, s.b64_blocks);

  // Daemon-driven copies through a host region (offload: kvtierd copies region -> pool and
  // commits; onload: pool -> region), batch 64, beside the same copy limits as put and get.
  for (const Sizes& s : sizes) {
    const std::string size = SizeName(s.block_bytes);
    const double goal = s.block_bytes >= 2 * kMiB ? 0.9 : 0.7;
    const uint32_t tag = s.tag * 10 + 3;
    double off_limit = 0, on_limit = 0;
    const Throughput off = bracketed(true, s.block_bytes, [&] {
      return fig.Offload(tag, s.block_bytes, s.b64_blocks, 64);
    }, &off_limit);
    Progress("offload", s.block_bytes, 64, off, off_limit);
    const Throughput on = bracketed(false, s.block_bytes, [&] {
      return fig.Onload(tag, s.block_bytes, s.b64_blocks, 64);
    }, &on_limit);
    Progress("onload", s.block_bytes, 64, on, on_limit);
    fig.Remove(tag, s.b64_blocks);
    for (const auto& [name, t, limit, dir] :
         {std::tuple{"offload", off, off_limit, "into"}, std::tuple{"onload", on, on_limit, "out of"}}) {
      Row r;
      r.metric = std::string(name) + " " + size + " batch64 (host region)";
      r.value = t.gbps;
      r.unit = "GB/s";
      r.limit_metric = "best copy " + std::string(dir) + " shm " + size;
      r.limit = limit;
      r.ratio = t.gbps / limit;
      r.target = ">= " + Fixed(goal, 1) + "x";
      r.pass = r.ratio >= goal;
      if (t.evictions != 0) r.limit_metric += " [" + std::to_string(t.evictions) + " evictions!]";
      rows.push_back(r);
    }
  }

  // Index memory: fill with 4 KiB blocks, no copies.
  {
    // The slots the sections before freed are zeroed in the background, a budget per loop
    // round, and count as used until then: wait for them (up to 10 s) to fill the whole pool.
    PoolStats before = fig.Stats();
    for (int i = 0; i < 1000 && before.committed_blocks + before.reserved_blocks == 0 &&
                    before.used_bytes > 0;
         ++i) {
      usleep(10000);
      before = fig.Stats();
    }
    const uint64_t live = before.committed_blocks + before.reserved_blocks;
    uint64_t blocks = plan.index_blocks;
    blocks = std::min(blocks, before.index_capacity - std::min(before.index_capacity, live));
    blocks = std::min(blocks, (pool - std::min(pool, before.used_bytes)) / (4 * kKiB));
    if (blocks < plan.index_blocks) {
      std::printf("note: the index test fills %llu blocks, not %llu (index capacity %llu, pool "
                  "%s)\n",
                  static_cast<unsigned long long>(blocks),
                  static_cast<unsigned long long>(plan.index_blocks),
                  static_cast<unsigned long long>(before.index_capacity), SizeName(pool).c_str());
    }
    if (blocks == 0) Fail("no room in the pool or index for the index test");
    const IndexFill f = fig.FillIndex(7, 4 * kKiB, blocks);
    Row r;
    r.metric = "index bytes/block at " + (blocks == 1048576 ? std::string("1M") :
                                          std::to_string(blocks)) + " blocks";
    r.value = f.bytes_per_block();
    r.unit = "B";
    r.limit_metric = "target 128 B/block (capacity " + std::to_string(f.index_capacity) +
                     ", pool " + SizeName(pool) + ")";
    r.limit = 128;
    r.ratio = r.value / 128.0;
    r.target = "<= 128 B";
    r.pass = r.value <= 128.0;
    rows.push_back(r);
    Row rate;
    rate.metric = "reserve+commit 4KiB batch4096";
    rate.value = f.keys_per_s;
    rate.unit = "keys/s";
    rate.limit_metric = "";  // no physical limit; shown for information
    rate.limit = NAN;
    rate.ratio = NAN;
    rows.push_back(rate);
    fig.Remove(7, blocks);
  }
  const PoolStats end = fig.Stats();
  client->reset();

  PrintTable(rows);
  std::printf("\npool at the end: %llu committed, %llu reserved, %llu leased, %llu evictions, "
              "%llu hits, %llu misses\n",
              static_cast<unsigned long long>(end.committed_blocks),
              static_cast<unsigned long long>(end.reserved_blocks),
              static_cast<unsigned long long>(end.leased_blocks),
              static_cast<unsigned long long>(end.evictions),
              static_cast<unsigned long long>(end.hits),
              static_cast<unsigned long long>(end.misses));
  if (!options.json.empty()) WriteJson(options.json, rows);
  if (daemon && !daemon->Stop()) Fail("kvtierd did not stop cleanly");
  daemon.reset();
  // Isolation: tenant b's figures alone and beside a noisy tenant a, on a kvtierd of its own.
  if (options.socket.empty()) {
    SetCpuMask(cpus);  // unpinned: b, a and kvtierd share the machine as the scheduler likes
    const std::vector<Row> noisy_rows = RunNoisyBench(
        {.kvtierd = options.kvtierd, .quick = options.quick, .poll_spin_us = options.spin_us});
    if (!noisy_rows.empty()) {
      std::printf("\nnoisy neighbour: tenant b beside tenant a (ratio: noisy / b alone)\n");
      PrintTable(noisy_rows);
      rows.insert(rows.end(), noisy_rows.begin(), noisy_rows.end());
      if (!options.json.empty()) WriteJson(options.json, rows);
    }
  }
  // The spill sections run after kvtierd has gone, so its pool does not share the machine.
  if (!options.spill.empty()) {
    const std::vector<Row> spill_rows = RunSpillBench(options.spill, options.quick);
    std::printf("\nspill: store-level figures (SpillStore on this thread)\n");
    PrintTable(spill_rows);
    rows.insert(rows.end(), spill_rows.begin(), spill_rows.end());
    if (!options.json.empty()) WriteJson(options.json, rows);  // again, with the spill rows

    DaemonSpillBenchOptions dso;
    dso.dir = options.spill;
    dso.kvtierd = options.kvtierd;
    dso.quick = options.quick;
    dso.poll_spin_us = options.spin_us;
    dso.client_spin_us = options.client_spin_us;
    const DaemonSpillBenchResult daemon_spill = RunDaemonSpillBench(dso);
    std::printf("\nspill through kvtierd: demotion and promotion (limits measured just before "
                "and after each figure)\n");
    PrintTable(daemon_spill.rows);
    rows.insert(rows.end(), daemon_spill.rows.begin(), daemon_spill.rows.end());
    if (!options.json.empty()) WriteJson(options.json, rows);
    std::printf("\n%s\n", daemon_spill.note.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace kvtier::bench

int main(int argc, char** argv) {
  const kvtier::bench::Options options = kvtier::bench::ParseOptions(argc, argv);
  return kvtier::bench::Run(options);
}
