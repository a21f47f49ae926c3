// libkvclient: the C++ client of kvtierd, the per-host KV-cache tier daemon.
//
//   auto client = kvtier::Client::Connect({.socket_path = "/run/kvtier/kvtierd.sock",
//                                          .name_space = "llama-3.1-8b/bf16/tp1/blk16"});
//   auto batch = (*client)->Reserve(keys, sizes);      // slots in the tenant's pool
//   kvtier::CopyToPool(batch->data(i), kv_bytes, n);   // the client writes the bytes itself
//   batch->Commit();                                   // now visible to every session
//   auto n = (*client)->MatchPrefix(keys);             // leading keys present
//   auto leases = (*client)->Acquire(keys);            // read leases; bytes stay put until
//   kvtier::CopyFromPool(out, leases->data(i), len);   // the Leases object ends them
//
// Every call is one round trip to the daemon for up to kMaxBatch (4096) keys; longer spans
// are split into several round trips. Blocks are opaque bytes of 1 byte to max_block_bytes.
//
// Errors: calls return Status / Result<T> (kvclient/status.h). Connect says clearly when the
// daemon is not running (kUnavailable), the protocol versions differ (kVersionMismatch), the
// peer is not a tenant (kPermissionDenied); Reserve items say kResourceExhausted when the pool
// is full of pinned blocks.
//
// One rule for every batch call (reserve, commit, abort, acquire, release, remove, prefetch,
// offload, onload): the call's Status says whether the call was carried out; what happened to
// each key is only in its per-key result. A call that was carried out returns OK even if every
// key was refused (not_found, already_exists, ...). A call that fails never leaves a per-key
// result claiming success for a key it did not carry out: such keys get the call's code, and a
// failed Reserve or Acquire holds nothing (slots and leases of earlier frames are given back;
// if the failure broke the connection, they are held until the Client is destroyed: do that).
// The other calls of a split batch (over kMaxBatch keys) that fail part way keep the per-key
// results of the frames already done, which did take effect.
//
// Leases and purges: a leased block's bytes never change while the lease lives and the
// session is open. kvtierd ends a session (purge, drain, shutdown, out of memory) by shutting
// its socket down before it gives back that session's leases, so bytes read through a lease
// are right if Leases::Verify() (or Client::VerifyLeases()) says OK *after* the read has
// finished (for an asynchronous copy, such as cudaMemcpyAsync from the pool, after the stream
// synchronized). An engine checks before it uses the bytes, and recomputes on failure.
//
// Restarts: when kvtierd goes away (it stopped, restarted or ended this session), every call
// fails at once with kUnavailable. With ClientOptions::reconnect, the next call opens a new
// session first (connect, hello, map the pool again) and then runs; reconnects() counts them.
// Whatever the lost session held is void in the new one: its Reservations and Leases refuse
// data() and say kFailedPrecondition (nothing sent); raw lease and region ids of it are refused
// per key or per call, never passed on (a new kvtierd numbers its leases and regions from the
// same start). Each session has a generation (0, then 1 after the first reconnect, ...); raw API
// users tag what they hold with last_call_generation() (docs/protocol.md, "Reconnecting").
//
// Thread-safety: a Client may be used from several threads; its calls are serialized on its
// one connection. For parallel requests, open one Client per thread. Reservations and Leases
// objects must not outlive their Client and are not themselves thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvclient/export.h"
#include "kvclient/status.h"

namespace kvtier {

inline constexpr size_t kMaxKeyBytes = 32;
inline constexpr size_t kMaxBatch = 4096;

// "MAJOR.MINOR.PATCH" of this libkvclient, and the wire protocol version it speaks.
KVCLIENT_EXPORT const char* LibraryVersion();
KVCLIENT_EXPORT uint16_t ProtocolVersion();

// A block key: 1..32 opaque bytes chosen by the engine (typically a hash over the token prefix).
struct KVCLIENT_EXPORT Key {
  uint8_t len = 0;
  std::array<uint8_t, kMaxKeyBytes> bytes{};

