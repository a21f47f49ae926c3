#include "ipc/wire/frame_codec.h"

#include <algorithm>
#include <bit>
#include <string>

#include "ipc/base/check.h"

namespace kvtier::wire {
namespace {

Status Malformed(std::string what) { return Status(StatusCode::kProtocolError, std::move(what)); }

Result<FrameView> DecodeCommon(std::span<const std::byte> frame, bool is_reply) {
  if (frame.size() < sizeof(FrameHeader)) {
    return Malformed("truncated frame: " + std::to_string(frame.size()) +
                     " bytes is shorter than the 32-byte header");
  }
  if (frame.size() > kMaxFrameBytes) {
    return Malformed("frame of " + std::to_string(frame.size()) + " bytes exceeds the limit of " +
                     std::to_string(kMaxFrameBytes));
  }
  FrameView view{};
  std::memcpy(&view.header, frame.data(), sizeof(FrameHeader));
  const FrameHeader& h = view.header;
  if (h.magic != kMagic) return Malformed("bad magic: this is not a kvtier frame");
  if (h.version != kProtocolVersion) {
    return Status(StatusCode::kVersionMismatch,
                  "protocol version " + std::to_string(h.version) + " is not supported; this " +
                      (is_reply ? "client" : "daemon") + " speaks version " +
                      std::to_string(kProtocolVersion));
  }
  if (h.op == 0 || h.op > kMaxOp) return Malformed("unknown op " + std::to_string(h.op));
  view.op = static_cast<Op>(h.op);
  if (h.reserved != 0) return Malformed("reserved header field is not zero");
  if (h.count > kMaxBatch) {
    return Malformed("batch of " + std::to_string(h.count) + " items exceeds the limit of " +
                     std::to_string(kMaxBatch));
  }
  if (!is_reply && (h.status != 0 || h.message_bytes != 0)) {
    return Malformed("request carries a status or message");
  }
  if (h.message_bytes > kMaxMessageBytes) return Malformed("reply message too long");
  const size_t expected = sizeof(FrameHeader) + size_t{h.message_bytes} + size_t{h.body_bytes};
  if (expected != frame.size()) {
    return Malformed("length mismatch: header announces " + std::to_string(expected) +
                     " bytes, frame has " + std::to_string(frame.size()));
  }
  const std::byte* p = frame.data() + sizeof(FrameHeader);
  view.message = std::string_view(reinterpret_cast<const char*>(p), h.message_bytes);
  view.body = std::span<const std::byte>(p + h.message_bytes, h.body_bytes);
  view.items = view.body;
  return view;
}

Status CheckRegionSpec(const FrameView& view) {
  const FrameHeader& h = view.header;
  if (h.count != 0) return Malformed("register_region carries items");
  if (h.body_bytes < sizeof(RegionSpec)) {
    return Malformed("register_region body is shorter than RegionSpec");
  }
  const auto spec = view.Prefix<RegionSpec>();
  if (spec.reserved != 0) return Malformed("RegionSpec reserved field is not zero");
  if (spec.kind != static_cast<uint32_t>(RegionKind::kHost) &&
      spec.kind != static_cast<uint32_t>(RegionKind::kCuda)) {
    return Malformed("unknown region kind " + std::to_string(spec.kind));
  }
  if (spec.events > kMaxRegionEvents) {
    return Malformed("region of " + std::to_string(spec.events) +
                     " events exceeds the limit of " + std::to_string(kMaxRegionEvents));
  }
  if (h.body_bytes != sizeof(RegionSpec) + size_t{spec.events} * kCudaIpcHandleBytes) {
    return Malformed("register_region body length does not match its event count");
  }
  return Status::Ok();
}

Status CheckTransferSpec(const FrameView& view) {
  const auto spec = view.Prefix<TransferSpec>();
  if (spec.reserved != 0) return Malformed("TransferSpec reserved field is not zero");
  if (spec.layers == 0) return Malformed("a transfer needs at least one layer");
  // Every layer is work for the copy thread (and a wake-up): no more layers than items.
  if (spec.layers > std::max<uint32_t>(view.header.count, 1)) {
    return Malformed(std::to_string(spec.layers) + " layers for " +
                     std::to_string(view.header.count) + " items: at most one layer per item");
  }
  if (view.header.count % spec.layers != 0) {
    return Malformed(std::to_string(view.header.count) + " items do not split into " +
                     std::to_string(spec.layers) + " equal layers");
  }
  return Status::Ok();
}

}  // namespace

Result<FrameView> DecodeRequest(std::span<const std::byte> frame) {
  auto view = DecodeCommon(frame, /*is_reply=*/false);
  if (!view.ok()) return view;
  const FrameHeader& h = view->header;
  const size_t item = RequestItemBytes(view->op);
  const size_t prefix = RequestPrefixBytes(view->op);
  if (item != 0) {
    if (size_t{h.body_bytes} != prefix + size_t{h.count} * item) {
      return Malformed("body of " + std::to_string(h.body_bytes) + " bytes does not hold " +
                       (prefix != 0 ? "a " + std::to_string(prefix) + "-byte header and " : "") +
                       std::to_string(h.count) + " items of " + std::to_string(item) + " bytes");
    }
    view->items = view->body.subspan(prefix);
    if (prefix != 0) {
      if (Status s = CheckTransferSpec(*view); !s.ok()) return s;
    }
  } else if (view->op == Op::kStats) {
    if (h.count != 0 || h.body_bytes != 0) return Malformed("stats request carries a body");
  } else if (view->op == Op::kRegisterRegion) {
    if (Status s = CheckRegionSpec(*view); !s.ok()) return s;
  } else if (view->op == Op::kDeregisterRegion) {
    if (h.count != 0 || h.body_bytes != sizeof(RegionId)) {
      return Malformed("deregister_region body is not one RegionId");
    }
    if (view->Prefix<RegionId>().reserved != 0) {
      return Malformed("RegionId reserved field is not zero");
    }
  } else {  // kHello
    if (h.count != 0) return Malformed("hello carries items");
    HelloRequest hello{};
    if (h.body_bytes < sizeof(hello)) return Malformed("hello body shorter than HelloRequest");
    std::memcpy(&hello, view->body.data(), sizeof(hello));
    if ((hello.flags & ~kHelloWantsLimits) != 0) return Malformed("unknown hello flags");
    if (hello.namespace_bytes == 0 || hello.namespace_bytes > kMaxNamespaceBytes) {
      return Malformed("namespace must be 1.." + std::to_string(kMaxNamespaceBytes) + " bytes");
    }
    if (h.body_bytes != sizeof(hello) + hello.namespace_bytes) {
      return Malformed("hello body length does not match namespace_bytes");
    }
  }
  return view;
}

Result<FrameView> DecodeReply(std::span<const std::byte> frame) {
  auto view = DecodeCommon(frame, /*is_reply=*/true);
  if (!view.ok()) return view;
  if (!IsKnownStatusCode(view->header.status)) {
    return Malformed("unknown status code " + std::to_string(view->header.status));
  }
  return view;
}

namespace {

// The per-key hot path: true if `key` is well-formed, with a few word operations.
bool KeyIsWellFormed(const WireKey& key) {
  static_assert(std::endian::native == std::endian::little);
  uint64_t head;
  uint64_t words[4];
  std::memcpy(&head, &key, sizeof(head));  // len and the 7 reserved bytes
  std::memcpy(words, key.bytes, sizeof(words));
  const unsigned len = key.len;
  if (len == 0 || len > kMaxKeyBytes || (head >> 8) != 0) return false;
  uint64_t padding = 0;
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned first = 8 * i;
    if (len >= first + 8) continue;
    const unsigned valid = len > first ? len - first : 0;  // 0..7 bytes of this word are key
    padding |= words[i] & (~uint64_t{0} << (8 * valid));
  }
  return padding == 0;
}

}  // namespace

