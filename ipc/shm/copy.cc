#include "kvclient/copy.h"

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace kvtier {
namespace {

constexpr size_t kStreamingThreshold = 16 * 1024;

// 128 bytes per iteration: four unaligned 32-byte loads, four aligned streaming stores.
__attribute__((target("avx2"))) void CopyNtAvx2(char* d, const char* s, size_t n) {
  const size_t head = (32 - (reinterpret_cast<uintptr_t>(d) & 31)) & 31;
  std::memcpy(d, s, head);
  d += head;
  s += head;
  n -= head;
  for (; n >= 128; n -= 128, d += 128, s += 128) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 32));
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 64));
    const __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 96));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + 32), b);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + 64), c);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + 96), e);
  }
  _mm_sfence();
  std::memcpy(d, s, n);
}

// SSE2 is part of x86-64, so this needs no check.
void CopyNtSse2(char* d, const char* s, size_t n) {
  const size_t head = (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15;
  std::memcpy(d, s, head);
  d += head;
  s += head;
  n -= head;
  for (; n >= 64; n -= 64, d += 64, s += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 32));
    const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(d), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 48), e);
  }
  _mm_sfence();
  std::memcpy(d, s, n);
}

const bool kHasAvx2 = __builtin_cpu_supports("avx2");

}  // namespace

void CopyNonTemporal(void* dst, const void* src, size_t bytes) {
  if (bytes < 64) {
    std::memcpy(dst, src, bytes);
    return;
  }
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  if (kHasAvx2) {
    CopyNtAvx2(d, s, bytes);
  } else {
    CopyNtSse2(d, s, bytes);
  }
}

void CopyToPool(void* dst, const void* src, size_t bytes) {
  if (bytes < kStreamingThreshold) {
    std::memcpy(dst, src, bytes);
  } else {
    CopyNonTemporal(dst, src, bytes);
  }
}

void CopyFromPool(void* dst, const void* src, size_t bytes) { CopyToPool(dst, src, bytes); }

}  // namespace kvtier
