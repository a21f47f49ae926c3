#include "bench/limits.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "ipc/shm/shm_region.h"
#include "kvclient/copy.h"

namespace kvtier::bench {
namespace {

using CopyFn = void (*)(void*, const void*, size_t);

void Memcpy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }

// One rep: `bytes_per_rep` in blocks, cycling over both working sets at the same offsets.
double CopyGbps(CopyFn copy, std::byte* dst, const std::byte* src, const CopyLimitOptions& o) {
  const uint64_t slots = o.working_set_bytes / o.block_bytes;
  const uint64_t blocks = o.bytes_per_rep / o.block_bytes;
  double best = 0;
  // One untimed pass puts the caches in the state every timed pass leaves them in.
  for (int rep = -1; rep < o.reps; ++rep) {
    const uint64_t start = NowNs();
    for (uint64_t i = 0; i < blocks; ++i) {
      const uint64_t off = (i % slots) * o.block_bytes;
      copy(dst + off, src + off, o.block_bytes);
    }
    asm volatile("" ::: "memory");
    const uint64_t ns = NowNs() - start;
    if (rep >= 0) {
      best = std::max(best, static_cast<double>(blocks * o.block_bytes) / static_cast<double>(ns));
    }
  }
  return best;  // bytes per ns = GB/s
}

}  // namespace

struct CopyMeter::State {
  ShmRegion created;
  ShmRegion mapped;
  PrivateBuffer priv;
  explicit State(uint64_t bytes) : priv(bytes) {}
};

CopyMeter::CopyMeter(uint64_t working_set_bytes) : state_(new State(working_set_bytes)) {
  // The same kind of mapping a client writes through: a sealed memfd made like a tenant pool
  // (hugetlb if reserved, pre-faulted), mapped a second time the way libkvclient maps it.
  ShmCreateOptions shm;
  shm.name = "kvtier-bench-limit";
  shm.bytes = working_set_bytes;
  shm.huge_pages = HugePages::kTry;
  shm.lock_memory = LockMemory::kTry;
  std::string warnings;
  auto created = ShmRegion::Create(shm, &warnings);
  CheckOk(created.status(), "creating the shared mapping for the copy limit");
  const int fd = dup(created->fd());
  if (fd < 0) Fail("dup: " + std::string(strerror(errno)));
  auto mapped = ShmRegion::Map(UniqueFd(fd), working_set_bytes);
  CheckOk(mapped.status(), "mapping the shared memfd for the copy limit");
  state_->created = std::move(*created);
  state_->mapped = std::move(*mapped);
}

CopyMeter::~CopyMeter() { delete state_; }

CopyLimit CopyMeter::MeasureOne(bool into_shm, const CopyLimitOptions& options) {
  CopyLimitOptions o = options;
  o.working_set_bytes = std::min(o.working_set_bytes, state_->priv.size());
  std::byte* shared = state_->mapped.data();
  std::byte* priv = state_->priv.data();
  CopyLimit l;
  if (into_shm) {
    l.memcpy_gbps = CopyGbps(&Memcpy, shared, priv, o);
    l.nt_gbps = CopyGbps(&CopyNonTemporal, shared, priv, o);
  } else {
    l.memcpy_gbps = CopyGbps(&Memcpy, priv, shared, o);
    l.nt_gbps = CopyGbps(&CopyNonTemporal, priv, shared, o);
  }
  return l;
}

CopyLimits CopyMeter::Measure(const CopyLimitOptions& options) {
  CopyLimits out;
  out.huge_pages = state_->created.huge_pages();
  out.into_shm = MeasureOne(true, options);
  out.out_of_shm = MeasureOne(false, options);
  return out;
}

RttLimit MeasureSocketRtt(int round_trips, int reps, int self_cpu, int child_cpu) {
  const CpuMask saved = GetCpuMask();
  if (self_cpu >= 0) PinToCpu(self_cpu);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    Fail("socketpair(SOCK_SEQPACKET): " + std::string(strerror(errno)));
  }
  const pid_t child = fork();
  if (child < 0) Fail("fork: " + std::string(strerror(errno)));
  if (child == 0) {
    if (child_cpu >= 0) PinToCpu(child_cpu);
    close(sv[0]);
    char buf[64];
    for (;;) {
      const ssize_t n = recv(sv[1], buf, sizeof(buf), 0);
      if (n <= 0) _exit(n == 0 ? 0 : 1);
      if (send(sv[1], buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) _exit(1);
    }
  }
  close(sv[1]);
  const int fd = sv[0];
  char msg[64];
  std::memset(msg, 0x5a, sizeof(msg));
  char reply[64];
  auto round_trip = [&](uint64_t i) {
    std::memcpy(msg, &i, sizeof(i));
    if (send(fd, msg, sizeof(msg), MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof(msg))) {
      Fail("echo send: " + std::string(strerror(errno)));
    }
    if (recv(fd, reply, sizeof(reply), 0) != static_cast<ssize_t>(sizeof(reply)) ||
        std::memcmp(reply, msg, sizeof(msg)) != 0) {
      Fail("echo child replied wrongly");
    }
  };
  for (int i = 0; i < 1000; ++i) round_trip(static_cast<uint64_t>(i));
  RttLimit best{1e30, 1e30};
  std::vector<uint64_t> samples(static_cast<size_t>(round_trips));
  for (int rep = 0; rep < reps; ++rep) {
    for (int i = 0; i < round_trips; ++i) {
      const uint64_t start = NowNs();
      round_trip(static_cast<uint64_t>(i));
      samples[static_cast<size_t>(i)] = NowNs() - start;
    }
    best.p50_us = std::min(best.p50_us, static_cast<double>(Quantile(samples, 0.50)) / 1000.0);
    best.p99_us = std::min(best.p99_us, static_cast<double>(Quantile(samples, 0.99)) / 1000.0);
  }
  close(fd);
  int wstatus = 0;
  waitpid(child, &wstatus, 0);
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) Fail("echo child failed");
  SetCpuMask(saved);
  return best;
}

}  // namespace kvtier::bench
