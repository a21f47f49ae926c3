// A batch longer than one frame (4096 keys) whose later frame fails as a whole: the client
// gives back what the earlier frames took, and no per-key result claims success.
//
// A real kvtierd fails a whole frame only for reasons a test cannot time (a purge starting
// between two frames of one call), so the daemon here is a scripted stand-in on a real unix
// socket: it answers hello with a real sealed pool memfd, grants the first frame, refuses the
// second, and records what the client sends next.
#include <poll.h>
#include <sys/socket.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "ipc/shm/shm_region.h"
#include "ipc/socket/seqpacket.h"
#include "ipc/wire/frame_codec.h"
#include "kvclient/client.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

constexpr uint64_t kBlock = 4096;
constexpr size_t kKeys = wire::kMaxBatch + 1;  // two frames

struct Script {
  wire::Op op;                  // the split op: reserve or acquire
  std::vector<uint64_t> taken;  // what the client gave back after the failure: keys' numbers
                                // (abort) or lease ids (release)
  wire::Op undo{};
  bool hello_ok = false;
};

std::vector<Key> NumberedKeys(size_t n) {
  std::vector<Key> keys(n);
  for (size_t i = 0; i < n; ++i) keys[i] = Key::From("key-" + std::to_string(i));
  return keys;
}

// Serves one session: hello, frame 1 granted, frame 2 refused as a whole, then the undo.
void FakeDaemon(int listen_fd, Script* script) {
  pollfd p{listen_fd, POLLIN, 0};
  if (poll(&p, 1, 10000) != 1) return;
  UniqueFd fd(accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
  (void)SizeSocketBuffers(fd.get());
  std::string warnings;
  auto pool = ShmRegion::Create({.name = "fake-pool", .bytes = wire::kMaxBatch * kBlock,
                                 .huge_pages = HugePages::kOff,
                                 .lock_memory = LockMemory::kOff},
                                &warnings);
  if (!pool.ok()) return;
  std::vector<std::byte> in(wire::kMaxFrameBytes), out(wire::kMaxFrameBytes);
  int frames_of_op = 0;
  for (;;) {
    auto got = RecvFrame(fd.get(), in);
    if (!got.ok() || got->eof) return;
    auto req = wire::DecodeRequest(std::span(in).first(got->bytes));
    if (!req.ok()) return;
    wire::FrameWriter w(out);
    w.Begin(req->op, req->header.request_id);
    int pass_fd = -1;
    const uint32_t n = req->header.count;
    if (req->op == wire::Op::kHello) {
      wire::HelloReply hello{};
      hello.session_id = 1;
      hello.pool_bytes = pool->size();
      hello.max_block_bytes = kBlock;
      hello.max_batch = wire::kMaxBatch;
      std::memcpy(hello.tenant, "fake", 4);
      w.Append(&hello, sizeof(hello));
      wire::HelloLimits limits{};
      w.Append(&limits, sizeof(limits));
      pass_fd = pool->fd();
      script->hello_ok = true;
    } else if (req->op == script->op && frames_of_op++ == 0) {
      for (uint32_t i = 0; i < n; ++i) {  // frame 1: every key granted
        if (req->op == wire::Op::kReserve) {
          w.AppendItem(wire::ReserveResult{i * kBlock, 0, {}});
        } else {
          w.AppendItem(wire::AcquireResult{1000 + i, i * kBlock, kBlock, 0, 2, {}});
        }
      }
    } else if (req->op == script->op) {  // frame 2: refused as a whole
      w.SetStatus(Status(StatusCode::kUnavailable, "tenant 'fake' is being purged"));
    } else {  // the undo: record it, answer OK per item
      script->undo = req->op;
      for (uint32_t i = 0; i < n; ++i) {
        if (req->op == wire::Op::kRelease) {
          script->taken.push_back(req->ItemAt<uint64_t>(i));
        } else {
          const auto key = req->ItemAt<wire::WireKey>(i);
          const std::string text(reinterpret_cast<const char*>(key.bytes), key.len);
          script->taken.push_back(std::stoull(text.substr(4)));
        }
        w.AppendItem(uint16_t{0});
      }
    }
    if (!SendFrame(fd.get(), w.Finish(), pass_fd).ok()) return;
  }
}

std::vector<uint64_t> FirstFrame(bool lease_ids) {
  std::vector<uint64_t> v(wire::kMaxBatch);
  for (size_t i = 0; i < v.size(); ++i) v[i] = (lease_ids ? 1000 : 0) + i;
  return v;
}

TEST_CASE("a split batch whose second frame fails holds nothing and claims nothing",
          "[libkvclient]") {
  TempDir dir;
  const std::string path = (dir.path() / "fake.sock").string();
  auto listener = ListenSeqpacket(path, 0600, 4);
  REQUIRE(listener.ok());
  const bool reserve = GENERATE(true, false);
  Script script{reserve ? wire::Op::kReserve : wire::Op::kAcquire};
  std::thread daemon(FakeDaemon, listener->get(), &script);
  {
    auto client = Client::Connect({.socket_path = path, .name_space = "ns"});
    REQUIRE(client.ok());
    const std::vector<Key> keys = NumberedKeys(kKeys);
    Status s;
    if (reserve) {
      std::vector<uint64_t> sizes(kKeys, kBlock), offsets(kKeys);
      std::vector<StatusCode> codes(kKeys, StatusCode::kOk);
      s = (*client)->ReserveRaw(keys, sizes, offsets, codes);
      CHECK(codes == std::vector<StatusCode>(kKeys, StatusCode::kUnavailable));
    } else {
      std::vector<LeaseInfo> infos(kKeys);
      s = (*client)->AcquireRaw(keys, infos);
      size_t claimed = 0;
      for (const LeaseInfo& info : infos) {
        claimed += info.code == StatusCode::kOk || info.lease_id != 0;
      }
      CHECK(claimed == 0);
    }
    CHECK(s.code() == StatusCode::kUnavailable);
    CHECK_THAT(s.message(), Catch::Contains("being purged"));
  }
  daemon.join();
  CHECK(script.hello_ok);
  // What the first frame took was given back, all of it, and nothing else.
  CHECK(script.undo == (reserve ? wire::Op::kAbort : wire::Op::kRelease));
  CHECK(script.taken == FirstFrame(!reserve));
}

}  // namespace
}  // namespace kvtier::testing
