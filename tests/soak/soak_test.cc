// Soak test (tests/soak/README.md): a real kvtierd with four tenants (three with an SSD tier)
// and small DRAM pools, and eight forked client processes, each with its tenant's uid, doing
// random reserve / commit / abort / acquire / release / remove / prefetch / offload / onload /
// match_prefix / stats / hints with random sizes and TTLs, for KVTIER_SOAK_SECONDS (default
// 180 s; 60 s in a sanitizer build). Meanwhile the parent SIGKILLs random clients (and starts
// new ones), purges one tenant with kvtierctl, and SIGKILLs and restarts the daemon once on
// the same spill directory.
//
// Every block describes itself: a header with tenant, namespace, key, size, a seed, the purge
// epoch its writer saw and a checksum of the header; the payload is a function of the seed. So
// any reader checks every byte it got, that the block is its own tenant's, for the key it
// asked for, and that no block written before a purge of its tenant is read after it. A miss
// is always fine (eviction, TTL, purge, restart, SSD reclaim); wrong bytes are not.
//
// At the end: no byte read was wrong, no tenant read another's block, no purged block came
// back, no client saw an error other than "unavailable" (its session ended: the daemon was
// killed or its tenant purged), every tenant's pool accounting returns to zero once every key
// is removed, and the restarted daemon's open fds and RSS after the run are close to what they
// were after its warm-up. One summary line with every count goes to stdout.
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/client.h"
#include "tests/support/test_support.h"

#ifndef KVT_SOAK_DEFAULT_SECONDS
#define KVT_SOAK_DEFAULT_SECONDS 180
#endif
#ifndef KVT_SOAK_SANITIZED
#define KVT_SOAK_SANITIZED 0
#endif

namespace kvtier::testing {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

constexpr int kClients = 8;
constexpr int kTenants = 4;
constexpr int kNamespaces = 2;
constexpr uint32_t kKeys = 256;  // per namespace; every tenant uses the same keys
constexpr uint64_t kMaxBlock = 1 * kMiB;
constexpr size_t kMaxBatchKeys = 8;
constexpr size_t kMaxTransferKeys = 4;
// Each client's host region: offload sources below kOnloadBase, one kMaxBlock onload slot per
// transfer key above it.
constexpr uint64_t kOnloadBase = kMaxTransferKeys * kMaxBlock;
constexpr uint64_t kRegionBytes = 2 * kOnloadBase;
constexpr size_t kMaxHeld = 2;  // lease batches a client keeps across operations
constexpr std::byte kPoison{0xa5};

struct TenantSpec {
  const char* name;
  uid_t uid;
  uint64_t dram_bytes;
  uint64_t ssd_bytes;  // 0: no SSD tier
};
// Small pools so blocks churn between DRAM and SSD, and SSD quotas of a few 16 MiB segments so
// segments are reclaimed too. "test" is DaemonOptions' own tenant.
constexpr std::array<TenantSpec, kTenants> kTenantSpecs = {{
    {"test", 42300, 16 * kMiB, 64 * kMiB},
    {"t1", 42301, 16 * kMiB, 64 * kMiB},
    {"t2", 42302, 24 * kMiB, 48 * kMiB},
    {"t3", 42303, 16 * kMiB, 0},
}};
constexpr int kPurgedTenant = 1;

int TenantOfClient(int slot) {
  return slot % kTenants;
}

// --- Operation and event counters, in memory shared by every process of the test ---

enum Op : unsigned {
  kOpConnect,
  kOpClose,
  kOpReserve,
  kOpCommit,
  kOpAbort,
  kOpAcquire,
  kOpRelease,
  kOpRemove,
  kOpPrefetch,
  kOpOffload,
  kOpOnload,
  kOpMatch,
  kOpStats,
  kOpHint,
  kOpCount
};
constexpr std::array<const char*, kOpCount> kOpNames = {
    "connect", "close",    "reserve", "commit", "abort",        "acquire", "release",
    "remove",  "prefetch", "offload", "onload", "match_prefix", "stats",   "hint"};

enum Counter : unsigned {
  kBlocksWritten,  // committed by reserve+commit or offload (per key OK)
  kTtlBlocks,      // of which with a TTL
  kBlocksChecked,  // blocks read (lease or onload) whose every byte was checked and right
  kBytesChecked,
  kRecheckedLeases,  // held leases whose bytes were checked again at release
  kMisses,           // keys asked for and not found
  kSsdHits,          // blocks the daemon found on SSD (acquire promoted, onload tier ssd)
  kExhausted,        // per-key resource_exhausted
  kRevoked,          // reads discarded because Verify() said the session had ended
  kUnavailable,      // calls that failed with unavailable: the session was over
  kConnectRefused,   // connects refused (daemon down or restarting, tenant being purged)
  kPoolScans,        // whole pools searched for other tenants' block headers
  kMismatches,       // FAILURE: a block with wrong bytes (or for another key or namespace)
  kCrossTenant,      // FAILURE: a block of another tenant
  kResurrected,      // FAILURE: a block written before its tenant's purge, read after it
  kUnexpected,       // FAILURE: a call failed with anything but unavailable
  kCounterCount
};
constexpr std::array<const char*, kCounterCount> kCounterNames = {
    "blocks_written",   "ttl_blocks", "blocks_checked", "bytes_checked", "leases_rechecked",
    "misses",           "ssd_hits",   "exhausted",      "revoked_reads", "unavailable_errors",
    "connects_refused", "pool_scans", "mismatches",     "cross_tenant",  "resurrected",
    "unexpected_errors"};
static_assert(kCounterNames[kCounterCount - 1] != nullptr && kOpNames[kOpCount - 1] != nullptr);

static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

struct SlotState {
  std::array<std::atomic<uint64_t>, kOpCount> ops;
  std::array<std::atomic<uint64_t>, kCounterCount> counters;
  std::atomic<uint32_t> parked;   // the client holds no session and waits for the pause to end
  std::atomic<uint32_t> writing;  // the client may be writing block bytes into the pool
};

struct Shared {
  std::atomic<uint32_t> stop;
  std::atomic<uint32_t> pause;
  // The daemon's socket path, published with a sequence lock (odd while being written): the
  // restarted daemon has a new one.
  std::atomic<uint64_t> socket_seq;
  char socket_path[108];
  // Per tenant: the purge epoch writers put into headers, and the lowest one a reader may see
  // (raised once a purge of the tenant has returned).
  std::array<std::atomic<uint32_t>, kTenants> epoch;
  std::array<std::atomic<uint32_t>, kTenants> min_epoch;
  // Per tenant: no new writes into the pool (while the test purges it).
  std::array<std::atomic<uint32_t>, kTenants> quiet;
  std::atomic<uint32_t> errors_logged;
  std::atomic<uint32_t> first_error_claimed;
  char first_error[1024];
  std::array<SlotState, kClients> slots;
};

class SharedMemory {
 public:
  SharedMemory() {
    void* p =
        mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    std::memset(p, 0, sizeof(Shared));  // zeroed atomics: every counter starts at 0
    shared_ = static_cast<Shared*>(p);
  }
  ~SharedMemory() { munmap(shared_, sizeof(Shared)); }
  Shared* get() const { return shared_; }
  Shared* operator->() const { return shared_; }

