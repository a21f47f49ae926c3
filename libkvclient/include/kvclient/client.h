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
// is full of pinned blocks. Per-key outcomes are per-item StatusCodes.
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

 private:
  friend class Client;
  Reservations(Client* client) : client_(client) {}  // NOLINT
  std::vector<Key> ReservedKeys() const;

  Client* client_;
  std::vector<Key> keys_;
  std::vector<uint64_t> sizes_;
  std::vector<uint64_t> offsets_;
  std::vector<StatusCode> codes_;
  std::string refusal_;
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
  const LeaseInfo& info(size_t i) const { return infos_[i]; }
  // Leading items that are kOk: the usable prefix.
  size_t prefix() const;
  Status Release();

 private:
  friend class Client;
  Leases(Client* client) : client_(client) {}  // NOLINT

  Client* client_;
  std::vector<LeaseInfo> infos_;
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
  // tier. A KV prefix is usable only whole, so matching stops at the first miss.
  Result<size_t> MatchPrefix(std::span<const Key> keys, std::span<Tier> tiers = {});
  // kOk per removed key, kNotFound if it was not stored. A leased block stays readable by its
  // lease holders until they release it.
  Status Remove(std::span<const Key> keys, std::span<StatusCode> codes = {});
  // Brings SSD blocks into DRAM ahead of an Acquire: returns once every found key is in DRAM
  // (kOk per key) or known missing (kNotFound, also when its SSD record failed to verify).
  Status Prefetch(std::span<const Key> keys, std::span<StatusCode> codes = {});
  Result<PoolStats> Stats();

  // --- Raw API (what the RAII types and the C ABI use); spans are sized like `keys`. ---
  // `refusal`, if not null, gets why the first kResourceExhausted item was refused.
  Status ReserveRaw(std::span<const Key> keys, std::span<const uint64_t> sizes,
                    std::span<uint64_t> offsets, std::span<StatusCode> codes,
                    std::span<const uint32_t> ttl_seconds = {}, std::string* refusal = nullptr);
  Status CommitRaw(std::span<const Key> keys, std::span<StatusCode> codes = {});
  Status AbortRaw(std::span<const Key> keys, std::span<StatusCode> codes = {});
  Status AcquireRaw(std::span<const Key> keys, std::span<LeaseInfo> out);
  Status ReleaseRaw(std::span<const uint64_t> lease_ids, std::span<StatusCode> codes = {});

  // The tenant's pool, mapped read-write. Offsets from the daemon are checked against it.
  std::span<std::byte> pool() const;
  const std::string& tenant() const;
  uint64_t max_block_bytes() const;
  uint64_t session_id() const;

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  Status PerKeyOp(uint16_t op, std::span<const Key> keys, std::span<StatusCode> codes,
                  std::string_view verb);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier
