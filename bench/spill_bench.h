// The store-level spill section of kvtier-bench (--spill DIR): the spill tier's figures at the
// store level, each beside this run's limits (bench/spill_limits.h). In order, on one thread,
// in a scratch subdirectory of DIR that it removes afterwards:
//   limits   raw O_DIRECT write and read GB/s of 2 MiB buffers at queue depth 8 on a freshly
//            preallocated file (the device OpenBestDevice picks: io_uring when allowed), the
//            raw 2 MiB read latency at queue depth 1, and AES-256-GCM encrypt / decrypt GB/s of
//            2 MiB buffers on one core (kvtier::AesGcm), measured before and after the store;
//   figures  SpillStore (one tenant, 256 MiB segments, 8 staging buffers) write GB/s (StartWrite
//            of 2 MiB records, Poll to completion) and read GB/s (StartRead of the same, every
//            record's stamp checked and one in 64 compared whole, untimed), each beside
//            min(raw disk, AES-GCM x 1 crypto thread): the store encrypts and decrypts on the
//            calling thread; and the p50 / p99 latency of reading one 2 MiB record.
// These are SpillStore figures; bench/daemon_spill_bench.h measures demotion and promotion
// through kvtierd.
// Fails loudly (bench::Fail) on any error status or wrong byte.
#pragma once

#include <string>
#include <vector>

#include "bench/report.h"

namespace kvtier::bench {

// `quick`: a tiny version (64 MiB per pass) that checks every path.
std::vector<Row> RunSpillBench(const std::string& dir, bool quick);

}  // namespace kvtier::bench
