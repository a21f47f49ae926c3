// kvtier-replay: a request trace (Mooncake format) through the daemon's own tier code (the
// DRAM pool's eviction, demotion and promotion, with a simulated SSD tier that counts blocks),
// with Belady's MIN at the same total capacity as the bound. docs/cache-policy.md.
//   kvtier-replay TRACE.jsonl --dram-blocks N --ssd-blocks M [--policy reuse|lru] [--demote-above F] [--json]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "daemon/tier/reference_policies.h"
#include "daemon/tier/replay.h"
#include "daemon/tier/trace.h"

namespace {

int Usage(const char* why) {
  std::fprintf(stderr,
               "kvtier-replay: %s\nusage: kvtier-replay TRACE.jsonl --dram-blocks N "
               "--ssd-blocks M [--policy reuse|lru] [--demote-above F] [--json]\n",
               why);
  return 2;
}

bool ParseCount(const char* text, uint64_t* out) {
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (end == text || *end != '\0' || text[0] == '-') return false;
  *out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage("no trace");
  std::string path;
  kvtier::tier::ReplayOptions options;
  bool have_dram = false, have_ssd = false, json = false;
  std::string policy = kvtier::TierPolicyName(options.policy);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") {
      json = true;
    } else if ((a == "--dram-blocks" || a == "--ssd-blocks" || a == "--policy" ||
                a == "--demote-above") &&
               i + 1 < argc) {
      const char* v = argv[++i];
      if (a == "--policy") {
        policy = v;
      } else if (a == "--demote-above") {
        char* end = nullptr;
        options.demote_above = std::strtod(v, &end);
        if (end == v || *end != '\0' || !(options.demote_above >= 0.05) ||
            options.demote_above > 1) {
          return Usage(("--demote-above: '" + std::string(v) + "' is not a fraction 0.05 .. 1")
                           .c_str());
        }
      } else if (!ParseCount(v, a == "--dram-blocks" ? &options.dram_blocks
                                                      : &options.ssd_blocks)) {
        return Usage((a + ": '" + v + "' is not a count of blocks").c_str());
      } else {
        (a == "--dram-blocks" ? have_dram : have_ssd) = true;
      }
    } else if (a.rfind("--", 0) == 0) {
      return Usage(("unknown option or missing value: " + a).c_str());
    } else if (path.empty()) {
      path = a;
    } else {
      return Usage("more than one trace");
    }
  }
  if (path.empty() || !have_dram || !have_ssd) {
    return Usage("a trace, --dram-blocks and --ssd-blocks are required");
  }
  if (const auto parsed = kvtier::ParseTierPolicy(policy)) {
    options.policy = *parsed;
  } else {
    return Usage(("unknown policy '" + policy + "' (reuse, lru)").c_str());
  }
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "kvtier-replay: cannot open %s\n", path.c_str());
    return 1;
  }
  std::vector<kvtier::tier::TraceRequest> trace;
  if (kvtier::Status s = kvtier::tier::ReadTrace(in, &trace); !s.ok()) {
    std::fprintf(stderr, "kvtier-replay: %s: %s\n", path.c_str(), s.message().c_str());
    return 1;
  }
  const auto t0 = std::chrono::steady_clock::now();
  kvtier::tier::ReplayResult r;
  if (kvtier::Status s = kvtier::tier::ReplayThroughPool(trace, options, &r); !s.ok()) {
    return Usage(s.message().c_str());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto min =
      kvtier::tier::ReplayMin(trace, options.dram_blocks + options.ssd_blocks);
  const auto ull = [](uint64_t v) { return static_cast<unsigned long long>(v); };
  if (json) {
    std::printf(
        "{\"trace\": \"%s\", \"policy\": \"%s\", \"dram_blocks\": %llu, \"ssd_blocks\": %llu, "
        "\"requests\": %llu, \"block_requests\": %llu, \"unique_blocks\": %llu, "
        "\"block_hit_ratio\": %.6f, \"usable_prefix_hit_ratio\": %.6f, \"dram_hits\": %llu, "
        "\"ssd_hits\": %llu, \"ssd_write_blocks\": %llu, \"ssd_read_blocks\": %llu, "
        "\"stores_refused\": %llu, \"min_usable_prefix_hit_ratio\": %.6f, "
        "\"replay_seconds\": %.3f}\n",
        path.c_str(), policy.c_str(), ull(options.dram_blocks), ull(options.ssd_blocks),
        ull(r.requests), ull(r.block_requests), ull(r.unique_blocks), r.block_hit_ratio(),
        r.usable_prefix_hit_ratio(), ull(r.dram_hits), ull(r.ssd_hits), ull(r.ssd_write_blocks),
        ull(r.ssd_read_blocks), ull(r.stores_refused), min.usable_prefix_hit_ratio(), seconds);
    return 0;
  }
  std::printf("%s through kvtier's tier code (%s), DRAM %llu + SSD %llu blocks\n", path.c_str(),
              policy.c_str(), ull(options.dram_blocks), ull(options.ssd_blocks));
  std::printf("  %llu requests, %llu block requests, %llu unique blocks, replayed in %.2f s\n",
              ull(r.requests), ull(r.block_requests), ull(r.unique_blocks), seconds);
  std::printf("  usable prefix hit ratio %.3f (MIN at the same total: %.3f, %.2f of it)\n",
              r.usable_prefix_hit_ratio(), min.usable_prefix_hit_ratio(),
              min.usable_prefix_hit_ratio() > 0
                  ? r.usable_prefix_hit_ratio() / min.usable_prefix_hit_ratio()
                  : 0);
  std::printf("  block hit ratio %.3f: %llu in DRAM, %llu on SSD\n", r.block_hit_ratio(),
              ull(r.dram_hits), ull(r.ssd_hits));
  std::printf("  SSD: %llu blocks written, %llu read (%.2f writes per SSD hit)\n",
              ull(r.ssd_write_blocks), ull(r.ssd_read_blocks),
              r.ssd_hits ? static_cast<double>(r.ssd_write_blocks) /
                               static_cast<double>(r.ssd_hits)
                         : 0);
  return 0;
}
