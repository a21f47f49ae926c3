// libkvclient at the edges of its contract: a peer that stops answering (the per-call
// timeout), a daemon of another protocol version, a daemon without hints, one Client shared by
// several threads, and the daemon's per-wake fairness between sessions.
//
// Where a real kvtierd cannot be made to misbehave on cue (never answer, speak another
// version), the peer is a scripted stand-in on a real unix socket, as in
// tests/libkvclient/split_batch_test.cc.
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <latch>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "ipc/shm/shm_region.h"
#include "ipc/socket/seqpacket.h"
#include "ipc/wire/frame_codec.h"
#include "ipc/wire/protocol.h"
#include "kvclient/c_api.h"
#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

namespace fs = std::filesystem;
using wire::FrameHeader;

// How the stand-in answers the hello.
enum class Hello {
  kNever,                  // reads it and stays silent
  kOk,                     // a good reply with a real pool memfd
  kVersionMismatchStatus,  // a version 1 error reply: version_mismatch
  kNewerVersionFrame,      // a good reply, but in a version 2 frame
};

constexpr uint64_t kFakePoolBytes = 2 << 20;
constexpr char kMismatchMessage[] =
    "protocol version 1 is not supported; this kvtierd speaks version 3 (upgrade libkvclient)";

// A scripted kvtierd for one session. After the hello it reads every request and answers none,
// counting them, until the client hangs up or the object is destroyed.
class FakeDaemon {
 public:
  explicit FakeDaemon(Hello hello, uint64_t features = wire::kFeatureHints) {
    path_ = (dir_.path() / "fake.sock").string();
    auto listener = ListenSeqpacket(path_, 0600, 4);
    REQUIRE(listener.ok());
    listener_ = std::move(*listener);
    stop_.reset(eventfd(0, EFD_CLOEXEC));
    REQUIRE(stop_.valid());
    thread_ = std::thread([this, hello, features] { Serve(hello, features); });
  }
  ~FakeDaemon() {
    const uint64_t one = 1;
    (void)!write(stop_.get(), &one, sizeof(one));
    thread_.join();
  }
  FakeDaemon(const FakeDaemon&) = delete;
  FakeDaemon& operator=(const FakeDaemon&) = delete;

  const std::string& path() const { return path_; }
  bool hello_seen() const { return hello_seen_; }
  // Requests after the hello (none is ever answered).
  int requests() const { return requests_; }
  // The client hung up and every frame it sent has been read.
  bool finished() const { return finished_; }

