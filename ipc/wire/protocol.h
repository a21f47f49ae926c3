// The kvtier control protocol, version 1: the spec of every byte on the control socket.
//
// Transport: a unix SOCK_SEQPACKET socket, so every frame is one message and boundaries are
// kept by the kernel. Frames are still length-prefixed so the same bytes can travel over a
// future shared-memory ring. Integers are in host byte order: both peers are on one host.
//
// A frame is a FrameHeader, then (replies only) `message_bytes` of UTF-8 for humans, then
// `body_bytes` of body: `count` fixed-size items of the op's item type. Every request gets
// exactly one reply with the same op and request_id. A frame that fails DecodeFrame gets an
// error reply (kProtocolError or kVersionMismatch) and the daemon closes the session.
//
// Session: the first request must be kHello (protocol version and namespace); its reply carries
// the tenant's pool memfd as SCM_RIGHTS ancillary data. Reservations and leases belong to the
// session and end with it. Per-item statuses are StatusCode values (kvclient/status.h).
// docs/protocol.md walks through each op with examples.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvtier::wire {

inline constexpr uint32_t kMagic = 0x4654564b;  // "KVTF" in memory order on little-endian hosts
inline constexpr uint16_t kProtocolVersion = 1;
inline constexpr uint32_t kMaxKeyBytes = 32;
inline constexpr uint32_t kMaxBatch = 4096;        // items per frame, any op
inline constexpr uint32_t kMaxNamespaceBytes = 128;
inline constexpr uint32_t kMaxMessageBytes = 512;  // human message in a reply
// Largest frame either side sends: a full reserve batch plus header (4096 * 48 + 32 bytes).
// Both ends set SO_SNDBUF/SO_RCVBUF to kSocketBufferBytes so one such frame always fits.
inline constexpr uint32_t kMaxFrameBytes = 256 * 1024;
inline constexpr int kSocketBufferBytes = 1024 * 1024;

enum class Op : uint16_t {
  kHello = 1,        // body: HelloRequest + namespace bytes; reply: HelloReply + pool fd
  kReserve = 2,      // items: ReserveItem;       reply items: ReserveResult
  kCommit = 3,       // items: WireKey;           reply items: uint16_t status
  kAbort = 4,        // items: WireKey;           reply items: uint16_t status
  kMatchPrefix = 5,  // items: WireKey;           reply: count = matched, items: uint8_t tier
  kAcquire = 6,      // items: WireKey;           reply items: AcquireResult
  kRelease = 7,      // items: uint64_t lease id; reply items: uint16_t status
  kRemove = 8,       // items: WireKey;           reply items: uint16_t status
  kStats = 9,        // no items;                 reply body: StatsReply
  kPrefetch = 10,    // items: WireKey;           reply items: uint16_t status (the reply
                     // comes when every found block is in DRAM)
  // Daemon-driven copies between the pool and a client's memory (a "region").
  kRegisterRegion = 11,    // body: RegionSpec [+ events * 64 bytes of CUDA IPC event handles];
                           // a host region passes its memfd as SCM_RIGHTS; reply: RegionReply
  kDeregisterRegion = 12,  // body: RegionId; reply: no body
  kOffload = 13,     // body: TransferSpec, then items: OffloadItem; reply items: uint16_t status
  kOnload = 14,      // body: TransferSpec, then items: OnloadItem;  reply items: OnloadResult
  // Engine hints to the tier policy (docs/protocol.md "Hints"); only where the hello's
  // HelloLimits::features has kFeatureHints.
  kReuseSoon = 15,   // items: WireKey; reply items: uint16_t status (kOk, kNotFound)
  kDoneWith = 16,    // items: WireKey; reply items: uint16_t status (kOk, kNotFound)
  // match_prefix with what loading the prefix would cost; only where the hello's features have
  // kFeatureMatchEstimate. Reply: count = matched; body: MatchEstimate, then `count` uint8_t
  // tiers.
  kMatchPrefixEstimate = 17,  // items: WireKey
};
inline constexpr uint16_t kMaxOp = 17;

// Where a block lives. Values go on the wire.
enum class Tier : uint8_t { kNone = 0, kGpu = 1, kDram = 2, kSsd = 3 };

struct FrameHeader {
  uint32_t magic;          // kMagic
  uint16_t version;        // kProtocolVersion
  uint16_t op;             // Op
  uint64_t request_id;     // chosen by the client, echoed in the reply
  uint32_t count;          // items in the body; <= kMaxBatch
  uint32_t body_bytes;     // bytes after the header and the message
  uint16_t status;         // replies: StatusCode of the whole request; requests: 0
  uint16_t message_bytes;  // replies: length of the message; requests: 0
  uint32_t reserved;       // 0
};
static_assert(sizeof(FrameHeader) == 32);

// A block key: 1..32 opaque bytes. Bytes past `len` must be zero, so a key has exactly one
// encoding and "ab" and "ab\0" are different keys.
struct WireKey {
  uint8_t len;
  uint8_t reserved[7];  // 0
  uint8_t bytes[kMaxKeyBytes];
};
static_assert(sizeof(WireKey) == 40);

