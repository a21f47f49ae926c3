// Daemon-driven copies through host regions (wire ops 11..14) against the real kvtierd: one
// process offloads blocks from its memory, another onloads them into poisoned memory and
// compares every byte, also for blocks that were demoted to SSD in between; per-layer progress;
// every bad region or transfer request is refused with a reason and the session goes on; a
// client killed in the middle of its copies leaves nothing held.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

constexpr uint64_t kKiB = 1 << 10;
constexpr uint64_t kMiB = 1 << 20;
constexpr std::byte kPoison{0xa5};

std::unique_ptr<Client> MustConnect(const DaemonProcess& d) {
  auto c = Client::Connect({.socket_path = d.socket_path(), .name_space = "transfer"});
  if (!c.ok()) FAIL("connect: " << c.status().ToString());
  return std::move(*c);
}

// Room for every block these tests store (slots round up, so 2x their bytes).
DaemonOptions BigPool() {
  DaemonOptions options;
  options.dram_bytes = 256 * kMiB;
  return options;
}

HostMemory MustMemory(uint64_t bytes) {
  auto m = HostMemory::Create(bytes);
  if (!m.ok()) FAIL("host memory: " << m.status().ToString());
  return std::move(*m);
}

// A layout of blocks packed into a region in a shuffled order, with gaps between them, so a
// block that lands at the wrong place or with the wrong length shows in the poison around it.
struct Layout {
  std::vector<Key> keys;
  std::vector<uint64_t> sizes;
  std::vector<uint64_t> offsets;
  uint64_t bytes = 0;  // region size needed
};

