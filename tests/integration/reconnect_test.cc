// Clients across real daemon restarts (ClientOptions::reconnect): without the option every call
// after the loss fails at once with unavailable; with it the next call opens a new session and
// runs, and nothing of the lost session (leases, reservations, regions, pool pointers) is ever
// honoured in the new one. The daemon is restarted on the socket path its clients know, as
// systemd restarts the unit: a clean stop with the DRAM tier handed over (warm), or SIGKILL.
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "kvclient/c_api.h"
#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

constexpr uint64_t kBlock = 64 << 10;
// Far beyond the test's bounds: what ends a call after the loss is the loss, not the timeout.
constexpr int kLongTimeoutMs = 120000;
// "At once" means "not after the timeout": a liveness bound far below kLongTimeoutMs (a refused
// call takes microseconds), not a latency target, so a loaded sanitizer run cannot fail it.
constexpr int64_t kAtOnceMs = 30000;
// A round of the client loop (several calls, perhaps behind the other thread's reconnect, in a
// sanitizer build): far below kLongTimeoutMs, so a round that waited for a timeout shows.
constexpr int64_t kNoHangMs = 20000;

// A kvtierd whose socket is at a path of the test's own, so that the next daemon (a new
// process with the same config, as systemd starting the unit again) serves the path the
// clients know.
class RestartableDaemon {
 public:
  RestartableDaemon() {
    socket_ = (dir_.path() / "kvtierd.sock").string();
    options_.extra_toml = "socket = \"" + socket_ + "\"\n";
    daemon_ = DaemonProcess::Start(options_);
  }
  ~RestartableDaemon() { DropStored(); }
  const std::string& socket() const { return socket_; }
  DaemonProcess& process() { return *daemon_; }
  // A clean stop: kvtierd hands its pools and index to the (test's) fd store.
  void Stop() {
    REQUIRE(daemon_->Stop() == 0);
    DropStored();
    stored_ = daemon_->TakeStoredFds();
  }
  void Kill() {
    REQUIRE(kill(daemon_->pid(), SIGKILL) == 0);
    REQUIRE(daemon_->Stop() == -SIGKILL);
  }
  // `warm`: the next daemon gets what the last clean stop stored (it serves the same pool memfd).
  void Start(bool warm) {
    std::vector<StoredFd> passed;
    if (warm) passed = std::exchange(stored_, {});
    daemon_ = DaemonProcess::Start(options_, std::move(passed));
  }

 private:
  void DropStored() {
    for (StoredFd& s : stored_) close(s.fd);
    stored_.clear();
  }
  TempDir dir_;
  DaemonOptions options_;
  std::string socket_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::vector<StoredFd> stored_;
};

std::unique_ptr<Client> Connect(const std::string& socket, bool reconnect) {
  auto c = Client::Connect({.socket_path = socket,
                            .name_space = "reconnect",
                            .timeout_ms = kLongTimeoutMs,
                            .reconnect = reconnect});
  if (!c.ok()) FAIL("connect: " << c.status().ToString());
  return std::move(*c);
}

std::vector<Key> Keys(uint64_t owner, size_t n) {
  std::vector<Key> keys;
  for (size_t i = 0; i < n; ++i) keys.push_back(TestKey(owner, i));
  return keys;
}

void Store(Client& client, const std::vector<Key>& keys) {
  auto r = client.Reserve(keys, std::vector<uint64_t>(keys.size(), kBlock));
  REQUIRE(r.ok());
  for (size_t i = 0; i < keys.size(); ++i) {
    REQUIRE(r->code(i) == StatusCode::kOk);
    FillBlock(keys[i], r->data(i));
  }
  REQUIRE(r->Commit().ok());
}

int64_t MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               t0)
      .count();
}

uint64_t LeasedBlocks(Client& client) {
  auto stats = client.Stats();
  REQUIRE(stats.ok());
  return stats->leased_blocks;
}

// The kernel refuses a writable private range under strict overcommit; then libkvclient makes
// an old pool range read-only, and only reads through old pointers are safe.
bool StrictOvercommit() {
  std::ifstream in("/proc/sys/vm/overcommit_memory");
  int mode = 0;
  in >> mode;
  return mode == 2;
}

