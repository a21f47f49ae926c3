#include "daemon/sd_notify.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "ipc/base/unique_fd.h"

namespace kvtier {

void SdNotify(std::string_view state) {
  const char* path = getenv("NOTIFY_SOCKET");
  if (path == nullptr || path[0] == '\0') return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const size_t len = strlen(path);
  if (len >= sizeof(addr.sun_path)) return;
  std::memcpy(addr.sun_path, path, len);
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace
  UniqueFd fd(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return;
  const auto addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
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
