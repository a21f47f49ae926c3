// kvtier-trace-bounds: what a cache policy can reach on a request trace (Mooncake format), the
// ground work of kvtier-replay (issue 14): for each capacity, Belady's MIN (the bound) and plain
// LRU (the baseline), usable-prefix and block hit ratios, in block units, no bytes moved.
//   kvtier-trace-bounds TRACE.jsonl [--percent 1,5,10,50]
// Capacity is a percentage of the trace's unique blocks. kvtier's own policies, through the
// daemon's tier code, come with kvtier-replay.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "daemon/tier/reference_policies.h"
#include "daemon/tier/trace.h"

namespace {

int Usage() {
  std::fprintf(stderr, "usage: kvtier-trace-bounds TRACE.jsonl [--percent 1,5,10,50]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using kvtier::tier::ReplayCounts;
  if (argc != 2 && argc != 4) return Usage();
  std::vector<double> percents = {1, 5, 10, 20, 50};
  if (argc == 4) {
    if (std::string(argv[2]) != "--percent") return Usage();
    percents.clear();
    std::stringstream list(argv[3]);
    for (std::string item; std::getline(list, item, ',');) {
      char* end = nullptr;
      const double p = std::strtod(item.c_str(), &end);
      if (end == item.c_str() || *end != '\0' || p <= 0 || p > 100) {
        std::fprintf(stderr, "kvtier-trace-bounds: --percent: '%s' is not in (0, 100]\n",
                     item.c_str());
        return 2;
      }
      percents.push_back(p);
    }
  }
  std::ifstream in(argv[1]);
  if (!in) {
    std::fprintf(stderr, "kvtier-trace-bounds: cannot open %s\n", argv[1]);
    return 1;
  }
  std::vector<kvtier::tier::TraceRequest> trace;
  if (kvtier::Status s = kvtier::tier::ReadTrace(in, &trace); !s.ok()) {
    std::fprintf(stderr, "kvtier-trace-bounds: %s: %s\n", argv[1], s.message().c_str());
    return 1;
  }
  const uint64_t unique = kvtier::tier::UniqueBlocks(trace);
  uint64_t blocks = 0;
  for (const auto& r : trace) blocks += r.hash_ids.size();
  std::printf("%s: %zu requests, %llu block requests, %llu unique blocks\n\n", argv[1],
              trace.size(), static_cast<unsigned long long>(blocks),
              static_cast<unsigned long long>(unique));
  std::printf("| capacity | blocks | MIN usable prefix | LRU usable prefix | LRU / MIN | "
              "MIN block hits | LRU block hits |\n| --- | --- | --- | --- | --- | --- | --- |\n");
  const auto t0 = std::chrono::steady_clock::now();
  for (double p : percents) {
    const auto cap = static_cast<uint64_t>(static_cast<double>(unique) * p / 100.0);
    const ReplayCounts min = kvtier::tier::ReplayMin(trace, cap);
    const ReplayCounts lru = kvtier::tier::ReplayLru(trace, cap);
    const double ratio = min.usable_prefix_hit_ratio() > 0
                             ? lru.usable_prefix_hit_ratio() / min.usable_prefix_hit_ratio()
                             : 0;
    std::printf("| %g%% | %llu | %.3f | %.3f | %.2f | %.3f | %.3f |\n", p,
                static_cast<unsigned long long>(cap), min.usable_prefix_hit_ratio(),
                lru.usable_prefix_hit_ratio(), ratio, min.block_hit_ratio(),
                lru.block_hit_ratio());
  }
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\n%zu capacities x 2 policies in %.2f s\n", percents.size(), s);
  return 0;
}
