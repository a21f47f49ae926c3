// Hostile and broken peers: every malformed frame gets an error reply or a closed session,
// the daemon stays up, and well-behaved clients keep being served during the barrage.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "ipc/socket/seqpacket.h"
#include "ipc/wire/frame_codec.h"
#include "ipc/wire/protocol.h"
#include "kvclient/client.h"
#include "tests/integration/test_blocks.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

using wire::FrameHeader;

// The highest op number the protocol defines (ipc/wire/protocol.h).
constexpr uint16_t kLastOp = static_cast<uint16_t>(wire::Op::kMatchPrefixEstimate);

struct RawReply {
  bool closed = false;  // EOF instead of (or after) a reply
  bool got_reply = false;
  FrameHeader header{};
  std::string message;
};

// Waits for one frame (or EOF) from the daemon; a bounded wait so a hang fails the test.
RawReply ReadReply(int fd) {
  RawReply out;
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 20000) != 1) FAIL("kvtierd did not answer within 20 s");
  std::vector<std::byte> buf(wire::kMaxFrameBytes);
  auto got = RecvFrame(fd, buf);
  if (!got.ok() || got->eof) {
    out.closed = true;
    return out;
  }
  auto reply = wire::DecodeReply(std::span(buf).first(got->bytes));
  if (!reply.ok()) FAIL("kvtierd sent an undecodable reply: " << reply.status().ToString());
  out.got_reply = true;
  out.header = reply->header;
  out.message = std::string(reply->message);
  return out;
}

bool ClosedAfter(int fd) {
  RawReply next = ReadReply(fd);
  return next.closed;
}

UniqueFd RawConnect(const DaemonProcess& d) {
  auto fd = ConnectSeqpacket(d.socket_path());
  if (!fd.ok()) FAIL("connect: " << fd.status().ToString());
  return std::move(*fd);
}

std::vector<std::byte> HelloFrame() {
  std::vector<std::byte> buf(wire::kMaxFrameBytes);
  wire::FrameWriter w(buf);
  w.Begin(wire::Op::kHello, 1);
  const std::string ns = "raw/ns";
  wire::HelloRequest hello{0, static_cast<uint32_t>(ns.size())};
  w.Append(&hello, sizeof(hello));
  w.Append(ns.data(), ns.size());
  auto frame = w.Finish();
  return {frame.begin(), frame.end()};
}

UniqueFd HelloedConnect(const DaemonProcess& d) {
  UniqueFd fd = RawConnect(d);
  REQUIRE(SendFrame(fd.get(), HelloFrame()).ok());
  RawReply r = ReadReply(fd.get());
  REQUIRE(r.got_reply);
  REQUIRE(r.header.status == 0);
  return fd;
}

std::vector<std::byte> StatsFrame(uint64_t id) {
  std::vector<std::byte> buf(sizeof(FrameHeader));
  wire::FrameWriter w(buf);
  w.Begin(wire::Op::kStats, id);
  auto frame = w.Finish();
  return {frame.begin(), frame.end()};
}

FrameHeader HeaderOf(const std::vector<std::byte>& frame) {
  FrameHeader h;
  std::memcpy(&h, frame.data(), sizeof(h));
  return h;
}

void SetHeader(std::vector<std::byte>* frame, const FrameHeader& h) {
  std::memcpy(frame->data(), &h, sizeof(h));
}

// One commit frame for `count` keys, as a well-formed client would send it.
std::vector<std::byte> CommitFrame(uint32_t count) {
  std::vector<std::byte> frame(sizeof(FrameHeader) + count * sizeof(wire::WireKey));
  FrameHeader h{};
  h.magic = wire::kMagic;
  h.version = wire::kProtocolVersion;
  h.op = static_cast<uint16_t>(wire::Op::kCommit);
  h.request_id = 7;
  h.count = count;
  h.body_bytes = count * static_cast<uint32_t>(sizeof(wire::WireKey));
  SetHeader(&frame, h);
  for (uint32_t i = 0; i < count; ++i) {
    wire::WireKey k{};
    k.len = 1;
    k.bytes[0] = static_cast<uint8_t>(i);
    std::memcpy(frame.data() + sizeof(h) + i * sizeof(k), &k, sizeof(k));
  }
  return frame;
}