 private:
  // False once the test asks the thread to stop.
  bool WaitReadable(int fd) {
    pollfd p[2] = {{fd, POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    while (poll(p, 2, -1) < 0) {
    }
    return (p[1].revents & POLLIN) == 0;
  }

  void Serve(Hello hello, uint64_t features) {
    if (!WaitReadable(listener_.get())) return;
    UniqueFd fd(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd.valid()) return;
    (void)SizeSocketBuffers(fd.get());
    std::string warnings;
    auto pool = ShmRegion::Create({.name = "fake-pool",
                                   .bytes = kFakePoolBytes,
                                   .huge_pages = HugePages::kOff,
                                   .lock_memory = LockMemory::kOff},
                                  &warnings);
    if (!pool.ok()) return;
    std::vector<std::byte> in(wire::kMaxFrameBytes), out(wire::kMaxFrameBytes);
    for (;;) {
      if (!WaitReadable(fd.get())) return;
      auto got = RecvFrame(fd.get(), in);
      if (!got.ok() || got->eof) {
        finished_ = true;
        return;
      }
      auto request = wire::DecodeRequest(std::span(in).first(got->bytes));
      if (!request.ok()) return;
      if (request->op != wire::Op::kHello) {
        ++requests_;
        continue;
      }
      hello_seen_ = true;
      if (hello == Hello::kNever) continue;
      wire::HelloRequest asked{};
      std::memcpy(&asked, request->body.data(), sizeof(asked));
      wire::FrameWriter w(out);
      w.Begin(wire::Op::kHello, request->header.request_id);
      int pass_fd = -1;
      if (hello == Hello::kVersionMismatchStatus) {
        w.SetStatus(Status(StatusCode::kVersionMismatch, kMismatchMessage));
      } else {
        wire::HelloReply reply{};
        reply.session_id = 7;
        reply.pool_bytes = pool->size();
        reply.max_block_bytes = 64 * 1024;
        reply.max_batch = wire::kMaxBatch;
        reply.namespace_id = 1;
        std::memcpy(reply.tenant, "fake", 4);
        w.Append(&reply, sizeof(reply));
        if ((asked.flags & wire::kHelloWantsLimits) != 0) {
          wire::HelloLimits limits{};
          limits.features = features;
          w.Append(&limits, sizeof(limits));
        }
        pass_fd = pool->fd();
      }
      const auto frame = w.Finish();
      std::vector<std::byte> bytes(frame.begin(), frame.end());
      if (hello == Hello::kNewerVersionFrame) {
        FrameHeader h;
        std::memcpy(&h, bytes.data(), sizeof(h));
        h.version = 2;
        std::memcpy(bytes.data(), &h, sizeof(h));
      }
      if (!SendFrame(fd.get(), bytes, pass_fd).ok()) return;
    }
  }

  TempDir dir_;
  std::string path_;
  UniqueFd listener_;
  UniqueFd stop_;
  std::atomic<bool> hello_seen_{false};
  std::atomic<int> requests_{0};
  std::atomic<bool> finished_{false};
  std::thread thread_;  // last: started once everything above exists
};

TEST_CASE("a call to a peer that never answers returns timed_out instead of hanging",
          "[integration][client][client_timeout]") {
  SECTION("a listener that never accepts: connect's hello times out") {
    TempDir dir;
    const std::string path = (dir.path() / "silent.sock").string();
    auto listener = ListenSeqpacket(path, 0600, 4);
    REQUIRE(listener.ok());
    auto client = Client::Connect({.socket_path = path, .name_space = "ns", .timeout_ms = 200});
    REQUIRE_FALSE(client.ok());
    CHECK(client.status().code() == StatusCode::kTimedOut);
    CHECK_THAT(client.status().message(), Catch::Contains("no reply from kvtierd within 200 ms"));
  }
  SECTION("a peer that accepts, reads the hello and stays silent") {
    FakeDaemon fake(Hello::kNever);
    auto client =
        Client::Connect({.socket_path = fake.path(), .name_space = "ns", .timeout_ms = 200});
    REQUIRE_FALSE(client.ok());
    CHECK(client.status().code() == StatusCode::kTimedOut);
    CHECK(fake.hello_seen());
  }
  SECTION("a peer that answers the hello and then stays silent") {
    FakeDaemon fake(Hello::kOk);
    auto client =
        Client::Connect({.socket_path = fake.path(), .name_space = "ns", .timeout_ms = 200});
    REQUIRE(client.ok());
    auto stats = (*client)->Stats();
    REQUIRE_FALSE(stats.ok());
    CHECK(stats.status().code() == StatusCode::kTimedOut);
    CHECK_THAT(stats.status().message(), Catch::Contains("within 200 ms"));
    // The reply stream is out of step now: later calls fail at once with the same status,
    // send nothing, and a failed reserve claims no key.
    const Key key = Key::From("k");
    const uint64_t size = 4096;
    uint64_t offset = 0;
    StatusCode code = StatusCode::kOk;
    const Status reserved = (*client)->ReserveRaw(std::span(&key, 1), std::span(&size, 1),
                                                  std::span(&offset, 1), std::span(&code, 1));
    CHECK(reserved.code() == StatusCode::kTimedOut);
    CHECK(code == StatusCode::kTimedOut);
    CHECK((*client)->MatchPrefix(std::span(&key, 1)).status().code() == StatusCode::kTimedOut);
    client->reset();
    REQUIRE(WaitUntil([&] { return fake.finished(); }));
    CHECK(fake.requests() == 1);  // the stats request, nothing after it
  }
  SECTION("the C ABI: kvtier_connect_ex's timeout_ms") {
    FakeDaemon fake(Hello::kOk);
    const kvtier_connect_options options{200, 0};
    kvtier_client* c = nullptr;
    REQUIRE(kvtier_connect_ex(fake.path().c_str(), "ns", &options, &c) == KVTIER_OK);
    kvtier_stats stats{};
    CHECK(kvtier_stats_get(c, &stats) == KVTIER_TIMED_OUT);
    CHECK_THAT(std::string(kvtier_error()), Catch::Contains("within 200 ms"));
    const kvtier_key key{1, {'k'}};
    uint16_t code = KVTIER_OK;
    CHECK(kvtier_commit(c, &key, 1, &code) == KVTIER_TIMED_OUT);
    CHECK(code == KVTIER_TIMED_OUT);
    kvtier_close(c);
  }
}

// The one reply a raw socket gets (or EOF), within a bound that only catches a hang.
struct RawReply {
  bool closed = false;
  FrameHeader header{};
  std::string message;
};

RawReply ReadRaw(int fd) {
  RawReply out;
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 20000) != 1) FAIL("no reply within 20 s");
  std::vector<std::byte> buf(wire::kMaxFrameBytes);
  auto got = RecvFrame(fd, buf);
  if (!got.ok() || got->eof) {
    out.closed = true;
    return out;
  }
  REQUIRE(got->bytes >= sizeof(FrameHeader));
  std::memcpy(&out.header, buf.data(), sizeof(out.header));
  auto reply = wire::DecodeReply(std::span(buf).first(got->bytes));
  if (reply.ok()) out.message = std::string(reply->message);
  return out;
}

