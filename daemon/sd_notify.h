// SdNotify: tells systemd (Type=notify) that kvtierd is ready or stopping, through the datagram
// socket named by $NOTIFY_SOCKET. A no-op when not run by systemd. Thread-safe.
// Hand-written (20 lines) rather than linking libsystemd, which is not a project dependency.
#pragma once

#include <string_view>

namespace kvtier {

// Sends `state` (e.g. "READY=1\nSTATUS=serving") if $NOTIFY_SOCKET is set, without blocking;
// errors are ignored because systemd notices a missing READY or WATCHDOG by itself.
void SdNotify(std::string_view state);

// The service manager's watchdog (WatchdogSec=): how often to send "WATCHDOG=1", in
// microseconds (half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises), or 0 when no
// watchdog watches this process ($WATCHDOG_USEC unset or malformed, or $WATCHDOG_PID naming
// another process).
uint64_t SdWatchdogIntervalUs();

}  // namespace kvtier