  // The first 32 bytes of `data` (longer input is a programming error: check before).
  static Key From(std::span<const std::byte> data);
  static Key From(std::string_view text) {
    return From(std::as_bytes(std::span(text.data(), text.size())));
  }
  friend bool operator==(const Key&, const Key&) = default;
};

// Where a block lives.
enum class Tier : uint8_t { kNone = 0, kGpu = 1, kDram = 2, kSsd = 3 };

struct ClientOptions {
  std::string socket_path = "/run/kvtier/kvtierd.sock";
  // Blocks of different models or layouts never meet: e.g. "llama-3.1-8b/bf16/tp1/blk16".
  std::string name_space;
  int timeout_ms = 30000;  // per round trip; kTimedOut after it
  // Poll for a reply this long before sleeping: saves a ~25 us wake-up per round trip.
  uint32_t spin_us = 50;
  // After the connection to kvtierd is lost, the next call opens a new session and then runs
  // (if kvtierd is still down it fails at once with kUnavailable, and the call after tries
  // again). Off: every call after the loss fails with kUnavailable; Connect again yourself.
  // A session that timed out (timeout_ms) or saw a protocol fault counts as lost too.
  // Calls that only end something of a session (commit, abort, release, deregister, the steps
  // of an open onload) never reconnect. Costs one poll(2) per call.
  bool reconnect = false;
};

// What loading a matched prefix into this process's memory would cost, by kvtierd's estimate
// (docs/protocol.md, match_prefix_estimate): compare load_us with the prefill time of the same
// tokens to choose between loading and recomputing.
struct PrefixEstimate {
  bool valid = false;          // false: this kvtierd does not estimate
  uint32_t dram_blocks = 0;    // of the matched prefix: in DRAM
  uint32_t ssd_blocks = 0;     // on SSD only
  uint64_t dram_bytes = 0;
  uint64_t ssd_bytes = 0;
  uint64_t load_us = 0;        // until the whole prefix is in this process's memory
  uint64_t ssd_queue_us = 0;   // of which: behind SSD work already queued
  uint32_t dram_mb_per_s = 0;  // the rates assumed
  uint32_t ssd_mb_per_s = 0;
};

struct PoolStats {
  uint64_t pool_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t slab_bytes_in_use = 0;
  uint64_t committed_blocks = 0;
  uint64_t reserved_blocks = 0;
  uint64_t leased_blocks = 0;
  uint64_t index_capacity = 0;
  uint64_t index_bytes = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  uint64_t sessions = 0;
  // SSD tier (0 without one); see wire::StatsReply for each.
  uint64_t ssd_quota_bytes = 0;
  uint64_t ssd_blocks = 0;
  uint64_t ssd_only_blocks = 0;
  uint64_t ssd_payload_bytes = 0;
  uint64_t dirty_bytes = 0;
  uint64_t demotions = 0;
  uint64_t promotions = 0;
  uint64_t demote_failures = 0;
  uint64_t promote_failures = 0;
  uint64_t integrity_failures = 0;
  uint64_t ssd_dropped = 0;
  uint64_t ssd_segments = 0;
  uint64_t expirations = 0;  // blocks dropped because their TTL ran out
};

struct LeaseInfo {
  uint64_t lease_id = 0;  // 0 unless code == kOk
  uint64_t offset = 0;    // into pool()
  uint64_t size = 0;
  StatusCode code = StatusCode::kNotFound;
  Tier tier = Tier::kNone;
};

// --- Daemon-driven copies: regions, offload and onload ---
inline constexpr uint32_t kNoEvent = UINT32_MAX;

// Host memory the client shares with kvtierd as a region: a memfd sealed against shrinking
// and growing, mapped here. CPU engines keep their KV buffers in one; tests use it for
// everything a GPU region does. Move-only; unmapped and closed on destruction.
class KVCLIENT_EXPORT HostMemory {
 public:
  static Result<HostMemory> Create(uint64_t bytes, const std::string& name = "kvtier-region");
  HostMemory() = default;
  HostMemory(HostMemory&& other) noexcept;
  HostMemory& operator=(HostMemory&& other) noexcept;
  ~HostMemory();
  std::span<std::byte> bytes() const { return {data_, size_}; }
  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }
  int fd() const { return fd_; }
  // Gives up ownership: the caller unmaps data() and closes fd() (the C ABI's
  // kvtier_host_memory_free does).
  void Release() {
    data_ = nullptr;
    size_ = 0;
    fd_ = -1;
  }

 private:
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
  int fd_ = -1;
};

struct TransferOptions {
  // The keys form `layers` equal groups, in order (key i is in layer i / (n / layers)); kvtierd
  // copies layer by layer and reports each one as it lands.
  uint32_t layers = 1;
  // Where it reports: the uint32 at `progress_offset` (4-byte aligned) of host region
  // `progress_region` (0: nowhere) becomes i + 1 once layer i has landed. The caller zeroes it
  // before the call; WaitLayer waits on it.
  uint32_t progress_region = 0;
  uint64_t progress_offset = 0;
  // CUDA regions: an offload copies after this region event (recorded by the engine once its
  // KV is written); an onload records event signal_event + i after layer i's copies, and
  // then replies at once, so the engine's stream can wait per layer (cudaStreamWaitEvent).
  uint32_t wait_event = kNoEvent;
  uint32_t signal_event = kNoEvent;
};

