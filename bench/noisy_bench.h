// kvtier-bench's "noisy neighbour" section: tenant b (this process) measures its 1-key round
// trip and its offload GB/s alone, then again while tenant a (a child running as another uid)
// frees 1 GiB in one request, onloads 4,096 blocks, or churns sessions, and prints each noisy
// figure beside the quiet one as a ratio. Needs root (the child takes another uid); returns no
// rows and says why otherwise.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bench/report.h"

namespace kvtier::bench {

struct NoisyBenchOptions {
  std::string kvtierd;
  bool quick = false;
  uint32_t poll_spin_us = 50;
};

std::vector<Row> RunNoisyBench(const NoisyBenchOptions& options);

}  // namespace kvtier::bench
