// Unix SOCK_SEQPACKET helpers shared by kvtierd and libkvclient: listen, connect, send and
// receive one frame with an optional passed fd (SCM_RIGHTS), and read the peer's credentials.
// All functions are thread-safe; they touch only the fds they are given.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstddef>
#include <span>
#include <string>

#include "ipc/base/unique_fd.h"
#include "kvclient/status.h"

namespace kvtier {

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

// Both functions below first check the directory holding `path`, which decides who can
// replace the socket file and so who could stand in for kvtierd or turn its chown/chmod onto
// another file. It must be owned by kvtierd's euid or root and writable by nobody else; a
// sticky directory such as /tmp is refused too (while kvtierd is down, any user could create a
// socket there and take the clients' connections). Each of its ancestors (symlinks resolved)
// must be owned by root or the euid and writable by nobody else unless it is sticky (then no
// one else can rename ours away). Otherwise kPermissionDenied, naming `path`, the directory and
// the problem; errno codes when the directory cannot be found.
//
// OK if nothing listens at `path` (a stale socket file is fine); kAlreadyExists if a live
// listener answers there; kFailedPrecondition if `path` is some other kind of file (a symlink
// included). `type`: SOCK_SEQPACKET (the data socket) or SOCK_STREAM (the admin socket).
Status EnsureNoListener(const std::string& path, int type = SOCK_SEQPACKET);
// Binds and listens at `path` in a directory that passes the check above. A stale socket
// file is replaced; anything else there is left alone and refused. The socket file is created
// no more open than `mode` whatever the umask, then set to exactly `mode` (and to group `gid`
// unless that is -1) without following symlinks, and checked: the daemon never serves a
// socket with looser permissions than configured. Non-blocking, close-on-exec.
Result<UniqueFd> ListenUnix(const std::string& path, int type, mode_t mode, gid_t gid,
                            int backlog);
inline Result<UniqueFd> ListenSeqpacket(const std::string& path, mode_t mode, int backlog) {
  return ListenUnix(path, SOCK_SEQPACKET, mode, static_cast<gid_t>(-1), backlog);
}
// Blocking, close-on-exec. kUnavailable when no daemon listens at `path`.
Result<UniqueFd> ConnectSeqpacket(const std::string& path);
// Sets SO_SNDBUF/SO_RCVBUF so a kMaxFrameBytes frame always fits.
Status SizeSocketBuffers(int fd);
Result<PeerCredentials> GetPeerCredentials(int fd);

// Sends one frame, with `pass_fd` as SCM_RIGHTS when >= 0. MSG_NOSIGNAL: a dead peer is
// kUnavailable, never SIGPIPE. EAGAIN on a non-blocking socket is kResourceExhausted.
Status SendFrame(int fd, std::span<const std::byte> frame, int pass_fd = -1);

struct Received {
  size_t bytes = 0;      // 0 with eof = true: the peer closed
  bool eof = false;
  bool truncated = false;  // the frame was larger than the buffer (MSG_TRUNC)
  bool fds_truncated = false;  // more fds were sent than the control buffer holds (MSG_CTRUNC)
  UniqueFd passed_fd;      // an fd the peer sent, if any (extra fds are closed)
};
// Receives one frame. `flags` may hold MSG_DONTWAIT; an empty non-blocking socket then gives a
// Status for which IsWouldBlock() is true.
Result<Received> RecvFrame(int fd, std::span<std::byte> buffer, int flags = 0);
// True if `status` came from RecvFrame on an empty non-blocking socket.
bool IsWouldBlock(const Status& status);

}  // namespace kvtier