std::vector<std::byte> HelloFrame(uint16_t version, const std::string& ns = "raw/ns") {
  std::vector<std::byte> buf(wire::kMaxFrameBytes);
  wire::FrameWriter w(buf);
  w.Begin(wire::Op::kHello, 1);
  const wire::HelloRequest hello{wire::kHelloWantsLimits, static_cast<uint32_t>(ns.size())};
  w.Append(&hello, sizeof(hello));
  w.Append(ns.data(), ns.size());
  const auto frame = w.Finish();
  std::vector<std::byte> bytes(frame.begin(), frame.end());
  FrameHeader h;
  std::memcpy(&h, bytes.data(), sizeof(h));
  h.version = version;
  std::memcpy(bytes.data(), &h, sizeof(h));
  return bytes;
}

TEST_CASE("a hello across protocol versions fails with version_mismatch naming both versions",
          "[integration][client][client_version]") {
  SECTION("kvtierd, sent a hello of version 2, says so and closes the session") {
    auto daemon = DaemonProcess::Start();
    auto fd = ConnectSeqpacket(daemon->socket_path());
    REQUIRE(fd.ok());
    REQUIRE(SendFrame(fd->get(), HelloFrame(2)).ok());
    const RawReply r = ReadRaw(fd->get());
    REQUIRE_FALSE(r.closed);
    CHECK(r.header.status == static_cast<uint16_t>(StatusCode::kVersionMismatch));
    // In a frame any version 1 client decodes, whatever version it asked in.
    CHECK(r.header.version == wire::kProtocolVersion);
    CHECK(r.header.op == static_cast<uint16_t>(wire::Op::kHello));
    CHECK(r.header.request_id == 1);
    CHECK_THAT(r.message, Catch::Contains("version 2") && Catch::Contains("version 1"));
    CHECK(ReadRaw(fd->get()).closed);
    // kvtierd serves on.
    auto client = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "ns"});
    REQUIRE(client.ok());
    CHECK((*client)->Stats().ok());
  }
  SECTION("a daemon that refuses the client's version: Connect keeps its message") {
    FakeDaemon fake(Hello::kVersionMismatchStatus);
    auto client = Client::Connect({.socket_path = fake.path(), .name_space = "ns"});
    REQUIRE_FALSE(client.ok());
    CHECK(client.status().code() == StatusCode::kVersionMismatch);
    CHECK(client.status().message() == kMismatchMessage);
  }
  SECTION("the same through the C ABI") {
    FakeDaemon fake(Hello::kVersionMismatchStatus);
    kvtier_client* c = nullptr;
    char error[256] = {};
    CHECK(kvtier_connect(fake.path().c_str(), "ns", &c, error, sizeof(error)) ==
          KVTIER_VERSION_MISMATCH);
    CHECK(c == nullptr);
    CHECK(std::string(error) == kMismatchMessage);
  }
  SECTION("a newer daemon whose reply is a version 2 frame") {
    FakeDaemon fake(Hello::kNewerVersionFrame);
    auto client = Client::Connect({.socket_path = fake.path(), .name_space = "ns"});
    REQUIRE_FALSE(client.ok());
    CHECK(client.status().code() == StatusCode::kVersionMismatch);
    CHECK_THAT(client.status().message(),
               Catch::Contains("version 2") && Catch::Contains("speaks version 1"));
  }
}

