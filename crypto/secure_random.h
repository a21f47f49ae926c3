// Cryptographic randomness and secure erasure (OpenSSL RAND_bytes, OPENSSL_cleanse).
// Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "kvclient/status.h"

namespace kvtier {

// Fills `out` from OpenSSL's CSPRNG; kInternal if it is not seeded.
Status SecureRandom(std::span<std::byte> out);
Result<uint64_t> SecureRandomU64();
// Zeroes memory in a way the compiler may not elide (keys, secrets).
void SecureZero(void* data, size_t bytes);

}  // namespace kvtier
