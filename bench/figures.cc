#include "bench/figures.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "bench/bench_util.h"
#include "kvclient/copy.h"

namespace kvtier::bench {
namespace {

// The first 8 bytes of every stored block say which block it is.
uint64_t Stamp(uint32_t tag, uint64_t index) { return (uint64_t{tag} << 40) ^ index; }

// Puts of every block size stamp the shared source buffer at their block boundaries (multiples
// of 64 KiB), so a block matches its source except in the first word of each 64 KiB.
constexpr uint64_t kStampStride = 64 * 1024;
bool SameExceptStamps(const std::byte* a, const std::byte* b, uint64_t bytes) {
  for (uint64_t off = 0; off < bytes; off += kStampStride) {
    const uint64_t n = std::min(kStampStride, bytes - off);
    if (n > 8 && std::memcmp(a + off + 8, b + off + 8, n - 8) != 0) return false;
  }
  return true;
}

Throughput Measured(uint64_t blocks, uint64_t block_bytes, uint64_t ns) {
  Throughput t;
  t.blocks = blocks;
  t.bytes = blocks * block_bytes;
  t.seconds = Seconds(ns);
  t.gbps = static_cast<double>(t.bytes) / static_cast<double>(ns);
  return t;
}

std::string Where(uint32_t tag, uint64_t index) {
  return "block " + std::to_string(index) + " of figure tag " + std::to_string(tag);
}

}  // namespace

void Figures::FillKeys(uint32_t tag, uint64_t first, uint64_t count, uint64_t modulo) {
  keys_.resize(count);
  for (uint64_t j = 0; j < count; ++j) keys_[j] = BenchKey(tag, (first + j) % modulo);
}

PoolStats Figures::Stats() {
  auto stats = client_->Stats();
  CheckOk(stats.status(), "Stats");
  return *stats;
}

Throughput Figures::Put(uint32_t tag, uint64_t block_bytes, uint64_t blocks, uint64_t batch) {
  const uint64_t slots = src_->size() / block_bytes;
  const std::vector<uint64_t> sizes(batch, block_bytes);
  const uint64_t evictions_before = Stats().evictions;
  const uint64_t start = NowNs();
  for (uint64_t first = 0; first < blocks; first += batch) {
    const uint64_t n = std::min(batch, blocks - first);
    FillKeys(tag, first, n, blocks);
    auto reserved = client_->Reserve(keys_, std::span(sizes).first(n));
    CheckOk(reserved.status(), "Reserve of " + Where(tag, first) + "..");
    for (uint64_t j = 0; j < n; ++j) {
      if (reserved->code(j) != StatusCode::kOk) {
        Fail("Reserve of " + Where(tag, first + j) + ": " +
             std::string(StatusCodeName(reserved->code(j))));
      }
      const std::span<std::byte> slot = reserved->data(j);
      if (slot.size() != block_bytes) Fail("Reserve gave a slot of the wrong size");
      std::byte* src = src_->data() + ((first + j) % slots) * block_bytes;
      const uint64_t stamp = Stamp(tag, first + j);
      std::memcpy(src, &stamp, sizeof(stamp));
      CopyToPool(slot.data(), src, block_bytes);
    }
    CheckOk(reserved->Commit(), "Commit of " + Where(tag, first) + "..");
  }
  Throughput t = Measured(blocks, block_bytes, NowNs() - start);
  t.evictions = Stats().evictions - evictions_before;
  return t;
}

Throughput Figures::Get(uint32_t tag, uint64_t block_bytes, uint64_t stored,
                        uint64_t total_blocks, uint64_t batch) {
  const uint64_t slots = dst_->size() / block_bytes;
  const uint64_t src_slots = src_->size() / block_bytes;
  uint64_t verify_ns = 0;
  uint64_t verified = 0;
  const uint64_t start = NowNs();
  for (uint64_t first = 0; first < total_blocks; first += batch) {
    const uint64_t n = std::min(batch, total_blocks - first);
    FillKeys(tag, first, n, stored);
    auto leases = client_->Acquire(keys_);
    CheckOk(leases.status(), "Acquire of " + Where(tag, first % stored) + "..");
    for (uint64_t j = 0; j < n; ++j) {
      const uint64_t index = (first + j) % stored;
      if (leases->code(j) != StatusCode::kOk) {
        Fail("Acquire of " + Where(tag, index) + ": " +
             std::string(StatusCodeName(leases->code(j))));
      }
      const std::span<const std::byte> block = leases->data(j);
      if (block.size() != block_bytes) Fail("Acquire of " + Where(tag, index) + ": wrong size");
      std::byte* dst = dst_->data() + ((first + j) % slots) * block_bytes;
      CopyFromPool(dst, block.data(), block_bytes);
      uint64_t stamp = 0;
      std::memcpy(&stamp, dst, sizeof(stamp));
      if (stamp != Stamp(tag, index)) Fail("Acquire of " + Where(tag, index) + " read another block");
      if ((first + j) % 64 == 0) {
        // The whole block, against the source bytes it was put from (untimed).
        const uint64_t v0 = NowNs();
        const std::byte* src = src_->data() + (index % src_slots) * block_bytes;
        if (!SameExceptStamps(dst, src, block_bytes)) {
          Fail("the bytes of " + Where(tag, index) + " differ from what was put");
        }
        ++verified;
        verify_ns += NowNs() - v0;
      }
    }
    CheckOk(leases->Release(), "Release of " + Where(tag, first % stored) + "..");
  }
  if (verified == 0) Fail("get verified no block");
  return Measured(total_blocks, block_bytes, NowNs() - start - verify_ns);
}

uint32_t Figures::Region() {
  if (region_ == 0) {
    // At least a batch of 64 2 MiB blocks: one request's blocks must not share region bytes.
    auto memory = HostMemory::Create(std::max<uint64_t>(src_->size(), 64 * 2 * 1024 * 1024),
                                     "kvtier-bench-region");
    CheckOk(memory.status(), "creating the host region");
    region_memory_ = std::move(*memory);
    std::memset(region_memory_.data(), 1, region_memory_.size());  // faulted in, like src_
    auto id = client_->RegisterHostRegion(region_memory_);
    CheckOk(id.status(), "RegisterHostRegion");
    region_ = *id;
    // kvtierd maps a region lazily: one untimed offload and onload over every 2 MiB of it
    // takes the first-touch faults (on kvtierd's copy thread), as a long-running engine's
    // region would have.
    constexpr uint64_t kWarm = 2 * 1024 * 1024;
    const uint64_t n = region_memory_.size() / kWarm;
    std::vector<Key> keys(n);
    std::vector<uint64_t> offsets(n), sizes(n, kWarm);
    std::vector<OnloadInfo> infos(n);
    for (uint64_t i = 0; i < n; ++i) {
      keys[i] = BenchKey(0xfffff, i);
      offsets[i] = i * kWarm;
    }
    for (uint64_t at = 0; at < n; at += 64) {
      const uint64_t m = std::min<uint64_t>(64, n - at);
      const auto k = std::span(keys).subspan(at, m);
      const auto o = std::span(offsets).subspan(at, m);
      std::vector<StatusCode> codes(m);
      CheckOk(client_->Offload(k, region_, o, std::span(sizes).subspan(at, m), codes),
              "warm-up offload");
      CheckCodes(codes, "warm-up offload");
      CheckOk(client_->Onload(k, region_, o, infos), "warm-up onload");
      CheckOk(client_->Remove(k, codes), "warm-up remove");
      CheckCodes(codes, "warm-up remove");
    }
  }
  return region_;
}

Throughput Figures::Offload(uint32_t tag, uint64_t block_bytes, uint64_t blocks, uint64_t batch) {
  const uint32_t region = Region();
  const uint64_t slots = region_memory_.size() / block_bytes;
  if (slots < batch) Fail("the bench's host region is smaller than a batch");
  const std::vector<uint64_t> sizes(batch, block_bytes);
  std::vector<uint64_t> offsets(batch);
  std::vector<StatusCode> codes(batch);
  const uint64_t evictions_before = Stats().evictions;
  const uint64_t start = NowNs();
  for (uint64_t first = 0; first < blocks; first += batch) {
    const uint64_t n = std::min(batch, blocks - first);
    FillKeys(tag, first, n, blocks);
    for (uint64_t j = 0; j < n; ++j) {
      offsets[j] = ((first + j) % slots) * block_bytes;
      const uint64_t stamp = Stamp(tag, first + j);
      std::memcpy(region_memory_.data() + offsets[j], &stamp, sizeof(stamp));
    }
    CheckOk(client_->Offload(keys_, region, std::span(offsets).first(n), std::span(sizes).first(n),
                             codes),
            "Offload of " + Where(tag, first) + "..");
    CheckCodes(std::span(codes).first(n), "Offload of " + Where(tag, first) + "..");
  }
  Throughput t = Measured(blocks, block_bytes, NowNs() - start);
  t.evictions = Stats().evictions - evictions_before;
  return t;
}

Throughput Figures::Onload(uint32_t tag, uint64_t block_bytes, uint64_t blocks, uint64_t batch) {
  const uint32_t region = Region();
  const uint64_t slots = region_memory_.size() / block_bytes;
  std::vector<uint64_t> offsets(batch);
  std::vector<OnloadInfo> infos(batch);
  uint64_t check_ns = 0;
  const uint64_t start = NowNs();
  for (uint64_t first = 0; first < blocks; first += batch) {
    const uint64_t n = std::min(batch, blocks - first);
    FillKeys(tag, first, n, blocks);
    // Shifted by one slot from where each block was offloaded from, so a copy that did not
    // happen leaves the wrong stamp.
    for (uint64_t j = 0; j < n; ++j) offsets[j] = ((first + j + 1) % slots) * block_bytes;
    CheckOk(client_->Onload(keys_, region, std::span(offsets).first(n), infos),
            "Onload of " + Where(tag, first) + "..");
    const uint64_t c0 = NowNs();
    for (uint64_t j = 0; j < n; ++j) {
      uint64_t stamp = 0;
      std::memcpy(&stamp, region_memory_.data() + offsets[j], sizeof(stamp));
      if (infos[j].code != StatusCode::kOk || stamp != Stamp(tag, first + j)) {
        Fail("Onload of " + Where(tag, first + j) + " did not bring its bytes");
      }
    }
    check_ns += NowNs() - c0;
  }
  return Measured(blocks, block_bytes, NowNs() - start - check_ns);
}

void Figures::Remove(uint32_t tag, uint64_t blocks) {
  for (uint64_t first = 0; first < blocks; first += kMaxBatch) {
    const uint64_t n = std::min<uint64_t>(kMaxBatch, blocks - first);
    FillKeys(tag, first, n, blocks);
    std::vector<StatusCode> codes(n);
    CheckOk(client_->Remove(keys_, codes), "Remove of " + Where(tag, first) + "..");
    CheckCodes(codes, "Remove of " + Where(tag, first) + "..");
  }
}

double Figures::MatchPrefixKeysPerSecond(uint32_t tag, uint64_t stored, uint64_t batch,
                                         int calls, bool estimate) {
  // Pre-built key batches, so the figure is the client library and the daemon, not key making.
  const uint64_t batches = std::max<uint64_t>(1, stored / batch);
  std::vector<Key> all(batches * batch);
  for (uint64_t i = 0; i < all.size(); ++i) all[i] = BenchKey(tag, i % stored);
  uint64_t keys = 0;
  PrefixEstimate e;
  std::vector<Tier> tiers(batch);
  const uint64_t start = NowNs();
  for (int c = 0; c < calls; ++c) {
    const auto b = static_cast<uint64_t>(c) % batches;
    auto matched = estimate ? client_->MatchPrefix(std::span(all).subspan(b * batch, batch),
                                                   tiers, &e)
                            : client_->MatchPrefix(std::span(all).subspan(b * batch, batch));
    CheckOk(matched.status(), "MatchPrefix");
    if (estimate && (!e.valid || e.dram_blocks != batch)) {
      Fail("MatchPrefix's estimate is missing or counts " + std::to_string(e.dram_blocks) +
           " DRAM blocks of " + std::to_string(batch));
    }
    if (*matched != batch) {
      Fail("MatchPrefix matched " + std::to_string(*matched) + " of " + std::to_string(batch) +
           " present keys");
    }
    keys += batch;
  }
  const uint64_t ns = NowNs() - start;
  return static_cast<double>(keys) * 1e9 / static_cast<double>(ns);
}

Latency Figures::OneKeyRoundTrip(uint32_t tag, uint64_t stored, int calls) {
  std::vector<uint64_t> samples(static_cast<size_t>(calls));
  const uint64_t warmup = 1000;
  for (uint64_t c = 0; c < warmup + static_cast<uint64_t>(calls); ++c) {
    const Key key = BenchKey(tag, c % stored);
    const uint64_t start = NowNs();
    auto matched = client_->MatchPrefix(std::span(&key, 1));
    const uint64_t ns = NowNs() - start;
    CheckOk(matched.status(), "MatchPrefix of 1 key");
    if (*matched != 1) Fail("MatchPrefix of one present key matched " + std::to_string(*matched));
    if (c >= warmup) samples[c - warmup] = ns;
  }
  Latency l;
  l.p50_us = static_cast<double>(Quantile(samples, 0.50)) / 1000.0;
  l.p99_us = static_cast<double>(Quantile(samples, 0.99)) / 1000.0;
  return l;
}

IndexFill Figures::FillIndex(uint32_t tag, uint64_t block_bytes, uint64_t blocks) {
  const std::vector<uint64_t> sizes(kMaxBatch, block_bytes);
  const uint64_t committed_before = Stats().committed_blocks;
  const uint64_t start = NowNs();
  for (uint64_t first = 0; first < blocks; first += kMaxBatch) {
    const uint64_t n = std::min<uint64_t>(kMaxBatch, blocks - first);
    FillKeys(tag, first, n, blocks);
    auto reserved = client_->Reserve(keys_, std::span(sizes).first(n));
    CheckOk(reserved.status(), "Reserve of " + Where(tag, first) + "..");
    for (uint64_t j = 0; j < n; ++j) {
      if (reserved->code(j) != StatusCode::kOk) {
        Fail("Reserve of " + Where(tag, first + j) + " while filling the index: " +
             std::string(StatusCodeName(reserved->code(j))));
      }
    }
    CheckOk(reserved->Commit(), "Commit of " + Where(tag, first) + "..");
  }
  const uint64_t ns = NowNs() - start;
  const PoolStats stats = Stats();
  if (stats.committed_blocks != committed_before + blocks) {
    Fail("after committing " + std::to_string(blocks) + " blocks the daemon counts " +
         std::to_string(stats.committed_blocks - committed_before) + " (evictions: " +
         std::to_string(stats.evictions) + ")");
  }
  IndexFill f;
  f.blocks = stats.committed_blocks;
  f.index_bytes = stats.index_bytes;
  f.index_capacity = stats.index_capacity;
  f.keys_per_s = static_cast<double>(blocks) * 1e9 / static_cast<double>(ns);
  return f;
}

}  // namespace kvtier::bench
