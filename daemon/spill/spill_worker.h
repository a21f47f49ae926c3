// SpillWorker: a thread that runs the spill stores of some tenants, so that the event loop
// never blocks on the disk, on fsync, or on AES-GCM. The worker encrypts while writing and
// decrypts while reading (SpillStore does both on its owner thread), so each worker is also one
// crypto thread; tenants are spread over `spill.threads` workers.
//
// The loop Posts jobs: write a block from the pool to the SSD tier, read a record back into a
// pool slot, release a record. It collects results with TakeResults when event_fd() is
// readable. Pool memory named by a job belongs to the worker until that job's result has been
// taken (the loop keeps the slot pinned); a release has no result.
// Under quota or disk-space pressure the worker reclaims whole segments, oldest first (each
// crypto-erased before its space is reused), and reports every live record it dropped as a
// kDropped result carrying the tag the record was written (or tagged) under, so the loop can
// forget it. A write that still cannot be placed fails with the store's status.
// Erase (a tenant purge): a kErase job fails every write and read of its store that is still
// pending (not started) with kUnavailable "purged" (a read's destination zeroed), as kWritten
// and kRead results like any failure, so the loop unpins their slots. Then the store starts
// nothing new until its I/O in flight (scrubs included) has completed (other stores are served
// meanwhile; the thread never blocks on it), crypto-erases and removes every segment
// (SpillStore::CryptoEraseAll), and publishes a kErased result with the job's tag after every
// result of the store's earlier jobs: when the loop sees it, no I/O of that store touches pool
// memory any more. Jobs posted after the kErase are served normally after it, into a fresh
// segment, whose data key is wrapped under the kErase's `tenant_key` when it carried one (the
// store has the new key before it can create a segment). A kErase is meant to follow
// DramPool::Evict(kAll, false), which forgets every record
// the erase destroys; releases posted afterwards for records that went with it do nothing
// (segment ids are never reused).
// When the worker has nothing else to do, a store's segment being written that no live
// record needs any more is crypto-erased (SpillStore::RetireEmptyOpenSegment).
// Quota (a reload): a kSetQuota job sets the store's quota to `bytes` when it arrives and
// reclaims the oldest sealed segments at once while the store holds more (kDropped results,
// as under pressure); what cannot go yet (I/O in flight, the open segment) goes when the store
// next needs a segment.
// Thread-safety: AddStore before Start, on one thread. After Start: Post, TakeResults and
// event_fd from the loop thread; StatsOf from any thread. The destructor stops the thread
// (jobs not yet started are dropped), waits for in-flight I/O and syncs every store.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <thread>
#include <unordered_map>
#include <vector>

#include "crypto/secret_key.h"
#include "daemon/spill/block_device.h"
#include "daemon/spill/spill_store.h"
#include "daemon/spill/ssd_ref.h"
#include "ipc/base/mutex.h"
#include "ipc/base/unique_fd.h"
#include "kvclient/status.h"