TEST_CASE("malformed frames get an error reply naming the problem and a closed session",
          "[integration][malformed]") {
  auto daemon = DaemonProcess::Start();
  UniqueFd fd = HelloedConnect(*daemon);
  std::vector<std::byte> frame = CommitFrame(4);
  FrameHeader h = HeaderOf(frame);
  uint16_t expected = static_cast<uint16_t>(StatusCode::kProtocolError);
  std::string says;

  SECTION("truncated frame") {
    frame.resize(10);
    says = "truncated";
  }
  SECTION("wrong magic") {
    h.magic = 0x12345678;
    SetHeader(&frame, h);
    says = "magic";
  }
  SECTION("wrong protocol version") {
    h.version = 2;
    SetHeader(&frame, h);
    expected = static_cast<uint16_t>(StatusCode::kVersionMismatch);
    says = "version 2";
  }
  SECTION("unknown op") {
    h.op = 77;
    SetHeader(&frame, h);
    says = "unknown op";
  }
  SECTION("body length lies about the item count") {
    h.count = 5;
    SetHeader(&frame, h);
    says = "does not hold 5 items";
  }
  SECTION("header announces more bytes than were sent") {
    h.body_bytes += 40;
    h.count += 1;
    SetHeader(&frame, h);
    says = "length mismatch";
  }
  SECTION("oversized batch") {
    frame = CommitFrame(wire::kMaxBatch + 1);
    says = "exceeds the limit of 4096";
  }
  SECTION("frame larger than any legal frame") {
    frame = CommitFrame(wire::kMaxBatch);
    frame.resize(wire::kMaxFrameBytes + 4096);
    says = "exceeds the limit";
  }
  SECTION("reserved field set") {
    h.reserved = 1;
    SetHeader(&frame, h);
    says = "reserved";
  }
  REQUIRE(SendFrame(fd.get(), frame).ok());
  RawReply r = ReadReply(fd.get());
  REQUIRE(r.got_reply);
  CHECK(r.header.status == expected);
  CHECK_THAT(r.message, Catch::Contains(says));
  CHECK(ClosedAfter(fd.get()));
  CHECK(daemon->Alive());
}

TEST_CASE("a request before hello is refused and the session closed", "[integration][malformed]") {
  auto daemon = DaemonProcess::Start();
  UniqueFd fd = RawConnect(*daemon);
  REQUIRE(SendFrame(fd.get(), StatsFrame(3)).ok());
  RawReply r = ReadReply(fd.get());
  REQUIRE(r.got_reply);
  CHECK(r.header.status == static_cast<uint16_t>(StatusCode::kFailedPrecondition));
  CHECK(r.header.request_id == 3);
  CHECK_THAT(r.message, Catch::Contains("hello"));
  CHECK(ClosedAfter(fd.get()));
}

// A frame of `op` whose items are the keys of CommitFrame (1-byte keys 0, 1, 2, ...).
std::vector<std::byte> KeysFrame(wire::Op op, uint32_t count, uint64_t id) {
  std::vector<std::byte> frame = CommitFrame(count);
  FrameHeader h = HeaderOf(frame);
  h.op = static_cast<uint16_t>(op);
  h.request_id = id;
  SetHeader(&frame, h);
  return frame;
}

std::vector<std::byte> ReserveFrame(uint32_t count, uint64_t size) {
  std::vector<std::byte> buf(wire::kMaxFrameBytes);
  wire::FrameWriter w(buf);
  w.Begin(wire::Op::kReserve, 2);
  for (uint32_t i = 0; i < count; ++i) {
    wire::ReserveItem item{};
    item.key.len = 1;
    item.key.bytes[0] = static_cast<uint8_t>(i);
    item.size = size;
    w.AppendItem(item);
  }
  auto frame = w.Finish();
  return {frame.begin(), frame.end()};
}

wire::StatsReply RawStats(int fd, uint64_t id) {
  REQUIRE(SendFrame(fd, StatsFrame(id)).ok());
  pollfd p{fd, POLLIN, 0};
  REQUIRE(poll(&p, 1, 20000) == 1);
  std::vector<std::byte> buf(wire::kMaxFrameBytes);
  auto got = RecvFrame(fd, buf);
  REQUIRE(got.ok());
  auto reply = wire::DecodeReply(std::span(buf).first(got->bytes));
  REQUIRE(reply.ok());
  REQUIRE(reply->header.status == 0);
  REQUIRE(reply->body.size() >= sizeof(wire::StatsReply));
  wire::StatsReply stats;
  std::memcpy(&stats, reply->body.data(), sizeof(stats));
  return stats;
}

