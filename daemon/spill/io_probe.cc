#include "daemon/spill/io_probe.h"

#include <utility>

#include "daemon/spill/thread_pool_device.h"
#include "daemon/spill/uring_device.h"
#include "ipc/base/check.h"

namespace kvtier {

Result<std::unique_ptr<BlockDevice>> OpenBestDevice(const DeviceOptions& options,
                                                    std::string* why_fallback) {
  std::string why;
  if (options.force_thread_pool) {
    why = "io_uring not tried: force_thread_pool is set";
  } else {
    Result<std::unique_ptr<UringDevice>> uring = UringDevice::Open(options);
    if (uring.ok()) {
      if (why_fallback != nullptr) why_fallback->clear();
      return std::unique_ptr<BlockDevice>(std::move(*uring));
    }
    if (uring.status().code() != StatusCode::kUnavailable) return uring.status();
    why = uring.status().message();
  }
  KVT_ASSIGN_OR_RETURN(std::unique_ptr<ThreadPoolDevice> pool, ThreadPoolDevice::Open(options));
  if (why_fallback != nullptr) {
    *why_fallback = why + "; using " + std::to_string(options.threads) + " pread/pwrite threads";
  }
  return std::unique_ptr<BlockDevice>(std::move(pool));
}

}  // namespace kvtier
