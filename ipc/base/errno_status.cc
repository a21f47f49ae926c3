#include "ipc/base/errno_status.h"

#include <errno.h>
#include <string.h>

namespace kvtier {

Status ErrnoStatus(std::string_view what, int err) {
  StatusCode code = StatusCode::kIoError;
  switch (err) {
    case ENOENT: case ECONNREFUSED: code = StatusCode::kUnavailable; break;
    case EACCES: case EPERM: code = StatusCode::kPermissionDenied; break;
    case ENOMEM: case ENOSPC: case EMFILE: case ENFILE: code = StatusCode::kResourceExhausted; break;
    case EINVAL: code = StatusCode::kInvalidArgument; break;
    case EPIPE: case ECONNRESET: code = StatusCode::kUnavailable; break;
    default: break;
  }
  char buf[128];
  const char* text = strerror_r(err, buf, sizeof(buf));
  return Status(code, std::string(what) + ": " + text + " (errno " + std::to_string(err) + ")");
}

}  // namespace kvtier
