// Session: ending a session hangs its socket up at once, before its fd is closed and before
// anything it held is given back. The client library's lease check (Leases::Verify) relies on
// that order: a reader that finds its socket not hung up after a read read bytes that no purge,
// reuse or wipe had touched.
#include "daemon/server/session.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

namespace kvtier {
namespace {

// The peer's view: hung up (or shut down), as poll(2) reports it.
bool PeerSeesHangUp(int peer) {
  pollfd p{peer, POLLRDHUP, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLRDHUP)) != 0;
}

TEST_CASE("ending a session hangs up its socket while the fd is still open", "[session]") {
  int fds[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) == 0);
  UniqueFd peer(fds[1]);
  Tenant tenant;
  Session session(1, UniqueFd(fds[0]), PeerCredentials{}, 16, &tenant);
  CHECK_FALSE(PeerSeesHangUp(peer.get()));
  SECTION("Close") { session.Close(); }
  SECTION("Detach (copies still running)") { session.Detach(); }
  // The Session, and so its fd, still exists: only the shutdown can have told the peer.
  CHECK(session.fd() >= 0);
  CHECK(PeerSeesHangUp(peer.get()));
}

}  // namespace
}  // namespace kvtier
