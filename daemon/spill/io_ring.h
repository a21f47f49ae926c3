// IoRing: one io_uring instance (liburing), created and probed. Move-only; the ring is torn
// down on destruction (the owner first waits for what it submitted).
// Open checks what a seccomp profile or an old kernel can take away: ring setup, the
// IORING_OP_READ and IORING_OP_WRITE opcodes, and one NOP round trip through io_uring_enter
// (a filter may allow setup and block enter).
// Thread-safety: none; one thread uses a ring.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>

#include "kvclient/status.h"

struct io_uring;  // <liburing.h>, kept out of includers

namespace kvtier {

class IoRing {
 public:
  // OK: a ring of at least `entries` SQ entries (and twice that many CQ entries).
  // kUnavailable: io_uring cannot be used here; the message names the call and errno, and a
  // likely cause (a container seccomp profile for EPERM/ENOSYS, RLIMIT_MEMLOCK for ENOMEM).
  // kInvalidArgument: entries is 0 or above 32768.
  static Result<IoRing> Open(uint32_t entries);

  io_uring* get() const { return ring_.get(); }
  uint32_t sq_entries() const { return sq_entries_; }

 private:
  struct Deleter {
    void operator()(io_uring* ring) const;
  };
  IoRing(std::unique_ptr<io_uring, Deleter> ring, uint32_t sq_entries)
      : ring_(std::move(ring)), sq_entries_(sq_entries) {}

  // Heap-held so that moving an IoRing never moves liburing's struct.
  std::unique_ptr<io_uring, Deleter> ring_;
  uint32_t sq_entries_ = 0;
};

}  // namespace kvtier
