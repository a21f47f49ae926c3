// AesGcm: AES-256-GCM authenticated encryption with one key (OpenSSL EVP).
// Owns one EVP_CIPHER_CTX, keyed once in Create(): the key schedule and GHASH tables are built
// there, and each Seal/Open only sets the nonce, so the per-call cost is negligible next to a
// 2 MiB block. Move-only. Not thread-safe: the context is mutated by every call, so keep one
// AesGcm per thread (e.g. one per I/O thread). Nonces are the caller's job: never Seal twice
// with the same nonce under one key.
#pragma once

#include <cstddef>
#include <span>

#include "crypto/secret_key.h"
#include "kvclient/status.h"

struct evp_cipher_ctx_st;  // OpenSSL's EVP_CIPHER_CTX; OpenSSL stays out of this header

namespace kvtier {

class AesGcm {
 public:
  static constexpr size_t kKeyBytes = SecretKey::kBytes;
  static constexpr size_t kNonceBytes = 12;
  static constexpr size_t kTagBytes = 16;

  // kInternal if OpenSSL cannot provide AES-256-GCM or allocate the context. The key is copied
  // into OpenSSL's context (which cleanses it when freed); `key` may be dropped afterwards.
  static Result<AesGcm> Create(const SecretKey& key);

  // Another context under the same key (OpenSSL copies its key schedule; the key bytes never
  // leave OpenSSL), for a second message in progress under one key: OpenBegin..OpenEnd of one
  // message cannot share a context with another. kInternal if OpenSSL fails.
  Result<AesGcm> Clone() const;

  AesGcm(AesGcm&& other) noexcept;
  AesGcm& operator=(AesGcm&& other) noexcept;
  AesGcm(const AesGcm&) = delete;
  AesGcm& operator=(const AesGcm&) = delete;
  ~AesGcm();

  // Encrypts `plaintext` into `ciphertext` and writes the 16-byte tag, authenticating `aad` too.
  // `ciphertext` must be exactly plaintext.size() bytes and either be the same memory as
  // `plaintext` (in place) or not overlap it; otherwise kInvalidArgument and nothing is written.
  // Any size works, including 0 and more than INT_MAX bytes. kInternal if OpenSSL fails.
  Status Seal(std::span<const std::byte, kNonceBytes> nonce,
              std::span<const std::byte> aad,
              std::span<const std::byte> plaintext,
              std::span<std::byte> ciphertext,
              std::span<std::byte, kTagBytes> tag);

  // Decrypts and verifies. OK means `plaintext` holds the authentic bytes. kDataLoss
  // "authentication failed" when the tag does not match (wrong key, nonce, aad, ciphertext or
  // tag); `plaintext` is then all zeros (in place, so is the ciphertext), so unauthenticated
  // bytes never reach a caller who ignores the status. Same size and aliasing rules as Seal
  // (kInvalidArgument).
  Status Open(std::span<const std::byte, kNonceBytes> nonce,
              std::span<const std::byte> aad,
              std::span<const std::byte> ciphertext,
              std::span<const std::byte, kTagBytes> tag,
              std::span<std::byte> plaintext);

  // Open in pieces, for ciphertext that arrives in pieces (decrypting one while the next is
  // read): OpenBegin, then OpenPiece for each piece in order, then OpenEnd, which says whether
  // the tag verified. Until OpenEnd says OK every byte OpenPiece wrote is unauthenticated: the
  // caller must not let anyone see it, and wipes it on failure (OpenEnd cannot: it does not
  // keep the pieces). Same aliasing rule per piece as Open. No other call may come between
  // OpenBegin and OpenEnd.
  Status OpenBegin(std::span<const std::byte, kNonceBytes> nonce, std::span<const std::byte> aad,
                   std::span<const std::byte, kTagBytes> tag);
  Status OpenPiece(std::span<const std::byte> ciphertext, std::span<std::byte> plaintext);
  Status OpenEnd();

 private:
  explicit AesGcm(evp_cipher_ctx_st* ctx) : ctx_(ctx) {}

  evp_cipher_ctx_st* ctx_ = nullptr;  // owned; null only when moved from
};

}  // namespace kvtier
