// The daemon-level spill section of kvtier-bench (--spill DIR, after the store-level one): the
// SSD tier's figures through kvtierd and libkvclient, each beside limits measured right around
// it. It starts its own kvtierd with a small pool (256 MiB; --quick 64 MiB) and an SSD tier in
// a scratch subdirectory of DIR (256 MiB segments, 1 spill thread, 8 staging buffers, the
// master key created in the daemon's temp dir), and measures in order:
//   demote   steady-state demotion GB/s: a client puts 2 MiB blocks in batches of 16, far
//            beyond the pool (4 GiB; --quick 256 MiB), so once the pool is full every reserve
//            waits for demotions (the daemon parks it) and the client runs at the demotion
//            rate. Timed only after the pool has filled and one more pool's worth has gone by:
//            Stats().demotions delta x 2 MiB over the window's time (the put rate over the same
//            window is printed beside it as a cross-check);
//   promote  promotion GB/s: Acquire of SSD-only blocks (tier checked by MatchPrefix over
//            every key, and each lease reports tier ssd), oldest first, in batches of 8 (the
//            staging buffers), every block's stamps checked and one in 64 compared whole
//            (untimed), then Release; bytes promoted over the time taken;
//   latency  p50 / p99 of Acquire of one SSD-only 2 MiB block (each sample a different key,
//            spread over the SSD-only set), until its reply: the block is in DRAM by then.
// Limits: raw O_DIRECT 2 MiB write (demote) / read (promote) GB/s at queue depth 8, over as
// many bytes as the timed demotion window, and AES-256-GCM encrypt / decrypt GB/s on one core,
// each measured just before and just after its figure on the same filesystem (this VM's disk
// bursts after idle periods, so a limit measured minutes away means nothing), the mean of the
// two taken; a figure's limit is
// min(raw disk, AES-GCM x spill threads), target >= 0.8x. The latency rows' limit is the raw
// 2 MiB read latency at queue depth 1 (measured just before and after, mean) plus one 2 MiB
// decrypt; shown for information. Fails loudly (bench::Fail) on any error status, wrong byte,
// lost block or spill failure counted by the daemon.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bench/report.h"

namespace kvtier::bench {

struct DaemonSpillBenchOptions {
  std::string dir;      // --spill DIR (made if missing; a scratch subdirectory is removed after)
  std::string kvtierd;  // the binary to start
  bool quick = false;   // small totals: a smoke run that checks every path
  uint32_t poll_spin_us = 50;
  uint32_t client_spin_us = 50;
};

struct DaemonSpillBenchResult {
  std::vector<Row> rows;
  std::string note;  // one line: the daemon's spill counters at the end
};

DaemonSpillBenchResult RunDaemonSpillBench(const DaemonSpillBenchOptions& options);

}  // namespace kvtier::bench