TEST_CASE("hints to a kvtierd without them fail with failed_precondition and send nothing",
          "[integration][client][client_hints]") {
  FakeDaemon fake(Hello::kOk, /*features=*/0);
  const std::vector<Key> keys = {Key::From("a"), Key::From("b")};
  {
    auto client = Client::Connect({.socket_path = fake.path(), .name_space = "ns"});
    REQUIRE(client.ok());
    CHECK_FALSE((*client)->has_hints());
    const Status soon = (*client)->ReuseSoon(keys);
    CHECK(soon.code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(soon.message(), Catch::Contains("no hints"));
    CHECK((*client)->DoneWith(keys).code() == StatusCode::kFailedPrecondition);
  }
  REQUIRE(WaitUntil([&] { return fake.finished(); }));
  CHECK(fake.requests() == 0);
}

TEST_CASE("the C ABI's hints to a kvtierd without them fail with failed_precondition",
          "[integration][client][client_hints]") {
  FakeDaemon fake(Hello::kOk, /*features=*/0);
  kvtier_client* c = nullptr;
  REQUIRE(kvtier_connect(fake.path().c_str(), "ns", &c, nullptr, 0) == KVTIER_OK);
  CHECK(kvtier_has_hints(c) == 0);
  const kvtier_key key{1, {'k'}};
  CHECK(kvtier_reuse_soon(c, &key, 1, nullptr) == KVTIER_FAILED_PRECONDITION);
  CHECK_THAT(std::string(kvtier_error()), Catch::Contains("no hints"));
  CHECK(kvtier_done_with(c, &key, 1, nullptr) == KVTIER_FAILED_PRECONDITION);
  kvtier_close(c);
  REQUIRE(WaitUntil([&] { return fake.finished(); }));
  CHECK(fake.requests() == 0);
}

// The batch rule (client.h, c_api.h): a call that fails leaves no per-key result claiming
// success; the keys it did not carry out get the call's code.
TEST_CASE("hints refused for want of the feature leave no key claiming success",
          "[integration][client][client_hints]") {
  FakeDaemon fake(Hello::kOk, /*features=*/0);
  SECTION("C++: each code gets the call's code") {
    auto client = Client::Connect({.socket_path = fake.path(), .name_space = "ns"});
    REQUIRE(client.ok());
    const std::vector<Key> keys = {Key::From("a"), Key::From("b")};
    std::vector<StatusCode> codes(keys.size(), StatusCode::kOk);
    REQUIRE((*client)->ReuseSoon(keys, codes).code() == StatusCode::kFailedPrecondition);
    CHECK(codes == std::vector<StatusCode>(2, StatusCode::kFailedPrecondition));
    codes.assign(2, StatusCode::kOk);
    REQUIRE((*client)->DoneWith(keys, codes).code() == StatusCode::kFailedPrecondition);
    CHECK(codes == std::vector<StatusCode>(2, StatusCode::kFailedPrecondition));
  }
  SECTION("C: each code gets the call's status") {
    kvtier_client* c = nullptr;
    REQUIRE(kvtier_connect(fake.path().c_str(), "ns", &c, nullptr, 0) == KVTIER_OK);
    const kvtier_key keys[2] = {{1, {'a'}}, {1, {'b'}}};
    uint16_t codes[2] = {KVTIER_OK, KVTIER_OK};
    REQUIRE(kvtier_reuse_soon(c, keys, 2, codes) == KVTIER_FAILED_PRECONDITION);
    CHECK(codes[0] == KVTIER_FAILED_PRECONDITION);
    CHECK(codes[1] == KVTIER_FAILED_PRECONDITION);
    kvtier_close(c);
  }
}

TEST_CASE("one Client shared by four threads carries out every call of each",
          "[integration][client][client_threads]") {
  auto daemon = DaemonProcess::Start();
  auto connected = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "mt"});
  REQUIRE(connected.ok());
  Client& client = **connected;
  constexpr int kThreads = 4;
  constexpr uint64_t kRounds = 100;
  constexpr size_t kKeys = 4;
  std::latch start(kThreads);
  std::atomic<int> failures{0};
  std::mutex mu;
  std::string first_failure;
  auto fail = [&](const std::string& what) {
    ++failures;
    std::lock_guard lock(mu);
    if (first_failure.empty()) first_failure = what;
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      const auto owner = static_cast<uint64_t>(100 + t);
      for (uint64_t round = 0; round < kRounds; ++round) {
        std::vector<Key> keys;
        std::vector<uint64_t> sizes;
        for (uint64_t i = 0; i < kKeys; ++i) {
          keys.push_back(TestKey(owner, round * kKeys + i));
          sizes.push_back(4096 * (1 + i) + static_cast<uint64_t>(t) * 8);
        }
        auto batch = client.Reserve(keys, sizes);
        if (!batch.ok()) {
          fail("reserve: " + batch.status().ToString());
          continue;
        }
        for (size_t i = 0; i < kKeys; ++i) {
          if (batch->code(i) != StatusCode::kOk) fail("reserve item not ok");
          if (batch->code(i) == StatusCode::kOk) FillBlock(keys[i], batch->data(i));
        }
        if (Status s = batch->Commit(); !s.ok()) fail("commit: " + s.ToString());
        auto matched = client.MatchPrefix(keys);
        if (!matched.ok() || *matched != kKeys) fail("match_prefix");
        auto leases = client.Acquire(keys);
        if (!leases.ok()) {
          fail("acquire: " + leases.status().ToString());
          continue;
        }
        if (leases->prefix() != kKeys) fail("acquire: a key was not found");
        for (size_t i = 0; i < leases->prefix(); ++i) {
          if (!VerifyBlock(keys[i], leases->data(i))) fail("wrong bytes under a lease");
        }
        if (!leases->Verify().ok()) fail("lease verify");
        if (Status s = leases->Release(); !s.ok()) fail("release: " + s.ToString());
        std::vector<StatusCode> codes(kKeys, StatusCode::kInternal);
        if (Status s = client.Remove(keys, codes); !s.ok()) fail("remove: " + s.ToString());
        if (codes != std::vector<StatusCode>(kKeys, StatusCode::kOk)) fail("remove item");
        if (!client.Stats().ok()) fail("stats");
      }
    });
  }
  for (std::thread& t : threads)
    t.join();
  INFO(first_failure);
  CHECK(failures == 0);
  auto stats = client.Stats();
  REQUIRE(stats.ok());
  CHECK(stats->committed_blocks == 0);
  CHECK(stats->reserved_blocks == 0);
  CHECK(stats->leased_blocks == 0);
}

