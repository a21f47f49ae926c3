// FrameCodec: the one bounds-checked decoder of protocol.h frames, and the frame writer.
//
// DecodeRequest/DecodeReply check everything a peer controls before any field is used: length,
// magic, version, op, reserved fields, count against kMaxBatch, and body length against
// count * item size. Items are then read with ItemAt, which copies (no aligned access to peer
// bytes). Stateless; safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

#include "ipc/wire/protocol.h"
#include "kvclient/status.h"

namespace kvtier::wire {

struct FrameView {
  FrameHeader header;
  Op op;
  std::string_view message;         // replies only
  std::span<const std::byte> body;   // exactly header.body_bytes
  std::span<const std::byte> items;  // the body after RequestPrefixBytes(op) (mostly all of it)

  template <typename T>
  T ItemAt(size_t i) const {
    T item;
    std::memcpy(&item, items.data() + i * sizeof(T), sizeof(T));
    return item;
  }
  // The fixed struct that heads the body; DecodeRequest has checked that it is there for
  // every op that has one.
  template <typename T>
  T Prefix() const {
    T value;
    std::memcpy(&value, body.data(), sizeof(T));
    return value;
  }
};

// kProtocolError (naming the defect) or kVersionMismatch; on OK the frame is fully checked.
Result<FrameView> DecodeRequest(std::span<const std::byte> frame);
// Same checks for the client side; item sizes are checked by the caller, who knows the op.
Result<FrameView> DecodeReply(std::span<const std::byte> frame);

// Checks a decoded key: len 1..32, reserved and padding bytes zero.
Status CheckKey(const WireKey& key);

// Writes one frame into a caller-owned buffer (at least a header; kMaxFrameBytes for any frame). Items are appended in place.
class FrameWriter {
 public:
  explicit FrameWriter(std::span<std::byte> buffer) : buf_(buffer) {}

  // Starts a frame; clears what was written before.
  void Begin(Op op, uint64_t request_id);
  // Replies: sets the status and message (truncated to kMaxMessageBytes). Call before items.
  void SetStatus(const Status& status);
  // Replies whose status stays OK but whose items need explaining (e.g. why items were
  // refused): puts `message` (truncated to kMaxMessageBytes and to the room left) before the
  // items already written. Only when no message was set.
  void InsertMessage(std::string_view message);
  // Appends raw body bytes; false (and nothing written) if the frame would exceed the buffer.
  bool Append(const void* data, size_t bytes);
  template <typename T>
  bool AppendItem(const T& item) {
    if (!Append(&item, sizeof(T))) return false;
    ++count_;
    return true;
  }
  // Reserves room for `n` items of T and returns where to write them (uninitialized).
  template <typename T>
  T* AppendItems(size_t n) {
    if (n > SIZE_MAX / sizeof(T)) return nullptr;
    std::byte* at = Grow(n * sizeof(T));
    if (at == nullptr) return nullptr;
    count_ += static_cast<uint32_t>(n);
    return reinterpret_cast<T*>(at);
  }
  void SetCount(uint32_t count) { count_ = count; }
  // Drops the last `bytes` of the body.
  void Truncate(size_t bytes) { size_ -= bytes; }
  // Finishes the header; returns the frame's bytes.
  std::span<const std::byte> Finish();
  // Bytes written so far (header included).
  size_t size() const { return size_; }
  // Continues in `buffer`, which already holds a copy of the size() bytes written so far (a
  // reply parked while its request waits).
  void Rebind(std::span<std::byte> buffer) { buf_ = buffer; }
  std::span<std::byte> buffer() const { return buf_; }

 private:
  std::byte* Grow(size_t bytes);

  std::span<std::byte> buf_;
  FrameHeader header_{};
  size_t size_ = sizeof(FrameHeader);
  uint32_t count_ = 0;
};

}  // namespace kvtier::wire