Layout MakeLayout(uint64_t owner, size_t n, uint64_t seed, uint64_t min_size, uint64_t max_size) {
  std::mt19937_64 rng(seed);
  Layout l;
  for (size_t i = 0; i < n; ++i) {
    l.keys.push_back(TestKey(owner, i));
    l.sizes.push_back(min_size + rng() % (max_size - min_size + 1));
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  l.offsets.resize(n);
  for (size_t i : order) {
    l.offsets[i] = l.bytes + 64 * (rng() % 16);  // unaligned starts too
    l.bytes = l.offsets[i] + l.sizes[i] + 4 * kKiB;
  }
  l.bytes += 4 * kKiB;  // room for a progress word at the end
  return l;
}

// Offloads the layout's blocks (FillBlock contents) from a fresh host region; 0 or a step.
int OffloadLayout(const std::string& socket, const Layout& l, uint32_t layers) {
  auto c = Client::Connect({.socket_path = socket, .name_space = "transfer"});
  if (!c.ok()) return 10;
  auto memory = HostMemory::Create(l.bytes);
  if (!memory.ok()) return 11;
  for (size_t i = 0; i < l.keys.size(); ++i) {
    FillBlock(l.keys[i], memory->bytes().subspan(l.offsets[i], l.sizes[i]));
  }
  auto region = (*c)->RegisterHostRegion(*memory);
  if (!region.ok()) return 12;
  std::vector<StatusCode> codes(l.keys.size());
  if (!(*c)->Offload(l.keys, *region, l.offsets, l.sizes, codes, {.layers = layers}).ok()) {
    return 13;
  }
  for (StatusCode code : codes) {
    if (code != StatusCode::kOk) return 14;
  }
  return 0;
}

struct Verified {
  size_t ok = 0;
  size_t wrong = 0;  // bytes differ, or poison outside the blocks was overwritten
};

// Checks each copied block of `l` in `memory`, and that every byte outside them is poison.
Verified Verify(const Layout& l, const HostMemory& memory, const std::vector<OnloadInfo>& infos) {
  Verified v;
  std::vector<bool> covered(memory.size(), false);
  for (size_t i = 0; i < l.keys.size(); ++i) {
    if (infos[i].code != StatusCode::kOk) continue;
    const auto block = memory.bytes().subspan(l.offsets[i], l.sizes[i]);
    if (infos[i].size == l.sizes[i] && VerifyBlock(l.keys[i], block)) {
      ++v.ok;
    } else {
      ++v.wrong;
    }
    std::fill_n(covered.begin() + static_cast<std::ptrdiff_t>(l.offsets[i]), l.sizes[i], true);
  }
  for (size_t b = 0; b < memory.size(); ++b) {
    if (!covered[b] && memory.data()[b] != kPoison) {
      ++v.wrong;
      break;
    }
  }
  return v;
}

TEST_CASE("blocks offloaded from one process's region are onloaded byte for byte by another",
          "[integration][transfer]") {
  auto daemon = DaemonProcess::Start(BigPool());
  const Layout l = MakeLayout(1, 48, 7, 1, 2 * kMiB);
  REQUIRE(RunInChild([&] { return OffloadLayout(daemon->socket_path(), l, 4); }) == 0);

  // Another process, another layout of the same blocks; one key that was never stored.
  const int code = RunInChild([&] {
    auto c = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "transfer"});
    if (!c.ok()) return 20;
    Layout dest = MakeLayout(1, 48, 99, 1, 2 * kMiB);  // same keys, new offsets
    dest.sizes = l.sizes;
    uint64_t at = 0;
    for (size_t i = 0; i < dest.keys.size(); ++i) {
      dest.offsets[(i * 17) % dest.keys.size()] = at;  // another order
      at += 2 * kMiB + 128;
    }
    dest.keys.push_back(TestKey(1, 999));
    dest.sizes.push_back(kKiB);
    dest.offsets.push_back(at);
    auto memory = HostMemory::Create(at + 2 * kMiB);
    if (!memory.ok()) return 21;
    std::fill(memory->data(), memory->data() + memory->size(), kPoison);
    auto region = (*c)->RegisterHostRegion(*memory);
    if (!region.ok()) return 22;
    std::vector<OnloadInfo> infos(dest.keys.size());
    if (!(*c)->Onload(dest.keys, *region, dest.offsets, infos).ok()) return 23;
    if (infos.back().code != StatusCode::kNotFound) return 24;
    for (size_t i = 0; i + 1 < infos.size(); ++i) {
      if (infos[i].code != StatusCode::kOk || infos[i].tier != Tier::kDram) return 25;
    }
    const Verified v = Verify(dest, *memory, infos);
    return v.ok == l.keys.size() && v.wrong == 0 ? 0 : 26;
  });
  CHECK(code == 0);

  // What was offloaded is an ordinary committed block: acquire reads the same bytes.
  auto client = MustConnect(*daemon);
  auto leases = client->Acquire(l.keys);
  REQUIRE(leases.ok());
  for (size_t i = 0; i < l.keys.size(); ++i) {
    REQUIRE(leases->code(i) == StatusCode::kOk);
    CHECK(VerifyBlock(l.keys[i], leases->data(i)));
  }
}

