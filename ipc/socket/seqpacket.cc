#include "ipc/socket/seqpacket.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

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

// "/run/kvtier/kvtierd.sock" -> "/run/kvtier", "kvtierd.sock"; a bare name is in ".".
std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string FileName(const std::string& path) {
  return path.substr(path.rfind('/') + 1);
}

std::string OctalMode(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof(text), "%04o", mode & 07777);
  return text;
}

Status UnsafeDirectory(const std::string& path, const std::string& dir, const std::string& why) {
  return Status(StatusCode::kPermissionDenied,
                "socket '" + path + "': " + dir + " " + why +
                    ", so another user could replace the socket; use a directory that only "
                    "kvtierd's user or root can write (run_dir is one)");
}

// Who else could change the entries of a directory with `st`: nobody, if it is owned by us or
// root and not writable by group or others (or, for an ancestor, sticky).
std::string WhyUnsafe(const struct stat& st, bool sticky_ok) {
  if (st.st_uid != geteuid() && st.st_uid != 0) {
    return "is owned by uid " + std::to_string(st.st_uid) + ", neither kvtierd's uid " +
           std::to_string(geteuid()) + " nor root";
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && !(sticky_ok && (st.st_mode & S_ISVTX) != 0)) {
    return std::string("is writable by group or others") + (sticky_ok ? " and not sticky" : "") +
           " (mode " + OctalMode(st.st_mode) + ")";
  }
  return "";
}

// The directory that holds `path`, opened O_PATH once it and its ancestors pass the rule in
// seqpacket.h.
Result<UniqueFd> OpenSocketDirectory(const std::string& path) {
  const std::string dir = DirectoryOf(path);
  char resolved[PATH_MAX];
  if (realpath(dir.c_str(), resolved) == nullptr) {
    return ErrnoStatus("socket '" + path + "': directory " + dir, errno);
  }
  UniqueFd fd(open(resolved, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  struct stat st {};
  if (!fd.valid() || fstat(fd.get(), &st) != 0) {
    return ErrnoStatus("socket '" + path + "': directory " + resolved, errno);
  }
  if (std::string why = WhyUnsafe(st, /*sticky_ok=*/false); !why.empty()) {
    return UnsafeDirectory(path, "its directory " + std::string(resolved), why);
  }
  for (std::string up = resolved; up != "/";) {
    up.resize(std::max<size_t>(up.rfind('/'), 1));
    if (lstat(up.c_str(), &st) != 0) return ErrnoStatus("stat(" + up + ")", errno);
    if (std::string why = WhyUnsafe(st, /*sticky_ok=*/true); !why.empty()) {
      return UnsafeDirectory(path, "its ancestor directory " + up, why);
    }
  }
  return fd;
}

// Whether a stale socket file is at `path` in `dir` (false: nothing there). kAlreadyExists if
// something listens there; kFailedPrecondition if it is not a socket (a symlink included).
Result<bool> FindStaleSocket(int dir, const std::string& path, int type) {
  KVT_ASSIGN_OR_RETURN(sockaddr_un addr, MakeAddress(path));
  struct stat st {};
  if (fstatat(dir, FileName(path).c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return false;
    return ErrnoStatus("stat('" + path + "')", errno);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return Status(StatusCode::kFailedPrecondition,
                  "'" + path + "' exists and is not a socket; refusing to replace it");
  }
  UniqueFd probe(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!probe.valid()) return ErrnoStatus("socket(AF_UNIX)", errno);
  if (connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
    return Status(StatusCode::kAlreadyExists, "another kvtierd is already serving '" + path + "'");
  }
  if (errno == EPROTOTYPE) {  // a live socket of the other type: not ours to remove
    return Status(StatusCode::kAlreadyExists, "another program is already serving '" + path + "'");
  }
  return true;
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
  KVT_ASSIGN_OR_RETURN(UniqueFd dir, OpenSocketDirectory(path));
  return FindStaleSocket(dir.get(), path, type).status();
}

Result<UniqueFd> ListenUnix(const std::string& path, int type, mode_t mode, gid_t gid,
                            int backlog) {
  KVT_ASSIGN_OR_RETURN(sockaddr_un addr, MakeAddress(path));
  KVT_ASSIGN_OR_RETURN(UniqueFd dir, OpenSocketDirectory(path));
  const std::string name = FileName(path);
  KVT_ASSIGN_OR_RETURN(bool stale, FindStaleSocket(dir.get(), path, type));
  if (stale && unlinkat(dir.get(), name.c_str(), 0) != 0 && errno != ENOENT) {
    return ErrnoStatus("unlink stale socket '" + path + "'", errno);
  }
  UniqueFd fd(socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus("socket(AF_UNIX)", errno);
  // bind gives the file the socket's own mode less the umask: with the mode set first, the file
  // is never more open than `mode`, whatever the umask (under kvtierd's 077, owner-only until
  // the chmod below). No one can connect before listen() anyway.
  if (fchmod(fd.get(), mode) != 0) return ErrnoStatus("fchmod(socket)", errno);
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus("bind('" + path + "')", errno);
  }
  // Only kvtierd and root can change the directory; still, change nothing but the socket just
  // made, and never through a symlink.
  UniqueFd file(openat(dir.get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  struct stat made {};
  if (!file.valid() || fstat(file.get(), &made) != 0 || !S_ISSOCK(made.st_mode) ||
      made.st_uid != geteuid()) {
    return Status(StatusCode::kPermissionDenied,
                  "'" + path + "' is not the socket kvtierd just bound there");
  }
  constexpr gid_t kNoGroup = static_cast<gid_t>(-1);
  if (gid != kNoGroup &&
      fchownat(file.get(), "", static_cast<uid_t>(-1), gid, AT_EMPTY_PATH) != 0) {
    return ErrnoStatus("chown('" + path + "', group " + std::to_string(gid) + ")", errno);
  }
  // glibc makes this chmod of the opened file through /proc/self/fd.
  if (fchmodat(dir.get(), name.c_str(), mode, AT_SYMLINK_NOFOLLOW) != 0) {
    return ErrnoStatus("chmod('" + path + "')", errno);
  }
  struct stat st {};
  if (fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    return ErrnoStatus("stat('" + path + "')", errno);
  }
  if (st.st_ino != made.st_ino || st.st_dev != made.st_dev || (st.st_mode & 07777) != mode ||
      st.st_uid != geteuid() || (gid != kNoGroup && st.st_gid != gid)) {
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
