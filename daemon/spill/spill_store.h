// SpillStore: one tenant's encrypted, append-only spill store over a BlockDevice, in the format
// of daemon/spill/spill_format.h (docs/spill-format.md explains it).
//
// Records are written at the tail of the open segment, adjacent ones batched into one aligned
// write (up to one staging buffer, submitted at Flush or Poll), read back with one aligned
// read each, and encrypted with AES-256-GCM under the segment's random data
// key, which is stored only wrapped under the tenant key. Every write and read is asynchronous:
// Start* takes one of `staging_buffers` aligned buffers and submits one I/O; Poll reaps the
// device and hands back one SpillCompletion per started I/O, in completion order. Between a
// successful Start* and the SpillCompletion with its cookie, the I/O belongs to the store (for
// a read, so does `out`). Start* only queue the I/O: call Flush() after a burst of them, or
// Poll (which flushes first).
//
// Blocking calls on the owner thread, each rare: Open (recovery reads every segment), creating
// a segment (the header is written and fdatasync'ed before the first record is submitted, so a
// record never completes in a segment whose header could be missing after a crash), and
// crypto-erasing one (the zeroed header block is written and fdatasync'ed).
//
// Durability: a write completion means the record is in the file, so it survives a crash or
// SIGKILL of kvtierd and is recovered by the next Open. Surviving power loss additionally needs
// Sync(), which the destructor calls (a clean stop).
//
// Liveness: a record is live from StartWrite until Release, a failed write completion (the
// store forgets it itself), or the reclaim of its segment. A segment is sealed when a record no
// longer fits (or, after recovery, at Open: the store never appends to a segment it did not
// create in this process, because a torn write past the recovered tail may have used a nonce).
// A sealed segment whose last live record goes, with no I/O in flight, is crypto-erased (its
// wrapped key overwritten with zeros, fdatasync) and its file removed.
//
// Ownership: owns its segment files and staging buffers; borrows the device, which it must use
// alone while it lives (it reaps every completion; sharing one device between tenants needs a
// dispatcher in front of Reap) and whose queue_depth() must exceed staging_buffers (one slot is
// kept for the blocking header I/O). Every segment file stays open on the device while the
// store holds it, so the device's max_files must exceed quota_bytes / segment_bytes (and the
// segments found at recovery). Keys: a copy of the tenant key (SecretKey, zeroed on
// destruction) and one AesGcm per segment; key bytes are never logged or put in a Status.
// The destructor waits for in-flight I/O (its completions are not delivered), syncs, and
// closes the files; it erases nothing.
// Thread-safety: none. One thread (the daemon's event loop) calls every method; event_fd() may
// be polled from any thread.
#pragma once

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/secret_key.h"
#include "daemon/spill/block_device.h"
#include "daemon/spill/spill_format.h"
#include "ipc/base/unique_fd.h"
#include "kvclient/status.h"

namespace kvtier {

struct SpillOptions {
  std::filesystem::path dir;  // this tenant's directory; created (mode 0700) if missing
  std::string tenant;         // 1..32 bytes, no NUL: recorded in every segment header
  uint64_t segment_bytes = 64ull << 20;      // a multiple of 2 MiB
  uint64_t quota_bytes = 1ull << 30;         // segments * segment_bytes stays within this
  uint64_t max_record_payload_bytes = 2ull << 20;
  uint32_t staging_buffers = 8;  // aligned RecordBytes(max payload) buffers: I/O in flight
};

// The store's sizing rules, which the config checks before any store is opened (so a bad
// config names its line) and Open checks again. Each returns "" when the sizes are valid, else
// what is wrong, in words an operator can act on.
struct SpillSizing {
  // Segment files are whole multiples of this (the unit the store allocates and reclaims).
  static constexpr uint64_t kSegmentGranuleBytes = 2ull << 20;
  static constexpr uint64_t kMaxSegmentBytes = 64ull << 30;
  // `segment_bytes` is a multiple of the granule, from one granule to kMaxSegmentBytes.
  static std::string SegmentError(uint64_t segment_bytes);
  // A record of `max_payload_bytes` fits in one segment after its header (the error's subject,
  // the record, is the caller's to name: "does not fit in a segment of ...").
  static std::string RecordFitError(uint64_t segment_bytes, uint64_t max_payload_bytes);
};

// Where a record lives. Returned by StartWrite and recovery; handed back to StartRead/Release.
struct SpillLocation {
  uint32_t segment_id = 0;
  uint64_t offset = 0;         // of the RecordHeader in the segment file
  uint64_t payload_bytes = 0;  // the plaintext's size
  uint64_t sequence = 0;       // per tenant, increasing: the newest copy of a key wins