// HelloRequest.flags: what the client understands. Unknown bits are refused (kProtocolError).
inline constexpr uint32_t kHelloWantsLimits = 1;  // append HelloLimits to the reply

struct HelloRequest {
  uint32_t flags;            // kHelloWantsLimits or 0
  uint32_t namespace_bytes;  // 1..kMaxNamespaceBytes bytes of namespace follow
};
static_assert(sizeof(HelloRequest) == 8);

struct HelloReply {
  uint64_t session_id;
  uint64_t pool_bytes;       // size of the memfd passed with this reply
  uint64_t max_block_bytes;  // largest block the pool accepts
  uint32_t max_batch;        // items per frame
  uint32_t namespace_id;     // the daemon's id for the namespace, for logs
  char tenant[32];           // NUL-padded tenant name
};
static_assert(sizeof(HelloReply) == 64);

// Follows HelloReply when the hello asked for it (kHelloWantsLimits).
struct HelloLimits {
  uint64_t spill_max_block_bytes;  // largest block the tenant's SSD tier stores; 0: no SSD tier
                                   // (larger blocks are kept in DRAM only and lost on eviction)
  uint64_t features;               // kFeature* bits: what this kvtierd serves beyond version 1
  uint64_t reserved[2];            // 0
};
// HelloLimits::features. A kvtierd before a feature sends 0 there (the field was reserved).
inline constexpr uint64_t kFeatureHints = 1;  // ops kReuseSoon and kDoneWith
inline constexpr uint64_t kFeatureMatchEstimate = 2;  // op kMatchPrefixEstimate

// What bringing a matched prefix into the caller's memory would take (kMatchPrefixEstimate).
struct MatchEstimate {
  uint32_t dram_blocks;    // of the matched prefix: in DRAM
  uint32_t ssd_blocks;     // on SSD only (a load promotes them first)
  uint64_t dram_bytes;     // their sizes
  uint64_t ssd_bytes;
  uint64_t load_us;        // estimated microseconds until the whole prefix is in the caller's
                           // memory: the SSD work queued ahead, the SSD reads, the copies
  uint64_t ssd_queue_us;   // of which: waiting behind the SSD reads and writes this tenant has
                           // queued (other tenants' work is not reported)
  uint32_t dram_mb_per_s;  // the copy bandwidth the estimate assumed (1e6 bytes/s)
  uint32_t ssd_mb_per_s;   // the SSD throughput it assumed, as lately measured
};
static_assert(sizeof(MatchEstimate) == 48);
static_assert(sizeof(HelloLimits) == 32);

struct ReserveItem {
  WireKey key;
  uint64_t size;         // bytes, 1..max_block_bytes
  uint32_t ttl_seconds;  // 0: the tenant's default_ttl_seconds; lowered to its max_ttl_seconds
  uint32_t reserved;     // 0
};
static_assert(sizeof(ReserveItem) == 56);

struct ReserveResult {
  uint64_t offset;  // into the pool mapping; valid when status == kOk
  uint16_t status;  // kOk, kAlreadyExists (committed or reserved by anyone), kResourceExhausted,
                    // kInvalidArgument (bad key or size)
  uint16_t reserved[3];
};
static_assert(sizeof(ReserveResult) == 16);

struct AcquireResult {
  uint64_t lease_id;  // pass to kRelease; valid when status == kOk
  uint64_t offset;    // block bytes are at [offset, offset + size) of the pool mapping
  uint64_t size;
  uint16_t status;    // kOk or kNotFound
  uint8_t tier;       // Tier the block was found in
  uint8_t reserved[5];
};
static_assert(sizeof(AcquireResult) == 32);

// The calling session's tenant, as of the reply.
struct StatsReply {
  uint64_t pool_bytes;          // the tenant's DRAM reservation
  uint64_t used_bytes;          // bytes in slots that hold reserved or committed blocks
  uint64_t slab_bytes_in_use;   // slabs carved for some size class or large block
  uint64_t committed_blocks;    // includes removed blocks still held by a lease
  uint64_t reserved_blocks;
  uint64_t leased_blocks;       // blocks with at least one lease
  uint64_t index_capacity;      // blocks the index can hold
  uint64_t index_bytes;         // memory the index and slab tables use
  uint64_t hits;                // acquire and match_prefix keys found
  uint64_t misses;
  uint64_t evictions;           // committed blocks dropped to make room
  uint64_t sessions;            // live sessions of this tenant
  // SSD tier (all 0 for a tenant without one).
  uint64_t ssd_quota_bytes;     // the tenant's ssd_bytes
  uint64_t ssd_blocks;          // blocks with a record on SSD (also in DRAM or not)
  uint64_t ssd_only_blocks;     // of which not in DRAM
  uint64_t ssd_payload_bytes;   // their sizes
  uint64_t dirty_bytes;         // DRAM held by blocks not yet on SSD
  uint64_t demotions;           // blocks written to SSD
  uint64_t promotions;          // blocks read back into DRAM
  uint64_t demote_failures;     // writes that failed (disk full, I/O error)
  uint64_t promote_failures;    // reads that failed or did not verify (a miss)
  uint64_t integrity_failures;  // of which failed authentication (tampered or torn record)
  uint64_t ssd_dropped;         // SSD records dropped when their segment was reclaimed
  uint64_t ssd_segments;        // spill segment files held
  uint64_t expirations;         // blocks dropped because their TTL ran out
};
static_assert(sizeof(StatsReply) == 200);