 private:
  Shared* shared_;
};

void PublishSocket(Shared* s, const std::string& path) {
  s->socket_seq.fetch_add(1);  // odd: being written
  std::atomic_thread_fence(std::memory_order_seq_cst);
  std::snprintf(s->socket_path, sizeof(s->socket_path), "%s", path.c_str());
  std::atomic_thread_fence(std::memory_order_seq_cst);
  s->socket_seq.fetch_add(1);
}

// False while the parent is writing a new path (or none was published yet).
bool ReadSocket(Shared* s, std::string* path) {
  const uint64_t before = s->socket_seq.load();
  if (before == 0 || before % 2 == 1) return false;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  char copy[sizeof(s->socket_path)];
  std::memcpy(copy, s->socket_path, sizeof(copy));
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (s->socket_seq.load() != before) return false;
  copy[sizeof(copy) - 1] = '\0';
  *path = copy;
  return !path->empty();
}

// --- Self-describing blocks ---

constexpr uint64_t kMagic = 0x3130'4b41'4f53'564bull;  // "KVSOAK01"

struct BlockHeader {
  uint64_t magic;
  uint32_t tenant;
  uint32_t name_space;
  uint32_t key;
  uint32_t epoch;
  uint64_t size;
  uint64_t seed;
  uint32_t writer;
  uint32_t ttl_seconds;
  uint64_t reserved;
  uint64_t checksum;  // of the 56 bytes above
};
static_assert(sizeof(BlockHeader) == 64);
constexpr uint64_t kMinBlock = sizeof(BlockHeader);

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

uint64_t HeaderChecksum(const BlockHeader& h) {
  uint64_t words[7];
  std::memcpy(words, &h, sizeof(words));
  uint64_t sum = 0x9e3779b97f4a7c15ull;
  for (uint64_t w : words)
    sum = Mix(sum ^ w);
  return sum;
}

// The payload: an xorshift stream from the seed.
class Stream {
 public:
  explicit Stream(uint64_t seed) : x_(Mix(seed) | 1) {}
  uint64_t Next() {
    x_ ^= x_ << 13;
    x_ ^= x_ >> 7;
    x_ ^= x_ << 17;
    return x_;
  }

 private:
  uint64_t x_;
};

void WriteBlock(std::span<std::byte> out, BlockHeader h) {
  h.magic = kMagic;
  h.size = out.size();
  h.reserved = 0;
  h.checksum = HeaderChecksum(h);
  std::memcpy(out.data(), &h, sizeof(h));
  Stream stream(h.seed);
  std::byte* p = out.data() + sizeof(h);
  const size_t n = out.size() - sizeof(h);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t w = stream.Next();
    std::memcpy(p + i, &w, 8);
  }
  if (i < n) {
    const uint64_t w = stream.Next();
    std::memcpy(p + i, &w, n - i);
  }
}

enum class Check { kOk, kWrong, kForeignTenant, kStale };

// Checks every byte of `bytes`, read as block `key` of namespace `name_space` by tenant
// `tenant`; `min_epoch` as the reader saw it before asking for the block.
Check CheckBlock(std::span<const std::byte> bytes,
                 uint32_t tenant,
                 uint32_t name_space,
                 uint32_t key,
                 uint32_t min_epoch,
                 std::string* why) {
  if (bytes.size() < sizeof(BlockHeader)) {
    *why = "block of " + std::to_string(bytes.size()) + " bytes, shorter than its header";
    return Check::kWrong;
  }
  BlockHeader h;
  std::memcpy(&h, bytes.data(), sizeof(h));
  if (h.magic != kMagic || h.checksum != HeaderChecksum(h)) {
    char first[40];
    std::snprintf(first, sizeof(first), "%016llx", static_cast<unsigned long long>(h.magic));
    *why = std::string("header does not verify (magic ") + first + ")";
    return Check::kWrong;
  }
  if (h.tenant != tenant) {
    *why = "a block of tenant " + std::to_string(h.tenant) + " (key " + std::to_string(h.key) +
           ", namespace " + std::to_string(h.name_space) + ")";
    return Check::kForeignTenant;
  }
  if (h.name_space != name_space || h.key != key || h.size != bytes.size()) {
    *why = "block of namespace " + std::to_string(h.name_space) + " key " + std::to_string(h.key) +
           " size " + std::to_string(h.size) + " served for namespace " +
           std::to_string(name_space) + " key " + std::to_string(key) + " size " +
           std::to_string(bytes.size());
    return Check::kWrong;
  }
  Stream stream(h.seed);
  const std::byte* p = bytes.data() + sizeof(h);
  const size_t n = bytes.size() - sizeof(h);
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t expected = stream.Next();
    const size_t len = std::min<size_t>(8, n - i);
    if (std::memcmp(p + i, &expected, len) != 0) {
      *why = "payload differs at byte " + std::to_string(sizeof(h) + i) + " of " +
             std::to_string(bytes.size()) + " (writer " + std::to_string(h.writer) + ")";
      return Check::kWrong;
    }
  }
  if (h.epoch < min_epoch) {
    *why = "written in purge epoch " + std::to_string(h.epoch) + ", read after the purge (epoch " +
           std::to_string(min_epoch) + ")";
    return Check::kStale;
  }
  return Check::kOk;
}

Key SoakKey(uint32_t k) {
  return Key::From("soak/" + std::to_string(k));
}

// --- A client process ---

struct Held {
  Leases leases;
  std::vector<uint32_t> keys;
  uint32_t min_epoch;
};

struct Session {
  std::unique_ptr<Client> client;
  uint32_t name_space = 0;
  std::vector<Held> held;  // leases end before their client
  std::optional<HostMemory> memory;
  uint32_t region = 0;

  ~Session() { Reset(); }
  void Reset() {
    held.clear();
    region = 0;
    client.reset();
    memory.reset();
  }
};

class ClientProcess {
 public:
  ClientProcess(Shared* shared, int slot, uint64_t seed)
      : shared_(shared),
        slot_(slot),
        tenant_(static_cast<uint32_t>(TenantOfClient(slot))),
        state_(&shared->slots[static_cast<size_t>(slot)]),
        rng_(seed) {}