  friend bool operator==(const SpillLocation&, const SpillLocation&) = default;
};

struct RecoveredRecord {
  std::string name_space;
  std::vector<uint8_t> key;
  SpillLocation location;
};

struct RecoveryStats {
  uint32_t segments_scanned = 0;    // seg-*.kvs names found
  uint32_t segments_skipped = 0;    // of those, not a regular file of kvtierd's (a symlink,
                                    // FIFO, directory, device or another uid's file): left
                                    // alone, never opened for I/O; `warnings` says which and why
  uint32_t segments_discarded = 0;  // bad header or wrapped key (crypto-erased, foreign, torn):
                                    // removed
  uint32_t segments_key_rejected = 0;  // of those discarded: a sound header with a wrapped key
                                       // (not erased) that no key of the tenant unwraps:
                                       // written under a tenant key the keyring no longer
                                       // holds (an epoch a purge retired, a lost keyring,
                                       // another master key)
  uint32_t segments_legacy_key = 0;  // kept segments whose key unwrapped only under the
                                     // legacy (epoch-0) key given to Open
  uint32_t segments_emptied = 0;    // valid, but no live record left after recovery: erased
  uint64_t records_recovered = 0;   // reported in `recovered`
  uint64_t records_superseded = 0;  // an older sequence of a key recovered again later
  uint64_t records_rejected = 0;    // a plausible header whose record failed its tag (torn or
                                    // tampered), or that does not fit: skipped
  std::vector<std::string> warnings;  // one line per skipped segment name, for the log
};

struct SpillStats {
  uint64_t writes_started = 0;
  uint64_t writes_failed = 0;  // completions with an I/O error or a short write
  uint64_t reads_started = 0;
  uint64_t reads_failed = 0;        // I/O errors (not counted as integrity failures)
  uint64_t integrity_failures = 0;  // reads that did not verify: kDataLoss
  uint64_t segments_created = 0;
  uint64_t segments_erased = 0;  // crypto-erased and removed (empty, reclaimed or purged)
  uint64_t erase_failures = 0;   // the zeroed header could not be written or synced
  uint64_t live_records = 0;
  uint64_t segments = 0;  // segment files held now (segment_count())
  uint64_t scrubs = 0;    // released records whose header was zeroed on disk
  uint64_t scrub_failures = 0;
};

struct SpillCompletion {
  uint64_t cookie = 0;
  Status status;  // see StartWrite / StartRead
  bool is_write = false;
};

class SpillStore {
 public:
  // Recovers the tenant's directory (docs/spill-format.md, "Recovery"): every valid, newest
  // record is appended to `recovered` (may be null) and stays live until Released; segments
  // that fail their header or key unwrap are removed; recovered segments are sealed; the next
  // sequence continues after the largest seen. Counts in recovery_stats().
  // `tenant_key` wraps every segment the store creates. `legacy_key` (may be null: the
  // keyring's epoch-0 key of a tenant migrated from derived keys) is tried at recovery for a
  // segment `tenant_key` does not unwrap, and is not kept.
  // kInvalidArgument: bad options (tenant, sizes, staging_buffers >= device queue depth).
  // kResourceExhausted / kIoError: staging memory, the directory, or a recovery read failed.
  static Result<std::unique_ptr<SpillStore>> Open(const SpillOptions& options,
                                                  BlockDevice* device,
                                                  const SecretKey& tenant_key,
                                                  std::vector<RecoveredRecord>* recovered,
                                                  const SecretKey* legacy_key = nullptr);
  ~SpillStore();
  SpillStore(const SpillStore&) = delete;
  SpillStore& operator=(const SpillStore&) = delete;

  // OK: the record's location; the encrypted record is queued as one write, and a completion
  // with `cookie` follows (OK: in the file; otherwise the write failed and the record is gone:
  // kResourceExhausted for ENOSPC, kIoError for other errors or a short write). `plaintext` may
  // be dropped on return. Errors, with nothing started:
  //   kInvalidArgument    namespace not 1..128 bytes, key not 1..32, payload too large
  //   kResourceExhausted  "staging buffers busy" (Poll, then retry); the tenant's spill quota
  //                       would be exceeded by a new segment (ReclaimOldestSegment, retry);
  //                       no space for a new segment (the message names the file)
  //   kAlreadyExists      the new segment's name is taken by something kvtierd did not create
  //                       (a planted file, symlink or FIFO: never written through; the message
  //                       names it); the next StartWrite takes the next name
  //   others              creating the segment failed (the errno's Status)
  Result<SpillLocation> StartWrite(std::string_view name_space, std::span<const uint8_t> key,
                                   std::span<const std::byte> plaintext, uint64_t cookie);

