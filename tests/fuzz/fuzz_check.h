// Helpers shared by the fuzz targets: invariant checks that name what broke, and a private
// scratch directory. Each target is one LLVMFuzzerTestOneInput; see scripts/fuzz.sh.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

// An invariant of the code under test failed: a finding. Prints where and what, then aborts,
// so libFuzzer saves the input as crash-*. `what` (a std::string expression) is only built on
// failure.
#define KVT_FUZZ_CHECK(cond, what)                             \
  do {                                                         \
    if (!(cond)) [[unlikely]] {                                \
      ::kvtier::fuzz::Fail(__FILE__, __LINE__, #cond, (what)); \
    }                                                          \
  } while (false)

namespace kvtier::fuzz {

[[noreturn]] inline void Fail(const char* file,
                              int line,
                              const char* cond,
                              const std::string& what) {
  std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n  %s\n", file, line, cond, what.c_str());
  std::fflush(stderr);
  std::abort();
}

// The fuzzer's input as bytes.
inline std::span<const std::byte> Bytes(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const std::byte*>(data), size};
}

inline std::string_view Text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// True if `inner` lies within `outer` (an empty span anywhere inside or at its end counts).
inline bool Within(std::span<const std::byte> inner, std::span<const std::byte> outer) {
  const auto* begin = outer.data();
  const auto* end = outer.data() + outer.size();
  return inner.data() >= begin && inner.data() <= end &&
         inner.size() <= static_cast<size_t>(end - inner.data());
}

// A fresh private directory (0700) for one fuzzer process: under $KVT_FUZZ_TMPDIR, else
// /dev/shm (tmpfs: fdatasync costs nothing), else $TMPDIR or /tmp. Aborts if none works.
inline std::filesystem::path MakeScratchDir(const char* tag) {
  std::string base;
  if (const char* env = std::getenv("KVT_FUZZ_TMPDIR"); env != nullptr && *env != '\0') {
    base = env;
  } else if (std::error_code ec; std::filesystem::is_directory("/dev/shm", ec)) {
    base = "/dev/shm";
  } else if (const char* tmp = std::getenv("TMPDIR"); tmp != nullptr && *tmp != '\0') {
    base = tmp;
  } else {
    base = "/tmp";
  }
  std::string pattern = base + "/kvt-fuzz-" + tag + "-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    std::fprintf(stderr, "fuzz: cannot create a scratch directory under %s\n", base.c_str());
    std::abort();
  }
  return pattern;
}

}  // namespace kvtier::fuzz
