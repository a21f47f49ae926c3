// Helpers for spill records (spill_format.h): the nonce, the associated data, and the checks a
// RecordHeader read from disk must pass before its record is worth authenticating.
// Thread-safety: pure functions.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "crypto/aes_gcm.h"
#include "daemon/spill/spill_format.h"

namespace kvtier::spill {

std::array<std::byte, AesGcm::kNonceBytes> RecordNonceBytes(uint64_t offset);

// RecordAadPrefix from `segment`, then `record`'s bytes [0, kRecordAadBytes).
std::array<std::byte, kRecordAadTotalBytes> RecordAad(const SegmentHeader& segment,
                                                      const RecordHeader& record);

// True if `record`, read at `offset` of the segment described by `segment`, claims to be a
// record of this segment lifetime that lies within [offset, segment_end) and is well formed:
// magic, version, sizes, offset, segment id and generation, key and namespace lengths. Says
// nothing about authenticity: only the tag does.
bool PlausibleRecord(const RecordHeader& record, const SegmentHeader& segment, uint64_t offset,
                     uint64_t segment_end);

}  // namespace kvtier::spill
