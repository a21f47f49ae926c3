#include "crypto/key_wrap.h"

#include <array>
#include <utility>

#include "crypto/aes_gcm.h"
#include "crypto/secure_random.h"
#include "ipc/base/check.h"

namespace kvtier {

Result<WrappedKey> WrapKey(const SecretKey& kek,
                           const SecretKey& data_key,
                           std::span<const std::byte> aad) {
  KVT_ASSIGN_OR_RETURN(AesGcm gcm, AesGcm::Create(kek));
  WrappedKey wrapped{};
  KVT_RETURN_IF_ERROR(SecureRandom(std::as_writable_bytes(std::span(wrapped.nonce))));
  KVT_RETURN_IF_ERROR(gcm.Seal(std::as_bytes(std::span(wrapped.nonce)), aad, data_key.bytes(),
                               std::as_writable_bytes(std::span(wrapped.ciphertext)),
                               std::as_writable_bytes(std::span(wrapped.tag))));
  return wrapped;
}

Result<SecretKey> UnwrapKey(const SecretKey& kek,
                            const WrappedKey& wrapped,
                            std::span<const std::byte> aad) {
  KVT_ASSIGN_OR_RETURN(AesGcm gcm, AesGcm::Create(kek));
  std::array<std::byte, SecretKey::kBytes> plain{};
  Status status = gcm.Open(std::as_bytes(std::span(wrapped.nonce)), aad,
                           std::as_bytes(std::span(wrapped.ciphertext)),
                           std::as_bytes(std::span(wrapped.tag)), plain);
  if (!status.ok()) return status;  // Open zeroed `plain`
  SecretKey key = SecretKey::FromBytes(plain);
  SecureZero(plain.data(), plain.size());
  return key;
}

}  // namespace kvtier