  int Run() {
    const TenantSpec& spec = kTenantSpecs[tenant_];
    if (setresgid(spec.uid, spec.uid, spec.uid) != 0 ||
        setresuid(spec.uid, spec.uid, spec.uid) != 0) {
      return 10;
    }
    // Dies with the test (a credential change clears this, so set it after setresuid).
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1) return 11;
    while (shared_->stop.load() == 0) {
      if (shared_->pause.load() != 0) {
        Park();
        continue;
      }
      if (!session_.client && !Connect()) {
        usleep(20000);
        continue;
      }
      if (rng_() % 256 == 0) {
        // A clean close now and then, held leases and the region with it; the next session may
        // use the other namespace.
        Count(kOpClose);
        session_.Reset();
        continue;
      }
      Step();
    }
    session_.Reset();
    return 0;
  }

 private:
  void Count(Op op) { state_->ops[op].fetch_add(1, std::memory_order_relaxed); }
  void Add(Counter c, uint64_t n = 1) {
    state_->counters[c].fetch_add(n, std::memory_order_relaxed);
  }

  void Report(Counter c, const std::string& what) {
    Add(c);
    const std::string line = "kvtier-soak: client " + std::to_string(slot_) + " (tenant " +
                             kTenantSpecs[tenant_].name + ", pid " + std::to_string(getpid()) +
                             "): " + kCounterNames[c] + ": " + what;
    if (shared_->first_error_claimed.exchange(1) == 0) {
      std::snprintf(shared_->first_error, sizeof(shared_->first_error), "%s", line.c_str());
    }
    if (shared_->errors_logged.fetch_add(1) < 50) std::fprintf(stderr, "%s\n", line.c_str());
  }

  void Park() {
    session_.Reset();
    state_->parked.store(1);
    while (shared_->pause.load() != 0 && shared_->stop.load() == 0)
      usleep(10000);
    state_->parked.store(0);
  }

  bool Connect() {
    std::string path;
    if (!ReadSocket(shared_, &path)) return false;
    const auto name_space = static_cast<uint32_t>(rng_() % kNamespaces);
    Count(kOpConnect);
    auto c =
        Client::Connect({.socket_path = path, .name_space = "soak" + std::to_string(name_space)});
    if (!c.ok()) {
      // The daemon is down or starting (the socket is gone or refuses), or the tenant is being
      // purged: all say unavailable.
      if (c.status().code() == StatusCode::kUnavailable) {
        Add(kConnectRefused);
      } else {
        Report(kUnexpected, "connect: " + c.status().ToString());
      }
      return false;
    }
    if ((*c)->tenant() != kTenantSpecs[tenant_].name) {
      Report(kUnexpected, "connected as tenant " + (*c)->tenant());
      return false;
    }
    session_.client = std::move(*c);
    session_.name_space = name_space;
    ScanPool();
    return true;
  }

  // Every tenant's pool is its own memory: no header of another tenant's block may be anywhere
  // in it, read through a lease or not (slots start 64-byte aligned at least). A header being
  // written by another client of this tenant meanwhile fails its checksum and is skipped.
  void ScanPool() {
    const std::span<const std::byte> pool = session_.client->pool();
    for (size_t at = 0; at + sizeof(BlockHeader) <= pool.size(); at += 64) {
      uint64_t magic;
      std::memcpy(&magic, pool.data() + at, sizeof(magic));
      if (magic != kMagic) continue;
      BlockHeader h;
      std::memcpy(&h, pool.data() + at, sizeof(h));
      if (h.checksum != HeaderChecksum(h) || h.tenant == tenant_) continue;
      Report(kCrossTenant, "pool scan: a block header of tenant " + std::to_string(h.tenant) +
                               " at offset " + std::to_string(at) + " of this tenant's pool");
    }
    Add(kPoolScans);
  }

  // A call failed: its session is over. Unavailable is what a killed daemon or a purge of the
  // tenant gives; anything else is reported.
  void CallFailed(const char* call, const Status& status) {
    if (status.code() == StatusCode::kUnavailable) {
      Add(kUnavailable);
    } else {
      Report(kUnexpected, std::string(call) + ": " + status.ToString());
    }
    session_.Reset();
  }

  uint32_t MinEpoch() const { return shared_->min_epoch[tenant_].load(); }

  uint64_t RandomSize() {
    // Log-uniform from the header's 64 bytes to kMaxBlock, so most blocks are small and a few
    // take a good part of the pool.
    std::uniform_real_distribution<double> d(std::log(double(kMinBlock)),
                                             std::log(double(kMaxBlock)));
    const auto size = static_cast<uint64_t>(std::exp(d(rng_)));
    return std::clamp<uint64_t>(size, kMinBlock, kMaxBlock);
  }

  uint32_t RandomTtl() {
    if (rng_() % 4 != 0) return 0;
    return static_cast<uint32_t>(1 + rng_() % 30);
  }

  // `n` consecutive key numbers from a random start (a prefix, as an engine's chain of keys).
  std::vector<uint32_t> RandomRange(size_t n) {
    const auto start = static_cast<uint32_t>(rng_() % kKeys);
    std::vector<uint32_t> out;
    for (size_t i = 0; i < n; ++i)
      out.push_back((start + static_cast<uint32_t>(i)) % kKeys);
    return out;
  }

  size_t RandomCount(size_t most) { return 1 + static_cast<size_t>(rng_() % most); }

  static std::vector<Key> KeysOf(const std::vector<uint32_t>& numbers) {
    std::vector<Key> keys;
    for (uint32_t k : numbers)
      keys.push_back(SoakKey(k));
    return keys;
  }

  BlockHeader Header(uint32_t key, uint32_t ttl) {
    BlockHeader h{};
    h.tenant = tenant_;
    h.name_space = session_.name_space;
    h.key = key;
    // Read after the slot was reserved in a live session: a purge after this read closes the
    // session first, so the block never becomes visible.
    h.epoch = shared_->epoch[tenant_].load();
    h.seed = rng_();
    h.writer = static_cast<uint32_t>(slot_);
    h.ttl_seconds = ttl;
    return h;
  }

  // What one block read through a lease or an onload holds, for this session's namespace.
  Check Examine(std::span<const std::byte> bytes,
                uint32_t key,
                uint32_t min_epoch,
                std::string* why) {
    return CheckBlock(bytes, tenant_, session_.name_space, key, min_epoch, why);
  }

  void Classify(Check check, const std::string& why, uint64_t size, const char* how) {
    switch (check) {
      case Check::kOk:
        Add(kBlocksChecked);
        Add(kBytesChecked, size);
        break;
      case Check::kWrong:
        Report(kMismatches, std::string(how) + ": " + why);
        break;
      case Check::kForeignTenant:
        Report(kCrossTenant, std::string(how) + ": " + why);
        break;
      case Check::kStale:
        Report(kResurrected, std::string(how) + ": " + why);
        break;
    }
  }

  // Checks every OK lease of `leases`, then whether the session still held them while it read.
  // Returns false if the session is over (the leases are ended then, so that the caller can
  // drop the session before they go out of scope).
  bool CheckLeases(Leases& leases,
                   const std::vector<uint32_t>& keys,
                   uint32_t min_epoch,
                   const char* how) {
    std::vector<std::pair<Check, std::string>> results(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      if (leases.code(i) != StatusCode::kOk) continue;
      results[i].first = Examine(leases.data(i), keys[i], min_epoch, &results[i].second);
    }
    if (!leases.Verify().ok()) {
      // kvtierd ended the session (a purge zeroes the pool; a killed daemon): the bytes may be
      // anything, a miss. Foreign tenants' blocks can never be in this pool, revoked or not.
      for (size_t i = 0; i < keys.size(); ++i) {
        if (leases.code(i) != StatusCode::kOk) continue;
        if (results[i].first == Check::kForeignTenant) {
          Classify(results[i].first, results[i].second, 0, how);
        } else {
          Add(kRevoked);
        }
      }
      (void)leases.Release();  // fails at once: the session is over
      return false;
    }
    for (size_t i = 0; i < keys.size(); ++i) {
      if (leases.code(i) != StatusCode::kOk) continue;
      Classify(results[i].first, results[i].second, leases.data(i).size(), how);
    }
    return true;
  }

  void Step() {
    const uint64_t pick = rng_() % 100;
    if (pick < 28) {
      Write();
    } else if (pick < 50) {
      Read();
    } else if (pick < 56) {
      ReleaseHeld();
    } else if (pick < 64) {
      Remove();
    } else if (pick < 72) {
      Prefetch();
    } else if (pick < 81) {
      Offload();
    } else if (pick < 90) {
      Onload();
    } else if (pick < 96) {
      Match();
    } else if (pick < 98) {
      Stats();
    } else {
      Hint();
    }
  }

  void Write() {
    // Not while the parent is about to purge this tenant (see the purge in the test).
    struct Writing {
      SlotState* state;
      ~Writing() { state->writing.store(0); }
    } writing{state_};
    state_->writing.store(1);
    if (shared_->quiet[tenant_].load() != 0) return;
    const std::vector<uint32_t> numbers = RandomRange(RandomCount(kMaxBatchKeys));
    const std::vector<Key> keys = KeysOf(numbers);
    std::vector<uint64_t> sizes;
    std::vector<uint32_t> ttls;
    for (size_t i = 0; i < keys.size(); ++i) {
      sizes.push_back(RandomSize());
      ttls.push_back(RandomTtl());
    }
    Count(kOpReserve);
    auto batch = session_.client->Reserve(keys, sizes, ttls);
    if (!batch.ok()) return CallFailed("reserve", batch.status());
    uint64_t ok = 0;
    uint64_t with_ttl = 0;
    for (size_t i = 0; i < keys.size(); ++i) {
      const StatusCode code = batch->code(i);
      if (code == StatusCode::kOk) {
        WriteBlock(batch->data(i), Header(numbers[i], ttls[i]));
        ++ok;
        with_ttl += ttls[i] != 0 ? 1u : 0u;
      } else if (code == StatusCode::kResourceExhausted) {
        Add(kExhausted);
      } else if (code != StatusCode::kAlreadyExists) {
        Report(kUnexpected, std::string("reserve item: ") + std::string(StatusCodeName(code)));
      }
    }
    if (ok == 0) return;  // nothing reserved: the Reservations end with nothing to abort
    if (rng_() % 10 == 0) {
      Count(kOpAbort);
      const Status aborted = batch->Abort();
      if (!aborted.ok()) CallFailed("abort", aborted);
      return;
    }
    Count(kOpCommit);
    const Status committed = batch->Commit();
    if (!committed.ok()) return CallFailed("commit", committed);
    Add(kBlocksWritten, ok);
    Add(kTtlBlocks, with_ttl);
  }

  void Read() {
    const std::vector<uint32_t> numbers = RandomRange(RandomCount(kMaxBatchKeys));
    const uint32_t min_epoch = MinEpoch();  // before the acquire
    Count(kOpAcquire);
    auto leases = session_.client->Acquire(KeysOf(numbers));
    if (!leases.ok()) return CallFailed("acquire", leases.status());
    for (size_t i = 0; i < numbers.size(); ++i) {
      if (leases->code(i) == StatusCode::kOk) {
        if (leases->info(i).tier == Tier::kSsd) Add(kSsdHits);
      } else if (leases->code(i) == StatusCode::kNotFound) {
        Add(kMisses);
      } else if (leases->code(i) == StatusCode::kResourceExhausted) {
        Add(kExhausted);
      } else {
        Report(kUnexpected,
               std::string("acquire item: ") + std::string(StatusCodeName(leases->code(i))));
      }
    }
    if (!CheckLeases(*leases, numbers, min_epoch, "acquire")) {
      session_.Reset();
      Add(kUnavailable);
      return;
    }
    // Some leases are kept a while (their bytes are checked again at release), the others end
    // now, by Release() or by destruction.
    if (session_.held.size() < kMaxHeld && leases->prefix() > 0 && rng_() % 4 == 0) {
      session_.held.push_back(Held{std::move(*leases), numbers, min_epoch});
      return;
    }
    Count(kOpRelease);
    if (rng_() % 2 == 0) {
      const Status released = leases->Release();
      if (!released.ok()) CallFailed("release", released);
    }
  }

  void ReleaseHeld() {
    if (session_.held.empty()) return Read();
    Held held = std::move(session_.held.front());
    session_.held.erase(session_.held.begin());
    // The bytes of a live lease never change: they must check again.
    if (!CheckLeases(held.leases, held.keys, held.min_epoch, "held lease")) {
      session_.Reset();
      Add(kUnavailable);
      return;
    }
    Add(kRecheckedLeases);
    Count(kOpRelease);
    const Status released = held.leases.Release();
    if (!released.ok()) CallFailed("release", released);
  }

  void Remove() {
    const std::vector<uint32_t> numbers = RandomRange(RandomCount(kMaxBatchKeys));
    std::vector<StatusCode> codes(numbers.size());
    Count(kOpRemove);
    const Status removed = session_.client->Remove(KeysOf(numbers), codes);
    if (!removed.ok()) return CallFailed("remove", removed);
    for (StatusCode code : codes) {
      if (code != StatusCode::kOk && code != StatusCode::kNotFound) {
        Report(kUnexpected, std::string("remove item: ") + std::string(StatusCodeName(code)));
      }
    }
  }

  void Prefetch() {
    const std::vector<uint32_t> numbers = RandomRange(RandomCount(kMaxBatchKeys));
    std::vector<StatusCode> codes(numbers.size());
    Count(kOpPrefetch);
    const Status fetched = session_.client->Prefetch(KeysOf(numbers), codes);
    if (!fetched.ok()) return CallFailed("prefetch", fetched);
    for (StatusCode code : codes) {
      if (code == StatusCode::kResourceExhausted) {
        Add(kExhausted);
      } else if (code != StatusCode::kOk && code != StatusCode::kNotFound) {
        Report(kUnexpected, std::string("prefetch item: ") + std::string(StatusCodeName(code)));
      }
    }
    // Half the time read what was prefetched.
    if (rng_() % 2 == 0) {
      const uint32_t min_epoch = MinEpoch();
      Count(kOpAcquire);
      auto leases = session_.client->Acquire(KeysOf(numbers));
      if (!leases.ok()) return CallFailed("acquire", leases.status());
      if (!CheckLeases(*leases, numbers, min_epoch, "acquire after prefetch")) {
        session_.Reset();
        Add(kUnavailable);
        return;
      }
      Count(kOpRelease);
    }
  }

  // The client's host region, registered once per session.
  bool Region() {
    if (session_.region != 0) return true;
    if (!session_.memory) {
      auto memory = HostMemory::Create(kRegionBytes, "kvtier-soak");
      if (!memory.ok()) {
        Report(kUnexpected, "host memory: " + memory.status().ToString());
        return false;
      }
      session_.memory = std::move(*memory);
    }
    auto region = session_.client->RegisterHostRegion(*session_.memory);
    if (!region.ok()) {
      CallFailed("register_region", region.status());
      return false;
    }
    session_.region = *region;
    return true;
  }

  void Offload() {
    if (!Region()) return;
    const std::vector<uint32_t> numbers = RandomRange(RandomCount(kMaxTransferKeys));
    std::vector<uint64_t> offsets;
    std::vector<uint64_t> sizes;
    std::vector<uint32_t> ttls;
    uint64_t at = 0;
    for (uint32_t k : numbers) {
      const uint64_t size = RandomSize();
      const uint32_t ttl = RandomTtl();
      WriteBlock(session_.memory->bytes().subspan(at, size), Header(k, ttl));
      offsets.push_back(at);
      sizes.push_back(size);
      ttls.push_back(ttl);
      at += size;  // unaligned starts too
    }
    std::vector<StatusCode> codes(numbers.size());
    std::string refusal;
    Count(kOpOffload);
    const Status offloaded = session_.client->Offload(KeysOf(numbers), session_.region, offsets,
                                                      sizes, codes, {}, ttls, &refusal);
    if (!offloaded.ok()) return CallFailed("offload", offloaded);
    for (size_t i = 0; i < codes.size(); ++i) {
      if (codes[i] == StatusCode::kOk) {
        Add(kBlocksWritten);
        if (ttls[i] != 0) Add(kTtlBlocks);
      } else if (codes[i] == StatusCode::kResourceExhausted) {
        Add(kExhausted);
      } else if (codes[i] != StatusCode::kAlreadyExists) {
        Report(kUnexpected, std::string("offload item: ") + std::string(StatusCodeName(codes[i])));
      }
    }
  }

  void Onload() {
    if (!Region()) return;
    const std::vector<uint32_t> numbers = RandomRange(RandomCount(kMaxTransferKeys));
    std::vector<uint64_t> offsets;
    for (size_t i = 0; i < numbers.size(); ++i)
      offsets.push_back(kOnloadBase + i * kMaxBlock);
    const std::span<std::byte> slots =
        session_.memory->bytes().subspan(kOnloadBase, numbers.size() * kMaxBlock);
    std::fill(slots.begin(), slots.end(), kPoison);
    std::vector<OnloadInfo> infos(numbers.size());
    const uint32_t min_epoch = MinEpoch();
    Count(kOpOnload);
    const Status onloaded =
        session_.client->Onload(KeysOf(numbers), session_.region, offsets, infos);
    if (!onloaded.ok()) return CallFailed("onload", onloaded);
    // The daemon held the blocks while it copied them (also across a purge, which waits for a
    // running copy): every OK block is right.
    for (size_t i = 0; i < numbers.size(); ++i) {
      const OnloadInfo& info = infos[i];
      if (info.code == StatusCode::kNotFound) {
        Add(kMisses);
        continue;
      }
      if (info.code == StatusCode::kResourceExhausted) {
        Add(kExhausted);
        continue;
      }
      if (info.code != StatusCode::kOk) {
        Report(kUnexpected, std::string("onload item: ") + std::string(StatusCodeName(info.code)) +
                                " size " + std::to_string(info.size));
        continue;
      }
      if (info.tier == Tier::kSsd) Add(kSsdHits);
      if (info.size > kMaxBlock) {
        Report(kMismatches, "onload of a block of " + std::to_string(info.size) + " bytes");
        continue;
      }
      const std::span<std::byte> slot = slots.subspan(i * kMaxBlock, kMaxBlock);
      std::string why;
      const Check check = Examine(slot.first(info.size), numbers[i], min_epoch, &why);
      Classify(check, why, info.size, "onload");
      if (std::any_of(slot.begin() + static_cast<std::ptrdiff_t>(info.size), slot.end(),
                      [](std::byte b) { return b != kPoison; })) {
        Report(kMismatches,
               "onload wrote past the block's " + std::to_string(info.size) + " bytes");
      }
    }
  }

  void Match() {
    const std::vector<uint32_t> numbers = RandomRange(RandomCount(kMaxBatchKeys));
    std::vector<Tier> tiers(numbers.size());
    Count(kOpMatch);
    auto matched = session_.client->MatchPrefix(KeysOf(numbers), tiers);
    if (!matched.ok()) return CallFailed("match_prefix", matched.status());
    if (*matched > numbers.size())
      Report(kUnexpected, "match_prefix matched more than it was asked");
  }

  void Stats() {
    Count(kOpStats);
    auto stats = session_.client->Stats();
    if (!stats.ok()) return CallFailed("stats", stats.status());
    if (stats->pool_bytes != kTenantSpecs[tenant_].dram_bytes) {
      Report(kUnexpected, "stats: pool_bytes " + std::to_string(stats->pool_bytes));
    }
  }

  void Hint() {
    if (!session_.client->has_hints()) return Match();
    const std::vector<uint32_t> numbers = RandomRange(RandomCount(kMaxBatchKeys));
    std::vector<StatusCode> codes(numbers.size());
    Count(kOpHint);
    const Status hinted = rng_() % 2 == 0 ? session_.client->ReuseSoon(KeysOf(numbers), codes)
                                          : session_.client->DoneWith(KeysOf(numbers), codes);
    if (!hinted.ok()) return CallFailed("hint", hinted);
  }

  Shared* shared_;
  int slot_;
  uint32_t tenant_;
  SlotState* state_;
  std::mt19937_64 rng_;
  Session session_;
};