TEST_CASE("onload brings blocks that were demoted to SSD back into the region",
          "[integration][transfer][spill]") {
  TempDir spill;
  DaemonOptions options;
  options.dram_bytes = 64 * kMiB;
  options.spill_dir = spill.path() / "spill";
  options.ssd_bytes = 1024 * kMiB;
  auto daemon = DaemonProcess::Start(options);
  const Layout l = MakeLayout(2, 24, 11, 64 * kKiB, kMiB);
  REQUIRE(RunInChild([&] { return OffloadLayout(daemon->socket_path(), l, 1); }) == 0);

  // 160 MiB more through a 64 MiB pool: the first blocks go to SSD and leave DRAM.
  auto client = MustConnect(*daemon);
  HostMemory filler = MustMemory(16 * kMiB);
  auto filler_region = client->RegisterHostRegion(filler);
  REQUIRE(filler_region.ok());
  for (uint64_t round = 0; round < 10; ++round) {
    std::vector<Key> keys;
    std::vector<uint64_t> offsets, sizes;
    for (uint64_t i = 0; i < 16; ++i) {
      keys.push_back(TestKey(3, round * 16 + i));
      offsets.push_back(i * kMiB);
      sizes.push_back(kMiB);
    }
    REQUIRE(client->Offload(keys, *filler_region, offsets, sizes).ok());
  }
  std::vector<Tier> tiers(l.keys.size());
  REQUIRE(*client->MatchPrefix(l.keys, tiers) == l.keys.size());
  REQUIRE(std::count(tiers.begin(), tiers.end(), Tier::kSsd) > 0);

  HostMemory memory = MustMemory(l.bytes);
  std::fill(memory.data(), memory.data() + memory.size(), kPoison);
  auto region = client->RegisterHostRegion(memory);
  REQUIRE(region.ok());
  std::vector<OnloadInfo> infos(l.keys.size());
  REQUIRE(client->Onload(l.keys, *region, l.offsets, infos, {.layers = 2}).ok());
  size_t from_ssd = 0;
  for (size_t i = 0; i < infos.size(); ++i) {
    CHECK(infos[i].code == StatusCode::kOk);
    from_ssd += infos[i].tier == Tier::kSsd ? 1u : 0u;
  }
  CHECK(from_ssd == static_cast<size_t>(std::count(tiers.begin(), tiers.end(), Tier::kSsd)));
  const Verified v = Verify(l, memory, infos);
  CHECK(v.ok == l.keys.size());
  CHECK(v.wrong == 0);
  auto stats = client->Stats();
  REQUIRE(stats.ok());
  CHECK(stats->promotions >= from_ssd);
  CHECK(stats->integrity_failures == 0);
  CHECK(stats->leased_blocks == 0);  // the onload's leases ended with it
}

TEST_CASE("a pipelined onload reports each layer once its bytes are in place",
          "[integration][transfer]") {
  auto daemon = DaemonProcess::Start();
  constexpr uint32_t kLayers = 4;
  const Layout l = MakeLayout(4, 32, 5, 32 * kKiB, 512 * kKiB);
  REQUIRE(RunInChild([&] { return OffloadLayout(daemon->socket_path(), l, kLayers); }) == 0);

  auto client = MustConnect(*daemon);
  HostMemory memory = MustMemory(l.bytes);
  std::fill(memory.data(), memory.data() + memory.size(), kPoison);
  const uint64_t word_offset = (l.bytes - 4 * kKiB) & ~uint64_t{3};
  std::memset(memory.data() + word_offset, 0, sizeof(uint32_t));
  auto region = client->RegisterHostRegion(memory);
  REQUIRE(region.ok());
  const TransferOptions options{
      .layers = kLayers, .progress_region = *region, .progress_offset = word_offset};
  const Status started = client->StartOnload(l.keys, *region, l.offsets, options);
  INFO(started.ToString());
  REQUIRE(started.ok());
  // No other request while it is open.
  CHECK(client->Stats().status().code() == StatusCode::kFailedPrecondition);
  const size_t per_layer = l.keys.size() / kLayers;
  for (uint32_t layer = 0; layer < kLayers; ++layer) {
    REQUIRE(client->WaitLayer(layer).ok());
    for (size_t i = layer * per_layer; i < (layer + 1) * per_layer; ++i) {
      CHECK(VerifyBlock(l.keys[i], memory.bytes().subspan(l.offsets[i], l.sizes[i])));
    }
  }
  std::vector<OnloadInfo> infos(l.keys.size());
  REQUIRE(client->FinishOnload(infos).ok());
  uint32_t word;
  std::memcpy(&word, memory.data() + word_offset, sizeof(word));
  CHECK(word == kLayers);
  std::memset(memory.data() + word_offset, 0xa5, sizeof(uint32_t));  // poison again for Verify
  const Verified v = Verify(l, memory, infos);
  CHECK(v.ok == l.keys.size());
  CHECK(v.wrong == 0);

  // An onload that fails as a whole never reports its layers; WaitLayer says so at once.
  std::memset(memory.data() + word_offset, 0, sizeof(uint32_t));
  REQUIRE(client->StartOnload(l.keys, /*region=*/77, l.offsets, options).ok());
  const Status waited = client->WaitLayer(0);
  CHECK(waited.code() == StatusCode::kFailedPrecondition);
  const Status finished = client->FinishOnload(infos);
  CHECK(finished.code() == StatusCode::kNotFound);
  CHECK_THAT(finished.message(), Catch::Contains("region 77 is not registered"));
  CHECK(client->Stats().ok());
}

