// kvtier's own figures, measured through libkvclient (kvtier::Client) against a running kvtierd:
// put / get throughput with the client copying into / out of the mapped pool, match_prefix
// keys/s, the 1-key round trip, and index memory per block. Each fails loudly (bench::Fail) on
// any error status or wrong byte, so a broken path is never measured. Single-threaded.
#pragma once

#include <cstdint>
#include <vector>

#include "kvclient/client.h"

namespace kvtier::bench {

class PrivateBuffer;

struct Throughput {
  double gbps = 0;
  uint64_t bytes = 0;
  uint64_t blocks = 0;
  double seconds = 0;
  uint64_t evictions = 0;  // pool evictions during the figure (puts must have none)
};

struct Latency {
  double p50_us = 0;
  double p99_us = 0;
};

struct IndexFill {
  uint64_t blocks = 0;          // committed blocks when measured
  uint64_t index_bytes = 0;     // Stats().index_bytes
  uint64_t index_capacity = 0;
  double keys_per_s = 0;        // reserve + commit rate while filling (no copies)
  double bytes_per_block() const {
    return blocks == 0 ? 0 : static_cast<double>(index_bytes) / static_cast<double>(blocks);
  }
};

class Figures {
 public:
  // `src` feeds puts and `dst` receives gets: private buffers of working-set size.
  Figures(Client* client, PrivateBuffer* src, PrivateBuffer* dst)
      : client_(client), src_(src), dst_(dst) {}

  // Stores `blocks` new blocks of `block_bytes` (keys tagged `tag`, numbered 0..blocks-1) in
  // batches of `batch`: Reserve -> CopyToPool each -> Commit.
  Throughput Put(uint32_t tag, uint64_t block_bytes, uint64_t blocks, uint64_t batch);
  // Reads `total_blocks` blocks cycling over the `stored` blocks of `tag`: Acquire -> CopyFromPool
  // each -> Release. Checks every block's stamp and one whole block per 64 (untimed).
  Throughput Get(uint32_t tag, uint64_t block_bytes, uint64_t stored, uint64_t total_blocks,
                 uint64_t batch);
  // Removes blocks 0..blocks-1 of `tag`; each must be present.
  void Remove(uint32_t tag, uint64_t blocks);
  // MatchPrefix of `batch` present keys (cycling over `stored` keys of `tag`), `calls` times.
  // `estimate`: match_prefix_estimate (tiers and the load estimate), else plain match_prefix.
  double MatchPrefixKeysPerSecond(uint32_t tag, uint64_t stored, uint64_t batch, int calls,
                                  bool estimate = false);
  // MatchPrefix of one present key, `calls` times; per-call latency.
  Latency OneKeyRoundTrip(uint32_t tag, uint64_t stored, int calls);
  // Reserves and commits `blocks` blocks of `block_bytes` without copying, in batches of 4096,
  // then reads Stats().
  IndexFill FillIndex(uint32_t tag, uint64_t block_bytes, uint64_t blocks);

  // Daemon-driven copies through a host region (HostMemory of working-set size, registered
  // once): Offload stores `blocks` new blocks of `block_bytes` from it in batches of `batch`
  // (kvtierd copies region -> pool and commits); Onload reads them back into it (pool ->
  // region) and checks every block's stamp.
  Throughput Offload(uint32_t tag, uint64_t block_bytes, uint64_t blocks, uint64_t batch);
  Throughput Onload(uint32_t tag, uint64_t block_bytes, uint64_t blocks, uint64_t batch);

  PoolStats Stats();

 private:
  uint32_t Region();
  void FillKeys(uint32_t tag, uint64_t first, uint64_t count, uint64_t modulo);

  Client* client_;
  PrivateBuffer* src_;
  PrivateBuffer* dst_;
  std::vector<Key> keys_;
  HostMemory region_memory_;
  uint32_t region_ = 0;
};

}  // namespace kvtier::bench
