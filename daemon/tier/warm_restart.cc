#include "daemon/tier/warm_restart.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "crypto/sha256.h"
#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"
#include "ipc/base/units.h"
#include "ipc/wire/protocol.h"

namespace kvtier {
namespace {

constexpr char kMagic[8] = {'K', 'V', 'T', 'W', 'A', 'R', 'M', '1'};
constexpr uint32_t kVersion = 1;
// Far above any real snapshot (64 bytes a block), far below what could exhaust memory.
constexpr uint64_t kMaxSnapshotBytes = 64ull << 30;

struct SnapshotHeader {
  char magic[8];
  uint32_t version;
  uint32_t tenant_count;
  uint64_t body_bytes;
  uint64_t written_s;  // CLOCK_REALTIME seconds
  std::byte sha256[32];
};
static_assert(sizeof(SnapshotHeader) == 64);

struct SnapshotTenant {
  char name[32];  // NUL-padded (tenant names are at most 31 bytes)
  uint64_t pool_bytes;
  uint64_t slab_bytes;
  uint64_t max_block_bytes;
  uint32_t namespace_count;
  uint32_t block_count;
};
static_assert(sizeof(SnapshotTenant) == 64);

constexpr uint8_t kOnSsd = 1;
constexpr uint8_t kReused = 2;

struct SnapshotBlock {
  uint8_t key[32];
  uint8_t key_len;
  uint8_t flags;  // kOnSsd, kReused
  uint16_t reserved;
  uint32_t ns;    // index into the tenant's namespaces
  uint64_t offset;
  uint32_t size;
  uint32_t ttl_s;
  uint32_t ssd_segment;
  uint32_t ssd_page;
  uint64_t reserved2;
};
static_assert(sizeof(SnapshotBlock) == 72);

uint64_t RealtimeSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec);
}

Status Corrupt(const std::string& what) {
  return Status(StatusCode::kDataLoss, "index snapshot: " + what);
}

// Reads the body of a snapshot, bounds-checked.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> bytes) : bytes_(bytes) {}
  bool Take(void* out, uint64_t n) {
    if (n > bytes_.size() - at_) return false;
    std::memcpy(out, bytes_.data() + at_, n);
    at_ += n;
    return true;
  }
  bool done() const { return at_ == bytes_.size(); }

 private:
  std::span<const std::byte> bytes_;
  uint64_t at_ = 0;
};

// The tenant of that name in `config`, or null.
const TenantConfig* Configured(const Config& config, std::string_view name) {
  for (const TenantConfig& c : config.tenants) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

}  // namespace