// --- The parent's side ---

uint64_t EnvNumber(const char* name, uint64_t otherwise) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return otherwise;
  return std::strtoull(value, nullptr, 10);
}

// The number after "key": in kvtierctl's JSON (one tenant's row); -1 if absent.
int64_t JsonNumber(const std::string& json, const std::string& key) {
  const std::string field = "\"" + key + "\": ";
  const size_t at = json.find(field);
  if (at == std::string::npos) return -1;
  return std::strtoll(json.c_str() + at + field.size(), nullptr, 10);
}

struct TenantStats {
  bool ok = false;
  std::string json;
  int64_t Get(const char* key) const { return JsonNumber(json, key); }
};

TenantStats StatsOf(const DaemonProcess& daemon, int tenant) {
  TenantStats s;
  std::string err;
  s.ok = RunCtl(daemon,
                {"--json", "stats", "--tenant", kTenantSpecs[static_cast<size_t>(tenant)].name},
                &s.json, &err) == 0;
  if (!s.ok) s.json = err;
  return s;
}

std::array<TenantStats, kTenants> AllStats(const DaemonProcess& daemon) {
  std::array<TenantStats, kTenants> all;
  for (int t = 0; t < kTenants; ++t)
    all[static_cast<size_t>(t)] = StatsOf(daemon, t);
  return all;
}