TEST_CASE("without reconnect every call after kvtierd restarts fails at once with unavailable",
          "[integration][reconnect]") {
  RestartableDaemon d;
  auto c = Connect(d.socket(), /*reconnect=*/false);
  const std::vector<Key> keys = Keys(1, 4);
  Store(*c, keys);
  d.Stop();
  d.Start(/*warm=*/true);  // serving again, with the blocks: still no call of c may succeed
  for (int round = 0; round < 3; ++round) {
    std::vector<Status> got;
    const auto t0 = std::chrono::steady_clock::now();
    got.push_back(c->Stats().status());
    got.push_back(c->Acquire(keys).status());
    got.push_back(c->MatchPrefix(keys).status());
    got.push_back(c->Reserve(Keys(2, 1), std::vector<uint64_t>{kBlock}).status());
    got.push_back(c->Remove(keys));
    CHECK(MsSince(t0) < kAtOnceMs);
    for (const Status& s : got) {
      CHECK(s.code() == StatusCode::kUnavailable);
      CHECK_THAT(s.message(), Catch::Contains("kvtierd"));
    }
  }
  CHECK(c->reconnects() == 0);
  // A new client of its own gets the kept blocks: the daemon is fine, the old session is gone.
  auto fresh = Connect(d.socket(), false);
  CHECK(*fresh->MatchPrefix(keys) == keys.size());
}

// One round of a client loop: store fresh blocks, lease them, copy them out, verify the leases,
// compare. A miss (the daemon lost them) and a lost connection are outcomes; wrong bytes never.
Status Round(Client& c, const std::vector<Key>& keys, std::atomic<uint64_t>& wrong) {
  auto r = c.Reserve(keys, std::vector<uint64_t>(keys.size(), kBlock));
  if (!r.ok()) return r.status();
  for (size_t i = 0; i < keys.size(); ++i) {
    if (r->code(i) != StatusCode::kOk) return Status(StatusCode::kAlreadyExists, "reserve");
    FillBlock(keys[i], r->data(i));
  }
  if (Status s = r->Commit(); !s.ok()) return s;
  auto l = c.Acquire(keys);
  if (!l.ok()) return l.status();
  if (l->prefix() != keys.size()) return Status(StatusCode::kNotFound, "a miss");
  std::vector<std::vector<std::byte>> copies;
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::span<const std::byte> data = l->data(i);
    copies.emplace_back(data.begin(), data.end());
  }
  if (Status s = l->Verify(); !s.ok()) return s;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (copies[i].size() != kBlock || !VerifyBlock(keys[i], copies[i])) ++wrong;
  }
  return l->Release();
}