struct OnloadInfo {
  uint64_t size = 0;  // the block's size (also for kInvalidArgument: it did not fit)
  // kOk: copied. kNotFound: a miss. kInvalidArgument: the block does not fit the region there.
  StatusCode code = StatusCode::kNotFound;
  Tier tier = Tier::kNone;  // where kvtierd found it
};

class Client;

// Slots reserved by one Reserve call. Commit() publishes every reserved block; destroying the
// object before Commit() aborts them (the slots return to the pool, nothing becomes visible).
class KVCLIENT_EXPORT Reservations {
 public:
  Reservations(Reservations&& other) noexcept;
  Reservations& operator=(Reservations&& other) noexcept;
  ~Reservations();

  size_t size() const { return keys_.size(); }
  // kOk: data(i) is writable. kAlreadyExists: the key is stored or being stored already.
  // kResourceExhausted: no room even after eviction; refusal() says which limit and by how
  // much.
  StatusCode code(size_t i) const { return codes_[i]; }
  // Why the first kResourceExhausted item was refused ("" if none was), from kvtierd, e.g.
  // "tenant 'a': DRAM pool of 67108864 bytes is full: ...".
  const std::string& refusal() const { return refusal_; }
  std::span<std::byte> data(size_t i) const;
  // Commits every kOk item. Not OK if any commit failed (the others are committed).
  Status Commit();
  Status Abort();
  // The generation of the session the slots were reserved in. After a reconnect (a later
  // session) data() is empty and Commit() and Abort() send nothing and say kFailedPrecondition:
  // the slots went with the lost session.
  uint64_t generation() const { return generation_; }

 private:
  friend class Client;
  Reservations(Client* client) : client_(client) {}  // NOLINT
  std::vector<Key> ReservedKeys() const;
  Status End(bool commit);

  Client* client_;
  std::vector<Key> keys_;
  std::vector<uint64_t> sizes_;
  std::vector<uint64_t> offsets_;
  std::vector<StatusCode> codes_;
  std::string refusal_;
  uint64_t generation_ = 0;
  bool done_ = false;
};

// Read leases from one Acquire call. While it lives, each kOk block's bytes stay where they
// are and are never evicted or reused. Release() or destruction ends them.
class KVCLIENT_EXPORT Leases {
 public:
  Leases(Leases&& other) noexcept;
  Leases& operator=(Leases&& other) noexcept;
  ~Leases();

  size_t size() const { return infos_.size(); }
  StatusCode code(size_t i) const { return infos_[i].code; }  // kOk or kNotFound
  std::span<const std::byte> data(size_t i) const;
  // Call after reading (or copying) leased bytes and before using them: OK if every lease was
  // still held during the read; kFailedPrecondition if kvtierd has ended this session (a purge
  // of the tenant, a drain, a shutdown) or the leases were released, and the bytes read may be
  // wrong (e.g. zeroed by the purge): treat them as a miss. One poll(2), no round trip.
  Status Verify() const;
  const LeaseInfo& info(size_t i) const { return infos_[i]; }
  // Leading items that are kOk: the usable prefix.
  size_t prefix() const;
  // Not OK if any lease was not live any more (its session was ended by kvtierd); after a
  // reconnect kFailedPrecondition, and nothing is sent (kvtierd gave them back with the lost
  // session).
  Status Release();
  // The generation of the session the leases were taken in: after a reconnect, data() is empty
  // and Verify() fails.
  uint64_t generation() const { return generation_; }

 private:
  friend class Client;
  Leases(Client* client) : client_(client) {}  // NOLINT

  Client* client_;
  std::vector<LeaseInfo> infos_;
  uint64_t generation_ = 0;
  bool done_ = false;
};