int64_t Sum(const std::array<TenantStats, kTenants>& all, const char* key) {
  int64_t sum = 0;
  for (const TenantStats& s : all)
    sum += std::max<int64_t>(0, s.Get(key));
  return sum;
}

struct ProcessSample {
  uint64_t fds = 0;
  uint64_t rss_kib = 0;
  uint64_t segments = 0;  // spill segment files held (each an open file)
};

ProcessSample Sample(const DaemonProcess& daemon) {
  ProcessSample s;
  const fs::path proc = fs::path("/proc") / std::to_string(daemon.pid());
  std::error_code ec;
  for (auto it = fs::directory_iterator(proc / "fd", ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    ++s.fds;
  }
  std::istringstream status(ReadFile(proc / "status"));
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) s.rss_kib = std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  s.segments = static_cast<uint64_t>(Sum(AllStats(daemon), "ssd_segments"));
  return s;
}

std::string Describe(const ProcessSample& s) {
  return "fds=" + std::to_string(s.fds) + " segments=" + std::to_string(s.segments) +
         " rss=" + std::to_string(s.rss_kib / 1024) + "MiB";
}

DaemonOptions SoakOptions(const fs::path& spill_dir) {
  DaemonOptions o;
  o.default_tenant = false;
  o.socket_mode = "0666";  // any uid may connect; the tenant map decides who it is
  o.max_sessions = 64;
  o.dram_bytes = kTenantSpecs[0].dram_bytes;
  o.tenant_uids = {kTenantSpecs[0].uid};
  o.spill_dir = spill_dir;
  o.ssd_bytes = kTenantSpecs[0].ssd_bytes;
  o.segment_bytes = 16 * kMiB;
  // DaemonOptions::Tenant has no SSD quota: tenants with one are whole [[tenant]] tables after
  // the [admin] keys (TOML allows them anywhere after the root table).
  for (int t = 1; t < kTenants; ++t) {
    const TenantSpec& spec = kTenantSpecs[static_cast<size_t>(t)];
    if (spec.ssd_bytes == 0) {
      o.more_tenants.push_back({spec.name, {spec.uid}, spec.dram_bytes});
      continue;
    }
    o.admin_toml += "\n[[tenant]]\nname = \"" + std::string(spec.name) +
                    "\"\ndram_bytes = " + std::to_string(spec.dram_bytes) +
                    "\nssd_bytes = " + std::to_string(spec.ssd_bytes) + "\nuids = [" +
                    std::to_string(spec.uid) + "]\n";
  }
  return o;
}

