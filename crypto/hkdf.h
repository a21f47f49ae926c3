// HkdfSha256: HKDF (RFC 5869) extract-and-expand with SHA-256, producing one 32-byte key.
// A free function; stateless and thread-safe. Used to derive per-tenant keys from the master
// key (master_key.h).
#pragma once

#include <cstddef>
#include <span>
#include <string_view>

#include "crypto/secret_key.h"
#include "kvclient/status.h"

namespace kvtier {

// Longest `info` accepted: a bound of our own (info strings here are short labels such as
// "tenant-key:<tenant>"), so an oversized label is an error, not an unbounded copy.
inline constexpr size_t kHkdfMaxInfoBytes = 1024;

// OKM = HKDF-Expand(HKDF-Extract(salt, ikm), info, 32); an empty salt means HashLen zero bytes,
// as in RFC 5869. `info` is taken as raw bytes. kInvalidArgument if `ikm` is empty or `info` is
// longer than kHkdfMaxInfoBytes; kInternal if OpenSSL fails.
Result<SecretKey> HkdfSha256(std::span<const std::byte> ikm,
                             std::span<const std::byte> salt,
                             std::string_view info);

}  // namespace kvtier