Result<UniqueFd> WriteKeptSnapshot(const TenantRegistry& tenants, const Config& config,
                                   std::vector<std::string>* tenant_names) {
  std::vector<std::byte> body;
  auto put = [&](const void* p, size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    body.insert(body.end(), b, b + n);
  };
  uint32_t tenant_count = 0;
  for (const auto& tenant : tenants.tenants()) {
    if (tenant->purging) continue;  // its pool is being wiped: nothing of it may come back
    std::vector<KeptBlock> blocks;
    tenant->pool->ExportKept(&blocks);
    SnapshotTenant t{};
    std::memcpy(t.name, tenant->config.name.data(),
                std::min(tenant->config.name.size(), sizeof(t.name) - 1));
    t.pool_bytes = tenant->memory.size();
    t.slab_bytes = config.slab_bytes;
    t.max_block_bytes = config.max_block_bytes;
    t.namespace_count = static_cast<uint32_t>(tenant->namespace_names.size());
    t.block_count = static_cast<uint32_t>(blocks.size());
    put(&t, sizeof(t));
    for (const std::string& ns : tenant->namespace_names) {
      const auto len = static_cast<uint32_t>(ns.size());
      put(&len, sizeof(len));
      put(ns.data(), ns.size());
    }
    for (const KeptBlock& k : blocks) {
      SnapshotBlock b{};
      std::memcpy(b.key, k.key.bytes.data(), sizeof(b.key));
      b.key_len = k.key.len;
      b.flags = static_cast<uint8_t>((k.on_ssd ? kOnSsd : 0) | (k.reused ? kReused : 0));
      b.ns = k.key.ns_id - 1;  // namespace ids start at 1
      b.offset = k.offset;
      b.size = k.size;
      b.ttl_s = k.ttl_s;
      b.ssd_segment = k.ssd.segment;
      b.ssd_page = k.ssd.page;
      put(&b, sizeof(b));
    }
    ++tenant_count;
    if (tenant_names != nullptr) tenant_names->push_back(tenant->config.name);
  }
  SnapshotHeader h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.version = kVersion;
  h.tenant_count = tenant_count;
  h.body_bytes = body.size();
  h.written_s = RealtimeSeconds();
  const std::array<std::byte, 32> digest = Sha256(body);
  std::memcpy(h.sha256, digest.data(), digest.size());

  UniqueFd fd(memfd_create(kKeptIndexFdName, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return ErrnoStatus("memfd_create(index snapshot)", errno);
  auto write_all = [&](const void* p, size_t n) -> Status {
    const auto* b = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = write(fd.get(), b, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return ErrnoStatus("write(index snapshot)", errno);
      b += w;
      n -= static_cast<size_t>(w);
    }
    return Status::Ok();
  };
  KVT_RETURN_IF_ERROR(write_all(&h, sizeof(h)));
  KVT_RETURN_IF_ERROR(write_all(body.data(), body.size()));
  // Its size is fixed; writes stay possible so that the process taking it over can burn its
  // header (ConsumeKeptSnapshot): a snapshot is good for one start only.
  if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return ErrnoStatus("fcntl(F_ADD_SEALS, index snapshot)", errno);
  }
  return fd;
}

Result<std::vector<KeptTenant>> ReadKeptSnapshot(int fd, const Config& config,
                                                  uint64_t* age_s) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return ErrnoStatus("fstat(index snapshot)", errno);
  const auto bytes = static_cast<uint64_t>(st.st_size);
  if (bytes < sizeof(SnapshotHeader) || bytes > kMaxSnapshotBytes) {
    return Corrupt("size " + std::to_string(bytes) + " is impossible");
  }
  // Mapped, not copied: the pages are the previous process's, already in memory.
  void* map = mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) return ErrnoStatus("mmap(index snapshot)", errno);
  struct Unmap {
    void* p;
    uint64_t n;
    ~Unmap() { munmap(p, n); }
  } unmap{map, bytes};
  const std::span<const std::byte> all(static_cast<const std::byte*>(map), bytes);
  SnapshotHeader h;
  std::memcpy(&h, all.data(), sizeof(h));
  if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0) {
    return Corrupt(std::all_of(h.magic, h.magic + sizeof(h.magic), [](char c) { return c == 0; })
                       ? "already taken over by an earlier start (a snapshot serves one start)"
                       : "bad magic");
  }
  if (h.version != kVersion) {
    return Corrupt("format version " + std::to_string(h.version) + ", this kvtierd reads " +
                   std::to_string(kVersion));
  }
  if (h.body_bytes != bytes - sizeof(h)) return Corrupt("length mismatch");
  const std::span<const std::byte> body = all.subspan(sizeof(h));
  const std::array<std::byte, 32> digest = Sha256(body);
  if (std::memcmp(digest.data(), h.sha256, digest.size()) != 0) {
    return Corrupt("checksum mismatch");
  }
  const uint64_t now = RealtimeSeconds();
  if (age_s != nullptr) *age_s = now > h.written_s ? now - h.written_s : 0;

  Reader r(body);
  std::vector<KeptTenant> out;
  for (uint32_t i = 0; i < h.tenant_count; ++i) {
    SnapshotTenant t;
    if (!r.Take(&t, sizeof(t))) return Corrupt("truncated tenant record");
    if (t.name[sizeof(t.name) - 1] != '\0') return Corrupt("tenant name not terminated");
    KeptTenant k;
    k.name = t.name;
    k.pool_bytes = t.pool_bytes;
    k.slab_bytes = t.slab_bytes;
    k.max_block_bytes = t.max_block_bytes;
    if (t.namespace_count > TenantRegistry::kMaxNamespacesPerTenant) {
      return Corrupt("tenant '" + k.name + "' has too many namespaces");
    }
    for (uint32_t n = 0; n < t.namespace_count; ++n) {
      uint32_t len = 0;
      if (!r.Take(&len, sizeof(len)) || len == 0 || len > wire::kMaxNamespaceBytes) {
        return Corrupt("bad namespace length");
      }
      std::string ns(len, '\0');
      if (!r.Take(ns.data(), len)) return Corrupt("truncated namespace");
      k.namespaces.push_back(std::move(ns));
    }
    // A tenant no longer configured keeps nothing: its records are skipped, not held in memory;
    // one configured keeps at most the blocks its index can hold.
    const TenantConfig* tc = Configured(config, k.name);
    if (t.block_count > body.size() / sizeof(SnapshotBlock)) {
      return Corrupt("tenant '" + k.name + "' claims more blocks than the snapshot holds");
    }
    const bool keep = tc != nullptr && t.block_count <= tc->max_blocks;
    if (keep) k.blocks.reserve(t.block_count);
    for (uint32_t b = 0; b < t.block_count; ++b) {
      SnapshotBlock s;
      if (!r.Take(&s, sizeof(s))) return Corrupt("truncated block record");
      const bool padded = std::all_of(s.key + std::min<size_t>(s.key_len, sizeof(s.key)),
                                      s.key + sizeof(s.key), [](uint8_t c) { return c == 0; });
      if (s.key_len == 0 || s.key_len > sizeof(s.key) || !padded ||
          s.ns >= k.namespaces.size() || s.size == 0) {
        return Corrupt("bad block record in tenant '" + k.name + "'");
      }
      if (!keep) continue;
      KeptBlock block;
      std::memcpy(block.key.bytes.data(), s.key, sizeof(s.key));
      block.key.len = s.key_len;
      block.key.ns_id = s.ns;
      block.offset = s.offset;
      block.size = s.size;
      block.ttl_s = s.ttl_s;
      block.on_ssd = (s.flags & kOnSsd) != 0;
      block.ssd = SsdRef{s.ssd_segment, s.ssd_page};
      block.reused = (s.flags & kReused) != 0;
      k.blocks.push_back(block);
    }
    if (tc != nullptr && !keep) k.too_many_blocks = true;
    out.push_back(std::move(k));
  }
  if (!r.done()) return Corrupt("trailing bytes");
  return out;
}