std::unique_ptr<DaemonProcess> StartDaemon(const DaemonOptions& o) {
  auto daemon = DaemonProcess::Start(o);
  REQUIRE(chmod(daemon->dir().c_str(), 0755) == 0);  // so the tenants' uids reach run/
  return daemon;
}

// The client processes: started, killed and started again; killed at the end whatever happens.
class Clients {
 public:
  Clients(Shared* shared, uint64_t seed) : shared_(shared), seed_(seed) { pids_.fill(-1); }
  ~Clients() {
    shared_->stop.store(1);
    for (pid_t& pid : pids_) {
      if (pid > 0) {
        kill(pid, SIGKILL);
        WaitChild(pid);
      }
      pid = -1;
    }
  }

  void Start(int slot) {
    // What a killed client left behind.
    shared_->slots[static_cast<size_t>(slot)].writing.store(0);
    shared_->slots[static_cast<size_t>(slot)].parked.store(0);
    const uint64_t seed = Mix(seed_ ^ (uint64_t{static_cast<uint32_t>(slot)} << 32) ^ starts_++);
    Shared* shared = shared_;
    pids_[static_cast<size_t>(slot)] =
        SpawnChild([shared, slot, seed] { return ClientProcess(shared, slot, seed).Run(); });
  }

  // SIGKILLs the client in `slot` and starts another there; false if it had already exited.
  bool KillAndRestart(int slot, std::string* failure) {
    const pid_t pid = pids_[static_cast<size_t>(slot)];
    kill(pid, SIGKILL);
    const int code = WaitChild(pid);
    pids_[static_cast<size_t>(slot)] = -1;
    Start(slot);
    if (code != 128 + SIGKILL) {
      *failure = "client " + std::to_string(slot) + " had exited with " + std::to_string(code);
      return false;
    }
    return true;
  }

  // A client that exited on its own (it only does when told to stop): its slot and code.
  std::optional<std::pair<int, int>> Exited() {
    for (int slot = 0; slot < kClients; ++slot) {
      pid_t& pid = pids_[static_cast<size_t>(slot)];
      int status = 0;
      if (pid > 0 && waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return std::make_pair(slot, code);
      }
    }
    return std::nullopt;
  }

  // No client of `tenant` is writing into its pool.
  bool NoneWriting(int tenant) const {
    for (int slot = 0; slot < kClients; ++slot) {
      if (TenantOfClient(slot) == tenant &&
          shared_->slots[static_cast<size_t>(slot)].writing.load() != 0) {
        return false;
      }
    }
    return true;
  }

  bool AllParked() const {
    for (int slot = 0; slot < kClients; ++slot) {
      if (shared_->slots[static_cast<size_t>(slot)].parked.load() == 0) return false;
    }
    return true;
  }

  // Tells every client to stop, and collects their exit codes (0 each).
  std::vector<int> StopAll() {
    shared_->stop.store(1);
    std::vector<int> codes;
    for (pid_t& pid : pids_) {
      if (pid <= 0) continue;
      int code = -1;
      const bool exited = WaitUntil(
          [&] {
            int status = 0;
            if (waitpid(pid, &status, WNOHANG) != pid) return false;
            code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            return true;
          },
          120000);
      if (!exited) {
        kill(pid, SIGKILL);
        code = WaitChild(pid) + 1000;  // did not stop: a hung call
      }
      codes.push_back(code);
      pid = -1;
    }
    return codes;
  }

 private:
  Shared* shared_;
  uint64_t seed_;
  uint64_t starts_ = 0;
  std::array<pid_t, kClients> pids_;
};

uint64_t Total(Shared* shared, Counter c) {
  uint64_t sum = 0;
  for (const SlotState& s : shared->slots)
    sum += s.counters[c].load();
  return sum;
}

uint64_t TotalOps(Shared* shared, Op op) {
  uint64_t sum = 0;
  for (const SlotState& s : shared->slots)
    sum += s.ops[op].load();
  return sum;
}

// Removes every key of tenant `t` in both namespaces, as that tenant.
int RemoveEverything(const DaemonProcess& daemon, int t) {
  return RunInChild([&] {
    const uid_t uid = kTenantSpecs[static_cast<size_t>(t)].uid;
    if (setresgid(uid, uid, uid) != 0 || setresuid(uid, uid, uid) != 0) return 10;
    std::vector<Key> keys;
    for (uint32_t k = 0; k < kKeys; ++k)
      keys.push_back(SoakKey(k));
    for (int ns = 0; ns < kNamespaces; ++ns) {
      auto c = Client::Connect(
          {.socket_path = daemon.socket_path(), .name_space = "soak" + std::to_string(ns)});
      if (!c.ok()) return 11;
      if (!(*c)->Remove(keys).ok()) return 12;
    }
    return 0;
  });
}

// The daemon log's lines at warning level or above: counts, and the first few of them.
struct LogLevels {
  uint64_t warnings = 0;
  uint64_t errors = 0;  // error and critical
  std::string first;
};

LogLevels ScanLog(const std::string& log) {
  LogLevels out;
  std::istringstream in(log);
  size_t shown = 0;
  for (std::string line; std::getline(in, line);) {
    // "2025-01-01T00:00:00.000 warning kvtierd: ..."
    const size_t level = line.find(' ');
    if (level == std::string::npos) continue;
    const std::string rest = line.substr(level + 1);
    const bool warning = rest.rfind("warning ", 0) == 0;
    const bool error = rest.rfind("error ", 0) == 0 || rest.rfind("critical ", 0) == 0;
    if (!warning && !error) continue;
    (error ? out.errors : out.warnings) += 1;
    if (shown++ < 12) out.first += "  " + line + "\n";
  }
  return out;
}