  // OK: one read of the record is queued; `out` (exactly location.payload_bytes) must stay
  // valid until the completion with `cookie`, which is OK with `out` holding the record's
  // authentic bytes, or kDataLoss (the record does not verify: its header disagrees with the
  // location, namespace or key, or its tag fails; counted in integrity_failures) or kIoError,
  // each with `out` as it was. `out` is written once, with the plaintext whose tag has
  // verified, and never otherwise (decryption runs in the store's own staging memory): a
  // process that can read `out` (a shared pool slot) never sees unauthenticated bytes. The
  // plaintext left in staging is wiped by WipeStaging, or before the buffer is used again.
  // Errors, with nothing started and `out` untouched: kNotFound (no live
  // record at that location, e.g. its segment was reclaimed), kInvalidArgument (out's size),
  // kResourceExhausted "staging buffers busy".
  Status StartRead(const SpillLocation& location, std::string_view name_space,
                   std::span<const uint8_t> key, std::span<std::byte> out, uint64_t cookie);

  // Wipes the plaintext that verified reads left in staging buffers. The caller does this once
  // it has handed the completions on (it is not on a read's path); a buffer is wiped anyway
  // before it is used again.
  void WipeStaging();

  // Starts every queued I/O.
  Status Flush();
  // Moves up to out.size() completions into `out`; returns how many. wait: block until at least
  // one is ready, unless no I/O is in flight (then returns 0).
  size_t Poll(std::span<SpillCompletion> out, bool wait);
  // The device's: readable while completions wait for Poll.
  int event_fd() const;

  // The live record at (segment_id, offset), if any: records are never rewritten in place and
  // segment ids are not reused while the store lives, so the pair names one record.
  std::optional<SpillLocation> Locate(uint32_t segment_id, uint64_t offset) const;
  // The record is dead; releasing an unknown or already dead location does nothing. Unless its
  // segment goes with it (crypto-erased: its last live record), the record's header block is
  // overwritten with zeros in the background (a "scrub", using a staging buffer when one is
  // free), so a restart does not bring a removed block back. A crash before the scrub lands
  // can, and so can a stop while the disk refuses writes: a failed scrub is tried again after
  // the next write that succeeds and at a clean stop (kScrubAttempts in all; stats count each
  // failure).

  void Release(const SpillLocation& location);
  // Tags a live record (e.g. a recovered one) with the caller's value, which
  // ReclaimOldestSegment reports for it. A record written by StartWrite is tagged with its cookie.
  void SetUser(const SpillLocation& location, uint64_t user);
  // Crypto-erases and removes the oldest sealed segment without I/O in flight and appends its
  // live records to `dropped` and their tags to `users` (the caller forgets them). kNotFound: no sealed segment.
  // kFailedPrecondition: every sealed segment has I/O in flight (Poll, retry). An erase that
  // could not write the zeroed header still removes the file; its Status is returned.
  Status ReclaimOldestSegment(std::vector<SpillLocation>* dropped,
                              std::vector<uint64_t>* users = nullptr);
  // The segment being written, once no record in it lives and no I/O for it is queued or
  // running, is crypto-erased and removed (true); the next write starts a fresh one. Costs a
  // header write, an fdatasync and an unlink, and the next write a segment creation: the
  // worker calls it only when it has nothing else to do.
  bool RetireEmptyOpenSegment();
  // Crypto-erases and removes every segment (a tenant purge); the store stays usable and
  // starts a fresh segment at the next write. kFailedPrecondition: I/O in flight.
  Status CryptoEraseAll();
  // The tenant key from now on (a purge's new epoch): every segment created later has its data
  // key wrapped under it. Segments already held keep theirs (their data keys are unwrapped);
  // the old tenant key's bytes are overwritten here.
  void SetTenantKey(SecretKey tenant_key) { tenant_key_ = std::move(tenant_key); }
  // fdatasync of every segment written in this process.
  Status Sync();

  const RecoveryStats& recovery_stats() const { return recovery_; }
  SpillStats stats() const {
    SpillStats s = stats_;
    s.segments = segments_.size();
    return s;
  }
  // Segment files currently held (each counts segment_bytes against the quota).
  size_t segment_count() const { return segments_.size(); }
  uint64_t segment_bytes() const { return options_.segment_bytes; }
  // A new quota (at least one segment) for segments created from now on; segments held beyond
  // it stay until reclaimed (ReclaimOldestSegment).
  void set_quota_bytes(uint64_t bytes) {
    options_.quota_bytes = std::max(bytes, options_.segment_bytes);
  }
  uint32_t in_flight() const { return in_flight_; }
  // Device requests reaped so far, scrubs and header writes included (those have no
  // completion for the caller but free capacity a blocked write may be waiting for).
  uint64_t reaped_total() const { return reaped_total_; }
  // A StartRead now would not answer "staging buffers busy".
  bool staging_available() const { return !free_slots_.empty(); }
  // A StartWrite of `payload_bytes` now would not answer "staging buffers busy" (it would join
  // the batch being filled, or start one).
  bool CanStartWrite(uint64_t payload_bytes) const;