namespace {

// A snapshot serves one start: its header is burned at once, so that systemd, which keeps the
// fds it passed in its store (a later crash would pass them again), never hands this snapshot to
// a process after this one, when the pools have moved on; and the store lets go of every fd of
// ours (FDSTOREREMOVE), so the pools of a dropped snapshot are freed, not kept alive by systemd.
void Consume(const std::vector<ListenFd>& fds, std::vector<std::string>* log) {
  std::vector<std::string> names;
  for (const ListenFd& passed : fds) {
    if (passed.name == kKeptIndexFdName) {
      const SnapshotHeader burned{};
      if (pwrite(passed.fd.get(), &burned, sizeof(burned), 0) !=
          static_cast<ssize_t>(sizeof(burned))) {
        log->push_back("could not burn the index snapshot's header (" +
                       ErrnoStatus("pwrite", errno).message() + ")");
      }
    }
    const bool ours = passed.name == kKeptIndexFdName ||
                      passed.name.starts_with(kKeptPoolFdPrefix);
    if (ours && std::find(names.begin(), names.end(), passed.name) == names.end()) {
      names.push_back(passed.name);
    }
  }
  for (const std::string& name : names) SdNotify("FDSTOREREMOVE=1\nFDNAME=" + name);
}

}  // namespace

void ReleaseKeptState(std::vector<ListenFd> fds, std::vector<std::string>* log) {
  Consume(fds, log);
  if (!fds.empty()) {
    log->push_back("keep_dram_on_restart = false: dropped the " + std::to_string(fds.size()) +
                   " fd(s) the service manager passed");
  }
}