// KVTIER_SOAK_LOG_DIR=dir keeps each daemon's log there (the test's own directory goes).
void KeepLog(const DaemonProcess& daemon, const char* name) {
  const char* dir = std::getenv("KVTIER_SOAK_LOG_DIR");
  if (dir == nullptr || *dir == '\0') return;
  std::ofstream(fs::path(dir) / name) << daemon.Log();
}

// The checker itself: a right block passes, and each kind of wrong block is told apart.
void CheckTheChecker() {
  std::vector<std::byte> block(4099);
  BlockHeader h{};
  h.tenant = 2;
  h.name_space = 1;
  h.key = 17;
  h.epoch = 3;
  h.seed = 12345;
  WriteBlock(block, h);
  std::string why;
  CHECK(CheckBlock(block, 2, 1, 17, 3, &why) == Check::kOk);
  CHECK(CheckBlock(block, 1, 1, 17, 3, &why) == Check::kForeignTenant);
  CHECK(CheckBlock(block, 2, 0, 17, 3, &why) == Check::kWrong);
  CHECK(CheckBlock(block, 2, 1, 18, 3, &why) == Check::kWrong);
  CHECK(CheckBlock(block, 2, 1, 17, 4, &why) == Check::kStale);
  CHECK(CheckBlock(std::span(block).first(4098), 2, 1, 17, 3, &why) == Check::kWrong);
  for (size_t at : {size_t{0}, size_t{20}, size_t{64}, size_t{2000}, block.size() - 1}) {
    block[at] ^= std::byte{1};
    CHECK(CheckBlock(block, 2, 1, 17, 3, &why) == Check::kWrong);
    block[at] ^= std::byte{1};
  }
  std::fill(block.begin(), block.end(), std::byte{0});  // as a purge leaves the pool
  CHECK(CheckBlock(block, 2, 1, 17, 3, &why) == Check::kWrong);
}

