#include "daemon/spill/io_ring.h"

#include <errno.h>
#include <string.h>

#include <string>
#include <utility>

#include <liburing.h>

namespace kvtier {
namespace {

Status Unavailable(std::string_view call, int err) {
  const char* hint = "";
  if (err == EPERM || err == ENOSYS || err == EACCES) hint = " (container seccomp profile?)";
  if (err == ENOMEM) hint = " (RLIMIT_MEMLOCK too low for the ring?)";
  char buf[128];
  const char* text = strerror_r(err, buf, sizeof(buf));
  return Status(StatusCode::kUnavailable, "io_uring unavailable" + std::string(hint) + ": " +
                                              std::string(call) + ": " + text + " (errno " +
                                              std::to_string(err) + ")");
}

}  // namespace

void IoRing::Deleter::operator()(io_uring* ring) const {
  io_uring_queue_exit(ring);
  delete ring;
}

Result<IoRing> IoRing::Open(uint32_t entries) {
  if (entries == 0 || entries > 32768) {
    return Status(StatusCode::kInvalidArgument,
                  "io_uring queue depth " + std::to_string(entries) + " is not in [1, 32768]");
  }
  auto raw = std::make_unique<io_uring>();
  int rc = io_uring_queue_init(entries, raw.get(), 0);
  if (rc < 0) return Unavailable("io_uring_queue_init", -rc);
  std::unique_ptr<io_uring, Deleter> ring(raw.release());

  io_uring_probe* probe = io_uring_get_probe_ring(ring.get());
  if (probe == nullptr) return Unavailable("io_uring_register(PROBE)", ENOSYS);
  const bool has_rw = io_uring_opcode_supported(probe, IORING_OP_READ) != 0 &&
                      io_uring_opcode_supported(probe, IORING_OP_WRITE) != 0;
  io_uring_free_probe(probe);
  if (!has_rw) {
    return Status(StatusCode::kUnavailable,
                  "io_uring unavailable: the kernel lacks IORING_OP_READ/IORING_OP_WRITE "
                  "(Linux 5.6 or later needed)");
  }

  io_uring_sqe* sqe = io_uring_get_sqe(ring.get());
  if (sqe == nullptr) return Unavailable("io_uring_get_sqe", EBUSY);
  io_uring_prep_nop(sqe);
  rc = io_uring_submit_and_wait(ring.get(), 1);
  if (rc < 0) return Unavailable("io_uring_enter", -rc);
  io_uring_cqe* cqe = nullptr;
  rc = io_uring_wait_cqe(ring.get(), &cqe);
  if (rc < 0) return Unavailable("io_uring_wait_cqe", -rc);
  const int nop_result = cqe->res;
  io_uring_cqe_seen(ring.get(), cqe);
  if (nop_result < 0) return Unavailable("IORING_OP_NOP", -nop_result);

  const uint32_t sq_entries = ring->sq.ring_entries;
  return IoRing(std::move(ring), sq_entries);
}

}  // namespace kvtier