class KVCLIENT_EXPORT Client {
 public:
  // Connects, says hello and maps the tenant's pool. See the header comment for the errors.
  static Result<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // --- RAII batch API ---
  // `ttl_seconds` (empty, or one per key): seconds from commit until the block expires; 0 or
  // empty: the tenant's default_ttl_seconds. The tenant's max_ttl_seconds caps every TTL.
  Result<Reservations> Reserve(std::span<const Key> keys, std::span<const uint64_t> sizes,
                               std::span<const uint32_t> ttl_seconds = {});
  Result<Leases> Acquire(std::span<const Key> keys);
  // How many leading keys are present; `tiers`, if not empty (size >= keys), gets each one's
  // tier. A KV prefix is usable only whole, so matching stops at the first miss. `estimate`,
  // if not null, gets what loading the matched prefix would cost (valid false from a kvtierd
  // that does not estimate).
  Result<size_t> MatchPrefix(std::span<const Key> keys, std::span<Tier> tiers = {},
                             PrefixEstimate* estimate = nullptr);
  // kOk per removed key, kNotFound if it was not stored. A leased block stays readable by its
  // lease holders until they release it.
  Status Remove(std::span<const Key> keys, std::span<StatusCode> codes = {});
  // Brings SSD blocks into DRAM ahead of an Acquire: returns once every found key is in DRAM
  // (kOk per key) or known missing (kNotFound, also when its SSD record failed to verify).
  Status Prefetch(std::span<const Key> keys, std::span<StatusCode> codes = {});
  // Hints to the tenant's tier policy (docs/cache-policy.md); kOk per stored key, kNotFound
  // otherwise. ReuseSoon: these keys will be read again soon: keep them, and they are worth an
  // SSD write (also keys not stored yet, once they are). DoneWith: the request that used them
  // is done: let them go first. kFailedPrecondition (nothing sent) from a kvtierd without
  // hints (has_hints() false).
  Status ReuseSoon(std::span<const Key> keys, std::span<StatusCode> codes = {});
  Status DoneWith(std::span<const Key> keys, std::span<StatusCode> codes = {});
  // The daemon serves ReuseSoon and DoneWith.
  bool has_hints() const;
  Result<PoolStats> Stats();

  // --- Raw API (what the RAII types and the C ABI use); spans are sized like `keys`. ---
  // `refusal`, if not null, gets why the first kResourceExhausted item was refused.
  Status ReserveRaw(std::span<const Key> keys, std::span<const uint64_t> sizes,
                    std::span<uint64_t> offsets, std::span<StatusCode> codes,
                    std::span<const uint32_t> ttl_seconds = {}, std::string* refusal = nullptr);
  Status CommitRaw(std::span<const Key> keys, std::span<StatusCode> codes = {});
  Status AbortRaw(std::span<const Key> keys, std::span<StatusCode> codes = {});
  // The same, carried out only if session `generation` is still the current one; else
  // kFailedPrecondition and nothing is sent. Reservations are named by key, so a commit or abort
  // of keys reserved before a reconnect would act on reservations of the same keys made after
  // it: pass the generation the reserve ran in (last_call_generation()).
  Status CommitRawInSession(uint64_t generation, std::span<const Key> keys,
                            std::span<StatusCode> codes = {});
  Status AbortRawInSession(uint64_t generation, std::span<const Key> keys,
                           std::span<StatusCode> codes = {});
  Status AcquireRaw(std::span<const Key> keys, std::span<LeaseInfo> out);
  // With ClientOptions::reconnect, lease ids are the client's own (not kvtierd's), unique across
  // sessions: an id of an earlier session gets kFailedPrecondition and is never sent, an id
  // that is no live lease kNotFound. Never reconnects.
  Status ReleaseRaw(std::span<const uint64_t> lease_ids, std::span<StatusCode> codes = {});

