// SecretKey: 32 bytes of symmetric key material (AES-256 keys, key-encryption keys, the master
// key). Owns its bytes in a fixed array, never on the heap; move-only; the bytes are zeroed on
// destruction and in the moved-from object, so a key lives in exactly one place.
// Deliberately not printable: no operator<<, no ToString, no comparison (compare bytes() in tests
// only). Thread-safety: a plain value; concurrent const access is safe.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <span>

#include "crypto/secure_random.h"
#include "kvclient/status.h"

namespace kvtier {

class SecretKey {
 public:
  static constexpr size_t kBytes = 32;

  // A fresh key from OpenSSL's CSPRNG; kInternal if it is not seeded.
  static Result<SecretKey> Random() {
    SecretKey key;
    Status status = SecureRandom(key.bytes_);
    if (!status.ok()) return status;  // `key` zeroes whatever was written on its way out
    return key;
  }
  // Copies `bytes`; the caller zeroes its own copy.
  static SecretKey FromBytes(std::span<const std::byte, kBytes> bytes) {
    SecretKey key;
    std::copy(bytes.begin(), bytes.end(), key.bytes_.begin());
    return key;
  }

  SecretKey(SecretKey&& other) noexcept : bytes_(other.bytes_) { other.Wipe(); }
  SecretKey& operator=(SecretKey&& other) noexcept {
    if (this != &other) {
      bytes_ = other.bytes_;
      other.Wipe();
    }
    return *this;
  }
  SecretKey(const SecretKey&) = delete;
  SecretKey& operator=(const SecretKey&) = delete;
  ~SecretKey() { Wipe(); }

  // The key material; valid while this object lives and is not moved from (then it is zeros).
  std::span<const std::byte, kBytes> bytes() const { return bytes_; }

 private:
  SecretKey() = default;
  void Wipe() { SecureZero(bytes_.data(), bytes_.size()); }

  std::array<std::byte, kBytes> bytes_{};
};

}  // namespace kvtier