// A memfd with the seals given (MFD_ALLOW_SEALING), `bytes` long, allocated unless `sparse`.
int SealedMemfd(uint64_t bytes, int seals, bool sparse = false) {
  const int fd = memfd_create("kvtier-test-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  REQUIRE(fd >= 0);
  REQUIRE(ftruncate(fd, static_cast<off_t>(bytes)) == 0);
  if (!sparse) REQUIRE(posix_fallocate(fd, 0, static_cast<off_t>(bytes)) == 0);
  if (seals != 0) REQUIRE(fcntl(fd, F_ADD_SEALS, seals) == 0);
  return fd;
}

TEST_CASE("bad regions and transfers are refused with the reason, and the session goes on",
          "[integration][transfer]") {
  DaemonOptions options;
  options.max_block_bytes = kMiB;
  auto daemon = DaemonProcess::Start(options);
  auto client = MustConnect(*daemon);
  auto refused = [](const Result<uint32_t>& r, StatusCode code, const char* says) {
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == code);
    CHECK_THAT(r.status().message(), Catch::Contains(says));
  };

  const int unsealed = SealedMemfd(kMiB, 0);
  refused(client->RegisterHostRegion(unsealed, kMiB), StatusCode::kInvalidArgument,
          "F_SEAL_SHRINK");
  const int sealed = SealedMemfd(kMiB, F_SEAL_SHRINK);
  refused(client->RegisterHostRegion(sealed, 2 * kMiB), StatusCode::kInvalidArgument,
          "exceeds its memfd");
  // A terabyte of holes would be allocated by (and charged to) the daemon: refused.
  const int sparse = SealedMemfd(uint64_t{1} << 40, F_SEAL_SHRINK, /*sparse=*/true);
  refused(client->RegisterHostRegion(sparse, uint64_t{1} << 40), StatusCode::kInvalidArgument,
          "not fully allocated");
  close(sparse);
  // hugetlbfs pages can be punched out under a copy and not come back (SIGBUS): refused.
  const int huge = memfd_create("kvtier-test-huge", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB);
  if (huge >= 0) {
    REQUIRE(ftruncate(huge, 2 * kMiB) == 0);
    REQUIRE(fcntl(huge, F_ADD_SEALS, F_SEAL_SHRINK) == 0);
    refused(client->RegisterHostRegion(huge, 2 * kMiB), StatusCode::kInvalidArgument,
            "hugetlbfs");
    close(huge);
  } else {
    Unavailable("hugetlbfs", std::string("memfd_create(MFD_HUGETLB): ") + std::strerror(errno) +
                                 "; that refusal is untested", /*whole_test=*/false);
  }
  const std::string proc = "/proc/self/fd/" + std::to_string(sealed);
  const int read_only = open(proc.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(read_only >= 0);
  refused(client->RegisterHostRegion(read_only, kMiB), StatusCode::kInvalidArgument,
          "not open for reading and writing");
  TempDir tmp;
  const std::string plain_path = (tmp.path() / "plain").string();
  const int plain = open(plain_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  REQUIRE(plain >= 0);
  REQUIRE(ftruncate(plain, kMiB) == 0);
  refused(client->RegisterHostRegion(plain, kMiB), StatusCode::kInvalidArgument, "not a memfd");
  refused(client->RegisterHostRegion(-1, kMiB), StatusCode::kInvalidArgument,
          "needs its memfd passed");
  const std::vector<std::byte> handle(64, std::byte{1});
  refused(client->RegisterCudaRegion(0, handle, kMiB), StatusCode::kUnavailable,
          "no CUDA device");
  for (int fd : {unsealed, sealed, read_only, plain}) close(fd);

  HostMemory memory = MustMemory(4 * kMiB);
  auto region = client->RegisterHostRegion(memory);
  REQUIRE(region.ok());
  const std::vector<Key> keys = {TestKey(5, 0), TestKey(5, 1)};
  const std::vector<uint64_t> sizes = {kMiB, kMiB};
  std::vector<StatusCode> codes(2);

  // Offload past the region's end: refused as a whole, nothing stored.
  Status s = client->Offload(keys, *region, std::vector<uint64_t>{0, 4 * kMiB - 10}, sizes, codes);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("item 1") && Catch::Contains("outside region"));
  CHECK(*client->MatchPrefix(keys) == 0);
  // An unknown region, a misplaced progress word, events on a host region.
  s = client->Offload(keys, *region + 7, std::vector<uint64_t>{0, kMiB}, sizes, codes);
  CHECK(s.code() == StatusCode::kNotFound);
  s = client->Offload(keys, *region, std::vector<uint64_t>{0, kMiB}, sizes, codes,
                      {.progress_region = *region, .progress_offset = 4 * kMiB - 2});
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("progress_offset"));
  s = client->Offload(keys, *region, std::vector<uint64_t>{0, kMiB}, sizes, codes,
                      {.wait_event = 0});
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("CUDA regions"));
  CHECK(*client->MatchPrefix(keys) == 0);

  // A good offload; then an onload whose destination is too small for one block: that item is
  // refused with the block's size and its bytes stay untouched; the other lands.
  for (size_t i = 0; i < keys.size(); ++i) {
    FillBlock(keys[i], memory.bytes().subspan(i * kMiB, kMiB));
  }
  REQUIRE(client->Offload(keys, *region, std::vector<uint64_t>{0, kMiB}, sizes, codes).ok());
  std::fill(memory.data(), memory.data() + memory.size(), kPoison);
  std::vector<OnloadInfo> infos(2);
  REQUIRE(client->Onload(keys, *region, std::vector<uint64_t>{kMiB, 4 * kMiB - kKiB}, infos).ok());
  CHECK(infos[0].code == StatusCode::kOk);
  CHECK(VerifyBlock(keys[0], memory.bytes().subspan(kMiB, kMiB)));
  CHECK(infos[1].code == StatusCode::kInvalidArgument);
  CHECK(infos[1].size == kMiB);
  CHECK(memory.data()[4 * kMiB - 1] == kPoison);
  // Offloading a key that exists is an item status, as for reserve: the call itself is OK.
  CHECK(client->Offload(keys, *region, std::vector<uint64_t>{0, kMiB}, sizes, codes).ok());
  CHECK(codes[0] == StatusCode::kAlreadyExists);

  // A deregistered region is gone; at most 64 regions per session.
  REQUIRE(client->DeregisterRegion(*region).ok());
  CHECK(client->DeregisterRegion(*region).code() == StatusCode::kNotFound);
  CHECK(client->Onload(keys, *region, std::vector<uint64_t>{0, kMiB}, infos).code() ==
        StatusCode::kNotFound);
  std::vector<uint32_t> ids;
  Result<uint32_t> last = Status(StatusCode::kInternal, "");
  for (int i = 0; i < 65; ++i) {
    last = client->RegisterHostRegion(memory);
    if (!last.ok()) break;
    ids.push_back(*last);
  }
  CHECK(ids.size() == 64);
  refused(last, StatusCode::kResourceExhausted, "at most 64 regions");

  // The session still serves.
  REQUIRE(client->Onload(keys, ids[0], std::vector<uint64_t>{0, kMiB}, infos).ok());
  CHECK(VerifyBlock(keys[1], memory.bytes().subspan(kMiB, kMiB)));
  CHECK(daemon->Alive());
}