TEST_CASE(
    "eight client processes of four tenants churn DRAM and SSD through client kills and "
    "a purge and a daemon restart and read only their own right bytes",
    "[soak]") {
  if (geteuid() != 0) {
    Unavailable("root", "the soak's clients run as their tenants' uids (setresuid)", true);
    return;
  }
  const uint64_t seconds =
      std::max<uint64_t>(10, EnvNumber("KVTIER_SOAK_SECONDS", KVT_SOAK_DEFAULT_SECONDS));
  const uint64_t seed = EnvNumber("KVTIER_SOAK_SEED", std::random_device{}());
  std::printf("kvtier-soak: %llu s, seed %llu (KVTIER_SOAK_SECONDS, KVTIER_SOAK_SEED)\n",
              static_cast<unsigned long long>(seconds), static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  std::mt19937_64 rng(seed);
  CheckTheChecker();

  TempDir state;
  const DaemonOptions options = SoakOptions(state.path() / "spill");
  SharedMemory shared;
  std::unique_ptr<DaemonProcess> daemon = StartDaemon(options);
  PublishSocket(shared.get(), daemon->socket_path());
  Clients clients(shared.get(), seed);
  for (int slot = 0; slot < kClients; ++slot)
    clients.Start(slot);

  // Events, as fractions of the run.
  const auto start = Clock::now();
  const auto at = [&](double fraction) {
    return start +
           std::chrono::milliseconds(static_cast<int64_t>(fraction * 1000.0 * double(seconds)));
  };
  const auto end = at(1.0);
  const auto pause_d1_warm = at(0.08);
  const auto purge_time = at(0.20);
  const auto pause_d1_late = at(0.30);
  const auto restart_time = at(0.33);
  const auto pause_d2_warm = at(0.43);
  bool paused_d1_warm = false, purged = false, paused_d1_late = false, restarted = false,
       paused_d2_warm = false;
  ProcessSample d1_warm, d1_late, d2_warm, d2_end;
  std::array<TenantStats, kTenants> d1_stats;  // just before the kill
  std::string purge_reply;
  LogLevels d1_log;
  uint64_t kills = 0;
  auto next_kill = start + std::chrono::milliseconds(1000 + rng() % 3000);

  // Pauses every client (each drops its session), checks that the daemon then holds no
  // session, lease or reservation of any tenant, and samples its fds and RSS.
  const auto pause = [&](const char* when) -> ProcessSample {
    shared->pause.store(1);
    const bool parked = WaitUntil([&] { return clients.AllParked(); }, 120000);
    CHECK(parked);
    std::array<TenantStats, kTenants> stats;
    const bool idle = WaitUntil(
        [&] {
          stats = AllStats(*daemon);
          for (const TenantStats& s : stats) {
            if (!s.ok || s.Get("sessions") != 0 || s.Get("leased_blocks") != 0 ||
                s.Get("reserved_blocks") != 0) {
              return false;
            }
          }
          return true;
        },
        60000);
    INFO(when << ": " << stats[0].json << stats[1].json << stats[2].json << stats[3].json);
    CHECK(idle);
    const ProcessSample sample = Sample(*daemon);
    std::printf("kvtier-soak: %s (%.0f s): daemon %s\n", when,
                std::chrono::duration<double>(Clock::now() - start).count(),
                Describe(sample).c_str());
    std::fflush(stdout);
    shared->pause.store(0);
    return sample;
  };

  while (Clock::now() < end) {
    usleep(50000);
    if (const auto exited = clients.Exited()) {
      FAIL_CHECK("client " << exited->first << " exited on its own with " << exited->second);
      clients.Start(exited->first);
    }
    if (!daemon->Alive()) {
      FAIL("kvtierd died (it was not killed by the test); its log:\n" << daemon->Log());
    }
    const auto now = Clock::now();
    if (now >= next_kill) {
      std::string failure;
      const int slot = static_cast<int>(rng() % kClients);
      if (clients.KillAndRestart(slot, &failure)) {
        ++kills;
      } else {
        FAIL_CHECK(failure);
      }
      next_kill = now + std::chrono::milliseconds(1000 + rng() % 3000);
    }
    if (!paused_d1_warm && now >= pause_d1_warm) {
      paused_d1_warm = true;
      d1_warm = pause("daemon 1 after warm-up");
    } else if (!purged && now >= purge_time) {
      // The purge under load: the tenant's readers (leases held, acquires, onloads, prefetches
      // with SSD reads) and offloads go on. Only writes into the pool mapping wait: a client
      // still writing into a slot of a session the purge has ended would overwrite whatever
      // block the daemon puts in that slot next (a tenant's clients can always overwrite its
      // own blocks, docs/threat-model.md), and the test would report that block as wrong.
      purged = true;
      shared->quiet[kPurgedTenant].store(1);
      CHECK(WaitUntil([&] { return clients.NoneWriting(kPurgedTenant); }, 60000));
      // Writers put the new epoch into every block from now on; once the purge has returned,
      // readers must never see an older one of this tenant.
      const uint32_t epoch = shared->epoch[kPurgedTenant].fetch_add(1) + 1;
      std::string err;
      const int code = RunCtl(*daemon, {"--json", "purge", kTenantSpecs[kPurgedTenant].name},
                              &purge_reply, &err);
      INFO(purge_reply << err);
      CHECK(code == 0);
      if (code == 0) shared->min_epoch[kPurgedTenant].store(epoch);
      shared->quiet[kPurgedTenant].store(0);
      std::printf("kvtier-soak: purged tenant %s: %s", kTenantSpecs[kPurgedTenant].name,
                  purge_reply.c_str());
      std::fflush(stdout);
    } else if (!paused_d1_late && now >= pause_d1_late) {
      paused_d1_late = true;
      d1_late = pause("daemon 1 before the kill");
    } else if (!restarted && now >= restart_time) {
      restarted = true;
      d1_stats = AllStats(*daemon);
      kill(daemon->pid(), SIGKILL);
      CHECK(daemon->Stop() == -SIGKILL);
      d1_log = ScanLog(daemon->Log());
      KeepLog(*daemon, "kvtierd-1.log");
      daemon.reset();
      // The clients' calls fail with unavailable; they reconnect to the new socket.
      daemon = StartDaemon(options);
      PublishSocket(shared.get(), daemon->socket_path());
      std::printf("kvtier-soak: kvtierd SIGKILLed and restarted (%.0f s)\n",
                  std::chrono::duration<double>(Clock::now() - start).count());
      std::fflush(stdout);
    } else if (!paused_d2_warm && now >= pause_d2_warm) {
      paused_d2_warm = true;
      d2_warm = pause("daemon 2 after warm-up");
    }
  }

  const std::vector<int> codes = clients.StopAll();
  for (size_t i = 0; i < codes.size(); ++i) {
    INFO("client " << i);
    CHECK(codes[i] == 0);
  }
  const std::array<TenantStats, kTenants> d2_stats = AllStats(*daemon);

  // Everything removed, nothing held: every tenant's accounting is back to an empty pool.
  for (int t = 0; t < kTenants; ++t) {
    INFO("tenant " << kTenantSpecs[static_cast<size_t>(t)].name);
    CHECK(RemoveEverything(*daemon, t) == 0);
  }
  std::array<TenantStats, kTenants> empty;
  const char* const zero_keys[] = {
      "used_bytes",  "committed_blocks",    "reserved_blocks",      "leased_blocks",
      "sessions",    "ssd_blocks",          "ssd_only_blocks",      "ssd_payload_bytes",
      "dirty_bytes", "demotions_in_flight", "promotions_in_flight", "slab_bytes_in_use"};
  const bool drained = WaitUntil(
      [&] {
        empty = AllStats(*daemon);
        for (const TenantStats& s : empty) {
          if (!s.ok) return false;
          for (const char* key : zero_keys) {
            if (s.Get(key) != 0) return false;
          }
        }
        return true;
      },
      60000);
  for (int t = 0; t < kTenants; ++t) {
    const TenantStats& s = empty[static_cast<size_t>(t)];
    INFO("tenant " << kTenantSpecs[static_cast<size_t>(t)].name << ": " << s.json);
    REQUIRE(s.ok);
    for (const char* key : zero_keys) {
      INFO(key);
      CHECK(s.Get(key) == 0);
    }
  }
  CHECK(drained);
  d2_end = Sample(*daemon);
  std::printf("kvtier-soak: daemon 2 at the end: %s\n", Describe(d2_end).c_str());

  // The restarted daemon's resources after the run, beside its warm-up's (both with no
  // session): as many fds but for spill segment files, and RSS within a bound. An ASan build's
  // RSS also holds its quarantine of freed memory (256 MiB by default).
  const uint64_t rss_slack_kib = (KVT_SOAK_SANITIZED ? 384 : 64) * 1024;
  {
    INFO("after warm-up: " << Describe(d2_warm) << "; at the end: " << Describe(d2_end));
    CHECK(d2_end.fds - d2_end.segments <= d2_warm.fds - d2_warm.segments + 2);
    CHECK(d2_end.rss_kib <= d2_warm.rss_kib + rss_slack_kib);
  }
  {
    INFO("daemon 1 after warm-up: " << Describe(d1_warm)
                                    << "; before the kill: " << Describe(d1_late));
    CHECK(d1_late.fds - d1_late.segments <= d1_warm.fds - d1_warm.segments + 2);
    CHECK(d1_late.rss_kib <= d1_warm.rss_kib + rss_slack_kib);
  }

  // The clients' verdicts.
  std::string summary = "kvtier-soak: summary: seconds=" + std::to_string(seconds) +
                        " seed=" + std::to_string(seed) + " clients=" + std::to_string(kClients) +
                        " tenants=" + std::to_string(kTenants) + " ops:";
  uint64_t all_ops = 0;
  for (unsigned op = 0; op < kOpCount; ++op) {
    const uint64_t n = TotalOps(shared.get(), static_cast<Op>(op));
    all_ops += n;
    summary += std::string(" ") + kOpNames[static_cast<size_t>(op)] + "=" + std::to_string(n);
  }
  summary += " total=" + std::to_string(all_ops) + " |";
  for (unsigned c = 0; c < kCounterCount; ++c) {
    summary += std::string(" ") + kCounterNames[static_cast<size_t>(c)] + "=" +
               std::to_string(Total(shared.get(), static_cast<Counter>(c)));
  }
  summary += " | client_kills=" + std::to_string(kills) +
             " daemon_restarts=" + std::to_string(restarted ? 1 : 0) +
             " purges=" + std::to_string(purged ? 1 : 0) + " |";
  const LogLevels d2_log = ScanLog(daemon->Log());
  KeepLog(*daemon, "kvtierd-2.log");
  for (int d = 1; d <= 2; ++d) {
    const auto& stats = d == 1 ? d1_stats : d2_stats;
    const LogLevels& log = d == 1 ? d1_log : d2_log;
    summary += " daemon" + std::to_string(d) + ":";
    for (const char* key : {"evictions", "expirations", "demotions", "promotions", "ssd_dropped",
                            "promote_failures", "integrity_failures", "demote_failures"}) {
      summary += std::string(" ") + key + "=" + std::to_string(Sum(stats, key));
    }
    summary += " log_warnings=" + std::to_string(log.warnings) +
               " log_errors=" + std::to_string(log.errors) + " |";
  }
  summary += " daemon1 warm " + Describe(d1_warm) + " late " + Describe(d1_late) +
             " | daemon2 warm " + Describe(d2_warm) + " end " + Describe(d2_end);
  std::printf("%s\n", summary.c_str());
  if (!d1_log.first.empty())
    std::printf("kvtier-soak: daemon 1's first warnings:\n%s", d1_log.first.c_str());
  if (!d2_log.first.empty())
    std::printf("kvtier-soak: daemon 2's first warnings:\n%s", d2_log.first.c_str());
  std::fflush(stdout);

  INFO(summary);
  INFO("first failure: " << shared->first_error);
  CHECK(Total(shared.get(), kMismatches) == 0);
  CHECK(Total(shared.get(), kCrossTenant) == 0);
  CHECK(Total(shared.get(), kResurrected) == 0);
  CHECK(Total(shared.get(), kUnexpected) == 0);
  // The run did what it is for.
  CHECK(purged);
  CHECK(restarted);
  CHECK(kills > 0);
  CHECK(Total(shared.get(), kBlocksChecked) > 0);
  CHECK(Total(shared.get(), kUnavailable) > 0);  // the kill and the purge ended sessions
}

}  // namespace
}  // namespace kvtier::testing