namespace kvtier {

struct SpillJob {
  // kErase: `store`, `tag`, `tenant_key`; kSetQuota: `store`, `bytes`
  enum class Kind : uint8_t { kWrite, kRead, kRelease, kErase, kSetQuota };
  Kind kind = Kind::kWrite;
  uint8_t key_len = 0;
  uint8_t ns_len = 0;
  uint32_t store = 0;          // from AddStore
  uint64_t tag = 0;            // the loop's name for the block, echoed in the result
  SsdRef ref;                  // kRead, kRelease
  uint64_t bytes = 0;          // kWrite: plaintext size; kRead: the record's payload size;
                               // kSetQuota: the quota
  std::byte* data = nullptr;   // kWrite: source; kRead: destination (zeroed on failure)
  std::array<uint8_t, 32> key{};
  std::array<char, spill::kMaxNamespaceBytes> ns{};
  // kErase, when set: the tenant key (a purge's new epoch) the store wraps every segment it
  // creates after the erase under; the old key is overwritten in the store. Shared, so job
  // copies hold one SecretKey, zeroed when the last copy goes.
  std::shared_ptr<const SecretKey> tenant_key;
};

struct SpillResult {
  enum class Kind : uint8_t {
    kWritten,  // status OK: the record is on disk at `ref`; else it is not (kResourceExhausted
               // for no space or quota, kIoError)
    kRead,     // status OK: the destination holds the authentic bytes; kDataLoss (failed
               // authentication), kNotFound (record gone), kIoError: destination zeroed
    kDropped,  // a live record was reclaimed with its segment; `tag` is what it was written
               // (or tagged) under
    kErased,   // a kErase job ended (its `tag`): status is CryptoEraseAll's (a segment whose
               // erase write failed is removed all the same); `segments` says how many went
  };
  Kind kind = Kind::kWritten;
  uint32_t store = 0;
  uint64_t tag = 0;
  SsdRef ref;
  Status status;
  uint64_t segments = 0;  // kErased: segment files crypto-erased and removed
};

class SpillWorker {
 public:
  SpillWorker();
  ~SpillWorker();
  SpillWorker(const SpillWorker&) = delete;
  SpillWorker& operator=(const SpillWorker&) = delete;

  // Takes a tenant's store and the device it uses alone. Returns the store's index for jobs.
  uint32_t AddStore(std::unique_ptr<BlockDevice> device, std::unique_ptr<SpillStore> store);
  // Tags a recovered record before Start (see SpillStore::SetUser).
  void TagRecovered(uint32_t store, const SpillLocation& location, uint64_t tag);
  Status Start();

  void Post(std::span<const SpillJob> jobs);
  // Appends every result waiting; clears event_fd's readiness.
  void TakeResults(std::vector<SpillResult>* out);
  int event_fd() const { return results_fd_.get(); }
  SpillStats StatsOf(uint32_t store) const;

 private:
  struct Store {
    std::unique_ptr<BlockDevice> device;
    std::unique_ptr<SpillStore> store;
    std::deque<SpillJob> pending;  // writes, reads and erases not yet started, in order
    std::unordered_map<uint64_t, SpillLocation> writing;       // tag -> location
    bool blocked = false;  // the front job waits for in-flight I/O
  };

  void Run();
  // The record of a kRelease job is dead (the store scrubs it).
  void ReleaseNow(const SpillJob& job);
  // A kSetQuota job: the new quota, and the segments beyond it reclaimed where possible.
  void SetQuotaNow(const SpillJob& job, std::vector<SpillResult>* results);
  // A kErase job arrived: fails the store's pending writes and reads (Run queues the erase).
  void AbortPending(const SpillJob& erase, std::vector<SpillResult>* results);
  // The front job is a kErase: false while the store has I/O in flight, else erases and
  // reports it.
  bool EraseNow(uint32_t index, const SpillJob& erase, std::vector<SpillResult>* results);
  // Starts pending jobs until one must wait for I/O; true if anything was started or finished.
  bool StartJobs(uint32_t index, std::vector<SpillResult>* results);
  // One attempt at the front write; false if it must wait.
  bool StartWrite(uint32_t index, const SpillJob& job, std::vector<SpillResult>* results);
  void Reap(uint32_t index, std::vector<SpillResult>* results);
  void Publish(std::vector<SpillResult>* results);
  void WaitForWork();

  std::vector<std::unique_ptr<Store>> stores_;
  std::thread thread_;
  UniqueFd jobs_fd_;     // eventfd: the loop posted jobs (or asked to stop)
  UniqueFd results_fd_;  // eventfd: results wait for the loop

  mutable Mutex mu_;
  std::vector<SpillJob> inbox_ KVT_GUARDED_BY(mu_);
  std::vector<SpillResult> outbox_ KVT_GUARDED_BY(mu_);
  std::vector<SpillStats> stats_ KVT_GUARDED_BY(mu_);
  std::atomic<bool> stop_{false};
};

}  // namespace kvtier