// Keys of round `round`'s copies of l's blocks: `set` 7 for the copies the child makes until it
// is killed, 8 for the one it completed before it said it was ready.
std::vector<Key> CopyKeys(const Layout& l, uint64_t set, int round) {
  std::vector<Key> keys;
  for (size_t i = 0; i < l.keys.size(); ++i) {
    keys.push_back(TestKey(set, static_cast<uint64_t>(round) * 1000 + i));
  }
  return keys;
}

TEST_CASE("clients killed in the middle of their copies leave nothing reserved or leased",
          "[integration][transfer]") {
  auto daemon = DaemonProcess::Start(BigPool());
  const Layout l = MakeLayout(6, 32, 3, kMiB, 2 * kMiB);
  REQUIRE(RunInChild([&] { return OffloadLayout(daemon->socket_path(), l, 1); }) == 0);
  size_t fresh_seen = 0;
  for (int round = 0; round < 6; ++round) {
    int ready[2];
    REQUIRE(pipe(ready) == 0);
    const pid_t child = SpawnChild([&] {
      close(ready[0]);
      auto c = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "transfer"});
      auto memory = HostMemory::Create(l.bytes);
      if (!c.ok() || !memory.ok()) return 1;
      auto region = (*c)->RegisterHostRegion(*memory);
      if (!region.ok()) return 2;
      std::vector<OnloadInfo> infos(l.keys.size());
      const std::vector<Key> kept = CopyKeys(l, 8, round);
      const std::vector<Key> fresh = CopyKeys(l, 7, round);
      // One whole onload and offload first, under `kept`: the parent checks it after the kill.
      if (!(*c)->Onload(l.keys, *region, l.offsets, infos).ok()) return 3;
      std::vector<StatusCode> codes(l.keys.size());
      if (!(*c)->Offload(kept, *region, l.offsets, l.sizes, codes).ok()) return 4;
      (void)!write(ready[1], "r", 1);
      for (uint64_t n = 0;; ++n) {
        // Onloads and offloads of 32-64 MiB each, until killed.
        if (n % 2 == 0) {
          (void)(*c)->Onload(l.keys, *region, l.offsets, infos);
        } else {
          (void)(*c)->Remove(fresh);  // the previous copy, so the pool never fills
          (void)(*c)->Offload(fresh, *region, l.offsets, l.sizes);
        }
      }
    });
    close(ready[1]);
    char byte;
    REQUIRE(read(ready[0], &byte, 1) == 1);
    close(ready[0]);
    usleep(static_cast<useconds_t>(round * 8000));  // spreads the kills over the copies
    kill(child, SIGKILL);
    CHECK(WaitChild(child) == 128 + SIGKILL);
    auto checker = MustConnect(*daemon);
    // The copy made before the kill is whole.
    const std::vector<Key> kept = CopyKeys(l, 8, round);
    {
      auto leases = checker->Acquire(kept);
      REQUIRE(leases.ok());
      size_t whole = 0;
      for (size_t i = 0; i < kept.size(); ++i) {
        whole += leases->code(i) == StatusCode::kOk && VerifyBlock(l.keys[i], leases->data(i));
      }
      CHECK(whole == kept.size());
    }
    // No half-copied block became visible: the child offloaded, from the region its onload had
    // just filled, copies of l's blocks under fresh keys; those stored hold exactly them.
    const std::vector<Key> fresh = CopyKeys(l, 7, round);
    {
      auto leases = checker->Acquire(fresh);
      REQUIRE(leases.ok());
      for (size_t i = 0; i < fresh.size(); ++i) {
        if (leases->code(i) != StatusCode::kOk) continue;
        ++fresh_seen;
        CHECK(VerifyBlock(l.keys[i], leases->data(i)));
      }
    }
    (void)checker->Remove(fresh);
    (void)checker->Remove(kept);
  }
  INFO(fresh_seen << " blocks offloaded by the killed clients were checked");
  auto client = MustConnect(*daemon);
  CHECK(WaitUntil([&] {
    auto s = client->Stats();
    return s.ok() && s->reserved_blocks == 0 && s->leased_blocks == 0 && s->sessions == 1;
  }));
  // The offloaded blocks are intact.
  HostMemory memory = MustMemory(l.bytes);
  std::fill(memory.data(), memory.data() + memory.size(), kPoison);
  auto region = client->RegisterHostRegion(memory);
  REQUIRE(region.ok());
  std::vector<OnloadInfo> infos(l.keys.size());
  REQUIRE(client->Onload(l.keys, *region, l.offsets, infos).ok());
  const Verified v = Verify(l, memory, infos);
  CHECK(v.ok == l.keys.size());
  CHECK(v.wrong == 0);
  CHECK(daemon->Alive());
}

