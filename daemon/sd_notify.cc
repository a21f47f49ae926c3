#include "daemon/sd_notify.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "ipc/base/unique_fd.h"

namespace kvtier {

namespace {

// The $NOTIFY_SOCKET address, or false if there is none.
bool NotifyAddress(sockaddr_un* addr, socklen_t* len) {
  const char* path = getenv("NOTIFY_SOCKET");
  if (path == nullptr || path[0] == '\0') return false;
  *addr = sockaddr_un{};
  addr->sun_family = AF_UNIX;
  const size_t n = strlen(path);
  if (n >= sizeof(addr->sun_path)) return false;
  std::memcpy(addr->sun_path, path, n);
  if (addr->sun_path[0] == '@') addr->sun_path[0] = '\0';  // abstract namespace
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n);
  return true;
}

}  // namespace

bool SdNotifyWithFds(std::string_view state, std::span<const int> fds) {
  sockaddr_un addr;
  socklen_t addr_len = 0;
  if (!NotifyAddress(&addr, &addr_len)) return false;
  UniqueFd sock(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!sock.valid()) return false;
  // A receiver that stopped reading must not hold a stopping kvtierd forever.
  const timeval timeout{5, 0};
  setsockopt(sock.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  iovec iov{const_cast<char*>(state.data()), state.size()};
  msghdr msg{};
  msg.msg_name = &addr;
  msg.msg_namelen = addr_len;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  return sendmsg(sock.get(), &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(state.size());
}

std::vector<ListenFd> SdListenFds() {
  std::vector<ListenFd> out;
  const char* pid = getenv("LISTEN_PID");
  const char* count = getenv("LISTEN_FDS");
  const char* names = getenv("LISTEN_FDNAMES");
  const std::string name_list = names != nullptr ? names : "";
  char* end = nullptr;
  const bool ours = pid != nullptr && count != nullptr &&
                    strtoull(pid, &end, 10) == static_cast<unsigned long long>(getpid()) &&
                    *end == '\0';
  const unsigned long long n = ours ? strtoull(count, &end, 10) : 0;
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  if (!ours || *end != '\0' || n > 4096) return out;
  std::vector<std::string> parts;
  for (size_t at = 0; at <= name_list.size();) {
    const size_t colon = std::min(name_list.find(':', at), name_list.size());
    parts.push_back(name_list.substr(at, colon - at));
    at = colon + 1;
  }
  for (unsigned long long i = 0; i < n; ++i) {
    const int fd = 3 + static_cast<int>(i);
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) continue;  // not open: never ours to close
    ListenFd passed;
    passed.fd = UniqueFd(fd);
    passed.name = i < parts.size() && !parts[i].empty() ? parts[i] : "unknown";
    out.push_back(std::move(passed));
  }
  return out;
}

void SdNotify(std::string_view state) {
  sockaddr_un addr;
  socklen_t addr_len = 0;
  if (!NotifyAddress(&addr, &addr_len)) return;
  UniqueFd fd(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return;
  // Never blocks: the event loop sends these, and a receiver that stopped reading (its queue
  // holds net.unix.max_dgram_qlen datagrams, 10 by default) must not stall it.
  sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
         reinterpret_cast<sockaddr*>(&addr), addr_len);
}

uint64_t SdWatchdogIntervalUs() {
  const char* usec = getenv("WATCHDOG_USEC");
  if (usec == nullptr) return 0;
  char* end = nullptr;
  errno = 0;
  const unsigned long long value = strtoull(usec, &end, 10);
  if (errno != 0 || end == usec || *end != '\0' || value == 0) return 0;
  if (const char* pid = getenv("WATCHDOG_PID"); pid != nullptr) {
    end = nullptr;
    const unsigned long long owner = strtoull(pid, &end, 10);
    if (end == pid || *end != '\0' || owner != static_cast<unsigned long long>(getpid())) return 0;
  }
  return std::max<uint64_t>(value / 2, 1);
}

}  // namespace kvtier
