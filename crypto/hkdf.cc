#include "crypto/hkdf.h"

#include <array>
#include <memory>
#include <string>

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include "crypto/openssl_error.h"

namespace kvtier {
namespace {

// RAII for the two OpenSSL objects; derivation is control-plane, so fetching per call is fine.
struct KdfDeleter {
  void operator()(EVP_KDF* kdf) const { EVP_KDF_free(kdf); }
  void operator()(EVP_KDF_CTX* ctx) const { EVP_KDF_CTX_free(ctx); }
};

}  // namespace

Result<SecretKey> HkdfSha256(std::span<const std::byte> ikm,
                             std::span<const std::byte> salt,
                             std::string_view info) {
  if (ikm.empty()) {
    return Status(StatusCode::kInvalidArgument, "HKDF input key material is empty");
  }
  if (info.size() > kHkdfMaxInfoBytes) {
    return Status(StatusCode::kInvalidArgument, "HKDF info is " + std::to_string(info.size()) +
                                                    " bytes; the limit is " +
                                                    std::to_string(kHkdfMaxInfoBytes));
  }
  std::unique_ptr<EVP_KDF, KdfDeleter> kdf(EVP_KDF_fetch(nullptr, OSSL_KDF_NAME_HKDF, nullptr));
  if (kdf == nullptr) return OpenSslError("EVP_KDF_fetch(HKDF)");
  std::unique_ptr<EVP_KDF_CTX, KdfDeleter> ctx(EVP_KDF_CTX_new(kdf.get()));
  if (ctx == nullptr) return OpenSslError("EVP_KDF_CTX_new");

  // OSSL_PARAM takes non-const pointers for inputs it only reads.
  char digest[] = "SHA256";
  std::array<OSSL_PARAM, 5> params{};
  size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
                                                  const_cast<std::byte*>(ikm.data()), ikm.size());
  // Absent salt and info are the RFC's defaults (zero salt, empty info); OpenSSL wants them
  // left out rather than passed with length 0.
  if (!salt.empty()) {
    params[n++] = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_SALT, const_cast<std::byte*>(salt.data()), salt.size());
  }
  if (!info.empty()) {
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO,
                                                    const_cast<char*>(info.data()), info.size());
  }
  params[n] = OSSL_PARAM_construct_end();

  std::array<std::byte, SecretKey::kBytes> okm{};
  if (EVP_KDF_derive(ctx.get(), reinterpret_cast<unsigned char*>(okm.data()), okm.size(),
                     params.data()) != 1) {
    SecureZero(okm.data(), okm.size());
    return OpenSslError("EVP_KDF_derive(HKDF-SHA256)");
  }
  SecretKey key = SecretKey::FromBytes(okm);
  SecureZero(okm.data(), okm.size());
  return key;
}

}  // namespace kvtier
