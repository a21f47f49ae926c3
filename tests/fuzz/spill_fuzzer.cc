// Fuzzes the spill tier's parsing of segment bytes read back from disk: the pure record checks
// of daemon/spill/spill_record.h (PlausibleRecord, RecordAad, RecordNonceBytes), and the
// recovery scan of daemon/spill/spill_recovery.cc. Recovery has no pure entry point (it reads
// through a BlockDevice inside SpillStore::Open), so the input is written as a real segment
// file in a private tmpfs directory and a SpillStore is opened over it with the thread-pool
// device, as kvtierd does at start.
//
// Input (compact, so that small inputs reach the records):
//   byte 0          flags: bit 0 seals the header's wrapped key under the fuzzer's tenant key
//                   (else no header written by the fuzzer authenticates), bit 1 seals every
//                   record the scan will authenticate (else no record does)
//   bytes 1..136    the SegmentHeader (zero-padded when short); the rest of its 4 KiB is zero
//   bytes 137..     the file from offset 4096 on: record candidates every 4096 bytes
// With both flags, the fuzzer knows exactly which records recovery must find.
//
// Checked besides "no crash": PlausibleRecord agrees with its contract written out with
// overflow-checked arithmetic; RecordAad and RecordNonceBytes have the layout spill_format.h
// gives; Open succeeds; a header that fails its checks discards the segment; every recovered
// record lies inside the segment and the file with valid lengths; with both flags, the
// recovered records are exactly the newest sealed copy of each key.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "crypto/aes_gcm.h"
#include "crypto/secret_key.h"
#include "daemon/spill/spill_format.h"
#include "daemon/spill/spill_record.h"
#include "daemon/spill/spill_store.h"
#include "daemon/spill/thread_pool_device.h"
#include "ipc/base/unique_fd.h"
#include "tests/fuzz/fuzz_check.h"