// --- Per-wake fairness (daemon/server/server.cc, OnSessionEvent): one wake of the event loop
// serves at most kMaxFramesPerWake frames or kMaxKeysPerWake keys of one session, then lets the
// other ready sessions in. ---

// Every thread of `pid` is stopped (group stop after SIGSTOP).
bool AllThreadsStopped(pid_t pid) {
  const fs::path tasks = "/proc/" + std::to_string(pid) + "/task";
  std::error_code ec;
  size_t seen = 0;
  for (const auto& entry : fs::directory_iterator(tasks, ec)) {
    const std::string stat = ReadFile(entry.path() / "stat");
    const size_t paren = stat.rfind(')');
    if (paren == std::string::npos || paren + 2 >= stat.size()) return false;
    if (stat[paren + 2] != 'T') return false;
    ++seen;
  }
  return !ec && seen > 0;
}

// Keeps kvtierd stopped (SIGSTOP) while it lives; SIGCONT on the way out, also when a check
// fails, so the daemon can still be stopped at the end of the test.
class Frozen {
 public:
  explicit Frozen(pid_t pid) : pid_(pid) {
    kill(pid_, SIGSTOP);
    stopped_ = WaitUntil([&] { return AllThreadsStopped(pid_); });
  }
  ~Frozen() { Thaw(); }
  bool stopped() const { return stopped_; }
  void Thaw() {
    if (pid_ > 0) kill(pid_, SIGCONT);
    pid_ = -1;
  }

 private:
  pid_t pid_;
  bool stopped_ = false;
};

UniqueFd HelloedRaw(const DaemonProcess& daemon) {
  auto fd = ConnectSeqpacket(daemon.socket_path());
  REQUIRE(fd.ok());
  REQUIRE(SendFrame(fd->get(), HelloFrame(wire::kProtocolVersion)).ok());
  const RawReply r = ReadRaw(fd->get());
  REQUIRE_FALSE(r.closed);
  REQUIRE(r.header.status == 0);
  return std::move(*fd);
}