KeptState TakeKeptState(std::vector<ListenFd> fds, const Config& config,
                        std::vector<std::string>* log) {
  KeptState kept;
  size_t indexes = 0;
  for (const ListenFd& passed : fds) indexes += passed.name == kKeptIndexFdName ? 1u : 0u;
  Result<std::vector<KeptTenant>> tenants =
      Status(StatusCode::kNotFound, "no index snapshot came with them");
  if (indexes > 1) {
    tenants = Corrupt(std::to_string(indexes) + " snapshots were passed, one is expected");
  }
  for (const ListenFd& passed : fds) {
    if (indexes == 1 && passed.name == kKeptIndexFdName) {
      tenants = ReadKeptSnapshot(passed.fd.get(), config, &kept.age_s);
    }
  }
  Consume(fds, log);  // read: now burned, and out of the store
  std::unordered_map<std::string, UniqueFd> pools;
  for (ListenFd& passed : fds) {
    if (passed.name.starts_with(kKeptPoolFdPrefix)) {
      pools[passed.name.substr(std::strlen(kKeptPoolFdPrefix))] = std::move(passed.fd);
    } else if (passed.name != kKeptIndexFdName) {
      log->push_back("closed a passed fd named '" + passed.name + "' that kvtierd does not use");
    }
  }
  if (!tenants.ok()) {
    if (indexes > 0 || !pools.empty()) {
      log->push_back("dropped the kept DRAM tier (" + std::to_string(pools.size()) +
                     " pool(s)): " + tenants.status().message());
    }
    return kept;  // the pools close here: nothing else holds them any more
  }
  for (KeptTenant& t : *tenants) {
    const TenantConfig* tc = Configured(config, t.name);
    const std::string why =
        tc == nullptr ? "it is no longer in the config"
        : !pools.contains(t.name) ? "its pool was not passed back"
        : t.pool_bytes != tc->dram_bytes
            ? "dram_bytes changed from " + std::to_string(t.pool_bytes) + " to " +
                  std::to_string(tc->dram_bytes)
        : t.slab_bytes != config.slab_bytes ? "slab_bytes changed"
        : t.max_block_bytes != config.max_block_bytes ? "max_block_bytes changed"
        : t.too_many_blocks ? "it has more blocks than max_blocks allows now"
                            : "";
    if (!why.empty()) {
      log->push_back("tenant '" + t.name + "': dropped its kept DRAM blocks: " + why);
      pools.erase(t.name);  // closed: the kernel frees its pages
      continue;
    }
    kept.pools[t.name] = std::move(pools[t.name]);
    pools.erase(t.name);
    kept.tenants.push_back(std::move(t));
  }
  for (auto& [name, fd] : pools) {
    log->push_back("dropped a kept pool named '" + name + "' that the snapshot does not describe");
  }
  return kept;
}

void AdoptKeptBlocks(TenantRegistry& tenants, KeptState& kept, std::vector<std::string>* log) {
  for (KeptTenant& k : kept.tenants) {
    Tenant* tenant = nullptr;
    for (auto& t : tenants.tenants()) {
      if (t->config.name == k.name && t->kept_pool) tenant = t.get();
    }
    if (tenant == nullptr) continue;  // its pool could not be taken over: a fresh one serves
    // Ids only for the namespaces a block uses: a snapshot cannot fill the tenant's namespace
    // table with names nothing refers to. 0: not assigned yet (ids start at 1).
    std::vector<uint32_t> ns_ids(k.namespaces.size(), 0);
    auto ns_id = [&](uint32_t index) {
      if (ns_ids[index] == 0) {
        auto id = tenants.NamespaceId(*tenant, k.namespaces[index]);
        ns_ids[index] = id.ok() ? *id : UINT32_MAX;
      }
      return ns_ids[index] == UINT32_MAX ? 0u : ns_ids[index];
    };
    uint64_t adopted = 0, adopted_bytes = 0, expired = 0, refused = 0;
    std::string lie;
    for (size_t i = 0; i < k.blocks.size() && lie.empty(); ++i) {
      KeptBlock& block = k.blocks[i];
      if (block.ttl_s != 0 && block.ttl_s <= kept.age_s) {
        ++expired;  // its time ran out while no process served it
        continue;
      }
      if (block.ttl_s != 0) block.ttl_s -= static_cast<uint32_t>(kept.age_s);
      block.key.ns_id = ns_id(block.key.ns_id);
      const DramPool::AdoptResult result = block.key.ns_id != 0
                                               ? tenant->pool->Adopt(block)
                                               : DramPool::AdoptResult::kNoRoom;
      if (result == DramPool::AdoptResult::kAdopted) {
        ++adopted;
        adopted_bytes += block.size;
      } else if (result == DramPool::AdoptResult::kNoRoom) {
        ++refused;
      } else {
        lie = "block " + std::to_string(i) + " (" + std::to_string(block.size) +
              " bytes at offset " + std::to_string(block.offset) +
              ") is outside the pool, overlaps another or repeats a key";
      }
    }
    if (!lie.empty()) {
      // A snapshot that lies once is trusted nowhere: what it placed goes (copies on SSD stay
      // there), and the whole pool is zeroed below.
      tenant->pool->Evict(EvictTiers::kDram);
      log->push_back("tenant '" + k.name + "': the index snapshot is inconsistent (" + lie +
                     "): dropped every kept DRAM block");
      adopted = adopted_bytes = 0;
    }
    const uint64_t zeroed = tenant->pool->ZeroUnallocated(tenant->memory.data());
    log->push_back("tenant '" + k.name + "': kept " + std::to_string(adopted) + " DRAM blocks (" +
                   FormatSize(adopted_bytes) + ") from the previous process" +
                   (expired > 0 ? ", " + std::to_string(expired) + " expired meanwhile" : "") +
                   (refused > 0 ? ", " + std::to_string(refused) + " did not fit (zeroed)" : "") +
                   "; " + FormatSize(zeroed) + " of free pool zeroed");
  }
}