  // --- Daemon-driven copies (docs/protocol.md "Regions") ---
  // kvtierd copies blocks between its pool and the region itself, on its own thread (host) or
  // CUDA stream (GPU): the engine spends neither a stream nor a CPU thread on it, and blocks on
  // SSD reach the region without its help. Regions belong to this session. With
  // ClientOptions::reconnect, region ids are the client's own: one registered before a
  // reconnect is refused with kFailedPrecondition (register the memory again).
  //
  // Registers host memory: `memfd` must be sealed against shrinking (F_SEAL_SHRINK; HostMemory
  // is) and at least `bytes` long; kvtierd maps its own copy of the fd. `local`, the caller's
  // mapping of it, lets WaitLayer find progress words there. Returns the region id.
  Result<uint32_t> RegisterHostRegion(int memfd, uint64_t bytes, std::byte* local = nullptr);
  Result<uint32_t> RegisterHostRegion(const HostMemory& memory) {
    return RegisterHostRegion(memory.fd(), memory.size(), memory.data());
  }
  // Registers CUDA memory: `ipc_handle` from cudaIpcGetMemHandle (64 bytes) of an allocation of
  // at least `bytes` on `device`, and `event_handles` (64 bytes each, from cudaIpcGetEventHandle
  // of events created with cudaEventInterprocess | cudaEventDisableTiming) for ordering.
  // kUnavailable where kvtierd has no CUDA device.
  Result<uint32_t> RegisterCudaRegion(int device, std::span<const std::byte> ipc_handle,
                                      uint64_t bytes,
                                      std::span<const std::byte> event_handles = {});
  Status DeregisterRegion(uint32_t region);
  // Stores each block from the region: sizes[i] bytes at offsets[i] become keys[i], committed
  // (visible) when the call returns. codes: kOk, kAlreadyExists, kResourceExhausted (as for
  // Reserve). Longer spans than kMaxBatch go in several requests (then layers must be 1).
  // `refusal`, if not null, gets why the first kResourceExhausted item was refused.
  Status Offload(std::span<const Key> keys, uint32_t region, std::span<const uint64_t> offsets,
                 std::span<const uint64_t> sizes, std::span<StatusCode> codes = {},
                 const TransferOptions& options = {},
                 std::span<const uint32_t> ttl_seconds = {}, std::string* refusal = nullptr);
  // Copies each found block into the region at offsets[i] (promoting it from SSD first if need
  // be); returns when the bytes are there (CUDA with signal_event: when the copies are queued).
  Status Onload(std::span<const Key> keys, uint32_t region, std::span<const uint64_t> offsets,
                std::span<OnloadInfo> out, const TransferOptions& options = {});
  // The same onload in three steps, so the engine can use layer N while N+1 still loads: start
  // it (at most kMaxBatch keys), WaitLayer for each layer in turn (needs a progress word in a
  // region registered with its local mapping), then FinishOnload. No other call on this Client
  // until FinishOnload.
  Status StartOnload(std::span<const Key> keys, uint32_t region, std::span<const uint64_t> offsets,
                     const TransferOptions& options);
  // OK once layer `layer` has landed; kFailedPrecondition if the onload ended without it (see
  // FinishOnload), kTimedOut after timeout_ms.
  Status WaitLayer(uint32_t layer);
  Status FinishOnload(std::span<OnloadInfo> out);
  // Page-locks this client's mapping of the pool for CUDA (cudaHostRegister), so its own
  // cudaMemcpyAsync to and from pool slots runs at DMA speed. Call once the engine has picked its
  // CUDA device. kUnavailable where libkvclient was built without CUDA or there is no device.
  Status PinPoolForCuda();

  // What Leases::Verify checks, for leases taken with AcquireRaw: OK while kvtierd has not
  // ended this session (so no lease of it was revoked). After a reconnect, also not OK while
  // any lease id of an earlier session has not been given to ReleaseRaw yet (VerifySession
  // checks one session only).
  Status VerifyLeases() const;
  // OK while session `generation` is the current one and kvtierd has not ended it: leases
  // taken in it were held until now.
  Status VerifySession(uint64_t generation) const;

  // --- Reconnecting (ClientOptions::reconnect) ---
  // How many new sessions this client opened after losing one: the current session's
  // generation (0 until the first reconnect).
  uint64_t reconnects() const;
  // The generation of the session the calling thread's last call on this client ran in: what
  // the offsets, lease ids and region ids that call returned belong to.
  uint64_t last_call_generation() const;

  // The tenant's pool, mapped read-write. Offsets from the daemon are checked against it. A
  // reconnect maps the new session's pool elsewhere; the earlier session's range stays
  // reserved until the Client is destroyed (private zero pages then, not the old pool), so a
  // pointer into it never dangles, and nothing read or written through it is the new pool.
  std::span<std::byte> pool() const;
  // The pool of session `generation` if it is the current one; empty otherwise.
  std::span<std::byte> pool(uint64_t generation) const;
  const std::string& tenant() const;
  // Largest block Reserve and Offload accept.
  uint64_t max_block_bytes() const;
  // Largest block the tenant's SSD tier stores; 0 without one. Larger blocks stay in DRAM only
  // and are gone once evicted: split an object into blocks of at most this size to keep it.
  uint64_t spill_max_block_bytes() const;
  uint64_t session_id() const;
  const ClientOptions& options() const;

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  // `generation`: carried out only in that session (commit and abort of Reservations).
  Status PerKeyOp(uint16_t op, std::span<const Key> keys, std::span<StatusCode> codes,
                  const uint64_t* generation = nullptr);
  // The frames of ReserveRaw and AcquireRaw (mu held); *done: items of the frames answered.
  Status ReserveFrames(std::span<const Key> keys, std::span<const uint64_t> sizes,
                       std::span<uint64_t> offsets, std::span<StatusCode> codes,
                       std::span<const uint32_t> ttl_seconds, std::string* refusal, size_t* done);
  Status AcquireFrames(std::span<const Key> keys, std::span<LeaseInfo> out, size_t* done);
  Status ReadOnloadReply(uint64_t id, size_t n, std::span<OnloadInfo> out);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier
