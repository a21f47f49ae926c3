#include "crypto/secure_random.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

namespace kvtier {

Status SecureRandom(std::span<std::byte> out) {
  if (out.size() > static_cast<size_t>(INT32_MAX) ||
      RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(out.size())) != 1) {
    return Status(StatusCode::kInternal, "OpenSSL RAND_bytes failed: the CSPRNG is not seeded");
  }
  return Status::Ok();
}

Result<uint64_t> SecureRandomU64() {
  uint64_t v = 0;
  Status s = SecureRandom(std::as_writable_bytes(std::span(&v, 1)));
  if (!s.ok()) return s;
  return v;
}

void SecureZero(void* data, size_t bytes) { OPENSSL_cleanse(data, bytes); }

}  // namespace kvtier