Status CheckKey(const WireKey& key) {
  if (KeyIsWellFormed(key)) [[likely]] return Status::Ok();
  if (key.len == 0 || key.len > kMaxKeyBytes) {
    return Status(StatusCode::kInvalidArgument,
                  "key length " + std::to_string(key.len) + " is outside 1..32 bytes");
  }
  for (uint8_t b : key.reserved) {
    if (b != 0) return Status(StatusCode::kInvalidArgument, "key reserved bytes are not zero");
  }
  for (size_t i = key.len; i < kMaxKeyBytes; ++i) {
    if (key.bytes[i] != 0) {
      return Status(StatusCode::kInvalidArgument, "key bytes past its length are not zero");
    }
  }
  return Status::Ok();
}

void FrameWriter::Begin(Op op, uint64_t request_id) {
  KVT_CHECK(buf_.size() >= sizeof(FrameHeader));
  header_ = FrameHeader{};
  header_.magic = kMagic;
  header_.version = kProtocolVersion;
  header_.op = static_cast<uint16_t>(op);
  header_.request_id = request_id;
  size_ = sizeof(FrameHeader);
  count_ = 0;
}

void FrameWriter::SetStatus(const Status& status) {
  KVT_DCHECK(size_ == sizeof(FrameHeader));
  header_.status = static_cast<uint16_t>(status.code());
  const size_t n =
      std::min({status.message().size(), size_t{kMaxMessageBytes}, buf_.size() - size_});
  std::memcpy(buf_.data() + size_, status.message().data(), n);
  header_.message_bytes = static_cast<uint16_t>(n);
  size_ += n;
}

void FrameWriter::InsertMessage(std::string_view message) {
  KVT_DCHECK(header_.message_bytes == 0);
  const size_t n = std::min({message.size(), size_t{kMaxMessageBytes}, buf_.size() - size_});
  std::byte* body = buf_.data() + sizeof(FrameHeader);
  std::memmove(body + n, body, size_ - sizeof(FrameHeader));
  std::memcpy(body, message.data(), n);
  header_.message_bytes = static_cast<uint16_t>(n);
  size_ += n;
}

std::byte* FrameWriter::Grow(size_t bytes) {
  if (bytes > buf_.size() - size_) return nullptr;  // (size_ <= buf_.size() always)
  std::byte* at = buf_.data() + size_;
  size_ += bytes;
  return at;
}

bool FrameWriter::Append(const void* data, size_t bytes) {
  std::byte* at = Grow(bytes);
  if (at == nullptr) return false;
  if (bytes != 0) std::memcpy(at, data, bytes);
  return true;
}

std::span<const std::byte> FrameWriter::Finish() {
  header_.count = count_;
  header_.body_bytes =
      static_cast<uint32_t>(size_ - sizeof(FrameHeader) - size_t{header_.message_bytes});
  std::memcpy(buf_.data(), &header_, sizeof(FrameHeader));
  return buf_.first(size_);
}

}  // namespace kvtier::wire