namespace kvtier::fuzz {
namespace {

using spill::kAlignBytes;
using spill::kRecordHeaderBytes;
using spill::RecordHeader;
using spill::SegmentHeader;

constexpr char kTenant[] = "fuzz";
constexpr uint32_t kSegmentId = 1;
constexpr uint64_t kMaxPayloadBytes = 16 * 1024;
constexpr size_t kMaxFileBytes = 512 * 1024;  // well inside one 1 MiB recovery chunk
constexpr uint8_t kSealKey = 1;
constexpr uint8_t kSealRecords = 2;

SecretKey KeyOf(uint8_t fill) {
  std::array<std::byte, SecretKey::kBytes> bytes;
  bytes.fill(std::byte{fill});
  return SecretKey::FromBytes(bytes);
}

struct World {
  std::filesystem::path dir;  // the tenant's spill directory
  std::filesystem::path segment_path;
  std::unique_ptr<BlockDevice> device;
  SecretKey tenant_key = KeyOf(0x5a);
  SecretKey data_key = KeyOf(0xa5);
  SpillOptions options;
};

World& TheWorld() {
  static World* world = [] {
    auto* w = new World();
    w->dir = MakeScratchDir("spill") / "tenant";
    w->segment_path = w->dir / "seg-00000001.kvs";
    // The store would create it at its first Open; the first segment is written before that.
    KVT_FUZZ_CHECK(mkdir(w->dir.c_str(), 0700) == 0, "mkdir " + w->dir.string());
    DeviceOptions device;
    device.queue_depth = 4;
    device.threads = 1;
    device.max_files = 8;
    device.force_thread_pool = true;
    auto opened = ThreadPoolDevice::Open(device);
    KVT_FUZZ_CHECK(opened.ok(), opened.status().ToString());
    w->device = std::move(*opened);
    w->options.dir = w->dir;
    w->options.tenant = kTenant;
    w->options.segment_bytes = 2ull << 20;
    w->options.quota_bytes = 8ull << 20;
    w->options.max_record_payload_bytes = kMaxPayloadBytes;
    w->options.staging_buffers = 1;
    return w;
  }();
  return *world;
}

// PlausibleRecord's contract (spill_record.h), with arithmetic that cannot wrap.
bool PlausibleByContract(const RecordHeader& r,
                         const SegmentHeader& s,
                         uint64_t offset,
                         uint64_t segment_end) {
  if (r.magic != spill::kRecordMagic || r.format_version != spill::kFormatVersion ||
      r.header_bytes != kRecordHeaderBytes || r.offset != offset || r.segment_id != s.segment_id ||
      r.segment_generation != s.generation) {
    return false;
  }
  if (r.key_len < 1 || r.key_len > 32 || r.namespace_len < 1 ||
      r.namespace_len > spill::kMaxNamespaceBytes) {
    return false;
  }
  if (offset >= segment_end) return false;
  // record_bytes must be header + payload rounded up to 4096, computed without wrapping.
  uint64_t sum = 0;
  if (__builtin_add_overflow(uint64_t{kRecordHeaderBytes}, r.payload_bytes, &sum) ||
      __builtin_add_overflow(sum, kAlignBytes - 1, &sum)) {
    return false;
  }
  const uint64_t record_bytes = sum / kAlignBytes * kAlignBytes;
  return r.record_bytes == record_bytes && record_bytes <= segment_end - offset;
}

void CheckRecordHelpers(const RecordHeader& r,
                        const SegmentHeader& s,
                        uint64_t offset,
                        uint64_t segment_end) {
  const bool plausible = spill::PlausibleRecord(r, s, offset, segment_end);
  const std::string what = "offset " + std::to_string(offset) + " segment_end " +
                           std::to_string(segment_end) + " payload " +
                           std::to_string(r.payload_bytes) + " record_bytes " +
                           std::to_string(r.record_bytes);
  KVT_FUZZ_CHECK(plausible == PlausibleByContract(r, s, offset, segment_end),
                 std::string("PlausibleRecord says ") + (plausible ? "yes" : "no") + ": " + what);
  if (!plausible) return;
  const auto aad = spill::RecordAad(s, r);
  spill::RecordAadPrefix prefix;
  std::memcpy(&prefix, aad.data(), sizeof(prefix));
  KVT_FUZZ_CHECK(std::memcmp(prefix.tenant, s.tenant, sizeof(prefix.tenant)) == 0 &&
                     prefix.segment_id == s.segment_id && prefix.reserved0 == 0 &&
                     prefix.segment_generation == s.generation,
                 "RecordAad prefix");
  KVT_FUZZ_CHECK(std::memcmp(aad.data() + sizeof(prefix), &r, spill::kRecordAadBytes) == 0,
                 "RecordAad header bytes");
  const auto nonce = spill::RecordNonceBytes(offset);
  for (size_t i = 0; i < nonce.size(); ++i) {
    const auto expected = static_cast<uint8_t>(i < 4 ? 0 : offset >> (8 * (i - 4)));
    KVT_FUZZ_CHECK(std::to_integer<uint8_t>(nonce[i]) == expected, "RecordNonceBytes");
  }
}

bool HeaderAcceptable(const SegmentHeader& s) {
  char tenant[sizeof(s.tenant)] = {};
  std::memcpy(tenant, kTenant, sizeof(kTenant) - 1);
  return std::memcmp(s.magic, spill::kSegmentMagic, sizeof(s.magic)) == 0 &&
         s.format_version == spill::kFormatVersion &&
         s.header_bytes == spill::kSegmentHeaderBytes && s.segment_id == kSegmentId &&
         std::memcmp(s.tenant, tenant, sizeof(tenant)) == 0 && s.segment_bytes % kAlignBytes == 0 &&
         s.segment_bytes > spill::kSegmentHeaderBytes;
}

void SealHeader(World& w, SegmentHeader& s) {
  auto gcm = AesGcm::Create(w.tenant_key);
  KVT_FUZZ_CHECK(gcm.ok(), gcm.status().ToString());
  const auto aad = std::as_bytes(std::span(&s, 1)).first(spill::kSegmentAadBytes);
  std::array<std::byte, AesGcm::kNonceBytes> nonce;
  std::memcpy(nonce.data(), s.wrapped_key.nonce, nonce.size());
  std::array<std::byte, 32> ciphertext;
  std::array<std::byte, AesGcm::kTagBytes> tag;
  KVT_FUZZ_CHECK(gcm->Seal(nonce, aad, w.data_key.bytes(), ciphertext, tag).ok(), "wrap");
  std::memcpy(s.wrapped_key.ciphertext, ciphertext.data(), ciphertext.size());
  std::memcpy(s.wrapped_key.tag, tag.data(), tag.size());
}

struct Sealed {
  std::string index_key;  // namespace length, namespace, key (as recovery indexes them)
  uint64_t offset;
  uint64_t payload_bytes;
  uint64_t sequence;
};

// Walks the records area as ScanRecords does (one chunk: the file is far below 1 MiB) and
// seals, in place, each record it would authenticate; returns them in scan order.
std::vector<Sealed> SealRecords(World& w,
                                std::vector<std::byte>& file,
                                const SegmentHeader& s,
                                bool seal) {
  std::vector<Sealed> sealed;
  const uint64_t scan_end =
      std::min<uint64_t>(s.segment_bytes, file.size() / kAlignBytes * kAlignBytes);
  if (scan_end <= spill::kSegmentHeaderBytes) return sealed;
  const uint64_t got = scan_end - spill::kSegmentHeaderBytes;
  auto gcm = AesGcm::Create(w.data_key);
  KVT_FUZZ_CHECK(gcm.ok(), gcm.status().ToString());
  for (uint64_t at = 0; at < got;) {
    const uint64_t offset = spill::kSegmentHeaderBytes + at;
    RecordHeader r;
    std::memcpy(&r, file.data() + offset, sizeof(r));
    if (!spill::PlausibleRecord(r, s, offset, s.segment_bytes) ||
        r.payload_bytes > kMaxPayloadBytes || at + r.record_bytes > got) {
      at += kAlignBytes;
      continue;
    }
    if (seal) {
      const auto aad = spill::RecordAad(s, r);
      const auto nonce = spill::RecordNonceBytes(offset);
      const std::span<std::byte> payload(file.data() + offset + kRecordHeaderBytes,
                                         r.payload_bytes);
      std::array<std::byte, AesGcm::kTagBytes> tag;
      KVT_FUZZ_CHECK(gcm->Seal(nonce, aad, payload, payload, tag).ok(), "seal a record");
      std::memcpy(r.tag, tag.data(), tag.size());
      std::memcpy(file.data() + offset, &r, sizeof(r));
    }
    std::string index_key(1, static_cast<char>(r.namespace_len));
    index_key.append(r.name_space, r.namespace_len);
    index_key.append(reinterpret_cast<const char*>(r.key), r.key_len);
    sealed.push_back({std::move(index_key), offset, r.payload_bytes, r.sequence});
    at += r.record_bytes;
  }
  return sealed;
}

void WriteFile(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  KVT_FUZZ_CHECK(fd.valid(), "create " + path.string());
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = write(fd.get(), bytes.data() + done, bytes.size() - done);
    KVT_FUZZ_CHECK(n > 0, "write " + path.string());
    done += static_cast<size_t>(n);
  }
}

}  // namespace
}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier;
  using namespace kvtier::fuzz;
  if (size == 0) return 0;
  World& w = TheWorld();
  const uint8_t flags = data[0];
  const std::span<const std::byte> input = Bytes(data + 1, size - 1);
  const size_t header_bytes = std::min(input.size(), sizeof(SegmentHeader));
  const std::span<const std::byte> records = input.subspan(header_bytes);
  if (records.size() > kMaxFileBytes - spill::kSegmentHeaderBytes) return 0;

  std::vector<std::byte> file(spill::kSegmentHeaderBytes + records.size());
  std::memcpy(file.data(), input.data(), header_bytes);
  std::memcpy(file.data() + spill::kSegmentHeaderBytes, records.data(), records.size());
  SegmentHeader seg;
  std::memcpy(&seg, file.data(), sizeof(seg));

  // The pure helpers, on every 4096-byte candidate, at its own offset and at the offset the
  // record claims (arbitrary 64-bit values against the header's segment_bytes).
  for (size_t at = spill::kSegmentHeaderBytes; at + sizeof(RecordHeader) <= file.size();
       at += kAlignBytes) {
    RecordHeader r;
    std::memcpy(&r, file.data() + at, sizeof(r));
    CheckRecordHelpers(r, seg, at, seg.segment_bytes);
    CheckRecordHelpers(r, seg, r.offset, seg.segment_bytes);
    CheckRecordHelpers(r, seg, r.offset, r.offset + r.record_bytes);
  }

  const bool header_ok = HeaderAcceptable(seg);
  const bool seal_key = (flags & kSealKey) != 0;
  if (seal_key) {
    SealHeader(w, seg);
    std::memcpy(file.data(), &seg, sizeof(seg));
  }
  const bool know_records = seal_key && header_ok && (flags & kSealRecords) != 0;
  const std::vector<Sealed> sealed = SealRecords(w, file, seg, (flags & kSealRecords) != 0);
  WriteFile(w.segment_path, file);

  std::vector<RecoveredRecord> recovered;
  {
    auto store = SpillStore::Open(w.options, w.device.get(), w.tenant_key, &recovered);
    KVT_FUZZ_CHECK(store.ok(), "SpillStore::Open: " + store.status().ToString());
    const RecoveryStats& stats = (*store)->recovery_stats();
    KVT_FUZZ_CHECK(stats.segments_scanned == 1 && stats.segments_skipped == 0, "segments");
    if (!header_ok) {
      KVT_FUZZ_CHECK(stats.segments_discarded == 1, "a bad header was not discarded");
    }
    if (header_ok && seal_key) {
      KVT_FUZZ_CHECK(stats.segments_discarded == 0, "a good header was discarded");
    }
    KVT_FUZZ_CHECK(stats.records_recovered == recovered.size(), "records_recovered");
    const uint64_t file_end = std::min<uint64_t>(seg.segment_bytes, file.size());
    std::map<std::string, const RecoveredRecord*> seen;
    for (const RecoveredRecord& r : recovered) {
      const SpillLocation& at = r.location;
      const std::string what = "recovered record at " + std::to_string(at.offset) + " payload " +
                               std::to_string(at.payload_bytes);
      KVT_FUZZ_CHECK(!r.key.empty() && r.key.size() <= 32, what);
      KVT_FUZZ_CHECK(!r.name_space.empty() && r.name_space.size() <= spill::kMaxNamespaceBytes,
                     what);
      KVT_FUZZ_CHECK(at.segment_id == kSegmentId && at.offset % kAlignBytes == 0 &&
                         at.offset >= spill::kSegmentHeaderBytes,
                     what);
      KVT_FUZZ_CHECK(at.payload_bytes <= kMaxPayloadBytes, what);
      KVT_FUZZ_CHECK(
          at.offset < file_end && spill::RecordBytes(at.payload_bytes) <= file_end - at.offset,
          what);
      std::string index_key(1, static_cast<char>(r.name_space.size()));
      index_key += r.name_space;
      index_key.append(r.key.begin(), r.key.end());
      KVT_FUZZ_CHECK(seen.emplace(index_key, &r).second, "a key recovered twice: " + what);
      // Live until released: Locate finds it.
      KVT_FUZZ_CHECK((*store)->Locate(at.segment_id, at.offset) == at, what);
    }
    if (know_records) {
      // The newest sealed copy of each key (the first of equal sequences) is recovered, and
      // nothing else.
      std::map<std::string, const Sealed*> newest;
      for (const Sealed& s : sealed) {
        auto [it, inserted] = newest.emplace(s.index_key, &s);
        if (!inserted && it->second->sequence < s.sequence) it->second = &s;
      }
      KVT_FUZZ_CHECK(stats.records_recovered + stats.records_superseded == sealed.size(),
                     "recovered " + std::to_string(stats.records_recovered) + " + superseded " +
                         std::to_string(stats.records_superseded) + ", sealed " +
                         std::to_string(sealed.size()));
      KVT_FUZZ_CHECK(recovered.size() == newest.size(),
                     "recovered " + std::to_string(recovered.size()) + " keys of " +
                         std::to_string(newest.size()));
      for (const auto& [key, s] : newest) {
        auto it = seen.find(key);
        KVT_FUZZ_CHECK(it != seen.end(), "a sealed record was not recovered");
        KVT_FUZZ_CHECK(it->second->location.offset == s->offset &&
                           it->second->location.payload_bytes == s->payload_bytes &&
                           it->second->location.sequence == s->sequence,
                       "recovered a copy that is not the newest");
      }
    }
  }
  std::error_code ec;
  std::filesystem::remove(w.segment_path, ec);
  return 0;
}
