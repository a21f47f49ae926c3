// The on-disk format of the SSD spill tier, version 1: the spec of every byte kvtierd writes to
// a spill file. docs/spill-format.md explains the choices.
//
// One directory per tenant under spill_dir, holding segment files "seg-<id as 8 hex>.kvs", each
// preallocated to segment_bytes and written append-only with O_DIRECT:
//
//   [0, 4096)            SegmentHeader: who owns the segment and its data key, wrapped
//   [4096, ...)          records, each starting at a 4096-aligned offset:
//       RecordHeader (256 bytes, plaintext, authenticated)
//       ciphertext of the block (payload_bytes), AES-256-GCM under the segment's data key
//       zero padding to the next 4096 boundary
//
// Keys: every segment lifetime has a fresh random 256-bit data key, stored only wrapped (AES-
// 256-GCM) under the tenant key (random, per tenant and epoch, in the keyring sealed under the
// master key: crypto/keyring.h; before the keyring, derived from the master key). Destroying
// the header's wrapped key makes every record of the segment undecryptable (crypto-erase).
// Nonces: a record's 96-bit nonce is (0u32, its byte offset u64). Offsets within one segment
// lifetime are unique because the segment is append-only, and a segment is only rewritten after
// its key is destroyed and a new one drawn, so no (key, nonce) pair ever repeats.
// Binding: the GCM associated data of a record is the tenant name, the segment id and
// generation, and the RecordHeader itself (namespace, key, sizes, offset, sequence), so a record
// that is altered, moved to another offset or segment, or copied into another tenant's file
// fails authentication and reads as a miss.
// Integers are little-endian; the format is host-local like the wire protocol.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtier::spill {

inline constexpr uint64_t kAlignBytes = 4096;
inline constexpr uint64_t kSegmentHeaderBytes = 4096;
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr char kSegmentMagic[8] = {'K', 'V', 'T', 'S', 'E', 'G', '0', '1'};
inline constexpr uint32_t kRecordMagic = 0x5254564b;  // "KVTR"
inline constexpr uint32_t kRecordHeaderBytes = 256;
inline constexpr uint32_t kMaxNamespaceBytes = 128;

// A data key wrapped under the tenant key: AES-256-GCM of the 32 key bytes with a random nonce;
// the associated data is SegmentHeader::AadPrefix (everything before `wrapped_key`).
struct WrappedKeyBytes {
  uint8_t nonce[12];
  uint8_t ciphertext[32];
  uint8_t tag[16];
};
static_assert(sizeof(WrappedKeyBytes) == 60);

struct SegmentHeader {
  char magic[8];            // kSegmentMagic
  uint32_t format_version;  // kFormatVersion
  uint32_t header_bytes;    // kSegmentHeaderBytes
  uint64_t segment_bytes;   // the preallocated file size
  uint64_t generation;      // random per lifetime of the file: records of an earlier lifetime
                            // never authenticate under the new key, and are recognised as stale
  uint32_t segment_id;
  uint32_t reserved0;       // 0
  char tenant[32];          // NUL-padded tenant name
  WrappedKeyBytes wrapped_key;  // all zero once crypto-erased
  uint8_t reserved1[4];     // 0
  // Zero up to kSegmentHeaderBytes.
};
static_assert(sizeof(SegmentHeader) == 136);
inline constexpr size_t kSegmentAadBytes = offsetof(SegmentHeader, wrapped_key);

struct RecordHeader {
  uint32_t magic;            // kRecordMagic
  uint16_t format_version;   // kFormatVersion
  uint16_t header_bytes;     // kRecordHeaderBytes
  uint64_t record_bytes;     // header + ciphertext + padding: a multiple of kAlignBytes
  uint64_t payload_bytes;    // the block's size
  uint64_t offset;           // where this record starts in its segment (binds its location)
  uint64_t sequence;         // per tenant, increasing: on recovery the newest copy of a key wins
  uint64_t segment_generation;  // SegmentHeader::generation of the segment it was written to
  uint32_t segment_id;
  uint8_t key_len;           // 1..32
  uint8_t namespace_len;     // 1..128
  uint8_t reserved0[2];      // 0
  uint8_t key[32];           // zero past key_len
  char name_space[kMaxNamespaceBytes];  // zero past namespace_len
  uint8_t tag[16];           // the GCM tag of the ciphertext; not part of the associated data
  uint8_t reserved1[24];     // 0
};
static_assert(sizeof(RecordHeader) == kRecordHeaderBytes);
inline constexpr size_t kRecordAadBytes = offsetof(RecordHeader, tag);

// The GCM associated data of a record is RecordAadPrefix (the owning segment's identity, taken
// from the store's own copy of the SegmentHeader, never from the record) followed by the
// record's header bytes [0, kRecordAadBytes), 48 + 216 = 264 bytes.
struct RecordAadPrefix {
  char tenant[32];              // SegmentHeader::tenant, NUL-padded
  uint32_t segment_id;          // SegmentHeader::segment_id
  uint32_t reserved0;           // 0
  uint64_t segment_generation;  // SegmentHeader::generation
};
static_assert(sizeof(RecordAadPrefix) == 48);
static_assert(kRecordAadBytes == 216);
inline constexpr size_t kRecordAadTotalBytes = sizeof(RecordAadPrefix) + kRecordAadBytes;

// The record's nonce: 4 zero bytes, then its offset (little-endian).
inline void RecordNonce(uint64_t offset, uint8_t out[12]) {
  for (int i = 0; i < 4; ++i) out[i] = 0;
  for (int i = 0; i < 8; ++i) out[4 + i] = static_cast<uint8_t>(offset >> (8 * i));
}

constexpr uint64_t RecordBytes(uint64_t payload_bytes) {
  return (kRecordHeaderBytes + payload_bytes + kAlignBytes - 1) / kAlignBytes * kAlignBytes;
}

}  // namespace kvtier::spill
