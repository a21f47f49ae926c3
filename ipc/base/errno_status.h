// Status from errno: "what failed: strerror (errno N)". The code follows the errno's meaning.
#pragma once

#include <string>
#include <string_view>

#include "kvclient/status.h"

namespace kvtier {

Status ErrnoStatus(std::string_view what, int err);

}  // namespace kvtier
