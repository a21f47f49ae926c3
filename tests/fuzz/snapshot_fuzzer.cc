// Fuzzes the index snapshot a restart hands over (daemon/tier/warm_restart.h): ReadKeptSnapshot
// on any bytes, then AdoptKeptBlocks' work on a real pool for what it accepts.
//
// Input: the snapshot body; the target writes the header itself (magic, version, length and
// the body's SHA-256), as a snapshot that passes its checksum, so that the fuzzer explores the
// parser and the adoption behind it, not the checksum. Byte 0, if odd, breaks the checksum.
//
// Checked besides "no crash": a snapshot is accepted or refused with kDataLoss; an accepted
// tenant lists blocks only if it is configured and at most its max_blocks; each accepted block
// has a key of 1..32 bytes, zero-padded, and a namespace index in range; adopting them into a
// real pool either adopts each one or reports it, and then every byte of the pool no adopted
// block holds is zero.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "crypto/sha256.h"
#include "daemon/config/config.h"
#include "daemon/pool/dram_pool.h"
#include "daemon/tier/warm_restart.h"
#include "tests/fuzz/fuzz_check.h"

namespace kvtier::fuzz {
namespace {

constexpr char kConfig[] = R"(config_version = 1
[daemon]
run_dir = "/tmp/kvtier-fuzz-unused"
[pool]
slab_bytes = "2MiB"
max_block_bytes = "2MiB"
[[tenant]]
name = "warm"
dram_bytes = "8MiB"
max_blocks = 64
)";

const Config& TheConfig() {
  static const Config config = [] {
    auto c = ParseConfig(kConfig, "/etc/kvtier/fuzz.toml");
    if (!c.ok()) Fail(__FILE__, __LINE__, "config", c.status().ToString());
    return *c;
  }();
  return config;
}

}  // namespace
}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier;
  using namespace kvtier::fuzz;
  if (size < 1) return 0;
  const bool break_checksum = (data[0] & 1) != 0;
  const std::span<const std::byte> body(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
  struct {
    char magic[8] = {'K', 'V', 'T', 'W', 'A', 'R', 'M', '1'};
    uint32_t version = 1;
    uint32_t tenant_count = 0;
    uint64_t body_bytes = 0;
    uint64_t written_s = 0;
    std::byte sha256[32] = {};
  } header;
  static_assert(sizeof(header) == 64);
  // The tenant count is the body's first byte (mod 4): the rest is records.
  header.tenant_count = body.empty() ? 0 : std::to_integer<uint32_t>(body[0]) % 4;
  const std::span<const std::byte> records = body.empty() ? body : body.subspan(1);
  header.body_bytes = records.size();
  const auto digest = Sha256(records);
  std::memcpy(header.sha256, digest.data(), digest.size());
  if (break_checksum) header.sha256[0] ^= std::byte{1};
  const int fd = memfd_create("kvtier-index", MFD_CLOEXEC);
  KVT_FUZZ_CHECK(fd >= 0, std::string("memfd_create"));
  KVT_FUZZ_CHECK(write(fd, &header, sizeof(header)) == static_cast<ssize_t>(sizeof(header)),
                 std::string("write"));
  if (!records.empty()) {
    KVT_FUZZ_CHECK(write(fd, records.data(), records.size()) ==
                       static_cast<ssize_t>(records.size()),
                   std::string("write"));
  }
  uint64_t age = 0;
  auto tenants = ReadKeptSnapshot(fd, TheConfig(), &age);
  close(fd);
  if (!tenants.ok()) {
    KVT_FUZZ_CHECK(tenants.status().code() == StatusCode::kDataLoss, tenants.status().ToString());
    return 0;
  }
  KVT_FUZZ_CHECK(!break_checksum, std::string("a broken checksum was accepted"));
  for (const KeptTenant& t : *tenants) {
    const bool configured = t.name == "warm";
    KVT_FUZZ_CHECK(configured || t.blocks.empty(), "blocks kept for unknown tenant " + t.name);
    KVT_FUZZ_CHECK(t.blocks.size() <= 64, std::string("more blocks than max_blocks"));
    for (const KeptBlock& b : t.blocks) {
      KVT_FUZZ_CHECK(b.key.len >= 1 && b.key.len <= 32, std::string("key length"));
      KVT_FUZZ_CHECK(std::all_of(b.key.bytes.begin() + b.key.len, b.key.bytes.end(),
                                 [](uint8_t c) { return c == 0; }),
                     std::string("key not zero-padded"));
      KVT_FUZZ_CHECK(b.key.ns_id < t.namespaces.size(), std::string("namespace index"));
    }
    if (!configured || t.pool_bytes != 8ull << 20 || t.slab_bytes != 2ull << 20 ||
        t.max_block_bytes != 2ull << 20) {
      continue;
    }
    // Adopt what it says into a real 8 MiB pool whose every byte is 0xaa beforehand.
    static std::byte memory[8 << 20];
    std::memset(memory, 0xaa, sizeof(memory));
    DramPool::Options o;
    o.pool_bytes = 8ull << 20;
    o.slab_bytes = 2ull << 20;
    o.max_block_bytes = 2ull << 20;
    o.max_blocks = 64;
    o.hash_seed = 1;
    DramPool pool(o);
    std::vector<std::pair<uint64_t, uint64_t>> held;  // adopted [offset, offset + size)
    for (KeptBlock b : t.blocks) {
      b.key.ns_id += 1;
      const DramPool::AdoptResult r = pool.Adopt(b);
      if (r == DramPool::AdoptResult::kInconsistent) break;
      if (r == DramPool::AdoptResult::kAdopted) held.emplace_back(b.offset, b.offset + b.size);
    }
    pool.ZeroUnallocated(memory);
    for (size_t i = 0; i < sizeof(memory); i += 4096) {
      const bool in_block = std::any_of(held.begin(), held.end(), [&](const auto& h) {
        return i >= h.first && i < h.second;
      });
      if (!in_block) {
        KVT_FUZZ_CHECK(memory[i] == std::byte{0},
                       "byte " + std::to_string(i) + " outside every adopted block is not zero");
      }
    }
  }
  return 0;
}