 private:
  struct Segment;  // spill_store_internal.h
  struct Slot;

  using SegmentMap = std::map<uint32_t, std::unique_ptr<Segment>>;

  SpillStore(const SpillOptions& options, BlockDevice* device, SecretKey tenant_key);

  Status Start();
  // spill_recovery.cc
  Status Recover(std::vector<RecoveredRecord>* recovered, const SecretKey* legacy_key);
  Status RecoverSegment(uint32_t id, std::span<std::byte> chunk, const SecretKey* legacy_key,
                        std::map<std::string, RecoveredRecord>* newest, uint64_t* valid);
  void ScanRecords(Segment* segment, uint64_t scan_end, std::span<std::byte> chunk,
                   std::map<std::string, RecoveredRecord>* newest, uint64_t* valid);

  Result<Segment*> SegmentFor(uint64_t record_bytes);
  Result<std::unique_ptr<Segment>> CreateSegment(uint32_t id);
  Status WriteHeaderBlock(const Segment& segment, bool erase_key);
  Status EraseSegment(SegmentMap::iterator it);
  // Submits pending scrubs while staging buffers are free.
  void StartScrubs();
  // Submits the batch being filled, if any (Flush and Poll do).
  void SubmitOpenBatch();
  // The open batch can take a record of `record_bytes` in the open segment.
  bool BatchFits(uint64_t record_bytes) const;
  void CompleteScrub(Slot* slot);
  void EraseDeadSegments();
  void Complete(Slot* slot);
  void CompleteWrite(Slot* slot);
  void CompleteRead(Slot* slot);
  // A device request came back: a read's piece is decrypted if its turn came; the slot is
  // Complete'd once all its I/O is back.
  void Reaped(IoRequest* request);
  // Decrypts the read's pieces that have arrived, in order (the first: checks the record
  // header and starts the tag).
  void OpenArrivedPieces(Slot& slot);
  Status BeginRecord(Slot& slot);
  // Zeroes what a verified read left in the slot's staging buffer.
  void Wipe(Slot& slot);
  // The pieces are all back and decrypted: the tag, then the copy into `out`.
  Status FinishRead(Slot& slot);
  // Submits one request and reaps until it completes (other completions are processed and
  // queued for Poll). OK means it completed; its result is in request->result.
  Status WaitFor(IoRequest* request);
  Status SyncDir();
  std::filesystem::path SegmentPath(uint32_t id) const;
  std::span<std::byte> header_block() const;

  SpillOptions options_;
  BlockDevice* device_;
  SecretKey tenant_key_;
  UniqueFd dir_fd_;
  uint64_t slot_bytes_ = 0;

  struct FreeDeleter {
    void operator()(std::byte* p) const;
  };
  std::unique_ptr<std::byte, FreeDeleter> staging_;  // slots, then one header block
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  std::vector<uint32_t> done_;  // ring of completed slots, oldest at done_head_
  size_t done_head_ = 0;
  size_t done_count_ = 0;
  uint32_t in_flight_ = 0;  // device requests submitted, not yet reaped
  uint64_t reaped_total_ = 0;
  // Of in_flight_: a read's pieces beyond its first. Every staging buffer needs at most one
  // device place besides these, and one stays for header I/O, so reads take extra pieces only
  // while slots_.size() + extra_pieces_ + 1 <= the device's queue depth.
  uint32_t extra_pieces_ = 0;
  bool erase_pending_ = false;  // a sealed segment may have lost its last live record
  struct PendingScrub {
    uint32_t segment_id;
    uint64_t offset;
    uint32_t failures = 0;  // earlier attempts that failed
  };
  std::deque<PendingScrub> pending_scrubs_;
  // Scrubs that failed (the disk refused the write): tried again once a write succeeds, and at
  // a clean stop, up to kScrubAttempts times in all. Until then the released record stays
  // readable on disk, and a restart would serve it.
  std::vector<PendingScrub> failed_scrubs_;
  static constexpr uint32_t kScrubAttempts = 4;
  // Counts a failed scrub and keeps it for a retry unless it has had kScrubAttempts.
  void ScrubFailed(PendingScrub scrub);
  // Queues the failed scrubs again.
  void RetryFailedScrubs();
  int64_t open_batch_ = -1;  // the write slot being filled and not yet submitted, or -1

  SegmentMap segments_;  // by id: oldest first
  Segment* open_ = nullptr;
  uint32_t next_segment_id_ = 1;
  uint64_t next_sequence_ = 1;

  RecoveryStats recovery_;
  SpillStats stats_;
};

}  // namespace kvtier
