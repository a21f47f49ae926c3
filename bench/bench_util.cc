#include "bench/bench_util.h"

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <ranges>
#include <string>
#include <vector>

namespace kvtier::bench {
namespace {

pid_t g_child_to_stop = 0;
std::vector<std::string>* g_dirs_to_remove = nullptr;

}  // namespace

void SetChildToStopOnFailure(pid_t pid) { g_child_to_stop = pid; }

void AddDirToRemoveOnFailure(const std::string& dir) {
  if (g_dirs_to_remove == nullptr) g_dirs_to_remove = new std::vector<std::string>();
  g_dirs_to_remove->push_back(dir);
}

void ForgetDirToRemoveOnFailure(const std::string& dir) {
  if (g_dirs_to_remove != nullptr) std::erase(*g_dirs_to_remove, dir);
}

void Fail(const std::string& what) {
  std::fflush(stdout);
  std::fprintf(stderr, "kvtier-bench: FAILED: %s\n", what.c_str());
  if (g_child_to_stop > 0) {
    kill(g_child_to_stop, SIGTERM);
    // The pool can be large; give the daemon a moment to unmap it, then make sure.
    for (int i = 0; i < 200 && waitpid(g_child_to_stop, nullptr, WNOHANG) == 0; ++i) {
      usleep(10000);
    }
    kill(g_child_to_stop, SIGKILL);
    waitpid(g_child_to_stop, nullptr, WNOHANG);
  }
  if (g_dirs_to_remove != nullptr) {
    for (const std::string& dir : std::views::reverse(*g_dirs_to_remove)) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  }
  std::exit(1);
}

void CheckOk(const Status& status, const std::string& what) {
  if (!status.ok()) Fail(what + ": " + status.ToString());
}

void CheckCodes(std::span<const StatusCode> codes, const std::string& what) {
  for (size_t i = 0; i < codes.size(); ++i) {
    if (codes[i] != StatusCode::kOk) {
      Fail(what + ": key " + std::to_string(i) + ": " + std::string(StatusCodeName(codes[i])));
    }
  }
}

uint64_t NowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

double Seconds(uint64_t ns) { return static_cast<double>(ns) * 1e-9; }

uint64_t Quantile(std::vector<uint64_t>& samples, double q) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  const auto last = static_cast<double>(samples.size() - 1);
  return samples[static_cast<size_t>(q * last + 0.5)];
}

std::string SizeName(uint64_t bytes) {
  if (bytes % kGiB == 0) return std::to_string(bytes / kGiB) + "GiB";
  if (bytes % kMiB == 0) return std::to_string(bytes / kMiB) + "MiB";
  if (bytes % kKiB == 0) return std::to_string(bytes / kKiB) + "KiB";
  return std::to_string(bytes) + "B";
}

PrivateBuffer::PrivateBuffer(uint64_t bytes) : size_(bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                 -1, 0);
  if (p == MAP_FAILED) Fail("mmap of a " + SizeName(bytes) + " private buffer: " + strerror(errno));
  data_ = static_cast<std::byte*>(p);
  // A cheap xorshift pattern; every 8-byte word differs.
  uint64_t x = 0x9e3779b97f4a7c15u;
  auto* words = reinterpret_cast<uint64_t*>(data_);
  for (uint64_t i = 0; i < bytes / 8; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    words[i] = x;
  }
}

PrivateBuffer::~PrivateBuffer() {
  if (data_ != nullptr) munmap(data_, size_);
}

CpuMask GetCpuMask() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) Fail("sched_getaffinity: " + std::string(strerror(errno)));
  CpuMask cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(static_cast<size_t>(c), &set)) cpus.push_back(c);
  }
  return cpus;
}

void SetCpuMask(const CpuMask& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) CPU_SET(static_cast<size_t>(c), &set);
  if (sched_setaffinity(0, sizeof(set), &set) != 0) {
    Fail("sched_setaffinity: " + std::string(strerror(errno)));
  }
}

void PinToCpu(int cpu) { SetCpuMask({cpu}); }

Key BenchKey(uint32_t tag, uint64_t index) {
  Key key;
  key.len = 16;
  std::memcpy(key.bytes.data(), "kvtb", 4);
  std::memcpy(key.bytes.data() + 4, &tag, 4);
  std::memcpy(key.bytes.data() + 8, &index, 8);
  return key;
}

}  // namespace kvtier::bench
