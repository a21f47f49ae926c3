// The spill tier's limits, measurable again beside every spill figure: this VM's disk bursts
// after idle periods and its cores drift, so a limit measured minutes away from a figure is no
// yardstick for it. Shared by the store-level and the daemon-level spill sections.
//   RawDisk   raw O_DIRECT 2 MiB writes and reads at queue depth 8 of one file in a directory
//             on the spill filesystem, and single 2 MiB reads (queue depth 1), through the
//             device kvtierd's spill tier would pick (OpenBestDevice: io_uring where allowed);
//   AesMeter  AES-256-GCM seal / open GB/s of 2 MiB blocks on one core (kvtier::AesGcm, out of
//             place, with a spill record's AAD), as SpillStore encrypts and decrypts.
// Each fails loudly (bench::Fail) on any error status or wrong byte. Single-threaded.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "bench/figures.h"
#include "crypto/aes_gcm.h"
#include "daemon/spill/block_device.h"

namespace kvtier::bench {

inline constexpr uint64_t kSpillBlock = 2 * kMiB;  // every spill figure's block size
inline constexpr uint32_t kRawQueueDepth = 8;      // raw I/Os in flight (= staging buffers)
inline constexpr uint32_t kDeviceQueue = 16;       // the device's queue (> staging buffers)

// Opens the device OpenBestDevice picks with a queue of kDeviceQueue (prints why it fell back).
std::unique_ptr<BlockDevice> OpenSpillDevice();

// bytes per ns = GB/s (1e9 bytes/s).
double Gbps(uint64_t bytes, uint64_t ns);

// Raw I/O on `dir`/raw.bin, removed by the destructor.
class RawDisk {
 public:
  explicit RawDisk(const std::filesystem::path& dir);
  ~RawDisk();
  RawDisk(const RawDisk&) = delete;
  RawDisk& operator=(const RawDisk&) = delete;

  const std::string& device() const { return device_name_; }
  bool direct() const { return direct_; }  // the file took O_DIRECT

  // GB/s of writing `bytes` in 2 MiB I/Os, kRawQueueDepth in flight, into a freshly
  // preallocated file (the previous one is removed first), as the spill store writes into
  // freshly preallocated segments (unwritten extents, converted on write).
  double Write(uint64_t bytes);
  // GB/s of reading the first `bytes` the same way; they must have been written (a read of an
  // unwritten extent never reaches the disk).
  double Read(uint64_t bytes);
  // `reads` single 2 MiB reads, one at a time, scattered over the written bytes.
  Latency ReadQd1(int reads);

 private:
  uint64_t Pass(IoOp op, uint64_t bytes);  // ns from the first submit to the last completion

  std::unique_ptr<BlockDevice> device_;
  std::string device_name_;
  std::string path_;
  PrivateBuffer buffers_;  // kRawQueueDepth blocks
  int file_ = -1;
  uint64_t written_ = 0;
  bool direct_ = true;
};

struct AesLimits {
  double encrypt_gbps = 0;
  double decrypt_gbps = 0;
};

// A random key and three buffers of `working_set_bytes` (plaintext, ciphertext, decrypted),
// cycled so caches do not flatter the figure.
class AesMeter {
 public:
  explicit AesMeter(uint64_t working_set_bytes);
  AesMeter(const AesMeter&) = delete;
  AesMeter& operator=(const AesMeter&) = delete;

  // Best-of-`reps` GB/s of sealing `bytes_per_rep` in 2 MiB blocks.
  double Encrypt(uint64_t bytes_per_rep, int reps);
  // Best-of-`reps` GB/s of opening `bytes_per_rep` of what Encrypt sealed (sealing the working
  // set first, untimed, if it has not); checks that the bytes came back.
  double Decrypt(uint64_t bytes_per_rep, int reps);

 private:
  uint64_t slots() const { return src_.size() / kSpillBlock; }
  std::span<std::byte> Block(const PrivateBuffer& b, uint64_t slot) const;

  std::optional<AesGcm> gcm_;
  PrivateBuffer src_;
  PrivateBuffer ct_;
  PrivateBuffer pt_;
  std::vector<std::array<std::byte, AesGcm::kNonceBytes>> nonces_;
  std::vector<std::array<std::byte, AesGcm::kTagBytes>> tags_;
  uint64_t sealed_slots_ = 0;  // slots 0..sealed_slots_-1 hold valid ciphertext and tags
  uint64_t nonce_counter_ = 0;
};

}  // namespace kvtier::bench
