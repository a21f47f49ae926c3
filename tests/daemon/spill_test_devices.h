// Test helper: the two BlockDevice kinds the spill tests run against.
#pragma once

#include <memory>

#include <catch2/catch.hpp>

#include "daemon/spill/thread_pool_device.h"
#include "daemon/spill/uring_device.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {

enum class Kind { kUring, kThreadPool };

inline const char* KindName(Kind kind) {
  return kind == Kind::kUring ? "io_uring" : "thread pool";
}

// nullptr, after a WARN, when io_uring is unavailable here (Catch2 v2 has no SKIP).
inline std::unique_ptr<BlockDevice> OpenTestDevice(Kind kind, uint32_t queue_depth,
                                                   uint32_t max_files) {
  DeviceOptions options;
  options.queue_depth = queue_depth;
  options.threads = 4;
  options.max_files = max_files;
  if (kind == Kind::kUring) {
    auto device = UringDevice::Open(options);
    if (!device.ok()) {
      Unavailable("io_uring", device.status().ToString(), /*whole_test=*/false);
      return nullptr;
    }
    return std::move(*device);
  }
  auto device = ThreadPoolDevice::Open(options);
  REQUIRE(device.ok());
  return std::move(*device);
}

}  // namespace kvtier::testing
