#include "crypto/aes_gcm.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "crypto/openssl_error.h"
#include "ipc/base/check.h"

namespace kvtier {
namespace {

// EVP_CipherUpdate takes an int length, so larger buffers go in pieces. 1 GiB is a multiple of
// the AES block, so no partial block is carried across pieces (OpenSSL would cope anyway).
constexpr size_t kMaxUpdateBytes = size_t{1} << 30;

unsigned char* U8(std::byte* p) {
  return reinterpret_cast<unsigned char*>(p);
}
const unsigned char* U8(const std::byte* p) {
  return reinterpret_cast<const unsigned char*>(p);
}

// In place (same start) or disjoint. A partial overlap would have OpenSSL read bytes it has
// already overwritten, so it is refused rather than producing garbage.
bool SizesAndAliasingOk(std::span<const std::byte> in, std::span<const std::byte> out) {
  if (in.size() != out.size()) return false;
  if (in.empty()) return true;
  const auto in_begin = reinterpret_cast<uintptr_t>(in.data());
  const auto out_begin = reinterpret_cast<uintptr_t>(out.data());
  if (in_begin == out_begin) return true;
  return in_begin + in.size() <= out_begin || out_begin + out.size() <= in_begin;
}

Status BadSpans(std::string_view op) {
  return Status(StatusCode::kInvalidArgument,
                std::string("AES-GCM ") + std::string(op) +
                    ": output must be as large as the input and either be the same memory or "
                    "not overlap it");
}

// Feeds `size` bytes of `in` through the context; `out == nullptr` feeds associated data.
// GCM is a stream mode: each data byte in yields one byte out, with nothing buffered.
Status Update(EVP_CIPHER_CTX* ctx, const std::byte* in, std::byte* out, size_t size) {
  for (size_t done = 0; done < size;) {
    const size_t n = std::min(size - done, kMaxUpdateBytes);
    int out_len = 0;
    if (EVP_CipherUpdate(ctx, out == nullptr ? nullptr : U8(out + done), &out_len, U8(in + done),
                         static_cast<int>(n)) != 1) {
      return OpenSslError(out == nullptr ? "EVP_CipherUpdate (aad)" : "EVP_CipherUpdate");
    }
    KVT_DCHECK(static_cast<size_t>(out_len) == n);
    done += n;
  }
  return Status::Ok();
}

}  // namespace

Result<AesGcm> AesGcm::Create(const SecretKey& key) {
  // An explicit fetch (OpenSSL 3) resolves the provider implementation once, here, instead of
  // implicitly on first use.
  EVP_CIPHER* cipher = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  if (cipher == nullptr) return OpenSslError("EVP_CIPHER_fetch(AES-256-GCM)");
  AesGcm gcm(EVP_CIPHER_CTX_new());
  if (gcm.ctx_ == nullptr) {
    EVP_CIPHER_free(cipher);
    return OpenSslError("EVP_CIPHER_CTX_new");
  }
  // Key only, no nonce yet: the key schedule and GHASH key are computed once for the object's
  // life. The context keeps its own reference to the cipher.
  const int ok = EVP_EncryptInit_ex(gcm.ctx_, cipher, nullptr, U8(key.bytes().data()), nullptr);
  EVP_CIPHER_free(cipher);
  if (ok != 1) return OpenSslError("EVP_EncryptInit_ex (key)");
  KVT_CHECK(EVP_CIPHER_CTX_get_key_length(gcm.ctx_) == static_cast<int>(kKeyBytes));
  KVT_CHECK(EVP_CIPHER_CTX_get_iv_length(gcm.ctx_) == static_cast<int>(kNonceBytes));
  return gcm;
}

Result<AesGcm> AesGcm::Clone() const {
  KVT_CHECK(ctx_ != nullptr);
  AesGcm copy(EVP_CIPHER_CTX_new());
  if (copy.ctx_ == nullptr) return OpenSslError("EVP_CIPHER_CTX_new");
  if (EVP_CIPHER_CTX_copy(copy.ctx_, ctx_) != 1) return OpenSslError("EVP_CIPHER_CTX_copy");
  return copy;
}

AesGcm::AesGcm(AesGcm&& other) noexcept : ctx_(std::exchange(other.ctx_, nullptr)) {}

AesGcm& AesGcm::operator=(AesGcm&& other) noexcept {
  if (this != &other) {
    EVP_CIPHER_CTX_free(ctx_);
    ctx_ = std::exchange(other.ctx_, nullptr);
  }
  return *this;
}

// EVP_CIPHER_CTX_free cleanses the key schedule before freeing it.
AesGcm::~AesGcm() {
  EVP_CIPHER_CTX_free(ctx_);
}

Status AesGcm::Seal(std::span<const std::byte, kNonceBytes> nonce,
                    std::span<const std::byte> aad,
                    std::span<const std::byte> plaintext,
                    std::span<std::byte> ciphertext,
                    std::span<std::byte, kTagBytes> tag) {
  KVT_CHECK(ctx_ != nullptr);  // used after move
  if (!SizesAndAliasingOk(plaintext, ciphertext)) return BadSpans("seal");
  // Null cipher and key keep the schedule from Create(); only the nonce (J0, counters) is reset.
  if (EVP_EncryptInit_ex(ctx_, nullptr, nullptr, nullptr, U8(nonce.data())) != 1) {
    return OpenSslError("EVP_EncryptInit_ex (nonce)");
  }
  KVT_RETURN_IF_ERROR(Update(ctx_, aad.data(), nullptr, aad.size()));
  KVT_RETURN_IF_ERROR(Update(ctx_, plaintext.data(), ciphertext.data(), plaintext.size()));
  unsigned char unused[16];  // GCM's final step writes no data, only computes the tag
  int unused_len = 0;
  if (EVP_EncryptFinal_ex(ctx_, unused, &unused_len) != 1) {
    return OpenSslError("EVP_EncryptFinal_ex");
  }
  if (EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagBytes), tag.data()) !=
      1) {
    return OpenSslError("EVP_CTRL_GCM_GET_TAG");
  }
  return Status::Ok();
}