TEST_CASE("a bad key in a batch rejects the whole request and changes nothing",
          "[integration][malformed]") {
  auto daemon = DaemonProcess::Start();
  UniqueFd fd = HelloedConnect(*daemon);
  // Three blocks reserved by this session; then a commit of them whose third key is malformed.
  REQUIRE(SendFrame(fd.get(), ReserveFrame(3, 4096)).ok());
  RawReply reserved = ReadReply(fd.get());
  REQUIRE(reserved.got_reply);
  REQUIRE(reserved.header.status == 0);
  REQUIRE(RawStats(fd.get(), 3).reserved_blocks == 3);
  std::vector<std::byte> frame = CommitFrame(3);
  wire::WireKey bad{};
  bad.len = 40;
  std::memcpy(frame.data() + sizeof(FrameHeader) + 2 * sizeof(bad), &bad, sizeof(bad));
  REQUIRE(SendFrame(fd.get(), frame).ok());
  RawReply r = ReadReply(fd.get());
  REQUIRE(r.got_reply);
  CHECK(r.header.status == static_cast<uint16_t>(StatusCode::kInvalidArgument));
  CHECK_THAT(r.message, Catch::Contains("item 2"));
  // A semantic error keeps the session, and none of the three was committed: all are still
  // reserved, and match_prefix finds none of the two good keys.
  const wire::StatsReply after = RawStats(fd.get(), 8);
  CHECK(after.reserved_blocks == 3);
  CHECK(after.committed_blocks == 0);
  REQUIRE(SendFrame(fd.get(), KeysFrame(wire::Op::kMatchPrefix, 2, 9)).ok());
  RawReply match = ReadReply(fd.get());
  REQUIRE(match.got_reply);
  CHECK(match.header.status == 0);
  CHECK(match.header.count == 0);
  // The same commit with three good keys then commits all three.
  REQUIRE(SendFrame(fd.get(), CommitFrame(3)).ok());
  RawReply good = ReadReply(fd.get());
  REQUIRE(good.got_reply);
  CHECK(good.header.status == 0);
  CHECK(RawStats(fd.get(), 10).committed_blocks == 3);
}

size_t OpenFds(pid_t pid) {
  size_t n = 0;
  DIR* dir = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (dir == nullptr) return 0;
  while (readdir(dir) != nullptr) ++n;
  closedir(dir);
  return n;
}

TEST_CASE("file descriptors smuggled into requests are closed, not kept",
          "[integration][malformed]") {
  auto daemon = DaemonProcess::Start();
  UniqueFd fd = HelloedConnect(*daemon);
  const size_t before = OpenFds(daemon->pid());
  for (int i = 0; i < 200; ++i) {
    UniqueFd memfd(memfd_create("smuggled", MFD_CLOEXEC));
    REQUIRE(SendFrame(fd.get(), StatsFrame(100 + static_cast<uint64_t>(i)), memfd.get()).ok());
    RawReply r = ReadReply(fd.get());
    REQUIRE(r.got_reply);
  }
  CHECK(OpenFds(daemon->pid()) == before);
}

TEST_CASE("a client that stops reading its replies does not stall other clients",
          "[integration][malformed]") {
  auto daemon = DaemonProcess::Start();
  UniqueFd slow = HelloedConnect(*daemon);
  REQUIRE(fcntl(slow.get(), F_SETFL, O_NONBLOCK) == 0);
  // Pipeline requests without reading until both directions' socket buffers are full.
  uint64_t sent = 0;
  for (; sent < 200000; ++sent) {
    const Status s = SendFrame(slow.get(), StatsFrame(sent + 1));
    if (s.code() == StatusCode::kResourceExhausted) break;
    REQUIRE(s.ok());
  }
  REQUIRE(sent < 200000);  // the daemon applied backpressure instead of queueing forever
  auto good = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "good"});
  REQUIRE(good.ok());
  CHECK((*good)->Stats().ok());
  // The slow client still gets every reply, in order.
  REQUIRE(fcntl(slow.get(), F_SETFL, 0) == 0);
  for (uint64_t i = 1; i <= sent; ++i) {
    RawReply r = ReadReply(slow.get());
    REQUIRE(r.got_reply);
    REQUIRE(r.header.request_id == i);
  }
}

