// SpillStore's private types, shared by spill_store.cc and spill_recovery.cc only.
#pragma once

#include <array>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <vector>

#include "crypto/aes_gcm.h"
#include "daemon/spill/block_device.h"
#include "daemon/spill/spill_format.h"
#include "daemon/spill/spill_store.h"
#include "kvclient/status.h"

namespace kvtier {

// One record the store knows of, in offset order within its segment.
struct SpillRecordMeta {
  uint64_t offset = 0;
  uint64_t payload_bytes = 0;
  uint64_t sequence = 0;
  bool live = false;
  uint64_t user = 0;  // the caller's tag: StartWrite's cookie, or SetUser's after recovery
  bool writing = false;            // its write has not completed
  bool scrub_after_write = false;  // released while writing: scrub once the write is done
};

struct SpillStore::Segment {
  uint32_t id = 0;
  std::filesystem::path path;
  int file = -1;                  // device handle
  spill::SegmentHeader header{};  // as on disk (the wrapped key included)
  std::optional<AesGcm> gcm;      // the unwrapped data key, only inside OpenSSL's context
  uint64_t tail = 0;              // next record offset (created in this process)
  bool sealed = false;
  bool created_here = false;  // written by this process: Sync() covers it
  uint32_t in_flight = 0;
  uint64_t live = 0;
  std::vector<SpillRecordMeta> records;

  uint64_t segment_bytes() const { return header.segment_bytes; }
  const SpillRecordMeta* Find(uint64_t offset) const {
    return const_cast<Segment*>(this)->Find(offset);
  }
  SpillRecordMeta* Find(uint64_t offset) {
    auto it = std::lower_bound(records.begin(), records.end(), offset,
                               [](const SpillRecordMeta& r, uint64_t o) { return r.offset < o; });
    return it != records.end() && it->offset == offset ? &*it : nullptr;
  }
};

struct SpillStore::Slot {
  // A write slot carries a batch: adjacent records of one segment, encrypted one after the
  // other into `buffer` and written with one I/O.
  struct BatchRecord {
    uint64_t cookie = 0;
    uint64_t offset = 0;        // in the segment
    uint64_t record_bytes = 0;
    Status status;              // the completion's
  };
  IoRequest request;
  std::span<std::byte> buffer;  // slot_bytes_ of aligned staging memory
  uint32_t index = 0;
  bool is_write = false;
  bool is_scrub = false;  // an internal write zeroing a released record's header block
  uint32_t scrub_failures = 0;  // of that scrub, before this attempt
  std::vector<BatchRecord> batch;  // writes
  uint64_t used = 0;               // writes: bytes of `buffer` the batch fills
  size_t next_delivery = 0;        // writes: batch records already handed out by Poll
  uint64_t cookie = 0;
  Segment* segment = nullptr;  // pinned by segment->in_flight while the I/O runs
  SpillLocation location;
  std::span<std::byte> out;  // reads: the caller's buffer
  uint8_t key[32] = {};
  uint8_t key_len = 0;
  char name_space[spill::kMaxNamespaceBytes] = {};
  uint8_t namespace_len = 0;
  Status status;  // the completion's, once done
  // Reads: plaintext bytes at buffer[kRecordHeaderBytes...] still to be wiped (WipeStaging).
  uint64_t plaintext_bytes = 0;
  // Reads: the record comes in `pieces` I/Os of consecutive parts of `buffer`, decrypted in
  // order as they arrive (the first holds the record header), so decryption overlaps the
  // reading of the rest. The tag is checked once the last piece is decrypted.
  static constexpr uint32_t kMaxReadPieces = 4;
  std::array<IoRequest, kMaxReadPieces> reads;
  uint32_t pieces = 0;
  uint32_t pieces_done = 0;    // bit per piece
  uint32_t pieces_opened = 0;  // leading pieces decrypted so far
  uint32_t pieces_out = 0;     // submitted and not back yet
  uint64_t record_bytes = 0;   // bytes of `buffer` the pieces cover
  Status read_status;          // the first failure of a piece, its header or its decryption
  // Reads in more than one piece: the read's own context under the segment's key (the
  // segment's is shared by every read of it, and a message opened in pieces needs a context to
  // itself until its end). A one-piece read opens all at once with the segment's. Dropped (its
  // copy of the key schedule cleansed by OpenSSL) when the read ends.
  std::optional<AesGcm> opener;
  AesGcm& Opener() { return opener ? *opener : *segment->gcm; }
};

}  // namespace kvtier