Status AesGcm::Open(std::span<const std::byte, kNonceBytes> nonce,
                    std::span<const std::byte> aad,
                    std::span<const std::byte> ciphertext,
                    std::span<const std::byte, kTagBytes> tag,
                    std::span<std::byte> plaintext) {
  KVT_CHECK(ctx_ != nullptr);  // used after move
  if (!SizesAndAliasingOk(ciphertext, plaintext)) return BadSpans("open");
  if (EVP_DecryptInit_ex(ctx_, nullptr, nullptr, nullptr, U8(nonce.data())) != 1) {
    return OpenSslError("EVP_DecryptInit_ex (nonce)");
  }
  // OpenSSL only reads the expected tag; the ctrl interface predates const.
  if (EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagBytes),
                          const_cast<std::byte*>(tag.data())) != 1) {
    return OpenSslError("EVP_CTRL_GCM_SET_TAG");
  }
  Status status = Update(ctx_, aad.data(), nullptr, aad.size());
  if (status.ok()) status = Update(ctx_, ciphertext.data(), plaintext.data(), ciphertext.size());
  if (status.ok()) {
    unsigned char unused[16];
    int unused_len = 0;
    if (EVP_DecryptFinal_ex(ctx_, unused, &unused_len) != 1) {
      ERR_clear_error();  // a tag mismatch is an answer, not an OpenSSL error to keep
      status = Status(StatusCode::kDataLoss, "authentication failed");
    }
  }
  // Decryption has already written unverified bytes; wipe them so a caller who ignores the
  // status never sees them. Plain memset suffices: the memory outlives this call, so the store
  // cannot be elided, and the bytes are not secret, only untrusted.
  if (!status.ok() && !plaintext.empty()) std::memset(plaintext.data(), 0, plaintext.size());
  return status;
}

Status AesGcm::OpenBegin(std::span<const std::byte, kNonceBytes> nonce,
                         std::span<const std::byte> aad,
                         std::span<const std::byte, kTagBytes> tag) {
  KVT_CHECK(ctx_ != nullptr);  // used after move
  if (EVP_DecryptInit_ex(ctx_, nullptr, nullptr, nullptr, U8(nonce.data())) != 1) {
    return OpenSslError("EVP_DecryptInit_ex (nonce)");
  }
  if (EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagBytes),
                          const_cast<std::byte*>(tag.data())) != 1) {
    return OpenSslError("EVP_CTRL_GCM_SET_TAG");
  }
  return Update(ctx_, aad.data(), nullptr, aad.size());
}

Status AesGcm::OpenPiece(std::span<const std::byte> ciphertext, std::span<std::byte> plaintext) {
  KVT_CHECK(ctx_ != nullptr);
  if (!SizesAndAliasingOk(ciphertext, plaintext)) return BadSpans("open");
  return Update(ctx_, ciphertext.data(), plaintext.data(), ciphertext.size());
}

Status AesGcm::OpenEnd() {
  KVT_CHECK(ctx_ != nullptr);
  unsigned char unused[16];
  int unused_len = 0;
  if (EVP_DecryptFinal_ex(ctx_, unused, &unused_len) != 1) {
    ERR_clear_error();
    return Status(StatusCode::kDataLoss, "authentication failed");
  }
  return Status::Ok();
}

}  // namespace kvtier
