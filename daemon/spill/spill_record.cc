#include "daemon/spill/spill_record.h"

#include <cstring>

namespace kvtier::spill {

std::array<std::byte, AesGcm::kNonceBytes> RecordNonceBytes(uint64_t offset) {
  uint8_t nonce[AesGcm::kNonceBytes];
  RecordNonce(offset, nonce);
  std::array<std::byte, AesGcm::kNonceBytes> out;
  std::memcpy(out.data(), nonce, out.size());
  return out;
}

std::array<std::byte, kRecordAadTotalBytes> RecordAad(const SegmentHeader& segment,
                                                      const RecordHeader& record) {
  RecordAadPrefix prefix{};
  std::memcpy(prefix.tenant, segment.tenant, sizeof(prefix.tenant));
  prefix.segment_id = segment.segment_id;
  prefix.segment_generation = segment.generation;
  std::array<std::byte, kRecordAadTotalBytes> aad;
  std::memcpy(aad.data(), &prefix, sizeof(prefix));
  std::memcpy(aad.data() + sizeof(prefix), &record, kRecordAadBytes);
  return aad;
}

bool PlausibleRecord(const RecordHeader& record, const SegmentHeader& segment, uint64_t offset,
                     uint64_t segment_end) {
  if (record.magic != kRecordMagic || record.format_version != kFormatVersion ||
      record.header_bytes != kRecordHeaderBytes || record.offset != offset ||
      record.segment_id != segment.segment_id ||
      record.segment_generation != segment.generation) {
    return false;
  }
  if (record.key_len < 1 || record.key_len > sizeof(record.key)) return false;
  if (record.namespace_len < 1 || record.namespace_len > kMaxNamespaceBytes) return false;
  // Bounded before RecordBytes so its sum cannot wrap: the header and the alignment slack must
  // fit too (a bound of segment_end - offset alone let a payload near 2^64 wrap to 0; found by
  // the spill fuzzer).
  if (offset >= segment_end || segment_end - offset < kRecordHeaderBytes ||
      segment_end - offset > UINT64_MAX - kAlignBytes ||
      record.payload_bytes > segment_end - offset - kRecordHeaderBytes) {
    return false;
  }
  if (record.record_bytes != RecordBytes(record.payload_bytes)) return false;
  return record.record_bytes <= segment_end - offset;
}

}  // namespace kvtier::spill
