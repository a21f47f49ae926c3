// Sha256: the SHA-256 digest of a byte string (OpenSSL's), for checksums of kvtier's own state
// (the index snapshot a restart hands over). Not a MAC: it detects corruption, not forgery.
#pragma once

#include <array>
#include <cstddef>
#include <span>

namespace kvtier {

std::array<std::byte, 32> Sha256(std::span<const std::byte> data);

}  // namespace kvtier
