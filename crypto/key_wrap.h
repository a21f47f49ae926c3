// WrappedKey, WrapKey, UnwrapKey: a 32-byte data key sealed under a key-encryption key (KEK)
// with AES-256-GCM, for storing data keys in on-disk headers (e.g. one per spill segment).
// WrappedKey is a plain 60-byte value with no padding, embedded as-is in on-disk formats.
// The free functions are stateless and thread-safe (each builds its own AesGcm).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include "crypto/secret_key.h"
#include "kvclient/status.h"

namespace kvtier {

// On-disk layout, 60 bytes, byte arrays only (no alignment, no endianness):
//   [0, 12)   nonce       random, fresh for every wrap
//   [12, 44)  ciphertext  AES-256-GCM(kek, nonce, aad, data key)
//   [44, 60)  tag         GCM tag over aad and ciphertext
struct WrappedKey {
  uint8_t nonce[12];
  uint8_t ciphertext[32];
  uint8_t tag[16];
};
static_assert(sizeof(WrappedKey) == 60);
static_assert(std::is_trivially_copyable_v<WrappedKey> && std::is_standard_layout_v<WrappedKey>);

// Seals `data_key` under `kek`, binding `aad` (say, the segment's identity) to it. The nonce is
// random (96 bits): a KEK wraps few keys in its life (one per segment created), far below the
// ~2^32 wraps at which random 96-bit nonces risk a collision. kInternal if the CSPRNG or
// OpenSSL fails.
Result<WrappedKey> WrapKey(const SecretKey& kek,
                           const SecretKey& data_key,
                           std::span<const std::byte> aad);

// The data key, if `wrapped` was made by WrapKey with this `kek` and `aad`. kDataLoss
// "authentication failed" if any byte of `wrapped` was altered or the kek or aad differ.
Result<SecretKey> UnwrapKey(const SecretKey& kek,
                            const WrappedKey& wrapped,
                            std::span<const std::byte> aad);

}  // namespace kvtier