TEST_CASE("a purge during an onload waits for the copy and leaves the pool empty",
          "[integration][transfer]") {
  auto daemon = DaemonProcess::Start(BigPool());
  const Layout l = MakeLayout(8, 64, 13, kMiB, 2 * kMiB);
  // A purge lands between two onloads now and then: try until one lands during a copy, which
  // the purge's report says (copies_waited).
  bool overlapped = false;
  for (int attempt = 0; attempt < 20 && !overlapped; ++attempt) {
    REQUIRE(RunInChild([&] { return OffloadLayout(daemon->socket_path(), l, 1); }) == 0);
    int ready[2];
    REQUIRE(pipe(ready) == 0);
    // A client onloading ~100 MiB at a time until its session is closed; it also holds
    // ordinary leases, which it gives back only when the session closes.
    const pid_t child = SpawnChild([&] {
      close(ready[0]);
      auto c = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "transfer"});
      auto memory = HostMemory::Create(l.bytes);
      if (!c.ok() || !memory.ok()) return 1;
      auto region = (*c)->RegisterHostRegion(*memory);
      if (!region.ok()) return 2;
      auto leases = (*c)->Acquire(std::span(l.keys).first(8));
      if (!leases.ok()) return 3;
      std::vector<OnloadInfo> infos(l.keys.size());
      (void)!write(ready[1], "r", 1);
      while ((*c)->Onload(l.keys, *region, l.offsets, infos).ok()) {
      }
      return 0;  // the purge closed the session
    });
    close(ready[1]);
    char byte;
    REQUIRE(read(ready[0], &byte, 1) == 1);
    close(ready[0]);
    std::string out, err;
    REQUIRE(RunCtl(*daemon, {"--json", "purge", "test"}, &out, &err) == 0);
    INFO(out << err);
    CHECK(WaitChild(child) == 0);
    CHECK_THAT(out, Catch::Contains("\"sessions_closed\": 1"));
    // Every block went, the onload's leased ones included: nothing "still holds blocks".
    CHECK_THAT(out, Catch::Contains("\"dram_blocks\": 64"));
    overlapped = out.find("\"copies_waited\": true") != std::string::npos;
    auto fresh = MustConnect(*daemon);
    auto stats = fresh->Stats();
    REQUIRE(stats.ok());
    CHECK(stats->committed_blocks == 0);
    CHECK(stats->leased_blocks == 0);
    CHECK(stats->used_bytes == 0);
  }
  CHECK(overlapped);  // else this test proved nothing about a copy in flight
  CHECK(daemon->Alive());
}

}  // namespace
}  // namespace kvtier::testing