TEST_CASE("with reconnect a client loop goes on across a real restart and reads exact bytes",
          "[integration][reconnect]") {
  const bool kill_it = GENERATE(false, true);
  INFO((kill_it ? "SIGKILL" : "clean stop, DRAM tier handed over"));
  RestartableDaemon d;
  auto c = Connect(d.socket(), /*reconnect=*/true);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ok_before{0}, ok_after{0}, failed{0}, wrong{0}, slow{0};
  std::mutex mu;
  std::vector<std::string> unexpected;  // guarded by mu
  // Two threads share the client (its calls are serialized): one's call reconnects while the
  // other holds leases and reservations of the lost session.
  auto loop = [&](uint64_t thread) {
    for (uint64_t round = 0; !stop.load(); ++round) {
      const auto t0 = std::chrono::steady_clock::now();
      const Status s = Round(*c, Keys(1000 + thread * 1000000 + round, 4), wrong);
      if (MsSince(t0) > kNoHangMs) ++slow;
      if (s.ok()) {
        ++(c->reconnects() == 0 ? ok_before : ok_after);
        continue;
      }
      ++failed;
      // The loss shows as unavailable; a lease caught by it fails its Verify; a block the
      // killed daemon took with it is a miss.
      if (s.code() != StatusCode::kUnavailable && s.code() != StatusCode::kFailedPrecondition &&
          s.code() != StatusCode::kNotFound) {
        std::lock_guard lock(mu);
        unexpected.push_back(s.ToString());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  };
  std::thread first(loop, 0);
  std::thread second(loop, 1);
  REQUIRE(WaitUntil([&] { return ok_before.load() >= 20; }));
  if (kill_it) {
    d.Kill();
  } else {
    d.Stop();
  }
  d.Start(/*warm=*/!kill_it);
  const bool resumed = WaitUntil([&] { return ok_after.load() >= 20; });
  stop = true;
  first.join();
  second.join();
  CHECK(resumed);
  CHECK(c->reconnects() == 1);
  CHECK(wrong.load() == 0);
  CHECK(slow.load() == 0);
  std::lock_guard lock(mu);
  CHECK(unexpected.empty());
  for (const std::string& u : unexpected) UNSCOPED_INFO(u);
}

TEST_CASE("with reconnect and kvtierd down every call fails at once and the next one tries again",
          "[integration][reconnect]") {
  RestartableDaemon d;
  auto c = Connect(d.socket(), /*reconnect=*/true);
  const std::vector<Key> keys = Keys(3, 2);
  Store(*c, keys);
  std::vector<LeaseInfo> held(keys.size());
  REQUIRE(c->AcquireRaw(keys, held).ok());
  d.Kill();
  for (int i = 0; i < 20; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto m = c->MatchPrefix(keys);
    CHECK(MsSince(t0) < kAtOnceMs);
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().code() == StatusCode::kUnavailable);
    if (i > 0) CHECK_THAT(m.status().message(), Catch::Contains("reconnecting failed"));
  }
  CHECK(c->reconnects() == 0);
  d.Start(/*warm=*/false);
  // Calls that only end what the lost session held never reconnect: they fail as before.
  CHECK(c->AbortRaw(keys).code() == StatusCode::kUnavailable);
  CHECK(c->ReleaseRaw(std::vector<uint64_t>{held[0].lease_id}).code() ==
        StatusCode::kUnavailable);
  CHECK(c->reconnects() == 0);
  // The next call that needs the daemon reconnects, then runs.
  auto m = c->MatchPrefix(keys);
  REQUIRE(m.ok());
  CHECK(*m == 0);  // SIGKILL: the DRAM tier went with the process
  CHECK(c->reconnects() == 1);
  CHECK(c->last_call_generation() == 1);
  Store(*c, keys);
  CHECK(*c->MatchPrefix(keys) == keys.size());
}

TEST_CASE("leases reservations and regions of the lost session are refused and never touch "
          "the new one",
          "[integration][reconnect]") {
  RestartableDaemon d;
  auto c = Connect(d.socket(), /*reconnect=*/true);
  const std::vector<uint64_t> one = {kBlock};
  // kvtierd numbers each session's leases from the same start (slot 0, generation 1), so the
  // new session below gets the very daemon ids the old one had: A's leases by RAII, B's raw.
  const std::vector<Key> a = Keys(4, 2);
  const std::vector<Key> b = Keys(5, 2);
  Store(*c, a);
  Store(*c, b);
  auto old_leases = c->Acquire(a);
  REQUIRE(old_leases.ok());
  REQUIRE(old_leases->prefix() == a.size());
  std::vector<LeaseInfo> old_raw(b.size());
  REQUIRE(c->AcquireRaw(b, old_raw).ok());
  const Key pending = TestKey(4, 99);
  auto old_reservation = c->Reserve(std::vector<Key>{pending}, one);
  REQUIRE(old_reservation.ok());
  REQUIRE(old_reservation->code(0) == StatusCode::kOk);
  auto memory = HostMemory::Create(4 * kBlock);
  REQUIRE(memory.ok());
  auto old_region = c->RegisterHostRegion(*memory);
  REQUIRE(old_region.ok());
  auto* old_pointer = const_cast<std::byte*>(old_leases->data(0).data());
  const std::byte* old_pool = c->pool().data();
  REQUIRE(VerifyBlock(a[0], old_leases->data(0)));
  CHECK(old_leases->generation() == 0);

  d.Kill();
  d.Start(/*warm=*/false);
  // The first call after the loss reconnects and runs.
  CHECK(LeasedBlocks(*c) == 0);
  CHECK(c->reconnects() == 1);
  CHECK(c->pool().data() != old_pool);
  CHECK(c->pool(0).empty());

  Store(*c, a);
  Store(*c, b);
  auto new_leases = c->Acquire(a);
  REQUIRE(new_leases.ok());
  REQUIRE(new_leases->prefix() == a.size());
  CHECK(new_leases->generation() == 1);
  std::vector<LeaseInfo> new_raw(b.size());
  REQUIRE(c->AcquireRaw(b, new_raw).ok());
  for (const LeaseInfo& n : new_raw) {
    for (const LeaseInfo& o : old_raw) CHECK(n.lease_id != o.lease_id);
  }
  CHECK(LeasedBlocks(*c) == a.size() + b.size());

  // Old raw lease ids: refused per key and never sent, so B's new leases stay.
  CHECK_FALSE(c->VerifyLeases().ok());  // the caller still holds ids of the lost session
  std::vector<uint64_t> old_ids;
  for (const LeaseInfo& o : old_raw) old_ids.push_back(o.lease_id);
  std::vector<StatusCode> codes(old_ids.size());
  REQUIRE(c->ReleaseRaw(old_ids, codes).ok());
  for (StatusCode code : codes) CHECK(code == StatusCode::kFailedPrecondition);
  CHECK(LeasedBlocks(*c) == a.size() + b.size());
  // The old RAII leases: no bytes, no verify, and their release sends nothing, so A's stay.
  CHECK(old_leases->data(0).empty());
  CHECK(old_leases->Verify().code() == StatusCode::kFailedPrecondition);
  const Status released = old_leases->Release();
  CHECK(released.code() == StatusCode::kFailedPrecondition);
  CHECK_THAT(released.message(), Catch::Contains("session 0"));
  CHECK(LeasedBlocks(*c) == a.size() + b.size());
  CHECK(c->VerifyLeases().ok());  // every id of the lost session is given back now
  REQUIRE(c->ReleaseRaw(old_ids, codes).ok());  // twice: not known at all any more
  for (StatusCode code : codes) CHECK(code == StatusCode::kNotFound);
  CHECK(new_leases->Verify().ok());
  for (size_t i = 0; i < a.size(); ++i) CHECK(VerifyBlock(a[i], new_leases->data(i)));

  // A pointer taken before the reconnect still points at mapped memory, which is not the pool
  // (zero pages now), and a write there reaches nothing.
  CHECK(std::to_integer<int>(*static_cast<volatile std::byte*>(old_pointer)) == 0);
  if (!StrictOvercommit()) *static_cast<volatile std::byte*>(old_pointer) = std::byte{0x5a};
  for (size_t i = 0; i < a.size(); ++i) CHECK(VerifyBlock(a[i], new_leases->data(i)));

  // The old reservation, its key reserved again in the new session: the old commit must not
  // commit that one, nor an old abort abort it.
  auto new_reservation = c->Reserve(std::vector<Key>{pending}, one);
  REQUIRE(new_reservation.ok());
  REQUIRE(new_reservation->code(0) == StatusCode::kOk);
  CHECK(old_reservation->data(0).empty());
  CHECK(old_reservation->Commit().code() == StatusCode::kFailedPrecondition);
  CHECK(*c->MatchPrefix(std::vector<Key>{pending}) == 0);
  CHECK(c->AbortRawInSession(0, std::vector<Key>{pending}).code() ==
        StatusCode::kFailedPrecondition);
  FillBlock(pending, new_reservation->data(0));
  REQUIRE(new_reservation->Commit().ok());
  CHECK(*c->MatchPrefix(std::vector<Key>{pending}) == 1);

  // The old region id is refused, not passed on as the new session's region of that number.
  auto new_region = c->RegisterHostRegion(*memory);
  REQUIRE(new_region.ok());
  CHECK(*new_region != *old_region);
  std::vector<OnloadInfo> infos(1);
  const std::vector<uint64_t> at_zero = {0};
  CHECK(c->Onload(std::vector<Key>{a[0]}, *old_region, at_zero, infos).code() ==
        StatusCode::kFailedPrecondition);
  CHECK(infos[0].code == StatusCode::kFailedPrecondition);
  CHECK(c->DeregisterRegion(*old_region).code() == StatusCode::kFailedPrecondition);
  REQUIRE(c->Onload(std::vector<Key>{a[1]}, *new_region, one, infos).ok());
  CHECK(infos[0].code == StatusCode::kOk);
  CHECK(VerifyBlock(a[1], memory->bytes().subspan(kBlock, kBlock)));
  REQUIRE(c->DeregisterRegion(*new_region).ok());

  std::vector<uint64_t> new_ids;
  for (const LeaseInfo& n : new_raw) new_ids.push_back(n.lease_id);
  REQUIRE(c->ReleaseRaw(new_ids, codes).ok());
  for (StatusCode code : codes) CHECK(code == StatusCode::kOk);
  REQUIRE(new_leases->Release().ok());
  CHECK(LeasedBlocks(*c) == 0);
}

TEST_CASE("after a warm restart serves the same pool memfd old pointers never show the new pool",
          "[integration][reconnect]") {
  RestartableDaemon d;
  auto c = Connect(d.socket(), /*reconnect=*/true);
  const std::vector<Key> keys = Keys(5, 4);
  Store(*c, keys);
  auto old_leases = c->Acquire(keys);
  REQUIRE(old_leases.ok());
  REQUIRE(old_leases->prefix() == keys.size());
  const std::byte* old_pool = c->pool().data();
  const uint64_t offset = old_leases->info(0).offset;
  const auto* old_pointer = static_cast<const volatile std::byte*>(old_pool + offset);
  REQUIRE(VerifyBlock(keys[0], old_leases->data(0)));
  d.Stop();
  d.Start(/*warm=*/true);

  auto again = c->Acquire(keys);  // reconnects, then leases the kept blocks
  REQUIRE(again.ok());
  CHECK(c->reconnects() == 1);
  REQUIRE(again->prefix() == keys.size());
  for (size_t i = 0; i < keys.size(); ++i) CHECK(VerifyBlock(keys[i], again->data(i)));
  // The new kvtierd kept the block where it was, in the same memfd: the old mapping would show
  // it (or whatever the new daemon puts there next). The old range is zero pages instead.
  CHECK(again->info(0).offset == offset);
  CHECK(c->pool().data() != old_pool);
  size_t nonzero = 0;
  for (uint64_t i = 0; i < kBlock; ++i) nonzero += old_pointer[i] != std::byte{0};
  CHECK(nonzero == 0);
  CHECK(old_leases->data(0).empty());
  CHECK_FALSE(old_leases->Verify().ok());
  CHECK(old_leases->Release().code() == StatusCode::kFailedPrecondition);
  CHECK(again->Verify().ok());
  CHECK(LeasedBlocks(*c) == keys.size());
}

TEST_CASE("a purge ends the session and with reconnect the next call opens a new one",
          "[integration][reconnect]") {
  RestartableDaemon d;
  auto c = Connect(d.socket(), /*reconnect=*/true);
  const std::vector<Key> keys = Keys(6, 2);
  Store(*c, keys);
  auto held = c->Acquire(keys);
  REQUIRE(held.ok());
  std::string out;
  std::string err;
  REQUIRE(RunCtl(d.process(), {"purge", "test"}, &out, &err) == 0);
  REQUIRE(WaitUntil([&] { return !held->Verify().ok(); }));
  // The tenant may still be purging: such a hello is refused with unavailable; the next call
  // tries again.
  Result<size_t> m = Status(StatusCode::kInternal, "not tried");
  REQUIRE(WaitUntil([&] {
    m = c->MatchPrefix(keys);
    return m.ok() || m.status().code() != StatusCode::kUnavailable;
  }));
  REQUIRE(m.ok());
  CHECK(*m == 0);
  CHECK(c->reconnects() == 1);
  CHECK(held->data(0).empty());
  CHECK(held->Release().code() == StatusCode::kFailedPrecondition);
}

// --- The C ABI ---

kvtier_key CKey(const Key& k) {
  kvtier_key out{};
  out.len = k.len;
  std::memcpy(out.bytes, k.bytes.data(), k.len);
  return out;
}

TEST_CASE("the C ABI reconnects with kvtier_client_options and voids what the lost session held",
          "[integration][reconnect][c_api]") {
  RestartableDaemon d;
  kvtier_client_options options = KVTIER_CLIENT_OPTIONS_INIT;
  options.timeout_ms = kLongTimeoutMs;
  options.reconnect = 1;
  kvtier_client* c = nullptr;
  REQUIRE(kvtier_connect_with(d.socket().c_str(), "c/reconnect", &options, &c) == KVTIER_OK);
  const std::vector<Key> k = Keys(7, 2);
  const std::vector<kvtier_key> keys = {CKey(k[0]), CKey(k[1])};
  const std::vector<uint64_t> sizes = {kBlock, kBlock};
  std::vector<uint64_t> offsets(2);
  std::vector<uint16_t> codes(2);
  REQUIRE(kvtier_reserve(c, keys.data(), sizes.data(), 2, offsets.data(), codes.data()) ==
          KVTIER_OK);
  CHECK(kvtier_call_generation(c) == 0);
  auto* base = static_cast<std::byte*>(kvtier_pool_base_of(c, 0));
  REQUIRE(base != nullptr);
  CHECK(base == kvtier_pool_base(c));
  for (size_t i = 0; i < 2; ++i) FillBlock(k[i], {base + offsets[i], kBlock});
  REQUIRE(kvtier_commit_in_session(c, 0, keys.data(), 2, codes.data()) == KVTIER_OK);
  std::vector<kvtier_lease> old_leases(2);
  REQUIRE(kvtier_acquire(c, keys.data(), 2, old_leases.data()) == KVTIER_OK);
  // A reservation left open across the restart.
  const kvtier_key pending = CKey(TestKey(7, 9));
  uint64_t pending_offset = 0;
  uint16_t pending_code = 0;
  REQUIRE(kvtier_reserve(c, &pending, sizes.data(), 1, &pending_offset, &pending_code) ==
          KVTIER_OK);

  d.Kill();
  d.Start(/*warm=*/false);
  kvtier_stats stats{};
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(kvtier_stats_get(c, &stats) == KVTIER_OK);
  CHECK(MsSince(t0) < kAtOnceMs);
  CHECK(kvtier_reconnects(c) == 1);
  CHECK(kvtier_call_generation(c) == 1);
  CHECK(kvtier_pool_base_of(c, 0) == nullptr);
  CHECK(kvtier_pool_base_of(c, 1) == kvtier_pool_base(c));
  CHECK(kvtier_verify_session(c, 0) == KVTIER_FAILED_PRECONDITION);
  CHECK(kvtier_verify_session(c, 1) == KVTIER_OK);
  CHECK(kvtier_verify_leases(c) == KVTIER_FAILED_PRECONDITION);  // old ids unreleased
  // The old reservation: not committed into the new session's reservation of the same key.
  REQUIRE(kvtier_reserve(c, &pending, sizes.data(), 1, &pending_offset, &pending_code) ==
          KVTIER_OK);
  REQUIRE(pending_code == KVTIER_OK);
  CHECK(kvtier_commit_in_session(c, 0, &pending, 1, &pending_code) ==
        KVTIER_FAILED_PRECONDITION);
  CHECK(pending_code == KVTIER_FAILED_PRECONDITION);
  CHECK(kvtier_abort_in_session(c, 0, &pending, 1, &pending_code) ==
        KVTIER_FAILED_PRECONDITION);
  REQUIRE(kvtier_abort_in_session(c, 1, &pending, 1, &pending_code) == KVTIER_OK);
  CHECK(pending_code == KVTIER_OK);
  // New leases, then the old ids: refused per key, the new leases untouched.
  REQUIRE(kvtier_reserve(c, keys.data(), sizes.data(), 2, offsets.data(), codes.data()) ==
          KVTIER_OK);
  base = static_cast<std::byte*>(kvtier_pool_base_of(c, kvtier_call_generation(c)));
  REQUIRE(base != nullptr);
  for (size_t i = 0; i < 2; ++i) FillBlock(k[i], {base + offsets[i], kBlock});
  REQUIRE(kvtier_commit(c, keys.data(), 2, codes.data()) == KVTIER_OK);
  std::vector<kvtier_lease> new_leases(2);
  REQUIRE(kvtier_acquire(c, keys.data(), 2, new_leases.data()) == KVTIER_OK);
  const std::vector<uint64_t> old_ids = {old_leases[0].lease_id, old_leases[1].lease_id};
  REQUIRE(kvtier_release(c, old_ids.data(), 2, codes.data()) == KVTIER_OK);
  CHECK(codes[0] == KVTIER_FAILED_PRECONDITION);
  CHECK(codes[1] == KVTIER_FAILED_PRECONDITION);
  CHECK(kvtier_verify_leases(c) == KVTIER_OK);
  REQUIRE(kvtier_stats_get(c, &stats) == KVTIER_OK);
  CHECK(stats.leased_blocks == 2);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(VerifyBlock(k[i], {base + new_leases[i].offset, new_leases[i].size}));
  }
  const std::vector<uint64_t> new_ids = {new_leases[0].lease_id, new_leases[1].lease_id};
  REQUIRE(kvtier_release(c, new_ids.data(), 2, codes.data()) == KVTIER_OK);
  CHECK(codes[0] == KVTIER_OK);
  CHECK(codes[1] == KVTIER_OK);
  kvtier_close(c);
}