// A well-behaved client, in its own process, storing and verifying until told to stop.
int WellBehaved(const std::string& socket, int stop_fd) {
  auto client = Client::Connect({.socket_path = socket, .name_space = "good"});
  if (!client.ok()) return 10;
  uint64_t rounds = 0;
  for (;;) {
    pollfd p{stop_fd, POLLIN, 0};
    if (poll(&p, 1, 0) == 1 && rounds >= 20) return 0;
    std::vector<Key> keys;
    for (uint64_t i = 0; i < 16; ++i) keys.push_back(TestKey(rounds, i));
    const std::vector<uint64_t> sizes(keys.size(), 64 * 1024);
    if (const int failed = StoreAndVerifyRound(**client, keys, sizes); failed != 0) return failed;
    ++rounds;
  }
}

TEST_CASE("10,000 random frames leave the daemon up and serving a good client",
          "[integration][malformed]") {
  auto daemon = DaemonProcess::Start();
  int stop[2];
  REQUIRE(pipe(stop) == 0);
  const pid_t good = SpawnChild([&] {
    close(stop[1]);
    return WellBehaved(daemon->socket_path(), stop[0]);
  });
  close(stop[0]);
  std::mt19937_64 rng(20261126);
  const std::vector<std::byte> valid = CommitFrame(8);
  size_t replies = 0, closes = 0, ops_seen = 0, unexplained = 0;
  std::vector<bool> op_sent(kLastOp + 2);
  for (int i = 0; i < 10000; ++i) {
    UniqueFd fd = (i % 2 == 0) ? RawConnect(*daemon) : HelloedConnect(*daemon);
    std::vector<std::byte> frame;
    switch (rng() % 4) {
      case 0:  // pure noise
        frame.resize(1 + rng() % 600);
        for (auto& b : frame) b = static_cast<std::byte>(rng());
        break;
      case 1:  // a valid frame with one random byte changed
        frame = valid;
        frame[rng() % frame.size()] = static_cast<std::byte>(rng());
        break;
      case 2: {  // a valid header with random fields
        frame = valid;
        FrameHeader h = HeaderOf(frame);
        h.op = static_cast<uint16_t>(rng() % (kLastOp + 2));  // every op, and one past
        h.count = static_cast<uint32_t>(rng() % 6000);
        h.body_bytes = static_cast<uint32_t>(rng() % 400);
        SetHeader(&frame, h);
        break;
      }
      default:  // a valid frame cut short or padded
        frame = valid;
        frame.resize(rng() % (2 * valid.size()));
        break;
    }
    if (frame.empty()) frame.resize(1);
    if (frame.size() >= sizeof(FrameHeader) && HeaderOf(frame).op < op_sent.size()) {
      op_sent[HeaderOf(frame).op] = true;
    }
    REQUIRE(SendFrame(fd.get(), frame).ok());
    RawReply r = ReadReply(fd.get());
    if (r.got_reply) {
      ++replies;
      // Frame-level errors end the session; request-level ones (a bad key) do not.
      const auto code = static_cast<StatusCode>(r.header.status);
      if (code != StatusCode::kOk && r.message.empty()) ++unexplained;
      if (code == StatusCode::kProtocolError || code == StatusCode::kVersionMismatch ||
          code == StatusCode::kFailedPrecondition) {
        CHECK(ClosedAfter(fd.get()));
      }
    } else {
      ++closes;
    }
  }
  (void)!write(stop[1], "x", 1);
  close(stop[1]);
  CHECK(WaitChild(good) == 0);
  CHECK(daemon->Alive());
  for (bool sent : op_sent) ops_seen += sent ? 1 : 0;
  CHECK(ops_seen == op_sent.size());  // the barrage reached every op's decoder
  // Every frame, noise included, got a reply saying what was wrong before any close.
  CHECK(replies == 10000);
  CHECK(closes == 0);
  CHECK(unexplained == 0);  // every error reply names its problem
  auto client = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "after"});
  REQUIRE(client.ok());
  CHECK((*client)->Stats().ok());
  CHECK(daemon->Stop() == 0);
}

}  // namespace
}  // namespace kvtier::testing
