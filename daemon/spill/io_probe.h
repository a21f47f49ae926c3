// OpenBestDevice: the spill tier's BlockDevice for this host, chosen at start-up: io_uring when
// the kernel and the sandbox allow it, else the pread/pwrite thread pool, with the reason.
// Thread-safety: a free function; the device it returns is owned by the caller.
#pragma once

#include <memory>
#include <string>

#include "daemon/spill/block_device.h"
#include "kvclient/status.h"

namespace kvtier {

// OK: a UringDevice, and `why_fallback` (when given) is cleared; or a ThreadPoolDevice, and
// `why_fallback` says why, for the caller to log: "io_uring unavailable (container seccomp
// profile?): io_uring_queue_init: Operation not permitted (errno 1); using 4 pread/pwrite
// threads", or that options.force_thread_pool asked for it. Errors: those of
// ThreadPoolDevice::Open (io_uring failing is not an error), or kInvalidArgument from
// UringDevice::Open for a bad queue depth.
Result<std::unique_ptr<BlockDevice>> OpenBestDevice(const DeviceOptions& options,
                                                    std::string* why_fallback);

}  // namespace kvtier
