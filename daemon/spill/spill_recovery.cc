// SpillStore::Open's recovery of a tenant directory (docs/spill-format.md, "Recovery").
#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "crypto/key_wrap.h"
#include "crypto/secure_random.h"
#include "daemon/spill/spill_record.h"
#include "daemon/spill/spill_store.h"
#include "daemon/spill/spill_store_internal.h"
#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"
#include "ipc/base/units.h"

namespace kvtier {
namespace {

using spill::kAlignBytes;
using spill::kRecordHeaderBytes;

// Recovery reads segments in chunks of at least this much (and at least one largest record).
constexpr uint64_t kMinChunkBytes = 1 * kMiB;

// "seg-0000002a.kvs" -> 42.
std::optional<uint32_t> ParseSegmentName(const std::string& name) {
  if (name.size() != 16 || name.compare(0, 4, "seg-") != 0 || name.compare(12, 4, ".kvs") != 0) {
    return std::nullopt;
  }
  uint32_t id = 0;
  for (size_t i = 4; i < 12; ++i) {
    const char c = name[i];
    uint32_t digit = 0;
    if (c >= '0' && c <= '9') {
      digit = static_cast<uint32_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      digit = static_cast<uint32_t>(c - 'a' + 10);
    } else {
      return std::nullopt;
    }
    id = id << 4 | digit;
  }
  return id;
}

// The index key of a record: namespace and key, length-prefixed so no two pairs collide.
std::string IndexKey(const spill::RecordHeader& header) {
  std::string out;
  out.push_back(static_cast<char>(header.namespace_len));
  out.append(header.name_space, header.namespace_len);
  out.append(reinterpret_cast<const char*>(header.key), header.key_len);
  return out;
}

struct FreeBytes {
  void operator()(std::byte* p) const { std::free(p); }
};

}  // namespace

Status SpillStore::Recover(std::vector<RecoveredRecord>* recovered,
                           const SecretKey* legacy_key) {
  std::vector<uint32_t> ids;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(options_.dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    if (auto id = ParseSegmentName(it->path().filename().string())) ids.push_back(*id);
  }
  if (ec) {
    return Status(StatusCode::kIoError,
                  "spill: cannot list " + options_.dir.string() + ": " + ec.message());
  }
  std::sort(ids.begin(), ids.end());

  const uint64_t chunk_bytes = std::max<uint64_t>(slot_bytes_, kMinChunkBytes);
  std::unique_ptr<std::byte, FreeBytes> memory(
      static_cast<std::byte*>(std::aligned_alloc(kAlignBytes, chunk_bytes)));
  if (memory == nullptr) {
    return Status(StatusCode::kResourceExhausted, "spill: no memory for recovery reads");
  }
  const std::span<std::byte> chunk(memory.get(), chunk_bytes);

  std::map<std::string, RecoveredRecord> newest;
  uint64_t valid = 0;
  for (uint32_t id : ids) {
    ++recovery_.segments_scanned;
    KVT_RETURN_IF_ERROR(RecoverSegment(id, chunk, legacy_key, &newest, &valid));
    if (id != UINT32_MAX) next_segment_id_ = std::max(next_segment_id_, id + 1);
  }

  // Only the newest copy of each key is live; the others are dead space.
  std::vector<RecoveredRecord> winners;
  winners.reserve(newest.size());
  for (auto& [index_key, record] : newest) {
    Segment* segment = segments_.at(record.location.segment_id).get();
    SpillRecordMeta* meta = segment->Find(record.location.offset);
    KVT_CHECK(meta != nullptr);
    meta->live = true;
    ++segment->live;
    ++stats_.live_records;
    winners.push_back(std::move(record));
  }
  recovery_.records_recovered = winners.size();
  recovery_.records_superseded = valid - winners.size();
  std::sort(winners.begin(), winners.end(), [](const auto& a, const auto& b) {
    return a.location.sequence < b.location.sequence;
  });
  if (recovered != nullptr) {
    for (auto& record : winners) recovered->push_back(std::move(record));
  }

  const size_t before = segments_.size();
  EraseDeadSegments();
  recovery_.segments_emptied = static_cast<uint32_t>(before - segments_.size());
  return Status::Ok();
}

Status SpillStore::RecoverSegment(uint32_t id, std::span<std::byte> chunk,
                                  const SecretKey* legacy_key,
                                  std::map<std::string, RecoveredRecord>* newest,
                                  uint64_t* valid) {
  const std::filesystem::path path = SegmentPath(id);
  Result<int> opened = device_->OpenFile(path.string(), OpenMode{});
  if (opened.status().code() == StatusCode::kFailedPrecondition) {
    // Not a segment kvtierd could have written (a symlink, FIFO, directory, device, or another
    // uid's file): left where it is, untouched; its id is still skipped by new segments.
    ++recovery_.segments_skipped;
    recovery_.warnings.push_back(opened.status().message() + "; skipped");
    return Status::Ok();
  }
  KVT_RETURN_IF_ERROR(opened.status());
  const int file = *opened;
  // A segment that cannot prove it is ours, with a live key, is of no use: removed.
  const auto discard = [&] {
    (void)device_->CloseFile(file);
    (void)device_->RemoveFile(path.string());
    ++recovery_.segments_discarded;
    return Status::Ok();
  };

  IoRequest request;
  request.op = IoOp::kRead;
  request.file = file;
  request.offset = 0;
  request.buffer = header_block();
  Status status = WaitFor(&request);
  if (!status.ok()) {
    (void)device_->CloseFile(file);
    return status;
  }
  if (!request.complete()) return discard();
  auto segment = std::make_unique<Segment>();
  spill::SegmentHeader& header = segment->header;
  std::memcpy(&header, request.buffer.data(), sizeof(header));
  char tenant[sizeof(header.tenant)] = {};
  std::memcpy(tenant, options_.tenant.data(), options_.tenant.size());
  if (std::memcmp(header.magic, spill::kSegmentMagic, sizeof(header.magic)) != 0 ||
      header.format_version != spill::kFormatVersion ||
      header.header_bytes != spill::kSegmentHeaderBytes || header.segment_id != id ||
      std::memcmp(header.tenant, tenant, sizeof(tenant)) != 0 ||
      header.segment_bytes % kAlignBytes != 0 ||
      header.segment_bytes <= spill::kSegmentHeaderBytes) {
    return discard();
  }
  WrappedKey wrapped;
  static_assert(sizeof(wrapped) == sizeof(header.wrapped_key));
  std::memcpy(&wrapped, &header.wrapped_key, sizeof(wrapped));
  const auto aad = std::as_bytes(std::span(&header, 1)).first(spill::kSegmentAadBytes);
  Result<SecretKey> data_key = UnwrapKey(tenant_key_, wrapped, aad);
  if (data_key.status().code() == StatusCode::kDataLoss && legacy_key != nullptr) {
    // Written before the keyring, under the tenant key then derived from the master key.
    data_key = UnwrapKey(*legacy_key, wrapped, aad);
    if (data_key.ok()) ++recovery_.segments_legacy_key;
  }
  if (!data_key.ok()) {
    if (data_key.status().code() == StatusCode::kDataLoss) {
      // Erased (the wrapped key is all zeros), or wrapped under a tenant key this store does
      // not have: a retired epoch, a lost keyring, another master key.
      bool erased = true;
      for (const uint8_t b : header.wrapped_key.ciphertext) erased = erased && b == 0;
      for (const uint8_t b : header.wrapped_key.tag) erased = erased && b == 0;
      if (!erased) ++recovery_.segments_key_rejected;
      return discard();
    }
    (void)device_->CloseFile(file);
    return data_key.status();
  }
  Result<AesGcm> gcm = AesGcm::Create(*data_key);
  if (!gcm.ok()) {
    (void)device_->CloseFile(file);
    return gcm.status();
  }
  segment->gcm.emplace(std::move(*gcm));
  segment->id = id;
  segment->path = path;
  segment->file = file;
  segment->tail = header.segment_bytes;
  // Never appended to again: a torn write beyond the last record found may have used the
  // nonce of the next offset.
  segment->sealed = true;

  std::error_code ec;
  const uint64_t file_bytes = std::filesystem::file_size(path, ec);
  const uint64_t scan_end =
      ec ? 0 : std::min(header.segment_bytes, file_bytes / kAlignBytes * kAlignBytes);
  Segment* raw = segment.get();
  segments_.emplace(id, std::move(segment));
  ScanRecords(raw, scan_end, chunk, newest, valid);
  return Status::Ok();
}

// Every 4096-byte block is a candidate record start, not just the block after the previous
// record: writes are concurrent and may land out of order, so a crash can leave a hole (a
// record never written) before records that were. A candidate is authenticated only if its
// header is plausible for this segment lifetime (magic, offset, id, 64-bit random generation);
// ciphertext and preallocated zeros are not.
void SpillStore::ScanRecords(Segment* segment, uint64_t scan_end, std::span<std::byte> chunk,
                             std::map<std::string, RecoveredRecord>* newest, uint64_t* valid) {
  const spill::SegmentHeader& seg = segment->header;
  uint64_t pos = spill::kSegmentHeaderBytes;
  while (pos < scan_end) {
    IoRequest request;
    request.op = IoOp::kRead;
    request.file = segment->file;
    request.offset = pos;
    request.buffer = chunk.first(std::min<uint64_t>(chunk.size(), scan_end - pos));
    if (!WaitFor(&request).ok() || request.result <= 0) return;  // unreadable: stop here
    const uint64_t got = static_cast<uint64_t>(request.result) / kAlignBytes * kAlignBytes;
    if (got == 0) return;
    uint64_t at = 0;  // within the chunk
    while (at < got) {
      spill::RecordHeader header;
      std::memcpy(&header, chunk.data() + at, sizeof(header));
      if (!spill::PlausibleRecord(header, seg, pos + at, seg.segment_bytes)) {
        at += kAlignBytes;
        continue;
      }
      if (at + header.record_bytes > got && at > 0) break;  // read again from this record
      if (header.payload_bytes > options_.max_record_payload_bytes ||
          at + header.record_bytes > got) {
        // Larger than this store can stage, or cut off by the end of the file.
        ++recovery_.records_rejected;
        at += kAlignBytes;
        continue;
      }
      const auto aad = spill::RecordAad(seg, header);
      const auto nonce = spill::RecordNonceBytes(pos + at);
      std::array<std::byte, AesGcm::kTagBytes> tag;
      std::memcpy(tag.data(), header.tag, tag.size());
      const std::span<std::byte> payload =
          chunk.subspan(at + kRecordHeaderBytes, header.payload_bytes);
      // Decrypted only to verify it; the plaintext is wiped at once (Open zeroes it on failure),
      // before the chunk is read into again or freed.
      const bool authentic = segment->gcm->Open(nonce, aad, payload, tag, payload).ok();
      if (authentic) SecureZero(payload.data(), payload.size());
      if (!authentic) {
        ++recovery_.records_rejected;  // torn or tampered
        at += kAlignBytes;
        continue;
      }
      ++*valid;
      segment->records.push_back(
          SpillRecordMeta{pos + at, header.payload_bytes, header.sequence, false});
      next_sequence_ = std::max(next_sequence_, header.sequence + 1);
      RecoveredRecord record;
      record.name_space.assign(header.name_space, header.namespace_len);
      record.key.assign(header.key, header.key + header.key_len);
      record.location = SpillLocation{segment->id, pos + at, header.payload_bytes,
                                      header.sequence};
      auto [it, inserted] = newest->try_emplace(IndexKey(header), std::move(record));
      if (!inserted && it->second.location.sequence < header.sequence) {
        it->second.location = SpillLocation{segment->id, pos + at, header.payload_bytes,
                                            header.sequence};
      }
      at += header.record_bytes;
    }
    pos += at;
  }
}

}  // namespace kvtier
