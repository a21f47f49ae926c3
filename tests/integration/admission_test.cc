// Who gets a session: peers that map to no tenant are refused at once, and connections that
// never say hello do not keep their slot.
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vector>

#include <catch2/catch.hpp>

#include "ipc/base/unique_fd.h"
#include "ipc/socket/seqpacket.h"
#include "kvclient/client.h"
#include "tests/support/test_support.h"

namespace kvtier::testing {
namespace {

constexpr uid_t kStranger = 65534;  // nobody

TEST_CASE("a peer whose uid maps to no tenant is refused with a message naming it",
          "[integration][admission]") {
  DaemonOptions options;
  options.default_tenant = false;
  options.tenant_uids = {getuid()};
  options.socket_mode = "0666";  // the file mode lets anyone connect; the tenant map decides
  auto daemon = DaemonProcess::Start(options);
  REQUIRE(chmod(daemon->dir().c_str(), 0755) == 0);
  // This uid is a tenant.
  auto me = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "x"});
  REQUIRE(me.ok());
  CHECK((*me)->tenant() == "test");
  // A stranger, in a child process that drops to another uid, is refused.
  const int code = RunInChild([&] {
    if (setresgid(kStranger, kStranger, kStranger) != 0) return 2;
    if (setresuid(kStranger, kStranger, kStranger) != 0) return 3;
    auto c = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "x"});
    if (c.ok()) return 4;
    if (c.status().code() != StatusCode::kPermissionDenied) return 5;
    if (c.status().message().find("uid 65534") == std::string::npos) return 6;
    return 0;
  });
  CHECK(code == 0);
  CHECK(daemon->Alive());
}

TEST_CASE("connections that never say hello are closed and free their slot",
          "[integration][admission]") {
  DaemonOptions options;
  options.max_sessions = 4;
  auto daemon = DaemonProcess::Start(options);
  std::vector<UniqueFd> silent;
  for (int i = 0; i < 4; ++i) {
    auto fd = ConnectSeqpacket(daemon->socket_path());
    REQUIRE(fd.ok());
    silent.push_back(std::move(*fd));
  }
  // Every slot is held by a silent connection: a real client is refused, with the reason.
  auto refused = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "x"});
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().code() == StatusCode::kResourceExhausted);
  CHECK_THAT(refused.status().message(), Catch::Contains("max_sessions"));
  // The daemon closes them after its hello timeout (5 s); then a real client gets in.
  for (UniqueFd& fd : silent) {
    char buf[512];
    REQUIRE(WaitUntil([&] { return recv(fd.get(), buf, sizeof(buf), MSG_DONTWAIT) == 0; }));
  }
  auto admitted = Client::Connect({.socket_path = daemon->socket_path(), .name_space = "x"});
  REQUIRE(admitted.ok());
}

}  // namespace
}  // namespace kvtier::testing