TEST_CASE("the C ABI reads kvtier_client_options by its struct_size and keeps connect_ex as it was",
          "[integration][reconnect][c_api]") {
  RestartableDaemon d;
  kvtier_client* c = nullptr;
  SECTION("a caller that knows only struct_size gets the defaults") {
    kvtier_client_options options{};
    options.struct_size = sizeof(uint32_t);
    options.reconnect = 1;  // past its struct_size: not read
    REQUIRE(kvtier_connect_with(d.socket().c_str(), "c/sizes", &options, &c) == KVTIER_OK);
    d.Kill();
    d.Start(false);
    kvtier_stats stats{};
    CHECK(kvtier_stats_get(c, &stats) == KVTIER_UNAVAILABLE);  // reconnect off: the default
    CHECK(kvtier_reconnects(c) == 0);
    kvtier_close(c);
  }
  SECTION("a newer caller's zero fields are accepted and non-zero ones refused") {
    struct Newer {
      kvtier_client_options known;
      uint32_t unknown;
    } newer{};
    newer.known = KVTIER_CLIENT_OPTIONS_INIT;
    newer.known.struct_size = sizeof(Newer);
    REQUIRE(kvtier_connect_with(d.socket().c_str(), "c/sizes",
                                reinterpret_cast<const kvtier_client_options*>(&newer),
                                &c) == KVTIER_OK);
    kvtier_close(c);
    newer.unknown = 1;
    CHECK(kvtier_connect_with(d.socket().c_str(), "c/sizes",
                              reinterpret_cast<const kvtier_client_options*>(&newer),
                              &c) == KVTIER_INVALID_ARGUMENT);
    CHECK(c == nullptr);
    CHECK_THAT(std::string(kvtier_error()), Catch::Contains("does not know"));
    kvtier_client_options zero{};
    CHECK(kvtier_connect_with(d.socket().c_str(), "c/sizes", &zero, &c) ==
          KVTIER_INVALID_ARGUMENT);
    CHECK_THAT(std::string(kvtier_error()), Catch::Contains("struct_size"));
  }
  SECTION("kvtier_connect_ex never reconnects") {
    const kvtier_connect_options options{kLongTimeoutMs, 0};
    REQUIRE(kvtier_connect_ex(d.socket().c_str(), "c/sizes", &options, &c) == KVTIER_OK);
    d.Stop();
    d.Start(true);
    size_t matched = 0;
    const kvtier_key key = CKey(TestKey(8, 0));
    for (int i = 0; i < 3; ++i) {
      CHECK(kvtier_match_prefix(c, &key, 1, &matched, nullptr) == KVTIER_UNAVAILABLE);
    }
    CHECK(kvtier_reconnects(c) == 0);
    kvtier_close(c);
  }
}

}  // namespace
}  // namespace kvtier::testing