Result<std::string> HandOverKeptState(const TenantRegistry& tenants, const Config& config) {
  std::vector<std::string> names;
  KVT_ASSIGN_OR_RETURN(UniqueFd index, WriteKeptSnapshot(tenants, config, &names));
  // The pools first: a snapshot in the store always comes with the pools it describes.
  for (const std::string& name : names) {
    for (const auto& tenant : tenants.tenants()) {
      if (tenant->config.name != name) continue;
      const int fd = tenant->memory.fd();
      if (!SdNotifyWithFds("FDSTORE=1\nFDNAME=" + std::string(kKeptPoolFdPrefix) + name,
                           std::span(&fd, 1))) {
        return Status(StatusCode::kUnavailable,
                      "the service manager did not take tenant '" + name + "''s pool");
      }
    }
  }
  const int fd = index.get();
  if (!SdNotifyWithFds("FDSTORE=1\nFDNAME=" + std::string(kKeptIndexFdName), std::span(&fd, 1))) {
    return Status(StatusCode::kUnavailable, "the service manager did not take the index");
  }
  return "handed " + std::to_string(names.size()) +
         " tenant pool(s) and the index to the service manager for the next start";
}

Status ExecWithKeptState(const TenantRegistry& tenants, const Config& config, bool keep,
                         const std::vector<std::string>& argv, std::string* cold_reason) {
  KVT_CHECK(!argv.empty());
  std::vector<std::string> names;
  std::vector<int> fds;
  UniqueFd index;
  if (keep) {
    auto written = WriteKeptSnapshot(tenants, config, &names);
    if (written.ok()) {
      index = std::move(*written);
      for (const std::string& name : names) {
        for (const auto& tenant : tenants.tenants()) {
          if (tenant->config.name == name) fds.push_back(tenant->memory.fd());
        }
      }
      for (std::string& name : names) name = kKeptPoolFdPrefix + name;
      names.push_back(kKeptIndexFdName);
      fds.push_back(index.get());
    } else {
      *cold_reason = "the index snapshot: " + written.status().ToString();
    }
  }
  // Each fd first moves above 3 + n (close-on-exec), so that placing one at 3 + i never closes
  // another still to be placed; dup2 then leaves the placed ones open across execv. Should
  // either fail, the new process starts cold rather than not at all.
  const int first_free = 3 + static_cast<int>(fds.size());
  std::vector<UniqueFd> high;
  for (int fd : fds) {
    const int moved = fcntl(fd, F_DUPFD_CLOEXEC, first_free);
    if (moved < 0) {
      *cold_reason = ErrnoStatus("fcntl(F_DUPFD_CLOEXEC)", errno).ToString();
      fds.clear();
      break;
    }
    high.emplace_back(moved);
  }
  for (size_t i = 0; i < fds.size(); ++i) {
    if (dup2(high[i].get(), 3 + static_cast<int>(i)) < 0) {
      *cold_reason = ErrnoStatus("dup2", errno).ToString();
      for (size_t j = 0; j < i; ++j) close(3 + static_cast<int>(j));
      fds.clear();
      break;
    }
  }
  std::string joined;
  for (const std::string& name : names) joined += (joined.empty() ? "" : ":") + name;
  if (!cold_reason->empty()) setenv("KVTIER_UPGRADE_COLD", cold_reason->c_str(), 1);
  if (!fds.empty()) {
    setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
    setenv("LISTEN_FDS", std::to_string(fds.size()).c_str(), 1);
    setenv("LISTEN_FDNAMES", joined.c_str(), 1);
  }
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  execv(args[0], args.data());
  const int err = errno;
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  return ErrnoStatus("execv(" + argv[0] + ")", err);
}

}  // namespace kvtier
