// SdNotify: tells systemd (Type=notify) that kvtierd is ready or stopping, through the datagram
// socket named by $NOTIFY_SOCKET. A no-op when not run by systemd. Thread-safe.
// Hand-written (20 lines) rather than linking libsystemd, which is not a project dependency.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ipc/base/unique_fd.h"

namespace kvtier {

// Sends `state` (e.g. "READY=1\nSTATUS=serving") if $NOTIFY_SOCKET is set, without blocking;
// errors are ignored because systemd notices a missing READY or WATCHDOG by itself.
void SdNotify(std::string_view state);

// Sends `state` with `fds` attached (SCM_RIGHTS), e.g. "FDSTORE=1\nFDNAME=x" to keep them in
// systemd's file descriptor store (FileDescriptorStoreMax=) for the next start of the service.
// Blocks until sent, at most 5 s (a few fds, at shutdown). False if $NOTIFY_SOCKET is unset or the
// message could not be sent.
bool SdNotifyWithFds(std::string_view state, std::span<const int> fds);

// A file descriptor the service manager passed at start (sd_listen_fds_with_names(3)): socket
// activation and the file descriptor store, from fd 3 on, named by $LISTEN_FDNAMES.
struct ListenFd {
  UniqueFd fd;
  std::string name;  // "unknown" where the manager gave none
};
// Takes the passed fds if $LISTEN_PID is this process (else none), marks them close-on-exec
// and unsets $LISTEN_PID, $LISTEN_FDS and $LISTEN_FDNAMES so that children do not see them.
std::vector<ListenFd> SdListenFds();

// The service manager's watchdog (WatchdogSec=): how often to send "WATCHDOG=1", in
// microseconds (half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises), or 0 when no
// watchdog watches this process ($WATCHDOG_USEC unset or malformed, or $WATCHDOG_PID naming
// another process).
uint64_t SdWatchdogIntervalUs();

}  // namespace kvtier