// --- Regions and transfers (ops 11..14; docs/protocol.md "Regions") ---
// A region is memory of the client that the daemon copies blocks into and out of: host memory
// (a memfd sealed against shrinking, passed with the request) or CUDA device memory (a CUDA
// IPC memory handle). Regions belong to the session and are closed with it.
enum class RegionKind : uint32_t { kHost = 1, kCuda = 2 };
inline constexpr uint32_t kMaxRegionsPerSession = 64;
inline constexpr uint32_t kMaxRegionEvents = 1024;  // CUDA IPC event handles per region
inline constexpr uint32_t kCudaIpcHandleBytes = 64;  // cudaIpcMemHandle_t, cudaIpcEventHandle_t
inline constexpr uint32_t kNoRegion = 0;             // region ids start at 1
inline constexpr uint32_t kNoEvent = UINT32_MAX;

struct RegionSpec {
  uint32_t kind;     // RegionKind
  int32_t device;    // kCuda: the CUDA device ordinal of the memory; kHost: 0
  uint64_t bytes;    // the region's size; kHost: at most the memfd's size
  uint8_t ipc_handle[kCudaIpcHandleBytes];  // kCuda: cudaIpcMemHandle_t; kHost: zeros
  uint32_t events;   // kCuda: cudaIpcEventHandle_t entries after this struct; kHost: 0
  uint32_t reserved; // 0
};
static_assert(sizeof(RegionSpec) == 88);

struct RegionReply {
  uint32_t region_id;  // >= 1; names the region in TransferSpec and kDeregisterRegion
  uint32_t reserved;
  uint64_t bytes;
};
static_assert(sizeof(RegionReply) == 16);

struct RegionId {
  uint32_t region_id;
  uint32_t reserved;  // 0
};
static_assert(sizeof(RegionId) == 8);

// Heads an offload or onload body. The items form `layers` equal groups in order (item i
// belongs to layer i / (count / layers)); the daemon copies layer by layer and reports each
// finished layer: in a host region's progress word, and (CUDA regions) by recording an event.
struct TransferSpec {
  uint32_t region_id;        // where the bytes go or come from
  uint32_t layers;           // >= 1, and count is a multiple of it
  uint32_t progress_region;  // a host region holding the progress word, or kNoRegion
  uint32_t wait_event;       // offload from CUDA: copy after this region event (kNoEvent: none)
  uint64_t progress_offset;  // of a 4-byte-aligned uint32 that the daemon sets to i + 1 when
                             // layer i has landed (and futex-wakes); the client zeroes it first
  uint32_t signal_event;     // onload to CUDA: layer i records region event signal_event + i
                             // (kNoEvent: none); then the reply comes once they are recorded
  uint32_t reserved;         // 0
};
static_assert(sizeof(TransferSpec) == 32);

struct OffloadItem {
  WireKey key;
  uint64_t offset;       // of the block's bytes in the region
  uint32_t size;         // bytes, 1..max_block_bytes
  uint32_t ttl_seconds;  // as in ReserveItem
};
static_assert(sizeof(OffloadItem) == 56);

struct OnloadItem {
  WireKey key;
  uint64_t offset;  // where the block's bytes go in the region
};
static_assert(sizeof(OnloadItem) == 48);

struct OnloadResult {
  uint64_t size;    // bytes copied to the region at the item's offset (status kOk)
  uint16_t status;  // kOk; kNotFound (a miss, also a block whose SSD record failed to verify);
                    // kInvalidArgument (the block does not fit the region at that offset)
  uint8_t tier;     // Tier the block was found in
  uint8_t reserved[5];
};
static_assert(sizeof(OnloadResult) == 16);

// Bytes that head a request body of `op` before its items.
constexpr size_t RequestPrefixBytes(Op op) {
  return op == Op::kOffload || op == Op::kOnload ? sizeof(TransferSpec) : 0;
}

// Item size of a request body for `op`, or 0 where the body is not a list of items.
constexpr size_t RequestItemBytes(Op op) {
  switch (op) {
    case Op::kReserve: return sizeof(ReserveItem);
    case Op::kCommit:
    case Op::kAbort:
    case Op::kMatchPrefix:
    case Op::kAcquire:
    case Op::kRemove:
    case Op::kPrefetch:
    case Op::kReuseSoon:
    case Op::kDoneWith:
    case Op::kMatchPrefixEstimate: return sizeof(WireKey);
    case Op::kRelease: return sizeof(uint64_t);
    case Op::kOffload: return sizeof(OffloadItem);
    case Op::kOnload: return sizeof(OnloadItem);
    case Op::kHello:
    case Op::kStats:
    case Op::kRegisterRegion:
    case Op::kDeregisterRegion: return 0;
  }
  return 0;
}

}  // namespace kvtier::wire
