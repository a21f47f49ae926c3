#include "ipc/socket/seqpacket.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "ipc/base/check.h"
#include "ipc/base/errno_status.h"
#include "ipc/wire/protocol.h"

namespace kvtier {
namespace {

constexpr std::string_view kWouldBlock = "would block";

Result<sockaddr_un> MakeAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return Status(StatusCode::kInvalidArgument,
                  "socket path '" + path + "' is empty or longer than " +
                      std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace

Status SizeSocketBuffers(int fd) {
  const int bytes = wire::kSocketBufferBytes;
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes)) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes)) != 0) {
    return ErrnoStatus("setsockopt(SO_SNDBUF/SO_RCVBUF)", errno);
  }
  // The kernel clamps to net.core.wmem_max; a buffer below one full frame would make the
  // largest batches fail with EMSGSIZE, so say so now.
  int got = 0;
  socklen_t len = sizeof(got);
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &got, &len) != 0) {
    return ErrnoStatus("getsockopt(SO_SNDBUF)", errno);
  }
  if (static_cast<uint64_t>(got) < uint64_t{wire::kMaxFrameBytes} + 64) {
    return Status(StatusCode::kResourceExhausted,
                  "socket send buffer is " + std::to_string(got) + " bytes, below a full frame (" +
                      std::to_string(wire::kMaxFrameBytes) +
                      "); raise net.core.wmem_max (sysctl) to at least 256 KiB");
  }
  return Status::Ok();
}

Status EnsureNoListener(const std::string& path, int type) {
  KVT_ASSIGN_OR_RETURN(sockaddr_un addr, MakeAddress(path));
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return Status::Ok();
  if (!S_ISSOCK(st.st_mode)) {
    return Status(StatusCode::kFailedPrecondition,
                  "'" + path + "' exists and is not a socket; refusing to replace it");
  }
  UniqueFd probe(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (probe.valid() &&
      connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
    return Status(StatusCode::kAlreadyExists, "another kvtierd is already serving '" + path + "'");
  }
  return Status::Ok();
}

Result<UniqueFd> ListenUnix(const std::string& path, int type, mode_t mode, gid_t gid,
                            int backlog) {
  KVT_ASSIGN_OR_RETURN(sockaddr_un addr, MakeAddress(path));
  UniqueFd fd(socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus("socket(AF_UNIX)", errno);
  KVT_RETURN_IF_ERROR(EnsureNoListener(path, type));
  struct stat st {};
  unlink(path.c_str());  // a stale socket file left by a previous run
  // bind creates the file with 0777 & ~umask (kvtierd runs with umask 077, so owner-only);
  // then it is opened up to exactly `mode` and checked.
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus("bind('" + path + "')", errno);
  }
  constexpr gid_t kNoGroup = static_cast<gid_t>(-1);
  if (gid != kNoGroup && chown(path.c_str(), static_cast<uid_t>(-1), gid) != 0) {
    return ErrnoStatus("chown('" + path + "', group " + std::to_string(gid) + ")", errno);
  }
  if (chmod(path.c_str(), mode) != 0) return ErrnoStatus("chmod('" + path + "')", errno);
  if (stat(path.c_str(), &st) != 0) return ErrnoStatus("stat('" + path + "')", errno);
  if ((st.st_mode & 07777) != mode || st.st_uid != geteuid() ||
      (gid != kNoGroup && st.st_gid != gid)) {
    return Status(StatusCode::kPermissionDenied,
                  "socket '" + path + "' did not get mode or owner as configured");
  }
  if (listen(fd.get(), backlog) != 0) return ErrnoStatus("listen('" + path + "')", errno);
  return fd;
}

Result<UniqueFd> ConnectSeqpacket(const std::string& path) {
  KVT_ASSIGN_OR_RETURN(sockaddr_un addr, MakeAddress(path));
  UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus("socket(AF_UNIX, SOCK_SEQPACKET)", errno);
  KVT_RETURN_IF_ERROR(SizeSocketBuffers(fd.get()));
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ECONNREFUSED) {
      return Status(StatusCode::kUnavailable,
                    "kvtierd is not running: nothing listens at '" + path + "' (" +
                        std::strerror(err) + ")");
    }
    if (err == EACCES) {
      return Status(StatusCode::kPermissionDenied,
                    "permission denied connecting to '" + path +
                        "': the socket's mode (socket_mode) or its directory's permissions do "
                        "not admit this uid; ask the operator");
    }
    return ErrnoStatus("connect('" + path + "')", err);
  }
  return fd;
}

Result<PeerCredentials> GetPeerCredentials(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return ErrnoStatus("getsockopt(SO_PEERCRED)", errno);
  }
  return PeerCredentials{cred.pid, cred.uid, cred.gid};
}

Status SendFrame(int fd, std::span<const std::byte> frame, int pass_fd) {
  iovec iov{const_cast<std::byte*>(frame.data()), frame.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (pass_fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &pass_fd, sizeof(int));
  }
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Status(StatusCode::kResourceExhausted, "socket send buffer full");
    return ErrnoStatus("sendmsg", errno);
  }
  return Status::Ok();  // SEQPACKET sends are atomic: all or nothing
}

Result<Received> RecvFrame(int fd, std::span<std::byte> buffer, int flags) {
  iovec iov{buffer.data(), buffer.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, flags | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Status(StatusCode::kUnavailable, std::string(kWouldBlock));
    return ErrnoStatus("recvmsg", errno);
  }
  Received out;
  out.bytes = static_cast<size_t>(n);
  out.eof = (n == 0);
  out.truncated = (msg.msg_flags & MSG_TRUNC) != 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < nfds; ++i) {
      int passed;
      std::memcpy(&passed, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (!out.passed_fd.valid()) {
        out.passed_fd.reset(passed);
      } else {
        close(passed);  // only one fd per frame is ever expected
      }
    }
  }
  out.fds_truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  return out;
}

bool IsWouldBlock(const Status& status) {
  return status.code() == StatusCode::kUnavailable && status.message() == kWouldBlock;
}

}  // namespace kvtier