// A reserve frame of `count` distinct 64-byte blocks, keys "<prefix><first + i>".
std::vector<std::byte> ReserveFrame(const std::string& prefix,
                                    uint64_t request_id,
                                    uint64_t first,
                                    uint32_t count) {
  std::vector<std::byte> buf(wire::kMaxFrameBytes);
  wire::FrameWriter w(buf);
  w.Begin(wire::Op::kReserve, request_id);
  for (uint32_t i = 0; i < count; ++i) {
    wire::ReserveItem item{};
    const std::string key = prefix + std::to_string(first + i);
    item.key.len = static_cast<uint8_t>(key.size());
    std::memcpy(item.key.bytes, key.data(), key.size());
    item.size = 64;
    REQUIRE(w.AppendItem(item));
  }
  const auto frame = w.Finish();
  return {frame.begin(), frame.end()};
}

std::vector<std::byte> StatsFrame(uint64_t request_id) {
  std::vector<std::byte> buf(sizeof(FrameHeader));
  wire::FrameWriter w(buf);
  w.Begin(wire::Op::kStats, request_id);
  const auto frame = w.Finish();
  return {frame.begin(), frame.end()};
}

// The tenant's reserved_blocks in a stats reply read from `fd`.
uint64_t ReservedInStatsReply(int fd, uint64_t request_id) {
  pollfd p{fd, POLLIN, 0};
  REQUIRE(poll(&p, 1, 20000) == 1);
  std::vector<std::byte> buf(wire::kMaxFrameBytes);
  auto got = RecvFrame(fd, buf);
  REQUIRE(got.ok());
  REQUIRE_FALSE(got->eof);
  auto reply = wire::DecodeReply(std::span(buf).first(got->bytes));
  REQUIRE(reply.ok());
  REQUIRE(reply->header.request_id == request_id);
  REQUIRE(reply->header.status == 0);
  REQUIRE(reply->body.size() >= sizeof(wire::StatsReply));
  wire::StatsReply stats;
  std::memcpy(&stats, reply->body.data(), sizeof(stats));
  return stats.reserved_blocks;
}

TEST_CASE("two sessions with long queues of batches are served in turns wake by wake",
          "[integration][client][fairness]") {
  DaemonOptions o;
  o.dram_bytes = 256ull << 20;  // 65536 slots of 4 KiB
  o.max_blocks = 65536;
  auto daemon = DaemonProcess::Start(o);
  // Each session queues `frames` reserve batches of `keys` keys, then a stats request. Served
  // alone, a queue takes several wakes of the event loop; if one wake could serve a session's
  // whole queue, that session's closing stats would see none of the other's reservations.
  uint32_t frames = 0;
  uint32_t keys = 0;
  SECTION("many small batches: at most 16 frames per session per wake") {
    frames = 40;  // + stats: 3 wakes
    keys = 1;
  }
  SECTION("a few large batches: at most 8192 keys per session per wake") {
    frames = 15;  // + stats: 16 frames, within one wake's frame limit; 4 wakes by keys
    keys = 2048;
  }
  const uint64_t own = uint64_t{frames} * keys;
  const std::vector<std::string> names = {"x", "y"};
  std::vector<UniqueFd> sessions;
  for (size_t s = 0; s < names.size(); ++s)
    sessions.push_back(HelloedRaw(*daemon));
  {
    // kvtierd is stopped while both queue everything, so both are ready from its first wake.
    Frozen frozen(daemon->pid());
    REQUIRE(frozen.stopped());
    for (size_t s = 0; s < names.size(); ++s) {
      for (uint32_t f = 0; f < frames; ++f) {
        REQUIRE(
            SendFrame(sessions[s].get(), ReserveFrame(names[s], 10 + f, uint64_t{f} * keys, keys))
                .ok());
      }
      REQUIRE(SendFrame(sessions[s].get(), StatsFrame(9999)).ok());
    }
  }
  for (size_t s = 0; s < names.size(); ++s) {
    INFO("session " << names[s]);
    for (uint32_t f = 0; f < frames; ++f) {
      const RawReply r = ReadRaw(sessions[s].get());
      REQUIRE_FALSE(r.closed);
      CHECK(r.header.request_id == 10 + f);
      CHECK(r.header.status == 0);
    }
    // When its last batch was done, the other session had been served part of its queue too.
    const uint64_t seen = ReservedInStatsReply(sessions[s].get(), 9999);
    INFO(seen << " blocks reserved when its stats ran; " << own << " of them its own");
    CHECK(seen > own);
  }
  REQUIRE(SendFrame(sessions[0].get(), StatsFrame(10000)).ok());
  CHECK(ReservedInStatsReply(sessions[0].get(), 10000) == 2 * own);
}

}  // namespace
}  // namespace kvtier::testing
