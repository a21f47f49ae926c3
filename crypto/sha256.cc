#include "crypto/sha256.h"

#include <openssl/sha.h>

namespace kvtier {

std::array<std::byte, 32> Sha256(std::span<const std::byte> data) {
  std::array<std::byte, 32> out{};
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(),
         reinterpret_cast<unsigned char*>(out.data()));
  return out;
}

}  // namespace kvtier
