// OpenSslError: turns a failed OpenSSL call into a kInternal Status carrying OpenSSL's reason.
// Internal to kvt_crypto. Thread-safety: OpenSSL's error queue is per thread; so is this.
#pragma once

#include <string_view>

#include "kvclient/status.h"

namespace kvtier {

// "OpenSSL <what> failed: <first queued reason>"; empties this thread's OpenSSL error queue so
// stale errors are not reported by a later, unrelated failure.
Status OpenSslError(std::string_view what);

}  // namespace kvtier
