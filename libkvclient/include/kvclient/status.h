// kvtier::Status and kvtier::Result<T>: the one error convention of kvtier.
//
// Status codes travel on the wire (protocol.h) and through the C ABI (c_api.h), so they live in
// this public header and are never renumbered: new codes are appended. A Status is a code plus a
// message for humans; OK carries no message and costs no allocation.
// Thread-safety: plain values; safe to copy between threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace kvtier {

enum class StatusCode : uint16_t {
  kOk = 0,
  kInvalidArgument = 1,     // the request itself is wrong (bad size, bad key, bad config value)
  kNotFound = 2,            // the key, lease or tenant does not exist
  kAlreadyExists = 3,       // the key is already committed or reserved
  kResourceExhausted = 4,   // a quota or the pool is full even after eviction
  kPermissionDenied = 5,    // the peer is not allowed (unknown uid, wrong tenant)
  kUnavailable = 6,         // the daemon is not running, is draining, or the peer went away
  kVersionMismatch = 7,     // protocol versions do not overlap
  kProtocolError = 8,       // a malformed frame; the session is closed after the reply
  kFailedPrecondition = 9,  // the call is valid but not in this state (e.g. not hello first)
  kDataLoss = 10,           // stored bytes failed verification; treated as a miss
  kInternal = 11,           // a bug in kvtier; please report
  kIoError = 12,            // an operating-system call failed (errno in the message)
  kTimedOut = 13,           // no reply within the client's timeout
};

// Stable lowercase name ("resource_exhausted"), for logs and the C ABI.
constexpr std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kInvalidArgument: return "invalid_argument";
    case StatusCode::kNotFound: return "not_found";
    case StatusCode::kAlreadyExists: return "already_exists";
    case StatusCode::kResourceExhausted: return "resource_exhausted";
    case StatusCode::kPermissionDenied: return "permission_denied";
    case StatusCode::kUnavailable: return "unavailable";
    case StatusCode::kVersionMismatch: return "version_mismatch";
    case StatusCode::kProtocolError: return "protocol_error";
    case StatusCode::kFailedPrecondition: return "failed_precondition";
    case StatusCode::kDataLoss: return "data_loss";
    case StatusCode::kInternal: return "internal";
    case StatusCode::kIoError: return "io_error";
    case StatusCode::kTimedOut: return "timed_out";
  }
  return "unknown";
}

constexpr bool IsKnownStatusCode(uint16_t raw) { return raw <= uint16_t{13}; }

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "resource_exhausted: tenant dev pool is full".
  std::string ToString() const {
    return ok() ? std::string("ok") : std::string(StatusCodeName(code_)) + ": " + message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Holds either a value or a non-OK Status (std::expected-shaped; Debian 12 has no <expected>).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (status_.ok()) status_ = Status(StatusCode::kInternal, "Result built from an OK Status");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace kvtier
