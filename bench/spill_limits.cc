#include "bench/spill_limits.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "crypto/secret_key.h"
#include "daemon/spill/io_probe.h"
#include "daemon/spill/spill_format.h"

namespace kvtier::bench {

std::unique_ptr<BlockDevice> OpenSpillDevice() {
  DeviceOptions options;
  options.queue_depth = kDeviceQueue;
  std::string why_fallback;
  auto device = OpenBestDevice(options, &why_fallback);
  CheckOk(device.status(), "opening the spill block device");
  if (!why_fallback.empty()) std::printf("  note: %s\n", why_fallback.c_str());
  return std::move(*device);
}

double Gbps(uint64_t bytes, uint64_t ns) {
  return ns == 0 ? 0 : static_cast<double>(bytes) / static_cast<double>(ns);
}

// --- RawDisk ---

RawDisk::RawDisk(const std::filesystem::path& dir)
    : device_(OpenSpillDevice()),
      device_name_(device_->name()),
      path_((dir / "raw.bin").string()),
      buffers_(kRawQueueDepth * kSpillBlock) {}

RawDisk::~RawDisk() {
  if (file_ < 0) return;
  CheckOk(device_->CloseFile(file_), "closing " + path_);
  CheckOk(device_->RemoveFile(path_), "removing " + path_);
}

uint64_t RawDisk::Pass(IoOp op, uint64_t total) {
  std::array<IoRequest, kRawQueueDepth> requests{};
  std::vector<size_t> free_requests;
  for (size_t k = 0; k < kRawQueueDepth; ++k)
    free_requests.push_back(k);
  std::array<IoRequest*, kRawQueueDepth> reaped{};
  const char* what = op == IoOp::kWrite ? "raw write" : "raw read";
  uint64_t next = 0;
  uint64_t done = 0;
  const uint64_t start = NowNs();
  while (done < total) {
    while (next < total && !free_requests.empty()) {
      const size_t k = free_requests.back();
      free_requests.pop_back();
      IoRequest& r = requests[k];
      r = IoRequest{};
      r.op = op;
      r.file = file_;
      r.offset = next;
      r.buffer = std::span<std::byte>(buffers_.data() + k * kSpillBlock, kSpillBlock);
      CheckOk(device_->Submit(&r), std::string(what) + " submit");
      next += kSpillBlock;
    }
    const size_t n = device_->Reap(reaped, true);
    for (size_t i = 0; i < n; ++i) {
      if (!reaped[i]->complete()) {
        Fail(std::string(what) + " at offset " + std::to_string(reaped[i]->offset) + ": result " +
             std::to_string(reaped[i]->result));
      }
      done += kSpillBlock;
      free_requests.push_back(static_cast<size_t>(reaped[i] - requests.data()));
    }
  }
  return NowNs() - start;
}

double RawDisk::Write(uint64_t bytes) {
  if (bytes == 0 || bytes % kSpillBlock != 0) Fail("raw write of a partial block");
  if (file_ >= 0) {
    CheckOk(device_->CloseFile(file_), "closing " + path_);
    CheckOk(device_->RemoveFile(path_), "removing " + path_);
    file_ = -1;
    written_ = 0;
  }
  std::string warning;
  auto file =
      device_->OpenFile(path_, OpenMode{.create = true, .preallocate_bytes = bytes}, &warning);
  CheckOk(file.status(), "creating " + path_);
  if (!warning.empty()) std::printf("  note: %s\n", warning.c_str());
  file_ = *file;
  direct_ = device_->direct_io(file_);
  const uint64_t ns = Pass(IoOp::kWrite, bytes);
  written_ = bytes;
  // Durable before anything reads it back, untimed (the store syncs segment headers only).
  CheckOk(device_->Sync(file_), "fdatasync of " + path_);
  return Gbps(bytes, ns);
}

double RawDisk::Read(uint64_t bytes) {
  if (bytes == 0 || bytes % kSpillBlock != 0 || bytes > written_) {
    Fail("raw read of " + SizeName(bytes) + " of a file with " + SizeName(written_) + " written");
  }
  return Gbps(bytes, Pass(IoOp::kRead, bytes));
}

Latency RawDisk::ReadQd1(int reads) {
  const uint64_t blocks = written_ / kSpillBlock;
  if (blocks == 0 || reads <= 0) Fail("raw qd1 reads of an unwritten file");
  std::vector<uint64_t> samples;
  std::array<IoRequest*, 1> reaped{};
  for (int i = 0; i < reads; ++i) {
    IoRequest r;
    r.op = IoOp::kRead;
    r.file = file_;
    r.offset = (static_cast<uint64_t>(i) * 7919 % blocks) * kSpillBlock;
    r.buffer = std::span<std::byte>(buffers_.data(), kSpillBlock);
    const uint64_t start = NowNs();
    CheckOk(device_->Submit(&r), "raw read submit");
    if (device_->Reap(reaped, true) != 1 || !r.complete()) Fail("raw qd1 read failed");
    samples.push_back(NowNs() - start);
  }
  Latency l;
  l.p50_us = static_cast<double>(Quantile(samples, 0.5)) * 1e-3;
  l.p99_us = static_cast<double>(Quantile(samples, 0.99)) * 1e-3;
  return l;
}

// --- AesMeter ---

AesMeter::AesMeter(uint64_t working_set_bytes)
    : src_(working_set_bytes), ct_(working_set_bytes), pt_(working_set_bytes) {
  if (slots() == 0) Fail("AES working set below one block");
  auto key = SecretKey::Random();
  CheckOk(key.status(), "random AES key");
  auto gcm = AesGcm::Create(*key);
  CheckOk(gcm.status(), "AesGcm::Create");
  gcm_.emplace(std::move(*gcm));
  nonces_.resize(slots());
  tags_.resize(slots());
}

std::span<std::byte> AesMeter::Block(const PrivateBuffer& b, uint64_t slot) const {
  return std::span<std::byte>(b.data() + slot * kSpillBlock, kSpillBlock);
}

// With an AAD the size of a spill record's, as SpillStore seals (out of place, one context).
double AesMeter::Encrypt(uint64_t bytes_per_rep, int reps) {
  const uint64_t n_slots = slots();
  if (n_slots == 0) Fail("AES working set below one block");
  const std::array<std::byte, spill::kRecordAadTotalBytes> aad{};
  const uint64_t blocks = bytes_per_rep / kSpillBlock;
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) {
    const uint64_t start = NowNs();
    for (uint64_t i = 0; i < blocks; ++i) {
      const uint64_t slot = i % n_slots;
      const uint64_t n = nonce_counter_++;
      std::memcpy(nonces_[slot].data() + 4, &n, sizeof(n));
      CheckOk(gcm_->Seal(nonces_[slot], aad, Block(src_, slot), Block(ct_, slot), tags_[slot]),
              "AES-GCM Seal");
    }
    best = std::max(best, Gbps(blocks * kSpillBlock, NowNs() - start));
    sealed_slots_ = std::max(sealed_slots_, std::min(blocks, n_slots));
  }
  return best;
}

double AesMeter::Decrypt(uint64_t bytes_per_rep, int reps) {
  const uint64_t n_slots = slots();
  if (n_slots == 0) Fail("AES working set below one block");
  const std::array<std::byte, spill::kRecordAadTotalBytes> aad{};
  const uint64_t blocks = bytes_per_rep / kSpillBlock;
  if (sealed_slots_ < std::min(blocks, n_slots)) Encrypt(n_slots * kSpillBlock, 1);
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) {
    const uint64_t start = NowNs();
    for (uint64_t i = 0; i < blocks; ++i) {
      const uint64_t slot = i % n_slots;
      CheckOk(gcm_->Open(nonces_[slot], aad, Block(ct_, slot), tags_[slot], Block(pt_, slot)),
              "AES-GCM Open");
    }
    best = std::max(best, Gbps(blocks * kSpillBlock, NowNs() - start));
  }
  if (std::memcmp(src_.data(), pt_.data(), std::min(blocks, n_slots) * kSpillBlock) != 0) {
    Fail("AES-GCM round trip changed the bytes");
  }
  return best;
}

}  // namespace kvtier::bench
