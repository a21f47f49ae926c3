// SdNotify: tells systemd (Type=notify) that kvtierd is ready or stopping, through the datagram
// socket named by $NOTIFY_SOCKET. A no-op when not run by systemd. Thread-safe.
// Hand-written (20 lines) rather than linking libsystemd, which is not a project dependency.
#pragma once

#include <string_view>

namespace kvtier {

// Sends `state` (e.g. "READY=1\nSTATUS=serving") if $NOTIFY_SOCKET is set; errors are ignored
// because systemd notices a missing READY by itself.
void SdNotify(std::string_view state);

}  // namespace kvtier
