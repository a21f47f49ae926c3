#include "ipc/wire/frame_codec.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "ipc/wire/protocol.h"

namespace kvtier::wire {
namespace {

using Catch::Matchers::Contains;
using Bytes = std::vector<std::byte>;

// A buffer of kMaxFrameBytes, as FrameWriter's contract asks.
struct Writer {
  Bytes buffer = Bytes(kMaxFrameBytes);
  FrameWriter writer{buffer};
};

Bytes Copy(std::span<const std::byte> frame) {
  return Bytes(frame.begin(), frame.end());
}

WireKey Key(uint8_t len, uint8_t fill) {
  WireKey key{};
  key.len = len;
  for (uint8_t i = 0; i < len; ++i)
    key.bytes[i] = static_cast<uint8_t>(fill + i);
  return key;
}

FrameHeader HeaderOf(const Bytes& frame) {
  FrameHeader h;
  std::memcpy(&h, frame.data(), sizeof(h));
  return h;
}

// Rewrites the header of `frame` in place.
void Mutate(Bytes* frame, const std::function<void(FrameHeader&)>& change) {
  FrameHeader h = HeaderOf(*frame);
  change(h);
  std::memcpy(frame->data(), &h, sizeof(h));
}

// A valid commit request with `n` keys.
Bytes CommitRequest(uint32_t n) {
  Writer w;
  w.writer.Begin(Op::kCommit, 77);
  for (uint32_t i = 0; i < n; ++i)
    REQUIRE(w.writer.AppendItem(Key(8, static_cast<uint8_t>(i))));
  return Copy(w.writer.Finish());
}

Bytes HelloRequestFrame(uint32_t flags, uint32_t namespace_bytes, size_t actual_namespace) {
  Writer w;
  w.writer.Begin(Op::kHello, 1);
  const HelloRequest hello{flags, namespace_bytes};
  REQUIRE(w.writer.Append(&hello, sizeof(hello)));
  const std::string ns(actual_namespace, 'n');
  REQUIRE(w.writer.Append(ns.data(), ns.size()));
  return Copy(w.writer.Finish());
}

// Decodes a request that must fail with `code`; returns the message.
std::string RequestError(const Bytes& frame, StatusCode code = StatusCode::kProtocolError) {
  auto view = DecodeRequest(frame);
  REQUIRE_FALSE(view.ok());
  CHECK(view.status().code() == code);
  return view.status().message();
}

std::string ReplyError(const Bytes& frame, StatusCode code = StatusCode::kProtocolError) {
  auto view = DecodeReply(frame);
  REQUIRE_FALSE(view.ok());
  CHECK(view.status().code() == code);
  return view.status().message();
}

template <typename T>
bool SameBytes(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

TEST_CASE("Every request op survives FrameWriter and DecodeRequest unchanged", "[ipc][wire]") {
  Writer w;
  const uint64_t request_id = 0x0123456789abcdefull;
  const uint32_t n = GENERATE(0u, 1u, 3u, kMaxBatch);

  SECTION("hello") {
    w.writer.Begin(Op::kHello, request_id);
    const std::string ns = "tenant/model-7b";
    const HelloRequest hello{0, static_cast<uint32_t>(ns.size())};
    REQUIRE(w.writer.Append(&hello, sizeof(hello)));
    REQUIRE(w.writer.Append(ns.data(), ns.size()));
    auto view = DecodeRequest(w.writer.Finish());
    REQUIRE(view.ok());
    CHECK(view->op == Op::kHello);
    CHECK(view->header.request_id == request_id);
    REQUIRE(view->body.size() == sizeof(hello) + ns.size());
    CHECK(SameBytes(view->ItemAt<HelloRequest>(0), hello));
    CHECK(std::memcmp(view->body.data() + sizeof(hello), ns.data(), ns.size()) == 0);
  }
  SECTION("reserve") {
    w.writer.Begin(Op::kReserve, request_id);
    std::vector<ReserveItem> items(n);
    for (uint32_t i = 0; i < n; ++i) {
      items[i] = ReserveItem{Key(static_cast<uint8_t>(1 + i % 32), static_cast<uint8_t>(i)),
                             uint64_t{i} * 4096 + 1};
      REQUIRE(w.writer.AppendItem(items[i]));
    }
    auto view = DecodeRequest(w.writer.Finish());
    REQUIRE(view.ok());
    CHECK(view->op == Op::kReserve);
    CHECK(view->header.request_id == request_id);
    REQUIRE(view->header.count == n);
    REQUIRE(view->body.size() == n * sizeof(ReserveItem));
    for (uint32_t i = 0; i < n; ++i)
      CHECK(SameBytes(view->ItemAt<ReserveItem>(i), items[i]));
  }
  SECTION("the key ops") {
    const Op op = GENERATE(Op::kCommit, Op::kAbort, Op::kMatchPrefix, Op::kAcquire, Op::kRemove);
    w.writer.Begin(op, request_id);
    // AppendItems is the in-place path the daemon uses.
    WireKey* keys = w.writer.AppendItems<WireKey>(n);
    REQUIRE(keys != nullptr);
    std::vector<WireKey> expected(n);
    for (uint32_t i = 0; i < n; ++i) {
      expected[i] = Key(static_cast<uint8_t>(1 + i % 32), static_cast<uint8_t>(i * 3));
      std::memcpy(&keys[i], &expected[i], sizeof(WireKey));
    }
    auto view = DecodeRequest(w.writer.Finish());
    REQUIRE(view.ok());
    CHECK(view->op == op);
    CHECK(view->header.request_id == request_id);
    REQUIRE(view->header.count == n);
    REQUIRE(view->body.size() == n * sizeof(WireKey));
    for (uint32_t i = 0; i < n; ++i) {
      const auto key = view->ItemAt<WireKey>(i);
      CHECK(SameBytes(key, expected[i]));
      CHECK(CheckKey(key).ok());
    }
  }
  SECTION("release") {
    w.writer.Begin(Op::kRelease, request_id);
    for (uint32_t i = 0; i < n; ++i)
      REQUIRE(w.writer.AppendItem(uint64_t{i} * 0x9e3779b9u));
    auto view = DecodeRequest(w.writer.Finish());
    REQUIRE(view.ok());
    CHECK(view->op == Op::kRelease);
    REQUIRE(view->header.count == n);
    REQUIRE(view->body.size() == n * sizeof(uint64_t));
    for (uint32_t i = 0; i < n; ++i)
      CHECK(view->ItemAt<uint64_t>(i) == uint64_t{i} * 0x9e3779b9u);
  }
  SECTION("stats") {
    w.writer.Begin(Op::kStats, request_id);
    auto view = DecodeRequest(w.writer.Finish());
    REQUIRE(view.ok());
    CHECK(view->op == Op::kStats);
    CHECK(view->header.request_id == request_id);
    CHECK(view->header.count == 0);
    CHECK(view->body.empty());
  }
}

TEST_CASE("Every reply op survives FrameWriter and DecodeReply with its status and message",
          "[ipc][wire]") {
  Writer w;
  const uint64_t request_id = 42;
  const Status status =
      GENERATE(Status(), Status(StatusCode::kResourceExhausted, "tenant dev pool is full"),
               Status(StatusCode::kTimedOut, "x"));

  auto decode = [&](Op op) {
    auto view = DecodeReply(w.writer.Finish());
    REQUIRE(view.ok());
    CHECK(view->op == op);
    CHECK(view->header.request_id == request_id);
    CHECK(view->header.status == static_cast<uint16_t>(status.code()));
    CHECK(view->message == status.message());
    return *view;
  };

  SECTION("hello") {
    w.writer.Begin(Op::kHello, request_id);
    w.writer.SetStatus(status);
    HelloReply reply{};
    reply.session_id = 9;
    reply.pool_bytes = 64 << 20;
    reply.max_block_bytes = 2 << 20;
    reply.max_batch = kMaxBatch;
    reply.namespace_id = 3;
    std::memcpy(reply.tenant, "dev", 3);
    REQUIRE(w.writer.Append(&reply, sizeof(reply)));
    const FrameView view = decode(Op::kHello);
    REQUIRE(view.body.size() == sizeof(HelloReply));
    CHECK(SameBytes(view.ItemAt<HelloReply>(0), reply));
  }
  SECTION("reserve") {
    w.writer.Begin(Op::kReserve, request_id);
    w.writer.SetStatus(status);
    std::vector<ReserveResult> results;
    for (uint16_t i = 0; i < 5; ++i) {
      results.push_back(ReserveResult{uint64_t{i} << 16, i, {}});
      REQUIRE(w.writer.AppendItem(results.back()));
    }
    const FrameView view = decode(Op::kReserve);
    REQUIRE(view.header.count == 5);
    REQUIRE(view.body.size() == 5 * sizeof(ReserveResult));
    for (uint32_t i = 0; i < 5; ++i)
      CHECK(SameBytes(view.ItemAt<ReserveResult>(i), results[i]));
  }
  SECTION("the ops answered with one status per item") {
    const Op op = GENERATE(Op::kCommit, Op::kAbort, Op::kRelease, Op::kRemove);
    w.writer.Begin(op, request_id);
    w.writer.SetStatus(status);
    for (uint16_t i = 0; i < 7; ++i)
      REQUIRE(w.writer.AppendItem(uint16_t(i * 2)));
    const FrameView view = decode(op);
    REQUIRE(view.header.count == 7);
    REQUIRE(view.body.size() == 7 * sizeof(uint16_t));
    for (uint16_t i = 0; i < 7; ++i)
      CHECK(view.ItemAt<uint16_t>(i) == i * 2);
  }
  SECTION("match_prefix") {
    w.writer.Begin(Op::kMatchPrefix, request_id);
    w.writer.SetStatus(status);
    REQUIRE(w.writer.AppendItem(Tier::kDram));
    REQUIRE(w.writer.AppendItem(Tier::kSsd));
    const FrameView view = decode(Op::kMatchPrefix);
    REQUIRE(view.header.count == 2);
    CHECK(view.ItemAt<Tier>(0) == Tier::kDram);
    CHECK(view.ItemAt<Tier>(1) == Tier::kSsd);
  }
  SECTION("acquire") {
    w.writer.Begin(Op::kAcquire, request_id);
    w.writer.SetStatus(status);
    AcquireResult* out = w.writer.AppendItems<AcquireResult>(2);
    REQUIRE(out != nullptr);
    const AcquireResult a{11, 4096, 65536, 0, static_cast<uint8_t>(Tier::kDram), {}};
    const AcquireResult b{0, 0, 0, static_cast<uint16_t>(StatusCode::kNotFound), 0, {}};
    std::memcpy(out, &a, sizeof(a));
    std::memcpy(out + 1, &b, sizeof(b));
    const FrameView view = decode(Op::kAcquire);
    REQUIRE(view.header.count == 2);
    CHECK(SameBytes(view.ItemAt<AcquireResult>(0), a));
    CHECK(SameBytes(view.ItemAt<AcquireResult>(1), b));
  }
  SECTION("stats") {
    w.writer.Begin(Op::kStats, request_id);
    w.writer.SetStatus(status);
    StatsReply stats{};
    stats.pool_bytes = 1;
    stats.evictions = 12;
    stats.sessions = 3;
    REQUIRE(w.writer.Append(&stats, sizeof(stats)));
    const FrameView view = decode(Op::kStats);
    REQUIRE(view.body.size() == sizeof(StatsReply));
    CHECK(SameBytes(view.ItemAt<StatsReply>(0), stats));
  }
}

TEST_CASE("FrameWriter truncates a reply message to kMaxMessageBytes", "[ipc][wire]") {
  Writer w;
  const std::string long_message(kMaxMessageBytes + 100, 'm');
  w.writer.Begin(Op::kCommit, 5);
  w.writer.SetStatus(Status(StatusCode::kInternal, long_message));
  REQUIRE(w.writer.AppendItem(uint16_t{1}));
  auto view = DecodeReply(w.writer.Finish());
  REQUIRE(view.ok());
  CHECK(view->message == long_message.substr(0, kMaxMessageBytes));
  CHECK(view->header.count == 1);
  CHECK(view->ItemAt<uint16_t>(0) == 1);
}

TEST_CASE("FrameWriter::Begin starts a fresh frame", "[ipc][wire]") {
  Writer w;
  w.writer.Begin(Op::kCommit, 1);
  REQUIRE(w.writer.AppendItem(Key(4, 1)));
  REQUIRE(w.writer.AppendItem(Key(4, 2)));
  (void)w.writer.Finish();
  w.writer.Begin(Op::kStats, 2);
  const auto frame = w.writer.Finish();
  CHECK(frame.size() == sizeof(FrameHeader));
  auto view = DecodeRequest(frame);
  REQUIRE(view.ok());
  CHECK(view->op == Op::kStats);
  CHECK(view->header.request_id == 2);
  CHECK(view->header.count == 0);
}

TEST_CASE("FrameWriter that runs out of buffer refuses without writing past it", "[ipc][wire]") {
  constexpr size_t kBufferBytes = sizeof(FrameHeader) + 2 * sizeof(WireKey) + 8;  // 120
  constexpr std::byte kGuard{0xA5};
  Bytes backing(kBufferBytes + 256, kGuard);
  FrameWriter writer(std::span<std::byte>(backing).first(kBufferBytes));
  auto guard_intact = [&] {
    return std::all_of(backing.begin() + kBufferBytes, backing.end(),
                       [&](std::byte b) { return b == kGuard; });
  };
  // After a refused append the frame holds exactly the two keys that fit, and decodes.
  auto frame_holds_two_keys = [&] {
    const auto frame = writer.Finish();
    CHECK(frame.size() == sizeof(FrameHeader) + 2 * sizeof(WireKey));
    auto view = DecodeRequest(frame);
    REQUIRE(view.ok());
    CHECK(view->header.count == 2);
    CHECK(SameBytes(view->ItemAt<WireKey>(0), Key(1, 1)));
    CHECK(SameBytes(view->ItemAt<WireKey>(1), Key(2, 2)));
  };
  writer.Begin(Op::kCommit, 3);
  REQUIRE(writer.AppendItem(Key(1, 1)));
  REQUIRE(writer.AppendItem(Key(2, 2)));

  SECTION("AppendItem") {
    CHECK_FALSE(writer.AppendItem(Key(3, 3)));
    frame_holds_two_keys();
  }
  SECTION("AppendItems") {
    CHECK(writer.AppendItems<WireKey>(1) == nullptr);
    CHECK(writer.AppendItems<uint64_t>(2) == nullptr);
    frame_holds_two_keys();
  }
  SECTION("Append of one byte more than is left, then exactly what is left") {
    const Bytes bytes(9, std::byte{1});
    CHECK_FALSE(writer.Append(bytes.data(), 9));
    CHECK(guard_intact());
    // The refused append changed nothing: 8 bytes still fit, then not one more.
    CHECK(writer.Append(bytes.data(), 8));
    CHECK_FALSE(writer.Append(bytes.data(), 1));
    CHECK(writer.Append(bytes.data(), 0));
    const auto frame = writer.Finish();
    CHECK(frame.size() == kBufferBytes);
    CHECK(HeaderOf(Copy(frame)).body_bytes == kBufferBytes - sizeof(FrameHeader));
  }
  CHECK(guard_intact());
}

TEST_CASE("DecodeRequest rejects a frame shorter than the header", "[ipc][wire]") {
  const Bytes full = CommitRequest(0);
  const size_t size = GENERATE(0u, 1u, 16u, 31u);
  const Bytes cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(size));
  CHECK_THAT(RequestError(cut),
             Contains(std::to_string(size) + " bytes is shorter than the 32-byte header"));
  CHECK_THAT(ReplyError(cut), Contains("truncated"));
}

TEST_CASE("DecodeRequest rejects a frame with bad magic", "[ipc][wire]") {
  Bytes frame = CommitRequest(1);
  const uint32_t magic = GENERATE(0u, kMagic ^ 1u, 0x4b565446u);
  Mutate(&frame, [&](FrameHeader& h) { h.magic = magic; });
  CHECK_THAT(RequestError(frame), Contains("bad magic"));
  CHECK_THAT(ReplyError(frame), Contains("bad magic"));
}

TEST_CASE("A wrong protocol version is kVersionMismatch naming both versions", "[ipc][wire]") {
  Bytes frame = CommitRequest(1);
  const uint16_t version = GENERATE(uint16_t{0}, uint16_t{2}, uint16_t{65535});
  Mutate(&frame, [&](FrameHeader& h) { h.version = version; });
  const std::string theirs = "version " + std::to_string(version);
  const std::string ours = "version " + std::to_string(kProtocolVersion);
  const std::string request = RequestError(frame, StatusCode::kVersionMismatch);
  CHECK_THAT(request, Contains(theirs) && Contains(ours) && Contains("daemon"));
  const std::string reply = ReplyError(frame, StatusCode::kVersionMismatch);
  CHECK_THAT(reply, Contains(theirs) && Contains(ours) && Contains("client"));
}

TEST_CASE("DecodeRequest rejects an unknown op", "[ipc][wire]") {
  Bytes frame = CommitRequest(0);
  const uint16_t op = GENERATE(uint16_t{0}, uint16_t{kMaxOp + 1}, uint16_t{0xffff});
  Mutate(&frame, [&](FrameHeader& h) { h.op = op; });
  CHECK_THAT(RequestError(frame), Contains("unknown op " + std::to_string(op)));
  CHECK_THAT(ReplyError(frame), Contains("unknown op " + std::to_string(op)));
}

TEST_CASE("DecodeRequest rejects a nonzero reserved header field", "[ipc][wire]") {
  Bytes frame = CommitRequest(1);
  const uint32_t reserved = GENERATE(1u, 0x80000000u);
  Mutate(&frame, [&](FrameHeader& h) { h.reserved = reserved; });
  CHECK_THAT(RequestError(frame), Contains("reserved"));
  CHECK_THAT(ReplyError(frame), Contains("reserved"));
}

TEST_CASE("DecodeRequest accepts kMaxBatch items and rejects one more", "[ipc][wire]") {
  REQUIRE(DecodeRequest(CommitRequest(kMaxBatch)).ok());
  // kMaxBatch + 1 keys with a consistent body, so only the count is wrong.
  Bytes frame = CommitRequest(kMaxBatch);
  const Bytes extra(sizeof(WireKey), std::byte{0});
  frame.insert(frame.end(), extra.begin(), extra.end());
  Mutate(&frame, [](FrameHeader& h) {
    h.count = kMaxBatch + 1;
    h.body_bytes += static_cast<uint32_t>(sizeof(WireKey));
  });
  CHECK_THAT(RequestError(frame), Contains("4097") && Contains("4096"));
  CHECK_THAT(ReplyError(frame), Contains("4097") && Contains("4096"));
}

TEST_CASE("DecodeRequest rejects a body that is not count items", "[ipc][wire]") {
  struct Case {
    Op op;
    size_t item;
  };
  const Case c = GENERATE(Case{Op::kReserve, sizeof(ReserveItem)}, Case{Op::kCommit, 40},
                          Case{Op::kAbort, 40}, Case{Op::kMatchPrefix, 40}, Case{Op::kAcquire, 40},
                          Case{Op::kRelease, 8}, Case{Op::kRemove, 40});
  const uint32_t count = 3;
  const size_t body = GENERATE_COPY(count * c.item + 1, count * c.item - 1, size_t{0}, c.item);
  Writer w;
  w.writer.Begin(c.op, 8);
  const Bytes bytes(body, std::byte{0});
  REQUIRE(w.writer.Append(bytes.data(), bytes.size()));
  w.writer.SetCount(count);
  const Bytes frame = Copy(w.writer.Finish());
  INFO("op " << static_cast<int>(c.op) << ", body " << body << " bytes");
  CHECK_THAT(RequestError(frame),
             Contains("body of " + std::to_string(body) + " bytes does not hold 3 items of " +
                      std::to_string(c.item) + " bytes"));
}

TEST_CASE("DecodeRequest rejects a header whose lengths disagree with the frame", "[ipc][wire]") {
  Bytes frame = CommitRequest(2);
  const int64_t delta = GENERATE(-1, 1, 40);
  Mutate(&frame, [&](FrameHeader& h) {
    h.body_bytes = static_cast<uint32_t>(static_cast<int64_t>(h.body_bytes) + delta);
  });
  CHECK_THAT(RequestError(frame), Contains("length mismatch"));
  CHECK_THAT(ReplyError(frame), Contains("length mismatch"));
}

TEST_CASE("DecodeRequest rejects a request that carries a status or a message", "[ipc][wire]") {
  Bytes frame = CommitRequest(1);
  SECTION("status") {
    Mutate(&frame, [](FrameHeader& h) { h.status = 1; });
  }
  SECTION("message") {
    // The message sits between header and body; lengths stay consistent.
    const Bytes message(5, std::byte{'m'});
    frame.insert(frame.begin() + sizeof(FrameHeader), message.begin(), message.end());
    Mutate(&frame, [](FrameHeader& h) { h.message_bytes = 5; });
    // The same bytes are a fine reply.
    auto reply = DecodeReply(frame);
    REQUIRE(reply.ok());
    CHECK(reply->message == "mmmmm");
    CHECK(reply->body.size() == sizeof(WireKey));
  }
  CHECK_THAT(RequestError(frame), Contains("request carries a status or message"));
}

TEST_CASE("DecodeRequest checks the hello body", "[ipc][wire]") {
  SECTION("a valid hello with 1 and with 128 namespace bytes") {
    const uint32_t n = GENERATE(1u, kMaxNamespaceBytes);
    CHECK(DecodeRequest(HelloRequestFrame(0, n, n)).ok());
  }
  SECTION("namespace_bytes 0") {
    CHECK_THAT(RequestError(HelloRequestFrame(0, 0, 0)), Contains("namespace must be 1..128"));
  }
  SECTION("namespace_bytes 129") {
    CHECK_THAT(RequestError(HelloRequestFrame(0, 129, 129)), Contains("namespace must be 1..128"));
  }
  SECTION("a body longer or shorter than namespace_bytes says") {
    const size_t actual = GENERATE(9u, 11u, 0u);
    CHECK_THAT(RequestError(HelloRequestFrame(0, 10, actual)),
               Contains("does not match namespace_bytes"));
  }
  SECTION("unknown flags") {
    const uint32_t flags = GENERATE(2u, 0x80000000u);
    CHECK_THAT(RequestError(HelloRequestFrame(flags, 4, 4)), Contains("unknown hello flags"));
  }
  SECTION("items") {
    Bytes frame = HelloRequestFrame(0, 4, 4);
    Mutate(&frame, [](FrameHeader& h) { h.count = 1; });
    CHECK_THAT(RequestError(frame), Contains("hello carries items"));
  }
  SECTION("a body shorter than HelloRequest") {
    Writer w;
    w.writer.Begin(Op::kHello, 1);
    const uint32_t flags = 0;
    REQUIRE(w.writer.Append(&flags, sizeof(flags)));
    CHECK_THAT(RequestError(Copy(w.writer.Finish())), Contains("shorter than HelloRequest"));
  }
}

// A register_region request for a host region, or with `events` CUDA event handles.
Bytes RegisterRequest(uint32_t kind, uint32_t events, size_t extra_bytes = 0) {
  Writer w;
  w.writer.Begin(Op::kRegisterRegion, 5);
  RegionSpec spec{};
  spec.kind = kind;
  spec.bytes = 1 << 20;
  spec.events = events;
  REQUIRE(w.writer.Append(&spec, sizeof(spec)));
  const Bytes handles(events * kCudaIpcHandleBytes + extra_bytes, std::byte{3});
  REQUIRE(w.writer.Append(handles.data(), handles.size()));
  return Copy(w.writer.Finish());
}

// An offload request with `n` items in `layers` layers.
Bytes OffloadRequest(uint32_t n, uint32_t layers, uint32_t reserved = 0) {
  Writer w;
  w.writer.Begin(Op::kOffload, 6);
  TransferSpec spec{};
  spec.region_id = 1;
  spec.layers = layers;
  spec.reserved = reserved;
  REQUIRE(w.writer.Append(&spec, sizeof(spec)));
  for (uint32_t i = 0; i < n; ++i) {
    REQUIRE(w.writer.AppendItem(OffloadItem{Key(4, static_cast<uint8_t>(i)), i * 4096u, 4096, 0}));
  }
  return Copy(w.writer.Finish());
}

TEST_CASE("DecodeRequest checks region and transfer bodies", "[ipc][wire]") {
  CHECK(DecodeRequest(RegisterRequest(1, 0)).ok());
  CHECK(DecodeRequest(RegisterRequest(2, kMaxRegionEvents)).ok());
  CHECK_THAT(RequestError(RegisterRequest(3, 0)), Contains("unknown region kind 3"));
  CHECK_THAT(RequestError(RegisterRequest(2, kMaxRegionEvents + 1)),
             Contains("exceeds the limit of 1024"));
  CHECK_THAT(RequestError(RegisterRequest(2, 2, 1)), Contains("does not match its event count"));

  const Bytes offload = OffloadRequest(6, 3);  // the view points into it
  auto view = DecodeRequest(offload);
  REQUIRE(view.ok());
  CHECK(view->Prefix<TransferSpec>().layers == 3);
  CHECK(view->ItemAt<OffloadItem>(5).offset == 5 * 4096);  // items start after the spec
  CHECK_THAT(RequestError(OffloadRequest(6, 4)), Contains("6 items do not split into 4"));
  CHECK_THAT(RequestError(OffloadRequest(6, 0)), Contains("at least one layer"));
  // An empty request splits into any number of layers, but each is copy-thread work.
  CHECK(DecodeRequest(OffloadRequest(0, 1)).ok());
  CHECK_THAT(RequestError(OffloadRequest(0, 0xffffffff)), Contains("at most one layer per item"));
  CHECK_THAT(RequestError(OffloadRequest(6, 12)), Contains("at most one layer per item"));
  CHECK_THAT(RequestError(OffloadRequest(2, 1, 9)), Contains("TransferSpec reserved"));
  Bytes short_body = OffloadRequest(0, 1);  // a spec and no items is fine; less is not
  REQUIRE(DecodeRequest(short_body).ok());
  short_body.resize(short_body.size() - 4);
  Mutate(&short_body, [](FrameHeader& h) { h.body_bytes -= 4; });
  CHECK_THAT(RequestError(short_body), Contains("32-byte header"));

  Writer w;
  w.writer.Begin(Op::kDeregisterRegion, 8);
  const RegionId bad{1, 1};
  REQUIRE(w.writer.Append(&bad, sizeof(bad)));
  CHECK_THAT(RequestError(Copy(w.writer.Finish())), Contains("RegionId reserved"));
}

TEST_CASE("DecodeRequest rejects a stats request with a body", "[ipc][wire]") {
  Writer w;
  w.writer.Begin(Op::kStats, 1);
  SECTION("body bytes") {
    const uint64_t junk = 0;
    REQUIRE(w.writer.Append(&junk, sizeof(junk)));
  }
  SECTION("a count without bytes") {
    w.writer.SetCount(1);
  }
  CHECK_THAT(RequestError(Copy(w.writer.Finish())), Contains("stats request carries a body"));
}

TEST_CASE("Decoding accepts a frame of kMaxFrameBytes and rejects one byte more", "[ipc][wire]") {
  // Reply bodies are not itemised by the decoder, so a reply can fill the limit exactly.
  Bytes frame(kMaxFrameBytes, std::byte{0});
  FrameHeader h{};
  h.magic = kMagic;
  h.version = kProtocolVersion;
  h.op = static_cast<uint16_t>(Op::kStats);
  h.body_bytes = kMaxFrameBytes - sizeof(FrameHeader);
  std::memcpy(frame.data(), &h, sizeof(h));
  auto ok = DecodeReply(frame);
  REQUIRE(ok.ok());
  CHECK(ok->body.size() == kMaxFrameBytes - sizeof(FrameHeader));

  frame.push_back(std::byte{0});
  Mutate(&frame, [](FrameHeader& hh) { hh.body_bytes += 1; });
  const std::string limit = "exceeds the limit of " + std::to_string(kMaxFrameBytes);
  CHECK_THAT(ReplyError(frame), Contains(limit));
  CHECK_THAT(RequestError(frame), Contains(limit));
}

TEST_CASE("DecodeReply rejects an unknown status code and an overlong message", "[ipc][wire]") {
  Writer w;
  w.writer.Begin(Op::kRemove, 1);
  w.writer.SetStatus(Status(StatusCode::kNotFound, "gone"));
  Bytes frame = Copy(w.writer.Finish());
  REQUIRE(DecodeReply(frame).ok());

  SECTION("the last known code decodes, the next does not") {
    Mutate(&frame, [](FrameHeader& h) { h.status = static_cast<uint16_t>(StatusCode::kTimedOut); });
    CHECK(DecodeReply(frame).ok());
    Mutate(&frame, [](FrameHeader& h) { h.status = 14; });
    CHECK_THAT(ReplyError(frame), Contains("unknown status code 14"));
  }
  SECTION("a message of kMaxMessageBytes + 1") {
    const Bytes message(kMaxMessageBytes + 1 - 4, std::byte{'x'});
    frame.insert(frame.begin() + sizeof(FrameHeader) + 4, message.begin(), message.end());
    Mutate(&frame, [](FrameHeader& h) { h.message_bytes = kMaxMessageBytes + 1; });
    CHECK_THAT(ReplyError(frame), Contains("message too long"));
  }
}

TEST_CASE("CheckKey accepts canonical keys and rejects every other encoding", "[ipc][wire]") {
  SECTION("every length 1..32 with nonzero bytes up to its length is valid") {
    for (uint8_t len = 1; len <= kMaxKeyBytes; ++len) {
      WireKey key{};
      key.len = len;
      std::fill_n(key.bytes, len, uint8_t{0xff});
      INFO("len " << int{len});
      CHECK(CheckKey(key).ok());
    }
  }
  SECTION("length 0, and 33 and above") {
    WireKey key{};
    key.len = GENERATE(uint8_t{0}, uint8_t{33}, uint8_t{255});
    const Status status = CheckKey(key);
    CHECK(status.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(status.message(),
               Contains("key length " + std::to_string(key.len) + " is outside 1..32 bytes"));
  }
  SECTION("a nonzero reserved byte") {
    WireKey key = Key(4, 1);
    key.reserved[GENERATE(0, 3, 6)] = 1;
    const Status status = CheckKey(key);
    CHECK(status.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(status.message(), Contains("reserved"));
  }
  SECTION("a nonzero byte past the length") {
    const uint8_t len = GENERATE(as<uint8_t>{}, 1, 16, 31);
    WireKey key = Key(len, 1);
    key.bytes[GENERATE_COPY(size_t{len}, size_t{31})] = 0x80;
    INFO("len " << int{len});
    const Status status = CheckKey(key);
    CHECK(status.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(status.message(), Contains("past its length"));
  }
}

// Random frames: each either decodes with spans inside the input or is refused; never a crash
// (ASan/UBSan builds turn any out-of-bounds read into a failure).
TEST_CASE("Decoders survive 100000 random and mutated frames", "[ipc][wire][fuzz]") {
  std::mt19937_64 rng(0x6b767469657221ull);
  auto below = [&](uint64_t n) {
    return static_cast<uint64_t>(rng() % n);
  };
  size_t decoded_ok = 0;
  size_t failures = 0;
  std::string first_failure;
  Writer w;

  auto check_view = [&](const Bytes& frame, const FrameView& v, bool request, size_t iteration) {
    const std::byte* begin = frame.data();
    const std::byte* end = frame.data() + frame.size();
    const auto* msg = reinterpret_cast<const std::byte*>(v.message.data());
    bool good = v.body.data() >= begin && v.body.data() + v.body.size() <= end &&
                v.body.size() == v.header.body_bytes && v.header.count <= kMaxBatch &&
                v.message.size() <= kMaxMessageBytes &&
                (v.message.empty() || (msg >= begin && msg + v.message.size() <= end));
    // protocol.h layout: header, message, body, and nothing after.
    good = good && sizeof(FrameHeader) + v.message.size() + v.body.size() == frame.size() &&
           v.message.size() == v.header.message_bytes &&
           (v.message.empty() || msg == begin + sizeof(FrameHeader)) &&
           v.body.data() == begin + sizeof(FrameHeader) + v.message.size() &&
           static_cast<uint16_t>(v.op) == v.header.op && v.header.magic == kMagic &&
           v.header.version == kProtocolVersion && v.header.reserved == 0;
    if (request) {
      const size_t item = RequestItemBytes(v.op);
      const size_t prefix = RequestPrefixBytes(v.op);
      if (item != 0) {
        good = good && v.body.size() == prefix + v.header.count * item &&
               v.items.data() == v.body.data() + prefix &&
               v.items.size() == v.header.count * item;
      }
      good = good && v.message.empty() && v.header.status == 0;
    }
    // Read every byte the view names, so a bad span trips ASan.
    unsigned sum = 0;
    for (std::byte b : v.body)
      sum += static_cast<unsigned>(b);
    for (std::byte b : v.items)
      sum += static_cast<unsigned>(b);
    for (char ch : v.message)
      sum += static_cast<unsigned char>(ch);
    (void)sum;
    if (!good && failures++ == 0) first_failure = "iteration " + std::to_string(iteration);
  };

  for (size_t i = 0; i < 100'000; ++i) {
    Bytes frame;
    const uint64_t kind = below(4);
    if (kind == 0) {
      // Pure noise, mostly short.
      frame.resize(below(4) == 0 ? below(4096) : below(96));
      for (auto& b : frame)
        b = static_cast<std::byte>(rng());
    } else {
      // A valid frame of a random op, then one to three mutations.
      const auto op = static_cast<Op>(1 + below(kMaxOp));
      w.writer.Begin(op, rng());
      if (below(2) == 0) {
        w.writer.SetStatus(Status(static_cast<StatusCode>(below(14)), std::string(below(40), 'e')));
      }
      if (op == Op::kHello) {
        const HelloRequest hello{0, static_cast<uint32_t>(1 + below(kMaxNamespaceBytes))};
        (void)w.writer.Append(&hello, sizeof(hello));
        const std::string ns(hello.namespace_bytes, 'n');
        (void)w.writer.Append(ns.data(), ns.size());
      } else if (op == Op::kRegisterRegion || op == Op::kDeregisterRegion) {
        RegionSpec spec{};
        spec.kind = static_cast<uint32_t>(1 + below(2));
        spec.events = static_cast<uint32_t>(below(3));
        (void)w.writer.Append(&spec, op == Op::kRegisterRegion ? sizeof(spec) : sizeof(RegionId));
        std::vector<std::byte> events(spec.events * kCudaIpcHandleBytes, std::byte{7});
        if (op == Op::kRegisterRegion) (void)w.writer.Append(events.data(), events.size());
      } else if (op != Op::kStats) {
        if (RequestPrefixBytes(op) != 0) {
          TransferSpec spec{};
          spec.layers = static_cast<uint32_t>(1 + below(2));
          (void)w.writer.Append(&spec, sizeof(spec));
        }
        const size_t item = RequestItemBytes(op);
        // Mostly small batches; now and then up to a full one.
        const uint64_t n = below(64) == 0 ? below(kMaxBatch + 1) : below(6);
        if (std::byte* p = w.writer.AppendItems<std::byte>(n * item)) {
          std::memset(p, 0, n * item);
          for (uint64_t k = 0; k < n * item && k < 64; ++k) {
            p[below(n * item)] = static_cast<std::byte>(rng());
          }
        }
        w.writer.SetCount(static_cast<uint32_t>(n));
      }
      frame = Copy(w.writer.Finish());
      const uint64_t mutations = kind == 1 ? 0 : 1 + below(3);
      for (uint64_t m = 0; m < mutations; ++m) {
        switch (below(9)) {
          case 0:
            frame.resize(below(frame.size() + 64));
            break;  // cut or pad with zeros
          case 1:
            if (!frame.empty()) frame[below(frame.size())] = static_cast<std::byte>(rng());
            break;
          default: {
            if (frame.size() < sizeof(FrameHeader)) break;
            // Overwrite a header field with a boundary-ish or random value.
            const uint64_t values[] = {0,
                                       1,
                                       2,
                                       kMaxBatch,
                                       kMaxBatch + 1,
                                       0xffff,
                                       0xffffffff,
                                       kMaxFrameBytes,
                                       kMaxMessageBytes + 1,
                                       rng()};
            const uint64_t v = values[below(std::size(values))];
            const size_t offsets[] = {0, 4, 6, 16, 20, 24, 26, 28};
            const size_t widths[] = {4, 2, 2, 4, 4, 2, 2, 4};
            const size_t f = below(std::size(offsets));
            std::memcpy(frame.data() + offsets[f], &v, widths[f]);  // little-endian host
            break;
          }
        }
      }
    }
    // Exact-size copy: a read one past the end is a heap overflow under ASan.
    const Bytes exact(frame.begin(), frame.end());
    if (auto request = DecodeRequest(exact); request.ok()) {
      ++decoded_ok;
      check_view(exact, *request, true, i);
    } else if (request.status().code() != StatusCode::kProtocolError &&
               request.status().code() != StatusCode::kVersionMismatch) {
      if (failures++ == 0) first_failure = "request code, iteration " + std::to_string(i);
    }
    if (auto reply = DecodeReply(exact); reply.ok()) {
      ++decoded_ok;
      check_view(exact, *reply, false, i);
    } else if (reply.status().code() != StatusCode::kProtocolError &&
               reply.status().code() != StatusCode::kVersionMismatch) {
      if (failures++ == 0) first_failure = "reply code, iteration " + std::to_string(i);
    }
  }
  INFO(first_failure);
  CHECK(failures == 0);
  // The generator must reach the OK path often, or it tests only the first check.
  CHECK(decoded_ok > 20'000);
}

}  // namespace
}  // namespace kvtier::wire
